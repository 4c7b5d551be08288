//! The reference runtime (`tether runtime`): the process that runs inside an environment's
//! resource and connects back to the host over WebSocket at `TETHER_RUNTIME_URL`, presenting
//! `TETHER_RUNTIME_TOKEN` as a bearer token. It answers `echo`, runs `exec` commands in its
//! current directory (streaming their output), and reports anything else as an error. Lost
//! connections are retried with capped exponential backoff; a refused handshake (401, 403,
//! 404, 410) means the token is stale or the environment is gone, and a close with 4009 (a
//! newer runtime took over) or 4010 (stopped) is final too, so it stops with an error.
//! It speaks the relay's resume protocol (`docs/protocol.md`): one session per process, so a
//! reconnect gets exactly the messages it had not received, and re-sends exactly the frames
//! the host had not counted. It pings the host and treats a host silent for
//! [`HOST_IDLE_TIMEOUT`] as dead, reconnecting. A `wss://` URL is dialled over TLS,
//! trusting the system's roots plus `TETHER_CA_FILE` (see `client_tls`); a certificate
//! that does not match the URL's host is refused like any failed connection.

use std::{
    future::Future,
    pin::Pin,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Map, Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::Command,
    sync::{Notify, mpsc},
    task::JoinSet,
};
use tokio_tungstenite::{
    Connector, connect_async_tls_with_config,
    tungstenite::{
        self, Message, client::IntoClientRequest, handshake::client::Request, http,
        protocol::WebSocketConfig,
    },
};

const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Outgoing messages buffered (while disconnected or writing) before exec output waits.
const QUEUE: usize = 1024;
/// How often the runtime pings the host and acknowledges what it received.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// A host heard nothing from for this long is taken for dead.
pub(crate) const HOST_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

use crate::relay::READ_CHUNK;
use crate::relay::peer::{Incoming, PeerState};
use crate::sync::MutexExt;

/// Where the runtime connects and how it authenticates.
#[derive(Clone)]
pub(crate) struct RuntimeConfig {
    /// WebSocket URL of the host, e.g. `ws://127.0.0.1:2719/ws/runtime/<id>`.
    pub url: String,
    /// Runtime token of the current start generation, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// TLS settings for a `wss://` URL (`None` for `ws://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl RuntimeConfig {
    /// Reads `TETHER_RUNTIME_URL` and `TETHER_RUNTIME_TOKEN`; both must be set and non-empty.
    pub(crate) fn from_env() -> Result<Self, RuntimeError> {
        let var = |name: &'static str| match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
            _ => Err(RuntimeError::MissingVar(name)),
        };
        let url = var("TETHER_RUNTIME_URL")?;
        let tls = match url.starts_with("wss://") {
            true => Some(crate::client_tls::from_env()?),
            false => None,
        };
        Ok(Self {
            url,
            token: var("TETHER_RUNTIME_TOKEN")?,
            tls,
        })
    }
}

