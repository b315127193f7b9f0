//! OpenPGP with a passphrase, as `gpg --symmetric` does it.
//!
//! Encrypting: an SKESK v4 packet (Sequoia: a random AES-256 session key under the passphrase's
//! S2K), then a SEIPD v1 packet (AES-256 with MDC) of a literal data packet, written by
//! [`seipd`]; no compression packet (the archive is already gzip). GnuPG 2.2 rejects SEIPD v2, so
//! we do not use it.
//! Decrypting: AES in a SEIPD v1 packet (ours, and what GnuPG writes) is decrypted by [`seipd`],
//! its packet framing removed by [`framing`]; Sequoia finds and opens the SKESK packets, parses
//! a compression packet inside (GnuPG's), and decrypts any other message with its own streaming
//! decryptor. Either way memory stays bounded and
//! integrity (the MDC) is only known at the end of the stream, which is why restores stage
//! everything before they touch live data.

mod framing;
mod seipd;

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aes::{Aes128, Aes192, Aes256};
use openpgp::crypto::SessionKey;
use openpgp::packet::skesk::SKESK4;
use openpgp::packet::{Packet, PKESK, SEIP, SKESK};
use openpgp::parse::stream::{DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper};
use openpgp::parse::{PacketParser, PacketParserResult, Parse};
use openpgp::policy::StandardPolicy;
use openpgp::serialize::Serialize;
use openpgp::types::SymmetricAlgorithm;
use openpgp::{Cert, KeyHandle};
use sequoia_openpgp as openpgp;

use self::framing::Body;
use self::seipd::{Integrity, MdcReader, Seipd1Writer, PREFIX};
use super::ArchiveError;
use crate::secret::Secret;

pub use self::seipd::Seipd1Writer as Encrypting;

/// Bytes the Sequoia decryptor holds back before releasing plaintext (Sequoia's default is 25 MiB).
const HOLD_BACK: usize = 1 << 20;
/// How much of the start of an object is parsed to find its key packets and the encrypted packet.
const SNIFF: u64 = 64 << 10;

static POLICY: StandardPolicy = StandardPolicy::new();

fn start_error(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::io("cannot start encrypting", io::Error::other(e.to_string()))
}

/// Wraps `sink` so what is written to it is encrypted; call `finish()` on the result.
pub fn encrypt<W: Write>(mut sink: W, passphrase: &Secret) -> Result<Encrypting<W>, ArchiveError> {
    let algo = SymmetricAlgorithm::AES256;
    let key = SessionKey::new(32).map_err(start_error)?;
    let skesk =
        SKESK4::with_password(algo, algo, Default::default(), &key, passphrase.password()).map_err(start_error)?;
    Packet::from(SKESK::from(skesk))
        .serialize(&mut sink)
        .map_err(|e| ArchiveError::io("writing the backup", io::Error::other(e.to_string())))?;
    let mut prefix = [0u8; 16];
    openpgp::crypto::random(&mut prefix[..]).map_err(start_error)?;
    Seipd1Writer::new(sink, &key, prefix).map_err(|e| ArchiveError::io("writing the backup", e))
}

/// A reader of the plaintext inside `src`. Errors while reading mean the object is damaged,
/// truncated or tampered with; an error from this constructor says why it cannot be opened.
pub fn decrypt<'a, R: Read + Send + Sync + 'a>(
    mut src: R,
    passphrase: &Secret,
) -> Result<Box<dyn Read + Send + Sync + 'a>, ArchiveError> {
    let mut head = Vec::new();
    (&mut src)
        .take(SNIFF)
        .read_to_end(&mut head)
        .map_err(|e| ArchiveError::Damaged(format!("cannot read the object: {e}")))?;
    let keys = aes_session_keys(&head, passphrase);
    let src = io::Cursor::new(head).chain(src);
    if keys.is_empty() {
        sequoia_decrypt(src, passphrase)
    } else {
        aes_decrypt(src, &keys)
    }
}

/// The AES session keys the passphrase opens, when `head` starts a message whose encrypted
/// packet is SEIPD v1; empty for anything else (Sequoia then decrypts it, or says what is wrong).
fn aes_session_keys(head: &[u8], passphrase: &Secret) -> Vec<(SymmetricAlgorithm, SessionKey)> {
    let mut skesks = Vec::new();
    let mut next = PacketParser::from_bytes(head);
    loop {
        let pp = match next {
            Ok(PacketParserResult::Some(pp)) => pp,
            _ => return Vec::new(),
        };
        match &pp.packet {
            Packet::Marker(_) => {}
            Packet::SKESK(skesk) => skesks.push(skesk.clone()),
            Packet::SEIP(SEIP::V1(_)) => break,
            _ => return Vec::new(),
        }
        next = pp.next().map(|(_, next)| next);
    }
    skesks
        .iter()
        .filter_map(|skesk| match skesk.decrypt(passphrase.password()) {
            Ok((Some(algo), key)) if aes_key_size(algo) == Some(key.len()) => Some((algo, key)),
            _ => None,
        })
        .collect()
}

