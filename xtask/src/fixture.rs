//! Fixture Synapse trees for the tests and benchmarks, laid out like the official Synapse
//! container image's `/data`:
//!
//! ```text
//! DIR/homeserver.yaml              server_name, pid_file, signing_key_path, media_store_path, sqlite3 database
//! DIR/<server_name>.signing.key    an ed25519 signing key in Synapse's text format
//! DIR/homeserver.db                a real SQLite database (WAL mode): users, rooms, events, local_media_repository
//! DIR/media_store/local_content/ab/cd/<rest>                       uploaded media (what a backup carries)
//! DIR/media_store/local_thumbnails/ab/cd/<rest>/<w>-<h>-image-jpeg-<crop|scale>
//! DIR/media_store/remote_content/matrix.org/ab/cd/<rest>           cached remote media (re-fetchable)
//! DIR/media_store/url_cache/<date>/<id>                            URL previews (re-fetchable)
//! ```
//!
//! Media bodies are mostly random bytes (photos and videos do not compress), about one in ten
//! JSON-ish text that does. The same seed gives the same tree (apart from the absolute paths in
//! `homeserver.yaml` and SQLite's own bookkeeping in the database file's header).
//!
//! [`make`] builds a tree, [`churn`] writes to its database like a live homeserver, [`digest`]
//! lists every file as `sha256 size relpath`.

mod rng;

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use sha2::{Digest, Sha256};

use rng::Rng;

/// What went wrong, with the path it concerns.
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn io_error<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error(format!("cannot {what} {}: {e}", path.display()))
}

fn db_error(path: &Path) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |e| Error(format!("{}: {e}", path.display()))
}

/// Media sizes: `Mixed` as a homeserver sees them (many small files, some photos, a few videos),
/// `Small` only files under 120 KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    #[default]
    Mixed,
    Small,
}

impl FromStr for Profile {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mixed" => Ok(Profile::Mixed),
            "small" => Ok(Profile::Small),
            _ => Err(Error(format!("unknown profile {s:?}: mixed or small"))),
        }
    }
}

/// What [`make`] builds.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes of media: three quarters local media (with thumbnails), the rest remote caches.
    pub size: u64,
    pub profile: Profile,
    pub server_name: String,
    pub seed: u64,
    /// Rows in the events table.
    pub events: u64,
    /// Extra local media files of 200–1,200 random bytes each, beyond `size`.
    pub small_files: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size: 64 << 20,
            profile: Profile::Mixed,
            server_name: "example.com".into(),
            seed: 1,
            events: 20_000,
            small_files: 0,
        }
    }
}

/// `256M`, `2G`, `1.5K`, `64MiB`, `1000`: binary units, as the Python fixture tool read them.
pub fn parse_size(text: &str) -> Result<u64> {
    let upper = text.trim().to_ascii_uppercase();
    let trimmed = upper.trim_end_matches('B').trim_end_matches('I');
    let (number, unit) = match trimmed.chars().last() {
        Some('K') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some('M') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some('G') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        _ => (trimmed, 1),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok((n * unit as f64) as u64),
        _ => Err(Error(format!("bad size {text:?}: e.g. 256M or 2G"))),
    }
}

