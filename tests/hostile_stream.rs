//! Hostile and broken streams through the real binary: what an object can make a restore do before
//! OpenPGP's integrity check (at the very end) could tell it was forged, and what a store that dies
//! mid-download looks like. Every object is real: tar streams written here or by Python's tarfile,
//! gzip, and stock `gpg --symmetric`; the S3 server is the tests' real s3s-fs.
//!
//! Each case checks the refusal's words, that no panic was reported, and that the data tree is
//! exactly as before (nothing staged is left either).

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use s3_server::{Kind, S3Server};

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "2M", "small");
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();
    (tmp, data, config, store)
}

/// Entry names for the fixture's tree, as a foreign (manifest-less) archive names them.
fn rel(data: &Path) -> String {
    data.strip_prefix("/").unwrap().display().to_string()
}

const ID: &str = "backup-20250101000000000000";

/// Encrypts what `write_tar` writes, gzipped, with stock gpg into the store as backup [`ID`],
/// streaming (a stream of a GiB never sits in memory here).
fn plant(tmp: &Path, store: &Path, write_tar: impl FnOnce(&mut dyn Write)) -> String {
    let object = store.join(ID);
    let _ = fs::remove_file(&object);
    let mut child = gpg(
        &tmp.join("g"),
        PASSPHRASE,
        &["--symmetric", "--compress-algo", "none", "-o"],
    )
    .arg(&object)
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    {
        let stdin = child.stdin.take().unwrap();
        let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(stdin), flate2::Compression::fast());
        write_tar(&mut gz);
        gz.finish().unwrap().flush().unwrap();
    }
    assert!(child.wait().unwrap().success(), "gpg --symmetric failed");
    ID.to_string()
}

fn gnu_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // set_path refuses long names; the name field takes at most 100 bytes
    let field = &mut h.as_old_mut().name;
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name.as_bytes()[..n]);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn write_entry(out: &mut dyn Write, h: &tar::Header, body: &[u8]) {
    out.write_all(h.as_bytes()).unwrap();
    out.write_all(body).unwrap();
    let pad = (512 - body.len() % 512) % 512;
    out.write_all(&vec![0; pad]).unwrap();
}

fn end_of_archive(out: &mut dyn Write) {
    out.write_all(&[0; 1024]).unwrap();
}

