//! A real `tether serve` on an ephemeral loopback port, and the clients tests use to
//! talk to it through the public contract only.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, connect_async, connect_async_tls_with_config,
};

/// Paths of the guest components built from `guest-providers/` (one constant each).
#[allow(dead_code)] // one constant per guest; not every test binary uses all
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// The API token every test server uses.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(30);

/// Makes a failing test end its output with where and why it failed, after the
/// backtrace and any server log its message carries: a CI report that keeps only
/// the start and the end of a long output still names the failure.
pub fn repeat_panics_last() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            // The first lines only (an assertion's values; not a whole server log).
            let message = info.payload_as_str().unwrap_or("(no message)");
            let head: Vec<String> = (message.lines().take(4))
                .map(|l| l.chars().take(300).collect())
                .collect();
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            eprintln!("\nthe test failed at {at}: {}", head.join("\n"));
        }));
    });
}

/// A running server process.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    http: reqwest::Client,
    /// What clients trust when the server serves TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Server {
    /// Starts `tether serve` with the `handoff` test provider dropped in and `config`
    /// as its `tether.toml`.
    pub fn start_with_handoff(data_dir: &Path, config: &str) -> Server {
        let providers = data_dir.join(".codebolt/providers");
        std::fs::create_dir_all(&providers).expect("providers dir");
        std::fs::copy(guests::HANDOFF, providers.join("handoff.wasm"))
            .expect("copying handoff.wasm");
        std::fs::write(data_dir.join("tether.toml"), config).expect("tether.toml");
        Server::start(data_dir)
    }

    /// Creates and starts a `handoff` environment; returns its id, runtime URL and token.
    pub async fn handoff_env(&self, name: &str) -> (String, String, String) {
        let body = serde_json::json!({"name": name, "provider": "handoff", "start": true});
        let (status, env) = self.call("POST", "/api/v1/environments", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        let id = env["id"].as_str().expect("id").to_owned();
        self.wait_env(&id, "running", |e| e["status"] == "running")
            .await;
        let (url, token) = self.handoff_runtime(name);
        (id, url, token)
    }

    /// The runtime URL and token the `handoff` environment `name` was last started
    /// with (its `runtime.json`).
    pub fn handoff_runtime(&self, name: &str) -> (String, String) {
        let file = self
            .data_dir
            .join(".codebolt/environments")
            .join(name)
            .join("runtime.json");
        let handoff: Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("runtime.json"))
                .expect("runtime.json parses");
        let field = |k: &str| handoff[k].as_str().expect("handoff field").to_owned();
        (field("url"), field("token"))
    }

    /// Starts `tether serve` on `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_as(data_dir, Some(TOKEN))
    }

    /// Starts `tether serve` with `extra` flags (`--tls-cert` …) and the environment
    /// variables in `envs`; over TLS the test's clients trust what `trust` trusts.
    pub fn start_with(
        data_dir: &Path,
        extra: &[&std::ffi::OsStr],
        envs: &[(&str, &std::ffi::OsStr)],
        trust: Arc<rustls::ClientConfig>,
    ) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--config")
            .arg(data_dir.join("tether.toml"))
            .args(extra)
            .env("RUST_LOG", "info")
            .env("TETHER_API_TOKEN", TOKEN);
        for (k, v) in envs {
            command.env(k, v);
        }
        let (child, base) = spawn_announced(
            command,
            &data_dir.join("server.log"),
            "tether listening on ",
        );
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*trust).clone())
            .build()
            .expect("https client");
        Server {
            child,
            base,
            data_dir: data_dir.to_owned(),
            http,
            tls: Some(trust),
        }
    }

    /// Starts `tether serve` on `data_dir` with `TETHER_API_TOKEN` set to `token`, or
    /// unset (the admin token then lives in `.codebolt/api-token`).
    pub fn start_as(data_dir: &Path, token: Option<&str>) -> Server {
        Server::start_args(data_dir, token, &[])
    }

    /// [`Server::start_as`] with `extra` flags after `serve` (`--cluster` …).
    pub fn start_args(data_dir: &Path, token: Option<&str>, extra: &[&str]) -> Server {
        Server::start_args_envs(data_dir, token, extra, &[])
    }

    /// [`Server::start`] with `cwd` as the server's working directory (the tests'
    /// own otherwise).
    pub fn start_in(data_dir: &Path, cwd: &Path) -> Server {
        repeat_panics_last();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .env("TETHER_API_TOKEN", TOKEN);
        Server::announced(command, data_dir)
    }

    /// [`Server::start_args`] with the environment variables in `envs`.
    pub fn start_args_envs(
        data_dir: &Path,
        token: Option<&str>,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Server {
        repeat_panics_last();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
        // No `--config`: `tether.toml` is found in the data directory (or not, and
        // one written there later is picked up live).
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info");
        match token {
            Some(token) => command.env("TETHER_API_TOKEN", token),
            None => command.env_remove("TETHER_API_TOKEN"),
        };
        Server::announced(command, data_dir)
    }

    /// Runs `command` (a plain-HTTP `tether serve` on `data_dir`) until it listens.
    fn announced(command: Command, data_dir: &Path) -> Server {
        let (child, base) = spawn_announced(
            command,
            &data_dir.join("server.log"),
            "tether listening on ",
        );
        Server {
            child,
            base,
            data_dir: data_dir.to_owned(),
            http: reqwest::Client::new(),
            tls: None,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running (it has not exited or panicked).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "server exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The value of an unlabelled sample in `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// `/metrics` as the admin reads it.
    pub async fn metrics(&self) -> String {
        let resp = (self.http.get(format!("{}/metrics", self.base)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.expect("metrics body")
    }

    /// An authorised request.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(method, path, body, Some(TOKEN)).await
    }

    /// A request with the given token (or none).
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = (self.http).request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let (status, text) = checked(method.as_str(), path, resp).await;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, json)
    }

    /// Polls an environment until `pred` holds, returning it.
    pub async fn wait_env(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, env) = self
                .call("GET", &format!("/api/v1/environments/{id}"), None)
                .await;
            if status == StatusCode::OK && pred(&env) {
                return env;
            }
            assert!(
                Instant::now() < deadline,
                "environment never became {what}; last: {env}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops environment `id` through the API and waits until it is `stopped`.
    pub async fn stop_env(&self, id: &str) -> Value {
        let (status, body) = self
            .call("POST", &format!("/api/v1/environments/{id}/stop"), None)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        // The reply says where it is going, not where it was.
        let heading = body["status"].as_str();
        assert!(matches!(heading, Some("stopping" | "stopped")), "{body}");
        self.wait_env(id, "stopped", |e| e["status"] == "stopped")
            .await
    }

    /// Creates a started environment and waits until its runtime is connected.
    pub async fn running_env(&self, name: &str, provider: &str, config: Value) -> Value {
        let (status, env) = self
            .call(
                "POST",
                "/api/v1/environments",
                Some(serde_json::json!({"name": name, "provider": provider, "config": config, "start": true})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        let id = env["id"].as_str().expect("id").to_owned();
        self.wait_env(&id, "running and connected", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await
    }

    /// The WebSocket URL of `path`.
    /// A user token made by the admin for `user` with `body`'s other fields (scopes,
    /// environments, ...); returns its secret and id.
    pub async fn user_token_with(&self, user: &str, mut body: Value) -> (String, String) {
        body["user"] = json!(user);
        let (status, issued) = self
            .call_with("POST", "/api/v1/tokens", Some(body), Some(TOKEN))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        (
            issued["token"].as_str().expect("token").to_owned(),
            issued["id"].as_str().expect("id").to_owned(),
        )
    }

    /// A user token with the default user scopes; returns its secret and id.
    pub async fn user_token(&self, user: &str) -> (String, String) {
        self.user_token_with(user, json!({})).await
    }

    /// Creates a `local-process` environment `name` as `token`'s user (started if
    /// `start`); the status and body of the answer.
    pub async fn create_as(&self, token: &str, name: &str, start: bool) -> (StatusCode, Value) {
        let body = json!({"name": name, "provider": "local-process", "start": start});
        self.call_with("POST", "/api/v1/environments", Some(body), Some(token))
            .await
    }

    /// Follows the log of `id` from now on as `token`; the open response (checked 200).
    pub async fn follow_logs(&self, id: &str, token: &str) -> reqwest::Response {
        let follow = reqwest::Client::new()
            .get(format!(
                "{}/api/v1/environments/{id}/logs?tail=0&follow=true",
                self.base
            ))
            .bearer_auth(token)
            .send()
            .await
            .expect("follow");
        assert_eq!(follow.status(), StatusCode::OK);
        follow
    }

    /// Creates a stopped `local-process` environment as `token`'s user; its id.
    pub async fn env_as(&self, token: &str, name: &str) -> String {
        let (status, env) = self.create_as(token, name, false).await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        env["id"].as_str().expect("id").to_owned()
    }

    pub fn ws_url(&self, path: &str) -> String {
        // `http://…` becomes `ws://…`, `https://…` `wss://…`.
        format!("{}{path}", self.base.replacen("http", "ws", 1))
    }

    /// Opens an app connection on `thread`.
    pub async fn app(&self, id: &str, thread: &str) -> Ws {
        Ws::connect_tls(
            &self.ws_url(&format!("/ws/app/{id}?thread={thread}")),
            Some(TOKEN),
            self.tls.clone(),
        )
        .await
        .expect("app connection")
    }

    /// Reads `.codebolt/environments.json` once the host has compacted its journal
    /// into it (mutations reach the file a moment after they are acknowledged): the
    /// journal is empty and no compaction is half-way.
    pub fn records(&self) -> Value {
        let dir = self.data_dir.join(".codebolt");
        let journal = dir.join("environments.journal");
        let deadline = Instant::now() + WAIT;
        while std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0)
            || dir.join("environments.journal.old").exists()
        {
            assert!(
                Instant::now() < deadline,
                "the records journal was never compacted\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let text =
            std::fs::read_to_string(dir.join("environments.json")).expect("environments.json");
        serde_json::from_str(&text).expect("environments.json parses")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a response to `method` `path` that a test sent itself, checks it against the
/// OpenAPI spec like [`Server::call`]'s, and returns its status and text.
pub async fn checked(method: &str, path: &str, resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let content_type = (resp.headers().get(reqwest::header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("body");
    crate::openapi::check(
        method,
        path,
        status.as_u16(),
        content_type.as_deref(),
        text.as_bytes(),
    );
    (status, text)
}

/// A WebSocket client speaking JSON text frames.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects with an optional bearer token; the HTTP status on refusal.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Ws, StatusCode> {
        Ws::connect_tls(url, token, None).await
    }

    /// Connects, over TLS trusting what `tls` trusts for a `wss://` URL.
    pub async fn connect_tls(
        url: &str,
        token: Option<&str>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Ws, StatusCode> {
        match Ws::try_connect(url, token, tls).await {
            Ok(ws) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                // A refused upgrade is an answer of the REST surface: it must be documented.
                let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}"));
                let content_type =
                    (resp.headers().get(http::header::CONTENT_TYPE)).and_then(|v| v.to_str().ok());
                let body = resp.body().as_deref().unwrap_or_default();
                crate::openapi::check(
                    "GET",
                    path.as_deref().unwrap_or("/"),
                    resp.status().as_u16(),
                    content_type,
                    body,
                );
                Err(StatusCode::from_u16(resp.status().as_u16()).expect("status"))
            }
            Err(e) => panic!("connecting {url}: {e}"),
        }
    }

    /// Connects, returning whatever error the attempt ended in.
    pub async fn try_connect(
        url: &str,
        token: Option<&str>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request().expect("request");
        if let Some(token) = token {
            let value = http::HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
            req.headers_mut().insert(http::header::AUTHORIZATION, value);
        }
        let connected = match tls {
            None => connect_async(req).await,
            Some(tls) => {
                connect_async_tls_with_config(req, None, false, Some(Connector::Rustls(tls))).await
            }
        };
        connected.map(|(stream, _)| Ws { stream })
    }

    /// Sends one JSON message.
    pub async fn send(&mut self, msg: Value) {
        self.stream
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("send");
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// Sends `msgs` as text frames written together (one flush), so they reach the
    /// host as one burst.
    pub async fn send_burst(&mut self, msgs: &[Value]) {
        for msg in msgs {
            let text = Message::Text(msg.to_string().into());
            self.stream.feed(text).await.expect("send");
        }
        self.stream.flush().await.expect("flush");
    }

    /// Sends one WebSocket message as it is (a ping, a fragment).
    pub async fn send_message(&mut self, msg: Message) {
        self.stream.send(msg).await.expect("send");
    }

    /// The next message of any kind as it came, pings and pongs included; None once
    /// the connection ended.
    pub async fn next_message(&mut self) -> Option<Message> {
        let frame = tokio::time::timeout(WAIT, self.stream.next())
            .await
            .expect("a frame in time");
        frame.and_then(Result::ok)
    }

    /// The next JSON message, skipping `environmentStatus` events.
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = self.next_any().await;
            if msg["type"] != "environmentStatus" {
                return msg;
            }
        }
    }

    /// The next JSON message of any type.
    pub async fn next_any(&mut self) -> Value {
        // One deadline for the message, not one per frame: pings alone never keep a
        // wait for data alive.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a message in time");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("JSON frame");
                }
                // The host pings quiet connections; tungstenite answers for us.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next JSON text frame, or None once the server closed the connection.
    pub async fn try_next(&mut self) -> Option<Value> {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).ok(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next text frame as it came, or None once the connection ended.
    pub async fn next_text(&mut self) -> Option<String> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame in time");
            match frame {
                Some(Ok(Message::Text(text))) => return Some(text.to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until the server closes, returning its close code (None without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        self.until_close().await.1
    }

    /// Reads until the server closes: the JSON frames that came first, and the close code.
    pub async fn until_close(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut frames = Vec::new();
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("the connection to end in time");
            match frame {
                Some(Ok(Message::Close(frame))) => return (frames, frame.map(|f| f.code.into())),
                None | Some(Err(_)) => return (frames, None),
                Some(Ok(Message::Text(text))) => frames.extend(serde_json::from_str(&text).ok()),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Sends `msg` and returns the first reply carrying its `requestId`.
    pub async fn request(&mut self, msg: Value) -> Value {
        let id = msg["requestId"].clone();
        self.send(msg).await;
        loop {
            let reply = self.next().await;
            if reply["requestId"] == id {
                return reply;
            }
        }
    }

    /// Runs `command` through the runtime's `exec` and returns its output and exit
    /// code; any other message in between fails the test.
    pub async fn exec(&mut self, request_id: &str, command: &[&str]) -> (String, Value) {
        self.send(serde_json::json!({"type": "exec", "requestId": request_id, "command": command}))
            .await;
        let mut output = String::new();
        loop {
            let msg = self.next().await;
            assert_eq!(
                msg["requestId"], request_id,
                "a reply to another request: {msg}"
            );
            match msg["type"].as_str() {
                Some("execOutput") => output.push_str(msg["data"].as_str().unwrap_or_default()),
                Some("execExit") => return (output, msg["code"].clone()),
                other => panic!("unexpected {other:?}: {msg}"),
            }
        }
    }
}

/// Spawns `command` with its stderr appended to `log` and waits until it prints a
/// line starting with `announcement`; returns the child and the rest of that line
/// (the address it listens on).
pub fn spawn_announced(mut command: Command, log: &Path, announcement: &str) -> (Child, String) {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .expect("spawning a server");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(announcement) {
                    return (child, rest.trim().to_owned());
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{announcement:?} never came; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            }
        }
    }
}

/// Runs plain git in `dir` as a test user, panicking with its output on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Writes `tether.toml` into `dir` (read by the next `Server::start` there).
pub fn write_config(dir: &Path, toml: &str) {
    std::fs::write(dir.join("tether.toml"), toml).expect("writing tether.toml");
}

/// The runtime pid a `local-process` environment reports in its metadata.
pub fn runtime_pid(env: &Value) -> u32 {
    env["metadata"]["pid"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no runtime pid in {env}"))
}

/// Whether process `pid` is gone (or a zombie nobody will run again).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Waits until `pid` is gone.
pub async fn wait_gone(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A binary of the examples crate (`tether-app`, `tether-sandbox-service`) beside
/// `tether`; built here when it is missing or older than `tether` (the test runs
/// without the rest of the workspace; `cargo test --workspace` builds them already).
pub fn example_bin(name: &str) -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let tether = PathBuf::from(env!("CARGO_BIN_EXE_tether"));
    let path = tether.with_file_name(name);
    let _once = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&path).is_none_or(|built| modified(&tether).is_some_and(|t| t > built)) {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "tether-examples", "--bins"])
            .status()
            .expect("running cargo");
        assert!(status.success(), "building the examples");
    }
    path
}

/// Upgrades `path` on the server at `base` (`http://host:port`) with the admin token
/// as a raw client that reads bytes and never answers a ping (a peer gone silent);
/// whether the host pinged, and the code of the close frame it then sent.
pub async fn silent_client_close(base: &str, path: &str) -> (bool, u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&addr).await.expect("connect");
    let upgrade = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {TOKEN}\r\n\r\n"
    );
    tcp.write_all(upgrade.as_bytes()).await.expect("upgrade");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let mut pinged = false;
    // Pings keep coming while the host waits: the bound is on the whole exchange.
    let deadline = tokio::time::Instant::now() + WAIT;
    let close_code = 'read: loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no close within {WAIT:?} (pinged: {pinged})"))
            .expect("read");
        assert!(n > 0, "connection ended without a close frame");
        bytes.extend_from_slice(&buf[..n]);
        // Skip the HTTP response, then walk the (unmasked) frames from the start.
        let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let mut at = head_end + 4;
        while at + 2 <= bytes.len() {
            let (opcode, short) = (bytes[at] & 0x0f, usize::from(bytes[at + 1] & 0x7f));
            let (header, len) = match short {
                126 if at + 4 <= bytes.len() => (
                    4,
                    usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                ),
                126 => break, // incomplete: read more
                127 if at + 10 <= bytes.len() => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&bytes[at + 2..at + 10]);
                    (10, usize::try_from(u64::from_be_bytes(n)).expect("length"))
                }
                127 => break, // incomplete: read more
                n => (2, n),
            };
            if at + header + len > bytes.len() {
                break; // incomplete: read more
            }
            let payload = &bytes[at + header..at + header + len];
            match opcode {
                0x9 => pinged = true,
                0x8 => break 'read u16::from_be_bytes([payload[0], payload[1]]),
                _ => {}
            }
            at += header + len;
        }
    };
    (pinged, close_code)
}

/// A TCP relay in front of a server whose connections a test can cut, as a network
/// would: every connection through it so far is dropped at once. It runs on a thread
/// of its own, so a test blocked on a child process does not stall it.
pub struct CutProxy {
    /// `http://127.0.0.1:PORT` of the proxy.
    pub base: String,
    cut: tokio::sync::watch::Sender<u64>,
}

impl CutProxy {
    /// Relays to `target` (`http://host:port`).
    pub fn start(target: &str) -> CutProxy {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let base = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let target = target.clone();
                    let mut cuts = cuts.clone();
                    cuts.mark_unchanged();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cuts.changed() => {}
                        }
                    });
                }
            });
        });
        CutProxy { base, cut }
    }

    /// Drops every connection made through the proxy so far.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// What a `/proc` scan finds under a data directory's workspaces: the processes