/// Makes the tree in `dir` (created if missing; files already there are overwritten or left)
/// and returns its absolute path.
pub fn make(dir: &Path, options: &Options) -> Result<PathBuf> {
    let root = absolute(dir)?;
    let mut rng = Rng::new(options.seed);
    let mut tree = Tree::new(root.join("media_store"));
    tree.ensure_dir(&root.join("media_store"))?;
    let server = &options.server_name;
    let media = tree.media.clone();

    let mut key = [0u8; 32];
    rng.fill(&mut key);
    let key_line = format!("ed25519 a_{} {}\n", &media_id(&mut rng)[..4], base64_unpadded(&key));
    tree.write(&root.join(format!("{server}.signing.key")), key_line.as_bytes())?;
    let r = root.display();
    let yaml = format!(
        "server_name: \"{server}\"\n\
         pid_file: {r}/homeserver.pid\n\
         signing_key_path: \"{r}/{server}.signing.key\"\n\
         media_store_path: \"{m}\"\n\
         report_stats: false\n\
         listeners:\n  - port: 8008\n    type: http\n    resources:\n      - names: [client, federation]\n\
         database:\n  name: sqlite3\n  args:\n    database: \"{r}/homeserver.db\"\n",
        m = media.display()
    );
    tree.write(&root.join("homeserver.yaml"), yaml.as_bytes())?;
    make_db(&root.join("homeserver.db"), &mut rng, options.events)?;

    let budget = options.size as i64;
    let mut local = budget * 3 / 4; // most of the bytes are local media; the rest is cache
    let mut cache = budget - local;
    while local > 0 {
        let id = media_id(&mut rng);
        let size = pick_size(&mut rng, local, options.profile);
        let path = media.join("local_content").join(split_id(&id));
        if rng.unit() < 0.1 {
            tree.write_text(&path, &mut rng, size)?;
        } else {
            tree.write_random(&path, &mut rng, size)?;
        }
        local -= size as i64;
        if rng.unit() < 0.5 {
            // Synapse makes thumbnails for images
            for (w, h) in [(32u64, 32u64), (96, 96), (320, 240)] {
                let t = (w * h / 4).min(40 << 10);
                let method = if w < 100 { "crop" } else { "scale" };
                let name = format!("{w}-{h}-image-jpeg-{method}");
                let thumb = media.join("local_thumbnails").join(split_id(&id)).join(name);
                tree.write_random(&thumb, &mut rng, t)?;
                local -= t as i64;
            }
        }
    }
    while cache > 0 {
        let id = media_id(&mut rng);
        let size = pick_size(&mut rng, cache, options.profile);
        let path = if rng.unit() < 0.8 {
            media.join("remote_content/matrix.org").join(split_id(&id))
        } else {
            media.join("url_cache/2026-11-20").join(&id)
        };
        tree.write_random(&path, &mut rng, size)?;
        cache -= size as i64;
    }
    for _ in 0..options.small_files {
        let id = media_id(&mut rng);
        let size = rng.range(200, 1200);
        tree.write_random(&media.join("local_content").join(split_id(&id)), &mut rng, size)?;
    }
    Ok(root)
}

/// Writes to `dir/homeserver.db` the way a busy homeserver does until `duration` has passed:
/// one transaction per event, each inserting an event (`$churn…`) and bumping
/// `@user0:example.com`'s `creation_ts`, so a consistent copy has as many churn events as that
/// counter went up. Returns the number of transactions.
pub fn churn(dir: &Path, duration: Duration) -> Result<u64> {
    let path = dir.join("homeserver.db");
    let err = db_error(&path);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut db = Connection::open_with_flags(&path, flags).map_err(db_error(&path))?;
    db.busy_timeout(Duration::from_secs(30)).map_err(db_error(&path))?;
    set_wal(&db, &path)?;
    let body = "x".repeat(400);
    let end = Instant::now() + duration;
    let mut n = 0u64;
    let result = (|| {
        while Instant::now() < end {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            tx.prepare_cached("INSERT INTO events(event_id, room_id, sender, json) VALUES(?1, ?2, ?3, ?4)")?
                .execute(params![
                    format!("$churn{nanos}-{n}"),
                    "!room0:example.com",
                    "@user0:example.com",
                    body
                ])?;
            tx.prepare_cached("UPDATE users SET creation_ts = creation_ts + 1 WHERE name = '@user0:example.com'")?
                .execute([])?;
            tx.commit()?;
            n += 1;
        }
        Ok(())
    })();
    result.map_err(err)?;
    Ok(n)
}

