//! The charm driven as Juju drives it: the real binary as `dispatch`, the `JUJU_*` environment, the
//! hook-tool double first on PATH (commit on exit 0). What a Juju user would check: the unit's
//! status, what the charm wrote for s3-integrator, each action's results or failure message, and
//! that no secret shows up anywhere.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use common::juju::Juju;
use common::PASSPHRASE;
use s3_server::{Kind, S3Server};
use serde_json::json;

const REL: &str = "backup:3";
const S3_SECRET_KEY: &str = "s3-secret-key-do-not-leak-0123456789";

fn related() -> Juju {
    let juju = Juju::new();
    juju.add_relation(REL, "s3-integrator", &["s3-integrator/0"]);
    juju
}

// --- hooks --------------------------------------------------------------------------------------

#[test]
fn unhandled_hooks_exit_zero_and_call_nothing() {
    let juju = Juju::new();
    for hook in [
        "stop",
        "remove",
        "collect-metrics",
        "other-relation-joined",
        "pre-series-upgrade",
    ] {
        let run = juju.hook(hook);
        run.assert_ok();
        assert!(run.calls.is_empty(), "{hook}: {:?}", run.calls);
    }
}

#[test]
fn without_the_relation_the_unit_is_active() {
    let juju = Juju::new();
    for hook in ["install", "config-changed", "start", "update-status", "leader-elected"] {
        let run = juju.hook(hook);
        run.assert_ok();
        assert_eq!(run.status(), ("active".into(), "".into()), "{hook}");
    }
}

