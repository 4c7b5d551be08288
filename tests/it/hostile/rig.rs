//! The stage every hostile test plays on: a real server with the `hostile` provider
//! dropped in and a fixed operator config, a well-behaved `local-process`
//! environment whose app keeps getting echoes while an attack runs, and a plain
//! HTTP server on 127.0.0.1 that counts the requests reaching it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, WAIT, Ws, wait_gone};

#[allow(dead_code)]
mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// The operator config of every hostile test. Only loopback and documentation-only
/// names appear; `metadata.test`, `sixtofour.test` and `teredo.test` are refused
/// before any packet is sent.
pub const TETHER_TOML: &str = r#"
[lifecycle]
start_timeout_secs = 3

[limits]
memory_mib = 64
max_processes = 8

[net]
connect_timeout_ms = 2000
first_byte_timeout_ms = 2000

[net.hosts]
"loopback.test" = "127.0.0.1"
"metadata.test" = "169.254.169.254"
# 6to4 and Teredo addresses carrying 127.0.0.1: refused before any packet is sent.
"sixtofour.test" = "2002:7f00:1::"
"teredo.test" = "2001:0:7f00:1::"

[providers.hostile]
commands = [
  { program = "/bin/echo", args = ["hello", "*"] },
  { program = "/bin/sleep", args = ["*"] },
]
urls = [
  "http://127.0.0.2:*", "http://loopback.test:*", "http://metadata.test:80",
  "http://sixtofour.test:*", "http://teredo.test:*",
]
"#;

/// A server under attack plus its witnesses.
pub struct Rig {
    /// The server.
    pub server: Server,
    /// Keeps the data directory alive.
    pub dir: tempfile::TempDir,
    good_id: String,
    runtime_pid: u32,
    app: Ws,
    echoes: u64,
    /// Port of the counting HTTP server on 127.0.0.1.
    pub http_port: u16,
    /// Requests that reached it.
    pub http_hits: Arc<AtomicUsize>,
}

impl Rig {
    /// Starts everything; `prepare` may plant files in the data directory first.
    pub async fn start(prepare: impl FnOnce(&std::path::Path)) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tether.toml"), TETHER_TOML).expect("tether.toml");
        let providers = dir.path().join(".codebolt/providers");
        std::fs::create_dir_all(&providers).expect("providers dir");
        std::fs::copy(guests::HOSTILE, providers.join("hostile.wasm")).expect("drop in hostile");
        prepare(dir.path());
        let (http_port, http_hits) = counting_http_server([127, 0, 0, 1]).await;
        let server = Server::start(dir.path());
        let good = server.running_env("good", "local-process", json!({})).await;
        let good_id = good["id"].as_str().expect("id").to_owned();
        let runtime_pid = good["metadata"]["pid"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .expect("runtime pid");
        let app = server.app(&good_id, "witness").await;
        let mut rig = Rig {
            server,
            dir,
            good_id,
            runtime_pid,
            app,
            echoes: 0,
            http_port,
            http_hits,
        };
        rig.echo().await;
        rig
    }

    /// The workspace of the environment called `name`.
    pub fn workspace(&self, name: &str) -> PathBuf {
        self.dir.path().join(".codebolt/environments").join(name)
    }

    /// One echo round trip through the well-behaved environment.
    pub async fn echo(&mut self) {
        self.echoes += 1;
        let id = format!("echo-{}", self.echoes);
        let reply = self
            .app
            .request(json!({"type": "echo", "requestId": id, "payload": self.echoes}))
            .await;
        assert_eq!(reply["type"], "echoResponse", "{reply}");
    }

    /// A request from the witness app to the well-behaved environment's provider.
    pub async fn good_request(&mut self, msg: Value) -> Value {
        self.app.request(msg).await
    }

    /// Creates and starts a hostile environment with `config`, echoing through the
    /// good one until the attack has played out (the start ended either way).
    pub async fn attack(&mut self, name: &str, config: Value) -> Value {
        let (status, env) = self
            .server
            .call(
                "POST",
                "/api/v1/environments",
                // `never`: a contained failure must stay visible, not be restarted away.
                Some(json!({
                    "name": name, "provider": "hostile", "config": config,
                    "start": true, "restartPolicy": "never",
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        let id = env["id"].as_str().expect("id").to_owned();
        let deadline = Instant::now() + WAIT;
        loop {
            self.echo().await;
            let (status, env) = self
                .server
                .call("GET", &format!("/api/v1/environments/{id}"), None)
                .await;
            assert_eq!(status, StatusCode::OK, "{env}");
            if env["status"] == "running" || env["status"] == "error" {
                self.assert_host_fine().await;
                return env;
            }
            assert!(
                Instant::now() < deadline,
                "attack {name} never settled: {env}\n{}",
                self.server.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Attacks and expects the start to be refused; returns the `lastError`.
    pub async fn refused(&mut self, name: &str, config: Value) -> (String, String) {
        let env = self.attack(name, config).await;
        assert_eq!(
            env["status"], "error",
            "attack {name} was not contained: {env}"
        );
        let error = env["lastError"].as_str().expect("lastError").to_owned();
        (env["id"].as_str().expect("id").to_owned(), error)
    }

    /// `/healthz` answers within a second and the good environment still relays.
    pub async fn assert_host_fine(&mut self) {
        let asked = Instant::now();
        let (status, _) = self.server.call("GET", "/healthz", None).await;
        assert_eq!(status, StatusCode::OK);
        let took = asked.elapsed();
        // Generous: the figure itself is the `spin` benchmark's; this catches a stall.
        assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
        self.echo().await;
        let (_, good) = self
            .server
            .call(
                "GET",
                &format!("/api/v1/environments/{}", self.good_id),
                None,
            )
            .await;
        assert_eq!(good["status"], "running", "{good}");
    }

    /// Whether a log line names `env` and contains `needle`.
    pub fn logged(&self, env: &str, needle: &str) -> bool {
        self.server
            .log()
            .lines()
            .any(|l| l.contains(env) && l.contains(needle))
    }

    /// Deletes an environment and waits until it is gone.
    pub async fn delete(&self, id: &str) {
        let (status, body) = self
            .server
            .call("DELETE", &format!("/api/v1/environments/{id}"), None)
            .await;
        assert!(status.is_success(), "{body}");
    }

    /// Stops the server cleanly; the good runtime must not outlive it.
    pub async fn finish(mut self) {
        self.assert_host_fine().await;
        let pid = self.runtime_pid;
        self.server.stop();
        wait_gone(pid).await;
    }
}

/// An HTTP server on `ip` (always a loopback address) answering `ok` and counting
/// requests, but not for `/ws/…` (a stray runtime's dial).
pub async fn counting_http_server(ip: [u8; 4]) -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    // A runtime of another test's host that was killed may still be dialling its old
    // port, which this server can have been given: those are not the attack.
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let counter = counter.clone();
        async move {
            if !uri.path().starts_with("/ws/") {
                // Shown with a failing test's output, to say who it was.
                eprintln!("counting server {ip:?}: a request for {uri}");
                counter.fetch_add(1, Ordering::SeqCst);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, hits)
}
