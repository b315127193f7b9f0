//! A `Read` adapter between the decompressed stream and the `tar` crate that parses every 512-byte
//! header itself, before the `tar` crate sees it, and refuses what a restore must never buffer or
//! act on.
//!
//! The `tar` crate reads a GNU long name or link (typeflag `L`/`K`) and a PAX extended header (`x`)
//! whole into memory before it hands out the entry they describe, however large their header says
//! they are: a 1 GiB PAX header means 1 GiB of memory, long before OpenPGP's integrity check (at the
//! very end of the stream) could tell the object was forged. The guard follows the stream header by
//! header, with the `tar` crate's own parsing of each header (`tar::Header`) and the same rules
//! for where the next header is (a PAX `size` overrides the next entry's, as the crate does), and
//! fails the read that completes a header when:
//!
//! - its checksum does not match, or its size field is not a number (octal or base-256);
//! - it is an `L`, `K`, `x` or `g` header whose body is over [`MAX_EXTENSION`] (64 KiB);
//! - it is a GNU sparse file (`S`): never written by us or by the reference charm's `tar -c`, and
//!   the `tar` crate would follow its chain of sparse maps without bound;
//! - a long name, long link or PAX `path`/`linkpath` is longer than [`MAX_NAME`].
//!
//! Everything after the archive's end (its first all-zero block, where the `tar` crate stops) is
//! passed on unread: the reader drains it so gzip's trailer and the MDC are still checked.

use std::io::{self, Read};

use tar::Header;

use super::cause::Refusal;
use super::rules::MAX_NAME;

const BLOCK: usize = 512;
/// The largest GNU long name/link or PAX header body read (the `tar` crate buffers them whole).
pub const MAX_EXTENSION: u64 = 64 << 10;

pub struct TarGuard<R> {
    inner: R,
    header: [u8; BLOCK],
    filled: usize,
    state: State,
    /// Offset in the tar stream of the next byte to inspect (for messages).
    pos: u64,
    /// The size a PAX header gives the next entry that is not itself an extension header.
    pax_size: Option<u64>,
    pax_seen: bool,
    /// The name a GNU long-name header gives the next entry (for messages).
    long_name: Option<Vec<u8>>,
    long_link_seen: bool,
    /// A refusal is final: every later read repeats it.
    failed: Option<Refusal>,
}