/// One line per file under `dir`: `sha256 size relpath`, directories in the order of their
/// full paths as strings and files by name within each (the Python tool's sorted `os.walk`).
/// Symbolic links to directories are not followed; links to files are read through.
pub fn digest(dir: &Path) -> Result<String> {
    let root = absolute(dir)?;
    let mut dirs = Vec::new();
    walk(&root, &mut dirs)?;
    dirs.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    let mut out = String::new();
    let mut buf = vec![0u8; 1 << 20];
    for (dirpath, mut files) in dirs {
        files.sort();
        for name in files {
            let path = dirpath.join(name);
            let mut file = File::open(&path).map_err(io_error("read", &path))?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(io_error("read", &path))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                size += n as u64;
            }
            let rel = path.strip_prefix(&root).unwrap_or(&path);
            let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
            out.push_str(&format!("{hex} {size} {}\n", rel.display()));
        }
    }
    Ok(out)
}

/// Every directory under (and including) `dir` with the names of the files in it.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<OsString>)>) -> Result<()> {
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_error("stat", &path))?;
        if kind.is_dir() {
            subdirs.push(path);
        } else if kind.is_symlink() && path.is_dir() {
            // os.walk lists it as a directory and does not descend
        } else {
            files.push(entry.file_name());
        }
    }
    out.push((dir.to_path_buf(), files));
    for sub in subdirs {
        walk(&sub, out)?;
    }
    Ok(())
}

/// The absolute form of `dir` with `.` and `..` folded away, symlinks left as they are
/// (Python's `os.path.abspath`).
fn absolute(dir: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(dir).map_err(io_error("resolve", dir))?;
    let mut out = PathBuf::new();
    for part in abs.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// A Synapse media id: 24 ASCII letters.
fn media_id(rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..24).map(|_| *rng.choose(ALPHABET) as char).collect()
}

/// Synapse's sharding of a media id: `ab/cd/<rest>`.
fn split_id(id: &str) -> PathBuf {
    [&id[0..2], &id[2..4], &id[4..]].iter().collect()
}

/// Media sizes as a homeserver sees them: many small, some large; at most `budget`, at least 1.
fn pick_size(rng: &mut Rng, budget: i64, profile: Profile) -> u64 {
    let r = rng.unit();
    let size = if profile == Profile::Small || r < 0.80 {
        rng.range(2 << 10, 120 << 10) // avatars, stickers, small images
    } else if r < 0.99 {
        rng.range(200 << 10, 3 << 20) // photos, documents
    } else {
        rng.range(8 << 20, 48 << 20) // videos
    };
    size.min(budget.max(1) as u64).max(1)
}

fn base64_unpadded(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn set_wal(db: &Connection, path: &Path) -> Result<()> {
    let mode: String = db
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(db_error(path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error(format!("{}: journal mode {mode}, not WAL", path.display())));
    }
    Ok(())
}

fn make_db(path: &Path, rng: &mut Rng, events: u64) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match fs::remove_file(&name) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error("remove", Path::new(&name))(e));
            }
            _ => {}
        }
    }
    let mut db = Connection::open(path).map_err(db_error(path))?;
    set_wal(&db, path)?;
    let result = (|| {
        db.execute_batch(
            "CREATE TABLE users(name TEXT PRIMARY KEY, password_hash TEXT, creation_ts INTEGER);
             CREATE TABLE rooms(room_id TEXT PRIMARY KEY, creator TEXT);
             CREATE TABLE events(stream_ordering INTEGER PRIMARY KEY, event_id TEXT UNIQUE,
                                 room_id TEXT, sender TEXT, json TEXT);
             CREATE TABLE local_media_repository(media_id TEXT PRIMARY KEY, media_length INTEGER,
                                                 upload_name TEXT);",
        )?;
        let users: Vec<String> = (0..50).map(|i| format!("@user{i}:example.com")).collect();
        let rooms: Vec<String> = (0..20).map(|i| format!("!room{i}:example.com")).collect();
        let password_hash = "x".repeat(60);
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare("INSERT INTO users VALUES(?1, ?2, ?3)")?;
            for (i, user) in users.iter().enumerate() {
                insert.execute(params![user, password_hash, i as i64])?;
            }
            let mut insert = tx.prepare("INSERT INTO rooms VALUES(?1, ?2)")?;
            for room in &rooms {
                insert.execute(params![room, rng.choose(&users)])?;
            }
            let mut insert =
                tx.prepare("INSERT INTO events(event_id, room_id, sender, json) VALUES(?1, ?2, ?3, ?4)")?;
            for i in 0..events {
                let room = rng.choose(&rooms);
                let sender = rng.choose(&users);
                let json = format!("{{\"body\":\"{}\"}}", rng.below(1_000_000_000));
                insert.execute(params![format!("$ev{i}"), room, sender, json])?;
            }
        }
        tx.commit()
    })();
    result.map_err(db_error(path))?;
    db.close().map_err(|(_, e)| db_error(path)(e))
}

