//! The S3 store against real S3-protocol servers on loopback (s3s-fs and moto, each test on both):
//! the store through its trait, and the real binary driven as an operator would.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use s3_server::{Kind, S3Server, BOTH};
use synapse_backup::backup_id::BackupId;
use synapse_backup::store::s3::{DownloadTuning, S3Params, S3Store};
use synapse_backup::store::{ObjectMeta, ObjectStore, StoreError};

const BUCKET: &str = "backups";

fn store(server: &S3Server, bucket: &str, path: &str) -> S3Store {
    S3Store::new(S3Params::from_map(&server.databag(bucket, path)).unwrap()).unwrap()
}

fn server_with_bucket(kind: Kind) -> S3Server {
    let server = S3Server::start(kind);
    server.create_bucket(BUCKET);
    server
}

/// Incompressible, reproducible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn id(n: u32) -> BackupId {
    format!("backup-2024020615{:02}{:02}{:06}", n / 60 % 60, n % 60, n)
        .parse()
        .unwrap()
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        format: Some(1),
        server_name: Some("example.com".into()),
        tool_version: Some("synapse-backup test".into()),
        created_at: Some("2024-02-06T15:30:12Z".into()),
        kind: Some("full".into()),
        base: None,
    }
}

fn put(store: &S3Store, id: &BackupId, body: &[u8]) -> u64 {
    let mut up = store.put(id, &meta()).unwrap();
    // uneven writes, as the encryption stage makes them
    for chunk in body.chunks(100_003) {
        up.write_all(chunk).unwrap();
    }
    up.finish().unwrap()
}

#[test]
fn a_multi_part_object_round_trips_with_its_metadata() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let store = store(&server, BUCKET, "synapse");
        let body = noise(19 << 20, 7); // three parts
        let id = id(1);
        assert_eq!(put(&store, &id, &body), body.len() as u64, "{kind:?}");

        let list = store.list().unwrap();
        assert_eq!(list.len(), 1, "{kind:?}");
        assert_eq!(
            (&list[0].id, list[0].size, &list[0].meta),
            (&id, body.len() as u64, &meta())
        );
        let head = store.head(&id).unwrap().unwrap();
        assert_eq!((head.size, head.meta), (body.len() as u64, meta()));
        assert_eq!(server.keys(BUCKET), vec![format!("synapse/{id}")]);
        assert!(server.pending_uploads(BUCKET).is_empty(), "{kind:?}");

        let mut back = Vec::new();
        store.get(&id).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == body, "{kind:?}: the downloaded object differs");

        // a reader outlives the store it came from
        let mut reader = self::store(&server, BUCKET, "synapse").get(&id).unwrap();
        let mut again = Vec::new();
        reader.read_to_end(&mut again).unwrap();
        assert!(again == body, "{kind:?}: the download stopped with its store");

        store.delete(&id).unwrap();
        assert!(store.head(&id).unwrap().is_none());
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(store.delete(&id), Err(StoreError::NotFound(_))), "{kind:?}");
        let missing = store.get(&id).err().unwrap();
        assert_eq!(missing.to_string(), format!("backup-id {id} does not exist"));
    }
}

#[test]
fn an_empty_object_is_still_one_backup() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let store = store(&server, BUCKET, "");
        assert_eq!(put(&store, &id(2), b""), 0);
        assert_eq!(store.list().unwrap().len(), 1, "{kind:?}");
        let mut back = Vec::new();
        store.get(&id(2)).unwrap().read_to_end(&mut back).unwrap();
        assert!(back.is_empty());
    }
}

#[test]
fn keys_follow_the_reference_layout_whatever_the_path() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        for (n, (path, expected)) in [("", ""), ("/", ""), ("a/b/", "a/b/"), ("/x", "x/")].iter().enumerate() {
            let store = store(&server, BUCKET, path);
            let id = id(10 + n as u32);
            put(&store, &id, b"backup");
            let key = format!("{expected}{id}");
            assert!(server.keys(BUCKET).contains(&key), "{kind:?} path {path:?}: no {key}");
            assert!(
                store.list().unwrap().iter().any(|b| b.id == id),
                "{kind:?} path {path:?}"
            );
        }
        // "" and "/" are the same place; "a/b" and "x" hold one each
        assert_eq!(store(&server, BUCKET, "").list().unwrap().len(), 2, "{kind:?}");
        assert_eq!(store(&server, BUCKET, "a/b").list().unwrap().len(), 1, "{kind:?}");
        assert_eq!(store(&server, BUCKET, "x/").list().unwrap().len(), 1, "{kind:?}");
        assert!(server.keys(BUCKET).iter().all(|k| !k.starts_with('/')));
    }
}

