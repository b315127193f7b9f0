//! Shared by the integration tests: fixture trees made by `xtask::fixture`, the real binary,
//! real gpg, digests of what a backup must carry.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod pebble;
pub mod synapse;
pub mod systemd;

pub const PASSPHRASE: &str = "correct horse battery staple";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_synapse-backup")
}

/// A fixture Synapse tree (`homeserver.yaml`, signing key, SQLite database, media store), made
/// in-process by `xtask::fixture` (`cargo xtask fixture make`).
pub fn fixture(dir: &Path, size: &str, profile: &str) -> PathBuf {
    let options = xtask::fixture::Options {
        size: xtask::fixture::parse_size(size).expect("a fixture size"),
        profile: profile.parse().expect("a fixture profile"),
        events: 2000,
        ..Default::default()
    };
    xtask::fixture::make(dir, &options).expect("the fixture tree is made");
    dir.join("homeserver.yaml")
}

/// `sha256 size relpath` for every file under `dir` (`cargo xtask fixture digest`).
/// The tool's lock file (`.synapse-backup.lock`, its holder's pid inside) is left out: it is the
/// tool's bookkeeping beside the data, rewritten by every command.
pub fn digest(dir: &Path) -> String {
    let all = xtask::fixture::digest(dir).expect("the tree is digested");
    all.lines()
        .filter(|l| !l.ends_with(" .synapse-backup.lock"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `synapse-backup recover --commit`: drops the previous data a `--service none` restore keeps.
pub fn commit_restore(config: &Path) {
    let out = Command::new(bin())
        .arg("--synapse-config")
        .arg(config)
        .args(["recover", "--commit"])
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// What a backup must carry, compared as a user would: every file's bytes, except the SQLite
/// database, whose content is compared by `.dump` (a snapshot rewrites its header's counters).
pub fn backed_up_state(dir: &Path) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for line in digest(dir).lines() {
        let mut parts = line.splitn(3, ' ');
        let (sha, _size, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let carried = path.ends_with(".signing.key")
            || path.starts_with("media_store/local_content/")
            || path.starts_with("media_store/local_thumbnails/");
        if carried {
            state.insert(path.to_string(), sha.to_string());
        }
    }
    state.insert("homeserver.db (dump)".into(), sqlite_dump(&dir.join("homeserver.db")));
    state
}

pub fn sqlite_dump(db: &Path) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(".dump")
        .output()
        .expect("sqlite3 runs");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs the CLI with the passphrase in the environment (never in argv).
pub fn cli(config: &Path, store: &Path, args: &[&str]) -> Run {
    cli_with(config, store, args, PASSPHRASE)
}

pub fn cli_with(config: &Path, store: &Path, args: &[&str], passphrase: &str) -> Run {
    Command::new(bin())
        .arg("--synapse-config")
        .arg(config)
        .arg("--store")
        .arg(store)
        .args(args)
        .env("SYNAPSE_BACKUP_PASSPHRASE", passphrase)
        .env_remove("SYNAPSE_BACKUP_PASSPHRASE_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
        .into()
}

/// The one backup id in a store directory.
pub fn only_backup(store: &Path) -> String {
    let ids = backup_names(store);
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// gpg in batch mode with its own home, the passphrase from a file (a test's secret).
pub fn gpg(home: &Path, passphrase: &str, args: &[&str]) -> Command {
    std::fs::create_dir_all(home).unwrap();
    let mut perms = std::fs::metadata(home).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
    std::fs::set_permissions(home, perms).unwrap();
    let pass = home.join("passphrase");
    std::fs::write(&pass, passphrase).unwrap();
    let mut cmd = Command::new("gpg");
    cmd.env("GNUPGHOME", home)
        .args([
            "--batch",
            "--yes",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase-file",
        ])
        .arg(&pass)
        .args(args);
    cmd
}

/// Runs `cmd` with `input` on its stdin, fed from another thread (a large input would otherwise
/// fill one pipe while the output fills the other); its output, whatever its status.
pub fn run_with_stdin(cmd: &mut Command, input: Vec<u8>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not run: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&input)
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    out
}

/// Runs a shell pipeline (for stock-tool interoperability checks).
pub fn sh(script: &str) -> Run {
    Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .output()
        .expect("bash runs")
        .into()
}

/// A lost server: everything in its data directory goes but `homeserver.yaml`.
pub fn lose_all_but_config(data: &Path) {
    for entry in std::fs::read_dir(data).unwrap().flatten() {
        if entry.file_name() != "homeserver.yaml" {
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
}

/// Every `backup-…` name in a store directory, sorted (not-a-backup files included, as a user
/// listing the directory sees them).
pub fn backup_names(store: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(store)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("backup-"))
        .collect();
    ids.sort();
    ids
}

/// Removes what a restore puts back (signing key, database, local media), as after a disk loss.
pub fn wipe(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("example.com.signing.key"));
    let _ = std::fs::remove_file(dir.join("homeserver.db"));
    let _ = std::fs::remove_dir_all(dir.join("media_store/local_content"));
    let _ = std::fs::remove_dir_all(dir.join("media_store/local_thumbnails"));
}
/// Every path below `dir` (links not followed).
pub fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
    }
    out
}

/// An archive made with Python's tarfile (which writes whatever names it is given), encrypted with gpg.
pub fn hostile_backup(tmp: &Path, store: &Path, script: &str) -> String {
    let tarball = tmp.join("hostile.tar");
    let py = format!("import tarfile, io\nt = tarfile.open({:?}, 'w')\ndef add(name, data=b'x', kind=tarfile.REGTYPE, link=''):\n    i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.size = len(data) if kind == tarfile.REGTYPE else 0\n    t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)\n{script}\nt.close()\n", tarball.display().to_string());
    let out = Command::new("python3").arg("-c").arg(py).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::create_dir_all(store).unwrap();
    let id = "backup-20250101000000000000".to_string();
    let _ = fs::remove_file(store.join(&id));
    assert!(gpg(&tmp.join("g"), PASSPHRASE, &["--symmetric", "-o"])
        .arg(store.join(&id))
        .arg(&tarball)
        .status()
        .unwrap()
        .success());
    id
}

/// The binary against an S3 server, as an operator runs it: bucket, endpoint, path-style URIs and
/// `path` on the command line, the credentials and passphrase in the environment (never in argv),
/// and nothing of this machine's own store, proxy or AWS settings.
pub fn s3_command(
    endpoint: &str,
    access_key: &str,
    secret_key: &str,
    bucket: &str,
    path: &str,
    config: &Path,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--synapse-config")
        .arg(config)
        .args([
            "--bucket",
            bucket,
            "--endpoint",
            endpoint,
            "--s3-uri-style",
            "path",
            "--path",
            path,
        ])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("SYNAPSE_BACKUP_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null());
    for var in [
        "SYNAPSE_BACKUP_STORE",
        "SYNAPSE_BACKUP_PASSPHRASE_FILE",
        "SYNAPSE_BACKUP_ABANDONED_AFTER_HOURS",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "JUJU_CHARM_HTTP_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}
pub mod juju;