/// Writes files with one buffer, reused, and creates each directory once.
struct Tree {
    media: PathBuf,
    made: HashSet<PathBuf>,
    buf: Vec<u8>,
}

impl Tree {
    fn new(media: PathBuf) -> Self {
        Tree {
            media,
            made: HashSet::new(),
            buf: Vec::new(),
        }
    }

    fn ensure_dir(&mut self, dir: &Path) -> Result<()> {
        if !self.made.contains(dir) {
            fs::create_dir_all(dir).map_err(io_error("create", dir))?;
            self.made.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn write(&mut self, path: &Path, data: &[u8]) -> Result<()> {
        if let Some(dir) = path.parent() {
            self.ensure_dir(dir)?;
        }
        let mut file = File::create(path).map_err(io_error("create", path))?;
        file.write_all(data).map_err(io_error("write", path))
    }

    fn write_random(&mut self, path: &Path, rng: &mut Rng, size: u64) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(size as usize, 0);
        rng.fill(&mut buf);
        let result = self.write(path, &buf);
        self.buf = buf;
        result
    }

    /// Text that compresses: message-event JSON lines, cut at `size`.
    fn write_text(&mut self, path: &Path, rng: &mut Rng, size: u64) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        while (buf.len() as u64) < size {
            let n = rng.below(1_000_000_000);
            let _ = writeln!(buf, "{{\"type\":\"m.room.message\",\"content\":{{\"body\":\"{n}\"}}}}");
        }
        buf.truncate(size as usize);
        let result = self.write(path, &buf);
        self.buf = buf;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(size: &str, seed: u64) -> Options {
        Options {
            size: parse_size(size).unwrap(),
            profile: Profile::Small,
            seed,
            events: 300,
            ..Options::default()
        }
    }

    /// Digest lines of everything but the files that hold the tree's path or SQLite's counters.
    fn media_and_key(dir: &Path) -> Vec<String> {
        digest(dir)
            .unwrap()
            .lines()
            .filter(|l| !l.ends_with(" homeserver.yaml") && !l.ends_with(" homeserver.db"))
            .map(String::from)
            .collect()
    }

    fn rows(dir: &Path, sql: &str) -> Vec<String> {
        let db = Connection::open(dir.join("homeserver.db")).unwrap();
        let mut stmt = db.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
    }

    #[test]
    fn the_same_seed_makes_the_same_tree_another_seed_another() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
        make(&a, &small("2M", 5)).unwrap();
        make(&b, &small("2M", 5)).unwrap();
        make(&c, &small("2M", 6)).unwrap();
        assert_eq!(media_and_key(&a), media_and_key(&b));
        assert_ne!(media_and_key(&a), media_and_key(&c));
        let events = "SELECT event_id || room_id || sender || json FROM events ORDER BY stream_ordering";
        assert_eq!(rows(&a, events), rows(&b, events));
        assert_ne!(rows(&a, events), rows(&c, events));
        // made again over itself: the same files
        make(&a, &small("2M", 5)).unwrap();
        assert_eq!(media_and_key(&a), media_and_key(&b));
    }

