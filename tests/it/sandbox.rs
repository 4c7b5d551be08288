//! The `http-sandbox` provider against a real sandbox service
//! (`examples/sandbox-service`, a separate process on loopback): one sandbox per
//! environment whose runtime connects back, reused across host restarts and
//! `kill -9`, recreated (and said so) when the service lost it, deleted with the
//! environment; a wrong key and an ungranted URL are clear errors.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, OnceLock};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::certs::{Ca, Leaf};
use crate::support::{Server, WAIT, spawn_announced, wait_gone, write_config};

/// The key the test services accept.
pub const KEY: &str = "sandbox-key-0123456789";

/// Builds `tether-sandbox-service` once per test binary, into the target directory
/// this binary was built in (cargo holds no build lock while tests run), and
/// returns its path.
fn service_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // <target>/<profile>/deps/it-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_owned();
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "tether-examples", "--bin"])
            .arg("tether-sandbox-service")
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let out = build.output().expect("running cargo build");
        assert!(
            out.status.success(),
            "building the sandbox service failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir.join("tether-sandbox-service")
    })
}

/// A running sandbox service.
pub struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT` (or `https://`)
    base: String,
    port: u16,
    root: PathBuf,
    http: reqwest::Client,
}

impl Service {
    /// Starts the service on `port` (0: any), allowing only `tether runtime`.
    pub fn start(dir: &Path, port: u16) -> Service {
        Service::start_with(dir, port, None, &[])
    }

    /// Starts the service on any port answering its first `n` sandbox deletes with 500.
    pub fn start_failing_deletes(dir: &Path, n: usize) -> Service {
        Service::start_with(dir, 0, None, &["--fail-deletes", &n.to_string()])
    }

    /// Starts the service on any port leaving its first `n` sandbox deletes unanswered
    /// until it stops.
    pub fn start_hanging_deletes(dir: &Path, n: usize) -> Service {
        Service::start_with(dir, 0, None, &["--hang-deletes", &n.to_string()])
    }

    /// Starts the service over HTTPS with `leaf`'s certificate; the test's own
    /// requests trust `ca`.
    fn start_tls(dir: &Path, leaf: &Leaf, ca: &Ca) -> Service {
        let (cert, key) = leaf.write(dir, "sandbox");
        Service::start_with(dir, 0, Some((cert, key, ca.client_config())), &[])
    }

