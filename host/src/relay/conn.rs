//! One peer's WebSocket, served by the relay from the upgrade to the close: a reader
//! hands frames to the connection's [`Inbound`] (which may write them straight to an
//! idle peer's socket, `relay/send.rs`), a writer drains its [`Outbox`] of what was
//! not written that way, acknowledges a resumable peer's frames and pings a quiet one;
//! whichever ends first ends the other. Size limits and the idle timeout come from the hub's
//! [`RelayConfig`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame as AxumCloseFrame, Message as AxumMessage, WebSocketUpgrade};
use axum::response::Response;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::error::RelayError;
use super::gate::Gated;
use super::hub::Hub;
use super::inbound::{AppInbound, AppThread, Inbound, ProviderRoute, RuntimeInbound};
use super::outbox::{Outbox, Take};
use super::protocol::{CLOSE_UNRESPONSIVE, CloseReason, READ_CHUNK, Resume, read_error_close};
use super::send::SendHalf;
use super::socket::{Reader, Socket, Upgrade};
use crate::config::RelayConfig;

/// How often a resumable connection's writer checks for frames to acknowledge.
const ACK_DELAY: Duration = Duration::from_millis(200);

/// An admitted peer, attached to its hub and ready to be served on its socket.
/// Dropping it unserved detaches it again.
#[derive(Debug)]
pub struct Connection {
    outbox: Outbox,
    inbound: Inbound,
    config: Arc<RelayConfig>,
    ends: Option<Ends>,
    held: Option<Held>,
}

/// What a connection keeps for as long as it lives (its user's place under
/// `[tenancy] max_connections`), dropped with it however it ends.
pub struct Held {
    _kept: Box<dyn Send + Sync>,
}

impl Held {
    /// Keeps `value` until this is dropped.
    pub fn new(value: impl Send + Sync + 'static) -> Self {
        Self {
            _kept: Box::new(value),
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held(..)")
    }
}

/// A signal from above that ends a connection with the reason it resolves to.
struct Ends(Pin<Box<dyn Future<Output = CloseReason> + Send>>);

impl std::fmt::Debug for Ends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ends(..)")
    }
}

impl Connection {
    /// Attaches the runtime of `hub` (replacing any earlier one). `on_detached` runs
    /// when this connection leaves the hub while it is still the current runtime.
    pub fn runtime(
        hub: &Arc<Hub>,
        resume: Option<Resume>,
        on_detached: impl FnOnce() + Send + Sync + 'static,
    ) -> Result<Self, RelayError> {
        let outbox = hub.attach_runtime(resume)?;
        let inbound = Inbound::Runtime(RuntimeInbound {
            hub: hub.clone(),
            conn: outbox.id(),
            on_detached: Some(Box::new(on_detached)),
        });
        Ok(Self {
            outbox,
            inbound,
            config: hub.config().clone(),
            ends: None,
            held: None,
        })
    }

    /// Attaches an app to `hub` on `thread`, resuming its session if `resume` names
    /// one; `greetings` are the first frames it gets, in order, and `provider` takes
    /// the message types the environment's provider answers.
    pub fn app(
        hub: &Arc<Hub>,
        thread: AppThread,
        resume: Option<Resume>,
        greetings: impl IntoIterator<Item = String>,
        provider: ProviderRoute,
    ) -> Result<Self, RelayError> {
        let AppThread { name, pinned } = thread;
        let outbox = hub.attach_app(name.clone(), resume, greetings)?;
        let inbound = Inbound::App(AppInbound {
            hub: hub.clone(),
            key: outbox.key(),
            conn: outbox.id(),
            thread_json: name.as_deref().map(|t| Value::from(t).to_string()),
            thread: name,
            pinned,
            provider,
        });
        Ok(Self {
            outbox,
            inbound,
            config: hub.config().clone(),
            ends: None,
            held: None,
        })
    }

    /// Ends the connection, with a close frame carrying the reason, when `signal`
    /// resolves (the credential that admitted the peer was revoked, say).
    pub fn ends_when(mut self, signal: impl Future<Output = CloseReason> + Send + 'static) -> Self {
        self.ends = Some(Ends(Box::pin(signal)));
        self
    }

