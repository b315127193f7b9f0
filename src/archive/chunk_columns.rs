//! How a manifest chunk ([`FileChunk`]) is written: in columns, not one object per file.
//!
//! ```json
//! {"shared":[0,31,…],"names":["data/media/local_content/ab/cd/ef…","gh/ij…",…],
//!  "sizes":[812,…],"sha256":"<every file's SHA-256, one after the other, in base64>","base":[3,…]}
//! ```
//!
//! Each name is stored as the bytes it does not share with the name before it (`shared` says how
//! many it does), and the hashes as one string. deflate codes each column with its own statistics
//! then: mixed in one object per file, the hex digits and the names' letters share one code table
//! and each costs more bits, and every file repeats the keys. The hashes are base64, not hex:
//! random hex is full of short repeats that deflate's fast levels code as matches, which cost more
//! than the literals (37 bytes a hash against 33). About 18 bytes less per file in all, a quarter
//! of what the manifest cost. `base` lists the records (by position) a differential's base
//! provides.
//!
//! Chunks of backups made before (format 1, `{"files":[{"path","size","sha256","base"},…]}`)
//! are still read.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::manifest::{FileChunk, FileRecord};

const HASH_BYTES: usize = 32;

/// What is written.
#[derive(Serialize)]
pub(super) struct Columns<'a> {
    shared: Vec<usize>,
    names: Vec<&'a str>,
    sizes: Vec<u64>,
    sha256: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    base: Vec<usize>,
}

impl<'a> Columns<'a> {
    pub fn of(chunk: &'a FileChunk) -> Result<Self, String> {
        let n = chunk.files.len();
        let mut c = Columns {
            shared: Vec::with_capacity(n),
            names: Vec::with_capacity(n),
            sizes: Vec::with_capacity(n),
            sha256: String::new(),
            base: Vec::new(),
        };
        let mut hashes = vec![0; n * HASH_BYTES];
        let mut previous = "";
        for (i, f) in chunk.files.iter().enumerate() {
            let shared = shared_prefix(previous, &f.path);
            c.shared.push(shared);
            c.names.push(&f.path[shared..]);
            c.sizes.push(f.size);
            hex::decode_to_slice(&f.sha256, &mut hashes[i * HASH_BYTES..(i + 1) * HASH_BYTES])
                .map_err(|e| format!("{}: a SHA-256 that is not 64 hex digits ({e})", f.path))?;
            if f.base {
                c.base.push(i);
            }
            previous = &f.path;
        }
        c.sha256 = BASE64.encode(&hashes);
        Ok(c)
    }
}

/// The longest common prefix of `a` and `b` in bytes, ending on a character boundary of both.
fn shared_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// What is read: either form.
#[derive(Deserialize)]
pub(super) struct Wire {
    /// format 1
    files: Option<Vec<FileRecord>>,
    shared: Option<Vec<usize>>,
    names: Option<Vec<String>>,
    sizes: Option<Vec<u64>>,
    sha256: Option<String>,
    #[serde(default)]
    base: Vec<usize>,
}

impl TryFrom<Wire> for FileChunk {
    type Error = String;

    fn try_from(w: Wire) -> Result<Self, String> {
        match (w.files, w.shared, w.names, w.sizes, w.sha256) {
            (Some(files), None, None, None, None) if w.base.is_empty() => Ok(FileChunk { files }),
            (None, Some(shared), Some(names), Some(sizes), Some(sha256)) => {
                from_columns(&shared, names, &sizes, &sha256, &w.base)
            }
            _ => Err("a manifest chunk that is neither a list of files nor columns of them".into()),
        }
    }
}

