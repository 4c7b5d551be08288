//! A connection's sending half, shared between its own writer task and the readers of
//! the other connections of its hub.
//!
//! A frame a reader routes to a peer whose writer is idle is written to that peer's
//! socket by the reader itself, in the task that read it ([`SendHalf::write_through`]):
//! no wake-up of the peer's task and no second trip through the scheduler per frame,
//! which is what nginx does too. Only what cannot go out at once (the writer is busy,
//! the socket is full, the connection is closing) is left to the writer task, which is
//! woken for it. Either way a frame is taken from the hub's window under this half's
//! lock and put into its buffer, after what is already there, before the lock is let
//! go, so frames reach the socket in the order the window numbered them, and the window's bookkeeping (numbering,
//! acknowledgement of a plain peer, resume) is the one [`super::Outbox::take`] does.
//! Nobody ever waits on this lock across an `.await`: every write is a poll.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::outbox::Take;
use super::socket::{Socket, encode};
use crate::sync::MutexExt;

/// Encoded bytes past which no more frames are encoded until some are written.
const WRITE_BATCH: usize = 64 << 10;
/// The buffer a connection keeps between writes; one grown past it by a large
/// message is let go of once that message is written.
const KEEP: usize = 256 << 10;

/// What the lock guards.
#[derive(Default)]
struct Slot {
    /// The socket, from when the connection is served until it closes.
    socket: Option<Arc<Socket>>,
    /// What is on its way to the socket.
    out: Out,
    /// Whether a write failed: the writer task ends the connection.
    broken: bool,
    /// Whether the connection is closing: only its writer writes, and only the close.
    closing: bool,
    /// Reused for every take, so a frame costs no allocation here.
    scratch: Vec<Utf8Bytes>,
}

/// Frames on their way to the socket.
#[derive(Default)]
struct Out {
    /// Frames taken from the window and not yet encoded.
    pending: VecDeque<Message>,
    /// The answer to the peer's latest ping, written before `pending` (one at most:
    /// a peer that pings faster than it reads gets only the latest answered).
    pong: Option<Bytes>,
    /// Encoded frames; `bytes[sent..]` is not written yet, and may end a frame that
    /// is half written, which must be finished before anything else is written.
    bytes: Vec<u8>,
    sent: usize,
    /// Whether bytes were written and not yet flushed.
    unflushed: bool,
}

impl Out {
    /// Whether nothing is on its way out.
    fn is_empty(&self) -> bool {
        self.pending.is_empty()
            && self.pong.is_none()
            && self.sent == self.bytes.len()
            && !self.unflushed
    }

    /// Encodes the pong and pending frames until a batch's worth is unwritten.
    fn encode(&mut self) -> io::Result<()> {
        if let Some(pong) = self.pong.take() {
            encode(Message::Pong(pong), &mut self.bytes)?;
        }
        while self.bytes.len() - self.sent < WRITE_BATCH {
            let Some(frame) = self.pending.pop_front() else {
                break;
            };
            encode(frame, &mut self.bytes)?;
        }
        Ok(())
    }

    /// Counts `n` more bytes written.
    fn wrote(&mut self, n: usize) {
        self.sent += n;
        self.unflushed = true;
        if self.sent == self.bytes.len() {
            self.sent = 0;
            self.bytes.clear();
            if self.bytes.capacity() > KEEP {
                self.bytes = Vec::new();
            }
        }
    }

