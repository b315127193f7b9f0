//! gzip that does not waste time on what does not compress. Photos and videos are stored
//! (a copy plus CRC), everything else gets level 1. A level cannot change inside a deflate
//! stream, so a change of level starts a new gzip member; `gzip -d`, `tar -xz` and flate2's
//! `MultiGzDecoder` all read a series of members as one stream.
//!
//! Stored members are written here, not by zlib: its level 0 copies the data twice through its
//! window and output buffer before we copy it again; here it is copied once, with a 5-octet
//! header per 64 KiB (RFC 1951 §3.2.4) and the gzip trailer's CRC-32 (RFC 1952).

use std::io::{self, Write};

use flate2::write::GzEncoder;
use flate2::{Compression, Crc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Store,
    Fast,
}

/// Files smaller than this keep whatever level is running: a new member costs more than it saves.
pub const SWITCH_MIN: u64 = 8 << 10;

enum Member<W: Write> {
    Fast(GzEncoder<W>),
    Store(Stored<W>),
}

impl<W: Write> Member<W> {
    fn start(inner: W, level: Level) -> io::Result<Self> {
        Ok(match level {
            Level::Fast => Member::Fast(GzEncoder::new(inner, Compression::fast())),
            Level::Store => Member::Store(Stored::start(inner)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Member::Fast(gz) => gz.finish(),
            Member::Store(stored) => stored.finish(),
        }
    }
}

pub struct AdaptiveGz<W: Write> {
    member: Option<Member<W>>,
    level: Level,
}

impl<W: Write> AdaptiveGz<W> {
    pub fn new(inner: W, level: Level) -> io::Result<Self> {
        Ok(AdaptiveGz {
            member: Some(Member::start(inner, level)?),
            level,
        })
    }

    pub fn set_level(&mut self, level: Level) -> io::Result<()> {
        if level == self.level {
            return Ok(());
        }
        let inner = self.take()?.finish()?;
        self.member = Some(Member::start(inner, level)?);
        self.level = level;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.take()?.finish()
    }

    fn take(&mut self) -> io::Result<Member<W>> {
        self.member.take().ok_or_else(finished)
    }
}

fn finished() -> io::Error {
    io::Error::other("gzip stream already finished")
}

impl<W: Write> Write for AdaptiveGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.member.as_mut().ok_or_else(finished)? {
            Member::Fast(gz) => gz.write(buf),
            Member::Store(stored) => stored.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.member.as_mut().ok_or_else(finished)? {
            Member::Fast(gz) => gz.flush(),
            Member::Store(stored) => stored.flush(),
        }
    }
}

/// A gzip member of stored (uncompressed) deflate blocks.
struct Stored<W: Write> {
    inner: W,
    crc: Crc,
}

/// The most a stored block holds.
const STORED_MAX: usize = u16::MAX as usize;

impl<W: Write> Stored<W> {
    fn start(mut inner: W) -> io::Result<Self> {
        // magic, deflate, no flags, no mtime, no extra flags, OS unknown
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        Ok(Stored { inner, crc: Crc::new() })
    }

    fn block(&mut self, data: &[u8], last: bool) -> io::Result<()> {
        let len = data.len() as u16;
        let [l0, l1] = len.to_le_bytes();
        let [n0, n1] = (!len).to_le_bytes();
        self.inner.write_all(&[u8::from(last), l0, l1, n0, n1])?;
        self.inner.write_all(data)
    }

    fn finish(mut self) -> io::Result<W> {
        self.block(&[], true)?;
        let sum = self.crc.sum().to_le_bytes();
        let size = self.crc.amount().to_le_bytes();
        self.inner.write_all(&sum)?;
        self.inner.write_all(&size)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Stored<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for block in buf.chunks(STORED_MAX) {
            self.block(block, false)?;
        }
        self.crc.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
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
        let big: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut gz = AdaptiveGz::new(Vec::new(), Level::Fast).unwrap();
        gz.write_all(b"hello ").unwrap();
        gz.set_level(Level::Store).unwrap();
        gz.write_all(b"stored ").unwrap();
        gz.write_all(&big).unwrap();
        gz.set_level(Level::Fast).unwrap();
        gz.write_all(b"world").unwrap();
        gz.set_level(Level::Store).unwrap();
        let bytes = gz.finish().unwrap();
        let mut out = Vec::new();
        MultiGzDecoder::new(&bytes[..]).read_to_end(&mut out).unwrap();
        let mut want = b"hello stored ".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"world");
        assert_eq!(out, want);
        // and stock gzip agrees, CRC and length included
        let mut child = std::process::Command::new("gzip")
            .args(["-d", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(&bytes));
        let gunzipped = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(gunzipped.status.success());
        assert_eq!(gunzipped.stdout, want);
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
