//! A connection's sending half, shared between its own writer task and the readers of
//! the other connections of its hub.
//!
//! A frame a reader routes to a peer whose writer is idle is written to that peer's
//! socket by the reader itself, in the task that read it ([`SendHalf::write_through`]):
//! no wake-up of the peer's task and no second trip through the scheduler per frame,
//! which is what nginx does too. Only what cannot go out at once (the writer is busy,
//! the socket is full, the connection is closing) is left to the writer task, which is
//! woken for it. Either way a frame is taken from the hub's window under this half's
//! lock and handed to the socket before the lock is let go, so frames reach the socket
//! in the order the window numbered them, and the window's bookkeeping (numbering,
//! acknowledgement of a plain peer, resume) is the one [`super::Outbox::take`] does.
//! Nobody ever waits on this lock across an `.await`: every write is a poll.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{Sink as _, SinkExt};

use tokio::sync::Notify;

use super::outbox::Take;
use crate::sync::MutexExt;

/// The socket's sending half.
pub(super) type Sink = SplitSink<WebSocket, Message>;

/// What the lock guards.
#[derive(Default)]
struct Slot {
    /// The socket, from when the connection is served until it closes.
    sink: Option<Sink>,
    /// Frames taken from the window and not yet handed to the socket.
    pending: VecDeque<Message>,
    /// Whether frames were handed to the socket and not yet flushed.
    unflushed: bool,
    /// Whether a write failed: the writer task ends the connection.
    broken: bool,
    /// Reused for every take, so a frame costs no allocation here.
    scratch: Vec<Utf8Bytes>,
}

impl Slot {
    /// Whether nothing is on its way out, so a new take may start.
    fn clear(&self) -> bool {
        self.pending.is_empty() && !self.unflushed && !self.broken
    }

    /// Takes the next frames with `take` into `pending`.
    fn fill(&mut self, take: impl FnOnce(&mut Vec<Utf8Bytes>) -> Take) -> Take {
        let took = take(&mut self.scratch);
        self.pending
            .extend(self.scratch.drain(..).map(Message::Text));
        took
    }

    /// Hands `pending` to the socket and flushes it, as far as it goes without waiting.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        if self.broken {
            return Poll::Ready(Err(axum::Error::new(std::io::Error::other(
                "an earlier write to this socket failed",
            ))));
        }
        let Some(sink) = self.sink.as_mut() else {
            // Closing: what is still pending will not be written.
            return Poll::Ready(Ok(()));
        };
        let result = loop {
            if self.pending.is_empty() {
                if !self.unflushed {
                    break Ok(());
                }
                match sink.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => break Err(e),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            match sink.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => break Err(e),
                Poll::Pending => return Poll::Pending,
            }
            let Some(frame) = self.pending.pop_front() else {
                continue;
            };
            if let Err(e) = std::pin::Pin::new(&mut *sink).start_send(frame) {
                break Err(e);
            }
            self.unflushed = true;
        };
        if result.is_err() {
            self.broken = true;
            self.pending.clear();
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
    pub(super) fn install(&self, sink: Sink) {
        self.lock().sink = Some(sink);
    }

    /// Takes the socket back to close it; nothing is written through it after this.
    pub(super) fn uninstall(&self) -> Option<Sink> {
        self.lock().sink.take()
    }

    /// For a reader that just queued frames for this connection: when its writer is
    /// idle, takes them with `take` and writes them now, without waiting; otherwise, or
    /// for whatever did not fit into the socket, wakes the writer task.
    pub(super) fn write_through(&self, take: impl FnOnce(&mut Vec<Utf8Bytes>) -> Take) {
        let done = match self.slot.try_lock() {
            Ok(mut slot) if slot.sink.is_some() && slot.clear() => match slot.fill(take) {
                Take::Frames => {
                    // The writer task is idle: nobody waits for the socket to take
                    // more, and if it cannot take it all now, the writer is woken below
                    // and registers itself on the next poll.
                    let mut cx = Context::from_waker(Waker::noop());
                    matches!(slot.poll_drain(&mut cx), Poll::Ready(Ok(())))
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
        self.lock().pending.push_back(frame);
    }

    /// Writes and flushes everything on its way out.
    pub(super) async fn drain(&self) -> Result<(), axum::Error> {
        std::future::poll_fn(|cx| self.lock().poll_drain(cx)).await
    }
}
