//! A killed create leaves nothing behind for long: the binary killed with SIGKILL mid-upload (as
//! Juju past an action's timeout, or the OOM killer, does it), then the next `create` and `prune`
//! remove what it left — a directory store's `.partial` file, an S3 multipart upload (moto) — and
//! leave alone what is not theirs to remove: another writer's upload younger than the bound, an
//! upload to a key that is not a backup's. On s3s-fs, which has no ListMultipartUploads, the
//! create succeeds and says so.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::juju::Juju;
use common::*;
use s3_server::{Kind, S3Server};
use serde_json::{json, Value};
use synapse_backup::backup_id::BackupId;
use synapse_backup::store::s3::{S3Params, S3Store};
use synapse_backup::store::ObjectStore;

const BUCKET: &str = "backups";
const HOUR: Duration = Duration::from_secs(3600);

fn json_of(run: &Run) -> Value {
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn cleaned_ids(report: &Value) -> Vec<String> {
    report["cleaned"]
        .as_array()
        .unwrap_or_else(|| panic!("no cleaned in {report}"))
        .iter()
        .map(|c| c["backup-id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (at most a minute) until `ready` says so, then kills `child` with SIGKILL; the create must
/// not have finished by then.
fn kill_when(mut child: Child, what: &str, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the create ended ({status}) before {what}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no {what} after 60s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no abort
    let status = child.wait().unwrap();
    assert!(!status.success(), "the create finished before it was killed");
}

// ---- a directory store ----

fn partials(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    names.sort();
    names
}

fn age(path: &Path, by: Duration) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - by).unwrap();
}

#[test]
fn a_create_killed_mid_upload_to_a_directory_is_cleaned_up_by_the_next_create_and_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture(&tmp.path().join("data"), "48M", "mixed");
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();

    let child = Command::new(bin())
        .arg("--synapse-config")
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .args(["--quiet", "create"])
        .env("SYNAPSE_BACKUP_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let has_bytes = || {
        partials(&store)
            .first()
            .and_then(|n| fs::metadata(store.join(n)).ok())
            .is_some_and(|m| m.len() > 0)
    };
    kill_when(child, "a .partial file with bytes in it", has_bytes);
    let killed = partials(&store);
    assert_eq!(killed.len(), 1, "{killed:?}");
    let killed_id = killed[0]
        .trim_start_matches('.')
        .trim_end_matches(".partial")
        .to_string();
    let killed_size = fs::metadata(store.join(&killed[0])).unwrap().len();

    // listed as incomplete, never as a backup
    let listed = json_of(&cli(&config, &store, &["--json", "list"]));
    assert_eq!(listed["backups"], json!([]), "{listed}");
    assert_eq!(listed["incomplete"]["count"], 1, "{listed}");
    assert_eq!(listed["incomplete"]["uploads"][0]["backup-id"], killed_id.as_str());
    let human = cli(&config, &store, &["list"]);
    assert!(human.ok, "{}", human.stderr);
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert!(
        lines[0].starts_with("backup-id"),
        "the table comes first: {}",
        human.stdout
    );
    assert!(
        lines.len() == 2 && lines[1].starts_with("incomplete: 1 upload") && lines[1].contains(&killed_id),
        "{}",
        human.stdout
    );

    // just killed, so younger than the default 24 h: a create leaves it
    let made = json_of(&cli(&config, &store, &["--json", "create"]));
    assert_eq!(cleaned_ids(&made), Vec::<String>::new());
    assert_eq!(partials(&store), killed);

    // a day old now; beside it another writer's partial file being written, and files that are
    // not ours though they look alike
    age(&store.join(&killed[0]), 25 * HOUR);
    let fresh = format!(".{}.partial", BackupId::now());
    fs::write(store.join(&fresh), b"another server's backup, being written").unwrap();
    let foreign = [
        ".backup-latest.partial",
        ".notes.partial",
        "backup-20240101000000000000.partial",
    ];
    for name in foreign {
        fs::write(store.join(name), b"not ours").unwrap();
        age(&store.join(name), 48 * HOUR);
    }

    let run = cli(&config, &store, &["--json", "create"]);
    let made = json_of(&run);
    assert_eq!(cleaned_ids(&made), vec![killed_id.clone()]);
    assert_eq!(made["cleaned"][0]["bytes"], killed_size, "{made}");
    assert!(
        run.stderr.contains("note: removed what 1 killed backup(s) left") && run.stderr.contains(&killed_id),
        "{}",
        run.stderr
    );
    let mut left = vec![
        fresh.clone(),
        foreign[0].to_string(),
        foreign[1].to_string(),
        foreign[2].to_string(),
    ];
    left.sort();
    assert_eq!(partials(&store), left);
    // the backups are whole
    let listed = json_of(&cli(&config, &store, &["--json", "list"]));
    assert_eq!(listed["backups"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed["incomplete"]["count"], 1, "only the fresh one: {listed}");

    // prune with a bound of 0 takes the fresh one too; a dry run first only says so
    let dry = json_of(&cli(
        &config,
        &store,
        &[
            "--json",
            "prune",
            "--keep-last",
            "5",
            "--abandoned-after-hours",
            "0",
            "--dry-run",
        ],
    ));
    let fresh_id = fresh.trim_start_matches('.').trim_end_matches(".partial").to_string();
    assert_eq!(cleaned_ids(&dry), vec![fresh_id.clone()]);
    assert!(store.join(&fresh).exists(), "a dry run removes nothing");
    let run = Command::new(bin())
        .arg("--synapse-config")
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .args(["prune", "--keep-last", "5"])
        .env("SYNAPSE_BACKUP_ABANDONED_AFTER_HOURS", "0")
        .output()
        .unwrap();
    let run = Run::from(run);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("removed what 1 killed backup(s) left")),
        "{}",
        run.stdout
    );
    assert_eq!(partials(&store).len(), 3, "the lookalikes stay");
    let listed = json_of(&cli(&config, &store, &["--json", "list"]));
    assert_eq!(listed["incomplete"]["count"], 0, "{listed}");
}

