//! Serving the router on a listener, one HTTP/1.1 connection per task, with hyper's
//! header read timeout in force: `axum::serve` gives hyper no timer, and without one
//! hyper cannot time anything out, so a peer that sends its headers a byte at a time,
//! or opens connections and sends nothing, would hold them (and their descriptors) for
//! as long as it liked. The same bound applies to a peer that takes nothing the host
//! writes ([`WriteDeadline`]) until the connection is upgraded to a WebSocket, and to
//! a request body from which nothing arrives, and, over `body_timeout`, to a whole
//! body ([`BodyDeadline`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use super::body_deadline::BodyDeadline;
use super::connections::Connections;
use super::forwarded::TrustedProxies;
use super::write_deadline::{Upgraded, WriteDeadline};

/// How long a peer may take: `header` for a request's headers, a pause in its body
/// and taking what the host writes; `body` for a whole request body.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub(super) header: Duration,
    pub(super) body: Duration,
}

/// Serves `router` on `listener` until `stop` fires, then lets every request in
/// progress finish (connections upgraded to WebSockets are the relay's by then) and
/// returns. A connection that takes longer than `header_timeout` to send a request's
/// headers, or kept alive, to begin its next request, or whose peer takes nothing the
/// host writes for that long, is closed, and a body paused that long (or not whole
/// within `timeouts.body`) is given up on; one past the limit of `connections` is refused.
pub(super) async fn serve<L>(
    mut listener: L,
    router: Router,
    stop: CancellationToken,
    timeouts: Timeouts,
    connections: Arc<Connections>,
    proxies: Arc<TrustedProxies>,
) where
    L: Listener<Addr = SocketAddr>,
{
    let header_timeout = timeouts.header;
    let tasks = TaskTracker::new();
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let io = match connections.admit(io, remote) {
            Ok(io) => io,
            Err((io, why)) => {
                connections.refuse(io, remote, why);
                continue;
            }
        };
        let upgraded = Upgraded::default();
        let io = WriteDeadline::new(io, header_timeout, upgraded.clone());
        let router = router.clone();
        let proxies = proxies.clone();
        // Each request learns its client's address, as `ConnectInfo` (throttling,
        // audit): its peer's, or behind a trusted proxy the one the proxy names.
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut request = request
                .map(|body| Body::new(BodyDeadline::new(body, header_timeout, timeouts.body)));
            let client = proxies.client_of(remote.ip(), request.headers());
            let client = if client == remote.ip() {
                remote
            } else {
                SocketAddr::new(client, 0)
            };
            request.extensions_mut().insert(ConnectInfo(client));
            let mut router = router.clone();
            let upgraded = upgraded.clone();
            async move {
                std::future::poll_fn(|cx| {
                    <Router as Service<Request<Body>>>::poll_ready(&mut router, cx)
                })
                .await?;
                let response = router.call(request).await?;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    upgraded.set();
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let stop = stop.clone();
        tasks.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "connection ended");
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}