    /// Keeps `held` until the connection ends, or is dropped unserved.
    pub fn holding(mut self, held: Held) -> Self {
        self.held = Some(held);
        self
    }

    /// Answers `upgrade` (with `protocol`, if the peer offered it) and serves the
    /// connection on it with the relay's limits.
    pub fn serve(self, upgrade: Upgrade, protocol: Option<&'static str>) -> Response {
        let answer = upgrade.answer(protocol);
        tokio::spawn(async move {
            match upgrade.on_upgrade.await {
                Ok(upgraded) => self.run(Socket::new(upgraded)).await,
                // Dropping the connection detaches it from its hub.
                Err(e) => tracing::debug!(error = %e, "an admitted peer's upgrade failed"),
            }
        });
        answer
    }

    /// Runs the connection until either side ends it.
    async fn run(self, socket: Socket) {
        let Self {
            outbox,
            inbound,
            config,
            ends,
            held,
        } = self;
        let socket = Arc::new(socket);
        let limits = WebSocketConfig::default()
            .read_buffer_size(READ_CHUNK)
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let reader = Reader::new(socket.clone(), limits);
        // From here on the readers of the hub's other connections may write to this
        // socket too (see `relay/send.rs`).
        let send = outbox.send();
        send.install(socket);
        let clock = Clock::new();
        let ended = async {
            match ends {
                Some(Ends(signal)) => signal.await,
                None => std::future::pending().await,
            }
        };
        // Nearly every wake-up of this task is a frame to read: the writer and the end
        // signal are polled only when they woke it themselves, and in a fixed order.
        let end = tokio::select! {
            biased;
            end = read(reader, &inbound, &outbox, &config, &clock) => end,
            end = Gated::new(write(send, &outbox, &config, &clock)) => end,
            reason = Gated::new(ended) => {
                // What the relay queued before the end (the status saying why, say)
                // reaches the peer ahead of the close.
                flush(send, &outbox, &config).await;
                End::Close(Some(reason))
            }
        };
        if let End::Close(reason) = end {
            let frame = reason.map(|r| CloseFrame {
                code: r.code.into(),
                reason: r.reason.into(),
            });
            // A peer that stopped reading never takes the close frame (nor what is
            // still queued before it): past the idle timeout the socket is dropped
            // rather than held, with its window, for as long as the peer lives.
            let _ = tokio::time::timeout(config.idle_timeout, send.close(frame)).await;
        }
        send.uninstall();
        // The inbound detaches from the hub as it drops, after the socket is done.
        drop(inbound);
        drop(held);
    }
}

/// Upgrades, sends `frame` (an `error` frame saying why and what to do), and closes
/// with `code`.
pub fn refuse_with(
    upgrade: WebSocketUpgrade,
    frame: String,
    code: u16,
    reason: String,
) -> Response {
    upgrade.on_upgrade(move |mut socket| async move {
        let _ = socket.send(AxumMessage::Text(frame.into())).await;
        let close = AxumCloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.send(AxumMessage::Close(Some(close))).await;
    })
}

/// Upgrades and closes at once with `code`: the peer learns why from the close frame.
pub fn refuse(upgrade: WebSocketUpgrade, code: u16, reason: String) -> Response {
    upgrade.on_upgrade(move |mut socket| async move {
        let frame = AxumCloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.send(AxumMessage::Close(Some(frame))).await;
    })
}

/// How a connection ended: with a close frame to send, or with the socket already gone.
enum End {
    Close(Option<CloseReason>),
    Gone,
}

/// When the peer was last heard from, shared by the reader (which sets it) and the
/// writer (which pings and gives up on a quiet peer).
struct Clock {
    start: Instant,
    /// Milliseconds since `start` when the peer was last heard from (any frame).
    heard: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            heard: AtomicU64::new(0),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    fn heard(&self) {
        self.heard
            .store(self.millis(Instant::now()), Ordering::Relaxed);
    }

    fn quiet_for(&self, now: Instant) -> Duration {
        let quiet = self
            .millis(now)
            .saturating_sub(self.heard.load(Ordering::Relaxed));
        Duration::from_millis(quiet)
    }
}

