//! One side of an open tunnel as a byte stream (`AsyncRead + AsyncWrite`): the
//! connection that uses it (hyper's on the running host, the bridge on the app's
//! host) publishes each write itself and reads the subscription itself, so a frame
//! crosses no task of the tunnel's own on either host. A keeper task per tunnel only
//! wakes on its timer: it says this side is alive when it has sent nothing for a
//! while, takes the other side for dead after its silence, and drains what arrived
//! while nobody read, so the silence is measured on what arrived.
//!
//! Whoever polls (the reader, the writer or the keeper) takes what the subscription
//! holds: acknowledgements open the writer's window, data waits for the reader, in
//! order. The subscription wakes the tunnel's own waker, which wakes whichever of the
//! reader and the writer waits, so neither can take the other's wake-up.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ACK, ACK_BYTES, ACK_EVERY, DATA, FIN, HEAD, RESET, WINDOW_BYTES, WINDOW_MESSAGES};
use crate::sync::MutexExt;

/// A publish under way, resolving to whether NATS took it.
type Publish = Pin<Box<dyn Future<Output = bool> + Send>>;

/// One side of an open tunnel: what this host's connection reads and writes.
pub struct TunnelStream {
    link: Arc<Link>,
    /// The publish of the last message written, while it is not through, and how
    /// many of the writer's bytes it carries: a write is done when NATS has them.
    sending: Option<(Publish, usize)>,
    /// A write a flush saw through, for the writer's next call to report.
    written: Option<usize>,
    /// The part of the message being read that was not read yet, and its number.
    unread: Bytes,
    unread_seq: u64,
    /// This side's last sequence number.
    seq: u64,
    /// Messages sent and not acknowledged: their numbers and sizes.
    in_flight: VecDeque<(u64, usize)>,
    in_flight_bytes: usize,
    /// Bytes handed to the reader since the last acknowledgement.
    unacked_bytes: usize,
    /// The most bytes in one message.
    chunk: usize,
}

/// What the stream and its keeper share.
pub(super) struct Link {
    client: async_nats::Client,
    out: async_nats::Subject,
    inbox: std::sync::Mutex<Inbox>,
    waiting: Arc<Waiting>,
    /// What the subscription wakes: [`Waiting`].
    waker: Waker,
    /// The highest of the other side's numbers handed to the reader in order: what
    /// this side acknowledges.
    handed: AtomicU64,
    /// The highest acknowledgement sent.
    ack_sent: AtomicU64,
    /// The highest of this side's numbers the other side acknowledged.
    acked: AtomicU64,
    /// The highest of this side's numbers sent: the other side can acknowledge no more.
    sent: AtomicU64,
    /// Whether this side said it has no more to send.
    fin_sent: AtomicBool,
    /// When this side last published, in milliseconds since `born`.
    last_sent: AtomicU64,
    born: Instant,
    /// Fires when the tunnel is over: dropped, reset by either side, silent, or the
    /// cluster is closing.
    done: CancellationToken,
    /// The tunnel's span (with its environment), for what is logged from the
    /// connection's task.
    span: tracing::Span,
}

/// What came from the other side and was not read yet.
struct Inbox {
    incoming: async_nats::Subscriber,
    /// Data in order, with its sequence numbers.
    queue: VecDeque<(u64, Bytes)>,
    queued_bytes: usize,
    /// The highest sequence number received in order.
    received: u64,
    /// The other side's end of data, once it came.
    fin: Option<u64>,
    /// When anything last came.
    heard: Instant,
}

/// Who waits on the tunnel: the reader for data, the writer for room. Not the
/// [`Link`] itself, which owns the subscription that holds this waker.
#[derive(Default)]
struct Waiting {
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Wake for Waiting {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.reader.wake();
        self.writer.wake();
    }
}

impl Link {
    pub(super) fn new(
        client: async_nats::Client,
        out: String,
        incoming: async_nats::Subscriber,
        done: CancellationToken,
        span: tracing::Span,
    ) -> Self {
        let now = Instant::now();
        let waiting = Arc::new(Waiting::default());
        Self {
            client,
            out: out.into(),
            inbox: std::sync::Mutex::new(Inbox {
                incoming,
                queue: VecDeque::new(),
                queued_bytes: 0,
                received: 0,
                fin: None,
                heard: now,
            }),
            waker: Waker::from(waiting.clone()),
            waiting,
            handed: AtomicU64::new(0),
            ack_sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            fin_sent: AtomicBool::new(false),
            last_sent: AtomicU64::new(0),
            born: now,
            done,
            span,
        }
    }

    /// A message to the other side, with this side's acknowledgement; what resolves
    /// when NATS took it.
    fn publish(&self, kind: u8, seq: u64, data: &[u8]) -> Publish {
        let ack = self.handed.load(Ordering::Acquire);
        let mut message = BytesMut::with_capacity(HEAD + data.len());
        message.put_u8(kind);
        message.put_u64(seq);
        message.put_u64(ack);
        message.put_slice(data);
        // Before it goes: its acknowledgement may come back at once.
        self.sent.fetch_max(seq, Ordering::AcqRel);
        self.ack_sent.fetch_max(ack, Ordering::AcqRel);
        self.last_sent
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        let client = self.client.clone();
        let out = self.out.clone();
        Box::pin(async move { client.publish(out, message.freeze()).await.is_ok() })
    }