fn aes_key_size(algo: SymmetricAlgorithm) -> Option<usize> {
    match algo {
        SymmetricAlgorithm::AES128 => Some(16),
        SymmetricAlgorithm::AES192 => Some(24),
        SymmetricAlgorithm::AES256 => Some(32),
        _ => None,
    }
}

fn aes_decrypt<'a, R: Read + Send + Sync + 'a>(
    mut src: R,
    keys: &[(SymmetricAlgorithm, SessionKey)],
) -> Result<Box<dyn Read + Send + Sync + 'a>, ArchiveError> {
    const TAG_SEIPD: u8 = 18;
    let mut body = loop {
        match framing::header(&mut src).map_err(stream_error)? {
            Some((TAG_SEIPD, length, _)) => break Body::new(src, length),
            Some((_, length, _)) => src = Body::new(src, length).skip().map_err(stream_error)?,
            None => return Err(ArchiveError::NotABackup("no encrypted data".into())),
        }
    };
    let mut version = [0u8; 1];
    framing::exact(&mut body, &mut version).map_err(stream_error)?;
    if version[0] != 1 {
        return Err(ArchiveError::NotABackup(format!(
            "encrypted data packet version {}",
            version[0]
        )));
    }
    let mut first = [0u8; PREFIX];
    framing::exact(&mut body, &mut first).map_err(stream_error)?;
    let outcome = Arc::new(Mutex::new(Integrity::Unread));
    for (algo, key) in keys {
        let opened: Result<Box<dyn Read + Send + Sync + 'a>, _> = match algo {
            SymmetricAlgorithm::AES128 => MdcReader::<_, Aes128>::new(body, key, &first, outcome.clone()).map(boxed),
            SymmetricAlgorithm::AES192 => MdcReader::<_, Aes192>::new(body, key, &first, outcome.clone()).map(boxed),
            _ => MdcReader::<_, Aes256>::new(body, key, &first, outcome.clone()).map(boxed),
        };
        match opened {
            Ok(plain) => return literal(plain, outcome),
            Err(back) => body = back,
        }
    }
    Err(ArchiveError::WrongPassphrase)
}

fn boxed<'a, R: Read + Send + Sync + 'a>(r: R) -> Box<dyn Read + Send + Sync + 'a> {
    Box::new(r)
}

/// The data of the literal packet that is the plaintext (ours); anything else (GnuPG's
/// compression packet) goes to Sequoia's parser.
fn literal<'a>(
    mut plain: Box<dyn Read + Send + Sync + 'a>,
    outcome: Arc<Mutex<Integrity>>,
) -> Result<Box<dyn Read + Send + Sync + 'a>, ArchiveError> {
    const TAG_LITERAL: u8 = 11;
    match framing::header(&mut plain).map_err(stream_error)? {
        Some((TAG_LITERAL, length, _)) => {
            let mut body = Body::new(plain, length);
            // format, file name (length-prefixed), date
            let mut format_and_name = [0u8; 2];
            framing::exact(&mut body, &mut format_and_name).map_err(stream_error)?;
            let mut name_and_date = vec![0u8; usize::from(format_and_name[1]) + 4];
            framing::exact(&mut body, &mut name_and_date).map_err(stream_error)?;
            Ok(Box::new(Literal {
                data: Some(body),
                finish: nothing_after,
                outcome,
            }))
        }
        Some((_, _, raw)) => literal_data(Box::new(io::Cursor::new(raw).chain(plain)), outcome),
        None => Err(ArchiveError::NotABackup("the encrypted message holds no data".into())),
    }
}

/// Literal data; at its end, `finish` reads what follows to the end of the plaintext (where the
/// MDC is checked), and the read fails unless the MDC matched.
struct Literal<R> {
    data: Option<R>,
    finish: fn(R) -> io::Result<()>,
    outcome: Arc<Mutex<Integrity>>,
}

impl<R: Read> Read for Literal<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(data) = self.data.as_mut() else {
            return integrity(&self.outcome); // the end again, or the same failure
        };
        let n = data.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        if let Some(data) = self.data.take() {
            if let Err(e) = (self.finish)(data) {
                *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Integrity::Failed(e.to_string());
                return Err(e);
            }
        }
        integrity(&self.outcome)
    }
}

/// The end of our literal packet is the end of the plaintext.
fn nothing_after<R: Read>(body: Body<R>) -> io::Result<()> {
    let mut probe = [0u8; 64];
    if body.skip()?.read(&mut probe)? > 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected data after the backup inside the encrypted packet",
        ));
    }
    Ok(())
}

/// Whatever packets follow GnuPG's literal packet, parsed to the end of the plaintext.
fn rest_of_message(literal: PacketParser<'_>) -> io::Result<()> {
    let mut next = literal.next().map_err(io::Error::other)?.1;
    loop {
        match next {
            PacketParserResult::Some(pp) => next = pp.next().map_err(io::Error::other)?.1,
            PacketParserResult::EOF(eof) => return io::copy(&mut eof.into_reader(), &mut io::sink()).map(drop),
        }
    }
}

