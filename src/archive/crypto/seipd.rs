//! The bulk of OpenPGP passphrase encryption, done here rather than in Sequoia: a Symmetrically
//! Encrypted Integrity Protected Data packet, version 1 (RFC 4880 §5.13), AES in CFB mode with a
//! SHA-1 "modification detection code" over the plaintext.
//!
//! Why not Sequoia for this part: Sequoia computes every SHA-1, the MDC included, with collision
//! detection (sha1collisiondetection), which is several times slower than SHA-1 on the CPU's SHA
//! instructions and was most of our encrypt and decrypt time. Collision detection protects
//! signatures; the MDC is a checksum under encryption, which GnuPG computes with plain SHA-1 too.
//! Sequoia still does everything else: the SKESK packet and its S2K, packet parsing, compression
//! packets, and every message that is not AES in a SEIPD v1 packet.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use aes::cipher::generic_array::GenericArray;
use aes::cipher::inout::InOutBuf;
use aes::cipher::typenum::U16;
use aes::cipher::{BlockCipher, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit};
use aes::Aes256;
use sha1::{Digest, Sha1};

const BLOCK: usize = 16;
/// The random prefix and its two repeated octets (the "quick check" a wrong key fails).
pub const PREFIX: usize = BLOCK + 2;
/// The MDC packet: tag, length, 20 octets of SHA-1.
const MDC_PACKET: usize = 22;
const MDC_HEADER: [u8; 2] = [0xD3, 0x14];
/// Partial body chunks of 2^18 = 256 KiB, the pipe's chunk size.
const CHUNK_LOG2: u8 = 18;
const CHUNK: usize = 1 << CHUNK_LOG2;
const TAG_LITERAL: u8 = 0xC0 | 11;
const TAG_SEIPD: u8 = 0xC0 | 18;

