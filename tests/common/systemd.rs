//! systemd is absent on the test machines: a `systemctl` stand-in (a few lines of stdlib Python,
//! put first on the hook PATH) hands `systemctl start|stop <unit>` to this process over a unix
//! socket, which stops and starts a real Synapse as its unit would. As with `Type=notify` (the
//! Debian package's unit), `start` returns once Synapse is ready; `stop` once it has exited.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::synapse::{Synapse, START_TIMEOUT};

pub struct SystemdStandIn {
    pub socket: PathBuf,
    events: Arc<Mutex<Vec<String>>>,
}

impl SystemdStandIn {
    /// Serves `unit` on a socket in `dir`, and writes `systemctl` into `bin_dir`.
    pub fn start(dir: &Path, bin_dir: &Path, unit: &str, synapse: Arc<Mutex<Synapse>>) -> Self {
        let socket = dir.join("systemd.socket");
        let listener = UnixListener::bind(&socket).expect("bind the systemd stand-in's socket");
        let events = Arc::new(Mutex::new(Vec::new()));
        let script = format!(
            r#"#!/usr/bin/env python3
# systemctl stand-in for the tests (tests/common/systemd.rs)
import socket, sys
args = [a for a in sys.argv[1:] if a != "--"]
s = socket.socket(socket.AF_UNIX)
s.connect({socket:?})
s.sendall((" ".join(args) + "\n").encode())
answer = s.makefile().readline().strip()
if answer != "ok":
    sys.stderr.write("Job for {{}} failed: {{}}\n".format(args[-1] if args else "?", answer))
    sys.exit(1)
"#,
            socket = socket.to_str().unwrap()
        );
        let path = bin_dir.join("systemctl");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (ev, unit) = (events.clone(), unit.to_string());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let _ = BufReader::new(&stream).read_line(&mut line);
                let words: Vec<&str> = line.split_whitespace().collect();
                let answer = match words.as_slice() {
                    [verb @ ("start" | "stop"), u] if *u == unit => {
                        ev.lock().unwrap().push(format!("{verb} {u}"));
                        let mut s = synapse.lock().unwrap();
                        s.stop(); // reaps one that exited on its own too
                        if *verb == "start" {
                            s.spawn();
                            match s.wait_healthy(START_TIMEOUT) {
                                Ok(()) => "ok".to_string(),
                                Err(e) => format!("Synapse did not become ready: {}", e.lines().next().unwrap_or("")),
                            }
                        } else {
                            "ok".to_string()
                        }
                    }
                    _ => format!("unit or verb not known here: {line:?}"),
                };
                let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
            }
        });
        SystemdStandIn { socket, events }
    }

    /// "stop <unit>", "start <unit>", in the order asked.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}