// ---- S3 ----

fn s3_store(server: &S3Server, path: &str) -> S3Store {
    S3Store::new(S3Params::from_map(&server.databag(BUCKET, path)).unwrap()).unwrap()
}

fn s3_cli(server: &S3Server, path: &str, config: &Path, args: &[&str]) -> Command {
    s3_command(
        &server.endpoint(),
        &server.access_key,
        &server.secret_key,
        BUCKET,
        path,
        config,
        args,
    )
}

fn s3_run(server: &S3Server, path: &str, config: &Path, args: &[&str]) -> Run {
    s3_cli(server, path, config, args).output().unwrap().into()
}

/// Begins a multipart upload to `key` and uploads one small part, as another writer would.
fn begin_upload(server: &S3Server, key: &str) {
    server.boto(
        r#"
u = s3.create_multipart_upload(Bucket=sys.argv[2], Key=sys.argv[3])
s3.upload_part(Bucket=sys.argv[2], Key=sys.argv[3], UploadId=u["UploadId"], PartNumber=1, Body=b"12345")
"#,
        &[BUCKET, key],
        None,
    );
}

/// The keys of the uploads moto still holds, sorted.
fn pending(server: &S3Server) -> Vec<String> {
    let mut keys = server.pending_uploads(BUCKET);
    keys.sort();
    keys
}

/// Waits (in one Python process, polling moto) until an upload under `prefix` holds a part.
fn await_a_part<'a>(server: &'a S3Server, prefix: &str) -> impl Fn() -> bool + 'a {
    let prefix = prefix.to_string();
    move || {
        server
            .boto(
                r#"
import time
deadline = time.time() + 5
while time.time() < deadline:
    for u in s3.list_multipart_uploads(Bucket=sys.argv[2], Prefix=sys.argv[3]).get("Uploads", []):
        if s3.list_parts(Bucket=sys.argv[2], Key=u["Key"], UploadId=u["UploadId"]).get("Parts"):
            print("part")
            sys.exit(0)
    time.sleep(0.02)
"#,
                &[BUCKET, &prefix],
                None,
            )
            .contains("part")
    }
}

