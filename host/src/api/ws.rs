//! WebSocket routes: `/ws/runtime/{id}` (runtime token) and `/ws/app/{id}` (API token,
//! as a bearer header or, for browsers, a `tether.bearer.<token>` subprotocol).
//!
//! Credentials are checked before the upgrade, so a refused peer gets a plain HTTP
//! status (401, 404, 410) it can act on; a full environment is upgraded and closed at
//! once with [`CLOSE_TOO_MANY`]. After the upgrade a reader hands frames to the session
//! and a writer drains the session's outbox and pings a quiet peer; whichever ends
//! first ends the other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;
use axum::http::request::Parts;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;

use super::{ApiError, AppState, Authorized, bearer};
use crate::config::RelayConfig;
use crate::lifecycle::LifecycleError;
use crate::relay::protocol::READ_CHUNK;
use crate::relay::{
    CLOSE_TOO_BIG, CLOSE_TOO_MANY, CLOSE_UNRESPONSIVE, CloseReason, Outbox, Resume, Take,
};

/// The subprotocol the host answers with; browsers must offer it with their token.
const SUBPROTOCOL: &str = "tether.v1";
/// Prefix of the subprotocol entry carrying the API token.
const TOKEN_PROTOCOL: &str = "tether.bearer.";
/// How often a resumable connection's writer checks for frames to acknowledge.
const ACK_DELAY: Duration = Duration::from_millis(200);

/// The bearer token of a runtime's upgrade request.
#[derive(Debug)]
pub(crate) struct RuntimeToken(String);

impl FromRequestParts<AppState> for RuntimeToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        bearer(parts)
            .map(|t| RuntimeToken(t.to_owned()))
            .ok_or_else(|| ApiError::unauthorized("missing runtime token"))
    }
}

/// The API token of an app's upgrade request: a bearer header, or a
/// `tether.bearer.<token>` entry in `Sec-WebSocket-Protocol` (browsers cannot set headers).
#[derive(Debug)]
pub(crate) struct AppToken;

impl FromRequestParts<AppState> for AppToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let offered = parts
            .headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL).map(str::to_owned));
        match offered {
            Some(token) if state.token.verify(&token) => Ok(AppToken),
            Some(_) => Err(ApiError::unauthorized("invalid API token")),
            None => Authorized::from_request_parts(parts, state)
                .await
                .map(|_| AppToken),
        }
    }
}

fn resume_of(query: &HashMap<String, String>) -> Result<Option<Resume>, ApiError> {
    let get = |k: &str| query.get(k).map(String::as_str);
    Resume::from_query(get("session"), get("resume")).map_err(ApiError::bad_request)
}

/// Upgrades and closes at once: the peer learns why from the close code.
fn refuse(upgrade: WebSocketUpgrade, code: u16, reason: String) -> Response {
    upgrade.on_upgrade(move |mut socket| async move {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    })
}

pub(crate) async fn runtime(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RuntimeToken(token): RuntimeToken,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let resume = resume_of(&query)?;
    let config = s.manager.relay_config().clone();
    // A stopped environment's runtime is told it is gone (410), so it exits.
    let (session, outbox) = match s.manager.attach_runtime(&id, &token, resume) {
        Ok(attached) => attached,
        Err(LifecycleError::TooManyConnections(why)) => {
            return Ok(refuse(upgrade, CLOSE_TOO_MANY, why));
        }
        Err(e @ LifecycleError::Conflict(_)) => {
            return Err(ApiError::from(e).with_status(StatusCode::GONE));
        }
        Err(other) => return Err(other.into()),
    };
    Ok(limit(upgrade, &config)
        .on_upgrade(move |socket| pump(socket, outbox, config, move |text| session.receive(text))))
}

pub(crate) async fn app(
    _: AppToken,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let thread = query.get("thread").filter(|t| !t.is_empty()).cloned();
    let resume = resume_of(&query)?;
    let config = s.manager.relay_config().clone();
    let (session, outbox) = match s.manager.attach_app(&id, thread, resume) {
        Ok(attached) => attached,
        Err(LifecycleError::TooManyConnections(why)) => {
            return Ok(refuse(upgrade, CLOSE_TOO_MANY, why));
        }
        Err(other) => return Err(other.into()),
    };
    Ok(limit(upgrade.protocols([SUBPROTOCOL]), &config)
        .on_upgrade(move |socket| pump(socket, outbox, config, move |text| session.receive(text))))
}

fn limit(upgrade: WebSocketUpgrade, config: &RelayConfig) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_CHUNK)
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_message_bytes)
}

