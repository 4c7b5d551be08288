//! The relay: one [`Hub`] per environment joining its runtime connection with any
//! number of app connections, routing by thread, numbering what it delivers so either
//! side can resume without loss inside a bounded window (see `docs/protocol.md`).
//!
//! - [`hub`] holds the streams and routes messages between them;
//! - [`window`] is one stream's bounded replay window;
//! - [`protocol`] is the relay's own frames, query fields and close codes;
//! - `scan` reads a frame's routing fields without building it;
//! - [`peer`] is the client side of resuming, for runtimes and apps;
//! - [`Outbox`] (here) is what a connection's writer drains.

pub mod hub;
pub mod peer;
pub mod protocol;
mod scan;
mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

pub use hub::{Hub, StreamKey};
pub use protocol::{
    CLOSE_GONE, CLOSE_REPLACED, CLOSE_TOO_BIG, CLOSE_TOO_MANY, CLOSE_TOO_SLOW, CLOSE_UNRESPONSIVE,
    Resume,
};

use crate::config::RelayConfig;
use crate::sync::MutexExt;

/// Messages handed to a writer per turn, so one busy stream cannot hold the hub long.
const BATCH: usize = 64;

/// Why the relay refused a message or a connection.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// The runtime is away and its window is full.
    #[error("the runtime is not connected and {0} messages are already waiting for it")]
    PendingFull(usize),
    /// The runtime is connected but its window is full.
    #[error("the runtime is not keeping up; message not delivered")]
    RuntimeBusy,
    /// The environment has its maximum number of live connections.
    #[error("the environment already has {0} connections")]
    TooManyConnections(usize),
    /// The hub is closed (environment deleted).
    #[error("the environment is gone")]
    Closed,
}

/// How a connection ends, when the relay ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Text for the peer.
    pub reason: String,
}

/// What [`Outbox::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Frames were appended to the buffer.
    Frames,
    /// Nothing to write now: wait on [`Outbox::wake`].
    Idle,
    /// The relay ended this connection (with a reason, unless it was simply dropped).
    Closed(Option<CloseReason>),
}

/// The sending side of one connection: its stream in the hub, drained by its writer.
#[derive(Debug)]
pub struct Outbox {
    hub: Arc<Hub>,
    key: StreamKey,
    conn: u64,
    resumable: bool,
    wake: Arc<Notify>,
    closed: Arc<OnceLock<CloseReason>>,
}

impl Outbox {
    fn new(
        hub: Arc<Hub>,
        key: StreamKey,
        conn: &hub::Conn,
        closed: Arc<OnceLock<CloseReason>>,
    ) -> Self {
        Self {
            hub,
            key,
            conn: conn.id,
            resumable: conn.resumable,
            wake: conn.wake.clone(),
            closed,
        }
    }

    /// This connection's id within its hub.
    pub fn id(&self) -> u64 {
        self.conn
    }

    /// The stream this connection drains.
    pub fn key(&self) -> StreamKey {
        self.key
    }

    /// Whether this connection asked to resume (its frames are numbered and acknowledged).
    pub fn resumable(&self) -> bool {
        self.resumable
    }

    /// Signalled whenever there may be something to take.
    pub fn wake(&self) -> &Notify {
        &self.wake
    }

    /// Appends the next frames to write to `out`: relay frames first, then messages in
    /// order (numbered on a resumable connection, acknowledged as written otherwise).
    /// A plain connection's messages are the very texts the hub was given, not copies.
    pub fn take(&self, out: &mut Vec<Utf8Bytes>) -> Take {
        let before = out.len();
        let (first, messages) = {
            let mut s = self.hub.lock();
            let Some(stream) = s.stream(self.key) else {
                return Take::Closed(self.closed.get().cloned());
            };
            let Some(conn) = stream.conn.as_mut().filter(|c| c.id == self.conn) else {
                return Take::Closed(self.closed.get().cloned());
            };
            out.extend(conn.control.drain(..).map(Utf8Bytes::from));
            let messages = out.len();
            let first = stream.window.after(conn.sent, BATCH, out);
            if out.len() > messages {
                conn.sent = first + (out.len() - messages) as u64 - 1;
            }
            if !self.resumable {
                stream.window.ack(conn.sent);
            }
            (first, messages)
        };
        if out.len() == before {
            return Take::Idle;
        }
        // Numbering happens outside the lock: it is the only per-message text work.
        if self.resumable {
            for (seq, text) in (first..).zip(&mut out[messages..]) {
                *text = protocol::with_seq(seq, text).into();
            }
        }
        Take::Frames
    }

    /// A `relayAck` for the peer if frames arrived since the last one.
    pub fn pending_ack(&self) -> Option<String> {
        if !self.resumable {
            return None;
        }
        let mut s = self.hub.lock();
        let stream = s.stream(self.key)?;
        let received = stream.received;
        let conn = stream.conn.as_mut().filter(|c| c.id == self.conn)?;
        (conn.ack_sent < received).then(|| {
            conn.ack_sent = received;
            protocol::ack_frame(received)
        })
    }

    /// The environment this connection belongs to.
    pub fn env_id(&self) -> &str {
        &self.hub.env_id
    }
}

/// Every hub, by environment id.
#[derive(Debug)]
pub struct Relay {
    config: Arc<RelayConfig>,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
}

impl Relay {
    /// A relay whose hubs use `config`.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config: Arc::new(config),
            hubs: Mutex::default(),
        }
    }

    /// The hub of `env_id`, created on first use.
    pub fn hub(&self, env_id: &str) -> Arc<Hub> {
        let mut hubs = self.hubs.locked();
        hubs.entry(env_id.to_owned())
            .or_insert_with(|| Arc::new(Hub::new(env_id.to_owned(), self.config.clone())))
            .clone()
    }

    /// Closes and forgets the hub of `env_id`.
    pub fn remove(&self, env_id: &str, reason: &str) {
        let hub = self.hubs.locked().remove(env_id);
        if let Some(hub) = hub {
            hub.close(reason);
        }
    }
}

#[cfg(test)]
mod tests;