    #[test]
    fn the_tree_has_synapse_s_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let options = Options {
            server_name: "matrix.test".into(),
            ..small("3M", 1)
        };
        let root = make(&dir.join("../data/."), &options).unwrap();
        assert_eq!(root, dir);

        let yaml = fs::read_to_string(dir.join("homeserver.yaml")).unwrap();
        let d = dir.display();
        for line in [
            "server_name: \"matrix.test\"".to_string(),
            format!("pid_file: {d}/homeserver.pid"),
            format!("signing_key_path: \"{d}/matrix.test.signing.key\""),
            format!("media_store_path: \"{d}/media_store\""),
            "report_stats: false".into(),
            "  - port: 8008".into(),
            "  name: sqlite3".into(),
            format!("    database: \"{d}/homeserver.db\""),
        ] {
            assert!(yaml.lines().any(|l| l == line), "{line:?} not in\n{yaml}");
        }

        let key = fs::read_to_string(dir.join("matrix.test.signing.key")).unwrap();
        let parts: Vec<&str> = key.trim_end_matches('\n').split(' ').collect();
        assert_eq!(parts.len(), 3, "{key:?}");
        assert_eq!(parts[0], "ed25519");
        assert!(parts[1].len() == 6 && parts[1].starts_with("a_"), "{key:?}");
        assert_eq!(parts[2].len(), 43, "32 bytes, unpadded base64: {key:?}");
        assert!(parts[2]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'));

        let listing = digest(&dir).unwrap();
        let mut local = 0u64;
        let mut total = 0u64;
        let (mut thumbs, mut remote, mut url, mut text) = (0, 0, 0, 0);
        for line in listing.lines() {
            let mut f = line.splitn(3, ' ');
            let (sha, size, rel) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            assert_eq!(sha.len(), 64);
            let size: u64 = size.parse().unwrap();
            let parts: Vec<&str> = rel.split('/').collect();
            match parts[..] {
                ["homeserver.yaml" | "homeserver.db" | "matrix.test.signing.key"] => continue,
                ["media_store", "local_content", a, b, rest] => {
                    assert!(a.len() == 2 && b.len() == 2 && rest.len() == 20, "{rel}");
                    assert!(size <= 120 << 10, "the small profile: {rel} is {size}");
                    local += size;
                    let head = fs::read(dir.join(rel)).unwrap();
                    text += usize::from(head.starts_with(b"{\"type\":\"m.room.message\""));
                }
                ["media_store", "local_thumbnails", a, b, rest, name] => {
                    assert!(a.len() == 2 && b.len() == 2 && rest.len() == 20, "{rel}");
                    assert!(
                        [
                            "32-32-image-jpeg-crop",
                            "96-96-image-jpeg-crop",
                            "320-240-image-jpeg-scale"
                        ]
                        .contains(&name),
                        "{rel}"
                    );
                    assert!(dir
                        .join("media_store/local_content")
                        .join(a)
                        .join(b)
                        .join(rest)
                        .is_file());
                    thumbs += 1;
                    local += size;
                }
                ["media_store", "remote_content", "matrix.org", _, _, _] => remote += 1,
                ["media_store", "url_cache", "2026-11-20", id] => {
                    assert_eq!(id.len(), 24);
                    url += 1;
                }
                _ => panic!("unexpected file {rel}"),
            }
            total += size;
        }
        let size = options.size;
        assert!(
            total >= size && total < size + (60 << 10),
            "{total} bytes of media for {size}"
        );
        assert!(local >= size * 3 / 4 && local < size * 3 / 4 + (60 << 10), "{local}");
        assert!(thumbs > 0 && thumbs % 3 == 0, "{thumbs} thumbnails");
        assert!(remote > 0 && url > 0, "{remote} remote, {url} url cache");
        assert!(text > 0, "some local media compresses");

        let db = Connection::open(dir.join("homeserver.db")).unwrap();
        let mode: String = db.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let count = |table: &str| -> i64 {
            db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count("users"), 50);
        assert_eq!(count("rooms"), 20);
        assert_eq!(count("events"), 300);
        assert_eq!(count("local_media_repository"), 0);
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn small_files_are_extra_local_media_of_200_to_1200_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (plain, many) = (tmp.path().join("plain"), tmp.path().join("many"));
        make(&plain, &small("1M", 2)).unwrap();
        make(
            &many,
            &Options {
                small_files: 500,
                ..small("1M", 2)
            },
        )
        .unwrap();
        let before: HashSet<String> = media_and_key(&plain).into_iter().collect();
        let added: Vec<String> = media_and_key(&many)
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect();
        assert_eq!(added.len(), 500);
        assert_eq!(
            media_and_key(&many).len(),
            before.len() + 500,
            "the rest of the tree is unchanged"
        );
        for line in added {
            let mut f = line.splitn(3, ' ').skip(1);
            let size: u64 = f.next().unwrap().parse().unwrap();
            let rel = f.next().unwrap();
            assert!((200..=1200).contains(&size), "{line}");
            let parts: Vec<&str> = rel.split('/').collect();
            assert_eq!(parts.len(), 5, "{rel}");
            assert_eq!(&parts[..2], ["media_store", "local_content"]);
        }
    }

