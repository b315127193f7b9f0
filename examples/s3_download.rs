//! Benchmark aid: one backup object read through the S3 store's download (ranged GETs, in order)
//! into nothing, to time the transfer alone. `bench/s3.sh` runs it beside awscli's download.
//!
//!   s3_download ENDPOINT BUCKET KEY [RANGE_MIB RANGES_IN_FLIGHT [HELD_MIB]]
//!
//! Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (never argv).
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::time::Instant;

use synapse_backup::backup_id::BackupId;
use synapse_backup::store::s3::{DownloadTuning, S3Params, S3Store};
use synapse_backup::store::ObjectStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, bucket, key, rest @ ..] = args.as_slice() else {
        return Err("usage: s3_download ENDPOINT BUCKET KEY [RANGE_MIB RANGES_IN_FLIGHT [HELD_MIB]]".into());
    };
    let (path, id) = key.rsplit_once('/').unwrap_or(("", key));
    let mut map = BTreeMap::new();
    for (k, v) in [
        ("access-key", std::env::var("AWS_ACCESS_KEY_ID")?),
        ("secret-key", std::env::var("AWS_SECRET_ACCESS_KEY")?),
        ("endpoint", endpoint.clone()),
        ("bucket", bucket.clone()),
        ("path", path.to_string()),
        ("s3-uri-style", "path".to_string()),
    ] {
        map.insert(k.to_string(), v);
    }
    let mut store = S3Store::new(S3Params::from_map(&map)?)?;
    if let [range, in_flight, held @ ..] = rest {
        let defaults = DownloadTuning::default();
        store = store.with_download_tuning(DownloadTuning {
            range_size: range.parse::<u64>()? << 20,
            ranges_in_flight: in_flight.parse()?,
            held_ahead: match held.first() {
                Some(held) => held.parse::<u64>()? << 20,
                None => defaults.held_ahead,
            },
            ..defaults
        });
    }
    let id: BackupId = id.parse()?;
    let started = Instant::now();
    let mut reader = store.get(&id)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{total} bytes in {secs:.2} s ({:.0} MB/s)", total as f64 / secs / 1e6);
    Ok(())
}
