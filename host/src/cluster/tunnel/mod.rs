//! Tunnels: a byte stream between two hosts over NATS subjects, so an app connected
//! to one host reaches the relay of the host running its environment without the
//! hosts reaching each other's addresses (only NATS).
//!
//! The app's host (the dialer) asks the running host (the owner) on
//! `PREFIX.tunnel.HOST` to open tunnel `T` for environment `E`; from then on bytes
//! go to the owner on `PREFIX.relay.E.T.up` and back on `PREFIX.relay.E.T.down`. On
//! the owner the stream is one more connection to its own HTTP service (the app's
//! `/ws/app` upgrade, with the app's token), so the relay, its admission and every
//! guarantee are the ones a local app gets; the tunnel only has to be a faithful
//! stream:
//!
//! - **Order and loss:** each side numbers what it sends; a message out of turn (NATS
//!   core drops under pressure, or a reconnect lost some) resets the tunnel, and the
//!   app, closed with 1012, resumes its session on the relay (`docs/protocol.md`).
//! - **Backpressure:** at most [`WINDOW_MESSAGES`] messages and [`WINDOW_BYTES`]
//!   bytes are unacknowledged; the receiver acknowledges what it handed on, so a
//!   reader that stops reading stops its writer, on the other host, too.
//! - **Size:** bytes go in chunks of at most [`CHUNK`] (and below the server's
//!   payload limit), so a frame of any size the relay takes passes.
//! - **Liveness:** a side that heard nothing for the lease's time (heartbeats go every
//!   third of it) takes the other for dead, as the cluster takes a host whose lease
//!   lapsed, and resets.
//!
//! Messages: one kind byte, the sender's sequence number and the highest sequence
//! number it handed on in order (both big-endian `u64`), then the bytes of a `DATA`.
//!
//! Each side is a [`TunnelStream`] that the connection using it reads and writes
//! directly: no task of the tunnel's own carries a frame (`stream.rs`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ClusterError;
use crate::sync::MutexExt;
use stream::Link;
pub(crate) use stream::TunnelStream;

mod stream;

/// The most bytes in one message.
const CHUNK: usize = 64 << 10;
/// The most messages sent and not yet acknowledged.
const WINDOW_MESSAGES: u64 = 256;
/// The most bytes sent and not yet acknowledged.
const WINDOW_BYTES: usize = 1 << 20;
/// Unacknowledged messages that make the receiver acknowledge at once. With a
/// quarter of the window, the sender never waits on an acknowledgement not sent:
/// below both marks it has three quarters of its window left. Data going back
/// carries acknowledgements too.
const ACK_EVERY: u64 = WINDOW_MESSAGES / 4;
/// Unacknowledged bytes that make the receiver acknowledge at once.
const ACK_BYTES: usize = WINDOW_BYTES / 4;
/// How long the dialer waits for the owner to open a tunnel.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Tunnels one host serves at once; more are refused (the dialer answers 502).
const MAX_SERVED: usize = 16 << 10;
/// The longest tunnel id taken from another host.
const MAX_TUNNEL_ID: usize = 64;
/// The head of every message: kind, sequence number, acknowledgement.
const HEAD: usize = 17;

const DATA: u8 = 0;
const ACK: u8 = 1;
const FIN: u8 = 2;
const RESET: u8 = 3;

/// What the dialer asks of the owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Open {
    /// The tunnel's id, unique to the dialer.
    tunnel: String,
    /// The environment the app joins.
    environment: String,
    /// The app's address as the dialer saw it (throttling, the audit log).
    app: IpAddr,
}

/// A tunnel served here: the stream into this host's API, and the app's address.
pub(crate) type Accepted = (TunnelStream, SocketAddr);

/// Opens and serves tunnels for one host.
#[derive(Debug)]
pub(super) struct Tunnels {
    client: async_nats::Client,
    prefix: String,
    host_id: String,
    /// Silence after which the other side is taken for dead.
    dead_after: Duration,
    served: Arc<Semaphore>,
    /// The ids of the tunnels served here, so one id is never served twice.
    open: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Tunnels {
    pub(super) fn new(
        client: async_nats::Client,
        prefix: String,
        host_id: String,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            client,
            prefix,
            host_id,
            dead_after: lease_ttl.max(Duration::from_secs(2)),
            served: Arc::new(Semaphore::new(MAX_SERVED)),
            open: Arc::default(),
        }
    }

    fn open_subject(&self, host: &str) -> String {
        format!("{}.tunnel.{host}", self.prefix)
    }

    fn data_subject(&self, environment: &str, tunnel: &str, way: &str) -> String {
        let env = super::records::key_of(environment);
        format!("{}.relay.{env}.{tunnel}.{way}", self.prefix)
    }