#[test]
fn a_create_killed_mid_upload_to_s3_is_aborted_by_the_next_create_and_nothing_else_is() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture(&tmp.path().join("data"), "48M", "mixed");
    let server = S3Server::start(Kind::Moto);
    server.create_bucket(BUCKET);
    let store = s3_store(&server, "synapse");

    let child = s3_cli(&server, "synapse", &config, &["--quiet", "create"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_when(child, "an upload with a part in it", await_a_part(&server, "synapse/"));
    let killed = store.leftovers().unwrap();
    assert_eq!(killed.len(), 1, "{killed:?}");
    let killed_id = killed[0].id.to_string();
    assert!(server.keys(BUCKET).is_empty(), "a killed create lists no backup");

    // uploads to keys that are not backups under this path
    let other = BackupId::now().to_string();
    let foreign = [
        "synapse/notes.txt".to_string(),
        "synapse/backup-latest".to_string(),
        format!("synapse/deeper/{other}"),
        format!("synapse2/{other}"),
        other.clone(),
    ];
    for key in &foreign {
        begin_upload(&server, key);
    }

    // list counts ours only (moto's ListParts answer is not the SDK's ListPartsResult: sizes unknown)
    let listed = json_of(&s3_run(&server, "synapse", &config, &["--json", "list"]));
    assert_eq!(listed["incomplete"]["count"], 1, "{listed}");
    assert_eq!(listed["incomplete"]["uploads"][0]["backup-id"], killed_id.as_str());
    let human = s3_run(&server, "synapse", &config, &["list"]);
    assert!(
        human
            .stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("incomplete: 1 upload") && l.contains(&killed_id)),
        "{}",
        human.stdout
    );

    // moto dates every upload 2010-11-10 (Initiated is fixed): past the default bound, so the next
    // plain create aborts ours, and only ours
    let run = s3_run(&server, "synapse", &config, &["--json", "create"]);
    let made = json_of(&run);
    assert_eq!(cleaned_ids(&made), vec![killed_id.clone()]);
    assert!(
        run.stderr.contains("note: removed what 1 killed backup(s) left") && run.stderr.contains(&killed_id),
        "{}",
        run.stderr
    );
    let mut expected = foreign.to_vec();
    expected.sort();
    assert_eq!(pending(&server), expected);
    assert!(store.leftovers().unwrap().is_empty());
    let listed = json_of(&s3_run(&server, "synapse", &config, &["--json", "list"]));
    assert_eq!(listed["incomplete"]["count"], 0, "{listed}");
    assert_eq!(
        listed["backups"].as_array().unwrap().len(),
        1,
        "the backup made is whole: {listed}"
    );

    // prune at the bucket root: there only the root's backup key is ours
    let run = s3_run(&server, "", &config, &["--json", "prune", "--keep-last", "9"]);
    assert_eq!(cleaned_ids(&json_of(&run)), vec![other.clone()]);
    expected.retain(|k| k != &other);
    assert_eq!(pending(&server), expected);
}

/// One incomplete upload as a canned ListMultipartUploads page lists it.
struct Canned {
    key: String,
    upload_id: String,
    initiated: String,
    /// Part sizes, served two to a ListParts page.
    parts: Vec<u64>,
}

/// A stand-in S3 server for what moto cannot show (it dates every upload 2010, never pages): it
/// answers ListMultipartUploads with `uploads` two to a page (markers as S3 gives them), ListParts
/// from their part sizes, and records each AbortMultipartUpload. Signatures are not checked.
fn canned_s3(uploads: Vec<Canned>) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let aborted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = aborted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                request.push(byte[0]);
            }
            let request = String::from_utf8_lossy(&request).to_string();
            let line = request.lines().next().unwrap_or("").to_string();
            let mut words = line.split_whitespace();
            let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .map(|v| v.replace("%2F", "/"))
            };
            let key = path.trim_start_matches(&format!("/{BUCKET}/")).to_string();
            let (status, body) = if method == "DELETE" {
                record
                    .lock()
                    .unwrap()
                    .push(format!("{key} {}", param("uploadId").unwrap_or_default()));
                ("204 No Content", String::new())
            } else if query.split('&').any(|kv| kv == "uploads") {
                let from = match param("upload-id-marker") {
                    Some(m) => uploads
                        .iter()
                        .position(|u| u.upload_id == m)
                        .map_or(uploads.len(), |i| i + 1),
                    None => 0,
                };
                let page = &uploads[from..(from + 2).min(uploads.len())];
                let more = from + 2 < uploads.len();
                let mut xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListMultipartUploadsResult><Bucket>{BUCKET}</Bucket>\
                     <IsTruncated>{more}</IsTruncated>"
                );
                if let (true, Some(last)) = (more, page.last()) {
                    xml += &format!(
                        "<NextKeyMarker>{}</NextKeyMarker><NextUploadIdMarker>{}</NextUploadIdMarker>",
                        last.key, last.upload_id
                    );
                }
                for u in page {
                    xml += &format!(
                        "<Upload><Key>{}</Key><UploadId>{}</UploadId><Initiated>{}</Initiated></Upload>",
                        u.key, u.upload_id, u.initiated
                    );
                }
                ("200 OK", xml + "</ListMultipartUploadsResult>")
            } else if let Some(u) = param("uploadId").and_then(|id| uploads.iter().find(|u| u.upload_id == id)) {
                let from: usize = param("part-number-marker").and_then(|m| m.parse().ok()).unwrap_or(0);
                let page: Vec<(usize, &u64)> = u.parts.iter().enumerate().skip(from).take(2).collect();
                let more = from + 2 < u.parts.len();
                let mut xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListPartsResult><Bucket>{BUCKET}</Bucket>\
                     <Key>{}</Key><UploadId>{}</UploadId><IsTruncated>{more}</IsTruncated>\
                     <NextPartNumberMarker>{}</NextPartNumberMarker>",
                    u.key,
                    u.upload_id,
                    from + page.len()
                );
                for (n, size) in page {
                    xml += &format!("<Part><PartNumber>{}</PartNumber><Size>{size}</Size></Part>", n + 1);
                }
                ("200 OK", xml + "</ListPartsResult>")
            } else {
                ("404 Not Found", "<Error><Code>NoSuchUpload</Code></Error>".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body.as_bytes());
        }
    });
    (port, aborted)
}

