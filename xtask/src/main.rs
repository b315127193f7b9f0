//! `cargo xtask pack`: build the release binary and write both charms (see [`xtask::charms`]):
//! `synapse` (Kubernetes) and `synapse-backup` (machines). Each is a zip holding `dispatch` (the
//! binary itself, mode 0755: Juju restores execute bits only from the archive), the charm's
//! `metadata.yaml`, `config.yaml`, `actions.yaml`, and a `manifest.yaml` naming the bases it runs
//! on. The bases are checked against the binary: it must be x86-64, and the newest glibc symbol
//! version it needs must be present on every base (Ubuntu 22.04 has glibc 2.35, 24.04 has 2.39).
//! `cargo xtask stage` assembles a charmcraft project directory instead.
//!
//! ```text
//! cargo xtask pack [--binary PATH] [--charm synapse|synapse-backup] [--output-dir DIR]
//! cargo xtask stage synapse|synapse-backup DIR [--binary PATH]
//! ```
//!
//! `cargo xtask fixture …`: fixture Synapse trees for the tests and benchmarks (see
//! [`xtask::fixture`]):
//!
//! ```text
//! cargo xtask fixture make DIR [--size 64M] [--profile mixed|small] [--server-name example.com]
//!                              [--seed 1] [--events 20000] [--small-files 0]
//! cargo xtask fixture churn DIR [--seconds 10]    write to homeserver.db like a live server; prints the count
//! cargo xtask fixture digest DIR                  one line per file: sha256 size relpath
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use xtask::charms::{self, charm_file_name, pack, Charm, BASES};
use xtask::fixture;

const USAGE: &str = "usage: cargo xtask pack [--binary PATH] [--charm synapse|synapse-backup] [--output-dir DIR]
       cargo xtask stage synapse|synapse-backup DIR [--binary PATH]
       cargo xtask fixture make DIR [--size 64M] [--profile mixed|small] [--server-name example.com] \
[--seed 1] [--events 20000] [--small-files N]
       cargo xtask fixture churn DIR [--seconds 10]
       cargo xtask fixture digest DIR";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("pack") => pack_command(args),
        Some("stage") => stage_command(args),
        Some("fixture") => fixture_command(args),
        _ => Err(USAGE.into()),
    }
}

fn repo_root() -> Result<PathBuf, String> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "xtask is not inside the repository".to_string())
}

fn parse_charm(name: &str) -> Result<Charm, String> {
    Charm::parse(name).ok_or_else(|| format!("unknown charm {name:?}: synapse or synapse-backup\n{USAGE}"))
}

/// The checked binary: the one given, or a fresh release build.
fn binary(root: &Path, given: Option<PathBuf>) -> Result<Vec<u8>, String> {
    let binary = match given {
        Some(b) => b,
        None => build_release(root)?,
    };
    let bytes = fs::read(&binary).map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    check_binary(&bytes)?;
    Ok(bytes)
}

fn pack_command(mut args: impl Iterator<Item = String>) -> Result<(), String> {
    let root = repo_root()?;
    let mut given = None;
    let mut which: Vec<Charm> = charms::ALL.to_vec();
    let mut out_dir = root.clone();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--binary" => given = Some(PathBuf::from(args.next().ok_or(USAGE)?)),
            "--charm" => which = vec![parse_charm(&args.next().ok_or(USAGE)?)?],
            "--output-dir" => out_dir = PathBuf::from(args.next().ok_or(USAGE)?),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    let bytes = binary(&root, given)?;
    for charm in which {
        let output = out_dir.join(charm_file_name(charm));
        pack(&root, charm, &bytes, &output)?;
        println!("{}  ({})", output.display(), charm.describe());
    }
    Ok(())
}