/// Whether a read failed because the peer sent more than the size limit.
fn too_big(err: &axum::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|e| e.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

fn unresponsive(outbox: &Outbox) -> End {
    tracing::info!(env = %outbox.env_id(), conn = outbox.id(), "peer unresponsive: closing");
    End::Close(Some(CloseReason {
        code: CLOSE_UNRESPONSIVE,
        reason: "nothing heard or written within the idle timeout".into(),
    }))
}

/// How a connection ended: with a close frame to send, or with the socket already gone.
enum End {
    Close(Option<CloseReason>),
    Gone,
}

/// Runs one connection until either side ends it.
async fn pump(socket: WebSocket, outbox: Outbox, config: RelayConfig, on_text: impl Fn(Utf8Bytes)) {
    let (mut sink, mut stream) = socket.split();
    let start = Instant::now();
    // Milliseconds since `start` when the peer was last heard from (any frame).
    let heard = AtomicU64::new(0);
    let since =
        |at: Instant| u64::try_from(at.duration_since(start).as_millis()).unwrap_or(u64::MAX);
    let writer = async {
        let mut buf = Vec::new();
        let mut next_ping = Instant::now() + config.ping_interval;
        // A resumable peer's frames are acknowledged within ACK_DELAY of a quiet spell,
        // so its writer looks at least that often; a plain one only wakes to ping.
        let mut next_ack = Instant::now() + ACK_DELAY;
        let due = |next_ping: Instant, next_ack: Instant| {
            if outbox.resumable() {
                next_ping.min(next_ack)
            } else {
                next_ping
            }
        };
        // One timer for the connection's life, moved only when its deadline changes:
        // a fresh one per wait cost a timer-wheel insert and removal per frame.
        let timer = tokio::time::sleep_until(due(next_ping, next_ack).into());
        tokio::pin!(timer);
        loop {
            match outbox.take(&mut buf) {
                Take::Closed(reason) => return End::Close(reason),
                Take::Frames => {
                    // A peer that stops reading blocks the write; past the idle timeout
                    // it counts as dead rather than holding its connection forever.
                    let write = async {
                        for frame in buf.drain(..) {
                            sink.feed(Message::Text(frame)).await?;
                        }
                        sink.flush().await
                    };
                    match tokio::time::timeout(config.idle_timeout, write).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return End::Gone,
                        Err(_) => return unresponsive(&outbox),
                    }
                }
                Take::Idle => {
                    if let Some(ack) = outbox.pending_ack() {
                        if sink.send(Message::Text(ack.into())).await.is_err() {
                            return End::Gone;
                        }
                        continue;
                    }
                    let deadline = due(next_ping, next_ack).into();
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    tokio::select! {
                        _ = outbox.wake().notified() => {}
                        _ = &mut timer => {}
                    }
                }
            }
            let now = Instant::now();
            if now >= next_ack {
                next_ack = now + ACK_DELAY;
            }
            if now >= next_ping {
                let quiet = since(now).saturating_sub(heard.load(Ordering::Relaxed));
                if quiet >= u64::try_from(config.idle_timeout.as_millis()).unwrap_or(u64::MAX) {
                    return unresponsive(&outbox);
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return End::Gone;
                }
                next_ping = now + config.ping_interval;
            }
        }
    };
    let reader = async {
        loop {
            let msg = match stream.next().await {
                None => return End::Gone,
                Some(Err(e)) if too_big(&e) => {
                    tracing::info!(env = %outbox.env_id(), conn = outbox.id(), "message too big: closing");
                    return End::Close(Some(CloseReason {
                        code: CLOSE_TOO_BIG,
                        reason: format!(
                            "messages are limited to {} bytes",
                            config.max_message_bytes
                        ),
                    }));
                }
                Some(Err(_)) => return End::Gone,
                Some(Ok(msg)) => msg,
            };
            heard.store(since(Instant::now()), Ordering::Relaxed);
            match msg {
                Message::Text(text) => on_text(text),
                // Some clients send JSON in binary frames; anything else is not ours.
                Message::Binary(bytes) => match Utf8Bytes::try_from(bytes) {
                    Ok(text) => on_text(text),
                    Err(_) => {
                        tracing::debug!(env = %outbox.env_id(), "non-UTF-8 binary frame ignored")
                    }
                },
                Message::Close(_) => return End::Gone,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    };
    let end = tokio::select! {
        end = writer => end,
        end = reader => end,
    };
    if let End::Close(reason) = end {
        let frame = reason.map(|r| CloseFrame {
            code: r.code,
            reason: r.reason.into(),
        });
        let _ = sink.send(Message::Close(frame)).await;
    }
}
