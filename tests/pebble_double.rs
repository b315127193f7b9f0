//! The Pebble double (`tests/common/pebble.rs`) runs what its plan says, as Pebble does: layers
//! merged into a plan, services really started and stopped (as their user, with the image's
//! paths emulated), changes waited for, checks polled and acting on their services.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pebble::PebbleStandIn;
use common::synapse::{Layout, Synapse};
use serde_json::{json, Value};
use synapse_backup::synapse::service::{Pebble, ServiceControl};

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory uid 991 can list, with an index page (the temporary directory is root's, 0700).
fn served_dir(tmp: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let www = tmp.join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "ok\n").unwrap();
    www
}

fn double(tmp: &Path) -> PebbleStandIn {
    let pebble = PebbleStandIn::new(&tmp.join("pebble.socket"));
    pebble.emulate_synapse_image();
    pebble
}

fn services(pebble: &PebbleStandIn, names: &str) -> Value {
    let (status, v) = pebble.call("GET", &format!("/v1/services?names={names}"), None);
    assert_eq!(status, 200, "{v}");
    v["result"].clone()
}

fn checks(pebble: &PebbleStandIn, query: &str) -> Value {
    let (status, v) = pebble.call("GET", &format!("/v1/checks{query}"), None);
    assert_eq!(status, 200, "{v}");
    v["result"].clone()
}