/// A charmcraft project directory: charmcraft.yaml, the charm's YAML files and the binary.
fn stage_command(mut args: impl Iterator<Item = String>) -> Result<(), String> {
    let root = repo_root()?;
    let charm = parse_charm(&args.next().ok_or(USAGE)?)?;
    let dir = PathBuf::from(args.next().ok_or(USAGE)?);
    let mut given = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--binary" => given = Some(PathBuf::from(args.next().ok_or(USAGE)?)),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    let bytes = binary(&root, given)?;
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut files = charm.files(&root);
    files.push(("charmcraft.yaml", charm.charmcraft_yaml(&root)));
    for (name, from) in files {
        fs::copy(&from, dir.join(name)).map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    }
    let bin = dir.join("synapse-backup");
    fs::write(&bin, &bytes).map_err(|e| format!("cannot write {}: {e}", bin.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    println!("{}: `cd {} && charmcraft pack`", dir.display(), dir.display());
    Ok(())
}

fn fixture_command(mut args: impl Iterator<Item = String>) -> Result<(), String> {
    let command = args.next().ok_or(USAGE)?;
    let allowed: &[&str] = match command.as_str() {
        "make" => &[
            "--size",
            "--profile",
            "--server-name",
            "--seed",
            "--events",
            "--small-files",
        ],
        "churn" => &["--seconds"],
        "digest" => &[],
        _ => return Err(format!("unknown fixture command {command:?}\n{USAGE}")),
    };
    let mut dir = None;
    let mut options: Vec<(String, String)> = Vec::new();
    while let Some(arg) = args.next() {
        if let Some(flag) = arg.strip_prefix("--") {
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (format!("--{name}"), value.to_string()),
                None => (
                    arg.clone(),
                    args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?,
                ),
            };
            if !allowed.contains(&name.as_str()) {
                return Err(format!("fixture {command}: unknown option {name}\n{USAGE}"));
            }
            options.push((name, value));
        } else if dir.is_none() {
            dir = Some(PathBuf::from(arg));
        } else {
            return Err(format!("unexpected argument {arg:?}\n{USAGE}"));
        }
    }
    let dir = dir.ok_or_else(|| format!("fixture {command}: DIR is missing\n{USAGE}"))?;
    let number = |name: &str, value: &str| -> Result<u64, String> {
        value
            .parse()
            .map_err(|_| format!("{name}: not a whole number: {value:?}"))
    };
    match command.as_str() {
        "make" => {
            let mut make = fixture::Options::default();
            for (name, value) in &options {
                match name.as_str() {
                    "--size" => make.size = fixture::parse_size(value).map_err(|e| e.to_string())?,
                    "--profile" => make.profile = value.parse().map_err(|e: fixture::Error| e.to_string())?,
                    "--server-name" => make.server_name = value.clone(),
                    "--seed" => make.seed = number(name, value)?,
                    "--events" => make.events = number(name, value)?,
                    _ => make.small_files = number(name, value)?,
                }
            }
            let root = fixture::make(&dir, &make).map_err(|e| e.to_string())?;
            println!("{}", root.display());
        }
        "churn" => {
            let mut seconds = 10.0;
            for (name, value) in &options {
                seconds = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("{name}: not a number of seconds: {value:?}"))?;
            }
            let n = fixture::churn(&dir, Duration::from_secs_f64(seconds)).map_err(|e| e.to_string())?;
            println!("{n}");
        }
        _ => {
            let listing = fixture::digest(&dir).map_err(|e| e.to_string())?;
            std::io::stdout()
                .write_all(listing.as_bytes())
                .map_err(|e| format!("cannot write the digest: {e}"))?;
        }
    }
    Ok(())
}

/// `cargo build --release` of the binary; its path.
fn build_release(root: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "--package",
            "synapse-backup",
            "--bin",
            "synapse-backup",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build --release failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release/synapse-backup"))
}

/// The binary must be an x86-64 ELF needing no glibc newer than the oldest base ships.
fn check_binary(bytes: &[u8]) -> Result<(), String> {
    const EM_X86_64: u16 = 62;
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err("the binary is not an ELF executable".into());
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    if machine != EM_X86_64 {
        return Err(format!(
            "the binary is not x86-64 (ELF machine {machine}); the charm declares amd64"
        ));
    }
    if let Some((major, minor)) = newest_glibc(bytes) {
        for (channel, glibc) in BASES {
            if (major, minor) > glibc {
                return Err(format!(
                    "the binary needs glibc {major}.{minor} but Ubuntu {channel} has {}.{}: build on the oldest \
                     base (Ubuntu 22.04, e.g. with charmcraft pack) or for x86_64-unknown-linux-musl",
                    glibc.0, glibc.1
                ));
            }
        }
        eprintln!("xtask: the binary needs glibc {major}.{minor}: fine on every base");
    }
    Ok(())
}

/// The newest `GLIBC_x.y` symbol version named in the binary's dynamic string table.
fn newest_glibc(bytes: &[u8]) -> Option<(u32, u32)> {
    const TAG: &[u8] = b"GLIBC_";
    let mut newest = None;
    let mut i = 0;
    while let Some(pos) = find(&bytes[i..], TAG) {
        let start = i + pos + TAG.len();
        let end = bytes[start..]
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .map_or(bytes.len(), |p| start + p);
        let version = std::str::from_utf8(&bytes[start..end]).unwrap_or("");
        let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
        if let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) {
            newest = newest.max(Some((major, minor)));
        }
        i = end.max(start);
    }
    newest
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_elf(extra: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[18] = 62;
        b.extend_from_slice(extra);
        b
    }

    #[test]
    fn finds_the_newest_glibc() {
        let b = fake_elf(b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0");
        assert_eq!(newest_glibc(&b), Some((2, 34)));
        assert!(check_binary(&b).is_ok());
        let too_new = fake_elf(b"\0GLIBC_2.38\0");
        assert!(check_binary(&too_new).unwrap_err().contains("Ubuntu 22.04 has 2.35"));
        assert!(check_binary(b"#!/bin/sh\n").is_err());
    }
}
