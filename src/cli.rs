//! The operator's CLI: the same commands as the charm's actions, for Synapse run without Juju
//! (systemd timers, Kubernetes CronJobs). Same archive format, same store layout.
//!
//! The passphrase never comes from argv (other users can read a process's arguments): it is read
//! from `--passphrase-file` or the `SYNAPSE_BACKUP_PASSPHRASE` environment variable.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::backup_id::BackupId;
use crate::commands::create::Choice;
use crate::commands::recover::{self, Recover};
use crate::commands::{self, Create, Policy, PruneReport, Restore, Verify};
use crate::commands::{leftovers, owner};
use crate::error::Error;
use crate::progress::{Progress, ProgressSink, Throttled};
use crate::secret::Passphrase;
use crate::store::dir::DirStore;
use crate::store::s3::{S3Params, S3Store};
use crate::store::{ObjectInfo, ObjectStore};
use crate::synapse::config::parse_path_list;
use crate::synapse::service::{self, ServiceSpec};
use crate::synapse::SynapseConfig;
use crate::units::{human_bytes, rfc3339};

pub const PASSPHRASE_ENV: &str = "SYNAPSE_BACKUP_PASSPHRASE";

#[derive(Parser, Debug)]
#[command(name = "synapse-backup", version, about = "Back up and restore a Synapse homeserver")]
pub struct Cli {
    /// Synapse's config: files or directories, comma-separated, read as Synapse reads `-c`
    #[arg(long, global = true, env = "SYNAPSE_CONFIG", default_value = "/data/homeserver.yaml")]
    pub synapse_config: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// File holding the backup passphrase (or set SYNAPSE_BACKUP_PASSPHRASE)
    #[arg(long, global = true, env = "SYNAPSE_BACKUP_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Print results as JSON, for scripts
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress lines on stderr
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where backups are kept: a local directory (`--store`) or an S3 bucket (`--bucket` and friends,
/// validated by the same code as the charm's relation data). Secrets never come from argv.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// A local directory to keep backups in
    #[arg(long, global = true, env = "SYNAPSE_BACKUP_STORE")]
    pub store: Option<PathBuf>,
    /// An S3 bucket to keep backups in (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
    #[arg(long, global = true, env = "SYNAPSE_BACKUP_BUCKET")]
    pub bucket: Option<String>,
    /// S3 endpoint, e.g. https://s3.example.com or http://10.0.0.5:7480 (default: AWS)
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// S3 region (default with --endpoint: us-east-1)
    #[arg(long, global = true, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Key prefix inside the bucket
    #[arg(long, global = true, env = "SYNAPSE_BACKUP_PATH")]
    pub path: Option<String>,
    /// path (https://endpoint/bucket) or host (https://bucket.endpoint)
    #[arg(long, global = true, value_name = "path|host")]
    pub s3_uri_style: Option<String>,
    /// S3 storage class for new backups, e.g. STANDARD_IA
    #[arg(long, global = true)]
    pub storage_class: Option<String>,
    /// PEM file of CA certificates to trust for an HTTPS endpoint
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca_chain: Option<PathBuf>,
    /// S3 access key id
    #[arg(long, global = true, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key: Option<String>,
    /// File holding the S3 secret key (or set AWS_SECRET_ACCESS_KEY)
    #[arg(long, global = true, value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
}

pub const SECRET_KEY_ENV: &str = "AWS_SECRET_ACCESS_KEY";

impl StoreArgs {
    pub fn open(&self) -> Result<Box<dyn ObjectStore>, Error> {
        match (&self.store, &self.bucket) {
            (Some(_), Some(_)) => Err(Error::Usage(
                "give either --store DIR or --bucket NAME (SYNAPSE_BACKUP_STORE / SYNAPSE_BACKUP_BUCKET), not both"
                    .into(),
            )),
            (Some(dir), None) => Ok(Box::new(DirStore::open(dir)?)),
            (None, Some(_)) => Ok(Box::new(S3Store::new(self.s3_params()?)?)),
            (None, None) => Err(Error::Usage(
                "say where backups are kept: --store DIR, or --bucket NAME with --endpoint or --region".into(),
            )),
        }
    }

