//! OpenPGP packet framing (RFC 4880 §4.2) for the hot path: a packet header, and a reader of one
//! packet's body whatever its length encoding (one of old- or new-format, definite, partial
//! chunks, or up to the end of the input). Sequoia parses packets too, but hashes and copies
//! every body it reads; the bulk of a backup only needs the framing removed.

use std::io::{self, Read};

use crate::archive::read_full;

/// How a packet's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    Definite(u64),
    /// A chunk of this many octets, after which another length follows.
    Partial(u64),
    /// Up to the end of the input (old-format length type 3).
    Indeterminate,
}

/// One packet header read from `src`: its tag, its length, and the octets it was made of (so
/// a caller that hands the packet to another parser can give them back). `None` at the end.
pub fn header<R: Read>(src: &mut R) -> io::Result<Option<(u8, Length, Vec<u8>)>> {
    let mut ctb = [0u8; 1];
    if read_full(src, &mut ctb)? == 0 {
        return Ok(None);
    }
    let ctb = ctb[0];
    if ctb & 0x80 == 0 {
        return Err(invalid("not an OpenPGP packet header"));
    }
    let mut raw = vec![ctb];
    let (tag, length) = if ctb & 0x40 != 0 {
        (ctb & 0x3F, new_length(src, &mut raw)?)
    } else {
        let width = match ctb & 3 {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => return Ok(Some(((ctb >> 2) & 0xF, Length::Indeterminate, raw))),
        };
        let mut be = [0u8; 4];
        exact(src, &mut be[4 - width..])?;
        raw.extend_from_slice(&be[4 - width..]);
        ((ctb >> 2) & 0xF, Length::Definite(u64::from(u32::from_be_bytes(be))))
    };
    Ok(Some((tag, length, raw)))
}

/// A new-format length (§4.2.2), its octets appended to `raw`.
fn new_length<R: Read>(src: &mut R, raw: &mut Vec<u8>) -> io::Result<Length> {
    let mut first = [0u8; 1];
    exact(src, &mut first)?;
    raw.push(first[0]);
    Ok(match first[0] {
        n @ 0..=191 => Length::Definite(u64::from(n)),
        n @ 192..=223 => {
            let mut second = [0u8; 1];
            exact(src, &mut second)?;
            raw.push(second[0]);
            Length::Definite(((u64::from(n) - 192) << 8) + u64::from(second[0]) + 192)
        }
        n @ 224..=254 => Length::Partial(1 << (n & 0x1F)),
        255 => {
            let mut be = [0u8; 4];
            exact(src, &mut be)?;
            raw.extend_from_slice(&be);
            Length::Definite(u64::from(u32::from_be_bytes(be)))
        }
    })
}

/// The body of one packet; reading past its end gives 0, an input that ends inside it an error.
pub struct Body<R> {
    src: R,
    /// Octets left in the current chunk (unused when indeterminate).
    left: u64,
    length: Length,
    /// The message's last packet: anything after it is an error, found when the body ends.
    last: bool,
}

impl<R: Read> Body<R> {
    pub fn new(src: R, length: Length) -> Self {
        let left = match length {
            Length::Definite(n) | Length::Partial(n) => n,
            Length::Indeterminate => 0,
        };
        Body {
            src,
            left,
            length,
            last: false,
        }
    }

    /// The body of the message's last packet: its end is an error unless the input ends there too.
    pub fn last(src: R, length: Length) -> Self {
        Body {
            last: true,
            ..Body::new(src, length)
        }
    }

    /// Reads and discards the rest of the body, returning the input after it.
    pub fn skip(mut self) -> io::Result<R> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.src)
    }
}

impl<R: Read> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.length == Length::Indeterminate {
            return self.src.read(buf);
        }
        while self.left == 0 {
            match self.length {
                Length::Partial(_) => {
                    self.length = new_length(&mut self.src, &mut Vec::new())?;
                    self.left = match self.length {
                        Length::Definite(n) | Length::Partial(n) => n,
                        Length::Indeterminate => 0,
                    };
                }
                _ if self.last => {
                    let mut probe = [0u8; 1];
                    if read_full(&mut self.src, &mut probe)? > 0 {
                        return Err(invalid(
                            "there is data after the encrypted packet: the object was modified or damaged",
                        ));
                    }
                    self.last = false;
                    return Ok(0);
                }
                _ => return Ok(0),
            }
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.src.read(&mut buf[..want])?;
        if n == 0 && want > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the object ends inside an OpenPGP packet (truncated)",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// `read_exact`, with an error that says the packet header was cut short.
pub fn exact<R: Read>(src: &mut R, buf: &mut [u8]) -> io::Result<()> {
    if read_full(src, buf)? < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the object ends inside an OpenPGP packet (truncated)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut src = bytes;
        let (_, length, _) = header(&mut src)?.unwrap();
        let mut out = Vec::new();
        Body::new(src, length).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn every_length_encoding_reads_its_body() {
        // new format: one-, two- and five-octet lengths
        assert_eq!(body(&[0xCB, 3, 1, 2, 3]).unwrap(), [1, 2, 3]);
        let mut two = vec![0xCB, 192, 8];
        two.extend(vec![7u8; 200]);
        assert_eq!(body(&two).unwrap().len(), 200);
        assert_eq!(body(&[0xCB, 255, 0, 0, 0, 2, 9, 9]).unwrap(), [9, 9]);
        // partial chunks of 2^9 and 2^0, then a definite last chunk
        let mut partial = vec![0xD2, 0xE9];
        partial.extend(vec![1u8; 512]);
        partial.extend([0xE0, 2, 1, 3]);
        let out = body(&partial).unwrap();
        assert_eq!(out.len(), 514);
        assert_eq!(out[512..], [2, 3]);
        // old format: one-, two- and four-octet lengths, and indeterminate
        assert_eq!(body(&[0x8C, 2, 4, 5]).unwrap(), [4, 5]);
        assert_eq!(body(&[0x8D, 0, 1, 6]).unwrap(), [6]);
        assert_eq!(body(&[0x8E, 0, 0, 0, 1, 6]).unwrap(), [6]);
        assert_eq!(body(&[0xA3, 1, 2, 3, 4]).unwrap(), [1, 2, 3, 4]);
    }

    #[test]
    fn data_after_the_last_packet_is_an_error() {
        let last = |bytes: &[u8]| {
            let mut src = bytes;
            let (_, length, _) = header(&mut src).unwrap().unwrap();
            let mut out = Vec::new();
            Body::last(src, length).read_to_end(&mut out).map(|_| out)
        };
        assert_eq!(last(&[0xCB, 2, 1, 2]).unwrap(), [1, 2]);
        assert_eq!(
            last(&[0xCB, 2, 1, 2, 0]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut partial = vec![0xD2, 0xE9];
        partial.extend(vec![1u8; 512]);
        partial.extend([0x01, 2, 9]);
        assert_eq!(last(&partial).unwrap_err().kind(), io::ErrorKind::InvalidData);
        partial.pop();
        assert_eq!(last(&partial).unwrap().len(), 513);
    }

    #[test]
    fn a_body_cut_short_is_an_error_not_an_end() {
        assert_eq!(body(&[0xCB, 5, 1, 2]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            body(&[0xD2, 0xE9, 1, 2]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(body(&[0xCB, 255, 0]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(body(&[0x01]).is_err());
    }
}