/// `Ok(0)` (the end) if the MDC matched, else why not.
fn integrity(outcome: &Mutex<Integrity>) -> io::Result<usize> {
    match &*outcome.lock().unwrap_or_else(|p| p.into_inner()) {
        Integrity::Verified => Ok(0),
        Integrity::Failed(why) => Err(io::Error::new(io::ErrorKind::InvalidData, why.clone())),
        Integrity::Unread => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the encrypted data ended without its integrity check",
        )),
    }
}

/// The literal data in the decrypted packets (inside a compression packet, when GnuPG wrote it).
fn literal_data<'a>(
    plain: Box<dyn Read + Send + Sync + 'a>,
    outcome: Arc<Mutex<Integrity>>,
) -> Result<Box<dyn Read + Send + Sync + 'a>, ArchiveError> {
    let mut next = PacketParser::from_reader(plain).map_err(classify)?;
    loop {
        match next {
            PacketParserResult::Some(pp) => match pp.packet {
                Packet::Literal(_) => {
                    return Ok(Box::new(Literal {
                        data: Some(pp),
                        finish: rest_of_message,
                        outcome,
                    }))
                }
                Packet::CompressedData(_) => next = pp.recurse().map_err(classify)?.1,
                ref other => {
                    return Err(ArchiveError::NotABackup(format!(
                        "it holds a {} packet where data was expected",
                        other.tag()
                    )))
                }
            },
            PacketParserResult::EOF(_) => {
                return Err(ArchiveError::NotABackup("the encrypted message holds no data".into()))
            }
        }
    }
}

struct Helper {
    passphrase: Secret,
    wrong: Arc<AtomicBool>,
    public_key_only: Arc<AtomicBool>,
}

impl VerificationHelper for Helper {
    fn get_certs(&mut self, _: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }
    fn check(&mut self, _: MessageStructure) -> openpgp::Result<()> {
        Ok(()) // backups are not signed
    }
}

impl DecryptionHelper for Helper {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        skesks: &[SKESK],
        _sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        for skesk in skesks {
            if let Ok((algo, key)) = skesk.decrypt(self.passphrase.password()) {
                if decrypt(algo, &key) {
                    return Ok(None);
                }
            }
        }
        if skesks.is_empty() && !pkesks.is_empty() {
            self.public_key_only.store(true, Ordering::Relaxed);
        } else {
            self.wrong.store(true, Ordering::Relaxed);
        }
        Err(openpgp::Error::MissingSessionKey("no passphrase opens it".into()).into())
    }
}

/// Any message that is not AES in SEIPD v1, through Sequoia's streaming decryptor.
fn sequoia_decrypt<'a, R: Read + Send + Sync + 'a>(
    src: R,
    passphrase: &Secret,
) -> Result<Box<dyn Read + Send + Sync + 'a>, ArchiveError> {
    let wrong = Arc::new(AtomicBool::new(false));
    let public_key_only = Arc::new(AtomicBool::new(false));
    let helper = Helper {
        passphrase: passphrase.clone(),
        wrong: wrong.clone(),
        public_key_only: public_key_only.clone(),
    };
    let builder = DecryptorBuilder::from_reader(src).map_err(|e| ArchiveError::NotABackup(e.to_string()))?;
    builder
        .buffer_size(HOLD_BACK)
        .with_policy(&POLICY, None, helper)
        .map_err(|e| {
            if wrong.load(Ordering::Relaxed) {
                ArchiveError::WrongPassphrase
            } else if public_key_only.load(Ordering::Relaxed) {
                ArchiveError::NotABackup("it is encrypted to a public key, not with a passphrase".into())
            } else {
                classify(e)
            }
        })
        .map(boxed)
}

/// Sequoia's error for a stream that could not be read to its end, as we tell it to a user.
fn classify(e: anyhow::Error) -> ArchiveError {
    let text = format!("{e:#}");
    if text.contains("EOF") || text.contains("Truncated") || text.contains("truncated") {
        ArchiveError::Damaged(format!("the object ends too early ({text})"))
    } else if text.contains("No binding")
        || text.contains("Malformed")
        || text.contains("Unexpected packet")
        || text.contains("not a")
    {
        ArchiveError::NotABackup(text)
    } else {
        ArchiveError::Damaged(text)
    }
}

/// An error while reading the plaintext: the object is damaged, truncated or tampered with (a bad
/// MDC), or the store stopped answering.
pub fn stream_error(e: io::Error) -> ArchiveError {
    let text = e.to_string();
    if e.kind() == io::ErrorKind::UnexpectedEof || text.contains("EOF") || text.contains("runcated") {
        ArchiveError::Damaged(format!("the object ends too early ({text})"))
    } else {
        ArchiveError::Damaged(text)
    }
}
