//! Real S3-protocol servers on loopback for the tests: `s3s-fs` (checks SigV4, keeps data on disk)
//! and moto's server (an IAM user, with signature checks switched on). Each [`S3Server`] is a fresh
//! process on a free port, stopped when dropped. Raw bucket operations (creating buckets, planting
//! objects that are not ours, listing raw keys) go through boto3, the client the reference charm
//! used, so what we write is also checked by a third implementation.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    S3sFs,
    Moto,
}

pub const BOTH: [Kind; 2] = [Kind::S3sFs, Kind::Moto];

const S3S_ACCESS_KEY: &str = "AKIAS3SFSTEST";
const S3S_SECRET_KEY: &str = "s3s-fs-secret-key-for-tests";

pub struct S3Server {
    pub kind: Kind,
    child: Option<Child>,
    pub port: u16,
    /// s3s-fs's data directory (and moto's scratch space).
    pub data: tempfile::TempDir,
    pub access_key: String,
    pub secret_key: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening ({status})");
        }
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on port {port} after 60s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(program: &str, args: &[String], install: &str) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install it with `{install}` (or run .ci/install-s3-servers.sh)")
        })
}

const S3S_INSTALL: &str = "cargo install --locked s3s-fs --version 0.14.1 --features binary";
const MOTO_INSTALL: &str = "pip install 'moto[server]==5.2.5'";

impl S3Server {
    pub fn start(kind: Kind) -> S3Server {
        let data = tempfile::tempdir().unwrap();
        let mut server = S3Server {
            kind,
            child: None,
            port: free_port(),
            data,
            access_key: String::new(),
            secret_key: String::new(),
        };
        server.launch();
        if kind == Kind::Moto {
            // an IAM user with S3 rights; after these three IAM calls moto checks every signature
            let out = server.boto(
                r#"
import json, sys, urllib.request
ep = sys.argv[1]
urllib.request.urlopen(urllib.request.Request(ep + "/moto-api/reset-auth", data=b"3", method="POST", headers={"Content-Type": "text/plain"})).read()
iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="backup")
iam.put_user_policy(UserName="backup", PolicyName="s3", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="backup")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"#,
                &[],
                None,
            );
            let mut words = out.split_whitespace();
            server.access_key = words.next().unwrap().to_string();
            server.secret_key = words.next().unwrap().to_string();
        } else {
            server.access_key = S3S_ACCESS_KEY.into();
            server.secret_key = S3S_SECRET_KEY.into();
        }
        server
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let mut child = match self.kind {
            Kind::S3sFs => spawn(
                "s3s-fs",
                &[
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port,
                    "--access-key".into(),
                    S3S_ACCESS_KEY.into(),
                    "--secret-key".into(),
                    S3S_SECRET_KEY.into(),
                    self.root().display().to_string(),
                ],
                S3S_INSTALL,
            ),
            Kind::Moto => spawn(
                "moto_server",
                &["-H".into(), "127.0.0.1".into(), "-p".into(), port],
                MOTO_INSTALL,
            ),
        };
        wait_listening(self.port, &mut child, &format!("{:?}", self.kind));
        self.child = Some(child);
    }

    fn root(&self) -> PathBuf {
        let root = self.data.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server abruptly (SIGKILL), as a crash or a lost network would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (s3s-fs: with the same data).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// The relation databag s3-integrator would send for this server.
    pub fn databag(&self, bucket: &str, path: &str) -> BTreeMap<String, String> {
        [
            ("access-key", self.access_key.as_str()),
            ("secret-key", self.secret_key.as_str()),
            ("bucket", bucket),
            ("endpoint", &self.endpoint()),
            ("path", path),
            ("s3-uri-style", "path"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Runs a Python snippet with `boto3` imported, `s3` a client for this server, `sys.argv[1]` the
    /// endpoint, then `args`; returns stdout.
    pub fn boto(&self, script: &str, args: &[&str], stdin: Option<&str>) -> String {
        let prelude = format!(
            "import sys, boto3, botocore.config\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
             aws_access_key_id={:?}, aws_secret_access_key={:?}, \
             config=botocore.config.Config(s3={{'addressing_style': 'path'}}, max_pool_connections=16))\n",
            self.access_key, self.secret_key
        );
        let out = crate::common::run_with_stdin(
            Command::new("python3")
                .arg("-c")
                .arg(format!("{prelude}{script}"))
                .arg(self.endpoint())
                .args(args),
            stdin.unwrap_or("").as_bytes().to_vec(),
        );
        assert!(
            out.status.success(),
            "boto3 (installed with moto: {MOTO_INSTALL}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.boto("s3.create_bucket(Bucket=sys.argv[2])", &[bucket], None);
    }

    /// Plants objects (small bodies) under the given keys, as another tool would.
    pub fn put_objects(&self, bucket: &str, keys: &[String]) {
        self.boto(
            r#"
from concurrent.futures import ThreadPoolExecutor
keys = sys.stdin.read().split()
with ThreadPoolExecutor(16) as pool:
    list(pool.map(lambda k: s3.put_object(Bucket=sys.argv[2], Key=k, Body=b"not made by synapse-backup"), keys))
"#,
            &[bucket],
            Some(&keys.join("\n")),
        );
    }

    /// Every key in the bucket, as a raw S3 listing shows it.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self.boto(
            r#"
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
    for o in page.get("Contents", []):
        print(o["Key"])
"#,
            &[bucket],
            None,
        );
        out.lines().map(str::to_string).collect()
    }

    /// Multipart uploads the server still holds (begun, neither completed nor aborted).
    pub fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        match self.kind {
            // s3s-fs has no ListMultipartUploads: its uploads are `.upload-<id>.json` files
            Kind::S3sFs => std::fs::read_dir(self.root())
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(".upload"))
                .collect(),
            Kind::Moto => self
                .boto(
                    "for u in s3.list_multipart_uploads(Bucket=sys.argv[2]).get('Uploads', []): print(u['Key'])",
                    &[bucket],
                    None,
                )
                .lines()
                .map(str::to_string)
                .collect(),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HTTPS in front of a server: a TLS-terminating relay (Python's ssl) with a leaf certificate for
/// 127.0.0.1 signed by a throwaway CA. Stopped when dropped.
pub struct TlsRelay {
    child: Child,
    pub port: u16,
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    _dir: tempfile::TempDir,
}

impl TlsRelay {
    pub fn start(upstream: u16) -> TlsRelay {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let script = format!(
            "set -e; cd {d}
             openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
                -days 2 -subj /CN=synapse-backup-test-ca 2>/dev/null
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key -out leaf.csr \
                -subj /CN=localhost 2>/dev/null
             printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' >ext
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 \
                -extfile ext 2>/dev/null"
        );
        let made = Command::new("bash").args(["-c", &script]).status().expect("bash runs");
        assert!(made.success(), "openssl could not make test certificates");
        let port = free_port();
        let relay = r#"
import socket, ssl, sys, threading
d, port, upstream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(d + "/leaf.pem", d + "/leaf.key")
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port)); ls.listen(64)
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.close()
        except OSError:
            pass
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
    except (ssl.SSLError, OSError):
        c.close(); return
    u = socket.create_connection(("127.0.0.1", upstream))
    threading.Thread(target=pipe, args=(u, t), daemon=True).start()
    pipe(t, u)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
        let mut child = Command::new("python3")
            .args(["-c", relay, &d, &port.to_string(), &upstream.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs");
        wait_listening(port, &mut child, "the TLS relay");
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        TlsRelay {
            child,
            port,
            ca_pem,
            _dir: dir,
        }
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