    /// Encodes, writes and flushes to `socket` as far as it goes without waiting.
    fn poll_write(
        &mut self,
        socket: &Socket,
        cx: &mut Context<'_>,
        wait: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            self.encode()?;
            if self.sent < self.bytes.len() {
                match socket.poll_write(cx, &self.bytes[self.sent..], wait) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => self.wrote(n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if self.unflushed {
                match socket.poll_flush(cx, wait) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl Slot {
    /// Whether nothing is on its way out, so a new take may start.
    fn clear(&self) -> bool {
        self.out.is_empty() && !self.broken && !self.closing
    }

    /// Takes the next frames with `take` into `pending`.
    fn fill(&mut self, take: impl FnOnce(&mut Vec<Utf8Bytes>) -> Take) -> Take {
        let took = take(&mut self.scratch);
        self.out
            .pending
            .extend(self.scratch.drain(..).map(Message::Text));
        took
    }

    /// Writes what is on its way out, as far as it goes without waiting. Without
    /// `wait`, a socket its reader is polling right now counts as full.
    fn poll_drain(&mut self, cx: &mut Context<'_>, wait: bool) -> Poll<io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(io::Error::other(
                "an earlier write to this socket failed",
            )));
        }
        let Some(socket) = self.socket.as_deref() else {
            // Closed: what is still pending will not be written.
            return Poll::Ready(Ok(()));
        };
        let result = std::task::ready!(self.out.poll_write(socket, cx, wait));
        if result.is_err() {
            self.broken = true;
            self.out = Out::default();
        }
        Poll::Ready(result)
    }
}

/// One connection's sending half: its socket, what is on its way out, and the wake-up
/// of its writer task.
#[derive(Default)]
pub(super) struct SendHalf {
    slot: Mutex<Slot>,
    wake: Notify,
}

impl std::fmt::Debug for SendHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendHalf(..)")
    }
}

impl SendHalf {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // Every critical section leaves the slot consistent, so a poisoned lock is usable.
        self.slot.locked()
    }

    /// Signalled whenever the writer task may have something to do.
    pub(super) fn woken(&self) -> &Notify {
        &self.wake
    }

    /// Wakes the writer task (it finds out what for).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Gives the half its socket, once the connection is served.
    pub(super) fn install(&self, socket: Arc<Socket>) {
        self.lock().socket = Some(socket);
    }

    /// Lets go of the socket; nothing is written to it after this.
    pub(super) fn uninstall(&self) {
        self.lock().socket = None;
    }
    /// For a reader that just queued frames for this connection: when its writer is
    /// idle, takes them with `take` and writes them now, without waiting; otherwise, or
    /// for whatever did not fit into the socket, wakes the writer task.
    pub(super) fn write_through(&self, take: impl FnOnce(&mut Vec<Utf8Bytes>) -> Take) {
        let done = match self.slot.try_lock() {
            Ok(mut slot) if slot.socket.is_some() && slot.clear() => match slot.fill(take) {
                Take::Frames => {
                    // The writer task is idle: nobody waits for the socket to take
                    // more, and if it cannot take it all now, the writer is woken below
                    // and registers itself on the next poll.
                    let mut cx = Context::from_waker(Waker::noop());
                    matches!(slot.poll_drain(&mut cx, false), Poll::Ready(Ok(())))
                }
                Take::Idle => true,
                Take::Closed(_) => false,
            },
            // Busy (the writer task or another reader is at it), closing, or a
            // poisoned lock: the writer task sees to it.
            _ => false,
        };
        if !done {
            self.wake();
        }
    }

    /// For the writer task: takes the next frames with `take`, unless frames are still
    /// on their way out, which must go first (then it says [`Take::Frames`]).
    pub(super) fn refill(&self, take: impl FnOnce(&mut Vec<Utf8Bytes>) -> Take) -> Take {
        let mut slot = self.lock();
        if !slot.clear() {
            return Take::Frames;
        }
        slot.fill(take)
    }

    /// Queues `frame` after whatever is on its way out (a ping, an acknowledgement).
    pub(super) fn push(&self, frame: Message) {
        self.lock().out.pending.push_back(frame);
    }

    /// Answers the peer's ping with `data` ahead of the frames still to be taken.
    pub(super) fn pong(&self, data: Bytes) {
        self.lock().out.pong = Some(data);
        self.wake();
    }

    /// Writes and flushes everything on its way out.
    pub(super) async fn drain(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.lock().poll_drain(cx, true)).await
    }

    /// Ends the connection with `frame`: what is half written is finished, what was
    /// not yet encoded is dropped, and nobody else writes from here on.
    pub(super) async fn close(&self, frame: Option<CloseFrame>) -> io::Result<()> {
        {
            let mut slot = self.lock();
            slot.closing = true;
            slot.out.pending.clear();
            slot.out.pong = None;
            slot.out.pending.push_back(Message::Close(frame));
        }
        self.drain().await
    }
}
