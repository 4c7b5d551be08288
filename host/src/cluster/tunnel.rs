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
//! number it received in order (both big-endian `u64`), then the bytes of a `DATA`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ClusterError;
use crate::sync::MutexExt;

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
/// Bytes buffered in each direction between a tunnel and its HTTP connection.
const PIPE_BYTES: usize = 64 << 10;
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
pub(crate) type Accepted = (DuplexStream, SocketAddr);

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
    ) -> Result<DuplexStream, ClusterError> {
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
        let (stream, pipe) = tokio::io::duplex(PIPE_BYTES);
        self.pump(pipe, incoming, up, closing, environment);
        Ok(stream)
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
        let (stream, pipe) = tokio::io::duplex(PIPE_BYTES);
        served
            .send((stream, SocketAddr::new(open.app, 0)))
            .await
            .map_err(|_| "this host is shutting down".to_owned())?;
        let ended = self.pump(pipe, incoming, down, closing, &open.environment);
        tokio::spawn(async move {
            ended.cancelled().await;
            drop((permit, served_here));
        });
        Ok(())
    }

    /// Carries bytes between `pipe` and the other side (`incoming` from it, `out` to
    /// it) until both sides finished or either failed. The returned token fires then.
    fn pump(
        &self,
        pipe: DuplexStream,
        incoming: async_nats::Subscriber,
        out: String,
        closing: &CancellationToken,
        environment: &str,
    ) -> CancellationToken {
        let (read, write) = tokio::io::split(pipe);
        let link = Arc::new(Link {
            client: self.client.clone(),
            out: out.into(),
            received: AtomicU64::new(0),
            ack_sent: AtomicU64::new(0),
            fin_sent: AtomicBool::new(false),
            acked: watch::channel(0).0,
            done: closing.child_token(),
        });
        let chunk = CHUNK.min(
            self.client
                .server_info()
                .max_payload
                .saturating_sub(HEAD + 1024),
        );
        let chunk = chunk.max(1024);
        let span = tracing::debug_span!("tunnel", env = %environment);
        tokio::spawn(
            link.clone()
                .send_loop(read, chunk, self.dead_after / 3)
                .instrument(span.clone()),
        );
        tokio::spawn(
            link.clone()
                .receive_loop(incoming, write, self.dead_after)
                .instrument(span),
        );
        link.done.clone()
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

/// One side of an open tunnel, shared by its sending and receiving tasks.
struct Link {
    client: async_nats::Client,
    out: async_nats::Subject,
    /// The highest sequence number received in order.
    received: AtomicU64,
    /// The highest acknowledgement sent.
    ack_sent: AtomicU64,
    /// Whether this side said it has no more to send.
    fin_sent: AtomicBool,
    /// The highest of this side's sequence numbers the other side acknowledged.
    acked: watch::Sender<u64>,
    /// Fires when the tunnel is over, on either task's account.
    done: CancellationToken,
}

impl Link {
    async fn publish(&self, kind: u8, seq: u64, data: &[u8]) -> bool {
        let ack = self.received.load(Ordering::Acquire);
        let mut message = BytesMut::with_capacity(HEAD + data.len());
        message.put_u8(kind);
        message.put_u64(seq);
        message.put_u64(ack);
        message.put_slice(data);
        self.ack_sent.fetch_max(ack, Ordering::AcqRel);
        (self
            .client
            .publish(self.out.clone(), message.freeze())
            .await)
            .is_ok()
    }

    /// Reads what this side's HTTP connection writes and sends it, within the
    /// window; says it is alive when it has nothing to send.
    async fn send_loop(
        self: Arc<Self>,
        mut read: ReadHalf<DuplexStream>,
        chunk: usize,
        beat: Duration,
    ) {
        let mut acked = self.acked.subscribe();
        let mut in_flight: std::collections::VecDeque<(u64, usize)> = Default::default();
        let mut in_flight_bytes = 0usize;
        let mut seq = 0u64;
        let mut buf = vec![0u8; chunk];
        let mut heartbeat = tokio::time::interval(beat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent = Instant::now();
        let mut reading = true;
        loop {
            let upto = *acked.borrow_and_update();
            while in_flight.front().is_some_and(|(s, _)| *s <= upto) {
                if let Some((_, n)) = in_flight.pop_front() {
                    in_flight_bytes -= n;
                }
            }
            let room = reading
                && (in_flight.len() as u64) < WINDOW_MESSAGES
                && in_flight_bytes < WINDOW_BYTES;
            tokio::select! {
                biased;
                _ = self.done.cancelled() => return,
                read = read.read(&mut buf), if room => {
                    // A failed read ends this direction as the end of the stream does.
                    let n: usize = read.unwrap_or_default();
                    seq += 1;
                    let kind = if n == 0 { FIN } else { DATA };
                    if !self.publish(kind, seq, &buf[..n]).await {
                        self.reset().await;
                        return;
                    }
                    last_sent = Instant::now();
                    in_flight.push_back((seq, n));
                    in_flight_bytes += n;
                    if n == 0 {
                        reading = false;
                        self.fin_sent.store(true, Ordering::Release);
                    }
                }
                changed = acked.changed() => if changed.is_err() { return },
                _ = heartbeat.tick() => {
                    // Half a beat of slack: ticks and sends never line up exactly, and
                    // a beat skipped for a send just short of it would be a beat late.
                    if last_sent.elapsed() >= beat / 2 {
                        if !self.publish(ACK, 0, &[]).await {
                            self.reset().await;
                            return;
                        }
                        last_sent = Instant::now();
                    }
                }
            }
        }
    }

    /// Hands what the other side sends to this side's HTTP connection, in order,
    /// acknowledging it; resets on a gap, a reset, or silence.
    async fn receive_loop(
        self: Arc<Self>,
        mut incoming: async_nats::Subscriber,
        mut write: WriteHalf<DuplexStream>,
        dead_after: Duration,
    ) {
        let mut heard = Instant::now();
        // One timer, moved on only when it fires: nothing per message.
        let silence = tokio::time::sleep(dead_after);
        tokio::pin!(silence);
        let mut unacked_bytes = 0usize;
        let mut writing = true;
        let mut fin_received = false;
        loop {
            if fin_received && self.fin_sent.load(Ordering::Acquire) {
                // Both sides are done; the last acknowledgement lets the other go too.
                let _ = self.publish(ACK, 0, &[]).await;
                self.done.cancel();
                return;
            }
            let message = tokio::select! {
                biased;
                _ = self.done.cancelled() => return,
                message = incoming.next() => match message {
                    Some(message) => message,
                    None => return self.reset().await,
                },
                _ = &mut silence => {
                    if heard.elapsed() < dead_after {
                        silence.as_mut().reset(heard + dead_after);
                        continue;
                    }
                    tracing::info!("cluster: the other host of a tunnel went silent; closing it");
                    return self.reset().await;
                }
            };
            heard = Instant::now();
            let payload = message.payload;
            if payload.len() < HEAD {
                return self.reset().await;
            }
            let kind = payload[0];
            let seq = u64::from_be_bytes(payload[1..9].try_into().unwrap_or_default());
            let ack = u64::from_be_bytes(payload[9..17].try_into().unwrap_or_default());
            self.acked.send_if_modified(|upto| {
                let newer = ack > *upto;
                *upto = (*upto).max(ack);
                newer
            });
            match kind {
                ACK => continue,
                DATA | FIN => {}
                _ => {
                    // RESET, or a kind no host sends.
                    self.done.cancel();
                    return;
                }
            }
            if seq != self.received.load(Ordering::Acquire) + 1 {
                tracing::info!(
                    seq,
                    "cluster: a tunnel message was lost; closing the tunnel"
                );
                return self.reset().await;
            }
            if kind == FIN {
                fin_received = true;
                if writing {
                    let _ = write.shutdown().await;
                    writing = false;
                }
            } else if writing && write.write_all(&payload[HEAD..]).await.is_err() {
                // This side's connection is gone: what still comes is dropped, and
                // acknowledged so the other side's writer is never stuck on it.
                writing = false;
            }
            let received = self.received.fetch_add(1, Ordering::AcqRel) + 1;
            unacked_bytes += payload.len() - HEAD;
            if received - self.ack_sent.load(Ordering::Acquire) >= ACK_EVERY
                || unacked_bytes >= ACK_BYTES
                || kind == FIN
            {
                let _ = self.publish(ACK, 0, &[]).await;
                unacked_bytes = 0;
            }
        }
    }

    /// Ends the tunnel here and tells the other side.
    async fn reset(&self) {
        if !self.done.is_cancelled() {
            self.done.cancel();
            let _ = self.publish(RESET, 0, &[]).await;
        }
    }
}