    fn start_with(
        dir: &Path,
        port: u16,
        tls: Option<(PathBuf, PathBuf, Arc<rustls::ClientConfig>)>,
        flags: &[&str],
    ) -> Service {
        let root = dir.join("sandboxes");
        let mut command = Command::new(service_binary());
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--root")
            .arg(&root)
            .arg("--allow-command")
            .arg(format!("{} runtime", env!("CARGO_BIN_EXE_tether")))
            .args(flags)
            .env("SANDBOX_API_KEY", KEY)
            .env("RUST_LOG", "info");
        let mut http = reqwest::Client::builder();
        if let Some((cert, key, trust)) = tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
            http = http.use_preconfigured_tls((*trust).clone());
        }
        let (child, base) = spawn_announced(
            command,
            &dir.join("service.log"),
            "sandbox service listening on ",
        );
        let port = base
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("port");
        Service {
            child,
            base,
            port,
            root,
            http: http.build().expect("client"),
        }
    }

    /// SIGTERM, then waits: the service kills every process and forgets every sandbox.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("waiting for the service");
        assert!(status.success(), "service exited with {status}");
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        self.request(method, path, Some(KEY), None).await
    }

    /// A request with the given key (or none) and JSON body (or none).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("service request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/sandboxes`: a new sandbox's id.
    pub async fn new_sandbox(&self) -> String {
        let (status, sandbox) = (self.request(
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(KEY),
            Some(json!({})),
        ))
        .await;
        assert_eq!(status, StatusCode::CREATED, "{sandbox}");
        sandbox["id"].as_str().expect("id").to_owned()
    }

    /// `GET /v1/sandboxes`: the sandboxes and the create and delete counts.
    pub async fn list(&self) -> Value {
        let (status, list) = self.call(reqwest::Method::GET, "/v1/sandboxes").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list
    }

    /// The one sandbox the service holds.
    async fn only_sandbox(&self) -> Value {
        let list = self.list().await;
        let sandboxes = list["sandboxes"].as_array().expect("sandboxes");
        assert_eq!(sandboxes.len(), 1, "{list}");
        sandboxes[0].clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A failed test still must not leave runtimes behind: SIGTERM kills them.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// `tether.toml` granting the service's address, with the key in the operator's config.
pub fn grant(service: &Service, key: &str) -> String {
    format!(
        "[providers.http-sandbox]\nurls = [\"http://127.0.0.1:{port}\"]\n\
         config = {{ apiUrl = \"{base}/v1\", apiKey = \"{key}\", command = \"{tether}\", args = [\"runtime\"] }}\n",
        port = service.port,
        base = service.base,
        tether = env!("CARGO_BIN_EXE_tether"),
    )
}

/// `tether.toml` for a service over HTTPS at `sandbox.test` (an override to
/// loopback, which the grant also names literally, so the post-DNS check lets it
/// through), trusting the test CA in `ca_file`.
fn tls_grant(service: &Service, ca_file: Option<&Path>) -> String {
    let trust = match ca_file {
        Some(file) => format!("extra_ca_files = [\"{}\"]\n", file.display()),
        None => String::new(),
    };
    format!(
        "[net]\n{trust}[net.hosts]\n\"sandbox.test\" = \"127.0.0.1\"\n\
         [providers.http-sandbox]\nurls = [\"https://sandbox.test:{port}\", \"https://127.0.0.1:{port}\"]\n\
         config = {{ apiUrl = \"https://sandbox.test:{port}/v1\", apiKey = \"{KEY}\", command = \"{tether}\", args = [\"runtime\"] }}\n",
        port = service.port,
        tether = env!("CARGO_BIN_EXE_tether"),
    )
}

fn id_of(env: &Value) -> String {
    env["id"].as_str().expect("id").to_owned()
}

/// Waits until `id` runs with its runtime connected and the provider reported
/// how it came by its sandbox (`created`, `reused`, `recreated`).
async fn wait_running(server: &Server, id: &str, how: &str) -> Value {
    server
        .wait_env(id, &format!("running on a {how} sandbox"), |e| {
            e["status"] == "running"
                && e["runtime"]["connected"] == true
                && e["metadata"]["sandbox"] == how
        })
        .await
}

/// Creates a started `http-sandbox` environment and waits until its start failed.
async fn failed_env(server: &Server, name: &str, config: Value) -> Value {
    let body = json!({"name": name, "provider": "http-sandbox", "config": config, "start": true});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    server
        .wait_env(&id_of(&env), "in error", |e| e["status"] == "error")
        .await
}

#[tokio::test]
async fn one_sandbox_per_environment_kept_across_host_restarts_and_deleted_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::start(dir.path(), 0);
    write_config(dir.path(), &grant(&service, KEY));
    let server = Server::start(dir.path());

    let env = server
        .running_env("remote", "http-sandbox", json!({}))
        .await;
    let id = id_of(&env);
    assert_eq!(env["metadata"]["sandbox"], "created", "{env}");
    let sandbox = service.only_sandbox().await;
    assert_eq!(env["resourceId"], sandbox["id"], "{env}");
    assert_eq!(service.list().await["created"], 1);
    assert_eq!(sandbox["processes"][0]["status"], "running", "{sandbox}");
    assert_eq!(sandbox["labels"]["tether.environmentId"], id.as_str());
    // The key is the operator's: not in the environment, the records or the log.
    assert!(env["config"].get("apiKey").is_none(), "{env}");
    let records = server.records().to_string();
    assert!(!records.contains(KEY), "the API key was persisted");
    let (_, provider) = server
        .call("GET", "/api/v1/providers/http-sandbox", None)
        .await;
    assert!(!provider.to_string().contains(KEY), "{provider}");
    assert!(
        (provider["operatorConfigKeys"]
            .as_array()
            .expect("keys")
            .iter())
        .any(|k| k == "apiKey"),
        "{provider}"
    );

    // A clean host restart: the same sandbox, a new runtime in it.
    server.stop();
    let server = Server::start(dir.path());
    let env = wait_running(&server, &id, "reused").await;
    assert_eq!(env["resourceId"], sandbox["id"]);

    // A crash: the runtime left behind is replaced, and still no second sandbox.
    server.kill();
    let server = Server::start(dir.path());
    let env = wait_running(&server, &id, "reused").await;
    assert_eq!(env["resourceId"], sandbox["id"]);
    let list = service.list().await;
    assert_eq!(list["created"], 1, "{list}");
    let processes = service.only_sandbox().await["processes"].clone();
    assert_eq!(processes.as_array().map(Vec::len), Some(1), "{processes}");
    assert_eq!(processes[0]["id"], env["metadata"]["processId"]);
    assert!(!server.log().contains(KEY), "the API key was logged");

    // Deleting the running environment deletes its sandbox.
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert!(status.is_success(), "{status}");
    let list = service.list().await;
    assert_eq!(list["sandboxes"], json!([]), "{list}");
    assert_eq!(list["deleted"], 1, "{list}");
    server.stop();
    service.stop();
}