/// Why the runtime stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeError {
    /// A required environment variable is unset, empty or not valid Unicode.
    #[error("environment variable {0} must be set to a non-empty UTF-8 string")]
    MissingVar(&'static str),
    /// The URL cannot be used to connect; the message names the URL and the problem.
    #[error("invalid runtime URL {0}")]
    InvalidUrl(String),
    /// `TETHER_CA_FILE` or the TLS settings are unusable.
    #[error(transparent)]
    Tls(#[from] crate::client_tls::ClientTlsError),
    /// The token cannot be sent as an HTTP header value.
    #[error("the runtime token contains characters not allowed in an HTTP header")]
    InvalidToken,
    /// The host refused the handshake for good: the token is stale or the environment is gone.
    /// Carries the HTTP status of the refusal.
    #[error("the host refused the runtime (HTTP {0}): stale token or environment gone")]
    Refused(u16),
    /// The host closed the connection for good: 4009 (a newer runtime connection took
    /// over) or 4010 (the environment was stopped or deleted, or the host shuts down).
    #[error("the host closed the runtime for good (close {0}): replaced, or stopped")]
    Closed(u16),
}

/// Close codes after which a runtime does not connect again (`docs/protocol.md`):
/// reconnecting after 4009 would close the newer runtime in turn, for ever.
const FINAL_CLOSES: [u16; 2] = [4009, 4010];

/// Why a connection to the host ended.
#[derive(Debug)]
enum Ended {
    /// Closed with one of [`FINAL_CLOSES`]: do not connect again.
    Final(u16),
    /// Anything else: connect again and resume.
    Lost(String),
}

/// Runs the runtime until `shutdown` completes (then `Ok`) or the host refuses it for good.
/// Running `exec` children are killed before this returns.
pub(crate) async fn run(
    config: RuntimeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let session = format!(
        "rt-{}-{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    );
    let peer = Mutex::new(PeerState::new(session));
    request(&config, &peer)?; // reject a malformed URL or token up front, not forever
    let (tx, rx) = mpsc::channel(QUEUE);
    let (mut tasks, mut out) = (JoinSet::new(), Outbox { rx, peer });
    let result = connect_loop(&config, &tx, &mut out, &mut tasks, std::pin::pin!(shutdown)).await;
    tasks.shutdown().await; // aborting a task drops its `Child`, and `kill_on_drop` kills it
    result
}

/// The single queue of outgoing messages, and the resume state that keeps every message
/// sent until the host has counted it.
struct Outbox {
    rx: mpsc::Receiver<Value>,
    peer: Mutex<PeerState>,
}

fn lock(peer: &Mutex<PeerState>) -> std::sync::MutexGuard<'_, PeerState> {
    peer.locked()
}

fn request(config: &RuntimeConfig, peer: &Mutex<PeerState>) -> Result<Request, RuntimeError> {
    let invalid =
        |why: &dyn std::fmt::Display| RuntimeError::InvalidUrl(format!("{:?}: {why}", config.url));
    if !config.url.starts_with("ws://") && !config.url.starts_with("wss://") {
        return Err(invalid(&"only ws:// and wss:// URLs are supported"));
    }
    let sep = if config.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}{}", config.url, lock(peer).query());
    let req = url.as_str().into_client_request();
    let mut req = req.map_err(|e| invalid(&e))?;
    let auth = http::HeaderValue::from_str(&format!("Bearer {}", config.token))
        .map_err(|_| RuntimeError::InvalidToken)?;
    req.headers_mut().insert(http::header::AUTHORIZATION, auth);
    Ok(req)
}

async fn connect_loop(
    config: &RuntimeConfig,
    tx: &mpsc::Sender<Value>,
    out: &mut Outbox,
    tasks: &mut JoinSet<()>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<(), RuntimeError> {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let socket = WebSocketConfig::default().read_buffer_size(READ_CHUNK);
        let connector = (config.tls.clone()).map(Connector::Rustls);
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            // `true`: TCP_NODELAY, so exec output in several frames is not held back.
            connect_async_tls_with_config(
                request(config, &out.peer)?,
                Some(socket),
                true,
                connector,
            ),
        );
        let outcome = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(Ok((ws, _))) => {
                tracing::info!(url = %config.url, "runtime connected to host");
                let (since, (mut write, mut read)) = (Instant::now(), ws.split());
                let ended = match resume(&mut write, &mut read, &out.peer).await {
                    Ok(()) => serve(&mut write, read, tx, out, tasks, shutdown.as_mut()).await,
                    Err(reason) => Some(Ended::Lost(reason)),
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), write.close()).await;
                if since.elapsed() >= MAX_BACKOFF {
                    backoff = INITIAL_BACKOFF; // only a connection that held resets the backoff
                }
                match ended {
                    None => return Ok(()),
                    Some(Ended::Final(code)) => return Err(RuntimeError::Closed(code)),
                    Some(Ended::Lost(reason)) => {
                        tracing::warn!(%reason, "runtime connection to host lost");
                    }
                }
            }
            Ok(Err(tungstenite::Error::Http(resp)))
                if matches!(resp.status().as_u16(), 401 | 403 | 404 | 410) =>
            {
                return Err(RuntimeError::Refused(resp.status().as_u16()));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "runtime could not connect to host"),
            Err(_) => tracing::warn!("runtime connection attempt timed out"),
        }
        let wait = backoff.mul_f64(rand::rng().random_range(0.9..1.1));
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tracing::debug!(?wait, "reconnecting");
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Reads the host's `relayResumed` and sends again what the host did not count.
async fn resume<W, R>(write: &mut W, read: &mut R, peer: &Mutex<PeerState>) -> Result<(), String>
where
    W: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let greeting = loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, read.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => break text,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("connection closed".into()),
            Err(_) => return Err("no relayResumed from the host".into()),
        }
    };
    let resend = match lock(peer).on_frame(&greeting) {
        Incoming::Resumed(resend) => resend,
        other => return Err(format!("expected relayResumed, got {other:?}")),
    };
    tracing::info!(resent = resend.len(), "resumed the relay session");
    // Fitted again: the host's limit may be lower than when they were first sent.
    let limit = lock(peer).max_message_bytes();
    for frame in resend {
        write
            .feed(Message::text(fit(frame, limit)))
            .await
            .map_err(|e| e.to_string())?;
    }
    write.flush().await.map_err(|e| e.to_string())
}

