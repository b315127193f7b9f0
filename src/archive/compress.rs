//! gzip that does not waste time on what does not compress. Photos and videos are stored
//! (level 0: a copy plus CRC), everything else gets level 1. A level cannot change inside a
//! deflate stream, so a change of level starts a new gzip member; `gzip -d`, `tar -xz` and
//! flate2's `MultiGzDecoder` all read a series of members as one stream.

use std::io::{self, Write};

use flate2::write::GzEncoder;
use flate2::Compression;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Store,
    Fast,
}

impl Level {
    fn compression(self) -> Compression {
        match self {
            Level::Store => Compression::none(),
            Level::Fast => Compression::fast(),
        }
    }
}

/// Files smaller than this keep whatever level is running: a new member costs more than it saves.
pub const SWITCH_MIN: u64 = 8 << 10;

pub struct AdaptiveGz<W: Write> {
    enc: Option<GzEncoder<W>>,
    level: Level,
}

impl<W: Write> AdaptiveGz<W> {
    pub fn new(inner: W, level: Level) -> Self {
        AdaptiveGz {
            enc: Some(GzEncoder::new(inner, level.compression())),
            level,
        }
    }

    pub fn set_level(&mut self, level: Level) -> io::Result<()> {
        if level == self.level {
            return Ok(());
        }
        let inner = self.take()?.finish()?;
        self.enc = Some(GzEncoder::new(inner, level.compression()));
        self.level = level;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.take()?.finish()
    }

    fn take(&mut self) -> io::Result<GzEncoder<W>> {
        self.enc
            .take()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))
    }

    fn enc(&mut self) -> io::Result<&mut GzEncoder<W>> {
        self.enc
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))
    }
}

impl<W: Write> Write for AdaptiveGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.enc()?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.enc()?.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.enc()?.flush()
    }
}

/// Does a file starting with `head` look already compressed? Known media and archive formats by
/// their magic bytes, else a byte-entropy estimate (random-looking data does not deflate).
pub fn looks_compressed(head: &[u8]) -> bool {
    const MAGIC: &[&[u8]] = &[
        b"\xFF\xD8\xFF",      // JPEG
        b"\x89PNG\r\n\x1a\n", // PNG
        b"GIF87a",
        b"GIF89a",               // GIF
        b"\x1A\x45\xDF\xA3",     // WebM / Matroska
        b"OggS",                 // Ogg (Opus, Vorbis, Theora)
        b"fLaC",                 // FLAC
        b"ID3",                  // MP3
        b"\x1F\x8B",             // gzip
        b"PK\x03\x04",           // zip (and docx, apk, …)
        b"BZh",                  // bzip2
        b"\xFD7zXZ\x00",         // xz
        b"\x28\xB5\x2F\xFD",     // zstd
        b"7z\xBC\xAF\x27\x1C",   // 7z
        b"\x00\x00\x00\x0CJXL ", // JPEG XL
    ];
    if MAGIC.iter().any(|m| head.starts_with(m)) {
        return true;
    }
    // RIFF....WEBP / AVI ; ISO BMFF (MP4, MOV, HEIC, AVIF): size, then "ftyp"
    if head.len() >= 12 && (&head[..4] == b"RIFF" && matches!(&head[8..12], b"WEBP" | b"AVI ")) {
        return true;
    }
    if head.len() >= 8 && &head[4..8] == b"ftyp" {
        return true;
    }
    entropy_bits_per_byte(head) > 7.5
}

fn entropy_bits_per_byte(data: &[u8]) -> f64 {
    if data.len() < 256 {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    #[test]
    fn members_read_back_as_one_stream() {
        let mut gz = AdaptiveGz::new(Vec::new(), Level::Fast);
        gz.write_all(b"hello ").unwrap();
        gz.set_level(Level::Store).unwrap();
        gz.write_all(b"stored ").unwrap();
        gz.set_level(Level::Fast).unwrap();
        gz.write_all(b"world").unwrap();
        let bytes = gz.finish().unwrap();
        let mut out = String::new();
        MultiGzDecoder::new(&bytes[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello stored world");
    }

    #[test]
    fn tells_media_and_noise_from_text() {
        assert!(looks_compressed(b"\xFF\xD8\xFF\xE0\x00\x10JFIF"));
        assert!(looks_compressed(b"\x00\x00\x00\x20ftypisom"));
        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        assert!(looks_compressed(&noise));
        let text = br#"{"type":"m.room.message","content":{"body":"hello"}}"#.repeat(50);
        assert!(!looks_compressed(&text));
    }
}