#[test]
fn only_backups_directly_under_the_prefix_are_listed() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let theirs = id(20); // a backup the reference charm wrote: no metadata
        server.put_objects(
            BUCKET,
            &[
                format!("synapse/{theirs}"),
                format!("synapse2/{}", id(21)),
                format!("synapse/old/{}", id(22)),
                "synapse/notes.txt".into(),
                "synapse/backup-latest".into(),
                id(23).to_string(),
            ],
        );
        let store = store(&server, BUCKET, "synapse");
        let ours = id(24);
        put(&store, &ours, b"ours");
        let list = store.list().unwrap();
        let ids: Vec<_> = list.iter().map(|b| b.id.clone()).collect();
        assert_eq!(ids, vec![theirs.clone(), ours], "{kind:?}");
        assert_eq!(list[0].meta, ObjectMeta::default());
        assert_eq!(list[0].size, "not made by synapse-backup".len() as u64);
        // at the bucket root only the root's backup
        let root: Vec<_> = store_root_ids(&server);
        assert_eq!(root, vec![id(23)], "{kind:?}");
    }
}

fn store_root_ids(server: &S3Server) -> Vec<BackupId> {
    store(server, BUCKET, "")
        .list()
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect()
}

#[test]
fn listing_reads_past_a_thousand_objects() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let keys: Vec<String> = (0..1003).map(|n| format!("many/{}", id(100 + n))).collect();
        server.put_objects(BUCKET, &keys);
        let list = store(&server, BUCKET, "many").list().unwrap();
        assert_eq!(list.len(), 1003, "{kind:?}");
        assert!(list.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    }
}

#[test]
fn a_wrong_secret_key_is_told_apart_from_a_missing_bucket() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let mut bag = server.databag(BUCKET, "");
        bag.insert("secret-key".into(), "not-the-secret".into());
        let wrong = S3Store::new(S3Params::from_map(&bag).unwrap()).unwrap();
        let e = wrong.check().unwrap_err();
        assert!(matches!(e, StoreError::AccessDenied(_)), "{kind:?}: {e}");
        let e = wrong.list().unwrap_err();
        assert!(matches!(e, StoreError::AccessDenied(_)), "{kind:?}: {e}");
        assert!(e.to_string().contains("secret-key"), "{kind:?}: {e}");
        assert!(!e.to_string().contains("not-the-secret"));

        let missing = store(&server, "no-such-bucket", "");
        let e = missing.check().unwrap_err();
        assert!(matches!(e, StoreError::BucketMissing(_)), "{kind:?}: {e}");
        assert_eq!(e.to_string(), "the bucket no-such-bucket does not exist");
        let e = missing.list().unwrap_err();
        assert!(matches!(e, StoreError::BucketMissing(_)), "{kind:?}: {e}");
        if kind == Kind::Moto {
            // (s3s-fs starts a multipart upload without looking for the bucket)
            let e = missing.put(&id(1), &meta()).err().unwrap();
            assert!(matches!(e, StoreError::BucketMissing(_)), "{kind:?}: {e}");
        }

        store(&server, BUCKET, "").check().unwrap();
    }
}