fn from_columns(
    shared: &[usize],
    names: Vec<String>,
    sizes: &[u64],
    sha256: &str,
    base: &[usize],
) -> Result<FileChunk, String> {
    let n = names.len();
    let hashes = BASE64
        .decode(sha256)
        .map_err(|e| format!("a manifest chunk's SHA-256 column is not base64: {e}"))?;
    if shared.len() != n || sizes.len() != n || hashes.len() != n * HASH_BYTES {
        return Err(format!(
            "a manifest chunk's columns disagree: {n} names, {} prefixes, {} sizes, {} bytes of SHA-256",
            shared.len(),
            sizes.len(),
            hashes.len()
        ));
    }
    if base.windows(2).any(|w| w[0] >= w[1]) || base.last().is_some_and(|&last| last >= n) {
        return Err("a manifest chunk's base column is not increasing positions of its files".into());
    }
    let mut files: Vec<FileRecord> = Vec::with_capacity(n);
    let mut base = base.iter().peekable();
    for (i, (suffix, (&shared, &size))) in names.into_iter().zip(shared.iter().zip(sizes)).enumerate() {
        let previous = files.last().map_or("", |f| f.path.as_str());
        if shared > previous.len() || !previous.is_char_boundary(shared) {
            return Err(format!(
                "a manifest chunk's name {i} shares {shared} bytes with the one before it, which is shorter"
            ));
        }
        let mut path = String::with_capacity(shared + suffix.len());
        path.push_str(&previous[..shared]);
        path.push_str(&suffix);
        let is_base = base.next_if_eq(&&i).is_some();
        files.push(FileRecord {
            path,
            size,
            sha256: hex::encode(&hashes[i * HASH_BYTES..(i + 1) * HASH_BYTES]),
            base: is_base,
        });
    }
    Ok(FileChunk { files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, size: u64, fill: char, base: bool) -> FileRecord {
        FileRecord {
            path: path.into(),
            size,
            sha256: fill.to_string().repeat(2 * HASH_BYTES),
            base,
        }
    }

    #[test]
    fn columns_read_back_as_the_records_they_were_made_of() {
        let chunk = FileChunk {
            files: vec![
                record("data/media/local_content/ab/cd/efgh", 812, 'a', false),
                record("data/media/local_content/ab/cd/efgi", 0, 'b', true),
                record("data/media/local_content/ab/xy/zz", 5, 'c', false),
                record("data/media/l\u{e9}", 7, '1', false),
                record("data/media/l\u{e8}x", 9, '2', true),
                record("other", 1, '3', false),
            ],
        };
        let json = serde_json::to_string(&chunk).unwrap();
        assert!(json.contains(r#""shared":[0,34,28,12,12,0]"#), "{json}");
        assert!(json.contains(r#""base":[1,4]"#), "{json}");
        let back: FileChunk = serde_json::from_str(&json).unwrap();
        assert_eq!(back, chunk);
        let empty = serde_json::to_string(&FileChunk::default()).unwrap();
        assert_eq!(serde_json::from_str::<FileChunk>(&empty).unwrap(), FileChunk::default());
    }

    #[test]
    fn a_chunk_of_a_format_1_backup_still_reads() {
        let old = include_str!("../../fuzz/seeds/manifest/files-000001.json");
        let chunk: FileChunk = serde_json::from_str(old).unwrap();
        assert_eq!(chunk.files.len(), 3);
        assert_eq!(chunk.files[1].path, "tmp/tmpx5o0uamy/data/homeserver.db");
        assert_eq!(chunk.files[1].size, 45056);
        assert!(chunk.files[1].sha256.starts_with("279df8a6"));
        let differential = r#"{"files":[{"path":"a","size":1,"sha256":"x","base":true}]}"#;
        assert!(serde_json::from_str::<FileChunk>(differential).unwrap().files[0].base);
    }

    #[test]
    fn columns_that_do_not_add_up_are_refused() {
        let hash = BASE64.encode([0; HASH_BYTES]);
        let two = BASE64.encode([0; 2 * HASH_BYTES]);
        for bad in [
            format!(r#"{{"shared":[0],"names":["a"],"sizes":[1,2],"sha256":"{hash}"}}"#),
            format!(r#"{{"shared":[0],"names":["a"],"sizes":[1],"sha256":"{two}"}}"#),
            format!(r#"{{"shared":[1],"names":["a"],"sizes":[1],"sha256":"{hash}"}}"#),
            format!(
                r#"{{"shared":[0],"names":["a"],"sizes":[1],"sha256":"{}"}}"#,
                "!".repeat(44)
            ),
            format!(r#"{{"shared":[0],"names":["a"],"sizes":[1],"sha256":"{hash}","base":[1]}}"#),
            format!(r#"{{"shared":[0,1],"names":["a","b"],"sizes":[1,1],"sha256":"{two}","base":[1,1]}}"#),
            format!(r#"{{"shared":[0,1],"names":["é","b"],"sizes":[1,1],"sha256":"{two}"}}"#),
            format!(r#"{{"files":[],"shared":[0],"names":["a"],"sizes":[1],"sha256":"{hash}"}}"#),
            r#"{"names":["a"]}"#.to_string(),
            "{}".to_string(),
        ] {
            assert!(serde_json::from_str::<FileChunk>(&bad).is_err(), "{bad}");
        }
    }
}