#[tokio::test]
async fn a_lost_sandbox_is_recreated_and_a_stopped_environment_deletes_its_sandbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::start(dir.path(), 0);
    write_config(dir.path(), &grant(&service, KEY));
    let server = Server::start(dir.path());
    let env = server.running_env("lost", "http-sandbox", json!({})).await;
    let id = id_of(&env);
    let first = env["resourceId"].as_str().expect("resource").to_owned();

    // Deleted behind the host's back while the environment is stopped.
    server.stop_env(&id).await;
    let (status, _) = service
        .call(reqwest::Method::DELETE, &format!("/v1/sandboxes/{first}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    server
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    let env = wait_running(&server, &id, "recreated").await;
    let second = env["resourceId"].as_str().expect("resource").to_owned();
    assert_ne!(second, first);
    assert_eq!(env["metadata"]["recreated"], "true", "{env}");
    assert_eq!(env["metadata"]["previousSandboxId"], first.as_str());
    assert_eq!(service.only_sandbox().await["id"], second.as_str());
    assert_eq!(service.list().await["created"], 2);
    let record = server.records()["environments"][0].clone();
    assert_eq!(
        record["providerState"]["recreatedFrom"],
        first.as_str(),
        "{record}"
    );
    assert!(
        server.log().contains(&format!("sandbox {first} is gone")),
        "the log says the sandbox was recreated"
    );

    // The service restarts and has lost every sandbox; the next start recreates.
    server.stop();
    let port = service.port;
    service.stop();
    let service = Service::start(dir.path(), port);
    let server = Server::start(dir.path());
    let env = wait_running(&server, &id, "recreated").await;
    assert_eq!(env["metadata"]["previousSandboxId"], second.as_str());
    let third = service.only_sandbox().await;
    assert_eq!(env["resourceId"], third["id"]);

    // Deleting a stopped environment still deletes its sandbox (a fresh instance).
    server.stop_env(&id).await;
    assert_eq!(
        service.only_sandbox().await["processes"],
        json!([]),
        "stop stops the runtime and keeps the sandbox"
    );
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert!(status.is_success(), "{status}");
    let list = service.list().await;
    assert_eq!(list["sandboxes"], json!([]), "{list}");
    assert!(
        !service
            .root
            .join(third["id"].as_str().expect("id"))
            .exists(),
        "the sandbox directory is gone"
    );
    server.stop();
    service.stop();
}

#[tokio::test]
async fn a_wrong_key_and_an_ungranted_url_are_clear_environment_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::start(dir.path(), 0);
    // Granted the service's address; the API settings come from each environment.
    write_config(
        dir.path(),
        &format!(
            "[providers.http-sandbox]\nurls = [\"http://127.0.0.1:{}\"]\n",
            service.port
        ),
    );
    let server = Server::start(dir.path());
    let env = failed_env(
        &server,
        "wrong-key",
        json!({"apiUrl": format!("{}/v1", service.base), "apiKey": "not-the-key"}),
    )
    .await;
    let error = env["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused the API key") && error.contains("401"),
        "{error}"
    );

    // Another port on loopback: not granted, refused before a packet is sent.
    let env = failed_env(
        &server,
        "ungranted",
        json!({"apiUrl": "http://127.0.0.1:9/v1", "apiKey": KEY}),
    )
    .await;
    let error = env["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("refused this destination"), "{error}");
    assert!(server.log().contains("outgoing HTTP denied"));

    assert_eq!(service.list().await["created"], 0, "no sandbox was created");
    server.stop();
    service.stop();
}

