//! The TLS listener of `tether serve`: accepts TCP, runs each handshake in a task of
//! its own and hands finished connections to axum, which serves them like plain ones
//! (REST, app and runtime WebSockets alike).
//!
//! A handshake never holds up the accept loop, is bounded in time, and at most
//! [`MAX_HANDSHAKES`] run at once, so a client that opens connections and stalls
//! mid-handshake costs a task each, for a while, and nothing else. One address (IPv6:
//! its /64) may have at most [`MAX_HANDSHAKES_PER_ADDRESS`] of them in progress (or
//! `[server] max_connections_per_address`, if lower); past that its new connections
//! are closed at once: stalled handshakes from one client would otherwise take every
//! slot and hold the accept loop, so nobody else's connection would be taken until
//! theirs timed out, again and again. A failed handshake
//! (a client that does not trust the certificate, a scanner) is logged at debug level
//! only: it is the client's business and would otherwise flood the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::connections::{AddressSlot, PerAddress};

/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; the accept loop waits for a slot beyond that.
const MAX_HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one address, so one client cannot take them all.
const MAX_HANDSHAKES_PER_ADDRESS: usize = MAX_HANDSHAKES / 4;

/// A listener yielding TLS connections; dropping it stops the accept loop.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _stop: DropGuard,
}

impl TlsListener {
    /// Serves TLS with `config` on the bound `listener`; `per_address` is
    /// `[server] max_connections_per_address`.
    pub(crate) fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        per_address: Option<usize>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let acceptor = TlsAcceptor::from(config);
        let share = per_address.map_or(MAX_HANDSHAKES_PER_ADDRESS, |most| {
            most.min(MAX_HANDSHAKES_PER_ADDRESS)
        });
        tokio::spawn(accept_loop(listener, acceptor, tx, share, stop.clone()));
        Ok(Self {
            ready,
            local,
            _stop: stop.drop_guard(),
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    share: usize,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let by_address = PerAddress::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = AddressSlot::take(&by_address, peer.ip(), share) else {
            tracing::debug!(%peer, "too many TLS handshakes in progress from this address");
            continue;
        };
        // As on plain connections: small frames go out at once, and the handshake's
        // last flight is not held back behind an unacknowledged one.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let handshake = handshake.await;
            drop(address_slot);
            match handshake {
                Ok(Ok(tls)) => {
                    drop(slot);
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