enum State {
    Header,
    Body {
        /// Body bytes still to come, then the padding to the next block.
        left: u64,
        pad: u64,
        capture: Option<Capture>,
    },
    /// Past the archive's end.
    End,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ext {
    LongName,
    LongLink,
    Pax,
}

struct Capture {
    ext: Ext,
    bytes: Vec<u8>,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            header: [0; BLOCK],
            filled: 0,
            state: State::Header,
            pos: 0,
            pax_size: None,
            pax_seen: false,
            long_name: None,
            long_link_seen: false,
            failed: None,
        }
    }

    /// Follows `data`, the next bytes of the stream, through headers and bodies.
    fn inspect(&mut self, mut data: &[u8]) -> Result<(), Refusal> {
        loop {
            let finished = match &mut self.state {
                State::End => return Ok(()),
                State::Header => {
                    if data.is_empty() {
                        return Ok(());
                    }
                    let n = (BLOCK - self.filled).min(data.len());
                    self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
                    self.filled += n;
                    data = &data[n..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        let at = self.pos;
                        self.pos += BLOCK as u64;
                        self.on_header(at)?;
                    }
                    None
                }
                State::Body { left, pad, capture } => {
                    let body = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    if let Some(c) = capture.as_mut() {
                        c.bytes.extend_from_slice(&data[..body]);
                    }
                    *left -= body as u64;
                    data = &data[body..];
                    self.pos += body as u64;
                    if *left > 0 {
                        return Ok(()); // `data` is used up
                    }
                    let finished = capture.take();
                    let padding = usize::try_from(*pad).unwrap_or(usize::MAX).min(data.len());
                    *pad -= padding as u64;
                    data = &data[padding..];
                    self.pos += padding as u64;
                    if *pad == 0 {
                        self.state = State::Header;
                    } else if finished.is_none() {
                        return Ok(()); // `data` is used up
                    }
                    finished
                }
            };
            if let Some(c) = finished {
                self.on_extension(c)?;
            }
        }
    }

    /// A whole header at offset `at`: check it, and set up what follows it.
    fn on_header(&mut self, at: u64) -> Result<(), Refusal> {
        if self.header.iter().all(|b| *b == 0) {
            // the `tar` crate ends the archive here
            self.state = State::End;
            return Ok(());
        }
        let raw = self.header;
        let h = Header::from_byte_slice(&raw);
        let sum = raw[..148]
            .iter()
            .chain(&raw[156..])
            .fold(8 * 32u32, |a, b| a + u32::from(*b));
        match h.cksum() {
            Ok(want) if want == sum => {}
            _ => {
                return Err(Refusal::Damaged(format!(
                    "the tar header at byte {at} of the archive fails its checksum"
                )))
            }
        }
        let kind = h.entry_type();
        let raw_size = h.entry_size().map_err(|_| {
            Refusal::Damaged(format!(
                "the tar header at byte {at} of the archive has a size that is not a number"
            ))
        })?;
        let is_extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let name = || {
            let raw = match &self.long_name {
                Some(long) => long.clone(),
                None => h.path_bytes().into_owned(),
            };
            shown(&raw)
        };
        if kind.is_gnu_sparse() {
            return Err(Refusal::Hostile {
                entry: name(),
                reason: "a GNU sparse file (sparse entries are never restored)".into(),
            });
        }
        if is_extension && raw_size > MAX_EXTENSION {
            let what = if kind.is_gnu_longname() {
                "a GNU long name"
            } else if kind.is_gnu_longlink() {
                "a GNU long link name"
            } else {
                "a PAX extended header"
            };
            return Err(Refusal::Damaged(format!(
                "{what} of {raw_size} bytes at byte {at} of the archive, more than the {} KiB a restore reads",
                MAX_EXTENSION >> 10
            )));
        }
        // what the `tar` crate does: a PAX size is for the next entry that is not an extension
        // header; a recognized L, K or x header is taken in, anything else is handed out as an
        // entry and what was pending is forgotten
        let size = match self.pax_size {
            Some(pax) if !is_extension => pax,
            _ => raw_size,
        };
        let ext = match () {
            _ if !recognized => None,
            _ if kind.is_gnu_longname() => Some(Ext::LongName),
            _ if kind.is_gnu_longlink() => Some(Ext::LongLink),
            _ if kind.is_pax_local_extensions() => Some(Ext::Pax),
            _ => None,
        };
        match ext {
            Some(Ext::Pax) if self.pax_seen => return Err(twice(at, "PAX extended headers")),
            Some(Ext::LongName) if self.long_name.is_some() => return Err(twice(at, "GNU long names")),
            Some(Ext::LongLink) if self.long_link_seen => return Err(twice(at, "GNU long link names")),
            Some(_) => {}
            None => {
                self.pax_size = None;
                self.pax_seen = false;
                self.long_name = None;
                self.long_link_seen = false;
            }
        }
        let rounded = size
            .checked_add(BLOCK as u64 - 1)
            .map(|s| s & !(BLOCK as u64 - 1))
            .and_then(|r| r.checked_add(self.pos).map(|_| r))
            .ok_or_else(|| {
                Refusal::Damaged(format!(
                    "the tar header at byte {at} of the archive has an impossible size ({size} bytes)"
                ))
            })?;
        let capture = ext.map(|ext| Capture {
            ext,
            // the size was checked against MAX_EXTENSION above
            bytes: Vec::with_capacity(usize::try_from(size).unwrap_or(0)),
        });
        self.state = State::Body {
            left: size,
            pad: rounded - size,
            capture,
        };
        Ok(())
    }

    /// The whole body of a GNU long name/link or PAX header.
    fn on_extension(&mut self, c: Capture) -> Result<(), Refusal> {
        match c.ext {
            Ext::LongName | Ext::LongLink => {
                // the `tar` crate drops one trailing NUL
                let name = match c.bytes.split_last() {
                    Some((0, name)) => name,
                    _ => &c.bytes[..],
                };
                check_name(name, if c.ext == Ext::LongName { "name" } else { "link target" })?;
                if c.ext == Ext::LongName {
                    self.long_name = Some(name.to_vec());
                } else {
                    self.long_link_seen = true;
                }
            }
            Ext::Pax => {
                self.pax_seen = true;
                self.pax_size = pax_size(&c.bytes);
                for ext in tar::PaxExtensions::new(&c.bytes).flatten() {
                    match ext.key_bytes() {
                        b"path" => check_name(ext.value_bytes(), "name")?,
                        b"linkpath" => check_name(ext.value_bytes(), "link target")?,
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// The `size` record of a PAX header, exactly as the `tar` crate reads it (its first `size`
/// record, as a decimal; none if a record before it is malformed or its value is not a number).
fn pax_size(body: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(body) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse::<u64>().ok();
    }
    None
}

fn check_name(name: &[u8], what: &str) -> Result<(), Refusal> {
    if name.len() > MAX_NAME {
        return Err(Refusal::Hostile {
            entry: shown(name),
            reason: format!(
                "a {what} of {} bytes, longer than the {MAX_NAME} a restore takes",
                name.len()
            ),
        });
    }
    Ok(())
}

fn twice(at: u64, what: &str) -> Refusal {
    Refusal::Damaged(format!("two {what} for one entry at byte {at} of the archive"))
}

/// A name as a message shows it: lossy UTF-8, its first 120 characters.
pub(crate) fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(120).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(r) = &self.failed {
            return Err(r.error());
        }
        if matches!(self.state, State::End) {
            return self.inner.read(buf);
        }
        let n = self.inner.read(buf)?;
        if let Err(r) = self.inspect(&buf[..n]) {
            let e = r.error();
            self.failed = Some(r);
            return Err(e);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::cause;
    use crate::archive::ArchiveError;

    fn header(name: &str, kind: tar::EntryType, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    fn with_body(h: &Header, body: &[u8]) -> Vec<u8> {
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    /// A reader of `data`, then of `endless` zero bytes; counts what was read.
    struct Counted<'a> {
        data: &'a [u8],
        endless: bool,
        read: u64,
    }

    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = if self.data.is_empty() {
                if !self.endless {
                    return Ok(0);
                }
                buf.fill(0);
                buf.len()
            } else {
                let n = buf.len().min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                n
            };
            self.read += n as u64;
            Ok(n)
        }
    }

    /// Every entry's name and body through the guard and the `tar` crate, or the first error.
    fn entries(stream: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
        let mut archive = tar::Archive::new(TarGuard::new(stream));
        let mut out = Vec::new();
        for entry in archive.entries().map_err(|e| cause::classify(e, None))? {
            let mut entry = entry.map_err(|e| cause::classify(e, None))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).map_err(|e| cause::classify(e, None))?;
            out.push((name, body));
        }
        Ok(out)
    }

    fn end() -> Vec<u8> {
        vec![0; 2 * BLOCK]
    }

    #[test]
    fn ordinary_archives_pass_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("data/{}", "n".repeat(300));
        for (name, body) in [
            ("data/a", &b"hello"[..]),
            (&long, &[7u8; 1500][..]),
            ("data/empty", b""),
        ] {
            let mut h = Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, name, body).unwrap();
        }
        let mut h = Header::new_ustar();
        h.set_size(3);
        b.append_data(&mut h, "data/ustar", &b"abc"[..]).unwrap();
        let mut stream = b.into_inner().unwrap();
        stream.extend_from_slice(b"trailing bytes after the end are passed on");
        let got = entries(&stream).unwrap();
        let names: Vec<_> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["data/a", long.as_str(), "data/empty", "data/ustar"]);
        assert_eq!(got[1].1, vec![7u8; 1500]);
        // all of it, byte for byte, through the guard
        let mut all = Vec::new();
        TarGuard::new(&stream[..]).read_to_end(&mut all).unwrap();
        assert_eq!(all, stream);
    }

    #[test]
    fn a_huge_pax_header_is_refused_before_its_body_is_read() {
        let h = header("././@PaxHeader", tar::EntryType::XHeader, 1 << 30);
        let mut src = Counted {
            data: h.as_bytes(),
            endless: true,
            read: 0,
        };
        let mut archive = tar::Archive::new(TarGuard::new(&mut src));
        let e = match archive.entries().unwrap().next() {
            Some(Err(e)) => cause::classify(e, None),
            _ => panic!("the entry should fail"),
        };
        assert!(
            matches!(&e, ArchiveError::Damaged(t) if t.contains("PAX extended header of 1073741824 bytes")),
            "{e}"
        );
        drop(archive);
        assert!(src.read < 64 << 10, "{} bytes were read", src.read);
    }

    #[test]
    fn long_names_and_links_are_capped() {
        for (kind, what) in [
            (tar::EntryType::GNULongName, "GNU long name"),
            (tar::EntryType::GNULongLink, "GNU long link name"),
            (tar::EntryType::XGlobalHeader, "PAX extended header"),
        ] {
            let h = header("././@LongLink", kind, MAX_EXTENSION + 1);
            let e = entries(&with_body(&h, &[b'a'; 100])).unwrap_err();
            assert!(matches!(&e, ArchiveError::Damaged(t) if t.contains(what)), "{e}");
        }
        // under the cap, but longer than a restore takes
        let name = vec![b'n'; MAX_NAME + 1];
        let mut body = name.clone();
        body.push(0);
        let mut stream = with_body(
            &header("././@LongLink", tar::EntryType::GNULongName, body.len() as u64),
            &body,
        );
        stream.extend(with_body(&header("short", tar::EntryType::Regular, 1), b"x"));
        stream.extend(end());
        let e = entries(&stream).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Hostile { reason, .. } if reason.contains("name of 4097 bytes")),
            "{e}"
        );
        // exactly the longest name passes
        let name = vec![b'n'; MAX_NAME];
        let mut body = name.clone();
        body.push(0);
        let mut stream = with_body(
            &header("././@LongLink", tar::EntryType::GNULongName, body.len() as u64),
            &body,
        );
        stream.extend(with_body(&header("short", tar::EntryType::Regular, 1), b"x"));
        stream.extend(end());
        let got = entries(&stream).unwrap();
        assert_eq!(got[0].0.len(), MAX_NAME);
    }

    #[test]
    fn a_pax_path_too_long_is_refused_and_a_pax_size_is_followed() {
        let record = |key: &str, value: &str| {
            // "<len> <key>=<value>\n", the length counting itself
            let rest = format!(" {key}={value}\n");
            let mut len = rest.len() + 1;
            while format!("{len}{rest}").len() != len {
                len += 1;
            }
            format!("{len}{rest}")
        };
        let long = record("path", &"p".repeat(MAX_NAME + 1));
        let mut stream = with_body(
            &header("PaxHeaders/x", tar::EntryType::XHeader, long.len() as u64),
            long.as_bytes(),
        );
        stream.extend(with_body(&header("short", tar::EntryType::Regular, 1), b"x"));
        stream.extend(end());
        let e = entries(&stream).unwrap_err();
        assert!(matches!(&e, ArchiveError::Hostile { .. }), "{e}");

        // a PAX size of 600 where the header says 0: the next header is where the crate looks
        let size = record("size", "600");
        let mut stream = with_body(
            &header("PaxHeaders/x", tar::EntryType::XHeader, size.len() as u64),
            size.as_bytes(),
        );
        stream.extend(with_body(&header("data/f", tar::EntryType::Regular, 0), &[3u8; 600]));
        stream.extend(with_body(&header("data/g", tar::EntryType::Regular, 2), b"ok"));
        stream.extend(end());
        let got = entries(&stream).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, vec![3u8; 600]);
        assert_eq!(got[1], ("data/g".to_string(), b"ok".to_vec()));
    }

    #[test]
    fn sparse_files_bad_checksums_and_bad_sizes_are_refused() {
        let h = header("data/sparse", tar::EntryType::GNUSparse, 10);
        let e = entries(&with_body(&h, b"0123456789")).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Hostile { entry, reason } if entry == "data/sparse" && reason.contains("sparse")),
            "{e}"
        );

        let mut bad = header("data/f", tar::EntryType::Regular, 1).as_bytes().to_vec();
        bad[0] ^= 1;
        let e = entries(&with_body(Header::from_byte_slice(&bad), b"x")).unwrap_err();
        assert!(matches!(&e, ArchiveError::Damaged(t) if t.contains("checksum")), "{e}");

        let mut h = header("data/f", tar::EntryType::Regular, 1);
        h.as_old_mut().size = *b"not a size!\0";
        h.set_cksum();
        let e = entries(h.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Damaged(t) if t.contains("not a number")),
            "{e}"
        );

        // base-256: the largest size a header can say, which no stream can follow
        let mut h = header("data/f", tar::EntryType::Regular, 0);
        h.as_old_mut().size = [0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        h.set_cksum();
        let e = entries(h.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Damaged(t) if t.contains("impossible size")),
            "{e}"
        );
    }

    #[test]
    fn a_refusal_is_final() {
        let h = header("data/sparse", tar::EntryType::GNUSparse, 0);
        let mut g = TarGuard::new(&h.as_bytes()[..]);
        let mut buf = [0u8; BLOCK];
        assert!(g.read(&mut buf).is_err());
        assert!(g.read(&mut buf).is_err());
    }

    #[test]
    fn headers_cut_anywhere_are_followed() {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..20 {
            let body = vec![i as u8; i * 97];
            let mut h = Header::new_gnu();
            h.set_size(body.len() as u64);
            b.append_data(&mut h, format!("data/{}{i}", "x".repeat(i * 20)), &body[..])
                .unwrap();
        }
        let stream = b.into_inner().unwrap();
        // one byte at a time, then in odd sizes: the same entries
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        for step in [1, 7, 511, 513, 4096] {
            let mut archive = tar::Archive::new(TarGuard::new(Dribble(&stream, step)));
            let mut sizes = Vec::new();
            for entry in archive.entries().unwrap() {
                let mut body = Vec::new();
                entry.unwrap().read_to_end(&mut body).unwrap();
                sizes.push(body.len());
            }
            assert_eq!(sizes, (0..20).map(|i| i * 97).collect::<Vec<_>>(), "step {step}");
        }
    }
}