    /// Sends a message without waiting for it: an acknowledgement or a reset.
    fn send_now(&self, kind: u8) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.publish(kind, 0, &[]));
        }
    }

    /// Ends the tunnel here, telling the other side if `tell`; the reader and the
    /// writer see the end.
    fn end(&self, tell: bool) {
        if self.done.is_cancelled() {
            return;
        }
        self.done.cancel();
        self.waker.wake_by_ref();
        if tell {
            self.send_now(RESET);
        }
    }

    /// Ends the tunnel for a reason seen here.
    fn broken(&self, why: &str) {
        self.span
            .in_scope(|| tracing::info!("cluster: {why}; closing the tunnel"));
        self.end(true);
    }

    fn over(&self) -> bool {
        self.done.is_cancelled()
    }

    /// Takes what the subscription holds and wakes whoever waits for it. A message
    /// out of turn, a reset or more than the window ends the tunnel.
    fn take(&self, inbox: &mut Inbox) {
        let (mut data, mut acks) = (false, false);
        let mut cx = Context::from_waker(&self.waker);
        while !self.over() {
            let message = match Pin::new(&mut inbox.incoming).poll_next(&mut cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    self.broken("the tunnel's subscription ended");
                    break;
                }
                Poll::Ready(Some(message)) => message,
            };
            inbox.heard = Instant::now();
            let payload = message.payload;
            if payload.len() < HEAD {
                self.broken("a malformed tunnel message");
                break;
            }
            let number = |at: usize| {
                let mut be = [0u8; 8];
                be.copy_from_slice(&payload[at..at + 8]);
                u64::from_be_bytes(be)
            };
            let (kind, seq, ack) = (payload[0], number(1), number(9));
            // Acknowledging more than was sent would open the writer's window past
            // what the other side holds: not from the other host.
            if ack > self.sent.load(Ordering::Acquire) {
                self.broken("a tunnel message acknowledged what was never sent");
                break;
            }
            if self.acked.fetch_max(ack, Ordering::AcqRel) < ack {
                acks = true;
            }
            match kind {
                ACK => continue,
                DATA | FIN => {}
                RESET => {
                    self.end(false);
                    break;
                }
                _ => {
                    self.broken("a tunnel message of an unknown kind");
                    break;
                }
            }
            if seq != inbox.received + 1 || inbox.fin.is_some() {
                self.broken("a tunnel message was lost");
                break;
            }
            inbox.received = seq;
            if kind == FIN {
                inbox.fin = Some(seq);
            } else {
                inbox.queued_bytes += payload.len() - HEAD;
                inbox.queue.push_back((seq, payload.slice(HEAD..)));
            }
            data = true;
            // The other side sends within its window; more means it does not.
            if inbox.queue.len() as u64 > WINDOW_MESSAGES + 1
                || inbox.queued_bytes > WINDOW_BYTES + super::CHUNK
            {
                self.broken("the other side of a tunnel sent past its window");
                break;
            }
        }
        if data {
            self.waiting.reader.wake();
        }
        if acks {
            self.waiting.writer.wake();
        }
    }

    /// Takes what arrived while nobody read, so the other side's silence is judged
    /// on what came; how long that silence is.
    fn drain(&self) -> Duration {
        let mut inbox = self.inbox.locked();
        self.take(&mut inbox);
        inbox.heard.elapsed()
    }

    /// How long since this side last published.
    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_sent.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    /// Runs beside the stream until the tunnel is over: heartbeats every `beat` this
    /// side is quiet, the drain, and the end after `dead_after` of the other side's
    /// silence.
    pub(super) async fn keep(self: Arc<Self>, beat: Duration, dead_after: Duration) {
        let mut ticks = tokio::time::interval(beat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = self.done.cancelled() => {
                    // Ended by the cluster's closing too, which wakes nobody itself.
                    self.waker.wake_by_ref();
                    return;
                }
                _ = ticks.tick() => {}
            }
            if self.drain() >= dead_after {
                return self.broken("the other host of a tunnel went silent");
            }
            // Half a beat of slack: ticks and sends never line up exactly, and a beat
            // skipped for a send just short of it would be a beat late.
            if self.quiet_for() >= beat / 2 && !self.publish(ACK, 0, &[]).await {
                return self.broken("NATS refused a tunnel's heartbeat");
            }
        }
    }
}

impl TunnelStream {
    pub(super) fn new(link: Arc<Link>, chunk: usize) -> Self {
        Self {
            link,
            sending: None,
            written: None,
            unread: Bytes::new(),
            unread_seq: 0,
            seq: 0,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            unacked_bytes: 0,
            chunk,
        }
    }