fn task_logs(change: &Value) -> String {
    change["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["log"].as_array().cloned().unwrap_or_default())
        .map(|l| l.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn proc_field(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

/// A web server for the official image (`/usr/local/bin/python`, here the test venv's), as
/// Synapse's user, with an HTTP check on it; and its `extra` lines.
fn web_layer(port: u16, www: &Path, check_path: &str, extra: &str) -> String {
    let ids = if is_root() {
        "\n    user-id: 991\n    group-id: 991"
    } else {
        ""
    };
    format!(
        r#"
summary: a web server
services:
  web:
    override: replace
    command: /usr/local/bin/python -m http.server {port} --bind 127.0.0.1
    startup: enabled
    working-dir: {www}
    environment:
      PYTHONUNBUFFERED: 1{ids}{extra}
checks:
  web-up:
    override: replace
    level: ready
    period: 300ms
    threshold: 2
    http:
      url: http://127.0.0.1:{port}{check_path}
"#,
        www = www.display()
    )
}

#[test]
fn a_planned_service_runs_as_its_user_and_its_check_sees_it() {
    let tmp = tempfile::tempdir().unwrap();
    let www = served_dir(tmp.path());
    let pebble = double(tmp.path());
    let port = free_port();
    pebble.add_layer("web", &web_layer(port, &www, "/", ""), true).unwrap();

    // planned: the check is up with no success yet (as Pebble's checkstate has it), the service
    // not started (`pebble run --hold`)
    let planned = checks(&pebble, "?level=ready&names=web-up");
    assert_eq!(planned.as_array().unwrap().len(), 1, "{planned}");
    let check = &planned[0];
    assert_eq!(
        (
            &check["name"],
            &check["level"],
            &check["startup"],
            &check["status"],
            &check["successes"],
            &check["threshold"]
        ),
        (
            &json!("web-up"),
            &json!("ready"),
            &json!("enabled"),
            &json!("up"),
            &json!(0),
            &json!(2)
        ),
        "{check}"
    );
    assert_eq!(checks(&pebble, "?level=alive"), json!([]));
    assert_eq!(services(&pebble, "web")[0]["current"], "inactive");
    assert!(!listening(port));

    let change = pebble.act_and_wait("replan", &[]);
    assert_eq!(change["status"], "Done", "{change}");
    assert_eq!(change["kind"], "replan");
    assert_eq!(change["summary"], r#"Replan service "web""#);
    let listed = services(&pebble, "web");
    assert_eq!(listed[0]["current"], "active", "{listed}");
    assert_eq!(listed[0]["startup"], "enabled");
    assert!(listed[0]["current-since"].as_str().unwrap().ends_with('Z'), "{listed}");
    eventually("the check succeeds", Duration::from_secs(20), || {
        checks(&pebble, "")[0]["successes"].as_u64().unwrap() >= 1
    });
    assert_eq!(checks(&pebble, "")[0]["status"], "up");
    assert!(listening(port));

    // the process: the venv's python for the image's, as 991:991 with the user's HOME and USER
    let pid = pebble.pid("web").unwrap();
    let cmdline = proc_field(pid, "cmdline").replace('\0', " ");
    let venv = common::synapse::venv();
    assert!(
        cmdline.starts_with(&format!("{}/bin/python -m http.server {port}", venv.display())),
        "{cmdline}"
    );
    let environ = proc_field(pid, "environ");
    assert!(environ.split('\0').any(|e| e == "PYTHONUNBUFFERED=1"), "{environ}");
    if is_root() {
        assert_eq!(common::synapse::process_ids(pid), (991, 991));
        assert!(environ.split('\0').any(|e| e == "USER=synapse"), "{environ}");
    } else {
        eprintln!("not root: the user-id/group-id part is skipped");
    }
    // the plan is what the layer said; only the run is emulated
    let (_, plan) = pebble.call("GET", "/v1/plan?format=yaml", None);
    assert!(
        plan["result"]
            .as_str()
            .unwrap()
            .contains("command: /usr/local/bin/python -m http.server"),
        "{plan}"
    );

    let began = Instant::now();
    let stopped = pebble.act_and_wait("stop", &["web"]);
    assert_eq!(stopped["status"], "Done", "{stopped}");
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "SIGTERM was enough: {:?}",
        began.elapsed()
    );
    assert_eq!(services(&pebble, "web")[0]["current"], "inactive");
    assert_eq!(pebble.pid("web"), None);
    assert!(!listening(port), "the port is closed once the stop is done");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the process is reaped");
    assert_eq!(pebble.protocol_errors(), 0);
}

/// A layer written for the official image (its python, `/data`, uid 991) runs a real Synapse
/// here; its ready check counts a success only once Synapse answers `/health`.
#[test]
fn a_layer_for_the_official_image_runs_a_real_synapse() {
    let tmp = tempfile::tempdir().unwrap();
    let synapse = Synapse::lay_out(tmp.path(), "double.test", Layout::Image);
    assert_eq!(synapse.config_path(), synapse.data_dir().join("homeserver.yaml"));
    let pebble = double(tmp.path());
    pebble.map_image_path("/data", synapse.data_dir());
    let (uid, gid) = synapse.ids();
    let ids = if is_root() {
        format!("\n    user-id: {uid}\n    group-id: {gid}")
    } else {
        String::new()
    };
    let layer = format!(
        r#"
services:
  synapse:
    override: replace
    command: /usr/local/bin/python -m synapse.app.homeserver -c /data/homeserver.yaml
    startup: enabled
    environment:
      SYNAPSE_CONFIG_PATH: /data/homeserver.yaml{ids}
    on-check-failure:
      synapse-ready: restart
checks:
  synapse-ready:
    override: replace
    level: ready
    period: 1s
    threshold: 90
    http:
      url: http://127.0.0.1:{port}/health
"#,
        port = synapse.port()
    );
    pebble.add_layer("synapse", &layer, true).unwrap();
    let started = pebble.act_and_wait("replan", &[]);
    assert_eq!(started["status"], "Done", "{started}\n{}", pebble.output("synapse"));
    eventually(
        "Synapse answers its ready check",
        common::synapse::START_TIMEOUT,
        || {
            let check = pebble.check("synapse-ready").unwrap();
            assert!(check.failures < 90, "{}", pebble.output("synapse"));
            check.successes >= 1
        },
    );
    assert!(synapse.is_up());
    let pid = pebble.pid("synapse").unwrap();
    if is_root() {
        assert_eq!(common::synapse::process_ids(pid), (991, 991));
    }
    let stopped = pebble.act_and_wait("stop", &["synapse"]);
    assert_eq!(stopped["status"], "Done", "{stopped}");
    assert!(!synapse.is_up());
    assert_eq!(pebble.starts("synapse"), 1);
}

#[test]
fn a_command_that_exits_at_once_fails_its_start_with_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    let pebble = double(tmp.path());
    let layer = r#"
services:
  broken:
    override: replace
    command: /bin/sh -c 'echo reading /data/homeserver.yaml; echo "Config file not found" >&2; exit 3'
  ignored:
    override: replace
    command: /bin/sh -c 'exit 4'
    on-failure: ignore
"#;
    pebble.add_layer("broken", layer, false).unwrap();
    let id = pebble.act("start", &["broken"]).unwrap();
    let (status, answer) = pebble.wait(&id, "30s");
    assert_eq!(status, 200, "{answer}");
    let change = &answer["result"];
    assert_eq!(
        (&change["status"], &change["ready"]),
        (&json!("Error"), &json!(true)),
        "{change}"
    );
    assert_eq!(
        change["err"],
        "cannot perform the following tasks:\n- Start service \"broken\" (service start attempt: exited quickly with code 3, will restart)",
        "{change}"
    );
    let logs = task_logs(change);
    assert!(
        logs.contains("INFO Most recent service output:\n    reading /data/homeserver.yaml\n    Config file not found"),
        "{logs}"
    );
    assert!(
        logs.contains(" ERROR service start attempt: exited quickly with code 3"),
        "{logs}"
    );

    // on-failure: restart (the default): Pebble keeps trying, backing off (0.5 s, 1 s, 2 s…)
    eventually("restarts with backoff", Duration::from_secs(15), || {
        pebble.starts("broken") >= 3
    });
    assert!(
        ["backoff", "active"].contains(&pebble.current("broken").as_str()),
        "{}",
        pebble.current("broken")
    );
    let stopped = pebble.act_and_wait("stop", &["broken"]);
    assert_eq!(stopped["status"], "Done", "{stopped}");
    let starts = pebble.starts("broken");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(pebble.starts("broken"), starts, "a stopped service stays stopped");
    assert_eq!(pebble.current("broken"), "inactive");
    assert!(pebble.output("broken").contains("Config file not found"));

    // on-failure: ignore: the start fails, and the service stays in error
    let ignored = pebble.act_and_wait("start", &["ignored"]);
    assert!(
        ignored["err"]
            .as_str()
            .unwrap()
            .contains("exited quickly with code 4, will ignore"),
        "{ignored}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pebble.starts("ignored"), 1);
    assert_eq!(services(&pebble, "ignored")[0]["current"], "error");

    // a program that is not there
    pebble
        .add_layer(
            "missing",
            "services: {missing: {override: replace, command: /no/such/program --flag}}",
            false,
        )
        .unwrap();
    let missing = pebble.act_and_wait("start", &["missing"]);
    assert!(
        missing["err"]
            .as_str()
            .unwrap()
            .contains("(cannot start service: fork/exec /no/such/program: no such file or directory)"),
        "{missing}"
    );
}

#[test]
fn a_failing_check_restarts_its_service() {
    let tmp = tempfile::tempdir().unwrap();
    let www = served_dir(tmp.path());
    let pebble = double(tmp.path());
    let port = free_port();
    let restart = "\n    on-check-failure:\n      web-up: restart\n    backoff-delay: 200ms";
    pebble
        .add_layer("web", &web_layer(port, &www, "/", restart), true)
        .unwrap();
    assert_eq!(pebble.act_and_wait("replan", &[])["status"], "Done");
    let first = pebble.pid("web").unwrap();
    eventually("the check succeeds", Duration::from_secs(20), || {
        pebble.check("web-up").unwrap().successes >= 1
    });
    // (a check failing while its service is still starting does nothing to it, as in Pebble)

    // the check now asks for a page that is not there: changed, it starts afresh
    let missing = format!("checks: {{web-up: {{override: merge, http: {{url: 'http://127.0.0.1:{port}/missing'}}}}}}");
    pebble.add_layer("web", &missing, true).unwrap();
    let fresh = pebble.check("web-up").unwrap();
    assert_eq!((fresh.status.as_str(), fresh.successes, fresh.failures), ("up", 0, 0));

    // two failures (404) in a row, 300 ms apart: down, and the service restarted
    eventually("the service is restarted", Duration::from_secs(20), || {
        pebble.starts("web") >= 2 && pebble.current("web") == "active"
    });
    let second = pebble.pid("web").unwrap();
    assert_ne!(first, second);
    assert!(
        !Path::new(&format!("/proc/{first}")).exists(),
        "the first process is gone"
    );
    let check = &checks(&pebble, "?names=web-up")[0];
    assert_eq!(check["status"], "down", "{check}");
    assert!(check["failures"].as_u64().unwrap() >= 2, "{check}");

    // the perform-check change failed with the reason; a recover-check change took over
    let (_, recover) = pebble.call(
        "GET",
        &format!("/v1/changes/{}", check["change-id"].as_str().unwrap()),
        None,
    );
    assert_eq!(recover["result"]["kind"], "recover-check", "{recover}");
    assert_eq!(recover["result"]["summary"], r#"Recover HTTP check "web-up""#);
    let (_, perform) = pebble.call(
        "GET",
        &format!("/v1/changes/{}", check["prev-change-id"].as_str().unwrap()),
        None,
    );
    let perform = &perform["result"];
    assert_eq!(
        (&perform["kind"], &perform["status"]),
        (&json!("perform-check"), &json!("Error")),
        "{perform}"
    );
    assert!(
        perform["err"].as_str().unwrap().contains("non-2xx status code 404"),
        "{perform}"
    );

    // one restart per time the threshold is reached: still down, no more restarts
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pebble.starts("web"), 2);
    assert_eq!(pebble.check("web-up").unwrap().status, "down");
}

#[test]
fn layers_combine_into_one_plan_with_merge_and_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let pebble = double(tmp.path());
    let (status, plan) = pebble.call("GET", "/v1/plan?format=yaml", None);
    assert_eq!((status, plan["result"].as_str().unwrap()), (200, "{}\n"));
    let base = r#"
services:
  svc:
    override: replace
    summary: the service
    command: /bin/sleep 1000
    startup: enabled
    environment: {A: "1", B: 2}
    after: [db]
checks:
  svc-alive:
    override: replace
    level: alive
    startup: disabled
    tcp: {port: 1}
"#;
    let overlay = r#"
services:
  svc:
    override: merge
    command: /bin/sleep 2000
    environment: {B: "3", C: "4"}
    after: [cache]
    kill-delay: 90s
  other:
    override: replace
    command: /bin/true
checks:
  svc-alive:
    override: merge
    period: 30s
"#;
    pebble.add_layer("base", base, false).unwrap();
    pebble.add_layer("overlay", overlay, false).unwrap();
    let plan = |pebble: &PebbleStandIn| -> serde_yaml_ng::Value {
        let (_, v) = pebble.call("GET", "/v1/plan?format=yaml", None);
        serde_yaml_ng::from_str(v["result"].as_str().unwrap()).unwrap()
    };
    let merged = plan(&pebble);
    let svc = &merged["services"]["svc"];
    assert_eq!(svc["command"].as_str(), Some("/bin/sleep 2000"), "{merged:?}");
    assert_eq!(svc["summary"].as_str(), Some("the service"));
    assert_eq!(svc["startup"].as_str(), Some("enabled"));
    assert_eq!(
        svc["override"].as_str(),
        Some("replace"),
        "merging keeps the first override"
    );
    assert_eq!(svc["kill-delay"].as_str(), Some("1m30s"), "Go's duration format");
    let env = &svc["environment"];
    assert_eq!(
        (env["A"].as_str(), env["B"].as_str(), env["C"].as_str()),
        (Some("1"), Some("3"), Some("4"))
    );
    let after: Vec<&str> = svc["after"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(after, ["db", "cache"]);
    assert_eq!(merged["services"]["other"]["command"].as_str(), Some("/bin/true"));
    let check = &merged["checks"]["svc-alive"];
    assert_eq!(
        (
            check["level"].as_str(),
            check["period"].as_str(),
            check["tcp"]["port"].as_u64(),
            check["threshold"].as_u64()
        ),
        (Some("alive"), Some("30s"), Some(1), Some(3)),
        "{merged:?}"
    );
    // startup: disabled: planned but not run
    assert_eq!(checks(&pebble, "")[0]["status"], "inactive");

    // combined into "base", which the overlay still merges over
    pebble
        .add_layer(
            "base",
            "services: {svc: {override: replace, command: /bin/sleep 5, environment: {D: '5'}}}",
            true,
        )
        .unwrap();
    let merged = plan(&pebble);
    let svc = &merged["services"]["svc"];
    assert_eq!(svc["command"].as_str(), Some("/bin/sleep 2000"));
    assert!(svc["summary"].is_null() && svc["startup"].is_null(), "{merged:?}");
    let env = &svc["environment"];
    assert_eq!(
        (
            env["A"].as_str(),
            env["B"].as_str(),
            env["C"].as_str(),
            env["D"].as_str()
        ),
        (None, Some("3"), Some("4"), Some("5"))
    );

    // what Pebble refuses, leaving the plan as it was
    let before = pebble.plan();
    for (label, layer, combine, message) in [
        ("overlay", "services: {}", false, r#"layer "overlay" already exists"#),
        (
            "bad",
            "services: {x: {command: /bin/true}}",
            false,
            r#"layer "bad" must define "override" for service "x""#,
        ),
        (
            "bad",
            "services: {nocmd: {override: replace, startup: enabled}}",
            false,
            r#"plan must define "command" for service "nocmd""#,
        ),
        (
            "bad",
            "services: {x: {override: replace, comand: /bin/true}}",
            false,
            "cannot parse layer YAML",
        ),
        (
            "bad",
            "checks: {c: {override: replace, level: alive}}",
            false,
            r#"plan must specify one of "http", "tcp", or "exec" for check "c""#,
        ),
        (
            "bad",
            "services: {x: {override: replace, command: \"/bin/true 'open\"}}",
            false,
            "EOF found when expecting closing quote",
        ),
        (
            "pebble-x",
            "services: {}",
            false,
            r#"cannot use reserved label prefix "pebble-""#,
        ),
        (
            "bad",
            "services: {x: {override: replace, command: /bin/true, backoff-delay: soon}}",
            false,
            r#"invalid duration "soon""#,
        ),
    ] {
        let e = pebble.add_layer(label, layer, combine).unwrap_err();
        assert!(e.contains(message), "{label} {layer}: {e}");
    }
    assert_eq!(pebble.plan(), before);
    let (status, v) = pebble.call("GET", "/v1/plan", None);
    assert_eq!(
        (status, v["result"]["message"].as_str()),
        (400, Some(r#"invalid format """#))
    );
}

#[test]
fn replan_restarts_what_changed_and_only_that() {
    let tmp = tempfile::tempdir().unwrap();
    let pebble = double(tmp.path());
    let layer = r#"
services:
  a: {override: replace, command: /bin/sleep 1000, startup: enabled}
  b: {override: replace, command: /bin/sleep 1000, startup: enabled}
  c: {override: replace, command: /bin/sleep 1000}
"#;
    pebble.add_layer("base", layer, false).unwrap();
    let first = pebble.act_and_wait("replan", &[]);
    assert_eq!(first["status"], "Done", "{first}");
    assert_eq!(first["summary"], r#"Replan service "a" and 1 more"#);
    let (a, b) = (pebble.pid("a").unwrap(), pebble.pid("b").unwrap());
    assert_eq!(pebble.current("c"), "inactive");

    pebble
        .add_layer("tune", "services: {a: {override: merge, environment: {X: '1'}}}", false)
        .unwrap();
    let second = pebble.act_and_wait("replan", &[]);
    assert_eq!(second["status"], "Done", "{second}");
    let kinds: Vec<String> = second["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["summary"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [r#"Stop service "a""#, r#"Start service "a""#, r#"Start service "b""#]
    );
    assert!(
        task_logs(&second).contains(r#"Service "b" already started."#),
        "{second}"
    );
    assert_ne!(pebble.pid("a").unwrap(), a);
    assert_eq!(pebble.pid("b").unwrap(), b);
    assert_eq!((pebble.starts("a"), pebble.starts("b")), (2, 1));
    assert!(proc_field(pebble.pid("a").unwrap(), "environ")
        .split('\0')
        .any(|e| e == "X=1"));

    // restart: a new process whatever changed
    let restarted = pebble.act_and_wait("restart", &["b"]);
    assert_eq!(restarted["status"], "Done", "{restarted}");
    assert_ne!(pebble.pid("b").unwrap(), b);
    assert_eq!(pebble.events(), ["replan", "replan", "restart b"], "what was asked");
}

#[test]
fn a_process_that_ignores_sigterm_is_killed_after_the_kill_delay() {
    let tmp = tempfile::tempdir().unwrap();
    let pebble = double(tmp.path());
    let layer = r#"
services:
  stubborn:
    override: replace
    command: /bin/sh -c 'trap "" TERM; while true; do sleep 0.1; done'
    kill-delay: 700ms
"#;
    pebble.add_layer("stubborn", layer, false).unwrap();
    assert_eq!(pebble.act_and_wait("start", &["stubborn"])["status"], "Done");
    let pid = pebble.pid("stubborn").unwrap();
    let began = Instant::now();
    let stopped = pebble.act_and_wait("stop", &["stubborn"]);
    let took = began.elapsed();
    assert_eq!(stopped["status"], "Done", "{stopped}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(pebble.current("stubborn"), "inactive");
}

#[test]
fn waits_run_out_with_504_and_bad_requests_get_pebbles_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let pebble = double(tmp.path());
    pebble
        .add_layer(
            "s",
            "services: {s: {override: replace, command: /bin/sleep 1000}}",
            false,
        )
        .unwrap();
    let id = pebble.act("start", &["s"]).unwrap();
    // a start is done only after the okay delay (1 s)
    let (status, v) = pebble.wait(&id, "100ms");
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["type"], "error");
    assert_eq!(v["result"]["message"], "timed out waiting for change after 100ms");
    let (status, v) = pebble.wait(&id, "1m30s");
    assert_eq!((status, &v["result"]["status"]), (200, &json!("Done")), "{v}");
    let (status, v) = pebble.wait(&id, "soon");
    assert_eq!(status, 400, "{v}");
    assert!(
        v["result"]["message"].as_str().unwrap().starts_with("invalid timeout"),
        "{v}"
    );
    let (status, v) = pebble.wait("999", "1s");
    assert_eq!(
        (status, &v["result"]["message"]),
        (404, &json!(r#"cannot find change with id "999""#))
    );
    assert_eq!(pebble.protocol_errors(), 1, "the unparsable timeout");

    // the injected slowness answers at once
    pebble.slow_waits(1);
    let (status, v) = pebble.wait(&id, "10s");
    assert_eq!(
        (status, &v["result"]["message"]),
        (504, &json!("timed out waiting for change after 10s"))
    );

    for (body, message) in [
        (
            json!({"action": "start", "services": []}),
            "must specify services for start action",
        ),
        (
            json!({"action": "replan", "services": ["s"]}),
            "replan accepts no service names",
        ),
        (
            json!({"action": "dance", "services": ["s"]}),
            r#"invalid action "dance""#,
        ),
        (
            json!({"action": "stop", "services": ["t"]}),
            r#"cannot stop services: service "t" does not exist"#,
        ),
    ] {
        let (status, v) = pebble.call("POST", "/v1/services", Some(&body));
        assert_eq!(
            (status, v["result"]["message"].as_str()),
            (400, Some(message)),
            "{body}"
        );
    }
    let (status, v) = pebble.call("GET", "/v1/nothing", None);
    assert_eq!((status, &v["status"]), (404, &json!("Not Found")));

    let (status, v) = pebble.call("GET", "/v1/system-info", None);
    assert_eq!(status, 200);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(v["result"]["boot-id"].as_str(), Some(boot.trim()));
    assert!(v["result"]["version"].as_str().unwrap().starts_with('v'));
}

#[test]
fn our_pebble_client_stops_and_starts_a_real_service() {
    let tmp = tempfile::tempdir().unwrap();
    let www = served_dir(tmp.path());
    let pebble = double(tmp.path());
    let port = free_port();
    pebble.add_layer("web", &web_layer(port, &www, "/", ""), true).unwrap();
    let client = Pebble::new(&pebble.socket, "web");
    client.start().unwrap();
    assert_eq!(pebble.current("web"), "active");
    eventually("the server listens", Duration::from_secs(10), || listening(port));
    client.stop().unwrap();
    assert_eq!(pebble.current("web"), "inactive");
    assert!(!listening(port));
    assert_eq!(pebble.events(), ["start web", "stop web"]);

    pebble
        .add_layer(
            "web",
            "services: {web: {override: merge, command: /bin/sh -c 'echo no; exit 1'}}",
            true,
        )
        .unwrap();
    let e = client.start().unwrap_err().to_string();
    assert!(e.contains("exited quickly with code 1"), "{e}");
    assert_eq!(pebble.protocol_errors(), 0);
}

#[test]
fn dropping_the_double_kills_its_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("pebble.socket");
    let pebble = double(tmp.path());
    pebble
        .add_layer(
            "s",
            "services: {s: {override: replace, command: /bin/sleep 1000}}",
            false,
        )
        .unwrap();
    assert_eq!(pebble.act_and_wait("start", &["s"])["status"], "Done");
    let pid = pebble.pid("s").unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(pebble);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "killed and reaped");
    assert!(!socket.exists(), "the socket is gone");
}

#[test]
fn the_first_stand_ins_services_only_record() {
    let tmp = tempfile::tempdir().unwrap();
    let pebble = PebbleStandIn::start(&tmp.path().join("pebble.socket"), &["synapse"]);
    pebble.observe(|action| format!("saw {action}"));
    assert_eq!(pebble.act_and_wait("stop", &["synapse"])["status"], "Done");
    assert_eq!(pebble.act_and_wait("start", &["synapse"])["status"], "Done");
    assert_eq!(pebble.current("synapse"), "active");
    pebble.fail("stop", "cannot send signal");
    assert_eq!(pebble.act_and_wait("stop", &["synapse"])["err"], "cannot send signal");
    assert_eq!(pebble.events(), ["stop synapse", "start synapse", "stop synapse"]);
    assert_eq!(pebble.observed(), ["saw stop", "saw start", "saw stop"]);
    assert_eq!(pebble.pid("synapse"), None);
}
