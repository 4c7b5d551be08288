//! What a connection's writer drains: its stream's relay frames and messages, taken a
//! batch at a time under the hub's lock and numbered outside it (by [`Hub::take`],
//! which the readers that write through to this connection use too).

use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::hub::{self, Hub, StreamKey};
use super::protocol::{self, CloseReason};
use super::send::SendHalf;

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
    send: Arc<SendHalf>,
    closed: Arc<OnceLock<CloseReason>>,
}

impl Outbox {
    pub(super) fn new(
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
            send: conn.send.clone(),
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
        self.send.woken()
    }

    /// The connection's sending half.
    pub(super) fn send(&self) -> &SendHalf {
        &self.send
    }

    /// Appends the next frames to write to `out`: relay frames first, then messages in
    /// order (numbered on a resumable connection, acknowledged as written otherwise).
    /// A plain connection's messages are the very texts the hub was given, not copies.
    pub fn take(&self, out: &mut Vec<Utf8Bytes>) -> Take {
        match self.hub.take(self.key, self.conn, self.resumable, out) {
            Take::Closed(_) => Take::Closed(self.closed.get().cloned()),
            took => took,
        }
    }

    /// Why the relay closed this connection, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.get().cloned()
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