    #[test]
    fn mixed_media_has_large_files_within_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let options = Options {
            size: 64 << 20,
            events: 10,
            ..Options::default()
        };
        make(tmp.path(), &options).unwrap();
        let sizes: Vec<u64> = digest(tmp.path())
            .unwrap()
            .lines()
            .filter(|l| l.contains(" media_store/"))
            .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(sizes.iter().any(|&s| s > 200 << 10), "some photos");
        assert!(sizes.iter().all(|&s| s <= 48 << 20));
        let total: u64 = sizes.iter().sum();
        assert!(total >= options.size && total < options.size + (60 << 10), "{total}");
    }

    #[test]
    fn churn_keeps_events_and_counter_in_step() {
        let tmp = tempfile::tempdir().unwrap();
        make(tmp.path(), &small("100K", 1)).unwrap();
        let n = churn(tmp.path(), Duration::from_millis(300)).unwrap();
        assert!(n > 0);
        let db = Connection::open(tmp.path().join("homeserver.db")).unwrap();
        let (events, counter): (i64, i64) = db
            .query_row(
                "SELECT (SELECT count(*) FROM events WHERE event_id LIKE '$churn%'), creation_ts \
                 FROM users WHERE name = '@user0:example.com'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((events, counter), (n as i64, n as i64));
        assert!(churn(&tmp.path().join("nothing here"), Duration::ZERO).is_err());
    }

    #[test]
    fn digest_lists_directories_in_string_order() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for (path, body) in [("b", "1"), ("a/y", "22"), ("a-b/x", ""), ("a/b/z", "333"), ("A", "4")] {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
        let listing = digest(root).unwrap();
        let names: Vec<&str> = listing.lines().map(|l| l.splitn(3, ' ').nth(2).unwrap()).collect();
        // "…/a" < "…/a-b" < "…/a/b" as strings ('-' sorts before '/')
        assert_eq!(names, ["A", "b", "a/y", "a-b/x", "a/b/z"]);
        assert_eq!(
            listing.lines().next().unwrap(),
            "4b227777d4dd1fc61c6f884f48641d02b4d121d3fd328cb08b5531fcacdabf8a 1 A"
        );
        assert!(listing.contains(" 0 a-b/x\n"));
    }

    #[test]
    fn sizes_read_as_the_python_tool_read_them() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size(" 1000 ").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1M").is_err());
    }

    #[test]
    fn base64_matches_the_standard_alphabet_without_padding() {
        assert_eq!(base64_unpadded(b""), "");
        assert_eq!(base64_unpadded(b"f"), "Zg");
        assert_eq!(base64_unpadded(b"fo"), "Zm8");
        assert_eq!(base64_unpadded(b"foo"), "Zm9v");
        assert_eq!(base64_unpadded(&[0xff, 0xfe, 0xfd, 0xfc]), "//79/A");
    }
}