    /// Finishes the publish under way; an error if NATS refused it.
    fn poll_sending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((sending, n)) = self.sending.as_mut() {
            let sent = ready!(sending.as_mut().poll(cx));
            let n = *n;
            self.sending = None;
            if !sent {
                self.link.broken("NATS refused a tunnel message");
                return Poll::Ready(Err(gone()));
            }
            self.written = Some(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Forgets the messages the other side acknowledged; whether the window has room.
    fn room(&mut self) -> bool {
        let upto = self.link.acked.load(Ordering::Acquire);
        while let Some(&(seq, n)) = self.in_flight.front() {
            if seq > upto {
                break;
            }
            self.in_flight.pop_front();
            self.in_flight_bytes -= n;
        }
        (self.in_flight.len() as u64) < WINDOW_MESSAGES && self.in_flight_bytes < WINDOW_BYTES
    }

    /// Publishes a message; ready when NATS has it (usually at once).
    fn start(&mut self, kind: u8, data: &[u8], cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.seq += 1;
        self.in_flight.push_back((self.seq, data.len()));
        self.in_flight_bytes += data.len();
        self.sending = Some((self.link.publish(kind, self.seq, data), data.len()));
        self.poll_sending(cx)
    }

    /// Notes that the reader has `seq` (of `bytes`); acknowledges when enough waits.
    fn handed(&mut self, seq: u64, bytes: usize, last: bool) {
        let link = &self.link;
        link.handed.fetch_max(seq, Ordering::AcqRel);
        self.unacked_bytes += bytes;
        if last
            || seq.saturating_sub(link.ack_sent.load(Ordering::Acquire)) >= ACK_EVERY
            || self.unacked_bytes >= ACK_BYTES
        {
            self.unacked_bytes = 0;
            link.send_now(ACK);
        }
    }
}

/// The error a tunnel that is over gives its writer.
fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel is closed")
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut registered = false;
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread.split_to(n));
                if this.unread.is_empty() {
                    this.handed(this.unread_seq, n, false);
                } else {
                    this.unacked_bytes += n;
                }
                return Poll::Ready(Ok(()));
            }
            let link = &this.link;
            let mut inbox = link.inbox.locked();
            if let Some((seq, data)) = inbox.queue.pop_front() {
                inbox.queued_bytes -= data.len();
                drop(inbox);
                this.unread = data;
                this.unread_seq = seq;
                if this.unread.is_empty() {
                    this.handed(seq, 0, false);
                }
                continue;
            }
            if let Some(fin) = inbox.fin {
                drop(inbox);
                if link.handed.load(Ordering::Acquire) < fin {
                    this.handed(fin, 0, true);
                }
                return Poll::Ready(Ok(()));
            }
            if link.over() {
                // What came before the end was read; the end reads as the stream's.
                return Poll::Ready(Ok(()));
            }
            if registered {
                return Poll::Pending;
            }
            // Look once more after registering: what came in between woke nobody.
            let before = inbox.received;
            link.take(&mut inbox);
            if inbox.received == before && !link.over() {
                link.waiting.reader.register(cx.waker());
                registered = true;
                link.take(&mut inbox);
            }
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // A write that waited for NATS is done when its publish is (the writer asks
        // again with the same bytes, as it must after a pending write).
        ready!(this.poll_sending(cx))?;
        if let Some(n) = this.written.take() {
            return Poll::Ready(Ok(n));
        }
        if this.link.over() || this.link.fin_sent.load(Ordering::Acquire) {
            return Poll::Ready(Err(gone()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if !this.room() {
            // The acknowledgements that open the window come on the subscription;
            // look again after registering, as what came in between woke nobody.
            this.link.take(&mut this.link.inbox.locked());
            if !this.room() {
                this.link.waiting.writer.register(cx.waker());
                this.link.take(&mut this.link.inbox.locked());
            }
            if this.link.over() {
                return Poll::Ready(Err(gone()));
            }
            if !this.room() {
                return Poll::Pending;
            }
        }
        let n = buf.len().min(this.chunk);
        ready!(this.start(DATA, &buf[..n], cx))?;
        this.written = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_sending(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_sending(cx))?;
        if this.link.over() {
            return Poll::Ready(Err(gone()));
        }
        // One message past the window at most: the end of data waits for no room.
        if !this.link.fin_sent.swap(true, Ordering::AcqRel) {
            ready!(this.start(FIN, &[], cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let link = self.link.clone();
        let sending = self.sending.take().map(|(sending, _)| sending);
        let finished = link.fin_sent.load(Ordering::Acquire) && {
            let inbox = link.inbox.locked();
            inbox.fin.is_some() && inbox.queue.is_empty()
        };
        // The last message written still goes, and then, unless both sides said
        // they were done, a reset: nobody here reads what the other side still sends.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return link.end(false);
        };
        runtime.spawn(async move {
            if let Some(sending) = sending {
                sending.await;
            }
            link.end(!finished);
        });
    }
}