/// Runs `restore` under GNU time: the run, and the peak RSS of the restoring process in KiB.
fn restore_measured(config: &Path, store: &Path, id: &str, passphrase: &str) -> (Run, u64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(bin())
        .arg("--synapse-config")
        .arg(config)
        .arg("--store")
        .arg(store)
        .args(["restore", id])
        .env("SYNAPSE_BACKUP_PASSPHRASE", passphrase)
        .env_remove("SYNAPSE_BACKUP_PASSPHRASE_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/time runs the binary");
    let text = fs::read_to_string(report.path()).unwrap();
    let kib = text
        .lines()
        .rev()
        .find_map(|l| l.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {text:?}"));
    (out.into(), kib)
}

fn assert_refused_untouched(data: &Path, before: &str, run: &Run, expect: &[&str]) {
    assert!(!run.ok, "the restore should have failed: {}", run.stderr);
    for words in expect {
        assert!(run.stderr.contains(words), "expected {words:?} in: {}", run.stderr);
    }
    assert!(!run.stderr.contains("panicked"), "a panic: {}", run.stderr);
    assert_eq!(digest(data), before, "the data tree changed");
    let staged = walk(data)
        .into_iter()
        .filter(|p| p.contains("synapse-backup-restore"))
        .collect::<Vec<_>>();
    assert!(staged.is_empty(), "{staged:?}");
}

#[test]
fn a_gigabyte_pax_header_is_refused_in_bounded_memory() {
    let (tmp, data, config, store) = setup();
    let before = digest(&data);
    let id = plant(tmp.path(), &store, |out| {
        let size = 1u64 << 30;
        out.write_all(gnu_header("././@PaxHeader", tar::EntryType::XHeader, size).as_bytes())
            .unwrap();
        // a GiB of PAX "records" the tar crate would read whole before parsing any
        let block = vec![b'9'; 1 << 20];
        for _ in 0..(size >> 20) {
            out.write_all(&block).unwrap();
        }
        write_entry(
            out,
            &gnu_header(&format!("{}/x", rel(&data)), tar::EntryType::Regular, 1),
            b"x",
        );
        end_of_archive(out);
    });
    let object_size = fs::metadata(store.join(&id)).unwrap().len();
    let (run, peak_kib) = restore_measured(&config, &store, &id, PASSPHRASE);
    eprintln!(
        "1 GiB PAX header ({object_size} bytes encrypted): restore peak RSS {} MiB",
        peak_kib / 1024
    );
    assert_refused_untouched(
        &data,
        &before,
        &run,
        &["PAX extended header of 1073741824 bytes", "64 KiB"],
    );
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
}

#[test]
fn long_names_sparse_files_and_impossible_times_are_refused_clearly() {
    let (tmp, data, config, store) = setup();
    let before = digest(&data);
    let media = format!("{}/media_store/local_content", rel(&data));

    // a GNU long name (typeflag L, as GNU tar and Python's tarfile write it) past PATH_MAX
    let script = format!(
        "import tarfile, io\nt = tarfile.open({:?}, 'w', format=tarfile.GNU_FORMAT)\ni = tarfile.TarInfo({:?}); i.size = 1\nt.addfile(i, io.BytesIO(b'x'))\nt.close()\n",
        tmp.path().join("long.tar").display().to_string(),
        format!("{media}/ab/{}", "n".repeat(5000)),
    );
    let made = Command::new("python3").arg("-c").arg(script).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tarball = fs::read(tmp.path().join("long.tar")).unwrap();
    let id = plant(tmp.path(), &store, |out| out.write_all(&tarball).unwrap());
    let run = cli(&config, &store, &["restore", &id]);
    assert_refused_untouched(&data, &before, &run, &["longer than the 4096 a restore takes"]);

    // a GNU sparse file
    let id = plant(tmp.path(), &store, |out| {
        write_entry(
            out,
            &gnu_header(&format!("{media}/sparse"), tar::EntryType::GNUSparse, 5),
            b"hello",
        );
        end_of_archive(out);
    });
    let run = cli(&config, &store, &["restore", &id]);
    assert_refused_untouched(&data, &before, &run, &["GNU sparse file", "never restored"]);

    // a manifest header bigger than any header: refused by its size, before it is read
    let id = plant(tmp.path(), &store, |out| {
        let body = vec![b' '; 2 << 20];
        write_entry(
            out,
            &gnu_header(
                &format!("{}/.synapse-backup/header.json", rel(&data)),
                tar::EntryType::Regular,
                body.len() as u64,
            ),
            &body,
        );
        end_of_archive(out);
    });
    let run = cli(&config, &store, &["restore", &id]);
    assert_refused_untouched(
        &data,
        &before,
        &run,
        &["is 2097152 bytes; a manifest entry is at most 1048576"],
    );

    // modification times of 2^63 seconds (GNU base-256) and of the year 10000
    for mtime in [1u64 << 63, 253_402_300_800] {
        let id = plant(tmp.path(), &store, |out| {
            let mut h = gnu_header(&format!("{media}/ab/file"), tar::EntryType::Regular, 5);
            h.set_mtime(mtime);
            h.set_cksum();
            write_entry(out, &h, b"hello");
            end_of_archive(out);
        });
        let run = cli(&config, &store, &["restore", &id]);
        assert_refused_untouched(&data, &before, &run, &["past the year 9999", &mtime.to_string()]);
    }
}

/// A backup made by `create` of the fixture, its bytes.
fn our_backup(config: &Path, store: &Path) -> (String, Vec<u8>) {
    let made = cli(config, store, &["create"]);
    assert!(made.ok, "{}", made.stderr);
    let id = only_backup(store);
    let bytes = fs::read(store.join(&id)).unwrap();
    (id, bytes)
}

/// The length of the OpenPGP packet at the start of `bytes` (new-format header, definite length).
fn first_packet_len(bytes: &[u8]) -> usize {
    assert_eq!(bytes[0] & 0xC0, 0xC0, "a new-format packet");
    match bytes[1] {
        n @ 0..=191 => 2 + n as usize,
        n @ 192..=223 => 3 + ((n as usize - 192) << 8) + bytes[2] as usize + 192,
        255 => 6 + u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize,
        n => panic!("a partial length ({n}) for a key packet"),
    }
}

#[test]
fn data_after_the_encrypted_packet_is_refused() {
    let (_tmp, data, config, store) = setup();
    let (id, good) = our_backup(&config, &store);
    let before = digest(&data);
    let mut longer = good.clone();
    longer.extend_from_slice(b"appended after the backup");
    fs::write(store.join(&id), &longer).unwrap();
    let run = cli(&config, &store, &["restore", &id]);
    assert_refused_untouched(&data, &before, &run, &["damaged", "data after the encrypted packet"]);
    let verify = cli(&config, &store, &["verify", &id]);
    assert!(!verify.ok, "verify passed an object with data appended");
    // the object as it was still verifies
    fs::write(store.join(&id), &good).unwrap();
    assert!(cli(&config, &store, &["verify", &id]).ok);
}

#[test]
fn a_burst_of_key_packets_is_refused_before_any_is_tried() {
    let (_tmp, data, config, store) = setup();
    let (id, good) = our_backup(&config, &store);
    let before = digest(&data);
    let skesk = first_packet_len(&good);
    assert_eq!(good[0] & 0x3F, 3, "an SKESK packet first");
    let mut burst = Vec::new();
    for _ in 0..50 {
        burst.extend_from_slice(&good[..skesk]);
    }
    burst.extend_from_slice(&good[skesk..]);
    fs::write(store.join(&id), &burst).unwrap();
    for passphrase in [PASSPHRASE, "not the passphrase"] {
        let started = Instant::now();
        let run = cli_with(&config, &store, &["restore", &id], passphrase);
        eprintln!(
            "50 SKESK packets, {}: refused in {:.2}s",
            if passphrase == PASSPHRASE {
                "right passphrase"
            } else {
                "wrong passphrase"
            },
            started.elapsed().as_secs_f64()
        );
        assert_refused_untouched(&data, &before, &run, &["more than 4 passphrase packets"]);
    }
    // four are still tried: the real one among them opens it
    let mut four = Vec::new();
    for _ in 0..4 {
        four.extend_from_slice(&good[..skesk]);
    }
    four.extend_from_slice(&good[skesk..]);
    fs::write(store.join(&id), &four).unwrap();
    let verify = cli(&config, &store, &["verify", &id]);
    assert!(verify.ok, "{}", verify.stderr);
}

#[test]
fn a_wrong_passphrase_is_told_once_tried() {
    let (_tmp, data, config, store) = setup();
    let (id, _) = our_backup(&config, &store);
    let before = digest(&data);
    let started = Instant::now();
    let run = cli_with(&config, &store, &["restore", &id], "not the passphrase");
    eprintln!("wrong passphrase: refused in {:.2}s", started.elapsed().as_secs_f64());
    assert_refused_untouched(&data, &before, &run, &["wrong passphrase"]);
}

// ---- a store that dies mid-download ----

const BUCKET: &str = "backups";

fn s3_cli(server: &S3Server, config: &Path, args: &[&str]) -> Command {
    s3_command(
        &server.endpoint(),
        &server.access_key,
        &server.secret_key,
        BUCKET,
        "",
        config,
        args,
    )
}

#[test]
fn an_s3_server_killed_mid_download_is_told_as_the_store_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // larger than the download's lookahead (twenty GETs of 2 MiB, whose answers the kernel's
    // socket buffers may hold in full): a smaller object can be all received before the kill
    let config = fixture(&data, "128M", "small");
    let mut server = S3Server::start(Kind::S3sFs);
    server.create_bucket(BUCKET);
    let made: Run = s3_cli(&server, &config, &["--json", "create"]).output().unwrap().into();
    assert!(made.ok, "{}", made.stderr);
    let report: serde_json::Value = serde_json::from_str(&made.stdout).unwrap();
    let id = report["backup-id"].as_str().unwrap().to_string();
    let before = digest(&data);

    let child = s3_cli(&server, &config, &["restore", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // staging has begun: the download is under way, most of the object still to come
    let started = Instant::now();
    while !walk(&data).iter().any(|p| p.contains("synapse-backup-restore")) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the restore never began staging"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    server.kill();
    let run: Run = child.wait_with_output().unwrap().into();
    eprintln!("{}", run.stderr.trim());
    assert_refused_untouched(
        &data,
        &before,
        &run,
        &[
            "the backup could not be read from the store",
            "nothing was changed",
            &server.endpoint(),
        ],
    );
    assert!(!run.stderr.contains("damaged"), "{}", run.stderr);
}