/// Serves one connection; `None` on shutdown, otherwise why the connection ended.
async fn serve<W, R>(
    write: &mut W,
    mut read: R,
    tx: &mpsc::Sender<Value>,
    out: &mut Outbox,
    tasks: &mut JoinSet<()>,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<Ended>
where
    W: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let flush = Notify::new(); // the reader asks the writer to flush pongs or acknowledge
    let reader = async {
        loop {
            let next = tokio::time::timeout(HOST_IDLE_TIMEOUT, read.next()).await;
            let Ok(next) = next else {
                return Ended::Lost(
                    "host unresponsive: nothing heard within the idle timeout".to_owned(),
                );
            };
            let reply = match next {
                None => return Ended::Lost("connection closed".to_owned()),
                Some(Err(e)) => return Ended::Lost(e.to_string()),
                Some(Ok(Message::Text(text))) => {
                    let incoming = lock(&out.peer).on_frame(&text);
                    match incoming {
                        Incoming::Message(msg) => {
                            // The writer makes the acknowledgement: taking it here
                            // would mark it sent and the writer would find none due.
                            if lock(&out.peer).ack_due() {
                                flush.notify_one();
                            }
                            handle(msg, tx, tasks)
                        }
                        Incoming::Lost(from, to) => {
                            tracing::warn!(from, to, "the host could not replay these messages");
                            None
                        }
                        Incoming::Resumed(_) | Incoming::Nothing => None,
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    Some(json!({"type": "error", "error": "binary frames are not supported"}))
                }
                Some(Ok(Message::Ping(_))) => {
                    flush.notify_one();
                    None
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.map_or(1005, |f| f.code.into());
                    if FINAL_CLOSES.contains(&code) {
                        return Ended::Final(code);
                    }
                    return Ended::Lost(format!("closed by host: {code}"));
                }
                Some(Ok(_)) => None,
            };
            while tasks.try_join_next().is_some() {}
            if let Some(reply) = reply {
                let _ = tx.send(reply).await; // `run` holds the receiver, so this cannot fail
            }
        }
    };
    let writer = async {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        loop {
            let sent = tokio::select! {
                biased;
                _ = flush.notified() => {
                    // The reader marked an acknowledgement due; send the latest count.
                    let ack = lock(&out.peer).ack(true);
                    match ack {
                        Some(ack) => write.send(Message::text(ack)).await,
                        None => write.flush().await,
                    }
                }
                _ = ping.tick() => {
                    let ack = lock(&out.peer).ack(true);
                    let acked = match ack {
                        Some(ack) => write.feed(Message::text(ack)).await,
                        None => Ok(()),
                    };
                    match acked {
                        Ok(()) => write.send(Message::Ping(Default::default())).await,
                        Err(e) => Err(e),
                    }
                }
                msg = out.rx.recv() => match msg {
                    // Kept by the peer state until the host counts it, so a failed
                    // send is sent again after resuming.
                    Some(msg) => {
                        let frame = {
                            let mut peer = lock(&out.peer);
                            let frame = fit(msg.to_string(), peer.max_message_bytes());
                            peer.send(frame)
                        };
                        write.send(Message::text(frame)).await
                    }
                    None => Ok(()),
                }
            };
            if let Err(e) = sent {
                return e.to_string();
            }
        }
    };
    tokio::select! {
        _ = shutdown => None,
        ended = reader => Some(ended),
        reason = writer => Some(Ended::Lost(reason)),
    }
}

/// `frame`, or an `error` in its place when it is larger than the host takes (`limit`,
/// from `relayResumed`): the host would close the connection over it and, the session
/// resumed, the same frame would be sent again, for ever. The error keeps the frame's
/// `requestId` and `threadId` where they fit, so the request is still answered once.
fn fit(frame: String, limit: Option<usize>) -> String {
    let Some(limit) = limit.filter(|&limit| frame.len() > limit) else {
        return frame;
    };
    let parsed = serde_json::from_str::<Value>(&frame).unwrap_or(Value::Null);
    let kind = parsed.get("type").and_then(Value::as_str).unwrap_or("?");
    let error = format!(
        "the runtime's {} reply is {} bytes; the host takes at most {limit}",
        crate::untrusted::shown(kind, 40),
        frame.len(),
    );
    let answer = Ctx::of(&parsed).reply("error", json!({ "error": error }));
    let answer = answer.to_string();
    if answer.len() <= limit {
        return answer;
    }
    // The ids alone are too large to answer with (the limit is at least 1 KiB, so
    // this always fits): the thread's apps get an error without them.
    json!({"type": "error", "error": error}).to_string()
}

/// `requestId` and `threadId` of a request, copied into every reply (omitted when absent).
struct Ctx(Map<String, Value>);

impl Ctx {
    fn of(msg: &Value) -> Self {
        let ids = ["requestId", "threadId"].map(|k| Some((k.into(), msg.get(k)?.clone())));
        Self(ids.into_iter().flatten().collect())
    }

    fn reply(&self, kind: &str, fields: Value) -> Value {
        let mut out = Map::from_iter([("type".to_owned(), Value::from(kind))]);
        out.extend(self.0.clone());
        if let Value::Object(fields) = fields {
            out.extend(fields);
        }
        Value::Object(out)
    }
}

/// How much of an unparsable frame an error quotes.
const QUOTED_BYTES: usize = 200;

/// Handles one message; returns the immediate reply, if any (exec replies come later).
fn handle(msg: Value, tx: &mpsc::Sender<Value>, tasks: &mut JoinSet<()>) -> Option<Value> {
    if let Value::String(text) = &msg {
        // Quoted short: the text may be as large as the host allows, and escaped into
        // an error whole it made a reply up to twice that. The host closes the
        // connection over a frame past its limit, and the resumed session sent the
        // same reply again, for ever: one frame stopped the environment's runtime.
        let why = serde_json::from_str::<Value>(text)
            .err()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Some(json!({
            "type": "error",
            "error": format!("invalid JSON{why}: {}", crate::untrusted::shown(text, QUOTED_BYTES)),
        }));
    }
    let ctx = Ctx::of(&msg);
    let error = match msg.get("type").and_then(Value::as_str) {
        Some("echo") => return Some(ctx.reply("echoResponse", json!({"payload": msg["payload"]}))),
        Some("exec") => {
            tasks.spawn(exec(ctx, msg["command"].clone(), tx.clone()));
            return None;
        }
        // An agent start the provider passed on (it answered the app itself): the
        // reference runtime has no agent to start, so it only tells the thread it heard.
        Some("agentStart") => return Some(ctx.reply("agentStarted", json!({}))),
        Some(other) => format!("unknown message type: {other}"),
        None => "message has no string \"type\"".to_owned(),
    };
    Some(ctx.reply("error", json!({ "error": error })))
}

/// Runs one `exec` request to completion and reports its `execExit`.
async fn exec(ctx: Ctx, command: Value, tx: mpsc::Sender<Value>) {
    let exit = match run_command(&ctx, command, &tx).await {
        Ok(code) => json!({ "code": code }),
        Err(error) => json!({ "code": null, "error": error }),
    };
    let _ = tx.send(ctx.reply("execExit", exit)).await;
}

async fn run_command(
    ctx: &Ctx,
    command: Value,
    tx: &mpsc::Sender<Value>,
) -> Result<Option<i32>, String> {
    let command: Vec<String> =
        serde_json::from_value(command).map_err(|_| "command must be an array of strings")?;
    let (program, args) = command.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("failed to start {program:?}: {e}"))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    tokio::join!(
        pump(stdout, "stdout", ctx, tx),
        pump(stderr, "stderr", ctx, tx)
    );
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for {program:?}: {e}"))?;
    Ok(status.code()) // `None` when killed by a signal
}