    /// The flags as the relation databag's keys, through the one validation both front doors use.
    pub fn s3_params(&self) -> Result<S3Params, Error> {
        let mut map = BTreeMap::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                map.insert(key.to_string(), v);
            }
        };
        put("bucket", self.bucket.clone());
        put("endpoint", self.endpoint.clone());
        put("region", self.region.clone());
        put("path", self.path.clone());
        put("s3-uri-style", self.s3_uri_style.clone());
        put("storage-class", self.storage_class.clone());
        put("access-key", self.access_key.clone());
        if let Some(file) = &self.tls_ca_chain {
            let pem = std::fs::read_to_string(file)
                .map_err(|e| Error::Usage(format!("cannot read the CA file {}: {e}", file.display())))?;
            put("tls-ca-chain", Some(pem));
        }
        put("secret-key", self.secret_key()?);
        S3Params::from_map(&map).map_err(|e| {
            let hint = match e.key() {
                "access-key" => "give --access-key or set AWS_ACCESS_KEY_ID",
                "secret-key" => "set AWS_SECRET_ACCESS_KEY or give --secret-key-file FILE",
                "region" => "give --region or --endpoint",
                "tls-ca-chain" => "--tls-ca-chain takes a PEM file",
                _ => "",
            };
            let flag = e.key();
            Error::Usage(if hint.is_empty() {
                format!("{e} (--{flag})")
            } else {
                format!("{e}: {hint}")
            })
        })
    }

    /// The secret key's text, from the file or the environment (never from argv).
    fn secret_key(&self) -> Result<Option<String>, Error> {
        if let Some(path) = &self.secret_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("cannot read the secret key file {}: {e}", path.display())))?;
            return Ok(Some(text.lines().next().unwrap_or_default().to_string()));
        }
        Ok(std::env::var(SECRET_KEY_ENV).ok())
    }
}

/// Retention: which backups `prune` (and `create`, once its backup is made) deletes, and when what
/// a killed create left is taken for abandoned and removed.
#[derive(Args, Debug, Clone)]
pub struct RetentionArgs {
    /// Keep only the newest N backups (0 = no limit)
    #[arg(long, value_name = "N", env = "SYNAPSE_BACKUP_KEEP_LAST", default_value_t = 0)]
    pub keep_last: u32,
    /// Delete backups made more than N days ago (the newest backup is always kept)
    #[arg(long, value_name = "N", env = "SYNAPSE_BACKUP_OLDER_THAN_DAYS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub older_than_days: Option<u32>,
    /// Remove what killed creates left (partial files, incomplete S3 uploads) once older than N
    /// hours, a bound no running create reaches (0: every one, a running upload included)
    #[arg(
        long,
        value_name = "N",
        env = "SYNAPSE_BACKUP_ABANDONED_AFTER_HOURS",
        default_value_t = 24
    )]
    pub abandoned_after_hours: u32,
}

impl RetentionArgs {
    pub fn abandoned_after(&self) -> Duration {
        Duration::from_secs(u64::from(self.abandoned_after_hours) * 3600)
    }

    pub fn policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            older_than_days: self.older_than_days,
        }
    }
}

/// How `restore` and `recover` stop, start and health-check Synapse.
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// How to stop Synapse before the swap and start it after:
    /// pebble:<service>[@<socket>], systemd:<unit> or none (Synapse already stopped)
    #[arg(long, value_name = "SPEC", env = "SYNAPSE_BACKUP_SERVICE", default_value = "none")]
    pub service: ServiceSpec,
    /// Seconds Synapse may take to answer GET /health after it is started on restored data,
    /// before the previous data is put back (0: do not check)
    #[arg(
        long,
        value_name = "SECONDS",
        env = "SYNAPSE_BACKUP_HEALTH_TIMEOUT",
        default_value_t = 120
    )]
    pub health_timeout: u64,
}

