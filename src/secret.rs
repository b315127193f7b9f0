//! Secrets (the backup passphrase, an S3 secret key) held so they cannot leak by accident: no
//! `Debug`/`Display` of the value, zeroed when dropped (sequoia's `Password` keeps it encrypted in
//! memory). Read one only where it is handed to the library that needs it.

use std::fmt;

use sequoia_openpgp::crypto::Password;

#[derive(Clone)]
pub struct Secret(Password);

impl Secret {
    pub fn new(value: impl AsRef<str>) -> Self {
        Secret(Password::from(value.as_ref()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.map(|p| p.is_empty())
    }

    /// The value, for the one call that needs it.
    pub fn expose<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        self.0.map(|p| f(std::str::from_utf8(p).unwrap_or_default()))
    }

    pub(crate) fn password(&self) -> &Password {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The passphrase every backup is encrypted with (OpenPGP symmetric, as `gpg --symmetric`).
pub type Passphrase = Secret;
