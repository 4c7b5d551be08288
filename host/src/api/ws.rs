//! WebSocket routes: `/ws/runtime/{id}` (runtime token) and `/ws/app/{id}` (API token).
//!
//! Credentials are checked before the upgrade, so a refused peer gets a plain HTTP
//! status (401, 404, 410) it can act on. After the upgrade a reader hands frames to
//! the session and a writer drains the session's outbox; whichever ends first ends
//! the other.

use std::collections::HashMap;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

use super::{ApiError, AppState, Authorized, MAX_MESSAGE_BYTES, bearer};
use crate::lifecycle::LifecycleError;
use crate::relay::Outbox;

/// The bearer token of a runtime's upgrade request.
#[derive(Debug)]
pub(crate) struct RuntimeToken(String);

impl axum::extract::FromRequestParts<AppState> for RuntimeToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        bearer(parts)
            .map(|t| RuntimeToken(t.to_owned()))
            .ok_or_else(|| ApiError::unauthorized("missing runtime token"))
    }
}

pub(crate) async fn runtime(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RuntimeToken(token): RuntimeToken,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // A stopped environment's runtime is told it is gone (410), so it exits.
    let (session, outbox) = s.manager.attach_runtime(&id, &token).map_err(|e| match e {
        LifecycleError::Conflict(_) => ApiError::from(e).with_status(StatusCode::GONE),
        other => other.into(),
    })?;
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| pump(socket, outbox, move |text| session.receive(text))))
}

pub(crate) async fn app(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let thread = query.get("thread").filter(|t| !t.is_empty()).cloned();
    let (session, outbox) = s.manager.attach_app(&id, thread)?;
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| pump(socket, outbox, move |text| session.receive(&text))))
}

/// Runs one connection until either side ends it.
async fn pump(socket: WebSocket, mut outbox: Outbox, on_text: impl Fn(String) + Send) {
    let (mut sink, mut stream) = socket.split();
    let writer = async {
        while let Some(text) = outbox.rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
        let frame = outbox.close_reason().map(|r| CloseFrame {
            code: r.code,
            reason: r.reason.into(),
        });
        let _ = sink.send(Message::Close(frame)).await;
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Text(text) => on_text(text.to_string()),
                // Some clients send JSON in binary frames; anything else is not ours.
                Message::Binary(bytes) => match String::from_utf8(bytes.to_vec()) {
                    Ok(text) => on_text(text),
                    Err(_) => tracing::debug!("non-UTF-8 binary frame ignored"),
                },
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}