#[test]
fn relation_asks_for_credentials_both_generations_understand() {
    let juju = related();
    let created = juju.relation_hook(REL, "created", None);
    created.assert_ok();
    let own = juju.own_app_data(REL);
    assert_eq!(own["requested-secrets"], r#"["access-key", "secret-key"]"#);
    assert_eq!(own["lib-version"], "1.0");
    // no bucket made up on the first contact: a track-2 provider would adopt it
    assert!(own.get("bucket").is_none(), "{own}");
    assert_eq!(created.status().0, "waiting");
    assert!(created.status().1.contains("s3-integrator"), "{:?}", created.status());
    // what is already there is not written again (that would wake the provider up for nothing)
    let joined = juju.relation_hook(REL, "joined", Some("s3-integrator/0"));
    joined.assert_ok();
    assert!(joined.calls_to("relation-set").is_empty());
}

#[test]
fn a_silent_provider_gets_no_made_up_bucket() {
    // an empty databag may be a track-2 provider that has not written yet: it would create it
    let juju = related();
    juju.relation_hook(REL, "created", None).assert_ok();
    juju.relation_hook(REL, "joined", Some("s3-integrator/0")).assert_ok();
    juju.relation_hook(REL, "changed", Some("s3-integrator/0")).assert_ok();
    juju.hook("update-status").assert_ok();
    let own = juju.own_app_data(REL);
    assert!(own.get("bucket").is_none(), "{own}");
}

#[test]
fn a_track1_provider_that_answered_without_a_bucket_gets_a_nudge_in_any_hook() {
    let juju = related();
    juju.relation_hook(REL, "created", None).assert_ok();
    // `juju run s3-integrator/leader sync-s3-credentials` pushes credentials, but no bucket
    juju.set_remote_app_data(
        REL,
        json!({"access-key": "AK", "secret-key": "SK", "endpoint": "http://127.0.0.1:1"}),
    );
    let changed = juju.relation_hook(REL, "changed", None);
    changed.assert_ok();
    assert_eq!(juju.own_app_data(REL)["bucket"], "test-model-synapse-backups");
    assert!(!changed.everything_said().contains("SK"));
    // taken away by someone: written again, in whatever hook comes next
    juju.edit(|s| {
        s["relations"][REL]["app_data"]["synapse"]
            .as_object_mut()
            .unwrap()
            .remove("bucket");
    });
    juju.hook("update-status").assert_ok();
    assert_eq!(juju.own_app_data(REL)["bucket"], "test-model-synapse-backups");
    // once the provider names a bucket of its own, nothing more is written
    juju.set_remote_app_data(
        REL,
        json!({"access-key": "AK", "secret-key": "SK", "endpoint": "http://127.0.0.1:1", "bucket": "theirs"}),
    );
    let later = juju.hook("config-changed");
    later.assert_ok();
    assert!(later.calls_to("relation-set").is_empty());
}

#[test]
fn a_track2_provider_never_gets_a_made_up_bucket() {
    let juju = related();
    juju.relation_hook(REL, "created", None).assert_ok();
    // the provider answered in the track-2 way, without credentials yet
    juju.set_remote_app_data(REL, json!({"lib-version": "1.0", "endpoint": "http://10.0.0.5:7480"}));
    juju.relation_hook(REL, "changed", None).assert_ok();
    let own = juju.own_app_data(REL);
    assert!(own.get("bucket").is_none(), "{own}");
}

#[test]
fn a_non_leader_reads_but_never_writes_the_app_databag() {
    let juju = related();
    juju.set_leader(false);
    let run = juju.relation_hook(REL, "created", None);
    run.assert_ok();
    assert!(run.calls_to("relation-set").is_empty());
    for call in &run.calls {
        assert_eq!(call["exit"], 0, "{call}");
    }
    assert_eq!(run.status().0, "waiting");
}

#[test]
fn an_unreadable_credentials_secret_blocks_naming_the_key() {
    let juju = related();
    juju.add_secret(
        "secret:cs1kf0nmp25c77aa7hb0",
        json!({"access-key": "AKIAEXAMPLE", "secret-key": S3_SECRET_KEY}),
        false,
    );
    juju.set_remote_app_data(
        REL,
        json!({"bucket": "synapse", "endpoint": "http://127.0.0.1:1", "secret-extra": "secret:cs1kf0nmp25c77aa7hb0", "lib-version": "1.0"}),
    );
    let run = juju.relation_hook(REL, "changed", None);
    run.assert_ok().assert_no_secret(&[S3_SECRET_KEY]);
    let (status, message) = run.status();
    assert_eq!(status, "blocked");
    assert!(
        message.starts_with("Backup: S3 configuration is invalid") && message.contains("secret-extra"),
        "{message}"
    );
}

#[test]
fn relation_broken_goes_back_to_active_and_writes_nothing() {
    let juju = related();
    juju.set_remote_app_data(
        REL,
        json!({"bucket": "synapse", "secret-extra": "secret:cs1kf0nmp25c77aa7hb9"}),
    );
    let blocked = juju.relation_hook(REL, "changed", None);
    assert_eq!(blocked.status().0, "blocked");
    // during -broken Juju still lists the relation, and the provider's data may be unreadable
    juju.edit(|s| s["relations"][REL]["remote_unreadable"] = json!(true));
    let broken = juju.relation_hook(REL, "broken", None);
    broken.assert_ok();
    assert_eq!(broken.status(), ("active".into(), "".into()));
    assert!(broken.calls_to("relation-set").is_empty());
    juju.remove_relation(REL);
    let after = juju.hook("update-status");
    after.assert_ok();
    assert_eq!(after.status(), ("active".into(), "".into()));
}

#[test]
fn a_failed_hook_commits_no_relation_write() {
    let juju = related();
    juju.break_tool("status-set", "connection to the controller lost");
    let run = juju.relation_hook(REL, "created", None);
    assert_eq!(run.exit, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("connection to the controller lost"),
        "{}",
        run.stderr
    );
    // the charm did write its request, but Juju discards a failed hook's relation writes
    assert_eq!(run.calls_to("relation-set").len(), 1);
    assert!(juju.own_app_data(REL).is_null(), "{}", juju.own_app_data(REL));
}

#[test]
fn an_ungranted_passphrase_secret_blocks_and_says_how_to_grant_it() {
    let juju = Juju::new();
    juju.add_secret("secret:d0passphrase0000000a", json!({"passphrase": PASSPHRASE}), false);
    juju.config("backup_passphrase_secret", json!("secret:d0passphrase0000000a"));
    let run = juju.hook("config-changed");
    run.assert_ok().assert_no_secret(&[PASSPHRASE]);
    let (status, message) = run.status();
    assert_eq!(status, "blocked");
    assert!(
        message.contains("juju grant-secret secret:d0passphrase0000000a synapse"),
        "{message}"
    );
    // granting it and the secret-changed / config-changed that follows unblocks the unit
    juju.edit(|s| s["secrets"]["secret:d0passphrase0000000a"]["granted"] = json!(true));
    let run = juju.secret_changed("secret:d0passphrase0000000a");
    run.assert_ok();
    assert_eq!(run.status(), ("active".into(), "".into()));
}

// --- actions ------------------------------------------------------------------------------------

#[test]
fn actions_without_the_relation_say_how_to_integrate() {
    let juju = Juju::new();
    juju.config("backup_passphrase", json!(PASSPHRASE));
    let tree = tempfile::tempdir().unwrap();
    let config = common::fixture(&tree.path().join("data"), "1M", "small");
    juju.config("synapse_config", json!(config.to_str().unwrap()));
    for (action, params) in [
        ("create-backup", json!({})),
        ("list-backups", json!({})),
        ("restore-backup", json!({"backup-id": "backup-20240206153012123456"})),
        ("delete-backup", json!({"backup-id": "backup-20240206153012123456"})),
        ("verify-backup", json!({"backup-id": "backup-20240206153012123456"})),
    ] {
        let run = juju.action(action, params);
        run.assert_ok().assert_no_secret(&[PASSPHRASE]);
        let failure = run.failure().unwrap_or_else(|| panic!("{action} did not fail"));
        assert!(
            failure.contains("juju integrate synapse:backup s3-integrator"),
            "{action}: {failure}"
        );
    }
}

#[test]
fn a_missing_passphrase_fails_the_action_with_the_option_name() {
    let juju = related();
    for action in ["create-backup", "restore-backup", "verify-backup"] {
        let run = juju.action(action, json!({"backup-id": "backup-20240206153012123456"}));
        run.assert_ok();
        let failure = run.failure().unwrap();
        assert!(
            failure.starts_with("Missing backup_passphrase config option."),
            "{failure}"
        );
        assert!(failure.contains("backup_passphrase_secret"), "{failure}");
    }
}

#[test]
fn an_ungranted_passphrase_secret_fails_the_action() {
    let juju = related();
    juju.config("backup_passphrase", json!("the-plain-option-loses"));
    juju.add_secret("secret:d0passphrase0000000b", json!({"passphrase": PASSPHRASE}), false);
    juju.config("backup_passphrase_secret", json!("secret:d0passphrase0000000b"));
    let run = juju.action("create-backup", json!({}));
    run.assert_ok()
        .assert_no_secret(&[PASSPHRASE, "the-plain-option-loses"]);
    let failure = run.failure().unwrap();
    assert!(
        failure.contains("juju grant-secret secret:d0passphrase0000000b synapse"),
        "{failure}"
    );
}

#[test]
fn a_passphrase_secret_without_the_key_fails_the_action() {
    let juju = related();
    juju.add_secret("secret:d0passphrase0000000c", json!({"password": PASSPHRASE}), true);
    juju.config("backup_passphrase_secret", json!("secret:d0passphrase0000000c"));
    let run = juju.action("verify-backup", json!({"backup-id": "backup-20240206153012123456"}));
    run.assert_ok().assert_no_secret(&[PASSPHRASE]);
    assert!(
        run.failure().unwrap().contains("no non-empty key `passphrase`"),
        "{:?}",
        run.failure()
    );
}

#[test]
fn a_bad_synapse_config_names_the_option() {
    let juju = related();
    juju.config("backup_passphrase", json!(PASSPHRASE));
    juju.config("synapse_config", json!("/nonexistent/homeserver.yaml"));
    let run = juju.action("create-backup", json!({}));
    run.assert_ok().assert_no_secret(&[PASSPHRASE]);
    let failure = run.failure().unwrap();
    assert!(
        failure.contains("/nonexistent/homeserver.yaml") && failure.contains("juju config synapse synapse_config="),
        "{failure}"
    );
}

#[test]
fn a_malformed_backup_id_is_refused() {
    let juju = related();
    juju.config("backup_passphrase", json!(PASSPHRASE));
    for action in ["restore-backup", "delete-backup", "verify-backup"] {
        let run = juju.action(action, json!({"backup-id": "yesterday"}));
        run.assert_ok();
        let failure = run.failure().unwrap();
        assert!(
            failure.contains("\"yesterday\" is not a backup-id"),
            "{action}: {failure}"
        );
    }
}

#[test]
fn an_unknown_action_fails_cleanly() {
    let juju = Juju::new();
    let run = juju.action("make-coffee", json!({}));
    run.assert_ok();
    assert!(run.failure().unwrap().contains("unknown action"), "{:?}", run.failure());
}

#[test]
fn a_tool_failure_in_an_action_fails_the_action_with_a_message() {
    let juju = Juju::new();
    juju.break_tool("config-get", "connection to the controller lost");
    let run = juju.action("list-backups", json!({}));
    assert_eq!(run.exit, 0);
    assert!(
        run.failure().unwrap().contains("connection to the controller lost"),
        "{:?}",
        run.failure()
    );
}

#[test]
fn legacy_hook_symlinks_are_understood() {
    // Juju 2 style: hooks/install -> the binary, no JUJU_DISPATCH_PATH
    let juju = Juju::new();
    let hooks = juju.charm_dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::os::unix::fs::symlink(common::bin(), hooks.join("config-changed")).unwrap();
    let out = std::process::Command::new(hooks.join("config-changed"))
        .current_dir(&juju.charm_dir)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", juju.tools_dir.display()))
        .env("JUJU_DOUBLE_STATE", &juju.state_path)
        .env("JUJU_CONTEXT_ID", "synapse/0-legacy")
        .env("JUJU_UNIT_NAME", "synapse/0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(juju.state()["status"]["status"], "active");
}

// --- the double itself ---------------------------------------------------------------------------

#[test]
fn the_double_follows_jujus_argument_grammar() {
    let juju = related();
    juju.edit(|s| s["action"] = json!({"name": "x", "params": {"backup-id": "b"}, "results": {}, "logs": []}));
    let in_action = [("JUJU_ACTION_NAME", "x")];
    // flags after positionals, `=` or separate values
    let (code, out, _) = juju.tool("action-get", &["backup-id", "--format", "json"], "", &in_action);
    assert_eq!((code, out.trim()), (0, "\"b\""));
    // a bad result key rejects the whole call with exit 2
    let (code, _, err) = juju.tool("action-set", &["ok=1", "Bad_Key=2"], "", &in_action);
    assert_eq!(code, 2);
    assert!(err.starts_with("ERROR "), "{err}");
    let (code, _, _) = juju.tool("action-set", &["a.stdout=1"], "", &in_action);
    assert_eq!(code, 2);
    assert!(juju.state()["action"]["results"].as_object().unwrap().is_empty());
    // dotted keys nest and calls merge
    juju.tool("action-set", &["a.b=1"], "", &in_action);
    juju.tool("action-set", &["a.c=x=y"], "", &in_action);
    assert_eq!(juju.state()["action"]["results"], json!({"a": {"b": "1", "c": "x=y"}}));
    // `--` ends the flags: a message may start with a dash
    let (code, _, _) = juju.tool("status-set", &["blocked", "--", "-x is wrong"], "", &[]);
    assert_eq!(code, 0);
    assert_eq!(juju.state()["status"]["message"], "-x is wrong");
    // undefined flags and bad values exit 2
    assert_eq!(juju.tool("status-set", &["--bogus", "active"], "", &[]).0, 2);
    assert_eq!(juju.tool("status-set", &["fine"], "", &[]).0, 2);
    assert_eq!(juju.tool("secret-get", &["secret:x", "--format=smart"], "", &[]).0, 2);
    // a secret that does not exist is a failure (exit 1), not a usage error
    let (code, _, err) = juju.tool("secret-get", &["secret:cs1kf0nmp25c77aa7hzz", "--format=json"], "", &[]);
    assert_eq!(code, 1, "{err}");
    // leadership: our own app bag is the leader's only
    juju.set_leader(false);
    let (code, _, err) = juju.tool(
        "relation-get",
        &["-r", REL, "--app", "-", "synapse", "--format=json"],
        "",
        &[],
    );
    assert_eq!((code, err.trim()), (1, "ERROR permission denied"));
    let (code, _, err) = juju.tool("relation-set", &["-r", REL, "--app", "k=v"], "", &[]);
    assert_eq!((code, err.trim()), (1, "ERROR cannot write relation settings"));
    // config-get of a missing key is null, not an error
    let (code, out, _) = juju.tool("config-get", &["--format=json", "nope"], "", &[]);
    assert_eq!((code, out.trim()), (0, "null"));
}

#[test]
fn the_double_commits_relation_writes_only_on_exit_zero() {
    let juju = related();
    let (code, _, _) = juju.tool(
        "relation-set",
        &["-r", REL, "--app", "--file", "-"],
        r#"{"a": "1"}"#,
        &[],
    );
    assert_eq!(code, 0);
    // visible to the same hook's reads, not yet committed
    let (_, out, _) = juju.tool(
        "relation-get",
        &["--format=json", "-r", REL, "--app", "-", "synapse"],
        "",
        &[],
    );
    assert_eq!(out.trim(), r#"{"a": "1"}"#);
    assert!(juju.own_app_data(REL).is_null());
    juju.commit(1);
    assert!(juju.own_app_data(REL).is_null());
    juju.tool("relation-set", &["-r", REL, "--app", "b=2"], "", &[]);
    juju.commit(0);
    assert_eq!(juju.own_app_data(REL), json!({"b": "2"}));
    // an empty value deletes the key
    juju.tool("relation-set", &["-r", REL, "--app", "b="], "", &[]);
    juju.commit(0);
    assert_eq!(juju.own_app_data(REL), json!({}));
    // refused in the relation's own -broken hook
    let broken = [
        ("JUJU_DISPATCH_PATH", "hooks/backup-relation-broken"),
        ("JUJU_RELATION_ID", REL),
    ];
    assert_eq!(
        juju.tool("relation-set", &["-r", REL, "--app", "c=3"], "", &broken).0,
        1
    );
}

// --- against a real S3 server (s3s-fs on loopback: it checks every signature) ----------------------

const BUCKET: &str = "synapse-backups";

/// A unit related to s3-integrator, whose databag points at `server` (plaintext credentials).
fn related_to(server: &S3Server, bucket: &str) -> Juju {
    let juju = related();
    juju.set_remote_app_data(REL, json!(server.databag(bucket, "synapse/prod")));
    juju
}

#[test]
fn plaintext_credentials_wrong_credentials_missing_bucket_and_removal() {
    let server = S3Server::start(Kind::S3sFs);
    server.create_bucket(BUCKET);
    let juju = related_to(&server, BUCKET);
    let run = juju.relation_hook(REL, "changed", None);
    run.assert_ok().assert_no_secret(&[&server.secret_key]);
    assert_eq!(run.status(), ("active".into(), "".into()));

    let mut wrong = server.databag(BUCKET, "synapse/prod");
    wrong.insert("secret-key".into(), S3_SECRET_KEY.into());
    juju.set_remote_app_data(REL, json!(wrong));
    let run = juju.relation_hook(REL, "changed", None);
    run.assert_ok().assert_no_secret(&[&server.secret_key, S3_SECRET_KEY]);
    assert_eq!(
        run.status(),
        (
            "blocked".into(),
            "Backup: S3 bucket does not exist or cannot be accessed".into()
        )
    );

    juju.set_remote_app_data(REL, json!(server.databag("no-such-bucket", "")));
    let run = juju.relation_hook(REL, "changed", None);
    run.assert_ok();
    assert_eq!(
        run.status(),
        (
            "blocked".into(),
            "Backup: S3 bucket does not exist or cannot be accessed".into()
        )
    );

    let mut invalid = server.databag(BUCKET, "");
    invalid.remove("secret-key");
    juju.set_remote_app_data(REL, json!(invalid));
    let run = juju.relation_hook(REL, "changed", None);
    run.assert_ok();
    assert_eq!(
        run.status(),
        (
            "blocked".into(),
            "Backup: S3 configuration is invalid (secret-key: missing)".into()
        )
    );
    let mut invalid = server.databag(BUCKET, "");
    invalid.insert("endpoint".into(), "not a url".into());
    juju.set_remote_app_data(REL, json!(invalid));
    let (status, message) = juju.relation_hook(REL, "changed", None).status();
    assert_eq!(status, "blocked");
    assert!(
        message.starts_with("Backup: S3 configuration is invalid (endpoint: "),
        "{message}"
    );

    juju.edit(|s| s["relations"][REL]["remote_unreadable"] = json!(true));
    let run = juju.relation_hook(REL, "broken", None);
    run.assert_ok();
    assert_eq!(run.status(), ("active".into(), "".into()));
}

#[test]
fn credentials_through_secret_extra() {
    let server = S3Server::start(Kind::S3sFs);
    server.create_bucket(BUCKET);
    let juju = related();
    juju.relation_hook(REL, "created", None).assert_ok();
    let uri = "secret:cs1kf0nmp25c77aa7hc1";
    juju.add_secret(
        uri,
        json!({"access-key": server.access_key, "secret-key": server.secret_key}),
        true,
    );
    let mut bag = server.databag(BUCKET, "synapse");
    bag.remove("access-key");
    bag.remove("secret-key");
    bag.insert("secret-extra".into(), uri.into());
    bag.insert("lib-version".into(), "1.0".into());
    juju.set_remote_app_data(REL, json!(bag));
    let run = juju.relation_hook(REL, "changed", None);
    run.assert_ok().assert_no_secret(&[&server.secret_key]);
    assert_eq!(run.status(), ("active".into(), "".into()));
    assert_eq!(run.calls_to("secret-get").len(), 1);
    // no bucket was ever written for this track-2 provider
    assert!(juju.own_app_data(REL).get("bucket").is_none());

    // the provider rotates the credentials: the charm reads the new revision and checks again
    juju.edit(|s| s["secrets"][uri]["content"]["secret-key"] = json!(S3_SECRET_KEY));
    let run = juju.secret_changed(uri);
    run.assert_ok().assert_no_secret(&[&server.secret_key, S3_SECRET_KEY]);
    let refresh = &run.calls_to("secret-get")[0]["argv"];
    assert!(refresh.to_string().contains("--refresh"), "{refresh}");
    assert_eq!(run.status().0, "blocked");
}

/// A unit with a fixture Synapse, related to a real bucket, its passphrase in a user secret.
fn ready_unit(server: &S3Server, tree: &std::path::Path) -> (Juju, std::path::PathBuf) {
    server.create_bucket(BUCKET);
    let config = common::fixture(&tree.join("data"), "4M", "small");
    let juju = related_to(server, BUCKET);
    juju.add_secret("secret:d0passphrase0000000d", json!({"passphrase": PASSPHRASE}), true);
    juju.config("backup_passphrase_secret", json!("secret:d0passphrase0000000d"));
    juju.config("synapse_config", json!(config.to_str().unwrap()));
    juju.config("synapse_service", json!("none"));
    let run = juju.relation_hook(REL, "changed", None);
    run.assert_ok();
    assert_eq!(run.status(), ("active".into(), "".into()));
    (juju, tree.join("data"))
}

#[test]
fn create_backup_makes_differentials_on_the_newest_full() {
    let server = S3Server::start(Kind::S3sFs);
    let tmp = tempfile::tempdir().unwrap();
    let (juju, data) = ready_unit(&server, tmp.path());
    // type=auto by default: nothing to build on yet, so a full, and the log says why
    let first = juju.action("create-backup", json!({}));
    first.assert_ok();
    assert_eq!(first.result("type"), Some("full"), "{:?}", first.failure());
    assert!(first.action_logs().iter().any(|l| l.contains("no full backup")));
    let full = first.result("backup-id").unwrap().to_string();

    std::fs::write(data.join("media_store/local_content/new-upload"), b"a new upload").unwrap();
    let second = juju.action("create-backup", json!({}));
    assert_eq!(second.result("type"), Some("differential"), "{:?}", second.failure());
    assert_eq!(second.result("base"), Some(full.as_str()));
    assert_eq!(second.result("files"), Some("3")); // key, database, the new upload
    let diff = second.result("backup-id").unwrap().to_string();

    let listed = juju.action("list-backups", json!({}));
    assert_eq!(listed.result(&format!("backups.{full}.type")), Some("full"));
    assert_eq!(listed.result(&format!("backups.{diff}.type")), Some("differential"));
    assert_eq!(listed.result(&format!("backups.{diff}.base")), Some(full.as_str()));

    let refused = juju.action("delete-backup", json!({"backup-id": full}));
    assert!(
        refused.failure().unwrap_or_default().contains(&diff),
        "{:?}",
        refused.failure()
    );

    let third = juju.action("create-backup", json!({"type": "full"}));
    assert_eq!(third.result("type"), Some("full"));
    juju.config("backup_full_every_days", json!(-1));
    let bad = juju.action("create-backup", json!({}));
    assert!(
        bad.failure().unwrap_or_default().contains("backup_full_every_days"),
        "{:?}",
        bad.failure()
    );
}

#[test]
fn every_action_end_to_end() {
    let server = S3Server::start(Kind::S3sFs);
    let tmp = tempfile::tempdir().unwrap();
    let (juju, data) = ready_unit(&server, tmp.path());
    let secrets = [PASSPHRASE, server.secret_key.as_str()];
    let before = common::backed_up_state(&data);

    // create
    let created = juju.action("create-backup", json!({}));
    created.assert_ok().assert_no_secret(&secrets);
    assert_eq!(created.failure(), None, "{:?}", created.failure());
    assert_eq!(created.result("result"), Some("correct"));
    assert_eq!(created.result("server-name"), Some("example.com"));
    let id = created.result("backup-id").unwrap().to_string();
    assert!(id.starts_with("backup-"), "{id}");
    let size: u64 = created.result("size").unwrap().parse().unwrap();
    let files: u64 = created.result("files").unwrap().parse().unwrap();
    assert!(size > 0 && files > 10, "{size} {files}");
    let logs = created.action_logs();
    assert!(logs.iter().any(|l| l.starts_with("stored ")), "{logs:?}");
    // maintenance while it ran, the previous status after
    let statuses = created.statuses();
    assert_eq!(
        statuses.first().map(|s| s.0.as_str()),
        Some("maintenance"),
        "{statuses:?}"
    );
    assert_eq!(created.status(), ("active".into(), "".into()));
    // the backup, and the index a later differential builds on
    assert_eq!(
        server.keys(BUCKET),
        vec![format!("synapse/prod/{id}"), format!("synapse/prod/{id}.index")]
    );
    assert_eq!(created.result("type"), Some("full"));

    // list
    let listed = juju.action("list-backups", json!({}));
    listed.assert_ok().assert_no_secret(&secrets);
    assert_eq!(
        listed.result(&format!("backups.{id}.size")),
        Some(size.to_string().as_str())
    );
    assert_eq!(listed.result(&format!("backups.{id}.server-name")), Some("example.com"));
    assert!(listed
        .result(&format!("backups.{id}.last-modified"))
        .unwrap()
        .ends_with('Z'));
    let table = listed.result("formatted").unwrap();
    assert!(table.starts_with("backup-id") && table.contains(&id), "{table}");

    // verify
    let verified = juju.action("verify-backup", json!({"backup-id": id}));
    verified.assert_ok().assert_no_secret(&secrets);
    assert_eq!(verified.failure(), None, "{:?}", verified.failure());
    assert_eq!(verified.result("result"), Some("correct"));
    assert_eq!(verified.result("files"), Some(files.to_string().as_str()));
    assert!(verified.result("bytes").unwrap().parse::<u64>().unwrap() > 0);

    // restore onto a wiped tree: byte-identical (the database compared by its dump), Synapse
    // stopped through Pebble only once everything is staged, and started again
    let pebble = common::pebble::PebbleStandIn::start(&tmp.path().join("pebble.socket"), &["synapse"]);
    juju.config("synapse_service", json!(pebble.spec("synapse")));
    juju.config("synapse_health_timeout", json!(0)); // the stand-in serves no HTTP
    common::wipe(&data);
    let restored = juju.action("restore-backup", json!({"backup-id": id}));
    assert_eq!(pebble.events(), ["stop synapse", "start synapse"]);
    restored.assert_ok().assert_no_secret(&secrets);
    assert_eq!(restored.failure(), None, "{:?}", restored.failure());
    assert_eq!(restored.result("result"), Some("correct"));
    assert_eq!(restored.result("backup-id"), Some(id.as_str()));
    assert_eq!(common::backed_up_state(&data), before);

    // unknown backup-ids
    let unknown = "backup-20000101000000000000";
    for action in ["restore-backup", "verify-backup", "delete-backup"] {
        let run = juju.action(action, json!({"backup-id": unknown}));
        run.assert_ok();
        assert_eq!(
            run.failure(),
            Some(format!("backup-id {unknown} does not exist").as_str()),
            "{action}"
        );
    }

    // delete
    let deleted = juju.action("delete-backup", json!({"backup-id": id}));
    deleted.assert_ok().assert_no_secret(&secrets);
    assert_eq!(deleted.result("result"), Some("correct"));
    let again = juju.action("delete-backup", json!({"backup-id": id}));
    assert_eq!(
        again.result("result"),
        Some(format!("backup-id {id} does not exist").as_str())
    );
    assert!(server.keys(BUCKET).is_empty());
    let listed = juju.action("list-backups", json!({}));
    assert!(listed.results().get("backups").is_none(), "{}", listed.results());
}

#[test]
fn restore_checks_before_it_touches_anything() {
    let server = S3Server::start(Kind::S3sFs);
    let tmp = tempfile::tempdir().unwrap();
    let (juju, data) = ready_unit(&server, tmp.path());
    let id = juju
        .action("create-backup", json!({}))
        .result("backup-id")
        .unwrap()
        .to_string();
    let untouched = common::digest(&data);

    // wrong passphrase: refused, nothing changed
    juju.config("backup_passphrase_secret", json!(null));
    juju.config("backup_passphrase", json!("not the passphrase"));
    for action in ["restore-backup", "verify-backup"] {
        let run = juju.action(action, json!({"backup-id": id}));
        run.assert_ok().assert_no_secret(&["not the passphrase", PASSPHRASE]);
        assert!(
            run.failure().unwrap().contains("wrong passphrase"),
            "{action}: {:?}",
            run.failure()
        );
        // the status is put back after the failure too
        assert_eq!(run.status(), ("active".into(), "".into()));
    }
    assert_eq!(common::digest(&data), untouched);

    // another server's backup: refused, nothing changed
    juju.config("backup_passphrase", json!(PASSPHRASE));
    let other = tmp.path().join("other");
    let options = xtask::fixture::Options {
        size: 1 << 20,
        profile: xtask::fixture::Profile::Small,
        server_name: "other.example".into(),
        ..Default::default()
    };
    xtask::fixture::make(&other, &options).unwrap();
    juju.config("synapse_config", json!(other.join("homeserver.yaml").to_str().unwrap()));
    let other_before = common::digest(&other);
    let run = juju.action("restore-backup", json!({"backup-id": id}));
    run.assert_ok();
    assert!(run.failure().unwrap().contains("example.com"), "{:?}", run.failure());
    assert_eq!(common::digest(&other), other_before);

    // a damaged object fails verification and restore
    juju.config("synapse_config", json!(data.join("homeserver.yaml").to_str().unwrap()));
    let key = format!("synapse/prod/{id}");
    server.boto(
        "b, k = sys.argv[2], sys.argv[3]\nbody = bytearray(s3.get_object(Bucket=b, Key=k)['Body'].read())\n\
         body[len(body) // 2] ^= 0xff\ns3.put_object(Bucket=b, Key=k, Body=bytes(body))\n",
        &[BUCKET, &key],
        None,
    );
    for action in ["verify-backup", "restore-backup"] {
        let run = juju.action(action, json!({"backup-id": id}));
        run.assert_ok();
        let failure = run
            .failure()
            .unwrap_or_else(|| panic!("{action} passed a damaged backup"));
        assert!(
            failure.contains("damaged") || failure.contains("manifest"),
            "{action}: {failure}"
        );
    }
    assert_eq!(common::digest(&data), untouched);
}

#[test]
fn actions_on_a_missing_bucket_point_at_the_integration() {
    // moto, not s3s-fs: s3s-fs makes a bucket's directory on the first PUT
    let server = S3Server::start(Kind::Moto);
    let juju = related_to(&server, "no-such-bucket");
    juju.config("backup_passphrase", json!(PASSPHRASE));
    let tmp = tempfile::tempdir().unwrap();
    let config = common::fixture(&tmp.path().join("data"), "1M", "small");
    juju.config("synapse_config", json!(config.to_str().unwrap()));
    for action in ["create-backup", "list-backups"] {
        let run = juju.action(action, json!({}));
        run.assert_ok().assert_no_secret(&[PASSPHRASE, &server.secret_key]);
        let failure = run
            .failure()
            .unwrap_or_else(|| panic!("{action} did not fail: {}", run.results()));
        assert!(
            failure.starts_with(&format!(
                "Wrong S3 configuration on {action} action. Check S3 integration"
            )),
            "{failure}"
        );
    }
}

#[test]
fn retention_after_create_and_a_restore_that_cannot_start_synapse() {
    let server = S3Server::start(Kind::S3sFs);
    let tmp = tempfile::tempdir().unwrap();
    let (juju, data) = ready_unit(&server, tmp.path());
    juju.config("backup_keep_last", json!(1));
    // fulls: a differential would keep its full (see differential.rs)
    let first = juju.action("create-backup", json!({"type": "full"}));
    first.assert_ok();
    assert_eq!(first.result("pruned"), Some("none"));
    let first_id = first.result("backup-id").unwrap().to_string();
    let second = juju.action("create-backup", json!({"type": "full"}));
    second.assert_ok();
    assert_eq!(second.result("pruned"), Some(first_id.as_str()));
    let second_id = second.result("backup-id").unwrap().to_string();
    // the pruned full's index went with it
    assert_eq!(
        server.keys(BUCKET),
        vec![
            format!("synapse/prod/{second_id}"),
            format!("synapse/prod/{second_id}.index")
        ]
    );
    let listed = juju.action("list-backups", json!({}));
    assert_eq!(listed.result("retention"), Some("keep the newest 1"));

    juju.config("backup_keep_last", json!(-3));
    let refused = juju.action("create-backup", json!({}));
    assert!(
        refused.failure().unwrap().contains("backup_keep_last"),
        "{:?}",
        refused.failure()
    );

    // Pebble cannot start Synapse again: the action says so and the unit is blocked
    let pebble = common::pebble::PebbleStandIn::start(&tmp.path().join("pebble.socket"), &["synapse"]);
    pebble.fail("start", "cannot start service: exited quickly with code 1");
    juju.config("synapse_service", json!(pebble.spec("synapse")));
    juju.config("synapse_health_timeout", json!(0));
    let before = common::backed_up_state(&data);
    let restored = juju.action("restore-backup", json!({"backup-id": second_id}));
    restored.assert_ok();
    let failure = restored.failure().unwrap();
    assert!(
        failure.contains("could not be started") && failure.contains("exited quickly"),
        "{failure}"
    );
    assert_eq!(restored.status().0, "blocked");
    assert!(
        restored.status().1.contains("Synapse could not be started"),
        "{:?}",
        restored.status()
    );
    assert_eq!(common::backed_up_state(&data), before);

    juju.config("synapse_service", json!("bogus"));
    let bad = juju.action("restore-backup", json!({"backup-id": second_id}));
    assert!(
        bad.failure().unwrap().contains("synapse_service"),
        "{:?}",
        bad.failure()
    );
}

/// A ready unit with one backup, its Synapse controlled through a Pebble stand-in (which serves
/// no HTTP: the health check is off).
fn backed_up_unit_behind_pebble(
    server: &S3Server,
    tree: &std::path::Path,
) -> (Juju, std::path::PathBuf, String, common::pebble::PebbleStandIn) {
    let (juju, data) = ready_unit(server, tree);
    let created = juju.action("create-backup", json!({}));
    created.assert_ok();
    let id = created.result("backup-id").unwrap().to_string();
    let pebble = common::pebble::PebbleStandIn::start(&tree.join("pebble.socket"), &["synapse"]);
    juju.config("synapse_service", json!(pebble.spec("synapse")));
    juju.config("synapse_health_timeout", json!(0));
    (juju, data, id, pebble)
}

#[test]
fn a_restore_killed_mid_swap_is_rolled_back_by_the_next_hook() {
    let (server, tmp) = (S3Server::start(Kind::S3sFs), tempfile::tempdir().unwrap());
    let (juju, data, id, pebble) = backed_up_unit_behind_pebble(&server, tmp.path());
    std::fs::write(data.join("example.com.signing.key"), "ed25519 a_new other\n").unwrap();
    let before = common::backed_up_state(&data);

    // Juju ends the action (SIGKILL) between the swap's first and second exchange
    let killed = juju.action_with_env(
        "restore-backup",
        json!({"backup-id": id}),
        &[("SYNAPSE_BACKUP_TEST_KILL_AT_RENAME", "2")],
    );
    assert_ne!(killed.exit, 0);
    assert_eq!(pebble.events(), ["stop synapse"]);

    let hook = juju.hook("update-status");
    hook.assert_ok();
    assert_eq!(pebble.events(), ["stop synapse", "start synapse"]);
    let logged: Vec<String> = hook.calls_to("juju-log").iter().map(|c| c.to_string()).collect();
    assert!(
        logged.iter().any(|l| l.contains("half swapped and rolled back")),
        "{logged:?}"
    );
    assert_eq!(common::backed_up_state(&data), before);
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".synapse-backup-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_restore_killed_after_its_swap_is_finished_by_the_next_hook() {
    let (server, tmp) = (S3Server::start(Kind::S3sFs), tempfile::tempdir().unwrap());
    let (juju, data, id, pebble) = backed_up_unit_behind_pebble(&server, tmp.path());
    let backed_up = common::backed_up_state(&data);
    std::fs::write(data.join("example.com.signing.key"), "ed25519 a_new other\n").unwrap();

    // killed once every target is swapped in, before Synapse was started again
    let killed = juju.action_with_env(
        "restore-backup",
        json!({"backup-id": id}),
        &[("SYNAPSE_BACKUP_TEST_KILL_AT_RENAME", "99")],
    );
    assert_eq!(killed.exit, 0, "99 is past the last rename: the restore completes");
    let renames = 4 + ["homeserver.db-wal", "homeserver.db-shm"]
        .iter()
        .filter(|f| data.join(f).exists())
        .count();
    std::fs::write(data.join("example.com.signing.key"), "ed25519 a_new other\n").unwrap();
    let after_swap = (renames + 1).to_string();
    let killed = juju.action_with_env(
        "restore-backup",
        json!({"backup-id": id}),
        &[("SYNAPSE_BACKUP_TEST_KILL_AT_RENAME", &after_swap)],
    );
    assert_ne!(killed.exit, 0);
    let events = pebble.events().len();

    let hook = juju.hook("update-status");
    hook.assert_ok();
    assert_eq!(pebble.events()[events..], ["start synapse"]);
    let logged: Vec<String> = hook.calls_to("juju-log").iter().map(|c| c.to_string()).collect();
    assert!(
        logged.iter().any(|l| l.contains("finished the interrupted restore")),
        "{logged:?}"
    );
    assert_eq!(common::backed_up_state(&data), backed_up);
}

/// A unit of its own application for server `name`, related to the shared bucket path.
fn unit_for(server: &S3Server, tree: &std::path::Path, name: &str, keep_last: i64) -> Juju {
    let options = xtask::fixture::Options {
        size: 256 << 10,
        profile: "small".parse().unwrap(),
        server_name: name.into(),
        events: 200,
        ..Default::default()
    };
    xtask::fixture::make(&tree.join(name), &options).unwrap();
    let juju = related_to(server, BUCKET);
    juju.config("backup_passphrase", json!(PASSPHRASE));
    juju.config(
        "synapse_config",
        json!(tree.join(name).join("homeserver.yaml").to_str().unwrap()),
    );
    juju.config("synapse_service", json!("none"));
    juju.config("backup_keep_last", json!(keep_last));
    juju
}

#[test]
fn two_servers_on_one_bucket_path_never_lose_each_others_backups() {
    let server = S3Server::start(Kind::S3sFs);
    server.create_bucket(BUCKET);
    let tmp = tempfile::tempdir().unwrap();
    let a = unit_for(&server, tmp.path(), "a.example", 2);
    let b = unit_for(&server, tmp.path(), "b.example", 2);
    let a_ids: Vec<String> = (0..3)
        .map(|_| {
            let run = a.action("create-backup", json!({"type": "full"}));
            run.assert_ok();
            run.result("backup-id").unwrap().to_string()
        })
        .collect();
    let created = b.action("create-backup", json!({"type": "full"}));
    created.assert_ok();
    assert_eq!(created.result("pruned"), Some("none"));
    let b1 = created.result("backup-id").unwrap().to_string();
    let mut want: Vec<String> = [&a_ids[1], &a_ids[2], &b1]
        .iter()
        .flat_map(|id| [format!("synapse/prod/{id}"), format!("synapse/prod/{id}.index")])
        .collect();
    want.sort();
    let mut keys = server.keys(BUCKET);
    keys.sort();
    assert_eq!(
        keys, want,
        "A's retention kept its newest two; B's first backup deleted none of them"
    );

    // B's status says whose other backups are there (active: sharing is legitimate)
    let hook = b.hook("update-status");
    hook.assert_ok();
    assert_eq!(
        hook.status(),
        (
            "active".into(),
            "Backup: the bucket path also holds backups of a.example".into()
        )
    );

    // list-backups: B's by default, everyone's with all=true
    let listed = b.action("list-backups", json!({}));
    listed.assert_ok();
    assert!(listed.result(&format!("backups.{b1}.size")).is_some());
    assert!(listed.result(&format!("backups.{}.size", a_ids[2])).is_none());
    assert_eq!(listed.result("other-servers"), Some("a.example"));
    let everything = b.action("list-backups", json!({"all": true}));
    assert_eq!(
        everything.result(&format!("backups.{}.server-name", a_ids[2])),
        Some("a.example")
    );

    // delete-backup of A's backup from B: refused, then forced
    let refused = b.action("delete-backup", json!({"backup-id": a_ids[2]}));
    refused.assert_ok();
    let failure = refused.failure().unwrap();
    assert!(
        failure.contains(r#"belongs to server "a.example""#) && failure.contains("force=true"),
        "{failure}"
    );
    assert!(server.keys(BUCKET).contains(&format!("synapse/prod/{}", a_ids[2])));
    let forced = b.action("delete-backup", json!({"backup-id": a_ids[2], "force": true}));
    forced.assert_ok();
    assert_eq!(forced.failure(), None, "{:?}", forced.failure());
    assert!(!server.keys(BUCKET).contains(&format!("synapse/prod/{}", a_ids[2])));
}

/// Long actions tell the `juju run` terminal how far they are: a percentage of the tree (create)
/// or of the object (restore), the bytes against the total, and the time left.
#[test]
fn actions_report_progress_with_a_percentage_and_time_left() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(Kind::S3sFs);
    let (juju, _) = ready_unit(&server, tmp.path());
    let often = [("SYNAPSE_BACKUP_PROGRESS_EVERY_MS", "1")];
    let created = juju.action_with_env("create-backup", json!({}), &often);
    created.assert_ok();
    let logs = created.action_logs();
    let percent = |l: &String, phase: &str| {
        l.strip_prefix(phase)
            .and_then(|rest| rest.split('%').next())
            .is_some_and(|n| n.trim().parse::<u32>().is_ok_and(|n| n <= 100))
    };
    assert!(
        logs.iter().any(|l| percent(l, "backing up: ") && l.contains(" of ")),
        "{logs:?}"
    );
    let id = created.result("backup-id").unwrap().to_string();
    let restored = juju.action_with_env("restore-backup", json!({"backup-id": id}), &often);
    restored.assert_ok();
    let logs = restored.action_logs();
    assert!(logs.iter().any(|l| percent(l, "reading backup: ")), "{logs:?}");
}