/// Settings for an endpoint on a local port that is not one of the test S3 servers.
fn params_at(port: u16) -> S3Params {
    let bag = [
        ("access-key", "AKIATEST"),
        ("secret-key", "secret"),
        ("bucket", BUCKET),
        ("endpoint", &format!("http://127.0.0.1:{port}")),
        ("s3-uri-style", "path"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    S3Params::from_map(&bag).unwrap()
}

#[test]
fn an_unreachable_endpoint_says_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = S3Store::new(params_at(port)).unwrap();
    let e = store.check().unwrap_err();
    assert!(matches!(e, StoreError::Unreachable(_)), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

/// Writes until the upload fails (the server is gone), returning the error.
fn write_until_failure(up: &mut dyn Write) -> std::io::Error {
    let chunk = noise(1 << 20, 3);
    let started = Instant::now();
    loop {
        if let Err(e) = up.write_all(&chunk) {
            return e;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "writes kept succeeding");
    }
}

#[test]
fn a_server_killed_mid_upload_leaves_no_backup() {
    for kind in BOTH {
        let mut server = server_with_bucket(kind);
        let store = store(&server, BUCKET, "");
        let id = id(30);
        let mut up = store.put(&id, &meta()).unwrap();
        up.write_all(&noise(9 << 20, 4)).unwrap(); // the first part is on its way
        server.kill();
        let e = write_until_failure(&mut up);
        assert!(e.to_string().contains("cannot be reached"), "{kind:?}: {e}");
        assert!(up.finish().is_err());
        if kind == Kind::S3sFs {
            // its data survives a crash (moto's does not): the object must not be there
            server.restart();
            assert!(server.keys(BUCKET).is_empty());
            assert!(store.list().unwrap().is_empty(), "{kind:?}");
            assert!(store.head(&id).unwrap().is_none());
        }
    }
}

#[test]
fn a_dropped_upload_is_aborted() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let store = store(&server, BUCKET, "p");
        let mut up = store.put(&id(40), &meta()).unwrap();
        up.write_all(&noise(9 << 20, 5)).unwrap();
        assert!(!server.pending_uploads(BUCKET).is_empty(), "{kind:?}");
        drop(up);
        assert!(
            server.pending_uploads(BUCKET).is_empty(),
            "{kind:?}: the upload was not aborted"
        );
        assert!(store.list().unwrap().is_empty());
    }
}

// ---- the binary, as an operator runs it ----

fn s3_cli(server: &S3Server, path: &str, config: &Path, args: &[&str]) -> Run {
    s3_cli_with(server, server.secret_key.as_str(), path, config, args)
}

fn s3_cli_with(server: &S3Server, secret: &str, path: &str, config: &Path, args: &[&str]) -> Run {
    cli_command(server, secret, path, config, args)
        .output()
        .expect("the binary runs")
        .into()
}

fn cli_command(server: &S3Server, secret: &str, path: &str, config: &Path, args: &[&str]) -> Command {
    cli_command_at(&server.endpoint(), server, secret, path, config, args)
}

fn cli_command_at(
    endpoint: &str,
    server: &S3Server,
    secret: &str,
    path: &str,
    config: &Path,
    args: &[&str],
) -> Command {
    s3_command(endpoint, &server.access_key, secret, BUCKET, path, config, args)
}

#[test]
fn the_cli_creates_lists_verifies_restores_and_deletes_in_a_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "20M", "small");
    let before = backed_up_state(&data);
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let made = s3_cli(&server, "/synapse/", &config, &["--json", "create"]);
        assert!(made.ok, "{kind:?}: {}", made.stderr);
        let report: serde_json::Value = serde_json::from_str(&made.stdout).unwrap();
        let id = report["backup-id"].as_str().unwrap().to_string();
        assert!(
            report["size"].as_u64().unwrap() > 8 << 20,
            "a multi-part backup: {report}"
        );
        // the backup, and beside it the index a differential builds on
        assert_eq!(
            server.keys(BUCKET),
            vec![format!("synapse/{id}"), format!("synapse/{id}.index")]
        );

        let listed = s3_cli(&server, "synapse", &config, &["list"]);
        assert!(
            listed.ok && listed.stdout.contains(&id) && listed.stdout.contains("example.com"),
            "{kind:?}: {}{}",
            listed.stdout,
            listed.stderr
        );
        let verified = s3_cli(&server, "synapse", &config, &["verify", &id]);
        assert!(
            verified.ok && verified.stdout.contains("every file matches the manifest"),
            "{kind:?}: {}{}",
            verified.stdout,
            verified.stderr
        );

        wipe(&data);
        let restored = s3_cli(&server, "synapse", &config, &["restore", &id]);
        assert!(restored.ok, "{kind:?}: {}", restored.stderr);
        assert_eq!(backed_up_state(&data), before, "{kind:?}");

        let deleted = s3_cli(&server, "synapse", &config, &["delete", &id]);
        assert!(deleted.ok, "{kind:?}: {}", deleted.stderr);
        let again = s3_cli(&server, "synapse", &config, &["delete", &id]);
        assert!(
            !again.ok && again.stderr.contains(&format!("backup-id {id} does not exist")),
            "{}",
            again.stderr
        );
        assert!(server.keys(BUCKET).is_empty());
    }
}

