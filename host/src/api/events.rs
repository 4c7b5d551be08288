//! `GET /ws/events`: a WebSocket streaming environment changes to its caller — a
//! snapshot of every environment the caller's token reaches, then a frame per change
//! (`lifecycle/events.rs` publishes them and picks what each caller may see).
//!
//! Credentials as for `/ws/app` (bearer header, `tether.bearer.<token>`
//! subprotocol, or an events ticket), with the `envs:read` scope; refused before the
//! upgrade with a plain HTTP status. The stream is one-way: what the client sends is
//! read only for its close, bounded in size; a frame over the bound, not UTF-8 or
//! breaking the protocol is closed with 1009, 1007 or 1002, as on the relay's sockets.
//! A caller whose user holds their `[tenancy] max_connections` already is upgraded
//! and closed with 4016; an admitted stream counts against it until it ends.
//! The socket is closed with 4003 when the token stops working, and with 1001 when the
//! host shuts down; a client that does not take a frame within [`SEND_TIMEOUT`] is
//! dropped. As on the relay's sockets, the host pings every `[relay]
//! ping_interval_secs` and closes with 4011 a client it heard nothing from (not even
//! a pong) for `idle_timeout_secs`: a peer gone without a FIN (a dead laptop, a cut
//! network) would otherwise hold its socket and task for as long as the kernel keeps
//! retrying.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite;
use tracing::Instrument;

use super::error::ErrorBody;
use super::ws::SUBPROTOCOL;
use super::{ApiError, AppCaller, AppState, caller};
use crate::lifecycle::EventStream;
use crate::relay::{self, CLOSE_REVOKED, CLOSE_UNRESPONSIVE, CloseReason};
use crate::tenancy::{Opening, Principal, Scope};

/// Longest a frame may wait for the client to take it before the socket is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame a client may send (it has nothing to say but a close).
const MAX_INBOUND: usize = 4096;
/// Close code when the host shuts down ("going away").
const CLOSE_GOING_AWAY: u16 = 1001;

/// The upgrade: who is calling, with `envs:read`, subscribed before the upgrade so the
/// snapshot is the state at the moment it was accepted.
#[utoipa::path(
    get,
    path = "/ws/events",
    tag = "websockets",
    params(
        ("ticket" = Option<String>, Query, description = "A single-use events ticket from `POST /api/v1/tickets {\"events\": true}`, instead of a token."),
    ),
    responses(
        (status = 101, description = "Upgraded: a snapshot of every environment the caller reaches, then a frame per change (`docs/protocol.md`, \"The events stream\"), subprotocol `tether.v1`. A caller whose user holds `[tenancy] max_connections` on this host already is closed at once with 4016."),
        (status = 400, description = "A query parameter given twice (`invalid_request`), or an upgrade request missing a WebSocket header (plain text).", content_type = "text/plain", body = String),
        (status = 401, description = "No token or ticket, or one that is unknown, revoked, expired or used (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The token lacks `envs:read` (`missing_scope`).", body = ErrorBody),
        (status = 426, description = "Not an upgrade request a WebSocket can be made of (plain text).", content_type = "text/plain", body = String),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
    ),
    security(("bearer" = ["envs:read"])),
)]
pub(crate) async fn stream(
    caller: AppCaller,
    State(s): State<AppState>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let who = match caller {
        AppCaller::Token(who) => who,
        AppCaller::Ticket(secret, from) => {
            caller::redeem(&s, from, &secret, Opening::Events)?.principal
        }
    };
    who.require(Scope::EnvsRead)?;
    let upgrade = upgrade.protocols([SUBPROTOCOL]);
    let held = match s.manager.hold_connection(&who) {
        Ok(held) => held,
        Err(e) => return Ok(super::ws::at_user_limit(upgrade, e)),
    };
    let events = s.manager.watch_environments(&who);
    let liveness = s.manager.liveness();
    let span = tracing::info_span!("events", user = %who.user(), token = %who.token_id());
    Ok(upgrade
        .max_message_size(MAX_INBOUND)
        .max_frame_size(MAX_INBOUND)
        .on_upgrade(move |socket| {
            async move {
                serve(socket, who, events, liveness).await;
                // The user's place is given back once the stream is over, however.
                drop(held);
            }
            .instrument(span)
        }))
}

/// How the stream ended.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The client closed: its close frame is answered (RFC 6455 §5.5.1).
    ClosedByClient,
    /// The client left, or stopped taking frames: nothing more to send.
    Gone,
}

/// Streams `events` to the client, pinging it every `ping_every` and closing it with
/// 4011 once nothing was heard from it for `idle_timeout`.
async fn serve(
    mut socket: WebSocket,
    who: Principal,
    mut events: EventStream,
    (ping_every, idle_timeout): (Duration, Duration),
) {
    let mut ping = tokio::time::interval(ping_every);
    ping.reset();
    let mut heard = tokio::time::Instant::now();
    let end = loop {
        let outgoing = tokio::select! {
            frame = events.next() => match frame {
                Some(frame) => Message::Text(frame.into()),
                None => break End::Close(CLOSE_GOING_AWAY, "host shutting down".to_owned()),
            },
            why = who.ended() => break End::Close(CLOSE_REVOKED, why.to_owned()),
            _ = ping.tick() => {
                if heard.elapsed() >= idle_timeout {
                    tracing::info!("events client silent past the idle timeout: closing");
                    break End::Close(
                        CLOSE_UNRESPONSIVE,
                        "nothing heard within the idle timeout".to_owned(),
                    );
                }
                Message::Ping(Default::default())
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) => break End::ClosedByClient,
                None => break End::Gone,
                // Pongs, and anything else the client says, are not for us, but they
                // show it is there.
                Some(Ok(_)) => {
                    heard = tokio::time::Instant::now();
                    continue;
                }
                // A frame over the limit, not UTF-8 or breaking the protocol is closed
                // with its code, as on the relay's sockets; a broken connection is gone.
                Some(Err(e)) => match unreadable(e) {
                    Some(reason) => break End::Close(reason.code, reason.reason),
                    None => break End::Gone,
                },
            },
        };
        match tokio::time::timeout(SEND_TIMEOUT, socket.send(outgoing)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break End::Gone,
            Err(_) => {
                tracing::info!("events client took no frame for {SEND_TIMEOUT:?}; dropped");
                break End::Gone;
            }
        }
    };
    match end {
        End::Close(code, reason) => {
            tracing::debug!(code, %reason, "events stream closed");
            let close = CloseFrame {
                code,
                reason: reason.into(),
            };
            let closing = socket.send(Message::Close(Some(close)));
            let _ = tokio::time::timeout(SEND_TIMEOUT, closing).await;
        }
        // The reply tungstenite queued when it read the client's close goes out.
        End::ClosedByClient => {
            let _ = tokio::time::timeout(SEND_TIMEOUT, socket.flush()).await;
        }
        End::Gone => {}
    }
}

/// The close for a client frame that could not be read (1009, 1007 or 1002), or
/// `None` for a connection that broke.
fn unreadable(e: axum::Error) -> Option<CloseReason> {
    let e = e.into_inner().downcast::<tungstenite::Error>().ok()?;
    let close = relay::read_error_close(&e, MAX_INBOUND);
    tracing::debug!(error = %e, code = ?close.as_ref().map(|c| c.code), "events client sent an unreadable frame");
    close
}
