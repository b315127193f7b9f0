//! Every committed seed and every input a fuzzer once found (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`) goes through its target's harness in the normal test run.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("{target}: {}", path.display());
            run(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no seeds for {target}");
}

#[test]
fn restore() {
    replay("restore", fuzz_harness::restore);
}

#[test]
fn decrypt() {
    replay("decrypt", fuzz_harness::decrypt);
}

#[test]
fn manifest() {
    replay("manifest", fuzz_harness::manifest);
}

#[test]
fn homeserver_yaml() {
    replay("homeserver_yaml", fuzz_harness::homeserver_yaml);
}

#[test]
fn relation() {
    replay("relation", fuzz_harness::relation);
}