/// A new-format definite length (RFC 4880 §4.2.2).
fn definite_length(len: usize, out: &mut Vec<u8>) {
    if len < 192 {
        out.push(len as u8);
    } else if len < 8384 {
        let v = len - 192;
        out.extend_from_slice(&[((v >> 8) + 192) as u8, (v & 0xFF) as u8]);
    } else {
        out.push(0xFF);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// Writes a SEIPD v1 packet of a literal data packet: `write` the plaintext, then `finish`.
/// Both packets stream with partial body lengths of 256 KiB: memory is two such buffers, and the
/// plaintext of large writes is not copied before it is encrypted.
pub struct Seipd1Writer<W: Write> {
    sink: W,
    cfb: CfbEncryptor,
    mdc: Sha1,
    /// The literal packet's body so far in its current chunk (its first six octets are the
    /// packet's own fields: binary, no file name, no date).
    literal: Vec<u8>,
    /// One octet for the chunk's length, then the SEIPD packet's body (the version octet, then
    /// ciphertext) so far in the current chunk.
    body: Vec<u8>,
}

impl<W: Write> Seipd1Writer<W> {
    /// Starts the packet in `sink`, which already holds the SKESK packet for `key`.
    pub fn new(mut sink: W, key: &[u8], prefix: [u8; BLOCK]) -> io::Result<Self> {
        let cfb = CfbEncryptor {
            cipher: Aes256::new_from_slice(key).map_err(|_| io::Error::other("the session key has the wrong size"))?,
            feedback: [0; BLOCK],
            keystream: [0; BLOCK],
            pos: 0,
        };
        sink.write_all(&[TAG_SEIPD])?;
        let mut body = Vec::with_capacity(1 + CHUNK);
        body.extend_from_slice(&[0xE0 | CHUNK_LOG2, 1]);
        let mut w = Seipd1Writer {
            sink,
            cfb,
            mdc: Sha1::new(),
            literal: Vec::with_capacity(CHUNK),
            body,
        };
        let mut start = [0u8; PREFIX];
        start[..BLOCK].copy_from_slice(&prefix);
        start[BLOCK..].copy_from_slice(&prefix[BLOCK - 2..]);
        w.seal(&start, true)?;
        w.seal(&[TAG_LITERAL], true)?;
        w.literal.extend_from_slice(&[b'b', 0, 0, 0, 0, 0]);
        Ok(w)
    }

    /// Encrypts `plain` into the SEIPD body (hashing it for the MDC when `hash`), sending each
    /// full chunk on.
    fn seal(&mut self, mut plain: &[u8], hash: bool) -> io::Result<()> {
        if hash {
            self.mdc.update(plain);
        }
        while !plain.is_empty() {
            let n = (1 + CHUNK - self.body.len()).min(plain.len());
            let start = self.body.len();
            self.body.extend_from_slice(&plain[..n]);
            self.cfb.encrypt(&mut self.body[start..]);
            plain = &plain[n..];
            if self.body.len() == 1 + CHUNK {
                self.sink.write_all(&self.body)?;
                self.body.truncate(1);
            }
        }
        Ok(())
    }

    /// Ends the literal packet's current chunk: its length octet, what `literal` holds, then
    /// `rest` (so `literal.len() + rest.len()` is the chunk's length).
    fn seal_literal_chunk(&mut self, length: &[u8], rest: &[u8]) -> io::Result<()> {
        let literal = std::mem::take(&mut self.literal);
        let result = self
            .seal(length, true)
            .and_then(|()| self.seal(&literal, true))
            .and_then(|()| self.seal(rest, true));
        self.literal = literal;
        self.literal.clear();
        result
    }

    /// Ends both packets and the MDC; returns the sink (not flushed).
    pub fn finish(mut self) -> io::Result<W> {
        let mut len = Vec::with_capacity(5);
        definite_length(self.literal.len(), &mut len);
        self.seal_literal_chunk(&len, &[])?;
        self.seal(&MDC_HEADER, true)?;
        let digest = self.mdc.clone().finalize();
        self.seal(&digest, false)?;
        len.clear();
        definite_length(self.body.len() - 1, &mut len);
        self.sink.write_all(&len)?;
        self.sink.write_all(&self.body[1..])?;
        Ok(self.sink)
    }
}

impl<W: Write> Write for Seipd1Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let missing = CHUNK - self.literal.len();
            if rest.len() < missing {
                self.literal.extend_from_slice(rest);
                break;
            }
            self.seal_literal_chunk(&[0xE0 | CHUNK_LOG2], &rest[..missing])?;
            rest = &rest[missing..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // only whole chunks can be sent; `finish` sends the rest
    }
}

/// AES-256 in CFB mode over a stream cut anywhere: whole blocks go through cfb-mode's block
/// encryptor in one call (its buffered encryptor dispatches per block, ~17% slower), the ends
/// of a cut block are done here.
struct CfbEncryptor {
    cipher: Aes256,
    /// The previous ciphertext block; while `pos > 0`, the current block's ciphertext so far.
    feedback: [u8; BLOCK],
    /// E(previous ciphertext block), for the current block while `pos > 0`.
    keystream: [u8; BLOCK],
    /// Octets of the current block already encrypted.
    pos: usize,
}

impl CfbEncryptor {
    fn encrypt(&mut self, mut data: &mut [u8]) {
        if self.pos > 0 {
            let n = (BLOCK - self.pos).min(data.len());
            let (head, rest) = data.split_at_mut(n);
            self.xor(head);
            data = rest;
        }
        let whole = data.len() / BLOCK * BLOCK;
        if whole > 0 {
            let (blocks, rest) = data.split_at_mut(whole);
            let mut cfb = cfb_mode::Encryptor::<Aes256>::inner_iv_init(self.cipher.clone(), &self.feedback.into());
            cfb.encrypt_blocks_inout_mut(InOutBuf::from(&mut blocks[..]).into_chunks::<U16>().0);
            self.feedback.copy_from_slice(&blocks[whole - BLOCK..]);
            data = rest;
        }
        if !data.is_empty() {
            self.xor(data);
        }
    }

    /// Encrypts `data` (no longer than what is left of the current block) octet by octet.
    fn xor(&mut self, data: &mut [u8]) {
        if self.pos == 0 {
            let mut block = GenericArray::from(self.feedback);
            self.cipher.encrypt_block(&mut block);
            self.keystream.copy_from_slice(&block);
        }
        for b in data.iter_mut() {
            *b ^= self.keystream[self.pos];
            self.feedback[self.pos] = *b;
            self.pos += 1;
        }
        if self.pos == BLOCK {
            self.pos = 0;
        }
    }
}

/// How reading a SEIPD v1 body ended, for the code that only sees the plaintext packets inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    Unread,
    Verified,
    Failed(String),
}

/// The plaintext of a SEIPD v1 body (what follows the version octet), for AES of any key size.
/// It holds back the last 22 octets (where the MDC packet will be) until the end of the input,
/// checks the MDC there, and fails the read that reaches the end if it does not match.
pub struct MdcReader<R, C: BlockCipher + BlockEncryptMut + Clone> {
    src: R,
    cfb: cfb_mode::Decryptor<C>,
    /// The same cipher, for the last partial block (CFB's keystream is E(previous ciphertext)).
    block: C,
    last_cipher_block: [u8; BLOCK],
    mdc: Sha1,
    buf: Box<[u8]>,
    /// `buf[start..plain]` is plaintext not yet released, `buf[plain..end]` a partial block still
    /// encrypted.
    start: usize,
    plain: usize,
    end: usize,
    /// Decrypted octets still to drop at `start` (the two check octets, hashed already).
    skip: usize,
    eof: bool,
    outcome: Arc<Mutex<Integrity>>,
}

