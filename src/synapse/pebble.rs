//! Pebble's HTTP API on its unix socket (the workload container's service manager, seen from a
//! Kubernetes sidecar charm at `/charm/containers/<container>/pebble.socket`): layers, replan,
//! services and checks. Calls block; each runs on a small runtime of its own (a thread of its own
//! when called from async code, where a runtime cannot block inside another).
//!
//! Envelopes: `{"type": "sync", "result": …}`, `{"type": "async", "change": "42"}`,
//! `{"type": "error", "result": {"message": …}}`; an async change is waited for with
//! `GET /v1/changes/<id>/wait?timeout=…` (504 when Pebble's own wait runs out: ask again).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::service::ServiceError;

pub struct PebbleClient {
    socket: PathBuf,
    /// How long a change (a start, stop or replan) may take before we give up waiting for it.
    pub wait: Duration,
}

/// A check as `GET /v1/checks` reports it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CheckInfo {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub successes: u64,
    #[serde(default)]
    pub failures: u64,
}

/// A service as `GET /v1/services` reports it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    #[serde(default)]
    pub current: String,
}

#[derive(serde::Deserialize)]
struct Response {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    change: Option<String>,
    #[serde(default)]
    result: Value,
}

enum Failure {
    /// Pebble answered with an error: its status and its own message.
    Status(StatusCode, String),
    /// Pebble could not be reached or did not speak its API.
    Transport(String),
}

impl PebbleClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        PebbleClient {
            socket: socket.into(),
            wait: Duration::from_secs(300),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Adds `layer` (YAML) under `label`, merged into an existing layer of that label.
    pub fn add_layer(&self, label: &str, layer: &str) -> Result<(), ServiceError> {
        let body = json!({"action": "add", "label": label, "combine": true, "format": "yaml", "layer": layer});
        self.call(|| async {
            self.request(Method::POST, "/v1/layers", Some(body), Duration::from_secs(30))
                .await
                .map(drop)
        })
    }

    /// Starts every enabled service that is not running and restarts those whose plan changed.
    pub fn replan(&self) -> Result<(), ServiceError> {
        self.change("replan", json!({"action": "replan", "services": []}))
    }

    /// `start`, `stop` or `restart` of one service, waited for.
    pub fn service_action(&self, action: &str, service: &str) -> Result<(), ServiceError> {
        self.change(
            &format!("{action} of {service:?}"),
            json!({"action": action, "services": [service]}),
        )
    }

    pub fn services(&self, names: &[&str]) -> Result<Vec<ServiceInfo>, ServiceError> {
        self.get_list(&format!("/v1/services?names={}", names.join(",")))
    }

    pub fn checks(&self, names: &[&str]) -> Result<Vec<CheckInfo>, ServiceError> {
        self.get_list(&format!("/v1/checks?names={}", names.join(",")))
    }

    fn get_list<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ServiceError> {
        let answer = self.call(|| async { self.request(Method::GET, path, None, Duration::from_secs(30)).await })?;
        serde_json::from_value(answer.result).map_err(|e| self.error(format!("{path}: unexpected answer ({e})")))
    }

    /// Posts an async request to `/v1/services` and waits for its change.
    fn change(&self, what: &str, body: Value) -> Result<(), ServiceError> {
        self.call(|| async {
            let answer = self
                .request(Method::POST, "/v1/services", Some(body), Duration::from_secs(30))
                .await?;
            let change = match (answer.kind.as_str(), answer.change) {
                ("async", Some(id)) if !id.is_empty() => id,
                _ => return Err(Failure::Transport(format!("{what} gave no change id"))),
            };
            self.wait_for(&change, what).await
        })
    }

    /// Runs an async call to its end, on a runtime of its own.
    fn call<T: Send, F: std::future::Future<Output = Result<T, Failure>>>(
        &self,
        f: impl FnOnce() -> F + Send,
    ) -> Result<T, ServiceError> {
        let run = move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ServiceError(format!("cannot start the Pebble client: {e}")))?;
            runtime.block_on(f()).map_err(|e| match e {
                Failure::Status(_, message) => self.error(message),
                Failure::Transport(what) => self.error(what),
            })
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|s| {
                s.spawn(run)
                    .join()
                    .unwrap_or_else(|_| Err(self.error("the request failed".into())))
            });
        }
        run()
    }

    async fn wait_for(&self, change: &str, what: &str) -> Result<(), Failure> {
        let deadline = Instant::now() + self.wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Transport(format!(
                    "{what} did not finish within {}s (Pebble change {change})",
                    self.wait.as_secs()
                )));
            }
            let step = left.min(Duration::from_secs(10)).max(Duration::from_secs(1));
            let path = format!("/v1/changes/{change}/wait?timeout={}ms", step.as_millis());
            match self
                .request(Method::GET, &path, None, step + Duration::from_secs(10))
                .await
            {
                Ok(answer) => {
                    let result = &answer.result;
                    if result.get("ready").and_then(Value::as_bool) != Some(true) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    let status = result.get("status").and_then(Value::as_str).unwrap_or("");
                    return match result.get("err").and_then(Value::as_str).filter(|e| !e.is_empty()) {
                        Some(err) => Err(Failure::Transport(err.trim_end().to_string())),
                        None if status == "Done" => Ok(()),
                        None => Err(Failure::Transport(format!("{what} ended with status {status:?}"))),
                    };
                }
                // Pebble's wait timed out (504): the change is still running, ask again
                Err(Failure::Status(StatusCode::GATEWAY_TIMEOUT, _)) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Response, Failure> {
        match tokio::time::timeout(timeout, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Transport(format!("no answer within {}s", timeout.as_secs()))),
        }
    }

    async fn exchange(&self, method: Method, path: &str, body: Option<Value>) -> Result<Response, Failure> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| Failure::Transport(format!("cannot connect: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            // Pebble (Go's net/http) refuses HTTP/1.1 requests without a Host
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?
            .to_bytes();
        driver.abort();
        let answer: Response = serde_json::from_slice(&body).map_err(|e| {
            Failure::Transport(format!(
                "answered {status} with something that is not Pebble's JSON ({e})"
            ))
        })?;
        if answer.kind == "error" || !status.is_success() {
            let message = answer
                .result
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| status.to_string());
            return Err(Failure::Status(status, message));
        }
        Ok(answer)
    }

    fn error(&self, what: String) -> ServiceError {
        ServiceError(format!("Pebble at {}: {what}", self.socket.display()))
    }
}