    /// Opens a tunnel to host `host` for an app of `environment` at `app`: the
    /// returned stream reaches that host's HTTP service.
    pub(super) async fn dial(
        &self,
        host: &str,
        environment: &str,
        app: IpAddr,
        closing: &CancellationToken,
    ) -> Result<TunnelStream, ClusterError> {
        let tunnel = format!("{:032x}", rand::random::<u128>());
        let down = self.data_subject(environment, &tunnel, "down");
        let up = self.data_subject(environment, &tunnel, "up");
        // Listening before asking, so not even the owner's first bytes are missed.
        let incoming = (self.client.subscribe(down).await)
            .map_err(|e| ClusterError::Nats(format!("opening a tunnel: {e}")))?;
        let open = serde_json::to_vec(&Open {
            tunnel,
            environment: environment.to_owned(),
            app,
        })
        .map_err(|e| ClusterError::Nats(format!("opening a tunnel: {e}")))?;
        let asked = self.client.request(self.open_subject(host), open.into());
        let answer = match tokio::time::timeout(OPEN_TIMEOUT, asked).await {
            Err(_) => return Err(ClusterError::Nats(format!("host {host} did not answer"))),
            Ok(Err(e)) => {
                return Err(ClusterError::Nats(format!(
                    "host {host} cannot be reached over NATS: {e}"
                )));
            }
            Ok(Ok(answer)) => answer,
        };
        if answer.payload.as_ref() != b"ok" {
            let why = String::from_utf8_lossy(&answer.payload[..answer.payload.len().min(512)])
                .into_owned();
            return Err(ClusterError::Nats(format!("host {host} refused: {why}")));
        }
        Ok(self.open_stream(incoming, up, closing, environment).0)
    }

    /// Serves tunnels other hosts open to this one: each arrives on the returned
    /// channel as a stream into this host's HTTP service, with the app's address.
    pub(super) async fn listen(
        self: &Arc<Self>,
        closing: &CancellationToken,
    ) -> Result<mpsc::Receiver<Accepted>, ClusterError> {
        let mut requests = (self
            .client
            .subscribe(self.open_subject(&self.host_id))
            .await)
            .map_err(|e| ClusterError::Nats(format!("serving tunnels: {e}")))?;
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let stop = closing.clone();
        super::until(
            closing,
            async move {
                while let Some(request) = requests.next().await {
                    let Some(reply) = request.reply.clone() else {
                        continue;
                    };
                    let answer = match this.accept(&request.payload, &tx, &stop).await {
                        Ok(()) => Bytes::from_static(b"ok"),
                        Err(why) => {
                            tracing::debug!(%why, "cluster: refused a tunnel");
                            Bytes::from(why)
                        }
                    };
                    if let Err(e) = this.client.publish(reply, answer).await {
                        tracing::debug!(error = %e, "cluster: answering a tunnel request");
                    }
                }
            },
            "tunnels",
        );
        Ok(rx)
    }

    /// Opens the owner's side of a tunnel another host asked for.
    async fn accept(
        &self,
        payload: &[u8],
        served: &mpsc::Sender<Accepted>,
        closing: &CancellationToken,
    ) -> Result<(), String> {
        let open: Open =
            serde_json::from_slice(payload).map_err(|e| format!("bad tunnel request: {e}"))?;
        if open.tunnel.is_empty()
            || open.tunnel.len() > MAX_TUNNEL_ID
            || !open.tunnel.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err("bad tunnel id".into());
        }
        crate::names::validate("environment", &open.environment).map_err(|e| e.to_string())?;
        let permit = (self.served.clone().try_acquire_owned())
            .map_err(|_| "this host serves as many tunnels as it takes".to_owned())?;
        // A second tunnel with an open one's id would read the first one's bytes.
        let id = open.tunnel.clone();
        if !self.open.locked().insert(id.clone()) {
            return Err("a tunnel with this id is open".into());
        }
        let served_here = TunnelId(self.open.clone(), id);
        let up = self.data_subject(&open.environment, &open.tunnel, "up");
        let down = self.data_subject(&open.environment, &open.tunnel, "down");
        let incoming = (self.client.subscribe(up).await).map_err(|e| e.to_string())?;
        let (stream, ended) = self.open_stream(incoming, down, closing, &open.environment);
        served
            .send((stream, SocketAddr::new(open.app, 0)))
            .await
            .map_err(|_| "this host is shutting down".to_owned())?;
        tokio::spawn(async move {
            ended.cancelled().await;
            drop((permit, served_here));
        });
        Ok(())
    }

    /// This side of a tunnel whose messages go to `out` and come on `incoming`,
    /// with its keeper; the returned token fires when the tunnel is over.
    fn open_stream(
        &self,
        incoming: async_nats::Subscriber,
        out: String,
        closing: &CancellationToken,
        environment: &str,
    ) -> (TunnelStream, CancellationToken) {
        let done = closing.child_token();
        let span = tracing::debug_span!("tunnel", env = %environment);
        let link = Arc::new(Link::new(
            self.client.clone(),
            out,
            incoming,
            done.clone(),
            span.clone(),
        ));
        let chunk = CHUNK.min(
            self.client
                .server_info()
                .max_payload
                .saturating_sub(HEAD + 1024),
        );
        let chunk = chunk.max(1024);
        tokio::spawn(
            link.clone()
                .keep(self.dead_after / 3, self.dead_after)
                .instrument(span),
        );
        (TunnelStream::new(link, chunk), done)
    }
}

/// A tunnel id served here, let go of when dropped.
struct TunnelId(
    Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    String,
);

impl Drop for TunnelId {
    fn drop(&mut self) {
        self.0.locked().remove(&self.1);
    }
}