impl ServiceArgs {
    fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_timeout)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make a backup now (then prune, with --keep-last or --older-than-days)
    Create {
        #[command(flatten)]
        retention: RetentionArgs,
        /// full: every file; differential: only media changed since this server's newest full
        /// (a full when there is none); auto: a differential while the newest full is younger
        /// than --full-every-days
        #[arg(long = "type", default_value = "full", value_parser = ["full", "differential", "auto"])]
        kind: String,
        /// With --type auto: make a full when the newest full is this many days old
        #[arg(long, default_value_t = 7)]
        full_every_days: u32,
    },
    /// List this server's backups in the store (and those that record no server)
    List {
        /// Also other servers' backups on the same store (marked with their server)
        #[arg(long)]
        all: bool,
    },
    /// Restore a backup onto this Synapse (stops and starts it with --service)
    Restore {
        backup_id: String,
        /// Restore even if the backup is of another server_name
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        synapse: ServiceArgs,
        /// With --service none: restore even though Synapse answers on its listener
        #[arg(long)]
        even_if_running: bool,
    },
    /// Finish what an interrupted restore left: roll back a half swap, report kept previous data
    Recover {
        /// Drop the data a finished restore kept (its previous data)
        #[arg(long, conflicts_with = "rollback")]
        commit: bool,
        /// Put back the data a finished restore replaced
        #[arg(long)]
        rollback: bool,
        #[command(flatten)]
        synapse: ServiceArgs,
    },
    /// Delete the backups the retention policy says have expired (never the newest)
    Prune {
        #[command(flatten)]
        retention: RetentionArgs,
        /// Say what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Read a whole backup and check its integrity and every file's hash; writes nothing
    Verify { backup_id: String },
    /// Delete one of this server's backups
    Delete {
        backup_id: String,
        /// Delete it even if it is another server's, or records no server
        #[arg(long)]
        force: bool,
    },
}

pub fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                println!("{}", json!({ "error": e.to_string() }));
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNAPSE_BACKUP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Progress lines on stderr every few seconds (stderr is a file or a pipe: a log).
struct Stderr;

impl ProgressSink for Stderr {
    fn report(&self, p: &Progress) {
        let _ = writeln!(std::io::stderr(), "{}", p.line());
    }
}

/// A live progress bar on stderr, redrawn in place (stderr is a terminal); the line is ended
/// when the run is over, so what follows starts on a line of its own.
struct Bar {
    drawn: std::cell::Cell<bool>,
}