#[test]
fn only_uploads_older_than_the_bound_are_aborted_across_pages() {
    use synapse_backup::commands::leftovers;
    let now = time::OffsetDateTime::now_utc();
    let at = |t: time::OffsetDateTime| synapse_backup::units::rfc3339(t.into());
    let old = BackupId::at(now - time::Duration::days(3));
    let fresh = BackupId::at(now - time::Duration::minutes(5));
    let upload = |key: String, id: &str, initiated: time::OffsetDateTime, parts: Vec<u64>| Canned {
        key,
        upload_id: id.into(),
        initiated: at(initiated),
        parts,
    };
    let uploads = vec![
        upload(
            format!("p/{old}"),
            "u-old",
            now - time::Duration::days(3),
            vec![8 << 20, 8 << 20, 8 << 20, 3],
        ),
        upload("p/notes.txt".into(), "u-notes", now - time::Duration::days(9), vec![1]),
        upload(
            format!("p/deep/{old}"),
            "u-deep",
            now - time::Duration::days(9),
            vec![1],
        ),
        upload(
            format!("p/{fresh}"),
            "u-fresh",
            now - time::Duration::minutes(5),
            vec![8 << 20],
        ),
        upload(format!("p/{old}"), "u-old-2", now - time::Duration::hours(25), vec![]),
    ];
    let (port, aborted) = canned_s3(uploads);
    let bag: std::collections::BTreeMap<String, String> = [
        ("access-key", "AKIACANNED"),
        ("secret-key", "canned-secret"),
        ("bucket", BUCKET),
        ("endpoint", &format!("http://127.0.0.1:{port}")),
        ("path", "p"),
        ("s3-uri-style", "path"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let store = S3Store::new(S3Params::from_map(&bag).unwrap()).unwrap();

    let found = store.leftovers().unwrap();
    let seen: Vec<(&str, Option<u64>)> = found.iter().map(|l| (l.handle.as_str(), l.size)).collect();
    assert_eq!(
        seen,
        [
            ("u-old", Some((24 << 20) + 3)),
            ("u-old-2", Some(0)),
            ("u-fresh", Some(8 << 20))
        ],
        "oldest first, ours only, sizes over ListParts pages"
    );

    let report = leftovers::clean(&store, leftovers::DEFAULT_ABANDONED_AFTER, false);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    assert_eq!(report.cleaned.len(), 2);
    assert_eq!(report.cleaned_bytes(), (24 << 20) + 3);
    assert_eq!(report.young.len(), 1);
    assert_eq!(
        *aborted.lock().unwrap(),
        [format!("p/{old} u-old"), format!("p/{old} u-old-2")],
        "the fresh upload and the keys that are not backups' are left alone"
    );
}

#[test]
fn on_s3s_fs_without_list_multipart_uploads_create_succeeds_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture(&tmp.path().join("data"), "1M", "small");
    let server = S3Server::start(Kind::S3sFs);
    server.create_bucket(BUCKET);
    let run = s3_run(
        &server,
        "synapse",
        &config,
        &["--json", "create", "--abandoned-after-hours", "0"],
    );
    let made = json_of(&run);
    assert_eq!(cleaned_ids(&made), Vec::<String>::new());
    let notes = made["notes"].to_string();
    let said = "does not implement ListMultipartUploads";
    assert_eq!(notes.matches(said).count(), 1, "once: {notes}");
    assert!(
        run.stderr.contains(said) && run.stderr.contains("AbortIncompleteMultipartUpload"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(&server.secret_key));
    let listed = s3_run(&server, "synapse", &config, &["--json", "list"]);
    let value = json_of(&listed);
    assert_eq!(value["incomplete"], Value::Null, "{value}");
    assert_eq!(value["backups"].as_array().unwrap().len(), 1);
    assert!(listed.stderr.contains(said), "{}", listed.stderr);
}

// ---- the charm ----

const REL: &str = "backup:3";

/// A unit with a fixture Synapse, related to `server`'s bucket under `synapse/prod`.
fn charm_unit(server: &S3Server, tree: &Path) -> (Juju, PathBuf) {
    server.create_bucket(BUCKET);
    let config = fixture(&tree.join("data"), "4M", "small");
    let juju = Juju::new();
    juju.add_relation(REL, "s3-integrator", &["s3-integrator/0"]);
    juju.set_remote_app_data(REL, json!(server.databag(BUCKET, "synapse/prod")));
    juju.add_secret("secret:d0passphrase0000000d", json!({"passphrase": PASSPHRASE}), true);
    juju.config("backup_passphrase_secret", json!("secret:d0passphrase0000000d"));
    juju.config("synapse_config", json!(config.to_str().unwrap()));
    juju.config("synapse_service", json!("none"));
    juju.relation_hook(REL, "changed", None).assert_ok();
    (juju, config)
}

#[test]
fn the_charm_counts_incomplete_uploads_and_reports_what_create_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(Kind::Moto);
    let (juju, _) = charm_unit(&server, tmp.path());
    let secrets = [PASSPHRASE, server.secret_key.as_str()];
    let killed = BackupId::now().to_string();
    begin_upload(&server, &format!("synapse/prod/{killed}"));
    begin_upload(&server, "synapse/prod/not-a-backup");

    let listed = juju.action("list-backups", json!({}));
    listed.assert_ok().assert_no_secret(&secrets);
    assert_eq!(listed.result("incomplete-uploads"), Some("1"), "{}", listed.results());
    assert!(listed.result("incomplete-bytes").is_some(), "{}", listed.results());

    // moto dates it 2010: the create takes it for abandoned and aborts it
    let created = juju.action("create-backup", json!({}));
    created.assert_ok().assert_no_secret(&secrets);
    assert_eq!(created.failure(), None);
    assert_eq!(
        created.result("cleaned"),
        Some(killed.as_str()),
        "{}",
        created.results()
    );
    assert!(created.result("cleaned-bytes").is_some());
    let logs = created.action_logs();
    assert!(
        logs.iter()
            .any(|l| l.starts_with("note: removed what 1 killed backup(s) left") && l.contains(&killed)),
        "{logs:?}"
    );
    assert_eq!(pending(&server), ["synapse/prod/not-a-backup"]);
    let listed = juju.action("list-backups", json!({}));
    assert_eq!(listed.result("incomplete-uploads"), Some("0"));
    assert_eq!(listed.result("incomplete-bytes"), Some("0"));

    // on a server without ListMultipartUploads: the backup is made, the action says why nothing
    // was looked for
    let s3s = S3Server::start(Kind::S3sFs);
    let (juju, _) = charm_unit(&s3s, &tmp.path().join("s3s"));
    let created = juju.action("create-backup", json!({}));
    created
        .assert_ok()
        .assert_no_secret(&[PASSPHRASE, s3s.secret_key.as_str()]);
    assert_eq!(created.result("result"), Some("correct"), "{:?}", created.failure());
    assert_eq!(created.result("cleaned"), Some("none"));
    let logs = created.action_logs();
    assert!(
        logs.iter()
            .any(|l| l.starts_with("note: ") && l.contains("ListMultipartUploads")),
        "{logs:?}"
    );
    let listed = juju.action("list-backups", json!({}));
    assert_eq!(listed.result("incomplete-uploads"), Some("unknown"));
    assert!(listed
        .result("incomplete-note")
        .unwrap()
        .contains("ListMultipartUploads"));
}
