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
//!
//! Before the MDC, an object can only be trusted not to cost too much: at most [`MAX_SKESK`] key
//! packets are tried, each S2K runs once (the keys go to whichever decryptor the message needs),
//! S2K parameters are bounded, a SEIPD v1 packet too short to hold anything never reaches Sequoia
//! (whose decryptor panics on one), every Sequoia call on the object runs under `catch_unwind`,
//! and data after the SEIPD packet fails the read.

mod framing;
mod seipd;

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aes::{Aes128, Aes192, Aes256};
use openpgp::crypto::{SessionKey, S2K};
use openpgp::packet::header::BodyLength;
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
use super::{cause, ArchiveError};
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

/// SKESK packets tried at most: a backup has one (GnuPG writes one per passphrase); each costs
/// an S2K, up to a few hundred milliseconds, so a burst of them is refused unopened.
pub const MAX_SKESK: usize = 4;
/// The largest Argon2 memory a key derivation may ask for: 2^21 KiB = 2 GiB (RFC 9580's first
/// recommended parameters). GnuPG has no Argon2 S2K at all (2.2.40: "unknown S2K mode 4").
const MAX_ARGON2_M: u8 = 21;
/// Argon2 passes and lanes at most (RFC 9580 recommends t = 1 or 3, p = 4).
const MAX_ARGON2_T: u8 = 4;
const MAX_ARGON2_P: u8 = 64;
/// The shortest SEIPD v1 body that holds anything: version, a 16-octet block of random prefix and
/// its two check octets, and the 22-octet MDC packet.
const MIN_SEIPD1_BODY: u32 = 1 + 16 + 2 + 22;

/// A reader of the plaintext inside `src`. Errors while reading mean the object is damaged,
/// truncated or tampered with, or the store failed (see [`stream_error`]); an error from this
/// constructor says why it cannot be opened.
///
/// Every key packet's S2K runs once, here, before anything else: at most [`MAX_SKESK`] of them,
/// with bounded parameters; the keys they give go to whichever decryptor the message needs.
pub fn decrypt<'a, R: Read + Send + Sync + 'a>(
    mut src: R,
    passphrase: &Secret,
) -> Result<Box<dyn Read + Send + Sync + 'a>, ArchiveError> {
    let mut head = Vec::new();
    (&mut src)
        .take(SNIFF)
        .read_to_end(&mut head)
        .map_err(|e| cause::classify(e, Some("cannot read the object")))?;
    let plan = plan(&head, passphrase)?;
    let src = io::Cursor::new(head).chain(src);
    match plan {
        Plan::Aes(keys) => aes_decrypt(src, &keys),
        Plan::Sequoia(keys) => sequoia_decrypt(src, Keys::Derived(keys), true),
        Plan::Unknown => sequoia_decrypt(src, Keys::Passphrase(passphrase.clone()), false),
    }
}

/// What the start of an object says about how to open it.
enum Plan {
    /// A SEIPD v1 packet and the AES keys its SKESK packets gave: our own decryptor.
    Aes(Vec<(SymmetricAlgorithm, SessionKey)>),
    /// Another encrypted packet (or cipher), and the keys its SKESK packets gave: Sequoia's.
    Sequoia(Vec<(Option<SymmetricAlgorithm>, SessionKey)>),
    /// The start did not show the encrypted packet: Sequoia parses it all, or says what is wrong.
    Unknown,
}

/// The packets before the encrypted one, as Sequoia parses them (no key derived yet).
struct Head {
    skesks: Vec<SKESK>,
    pkesks: usize,
    /// Some(true) for a SEIPD v1 packet (with its body length when definite), Some(false) for any
    /// other encrypted packet; None when the start ended before one.
    seipd1: Option<bool>,
    seipd1_len: Option<u32>,
}