#[tokio::test]
async fn the_sandbox_service_speaks_clear_errors_reports_dead_processes_and_cleans_up() {
    use reqwest::Method;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::start(dir.path(), 0);
    let tether = env!("CARGO_BIN_EXE_tether");

    for key in [None, Some("wrong-key-123")] {
        let (status, body) = service
            .request(Method::GET, "/v1/sandboxes", key, None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let (status, body) = service.call(Method::GET, "/v1/sandboxes/sbx-nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    let (status, sandbox) = service
        .request(Method::POST, "/v1/sandboxes", Some(KEY), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sandbox}");
    assert_eq!(sandbox["status"], "running");
    let processes = format!(
        "/v1/sandboxes/{}/processes",
        sandbox["id"].as_str().expect("id")
    );
    let start = |body: Value| service.request(Method::POST, &processes, Some(KEY), Some(body));

    let (status, body) = start(json!({"command": "/bin/sh", "args": ["-c", "id"]})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = start(json!({"command": tether, "args": ["runtime", "--x"]})).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "only the exact allowed command: {body}"
    );
    let (status, body) = start(json!({"command": 7})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) =
        start(json!({"command": tether, "args": ["runtime"], "env": {"A": 1}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A runtime without its URL and token exits at once: the sandbox says so.
    let (status, dead) = start(json!({"command": tether, "args": ["runtime"]})).await;
    assert_eq!(status, StatusCode::CREATED, "{dead}");
    let path = format!("/v1/sandboxes/{}", sandbox["id"].as_str().expect("id"));
    let deadline = std::time::Instant::now() + WAIT;
    let exited = loop {
        let (_, now) = service.call(Method::GET, &path).await;
        if now["status"] == "exited" {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "never exited: {now}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(exited["processes"][0]["status"], "exited", "{exited}");
    assert!(
        exited["processes"][0]["exitCode"]
            .as_i64()
            .is_some_and(|c| c != 0)
    );

    // A runtime that keeps trying an address nobody serves, killed by SIGTERM.
    let env =
        json!({"TETHER_RUNTIME_URL": "ws://127.0.0.1:9/ws/runtime/x", "TETHER_RUNTIME_TOKEN": "t"});
    let (status, alive) = start(json!({"command": tether, "args": ["runtime"], "env": env})).await;
    assert_eq!(status, StatusCode::CREATED, "{alive}");
    let pid = alive["pid"].as_u64().expect("pid") as u32;
    let root = service.root.clone();
    service.stop();
    wait_gone(pid).await;
    let left = std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "sandbox directories are removed on shutdown");
}

#[tokio::test]
async fn a_running_environment_whose_sandbox_is_lost_comes_back_on_a_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::start(dir.path(), 0);
    // Fast health checks, so the loss is noticed quickly; the restart policy does the
    // rest, retrying for as long as the service takes to come back.
    let fast = "[health]\ninterval_ms = 100\ntimeout_ms = 5000\nfailure_threshold = 1\nruntime_grace_ms = 500\n\n[restart]\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000\nmax_retries = 1000\n\n";
    write_config(dir.path(), &format!("{fast}{}", grant(&service, KEY)));
    let server = Server::start(dir.path());
    let env = server
        .running_env("healing", "http-sandbox", json!({}))
        .await;
    let id = id_of(&env);
    let first = env["resourceId"].clone();

    // The service restarts and forgets every sandbox (and kills the runtime).
    let port = service.port;
    service.stop();
    let service = Service::start(dir.path(), port);
    let env = wait_running(&server, &id, "recreated").await;
    assert_eq!(env["metadata"]["previousSandboxId"], first, "{env}");
    assert_eq!(service.only_sandbox().await["id"], env["resourceId"]);
    assert!(env["restarts"].as_u64().is_some_and(|n| n >= 1), "{env}");
    server.stop();
    service.stop();
}

/// Issue 15: the same lifecycle against a sandbox API served over HTTPS, reached
/// through the broker's TLS with the operator's CA.
#[tokio::test]
async fn an_environment_runs_against_the_sandbox_service_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("sandbox test CA");
    let service = Service::start_tls(dir.path(), &ca.leaf(&["sandbox.test", "127.0.0.1"]), &ca);
    assert!(service.base.starts_with("https://"), "{}", service.base);
    let ca_file = ca.write(dir.path(), "ca.pem");
    write_config(dir.path(), &tls_grant(&service, Some(&ca_file)));
    let server = Server::start(dir.path());

    let env = server
        .running_env("secure", "http-sandbox", json!({}))
        .await;
    assert_eq!(env["metadata"]["sandbox"], "created", "{env}");
    let sandbox = service.only_sandbox().await;
    assert_eq!(env["resourceId"], sandbox["id"], "{env}");
    let id = id_of(&env);
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert!(status.is_success(), "{status}");
    let list = service.list().await;
    assert_eq!(list["sandboxes"], json!([]), "{list}");
    server.stop();

    // Without the operator's CA the same service is a TLS certificate error.
    write_config(dir.path(), &tls_grant(&service, None));
    let server = Server::start(dir.path());
    let env = failed_env(&server, "untrusted", json!({})).await;
    let error = env["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("TLS certificate was refused"), "{env}");
    assert!(server.log().contains("UnknownIssuer"), "{}", server.log());
    server.stop();
    service.stop();
}

/// A remote API on loopback that refuses every request with 401, quoting the key it
/// was sent (as some do: `invalid key sk-…`). Its port.
async fn api_quoting_the_key() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request).to_string();
                let key = (request.lines())
                    .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .and_then(|l| l.split_whitespace().last())
                    .unwrap_or_default()
                    .to_owned();
                // And as a URL's query would carry it, as an error naming the URL does.
                let in_query = (key.replace('/', "%2F").replace('+', "%2B")).replace('=', "%3D");
                let message = format!("invalid key {key} (?key={in_query})");
                let body = json!({"error": {"message": message}}).to_string();
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// Regression: what the operator's config hands a provider (an API key, an internal
/// service's URL) was shown to anyone who could read the environment once the
/// provider quoted it: `lastError` read "the sandbox API at http://… refused the API
/// key (401: invalid key sk-…)", and its log said as much. Each such value is now
/// shown as `<config:KEY>`, to every caller.
#[tokio::test]
async fn what_the_operator_hands_a_provider_is_not_shown_when_it_is_quoted_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = api_quoting_the_key().await;
    let key = "sk-operator/secret+0123=";
    let api_url = format!("http://127.0.0.1:{port}/v1");
    write_config(
        dir.path(),
        &format!(
            "[providers.http-sandbox]\nurls = [\"http://127.0.0.1:{port}\"]\n\
             config = {{ apiUrl = \"{api_url}\", apiKey = \"{key}\" }}\n"
        ),
    );
    let server = Server::start(dir.path());
    let env = failed_env(&server, "quoted", json!({})).await;
    let id = id_of(&env);
    let error = env["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("refused the API key"), "{error}");
    assert!(
        error.contains("<config:apiUrl>")
            && error.contains("invalid key <config:apiKey> (?key=<config:apiKey>)"),
        "{error}"
    );
    let (_, listed) = server.call("GET", "/api/v1/environments", None).await;
    let (_, one) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/environments/{id}/logs", server.base))
        .bearer_auth(crate::support::TOKEN)
        .send()
        .await
        .expect("logs");
    let log = response.text().await.expect("log text");
    assert!(log.contains("<config:apiKey>"), "{log}");
    let in_query = "sk-operator%2Fsecret%2B0123%3D";
    for shown in [listed.to_string(), one.to_string(), log] {
        assert!(!shown.contains(key) && !shown.contains(in_query), "{shown}");
        assert!(!shown.contains(&api_url), "{shown}");
    }
    server.stop();
}