#[test]
fn the_cli_explains_bad_credentials_a_missing_bucket_and_missing_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture(&tmp.path().join("data"), "1M", "small");
    for kind in BOTH {
        let server = S3Server::start(kind); // no bucket yet
        let missing = s3_cli(&server, "", &config, &["list"]);
        assert!(
            !missing.ok && missing.stderr.contains(&format!("the bucket {BUCKET} does not exist")),
            "{kind:?}: {}",
            missing.stderr
        );
        server.create_bucket(BUCKET);
        let wrong = s3_cli_with(&server, "not-the-secret", "", &config, &["create"]);
        assert!(
            !wrong.ok && wrong.stderr.contains("secret-key"),
            "{kind:?}: {}",
            wrong.stderr
        );
        assert!(!wrong.stderr.contains("not-the-secret"));
    }
    let server = S3Server::start(Kind::S3sFs);
    let no_secret = cli_command(&server, "", "", &config, &["list"])
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&no_secret.stderr);
    assert!(
        !no_secret.status.success() && stderr.contains("AWS_SECRET_ACCESS_KEY") && stderr.contains("--secret-key-file"),
        "{stderr}"
    );
    // the secret key from a file works too
    server.create_bucket(BUCKET);
    let file = tmp.path().join("secret");
    std::fs::write(&file, format!("{}\n", server.secret_key)).unwrap();
    let from_file = cli_command(&server, "", "", &config, &["list"])
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .arg("--secret-key-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
}

#[test]
fn the_cli_reports_a_server_killed_mid_backup_and_lists_nothing_after() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture(&tmp.path().join("data"), "48M", "small");
    let mut server = server_with_bucket(Kind::S3sFs);
    let root = server.data.path().join("root");
    let child = cli_command(&server, &server.secret_key.clone(), "", &config, &["create"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // kill the server once the first part has landed
    let started = Instant::now();
    while !std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".part-"))
    {
        assert!(started.elapsed() < Duration::from_secs(60), "no part was uploaded");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the backup claims success");
    assert!(
        stderr.contains("cannot be reached") && stderr.contains(&server.endpoint()),
        "{stderr}"
    );
    server.restart();
    let listed = s3_cli(&server, "", &config, &["--json", "list"]);
    assert!(listed.ok, "{}", listed.stderr);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed["backups"], serde_json::json!([]), "{listed}");
    assert!(server.keys(BUCKET).is_empty());
}

/// A loopback TCP relay to the server that, once `cut_after` bytes have gone towards the client
/// over all its connections, breaks the connection carrying the next byte, as a dropped network
/// would mid-download. The flag says whether it did.
fn flaky_relay(upstream: u16, cut_after: u64) -> (u16, Arc<AtomicBool>) {
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut_done = Arc::new(AtomicBool::new(false));
    let relayed = Arc::new(AtomicU64::new(0));
    let cut = cut_done.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
                let _ = s_out.shutdown(Shutdown::Write);
            });
            let (cut_done, relayed) = (cut_done.clone(), relayed.clone());
            std::thread::spawn(move || {
                let (mut s_in, mut c_out) = (server, client);
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let before = relayed.fetch_add(n as u64, Ordering::SeqCst);
                    let cut_here = before + n as u64 > cut_after && !cut_done.swap(true, Ordering::SeqCst);
                    let keep = if cut_here {
                        cut_after.saturating_sub(before) as usize
                    } else {
                        n
                    };
                    if c_out.write_all(&buf[..keep]).is_err() {
                        break;
                    }
                    if cut_here {
                        let _ = c_out.shutdown(Shutdown::Both);
                        let _ = s_in.shutdown(Shutdown::Both);
                        break;
                    }
                }
                let _ = c_out.shutdown(Shutdown::Write);
            });
        }
    });
    (port, cut)
}

#[test]
fn a_download_resumes_after_the_connection_drops() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let body = noise(12 << 20, 9);
        let (back, cut) = read_through_a_cut(&server, &id(50), &body, 3 << 20, None);
        assert!(cut, "{kind:?}: the relay never cut");
        assert_eq!(back.len(), body.len(), "{kind:?}");
        assert!(back == body, "{kind:?}: the resumed download differs");
    }
}

/// Stores `body` as `id`, then reads it back through a relay that drops the connection after
/// `cut_at` bytes (with `tuning`, or the default ranges): what came back, and whether it cut.
fn read_through_a_cut(
    server: &S3Server,
    id: &BackupId,
    body: &[u8],
    cut_at: u64,
    tuning: Option<DownloadTuning>,
) -> (Vec<u8>, bool) {
    put(&store(server, BUCKET, ""), id, body);
    let (relay, cut) = flaky_relay(server.port, cut_at);
    let mut bag = server.databag(BUCKET, "");
    bag.insert("endpoint".into(), format!("http://127.0.0.1:{relay}"));
    let mut through_relay = S3Store::new(S3Params::from_map(&bag).unwrap()).unwrap();
    if let Some(tuning) = tuning {
        through_relay = through_relay.with_download_tuning(tuning);
    }
    let mut back = Vec::new();
    through_relay.get(id).unwrap().read_to_end(&mut back).unwrap();
    (back, cut.load(Ordering::SeqCst))
}

