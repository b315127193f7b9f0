//! A stand-in for Pebble's HTTP API on a unix socket: a real HTTP/1.1 server (hyper on a tokio
//! `UnixListener`) answering the documented shapes of `POST /v1/services` and
//! `GET /v1/changes/<id>/wait`, recording the order of the stops and starts it was asked for.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

type Observer = Arc<dyn Fn(&str) -> String + Send + Sync>;

#[derive(Default)]
struct State {
    services: Vec<String>,
    /// "stop synapse", "start synapse", in the order asked
    events: Vec<String>,
    /// what the observer saw at each event
    observed: Vec<String>,
    /// action → the change's error text
    failing: BTreeMap<String, String>,
    /// change id → (kind, error)
    changes: BTreeMap<String, (String, Option<String>)>,
    /// the first N waits answer 504, as Pebble does when its wait timeout runs out
    slow_waits: usize,
    requests_without_host: usize,
    waits_without_timeout: usize,
}

pub struct PebbleStandIn {
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    observer: Arc<Mutex<Option<Observer>>>,
}

impl PebbleStandIn {
    /// Serves a plan holding `services` on `socket` until the test process ends.
    pub fn start(socket: &Path, services: &[&str]) -> Self {
        let state = Arc::new(Mutex::new(State {
            services: services.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }));
        let observer: Arc<Mutex<Option<Observer>>> = Arc::new(Mutex::new(None));
        let std_listener = std::os::unix::net::UnixListener::bind(socket).expect("bind the Pebble socket");
        std_listener.set_nonblocking(true).unwrap();
        let (st, ob) = (state.clone(), observer.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (st, ob) = (st.clone(), ob.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (st, ob) = (st.clone(), ob.clone());
                            async move { Ok::<_, Infallible>(handle(req, &st, &ob).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        PebbleStandIn {
            socket: socket.to_path_buf(),
            state,
            observer,
        }
    }

    /// Called at each stop or start with the action; what it returns is kept in [`Self::observed`].
    pub fn observe(&self, f: impl Fn(&str) -> String + Send + Sync + 'static) {
        *self.observer.lock().unwrap() = Some(Arc::new(f));
    }

    /// Makes every change of `action` end in error with `err` (Pebble's `result.err`).
    pub fn fail(&self, action: &str, err: &str) {
        self.state.lock().unwrap().failing.insert(action.into(), err.into());
    }

    pub fn slow_waits(&self, n: usize) {
        self.state.lock().unwrap().slow_waits = n;
    }

    pub fn events(&self) -> Vec<String> {
        self.state.lock().unwrap().events.clone()
    }

    pub fn observed(&self) -> Vec<String> {
        self.state.lock().unwrap().observed.clone()
    }

    /// Requests that broke Pebble's rules (no Host header, a wait without a timeout).
    pub fn protocol_errors(&self) -> usize {
        let s = self.state.lock().unwrap();
        s.requests_without_host + s.waits_without_timeout
    }

    /// `pebble:<service>@<socket>` for `--service`.
    pub fn spec(&self, service: &str) -> String {
        format!("pebble:{service}@{}", self.socket.display())
    }
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    answer(
        status,
        json!({
            "type": "error", "status-code": status.as_u16(),
            "status": status.canonical_reason().unwrap_or(""), "result": { "message": message },
        }),
    )
}

async fn handle(
    req: Request<Incoming>,
    state: &Mutex<State>,
    observer: &Mutex<Option<Observer>>,
) -> Response<Full<Bytes>> {
    if !req.headers().contains_key(hyper::header::HOST) {
        state.lock().unwrap().requests_without_host += 1;
        return error(StatusCode::BAD_REQUEST, "missing required Host header");
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match (method.as_str(), path.as_str()) {
        ("POST", "/v1/services") => {
            let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
                return error(StatusCode::BAD_REQUEST, "cannot decode data from request body");
            };
            let action = payload["action"].as_str().unwrap_or("").to_string();
            let services: Vec<String> = payload["services"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default();
            if action != "stop" && action != "start" {
                return error(StatusCode::BAD_REQUEST, &format!("invalid action {action:?}"));
            }
            if services.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("must specify services for {action} action"),
                );
            }
            let observe = observer.lock().unwrap().clone();
            let mut s = state.lock().unwrap();
            if let Some(unknown) = services.iter().find(|n| !s.services.contains(n)) {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot {action} services: service {unknown:?} does not exist"),
                );
            }
            for name in &services {
                s.events.push(format!("{action} {name}"));
            }
            if let Some(f) = observe {
                let seen = f(&action);
                s.observed.push(seen);
            }
            let id = (s.changes.len() + 1).to_string();
            let err = s.failing.get(&action).cloned();
            s.changes.insert(id.clone(), (action, err));
            answer(
                StatusCode::ACCEPTED,
                json!({ "type": "async", "status-code": 202, "status": "Accepted", "change": id, "result": null }),
            )
        }
        ("GET", p) if p.starts_with("/v1/changes/") && p.ends_with("/wait") => {
            let id = &p["/v1/changes/".len()..p.len() - "/wait".len()];
            let timeout = query.split('&').find_map(|kv| kv.strip_prefix("timeout="));
            let mut s = state.lock().unwrap();
            if !timeout.is_some_and(|t| t.ends_with('s') && t.len() > 1) {
                s.waits_without_timeout += 1;
            }
            let Some((kind, err)) = s.changes.get(id).cloned() else {
                return error(StatusCode::NOT_FOUND, &format!("cannot find change with id {id:?}"));
            };
            if s.slow_waits > 0 {
                s.slow_waits -= 1;
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("timed out waiting for change after {}", timeout.unwrap_or("")),
                );
            }
            let mut change = json!({
                "id": id, "kind": kind, "summary": format!("{kind} service"),
                "status": if err.is_some() { "Error" } else { "Done" }, "ready": true,
                "spawn-time": "2026-11-21T10:00:00Z", "ready-time": "2026-11-21T10:00:01Z",
            });
            if let Some(err) = err {
                change["err"] = json!(err);
            }
            answer(
                StatusCode::OK,
                json!({ "type": "sync", "status-code": 200, "status": "OK", "result": change }),
            )
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}