impl ProgressSink for Bar {
    fn report(&self, p: &Progress) {
        const WIDTH: usize = 24;
        let bar = match p.fraction {
            Some(f) => {
                let full = ((f.clamp(0.0, 1.0)) * WIDTH as f64).round() as usize;
                format!("[{}{}] ", "#".repeat(full), "-".repeat(WIDTH - full))
            }
            None => String::new(),
        };
        let columns = rustix::termios::tcgetwinsize(std::io::stderr())
            .map(|w| usize::from(w.ws_col))
            .ok()
            .filter(|c| *c > 0)
            .unwrap_or(100);
        let line: String = format!("{bar}{}", p.line())
            .chars()
            .take(columns.saturating_sub(1))
            .collect();
        let _ = write!(std::io::stderr(), "\r\x1b[K{line}");
        self.drawn.set(true);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if self.drawn.get() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn run(cli: &Cli) -> Result<(), Error> {
    let progress: Box<dyn ProgressSink> = if cli.quiet {
        Box::new(crate::progress::Quiet)
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = Bar {
            drawn: std::cell::Cell::new(false),
        };
        Box::new(Throttled::new(bar, crate::progress::every(Duration::from_millis(250))))
    } else {
        Box::new(Throttled::new(Stderr, crate::progress::every(Duration::from_secs(2))))
    };
    if let Command::Recover {
        commit,
        rollback,
        synapse,
    } = &cli.command
    {
        return recover_command(cli, *commit, *rollback, synapse);
    }
    let store = cli.store.open()?;
    let store = store.as_ref();
    match &cli.command {
        Command::Recover { .. } => {} // answered above, before a store is opened
        Command::Create {
            retention,
            kind,
            full_every_days,
        } => {
            let synapse = load_synapse(cli)?;
            let passphrase = read_passphrase(cli)?;
            let kind = match kind.parse().map_err(Error::Usage)? {
                Choice::Auto { .. } => Choice::Auto {
                    full_every: Duration::from_secs(u64::from(*full_every_days) * 86400),
                },
                other => other,
            };
            let r = Create {
                synapse: &synapse,
                passphrase: &passphrase,
                store,
                abandoned_after: retention.abandoned_after(),
                kind,
            }
            .run(progress.as_ref())?;
            let mut notes = r.notes.clone();
            // the backup is made: a pruning failure is worth a note, not a failed backup
            let pruned = match commands::prune::run(store, &retention.policy(), false, &synapse.server_name) {
                Ok(p) => {
                    notes.extend(p.failed.iter().map(|(id, e)| format!("could not prune {id}: {e}")));
                    p.pruned
                }
                Err(e) => {
                    notes.push(format!("the backup was made but pruning failed: {e}"));
                    Vec::new()
                }
            };
            for note in &notes {
                eprintln!("note: {note}");
            }
            for line in r.skipped_lines() {
                eprintln!("note: {line}");
            }
            print(
                cli,
                json!({
                    "backup-id": r.id.to_string(), "size": r.stored_bytes, "files": r.files,
                    "source-bytes": r.source_bytes, "server-name": r.server_name, "database": r.database,
                    "type": r.kind.as_str(), "base": r.base.as_ref().map(ToString::to_string),
                    "inherited": r.inherited, "inherited-bytes": r.inherited_bytes,
                    "notes": notes, "seconds": r.elapsed.as_secs_f64(),
                    "pruned": pruned.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "cleaned": r.cleaned.iter().map(leftovers::to_json).collect::<Vec<_>>(),
                    "skipped": r.skipped.iter().map(|s| json!({ "path": format!("/{}", s.name), "reason": s.reason })).collect::<Vec<_>>(),
                    "skipped-count": r.skipped_count,
                }),
                || {
                    let mut out = format!(
                        "{}\n{} files, {} in, {} stored, in {:.1}s",
                        r.id,
                        r.files,
                        human_bytes(r.source_bytes),
                        human_bytes(r.stored_bytes),
                        r.elapsed.as_secs_f64()
                    );
                    if let Some(base) = &r.base {
                        out.push_str(&format!(
                            "\ndifferential on {base}: {} unchanged files ({}) left to it",
                            r.inherited,
                            human_bytes(r.inherited_bytes)
                        ));
                    }
                    for id in &pruned {
                        out.push_str(&format!("\npruned {id}"));
                    }
                    out
                },
            );
        }
        Command::List { all } => {
            let mut list = commands::list::run(store)?;
            if !*all {
                // without a config there is no "this server": everything is shown
                if let Ok(synapse) = load_synapse(cli) {
                    let others = owner::other_servers(&list, &synapse.server_name);
                    if !others.is_empty() {
                        eprintln!(
                            "note: the store also holds backups of other servers ({}), not shown: list --all shows them",
                            owner::names(&others)
                        );
                    }
                    list = owner::visible(list, &synapse.server_name);
                }
            }
            // what killed creates left, counted (whoever's): never a reason for the listing to fail
            let incomplete = store
                .leftovers()
                .map_err(|e| eprintln!("note: {}", leftovers::listing_note(e)))
                .ok();
            let value = json!({
                "backups": list.iter().map(info_json).collect::<Vec<_>>(),
                "incomplete": incomplete.as_deref().map(leftovers::census_json),
            });
            print(cli, value, || {
                let line = incomplete.as_deref().and_then(leftovers::census_line);
                [format_table(&list)]
                    .into_iter()
                    .chain(line)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Restore {
            backup_id,
            force,
            synapse: control,
            even_if_running,
        } => {
            let id: BackupId = backup_id.parse()?;
            let synapse = load_synapse(cli)?;
            let passphrase = read_passphrase(cli)?;
            let service = service::from_spec(&control.service);
            let r = Restore {
                id: &id,
                synapse: &synapse,
                passphrase: &passphrase,
                store,
                service: service.as_ref(),
                force: *force,
                health_timeout: control.health_timeout(),
                even_if_running: *even_if_running,
            }
            .run(progress.as_ref())?;
            for note in &r.notes {
                eprintln!("note: {note}");
            }
            print(
                cli,
                json!({ "backup-id": r.id.to_string(), "files": r.files, "bytes": r.bytes, "seconds": r.elapsed.as_secs_f64(), "notes": r.notes }),
                || format!("restored {}: {} files, {}", r.id, r.files, human_bytes(r.bytes)),
            );
        }
        Command::Verify { backup_id } => {
            let id: BackupId = backup_id.parse()?;
            let passphrase = read_passphrase(cli)?;
            // for an archive without a manifest, the file names this server gives its key and database
            let synapse = load_synapse(cli).ok();
            let r = Verify {
                id: &id,
                passphrase: &passphrase,
                store,
                synapse: synapse.as_ref(),
            }
            .run(progress.as_ref())?;
            print(
                cli,
                json!({
                    "backup-id": r.id.to_string(), "files": r.files, "bytes": r.bytes,
                    "server-name": r.server_name, "manifest-checked": r.manifest_checked,
                    "base": r.base.as_ref().map(ToString::to_string), "inherited": r.inherited,
                }),
                || {
                    let how = if r.manifest_checked {
                        "every file matches the manifest"
                    } else {
                        "no manifest: OpenPGP integrity only"
                    };
                    let mut out = format!("{} is good: {} files, {} ({how})", r.id, r.files, human_bytes(r.bytes));
                    if let Some(base) = &r.base {
                        out.push_str(&format!(
                            "\na differential: its {} other files are in its full backup {base}, which is good too",
                            r.inherited
                        ));
                    }
                    out
                },
            );
        }
        Command::Prune { retention, dry_run } => {
            let policy = retention.policy();
            if policy.keeps_everything() {
                return Err(Error::Usage(
                    "no retention policy: give --keep-last N and/or --older-than-days N".into(),
                ));
            }
            let synapse = load_synapse(cli).map_err(|e| {
                Error::Usage(format!(
                    "prune deletes only this server's backups, so it needs this Synapse's config (--synapse-config): {e}"
                ))
            })?;
            let r = commands::prune::run(store, &policy, *dry_run, &synapse.server_name)?;
            let cleaned = leftovers::clean(store, retention.abandoned_after(), *dry_run);
            for note in &cleaned.notes {
                eprintln!("note: {note}");
            }
            let mut value = prune_json(&r);
            value["cleaned"] = json!(cleaned.cleaned.iter().map(leftovers::to_json).collect::<Vec<_>>());
            print(cli, value, || {
                [prune_text(&r)]
                    .into_iter()
                    .chain(cleaned.summary())
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            if !r.failed.is_empty() {
                return Err(Error::Refused(format!(
                    "could not delete {} expired backup(s): {}",
                    r.failed.len(),
                    r.failed
                        .iter()
                        .map(|(id, e)| format!("{id} ({e})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Command::Delete { backup_id, force } => {
            let id: BackupId = backup_id.parse()?;
            let synapse = if *force { None } else { Some(load_synapse(cli)?) };
            let ours = synapse.as_ref().map(|s| s.server_name.as_str());
            commands::delete::run(store, &id, ours, *force).map_err(|e| match e {
                Error::Refused(m) => Error::Refused(m.replace("force the deletion", "--force")),
                e => e,
            })?;
            print(cli, json!({ "backup-id": id.to_string(), "deleted": true }), || {
                format!("deleted {id}")
            });
        }
    }
    Ok(())
}

/// `recover` needs no store: it works on this Synapse's data only.
fn recover_command(cli: &Cli, commit: bool, rollback: bool, args: &ServiceArgs) -> Result<(), Error> {
    let synapse = load_synapse(cli)?;
    let service = service::from_spec(&args.service);
    let health_timeout = args.health_timeout();
    let mode = match (commit, rollback) {
        (true, _) => recover::Mode::Commit,
        (_, true) => recover::Mode::Rollback,
        _ => recover::Mode::Check,
    };
    let said = Recover {
        synapse: &synapse,
        service: service.as_ref(),
        mode,
        health_timeout,
    }
    .run()?;
    print(cli, json!({ "recovered": said }), || {
        if said.is_empty() {
            "nothing to recover: no interrupted restore".to_string()
        } else {
            said.join("\n")
        }
    });
    Ok(())
}

fn print(cli: &Cli, value: serde_json::Value, human: impl FnOnce() -> String) {
    if cli.json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

fn load_synapse(cli: &Cli) -> Result<SynapseConfig, Error> {
    Ok(SynapseConfig::load(&parse_path_list(&cli.synapse_config))?)
}

fn read_passphrase(cli: &Cli) -> Result<Passphrase, Error> {
    let value = if let Some(path) = &cli.passphrase_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("cannot read the passphrase file {}: {e}", path.display())))?;
        // a trailing newline is the editor's, not the passphrase's (gpg --passphrase-file reads one line)
        text.lines().next().unwrap_or_default().to_string()
    } else if let Ok(v) = std::env::var(PASSPHRASE_ENV) {
        v
    } else {
        return Err(Error::Usage(format!(
            "no passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV}"
        )));
    };
    if value.is_empty() {
        return Err(Error::Usage("the passphrase is empty".into()));
    }
    Ok(Passphrase::new(value))
}

pub fn prune_json(r: &PruneReport) -> serde_json::Value {
    json!({
        "policy": r.policy.to_string(),
        "dry-run": r.dry_run,
        "pruned": r.pruned.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "kept": r.kept,
        "failed": r.failed.iter().map(|(id, e)| json!({ "backup-id": id.to_string(), "error": e })).collect::<Vec<_>>(),
        "other-servers": r.other_servers,
        "unknown-owner": r.unknown_owner,
    })
}

fn prune_text(r: &PruneReport) -> String {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let mut lines = vec![format!("policy: {}", r.policy)];
    lines.extend(r.pruned.iter().map(|id| format!("{verb} {id}")));
    lines.extend(r.failed.iter().map(|(id, e)| format!("could not delete {id}: {e}")));
    lines.push(format!("{} {} backup(s), kept {}", verb, r.pruned.len(), r.kept));
    if !r.other_servers.is_empty() {
        lines.push(format!(
            "left alone: the backups of other servers ({})",
            r.other_servers.join(", ")
        ));
    }
    if r.unknown_owner > 0 {
        lines.push(format!(
            "left alone: {} backup(s) that record no server (delete them with delete --force)",
            r.unknown_owner
        ));
    }
    lines.join("\n")
}

pub fn info_json(b: &ObjectInfo) -> serde_json::Value {
    json!({
        "backup-id": b.id.to_string(),
        "size": b.size,
        "last-modified": rfc3339(b.last_modified),
        "server-name": b.meta.server_name,
        "created-at": b.meta.created_at,
        "format": b.meta.format,
        "type": b.meta.kind.as_deref().unwrap_or("full"),
        "base": b.meta.base,
    })
}

/// The aligned table both the CLI and `list-backups` show.
pub fn format_table(list: &[ObjectInfo]) -> String {
    const COLUMNS: usize = 6;
    let rows: Vec<[String; COLUMNS]> = list
        .iter()
        .map(|b| {
            [
                b.id.to_string(),
                rfc3339(b.last_modified),
                human_bytes(b.size),
                b.meta.kind.clone().unwrap_or_else(|| "full".into()),
                b.meta.base.clone().unwrap_or_else(|| "-".into()),
                b.meta.server_name.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let head = ["backup-id", "last-modified", "size", "type", "base", "server-name"].map(String::from);
    let mut widths = head.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |r: &[String; COLUMNS]| {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| match i {
                2 => format!("{c:>w$}"),
                i if i == COLUMNS - 1 => c.clone(),
                _ => format!("{c:<w$}"),
            })
            .collect();
        cells.join(" | ").trim_end().to_string()
    };
    let mut out = vec![line(&head)];
    out.extend(rows.iter().map(line));
    out.join("\n")
}