/// Downloads in ranges of 256 KiB, four in flight, resuming after 10 ms.
fn small_ranges() -> DownloadTuning {
    DownloadTuning {
        range_size: 256 << 10,
        ranges_in_flight: 4,
        held_ahead: u64::MAX,
        resume_delay: Duration::from_millis(10),
    }
}

#[test]
fn a_backup_spanning_many_ranges_comes_back_byte_identical() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let store = store(&server, BUCKET, "synapse");
        // and eight GETs in flight with only two ranges' bytes held: six wait with their answer unread
        let waiting = DownloadTuning {
            ranges_in_flight: 8,
            held_ahead: 512 << 10,
            ..small_ranges()
        };
        let ranged = [small_ranges(), waiting].map(|t| self::store(&server, BUCKET, "synapse").with_download_tuning(t));
        // one byte, one range to the byte, one more, whole ranges, many ranges and a short last one
        for (n, len) in [1, 256 << 10, (256 << 10) + 1, 3 << 18, (5 << 20) + 12_345]
            .into_iter()
            .enumerate()
        {
            let body = noise(len, 11 + n as u64);
            put(&store, &id(60 + n as u32), &body);
            for ranged in &ranged {
                let mut back = Vec::new();
                ranged.get(&id(60 + n as u32)).unwrap().read_to_end(&mut back).unwrap();
                assert_eq!(back.len(), len, "{kind:?}");
                assert!(back == body, "{kind:?}: the {len}-byte download differs");
            }
        }
    }
}

#[test]
fn a_connection_dropped_in_a_later_range_resumes_there() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let body = noise(6 << 20, 12);
        // 1 MiB ranges with at most 3 MiB held ahead: by the 4.5th MiB the first range is long done
        let tuning = DownloadTuning {
            range_size: 1 << 20,
            ..small_ranges()
        };
        let (back, cut) = read_through_a_cut(&server, &id(70), &body, (9 << 20) / 2, Some(tuning));
        assert!(cut, "{kind:?}: the relay never cut");
        assert_eq!(back.len(), body.len(), "{kind:?}");
        assert!(back == body, "{kind:?}: the resumed download differs");
    }
}

#[test]
fn an_object_replaced_mid_download_is_an_error_not_a_mix() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let store = store(&server, BUCKET, "");
        let (old, new) = (noise(3 << 20, 13), noise(3 << 20, 14));
        put(&store, &id(80), &old);
        // 128 KiB ranges, one ahead of the reader: most ranges are asked for after the replacement
        let ranged = self::store(&server, BUCKET, "").with_download_tuning(DownloadTuning {
            range_size: 128 << 10,
            ranges_in_flight: 2,
            ..small_ranges()
        });
        let mut reader = ranged.get(&id(80)).unwrap();
        let mut back = vec![0; 200 << 10];
        reader.read_exact(&mut back).unwrap();
        put(&store, &id(80), &new);
        let err = reader.read_to_end(&mut back).unwrap_err().to_string();
        assert!(err.contains("was replaced during the download"), "{kind:?}: {err}");
        assert!(
            back.len() < old.len() && old.starts_with(&back),
            "{kind:?}: bytes of the new object were used"
        );
    }
}

/// A server answering every GET for a `promised`-byte object with the bytes asked for as far as
/// `have` goes, then closing the connection: an object cut short behind a broken server or proxy.
fn truncating_server(have: Vec<u8>, promised: usize) -> u16 {
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                request.push(byte[0]);
            }
            let request = String::from_utf8_lossy(&request).to_ascii_lowercase();
            let (first, last) = request
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .and_then(|r| r.trim().split_once('-'))
                .map(|(a, b)| (a.parse().unwrap(), b.parse::<usize>().unwrap().min(promised - 1)))
                .unwrap_or((0, promised - 1));
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {first}-{last}/{promised}\r\n\
                 ETag: \"cut-short\"\r\nConnection: close\r\n\r\n",
                last + 1 - first
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&have[first.min(have.len())..(last + 1).min(have.len())]);
        }
    });
    port
}