fn unresponsive(outbox: &Outbox) -> End {
    tracing::info!(env = %outbox.env_id(), conn = outbox.id(), "peer unresponsive: closing");
    End::Close(Some(CloseReason {
        code: CLOSE_UNRESPONSIVE,
        reason: "nothing heard or written within the idle timeout".into(),
    }))
}

/// Drains the outbox onto the socket, acknowledges and pings, until the relay closes
/// the connection or the peer stops answering. Frames the readers of other
/// connections wrote through (`relay/send.rs`) never reach this task; it is woken
/// only for what they could not write.
async fn write(send: &SendHalf, outbox: &Outbox, config: &RelayConfig, clock: &Clock) -> End {
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
        match send.refill(|out| outbox.take(out)) {
            Take::Closed(reason) => return End::Close(reason),
            Take::Frames => {
                // A peer that stops reading blocks the write; past the idle timeout
                // it counts as dead rather than holding its connection forever. The
                // relay may close it meanwhile (it fell a window behind, say): that is
                // acted on at once, not when the write gives up.
                let sending = tokio::time::timeout(config.idle_timeout, send.drain());
                tokio::pin!(sending);
                let sent = loop {
                    tokio::select! {
                        sent = &mut sending => break sent,
                        _ = send.woken().notified() => {
                            if let Some(reason) = outbox.close_reason() {
                                return End::Close(Some(reason));
                            }
                        }
                    }
                };
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return End::Gone,
                    Err(_) => return unresponsive(outbox),
                }
            }
            Take::Idle => {
                if let Some(ack) = outbox.pending_ack() {
                    send.push(Message::Text(ack.into()));
                    if send.drain().await.is_err() {
                        return End::Gone;
                    }
                    continue;
                }
                let deadline = due(next_ping, next_ack).into();
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                tokio::select! {
                    _ = send.woken().notified() => {}
                    _ = &mut timer => {}
                }
            }
        }
        let now = Instant::now();
        if now >= next_ack {
            next_ack = now + ACK_DELAY;
        }
        if now >= next_ping {
            if clock.quiet_for(now) >= config.idle_timeout {
                return unresponsive(outbox);
            }
            send.push(Message::Ping(Default::default()));
            if send.drain().await.is_err() {
                return End::Gone;
            }
            next_ping = now + config.ping_interval;
        }
    }
}

/// Writes what is on its way out and what the outbox holds now, within the idle
/// timeout; the connection is ending, so a failure only means the peer will not see it.
async fn flush(send: &SendHalf, outbox: &Outbox, config: &RelayConfig) {
    let writing = async {
        while let Take::Frames = send.refill(|out| outbox.take(out)) {
            send.drain().await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(config.idle_timeout, writing).await;
}

/// Hands the peer's frames to `inbound` until it closes, errs or sends too much, and
/// answers its pings.
async fn read(
    mut reader: Reader,
    inbound: &Inbound,
    outbox: &Outbox,
    config: &RelayConfig,
    clock: &Clock,
) -> End {
    loop {
        let msg = match reader.next().await {
            None => return End::Gone,
            Some(Err(e)) => {
                let Some(reason) = read_error_close(&e, config.max_message_bytes) else {
                    return End::Gone;
                };
                tracing::info!(env = %outbox.env_id(), conn = outbox.id(), code = reason.code, error = %e, "unreadable frame: closing");
                return End::Close(Some(reason));
            }
            Some(Ok(msg)) => msg,
        };
        clock.heard();
        match msg {
            Message::Text(text) => inbound.receive(text),
            // Some clients send JSON in binary frames; anything else is not ours.
            Message::Binary(bytes) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => inbound.receive(text),
                Err(_) => {
                    tracing::debug!(env = %outbox.env_id(), "non-UTF-8 binary frame dropped");
                    inbound.receive_binary();
                }
            },
            // Answered with a close frame of the same code (RFC 6455 §5.5.1), after
            // what is already queued, so the peer sees a clean close.
            Message::Close(frame) => {
                return End::Close(frame.map(|f| CloseReason {
                    code: f.code.into(),
                    reason: String::new(),
                }));
            }
            Message::Ping(data) => outbox.send().pong(data),
            Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}