/// Streams one output pipe as `execOutput` messages, never splitting a UTF-8 character.
async fn pump(
    src: Option<impl AsyncRead + Unpin>,
    stream: &str,
    ctx: &Ctx,
    tx: &mpsc::Sender<Value>,
) {
    let Some(mut src) = src else { return };
    let (mut buf, mut pending) = (vec![0u8; 8192], Vec::new());
    loop {
        let n = src.read(&mut buf).await.unwrap_or(0); // a read error ends the stream like EOF
        pending.extend_from_slice(&buf[..n]);
        // Hold back a character cut in half by this read, unless this is the end.
        let tail = pending.split_off(pending.len() - incomplete_utf8_tail(&pending, n == 0));
        if !pending.is_empty() {
            let data = String::from_utf8_lossy(&pending).into_owned();
            let msg = ctx.reply("execOutput", json!({ "stream": stream, "data": data }));
            let _ = tx.send(msg).await;
        }
        if n == 0 {
            return;
        }
        pending = tail;
    }
}

/// Length of an incomplete (so far valid) UTF-8 sequence at the end of `bytes`; 0 at `eof`.
fn incomplete_utf8_tail(bytes: &[u8], eof: bool) -> usize {
    let incomplete = |k: usize| match std::str::from_utf8(&bytes[bytes.len() - k..]) {
        Err(e) => e.valid_up_to() == 0 && e.error_len().is_none(),
        Ok(_) => false,
    };
    (1..=bytes.len().min(3))
        .find(|&k| !eof && incomplete(k))
        .unwrap_or(0)
}
