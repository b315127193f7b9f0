//! OpenPGP with a passphrase, as `gpg --symmetric` does it, via Sequoia.
//!
//! Encrypting: SKESK v4 + SEIPD v1 (AES-256 with MDC), a literal data packet, no compression
//! packet (the archive is already gzip). GnuPG 2.2 rejects SEIPD v2/AEAD, so we do not use it.
//! Decrypting: whatever GnuPG writes for `--symmetric` (any S2K, a compression packet), with a
//! small hold-back buffer so memory stays bounded; integrity (the MDC) is only known at the end
//! of the stream, which is why restores stage everything before they touch live data.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openpgp::crypto::SessionKey;
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::stream::{DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Encryptor, LiteralWriter, Message};
use openpgp::types::SymmetricAlgorithm;
use openpgp::{Cert, KeyHandle};
use sequoia_openpgp as openpgp;

use super::ArchiveError;
use crate::secret::Secret;

/// Bytes the decryptor holds back before releasing plaintext (Sequoia's default is 25 MiB).
const HOLD_BACK: usize = 1 << 20;

static POLICY: StandardPolicy = StandardPolicy::new();

/// Wraps `sink` so what is written to it is encrypted; call `finalize()` on the result.
pub fn encrypt<'a, W: Write + Send + Sync + 'a>(sink: W, passphrase: &Secret) -> Result<Message<'a>, ArchiveError> {
    let message = Message::new(sink);
    let message = Encryptor::with_passwords(message, Some(passphrase.password().clone()))
        .symmetric_algo(SymmetricAlgorithm::AES256)
        .build()
        .map_err(|e| ArchiveError::io("cannot start encrypting", io::Error::other(e.to_string())))?;
    LiteralWriter::new(message)
        .build()
        .map_err(|e| ArchiveError::io("cannot start encrypting", io::Error::other(e.to_string())))
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

/// A reader of the plaintext inside `src`. Errors while reading mean the object is damaged,
/// truncated or tampered with; an error from this constructor says why it cannot be opened.
pub fn decrypt<'a, R: Read + Send + Sync + 'a>(
    src: R,
    passphrase: &Secret,
) -> Result<impl Read + Send + Sync + 'a, ArchiveError> {
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
