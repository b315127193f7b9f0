//! gzip that does not waste time on what does not compress. Photos and videos are stored
//! (a copy plus CRC), everything else gets level 1. A level cannot change inside a deflate
//! stream, so a change of level starts a new gzip member; `gzip -d`, `tar -xz` and flate2's
//! `MultiGzDecoder` all read a series of members as one stream.
//!
//! Tar's own bytes (a 512-octet header per entry, the padding of each body to 512 octets, an entry
//! per directory) deflate to a tenth even when the bodies do not: on a media store of small files
//! they are most of the stream. So a switch must cost little: a member's header and trailer are
//! 18 octets, and the deflate state (hundreds of KiB) is reset and reused, never made again.
//!
//! Stored members are written here, not by zlib: its level 0 copies the data twice through its
//! window and output buffer before we copy it again; here it is copied once, with a 5-octet
//! header per 64 KiB (RFC 1951 §3.2.4) and the gzip trailer's CRC-32 (RFC 1952).

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Store,
    /// deflate level 1 (zlib-rs's quick deflate: fixed codes, fastest)
    Fast,
    /// deflate level 6, for runs of small entries and the manifest: its code tables fit a mix of
    /// tar headers and random-looking bodies, where level 1's fixed codes spend 9 bits on half the
    /// bytes, and its lazy matches find more of each header in the one before (on 300,000 files
    /// of 200–1,200 bytes: 1.3% smaller than level 2). It runs on the thread that encrypts, which
    /// waits on the walk at level 2 anyway.
    Small,
}

/// Files smaller than this are always deflated, whatever their body: their tar header and padding
/// are most of what they cost, and deflate saves more on those than a switch of member costs.
pub const SWITCH_MIN: u64 = 8 << 10;

enum Member<W: Write> {
    Fast(Deflated<W>),
    Store(Stored<W>),
}

impl<W: Write> Member<W> {
    fn start(inner: W, level: Level, deflate: &mut Option<Deflate>) -> io::Result<Self> {
        Ok(match level {
            Level::Fast | Level::Small => {
                let deflate = deflate.take().unwrap_or_else(Deflate::new);
                Member::Fast(Deflated::start(inner, deflate, level)?)
            }
            Level::Store => Member::Store(Stored::start(inner)?),
        })
    }

    /// Ends the member; its deflate state, reset, goes back to `spare`.
    fn finish(self, spare: &mut Option<Deflate>) -> io::Result<W> {
        match self {
            Member::Fast(gz) => {
                let (inner, deflate) = gz.finish()?;
                *spare = Some(deflate);
                Ok(inner)
            }
            Member::Store(stored) => stored.finish(),
        }
    }
}

pub struct AdaptiveGz<W: Write> {
    member: Option<Member<W>>,
    level: Level,
    /// the deflate state, kept while a stored member runs
    spare: Option<Deflate>,
}

impl<W: Write> AdaptiveGz<W> {
    pub fn new(inner: W, level: Level) -> io::Result<Self> {
        let mut spare = None;
        Ok(AdaptiveGz {
            member: Some(Member::start(inner, level, &mut spare)?),
            level,
            spare,
        })
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn set_level(&mut self, level: Level) -> io::Result<()> {
        if level == self.level {
            return Ok(());
        }
        let inner = self.take()?.finish(&mut self.spare)?;
        self.member = Some(Member::start(inner, level, &mut self.spare)?);
        self.level = level;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        let member = self.take()?;
        member.finish(&mut self.spare)
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

/// The deflate state and its output buffer, reused from member to member.
struct Deflate {
    compress: Compress,
    /// output not yet written on: `out[..len]` (a fixed buffer: flate2's `compress_vec` zeroes a
    /// vector's spare capacity on every call)
    out: Box<[u8]>,
    len: usize,
}

/// Output gathered before it is written on.
const DEFLATE_OUT: usize = 64 << 10;

impl Deflate {
    fn new() -> Self {
        Deflate {
            // raw deflate: the gzip header and trailer are ours
            compress: Compress::new(Compression::fast(), false),
            out: vec![0; DEFLATE_OUT].into_boxed_slice(),
            len: 0,
        }
    }

    fn full(&self) -> bool {
        self.len == self.out.len()
    }

    /// Deflates from `input` into the free part of the output buffer: how much of `input` it took,
    /// how much it made, and the status.
    fn step(&mut self, input: &[u8], flush: FlushCompress) -> io::Result<(usize, usize, Status)> {
        let (in0, out0) = (self.compress.total_in(), self.compress.total_out());
        let status = self
            .compress
            .compress(input, &mut self.out[self.len..], flush)
            .map_err(deflate_err)?;
        let taken = (self.compress.total_in() - in0) as usize;
        let made = (self.compress.total_out() - out0) as usize;
        self.len = (self.len + made).min(self.out.len());
        Ok((taken.min(input.len()), made, status))
    }
}

/// A gzip member of deflated data at level 1.
struct Deflated<W: Write> {
    inner: W,
    deflate: Deflate,
    crc: Crc,
}

/// magic, deflate, no flags, no mtime, no extra flags, OS unknown
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

fn deflate_err(e: flate2::CompressError) -> io::Error {
    io::Error::other(e)
}

impl<W: Write> Deflated<W> {
    fn start(mut inner: W, mut deflate: Deflate, level: Level) -> io::Result<Self> {
        inner.write_all(&GZIP_HEADER)?;
        deflate.compress.reset();
        // a fresh stream: nothing to flush before the level changes
        let level = if level == Level::Small { 6 } else { 1 };
        deflate
            .compress
            .set_level(Compression::new(level))
            .map_err(deflate_err)?;
        deflate.len = 0;
        Ok(Deflated {
            inner,
            deflate,
            crc: Crc::new(),
        })
    }

    /// Writes on what the output buffer holds.
    fn drain(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.deflate.out[..self.deflate.len])?;
        self.deflate.len = 0;
        Ok(())
    }

    fn finish(mut self) -> io::Result<(W, Deflate)> {
        loop {
            if self.deflate.full() {
                self.drain()?;
            }
            let (_, made, status) = self.deflate.step(&[], FlushCompress::Finish)?;
            if status == Status::StreamEnd {
                break;
            }
            if made == 0 && !self.deflate.full() {
                return Err(io::Error::other("deflate made no progress"));
            }
        }
        self.drain()?;
        self.inner.write_all(&self.crc.sum().to_le_bytes())?;
        self.inner.write_all(&self.crc.amount().to_le_bytes())?;
        Ok((self.inner, self.deflate))
    }
}

impl<W: Write> Write for Deflated<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.deflate.full() {
                self.drain()?;
            }
            let (taken, made, _) = self.deflate.step(rest, FlushCompress::None)?;
            if taken == 0 && made == 0 {
                return Err(io::Error::other("deflate made no progress"));
            }
            rest = &rest[taken..];
        }
        self.crc.update(buf);
        Ok(buf.len())
    }

    /// Writes on what is already deflated; not a deflate flush (each would end a block, and cost
    /// a new block's code tables): what the deflate state holds comes out when the member ends.
    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.inner.flush()
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
        inner.write_all(&GZIP_HEADER)?;
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
        gz.set_level(Level::Small).unwrap();
        gz.write_all(b"wor").unwrap();
        gz.set_level(Level::Fast).unwrap();
        gz.write_all(b"ld").unwrap();
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
