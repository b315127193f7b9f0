//! The OpenPGP layer on its own: our encryption against stock `gpg`, GnuPG's output against our
//! decryption, and what a damaged object does to a reader.

mod common;

use std::io::{self, Read, Write};
use std::path::Path;

use common::PASSPHRASE as PASS;
use synapse_backup::archive::crypto::{decrypt, encrypt};
use synapse_backup::archive::ArchiveError;
use synapse_backup::secret::Secret;

/// gpg with `args`, `input` on its stdin; its stdout.
fn gpg(home: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let out = common::run_with_stdin(&mut common::gpg(home, PASS, args), input.to_vec());
    assert!(
        out.status.success(),
        "gpg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const CHUNK: usize = 1 << 18;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
}

fn ours(plain: &[u8]) -> Vec<u8> {
    let mut w = encrypt(Vec::new(), &Secret::new(PASS)).unwrap();
    // uneven writes, to cross every buffer boundary at odd places
    for piece in plain.chunks(100_003) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

fn open(object: &[u8], passphrase: &str) -> Result<Vec<u8>, String> {
    let mut r = decrypt(io::Cursor::new(object.to_vec()), &Secret::new(passphrase)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

const SIZES: [usize; 12] = [
    0,
    1,
    15,
    16,
    17,
    191,
    8400,
    CHUNK - 7,
    CHUNK - 6,
    CHUNK - 5,
    CHUNK,
    3 * CHUNK + 4321,
];

#[test]
fn every_size_round_trips_and_gpg_reads_it() {
    let home = tempfile::tempdir().unwrap();
    for len in SIZES {
        let plain = data(len);
        let object = ours(&plain);
        assert_eq!(open(&object, PASS).unwrap(), plain, "ours, {len} bytes");
        assert_eq!(gpg(home.path(), &["--decrypt"], &object), plain, "gpg, {len} bytes");
    }
}

#[test]
fn what_gpg_writes_opens_whatever_its_cipher_and_compression() {
    let home = tempfile::tempdir().unwrap();
    let plain = data(2 * CHUNK + 999);
    // AES (GnuPG's default) on our own decryptor, the rest through Sequoia's
    let cases = [
        ("AES", "none"),
        ("AES", "zip"),
        ("AES", "zlib"),
        ("AES", "bzip2"),
        ("AES192", "zip"),
        ("AES256", "zlib"),
        ("TWOFISH", "zip"),
        ("CAMELLIA128", "none"),
    ];
    for (cipher, compress) in cases {
        let args = ["--symmetric", "--cipher-algo", cipher, "--compress-algo", compress];
        let object = gpg(home.path(), &args, &plain);
        assert_eq!(open(&object, PASS).unwrap(), plain, "gpg {cipher} {compress}");
    }
}

#[test]
fn a_wrong_passphrase_is_told_as_such() {
    let home = tempfile::tempdir().unwrap();
    let plain = data(1000);
    let theirs = gpg(home.path(), &["--symmetric"], &plain);
    for object in [ours(&plain), theirs] {
        assert_eq!(
            open(&object, "wrong").unwrap_err(),
            ArchiveError::WrongPassphrase.to_string()
        );
    }
}

#[test]
fn byte_at_a_time_reads_give_the_same_plaintext() {
    let plain = data(CHUNK + 77);
    let mut r = decrypt(io::Cursor::new(ours(&plain)), &Secret::new(PASS)).unwrap();
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while r.read(&mut byte).unwrap() == 1 {
        out.push(byte[0]);
    }
    assert_eq!(out, plain);
}

#[test]
fn any_change_or_cut_fails_the_read() {
    let plain = data(3 * CHUNK);
    let good = ours(&plain);
    for at in [200, good.len() / 2, good.len() - 30, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        let err = open(&bad, PASS).expect_err("a flipped bit went unnoticed");
        assert!(
            err.contains("integrity check (MDC) does not match"),
            "flip at {at}: {err}"
        );
    }
    for len in [100, good.len() / 2, good.len() - 22, good.len() - 1] {
        let err = open(&good[..len], PASS).expect_err("a cut went unnoticed");
        assert!(err.contains("truncated"), "cut to {len}: {err}");
    }
    assert!(open(b"not an OpenPGP message at all", PASS).is_err());

    // a reader that failed its check never ends cleanly afterwards
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    let mut r = decrypt(io::Cursor::new(bad), &Secret::new(PASS)).unwrap();
    assert!(r.read_to_end(&mut Vec::new()).is_err());
    assert!(
        r.read(&mut [0u8; 16]).is_err(),
        "a second read after a failed MDC ended cleanly"
    );
}