fn scan(head: &[u8]) -> Result<Option<Head>, ArchiveError> {
    let mut found = Head {
        skesks: Vec::new(),
        pkesks: 0,
        seipd1: None,
        seipd1_len: None,
    };
    let mut next = PacketParser::from_bytes(head);
    loop {
        let pp = match next {
            Ok(PacketParserResult::Some(pp)) => pp,
            _ => return Ok(None),
        };
        match &pp.packet {
            Packet::Marker(_) => {}
            Packet::SKESK(skesk) => {
                if found.skesks.len() == MAX_SKESK {
                    return Err(ArchiveError::NotABackup(format!(
                        "it starts with more than {MAX_SKESK} passphrase packets (SKESK); a backup has one, and no more than {MAX_SKESK} are tried"
                    )));
                }
                found.skesks.push(skesk.clone());
            }
            Packet::PKESK(_) => found.pkesks += 1,
            Packet::SEIP(SEIP::V1(_)) => {
                found.seipd1 = Some(true);
                if let BodyLength::Full(n) = pp.header().length() {
                    found.seipd1_len = Some(*n);
                }
                return Ok(Some(found));
            }
            // a SEIPD of another version, or the old unprotected SED (tag 9), which Sequoia
            // parses as an unknown packet: Sequoia's decryptor says what it makes of them
            Packet::SEIP(_) => {
                found.seipd1 = Some(false);
                return Ok(Some(found));
            }
            Packet::Unknown(u) if u.tag() == openpgp::packet::Tag::SEIP => {
                return Err(ArchiveError::Damaged(format!(
                    "its encrypted packet cannot be read ({})",
                    u.error()
                )));
            }
            Packet::Unknown(u) if u.tag() == openpgp::packet::Tag::SED => {
                found.seipd1 = Some(false);
                return Ok(Some(found));
            }
            _ => return Ok(None),
        }
        next = pp.next().map(|(_, next)| next);
    }
}

/// Why an S2K's parameters are refused, if they are: past what any sane encryptor writes, they
/// only cost CPU time or memory.
fn s2k_refusal(s2k: &S2K) -> Option<String> {
    #[allow(deprecated)]
    match s2k {
        // the iteration count's one-octet coding already caps it at 65,011,712 bytes hashed, the
        // most GnuPG writes or reads
        S2K::Iterated { .. } | S2K::Salted { .. } | S2K::Simple { .. } => None,
        S2K::Argon2 { t, p, m, .. } if *m > MAX_ARGON2_M || *t > MAX_ARGON2_T || *p > MAX_ARGON2_P => Some(format!(
            "its key derivation (Argon2 with t={t}, p={p}, m=2^{m} KiB) asks for more than a restore allows (t ≤ {MAX_ARGON2_T}, p ≤ {MAX_ARGON2_P}, m ≤ 2^{MAX_ARGON2_M} KiB)"
        )),
        S2K::Argon2 { .. } => None,
        other => Some(format!("its key derivation ({other:?}) is not one a backup uses")),
    }
}

fn skesk_s2k(skesk: &SKESK) -> Option<&S2K> {
    match skesk {
        SKESK::V4(s) => Some(s.s2k()),
        SKESK::V6(s) => Some(s.s2k()),
        _ => None,
    }
}

/// Each SKESK's session key, its S2K run once; refused S2K parameters stop everything.
fn derive_keys(
    skesks: &[SKESK],
    passphrase: &Secret,
) -> Result<Vec<(Option<SymmetricAlgorithm>, SessionKey)>, ArchiveError> {
    for skesk in skesks.iter().take(MAX_SKESK) {
        let why = match skesk_s2k(skesk) {
            Some(s2k) => s2k_refusal(s2k),
            None => Some(format!("a version {} passphrase packet", skesk.version())),
        };
        if let Some(why) = why {
            return Err(ArchiveError::NotABackup(why));
        }
    }
    Ok(skesks
        .iter()
        .take(MAX_SKESK)
        .filter_map(|skesk| {
            // Sequoia's parsers and KDFs are not ours to trust with hostile input: a panic is a no
            unwind(|| skesk.decrypt(passphrase.password())).ok()?.ok()
        })
        .collect())
}

/// Runs `f`, a panic in it an error (the Sequoia calls on what an object holds).
fn unwind<T>(f: impl FnOnce() -> T) -> Result<T, ArchiveError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        ArchiveError::NotABackup(format!(
            "the OpenPGP parser failed on it ({})",
            cause::panic_text(p.as_ref())
        ))
    })
}