#[test]
fn an_object_cut_short_is_an_error_not_an_early_end() {
    let have = noise(300_000, 15);
    let port = truncating_server(have.clone(), 1 << 20);
    // one GET for the whole object, and 64 KiB ranges where the fifth is cut short
    for range_size in [8 << 20, 64 << 10] {
        let store = S3Store::new(params_at(port))
            .unwrap()
            .with_download_tuning(DownloadTuning {
                range_size,
                ..small_ranges()
            });
        let mut back = Vec::new();
        let err = store
            .get(&id(90))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap_err()
            .to_string();
        assert!(back == have, "{range_size}: {} bytes came before the error", back.len());
        assert!(
            err.contains("at byte 300000") && err.contains("gave up"),
            "{range_size}: {err}"
        );
    }
}

#[test]
fn the_cli_goes_through_the_juju_proxy_unless_no_proxy_says_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture(&tmp.path().join("data"), "1M", "small");
    let server = server_with_bucket(Kind::S3sFs);
    // a forwarding relay as the proxy; the endpoint's name does not resolve, so only the proxy
    // can reach the server
    let (proxy, _) = flaky_relay(server.port, u64::MAX);
    let run = |no_proxy: &str| {
        let endpoint = "http://s3.example.invalid:7480";
        let out = cli_command_at(endpoint, &server, &server.secret_key, "", &config, &["--json", "list"])
            .env("JUJU_CHARM_HTTP_PROXY", format!("http://127.0.0.1:{proxy}"))
            .env("JUJU_CHARM_NO_PROXY", no_proxy)
            .output()
            .unwrap();
        Run::from(out)
    };
    let through = run("10.0.0.0/8,localhost");
    assert!(
        through.ok && through.stdout.contains(r#""backups":[]"#),
        "{}",
        through.stderr
    );
    let direct = run("s3.example.invalid");
    assert!(
        !direct.ok && direct.stderr.contains("cannot be reached"),
        "{}",
        direct.stderr
    );
}

#[test]
fn an_https_endpoint_is_trusted_through_tls_ca_chain() {
    let server = server_with_bucket(Kind::S3sFs);
    let relay = s3_server::TlsRelay::start(server.port);
    let mut bag = server.databag(BUCKET, "");
    bag.insert("endpoint".into(), format!("https://127.0.0.1:{}", relay.port));
    let untrusted = S3Store::new(S3Params::from_map(&bag).unwrap()).unwrap();
    let e = untrusted.check().unwrap_err();
    assert!(e.to_string().contains("tls-ca-chain"), "{e}");

    use base64::Engine as _;
    let chains = [
        serde_json::to_string(&[relay.ca_pem.as_str()]).unwrap(),
        base64::engine::general_purpose::STANDARD.encode(&relay.ca_pem),
    ];
    for chain in chains {
        bag.insert("tls-ca-chain".into(), chain);
        let trusted = S3Store::new(S3Params::from_map(&bag).unwrap()).unwrap();
        trusted.check().unwrap();
        // two parts, sent with unsigned payloads over TLS
        put(&trusted, &id(60), &noise(9 << 20, 6));
        assert_eq!(trusted.list().unwrap().len(), 1);
        let mut back = Vec::new();
        trusted.get(&id(60)).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == noise(9 << 20, 6), "the object read back over TLS differs");
    }

    // the CLI takes the CA as a PEM file
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture(&tmp.path().join("data"), "1M", "small");
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &relay.ca_pem).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", relay.port);
    let out = cli_command_at(&endpoint, &server, &server.secret_key, "", &config, &["--json", "list"])
        .arg("--tls-ca-chain")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(id(60).as_str()));
}

#[test]
fn storage_class_and_attributes_reach_the_object() {
    for kind in BOTH {
        let server = server_with_bucket(kind);
        let mut bag = server.databag(BUCKET, "");
        bag.insert("attributes".into(), "[\"Cache-Control:no-store\"]".into());
        bag.insert("storage-class".into(), "STANDARD_IA".into());
        let store = S3Store::new(S3Params::from_map(&bag).unwrap()).unwrap();
        let id = id(70);
        put(&store, &id, b"backup");
        let head = server.boto(
            "h = s3.head_object(Bucket=sys.argv[2], Key=sys.argv[3]); print(h.get('CacheControl'), h.get('StorageClass'))",
            &[BUCKET, id.as_str()],
            None,
        );
        assert!(head.contains("no-store"), "{kind:?}: {head}");
        if kind == Kind::Moto {
            // (s3s-fs keeps no storage class)
            assert!(head.contains("STANDARD_IA"), "{kind:?}: {head}");
        }
    }
}