impl<R: Read, C> MdcReader<R, C>
where
    C: BlockCipher<BlockSize = U16> + BlockEncryptMut + BlockEncrypt + KeyInit + Clone,
{
    /// `Err(src)` back when `key` fails the quick check (a wrong passphrase or key). `first` is
    /// the body's first 18 octets, already read from `src`.
    pub fn new(src: R, key: &[u8], first: &[u8; PREFIX], outcome: Arc<Mutex<Integrity>>) -> Result<Self, R> {
        let Ok(cipher) = C::new_from_slice(key) else {
            return Err(src);
        };
        let mut cfb = cfb_mode::Decryptor::<C>::inner_iv_init(cipher.clone(), &GenericArray::default());
        let mut prefix = [0u8; BLOCK];
        prefix.copy_from_slice(&first[..BLOCK]);
        let (blocks, _) = InOutBuf::from(&mut prefix[..]).into_chunks::<U16>();
        cfb.decrypt_blocks_inout_mut(blocks);
        // the check octets open the second block, which the decryptor does when it is whole
        let mut keystream = GenericArray::clone_from_slice(&first[..BLOCK]);
        cipher.encrypt_block(&mut keystream);
        let check = [first[BLOCK] ^ keystream[0], first[BLOCK + 1] ^ keystream[1]];
        if check != prefix[BLOCK - 2..] {
            return Err(src);
        }
        let mut mdc = Sha1::new();
        mdc.update(prefix);
        mdc.update(check);
        let mut buf = vec![0u8; CHUNK].into_boxed_slice();
        buf[..2].copy_from_slice(&first[BLOCK..]);
        let mut last_cipher_block = [0u8; BLOCK];
        last_cipher_block.copy_from_slice(&first[..BLOCK]);
        Ok(MdcReader {
            src,
            cfb,
            block: cipher,
            last_cipher_block,
            mdc,
            buf,
            start: 0,
            plain: 0,
            end: 2,
            skip: 2,
            eof: false,
            outcome,
        })
    }
}

impl<R: Read, C> MdcReader<R, C>
where
    C: BlockCipher<BlockSize = U16> + BlockEncryptMut + BlockEncrypt + Clone,
{
    /// Reads more ciphertext and decrypts its whole blocks; at the end of the input, decrypts the
    /// last partial block and checks the MDC.
    fn refill(&mut self) -> io::Result<()> {
        let shift = self.start;
        self.buf.copy_within(shift..self.end, 0);
        self.start = 0;
        self.plain -= shift;
        self.end -= shift;
        let n = loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.end += n;
        let whole = (self.end - self.plain) / BLOCK * BLOCK;
        if whole > 0 {
            let blocks = &mut self.buf[self.plain..self.plain + whole];
            self.last_cipher_block.copy_from_slice(&blocks[whole - BLOCK..]);
            let (blocks, _) = InOutBuf::from(blocks).into_chunks::<U16>();
            self.cfb.decrypt_blocks_inout_mut(blocks);
            self.plain += whole;
        }
        if n == 0 {
            self.eof = true;
            let mut keystream = GenericArray::clone_from_slice(&self.last_cipher_block);
            self.block.encrypt_block(&mut keystream);
            for (b, k) in self.buf[self.plain..self.end].iter_mut().zip(keystream.iter()) {
                *b ^= k;
            }
            self.plain = self.end;
        }
        if self.skip > 0 && self.plain - self.start >= self.skip.min(self.end - self.start) {
            self.start += self.skip.min(self.end - self.start);
            self.skip = 0;
        }
        if self.eof {
            self.check_mdc()?;
        }
        Ok(())
    }

    fn check_mdc(&mut self) -> io::Result<()> {
        let verdict = if self.end - self.start < MDC_PACKET {
            Err("the encrypted data ends before its integrity check: the object is truncated")
        } else {
            let tail = self.end - MDC_PACKET;
            let mut mdc = self.mdc.clone();
            mdc.update(&self.buf[self.start..tail]);
            mdc.update(MDC_HEADER);
            if self.buf[tail..tail + 2] != MDC_HEADER {
                Err("the encrypted data does not end with its integrity check: the object is truncated")
            } else if mdc.finalize()[..] != self.buf[tail + 2..self.end] {
                Err("the integrity check (MDC) does not match: the object was modified or damaged")
            } else {
                self.end = tail;
                self.plain = tail;
                Ok(())
            }
        };
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        match verdict {
            Ok(()) => {
                *outcome = Integrity::Verified;
                Ok(())
            }
            Err(why) => {
                *outcome = Integrity::Failed(why.to_string());
                Err(io::Error::new(io::ErrorKind::InvalidData, why))
            }
        }
    }
}

impl<R: Read, C> Read for MdcReader<R, C>
where
    C: BlockCipher<BlockSize = U16> + BlockEncryptMut + BlockEncrypt + Clone,
{
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.eof {
                // a failed MDC check fails every later read too
                if let Integrity::Failed(why) = &*self.outcome.lock().unwrap_or_else(|p| p.into_inner()) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
                }
            }
            let ready = if self.eof {
                self.end - self.start
            } else {
                (self.plain - self.start).saturating_sub(MDC_PACKET)
            };
            if ready > 0 || self.eof || out.is_empty() {
                let n = ready.min(out.len());
                let released = &self.buf[self.start..self.start + n];
                out[..n].copy_from_slice(released);
                if !self.eof {
                    self.mdc.update(released);
                }
                self.start += n;
                return Ok(n);
            }
            self.refill()?;
        }
    }
}