fn plan(head: &[u8], passphrase: &Secret) -> Result<Plan, ArchiveError> {
    let Some(found) = unwind(|| scan(head))?? else {
        return Ok(Plan::Unknown);
    };
    if found.skesks.is_empty() {
        return Err(ArchiveError::NotABackup(if found.pkesks > 0 {
            "it is encrypted to a public key, not with a passphrase".into()
        } else {
            "it holds no passphrase packet (SKESK)".into()
        }));
    }
    if let (Some(true), Some(len)) = (found.seipd1, found.seipd1_len) {
        // Sequoia's SEIPD v1 decryptor panics on a body this short whose quick check passes
        // (sequoia-openpgp 2.4: an unwrap on an unexpected EOF in parse.rs)
        if len < MIN_SEIPD1_BODY {
            return Err(ArchiveError::Damaged(format!(
                "its encrypted packet is {len} bytes, too short to hold anything"
            )));
        }
    }
    let keys = derive_keys(&found.skesks, passphrase)?;
    if keys.is_empty() {
        // no key packet opened with this passphrase: telling it costs no second S2K
        return Err(ArchiveError::WrongPassphrase);
    }
    let aes: Vec<_> = keys
        .iter()
        .filter_map(|(algo, key)| match algo {
            Some(algo) if aes_key_size(*algo) == Some(key.len()) => Some((*algo, key.clone())),
            _ => None,
        })
        .collect();
    if found.seipd1 == Some(true) && aes.len() == keys.len() {
        Ok(Plan::Aes(aes))
    } else {
        Ok(Plan::Sequoia(keys))
    }
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
            Some((TAG_SEIPD, length, _)) => break Body::last(src, length),
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
    unwind(move || {
        let mut next = PacketParser::from_reader(plain).map_err(classify)?;
        loop {
            match next {
                PacketParserResult::Some(pp) => match pp.packet {
                    Packet::Literal(_) => {
                        return Ok(boxed(Unwinding::new(Literal {
                            data: Some(pp),
                            finish: rest_of_message,
                            outcome,
                        })))
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
    })?
}

/// What the Sequoia decryptor opens the message with.
enum Keys {
    /// Session keys already derived from the SKESK packets at the start.
    Derived(Vec<(Option<SymmetricAlgorithm>, SessionKey)>),
    /// The passphrase, for SKESK packets found past the start (each S2K checked first).
    Passphrase(Secret),
}

struct Helper {
    keys: Keys,
    wrong: Arc<AtomicBool>,
    public_key_only: Arc<AtomicBool>,
    refused: Arc<Mutex<Option<String>>>,
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
        let derived = match &self.keys {
            Keys::Derived(keys) => keys.clone(),
            Keys::Passphrase(passphrase) => {
                if skesks.len() > MAX_SKESK {
                    let why = format!(
                        "it has {} passphrase packets (SKESK); a backup has one, and no more than {MAX_SKESK} are tried",
                        skesks.len()
                    );
                    *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    return Err(openpgp::Error::MissingSessionKey("refused".into()).into());
                }
                match derive_keys(skesks, passphrase) {
                    Ok(keys) => keys,
                    Err(e) => {
                        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        return Err(openpgp::Error::MissingSessionKey("refused".into()).into());
                    }
                }
            }
        };
        for (algo, key) in &derived {
            if decrypt(*algo, key) {
                return Ok(None);
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

/// Any message that is not AES in SEIPD v1, through Sequoia's streaming decryptor. `encrypted`:
/// its start was seen to be key packets and an encrypted packet, so what Sequoia finds malformed
/// past them is damage, not another kind of object.
fn sequoia_decrypt<'a, R: Read + Send + Sync + 'a>(
    src: R,
    keys: Keys,
    encrypted: bool,
) -> Result<Box<dyn Read + Send + Sync + 'a>, ArchiveError> {
    let wrong = Arc::new(AtomicBool::new(false));
    let public_key_only = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(Mutex::new(None));
    let helper = Helper {
        keys,
        wrong: wrong.clone(),
        public_key_only: public_key_only.clone(),
        refused: refused.clone(),
    };
    let opened = unwind(move || {
        let builder = DecryptorBuilder::from_reader(src).map_err(|e| ArchiveError::NotABackup(e.to_string()))?;
        builder
            .buffer_size(HOLD_BACK)
            .with_policy(&POLICY, None, helper)
            .map_err(|e| match classify(e) {
                ArchiveError::NotABackup(why) if encrypted => ArchiveError::Damaged(why),
                other => other,
            })
    })?;
    match opened {
        Ok(d) => Ok(Box::new(Unwinding::new(d))),
        Err(_) if wrong.load(Ordering::Relaxed) => Err(ArchiveError::WrongPassphrase),
        Err(_) if public_key_only.load(Ordering::Relaxed) => Err(ArchiveError::NotABackup(
            "it is encrypted to a public key, not with a passphrase".into(),
        )),
        Err(e) => match refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(why) => Err(ArchiveError::NotABackup(why)),
            None => Err(e),
        },
    }
}

/// A reader from Sequoia whose panics become errors (and stay errors).
struct Unwinding<R> {
    inner: R,
    panicked: bool,
}

impl<R> Unwinding<R> {
    fn new(inner: R) -> Self {
        Unwinding { inner, panicked: false }
    }
}

impl<R: Read> Read for Unwinding<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let failed = || io::Error::new(io::ErrorKind::InvalidData, "the OpenPGP parser failed on this object");
        if self.panicked {
            return Err(failed());
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.read(buf))) {
            Ok(r) => r,
            Err(_) => {
                self.panicked = true;
                Err(failed())
            }
        }
    }
}

/// Sequoia's error for a stream that could not be opened or read, as we tell it to a user: by
/// the error's type, never its words.
fn classify(e: anyhow::Error) -> ArchiveError {
    for c in e.chain() {
        if let Some(known) = cause::marked_dyn(c) {
            return known;
        }
    }
    let text = format!("{e:#}");
    if e.chain().any(|c| cause::has_kind(c, io::ErrorKind::UnexpectedEof)) {
        return ArchiveError::Damaged(format!("the object ends too early ({text})"));
    }
    match e.downcast_ref::<openpgp::Error>() {
        Some(
            openpgp::Error::MalformedPacket(_)
            | openpgp::Error::MalformedMessage(_)
            | openpgp::Error::UnsupportedPacketType(_)
            | openpgp::Error::NoBindingSignature(_)
            | openpgp::Error::UnsupportedSymmetricAlgorithm(_)
            | openpgp::Error::UnsupportedAEADAlgorithm(_)
            | openpgp::Error::UnsupportedCompressionAlgorithm(_),
        ) => ArchiveError::NotABackup(text),
        _ => ArchiveError::Damaged(text),
    }
}

/// An error while reading the plaintext: the store stopped answering, or the object is damaged,
/// truncated or tampered with (a bad MDC); told by the error's type.
pub fn stream_error(e: io::Error) -> ArchiveError {
    cause::classify(e, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "correct horse battery staple";

    fn ours(plain: &[u8]) -> Vec<u8> {
        let mut w = encrypt(Vec::new(), &Secret::new(PASS)).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap()
    }

    fn open(object: &[u8], passphrase: &str) -> Result<Vec<u8>, ArchiveError> {
        let mut r = decrypt(io::Cursor::new(object.to_vec()), &Secret::new(passphrase))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(stream_error)?;
        Ok(out)
    }

    /// Our objects start with one SKESK packet: its length.
    fn skesk_len(object: &[u8]) -> usize {
        let mut src = object;
        let (tag, length, raw) = framing::header(&mut src).unwrap().unwrap();
        assert_eq!(tag, 3);
        match length {
            framing::Length::Definite(n) => raw.len() + n as usize,
            other => panic!("{other:?}"),
        }
    }

    fn with_skesks(object: &[u8], n: usize) -> Vec<u8> {
        let len = skesk_len(object);
        let mut out = Vec::new();
        for _ in 0..n {
            out.extend_from_slice(&object[..len]);
        }
        out.extend_from_slice(&object[len..]);
        out
    }

    #[test]
    fn at_most_four_key_packets_are_tried() {
        let object = ours(b"plain");
        assert_eq!(open(&with_skesks(&object, 4), PASS).unwrap(), b"plain");
        let e = open(&with_skesks(&object, 5), PASS).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::NotABackup(t) if t.contains("more than 4 passphrase packets")),
            "{e}"
        );
        assert!(matches!(open(&object, "wrong"), Err(ArchiveError::WrongPassphrase)));
    }

    #[test]
    fn data_after_the_encrypted_packet_fails_the_read() {
        let mut object = ours(&vec![5u8; 300_000]);
        object.push(0);
        let e = open(&object, PASS).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Damaged(t) if t.contains("data after the encrypted packet")),
            "{e}"
        );
    }

    #[test]
    fn argon2_beyond_the_limits_is_refused_without_deriving() {
        let algo = SymmetricAlgorithm::AES256;
        let key = SessionKey::new(32).unwrap();
        let s2k = S2K::Argon2 {
            salt: [7; 16],
            t: 1,
            p: 1,
            m: 10,
        };
        let secret = Secret::new(PASS);
        let skesk = SKESK4::with_password(algo, algo, s2k, &key, secret.password()).unwrap();
        let mut object = Vec::new();
        Packet::from(SKESK::from(skesk)).serialize(&mut object).unwrap();
        // version, cipher, S2K type, salt, t, p, then m: ask for 2^30 KiB
        let at = skesk_len(&object) - skesk_len_body(&object) + 1 + 1 + 1 + 16 + 2;
        assert_eq!(object[at], 10);
        object[at] = 30;
        let mut w = Seipd1Writer::new(object, &key, [3; 16]).unwrap();
        w.write_all(b"plain").unwrap();
        let object = w.finish().unwrap();
        let e = open(&object, PASS).unwrap_err();
        assert!(matches!(&e, ArchiveError::NotABackup(t) if t.contains("Argon2")), "{e}");
    }

    fn skesk_len_body(object: &[u8]) -> usize {
        let mut src = object;
        match framing::header(&mut src).unwrap().unwrap().1 {
            framing::Length::Definite(n) => n as usize,
            other => panic!("{other:?}"),
        }
    }

    /// An SKESK (no encrypted session key: the S2K's output is the key, as GnuPG writes it) for
    /// `algo`, then a SEIPD v1 packet with a body of `body` bytes.
    fn tiny(algo: SymmetricAlgorithm, body: usize) -> Vec<u8> {
        #[allow(deprecated)]
        let s2k = S2K::Salted {
            hash: openpgp::types::HashAlgorithm::SHA256,
            salt: [1; 8],
        };
        let mut skesk_body = vec![4, u8::from(algo)];
        openpgp::serialize::Marshal::serialize(&s2k, &mut skesk_body).unwrap();
        let mut object = vec![0xC3, skesk_body.len() as u8];
        object.extend_from_slice(&skesk_body);
        object.extend_from_slice(&[0xD2, body as u8, 1]);
        object.extend(std::iter::repeat_n(0x55, body - 1));
        object
    }

    #[test]
    fn a_tiny_encrypted_packet_is_refused_before_any_decryptor_sees_it() {
        for algo in [SymmetricAlgorithm::AES256, SymmetricAlgorithm::Twofish] {
            for body in [1, 2, 18, 19, 36, 37, 40] {
                let e = open(&tiny(algo, body), PASS).unwrap_err();
                assert!(matches!(&e, ArchiveError::Damaged(_)), "{algo:?} {body}: {e}");
            }
            for body in [37, 40] {
                let e = open(&tiny_opening(body), PASS).unwrap_err();
                assert!(
                    matches!(&e, ArchiveError::Damaged(t) if t.contains("too short")),
                    "{body}: {e}"
                );
            }
            // long enough to pass the check: an error too (the MDC cannot match), never a panic
            assert!(open(&tiny(algo, 60), PASS).is_err());
        }
    }

    /// [`tiny`] for AES-256, with the prefix made with the passphrase's key, so the quick check
    /// passes and a decryptor goes on to look for the MDC in what little is left.
    fn tiny_opening(body: usize) -> Vec<u8> {
        let mut object = tiny(SymmetricAlgorithm::AES256, 60);
        object.truncate(object.len() - 62);
        let secret = Secret::new(PASS);
        #[allow(deprecated)]
        let key = S2K::Salted {
            hash: openpgp::types::HashAlgorithm::SHA256,
            salt: [1; 8],
        }
        .derive_key(secret.password(), 32)
        .unwrap();
        let mut w = Seipd1Writer::new(Vec::new(), &key, [9; 16]).unwrap();
        w.write_all(&[0u8; 100]).unwrap();
        let seipd = w.finish().unwrap();
        // the writer's packet: tag, a partial or definite length, version 1, ciphertext
        let mut src = &seipd[..];
        let (_, _, raw) = framing::header(&mut src).unwrap().unwrap();
        let ciphertext = &seipd[raw.len() + 1..];
        object.extend_from_slice(&[0xD2, body as u8, 1]);
        object.extend_from_slice(&ciphertext[..body - 1]);
        object
    }

    #[test]
    fn sequoia_on_a_tiny_packet_fails_without_a_panic_even_unchecked() {
        // straight to Sequoia's decryptor, past the length check: it panics on 37 to 40 bytes
        // (the panic is printed), and the panic is an error
        for body in 36..=42 {
            let object = tiny_opening(body);
            let outcome = sequoia_decrypt(io::Cursor::new(object), Keys::Passphrase(Secret::new(PASS)), true)
                .and_then(|mut r| r.read_to_end(&mut Vec::new()).map(drop).map_err(stream_error));
            assert!(outcome.is_err(), "{body}");
        }
    }
}
