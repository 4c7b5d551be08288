//! Cluster mode: an app connected to a host that does not run its environment is
//! bridged, frame for frame, to the `/ws/app` route of the host that does, with the
//! app's own credentials and query: over a tunnel through NATS (`cluster/tunnel.rs`),
//! or straight to that host's public URL. Every guarantee (thread routing, order, resume,
//! limits, close codes) is that host's relay's; the bridge only carries frames and
//! passes each close on as it came. When the other host goes away without a close,
//! the app is closed with [`CLOSE_HOST_GONE`] and reconnects (to any host).

use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self as tung, client::IntoClientRequest};

/// Close code for an app whose bridged host went away without closing (RFC 6455's
/// "service restart"): connect again, to any host.
pub const CLOSE_HOST_GONE: u16 = 1012;

/// Why the other host did not take the bridged app.
#[derive(Debug)]
pub struct BridgeRefused {
    /// The HTTP status the other host answered (502 when it could not be reached).
    pub status: StatusCode,
    /// Its answer's body, or why it could not be reached.
    pub body: String,
}

/// How the bridge reaches the host running the environment.
pub enum Upstream {
    /// Dial this `ws(s)://other-host/ws/app/ID?QUERY` URL.
    Direct(String),
    /// Speak WebSocket over this stream, already open to that host's API (a cluster
    /// tunnel), asking for this path and query.
    Stream(tokio::io::DuplexStream, String),
}

/// Opens a WebSocket to the host running the environment with the app's
/// `authorization` and `protocol`; on success answers the app's `upgrade` and
/// carries frames both ways until either side closes.
pub async fn bridge(
    upgrade: WebSocketUpgrade,
    upstream: Upstream,
    authorization: Option<HeaderValue>,
    protocol: &'static str,
    stall: std::time::Duration,
) -> Result<Response, BridgeRefused> {
    let unreachable = |why: String| BridgeRefused {
        status: StatusCode::BAD_GATEWAY,
        body: why,
    };
    let url = match &upstream {
        Upstream::Direct(url) => url.clone(),
        // Never dialled: the stream is the connection; the URL only names the path.
        Upstream::Stream(_, path) => format!("ws://tunnel{path}"),
    };
    let mut request = url
        .into_client_request()
        .map_err(|e| unreachable(format!("bad URL of the other host: {e}")))?;
    let headers = request.headers_mut();
    if let Some(auth) = authorization {
        headers.insert(axum::http::header::AUTHORIZATION, auth);
    }
    headers.insert(
        axum::http::header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    match upstream {
        Upstream::Direct(_) => {
            let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
                .await
                .map_err(refused)?;
            Ok(upgrade
                .protocols([protocol])
                .on_upgrade(move |app| carry(app, socket, stall)))
        }
        Upstream::Stream(stream, _) => {
            let (socket, _) = tokio_tungstenite::client_async(request, stream)
                .await
                .map_err(refused)?;
            Ok(upgrade
                .protocols([protocol])
                .on_upgrade(move |app| carry(app, socket, stall)))
        }
    }
}

/// The other host's answer to an upgrade it did not take, or why it was not reached.
fn refused(error: tung::Error) -> BridgeRefused {
    match error {
        tung::Error::Http(answer) => BridgeRefused {
            status: answer.status(),
            body: answer
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        },
        e => BridgeRefused {
            status: StatusCode::BAD_GATEWAY,
            body: format!("the host running it: {e}"),
        },
    }
}

/// Carries frames both ways until one side closes, then closes the other alike. A
/// side that takes no frame for `stall` is let go of, as the relay lets go of a peer
/// that stopped reading, so a stalled app holds no bridge, tunnel or window.
async fn carry<S>(
    app: WebSocket,
    upstream: tokio_tungstenite::WebSocketStream<S>,
    stall: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut app_tx, mut app_rx) = app.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    loop {
        tokio::select! {
            from_app = app_rx.next() => match from_app {
                Some(Ok(ws::Message::Close(frame))) => {
                    let frame = frame.map(|f| tung::protocol::CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let closing = up_tx.send(tung::Message::Close(frame));
                    let _ = tokio::time::timeout(stall, closing).await;
                    return;
                }
                Some(Ok(message)) => {
                    let sent = tokio::time::timeout(stall, up_tx.send(upward(message))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        let _ = tokio::time::timeout(stall, app_tx.send(host_gone())).await;
                        return;
                    }
                }
                // The app went away: so does its session's connection there.
                Some(Err(_)) | None => {
                    let _ = tokio::time::timeout(stall, up_tx.close()).await;
                    return;
                }
            },
            from_up = up_rx.next() => match from_up {
                Some(Ok(tung::Message::Close(frame))) => {
                    let frame = frame.map(|f| ws::CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let closing = app_tx.send(ws::Message::Close(frame));
                    let _ = tokio::time::timeout(stall, closing).await;
                    return;
                }
                Some(Ok(message)) => {
                    let Some(message) = downward(message) else { continue };
                    let sent = tokio::time::timeout(stall, app_tx.send(message)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        let _ = tokio::time::timeout(stall, up_tx.close()).await;
                        return;
                    }
                }
                Some(Err(_)) | None => {
                    let _ = tokio::time::timeout(stall, app_tx.send(host_gone())).await;
                    return;
                }
            },
        }
    }
}

fn host_gone() -> ws::Message {
    ws::Message::Close(Some(ws::CloseFrame {
        code: CLOSE_HOST_GONE,
        reason: "the host running the environment went away; connect again".into(),
    }))
}

/// An app's frame as the other host gets it.
fn upward(message: ws::Message) -> tung::Message {
    match message {
        ws::Message::Text(text) => tung::Message::text(text.as_str()),
        ws::Message::Binary(bytes) => tung::Message::Binary(bytes),
        ws::Message::Ping(bytes) => tung::Message::Ping(bytes),
        ws::Message::Pong(bytes) => tung::Message::Pong(bytes),
        ws::Message::Close(_) => tung::Message::Close(None),
    }
}

/// The other host's frame as the app gets it (raw frames never arrive here).
fn downward(message: tung::Message) -> Option<ws::Message> {
    Some(match message {
        tung::Message::Text(text) => ws::Message::Text(text.as_str().into()),
        tung::Message::Binary(bytes) => ws::Message::Binary(bytes),
        tung::Message::Ping(bytes) => ws::Message::Ping(bytes),
        tung::Message::Pong(bytes) => ws::Message::Pong(bytes),
        tung::Message::Close(_) | tung::Message::Frame(_) => return None,
    })
}