/// (spawn guards and runtimes) whose working directory is in
/// `.codebolt/environments/`, sorted by whether the host `host` started them.
#[derive(Debug, Default)]
pub struct WorkspaceProcs {
    /// Processes not descended from `host`: left behind by an earlier incarnation.
    pub orphans: Vec<(u32, String)>,
    /// Runtime processes (not guards) descended from `host`, by workspace.
    pub runtimes: std::collections::HashMap<PathBuf, Vec<u32>>,
}

/// Scans `/proc` for processes working in `data_dir`'s workspaces (see
/// [`WorkspaceProcs`]).
pub fn workspace_procs(data_dir: &Path, host: u32) -> WorkspaceProcs {
    let root = data_dir
        .join(".codebolt/environments")
        .canonicalize()
        .unwrap_or_else(|_| data_dir.join(".codebolt/environments"));
    let mut found = WorkspaceProcs::default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
            continue;
        };
        if !cwd.starts_with(&root) || process_gone(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        if !descends_from(pid, host) {
            found.orphans.push((pid, cmdline));
        } else if !cmdline.contains("__spawn-guard") {
            found.runtimes.entry(cwd).or_default().push(pid);
        }
    }
    found
}

/// Whether `pid`'s parent chain leads to `ancestor`.
pub fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        match parent {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// Directories under `data_dir`'s `.codebolt/environments/` that no record of
/// `records` (the records file's document) names.
pub fn unnamed_workspaces(data_dir: &Path, records: &Value) -> Vec<String> {
    let names: std::collections::HashSet<&str> = records["environments"]
        .as_array()
        .map(|l| l.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    std::fs::read_dir(data_dir.join(".codebolt/environments"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
                .filter(|n| !names.contains(n.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

/// Patches environment `id`'s `config.n` with a rising number from `from` until a
/// request fails (the host died): the id and the last number acknowledged, each
/// acknowledgement counted in `acks`.
pub async fn patch_until_refused(
    client: reqwest::Client,
    base: String,
    id: String,
    from: u64,
    acks: Arc<std::sync::atomic::AtomicUsize>,
) -> (String, Option<u64>) {
    let mut last = None;
    for n in from.. {
        let sent = client
            .patch(format!("{base}/api/v1/environments/{id}"))
            .bearer_auth(TOKEN)
            .json(&json!({"config": {"n": n}}))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::OK => {
                last = Some(n);
                acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            _ => break,
        }
    }
    (id, last)
}

/// Creates `local-process` environments named `{prefix}-0`, `{prefix}-1`, ... until a
/// create fails (the host died): the ids acknowledged.
pub async fn create_until_refused(
    client: reqwest::Client,
    base: String,
    prefix: String,
) -> Vec<String> {
    let mut made = Vec::new();
    for k in 0.. {
        let sent = client
            .post(format!("{base}/api/v1/environments"))
            .bearer_auth(TOKEN)
            .json(&json!({"name": format!("{prefix}-{k}"), "provider": "local-process"}))
            .send()
            .await;
        let Ok(resp) = sent else { break };
        if resp.status() != StatusCode::CREATED {
            break;
        }
        let Ok(body) = resp.json::<Value>().await else {
            break;
        };
        made.push(body["id"].as_str().unwrap_or_default().to_owned());
    }
    made
}

/// Deletes `ids` one after the other: those acknowledged, and the one in flight
/// when the host died.
pub async fn delete_all(
    client: &reqwest::Client,
    base: &str,
    ids: Vec<String>,
) -> (Vec<String>, Option<String>) {
    let mut gone = Vec::new();
    for id in ids {
        let sent = client
            .delete(format!("{base}/api/v1/environments/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => gone.push(id),
            Ok(_) => {}
            Err(_) => return (gone, Some(id)),
        }
    }
    (gone, None)
}
