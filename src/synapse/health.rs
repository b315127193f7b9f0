//! Is Synapse up? `GET /health` on the HTTP listener of its own config answers `200 OK` once it
//! serves. A restore commits only after this answers, and refuses to swap data while it does
//! under a Synapse nobody stopped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::config::HttpListener;

/// How long one probe may take (connect, request, answer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const POLL_EVERY: Duration = Duration::from_millis(250);

/// What one probe of the listener found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `/health` answered 200.
    Healthy,
    /// Something answers on the port, but not `200` (Synapse still starting, or another server).
    Answering(String),
    /// Nothing accepts connections there.
    Down(String),
}

impl Probe {
    /// Is a process listening (healthy or not)?
    pub fn is_listening(&self) -> bool {
        !matches!(self, Probe::Down(_))
    }
}

/// One look at every address of the listener; the best answer wins.
pub fn probe(listener: &HttpListener) -> Probe {
    let mut best = Probe::Down(format!("nothing answers on {}", listener.url()));
    for addr in listener.addrs() {
        match probe_addr(&addr) {
            Probe::Healthy => return Probe::Healthy,
            answering @ Probe::Answering(_) => best = answering,
            Probe::Down(_) => {}
        }
    }
    best
}

fn probe_addr(addr: &SocketAddr) -> Probe {
    let mut stream = match TcpStream::connect_timeout(addr, PROBE_TIMEOUT) {
        Ok(s) => s,
        // a time-out may be a frozen Synapse (full accept queue) or a firewall: not "down"
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Probe::Answering(format!("{addr} neither accepted nor refused a connection: {e}"))
        }
        Err(e) => return Probe::Down(format!("{addr}: {e}")),
    };
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return Probe::Answering(format!("{addr} accepted a connection but not the request: {e}"));
    }
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < head.len() {
        match stream.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Probe::Answering(format!("{addr} gave no answer to GET /health: {e}")),
        }
        if head[..n].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.lines().next().unwrap_or("").trim();
    let mut parts = status.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some("200")) if v.starts_with("HTTP/") => Probe::Healthy,
        _ if status.is_empty() => Probe::Answering(format!("{addr} closed the connection without an answer")),
        _ => Probe::Answering(format!("GET http://{addr}/health answered {status:?}")),
    }
}

/// The version Synapse reports on `GET /_matrix/federation/v1/version`
/// (`{"server": {"name": "Synapse", "version": "1.163.2"}}`), if it answers.
pub fn version(listener: &HttpListener) -> Option<String> {
    listener.addrs().iter().find_map(|addr| {
        let mut stream = TcpStream::connect_timeout(addr, PROBE_TIMEOUT).ok()?;
        stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
        let request =
            format!("GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = Vec::new();
        stream.take(64 << 10).read_to_end(&mut answer).ok()?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n")?;
        if !head.lines().next()?.contains(" 200") {
            return None;
        }
        // the JSON object, whether the body came whole or chunked
        let json = &body[body.find('{')?..=body.rfind('}')?];
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        v.pointer("/server/version")?.as_str().map(str::to_string)
    })
}

/// Polls until `/health` answers 200; on timeout, what the last probe saw.
pub fn wait_healthy(listener: &HttpListener, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        match probe(listener) {
            Probe::Healthy => return Ok(start.elapsed()),
            last if start.elapsed() >= timeout => {
                let (Probe::Answering(why) | Probe::Down(why)) = last else {
                    return Ok(start.elapsed());
                };
                return Err(format!(
                    "Synapse did not answer GET /health on {} within {}s ({why})",
                    listener.url(),
                    timeout.as_secs()
                ));
            }
            _ => std::thread::sleep(POLL_EVERY),
        }
    }
}

/// Polls until nothing listens any more; on timeout, what still answers.
pub fn wait_down(listener: &HttpListener, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let p = probe(listener);
        if !p.is_listening() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "Synapse still answers on {} {}s after it was stopped",
                listener.url(),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(POLL_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, TcpListener};

    fn listener_on(port: u16) -> HttpListener {
        HttpListener {
            port,
            hosts: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        }
    }

    /// Answers every connection with `status` until the test ends.
    fn server(status: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nOK").as_bytes());
            }
        });
        port
    }

    #[test]
    fn tells_healthy_from_answering_from_down() {
        assert_eq!(probe(&listener_on(server("200 OK"))), Probe::Healthy);
        let p = probe(&listener_on(server("503 Service Unavailable")));
        assert!(matches!(&p, Probe::Answering(m) if m.contains("503")), "{p:?}");
        let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(!probe(&listener_on(free)).is_listening());
    }

    #[test]
    fn waiting_times_out_with_what_it_saw() {
        let err = wait_healthy(&listener_on(server("502 Bad Gateway")), Duration::ZERO).unwrap_err();
        assert!(err.contains("502") && err.contains("within 0s"), "{err}");
        assert!(wait_down(&listener_on(server("200 OK")), Duration::ZERO).is_err());
    }
}
