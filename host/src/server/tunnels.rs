//! Cluster mode: the tunnels other hosts open to this one (`cluster/tunnel/`) as a
//! listener axum serves like the TCP one, each connection with the address of the app
//! it carries.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::sync::mpsc;

use crate::cluster::{Accepted, TunnelStream};

/// Yields each tunnel another host opened to this one.
pub(crate) struct TunnelListener {
    accepted: mpsc::Receiver<Accepted>,
}

impl TunnelListener {
    /// Serves what `accepted` yields.
    pub(crate) fn new(accepted: mpsc::Receiver<Accepted>) -> Self {
        Self { accepted }
    }
}

impl axum::serve::Listener for TunnelListener {
    type Io = TunnelStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The cluster is shutting down: no more tunnels; the server's own
            // shutdown ends the serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
    }
}
