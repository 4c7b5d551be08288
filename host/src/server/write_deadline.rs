//! A peer that stops taking what the host writes. hyper's header read timeout only
//! times reads: a client that pipelines requests and never reads the answers (or asks
//! for one large answer and reads none of it) leaves hyper waiting on a full socket
//! for as long as it likes, holding its connection slot, unauthenticated. Wrapped in
//! [`WriteDeadline`], a write that makes no progress for the limit fails, and hyper
//! ends the connection. Once the connection is upgraded to a WebSocket the deadline is
//! off: the relay has its own policy for peers that take no frame (`[relay]
//! idle_timeout_secs`, close 4011).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Turns the deadline of one connection off, once it is upgraded.
#[derive(Debug, Clone, Default)]
pub(super) struct Upgraded(Arc<AtomicBool>);

impl Upgraded {
    /// From now on, the relay times this connection's writes.
    pub(super) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `Io` whose writes fail once they have made no progress for `limit`.
#[derive(Debug)]
pub(super) struct WriteDeadline<Io> {
    io: Io,
    limit: Duration,
    upgraded: Upgraded,
    /// Armed when a write is first left pending, cleared when one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<Io> WriteDeadline<Io> {
    /// `io`, its writes bounded by `limit` until `upgraded` is set.
    pub(super) fn new(io: Io, limit: Duration, upgraded: Upgraded) -> Self {
        Self {
            io,
            limit,
            upgraded,
            stalled: None,
        }
    }

    /// What a write's `poll` came to, given the deadline: progress clears it, a
    /// pending write arms it (or fails once it has passed).
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() || self.upgraded.is_set() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the peer took nothing written to it for {} s",
                limit.as_secs()
            ),
        )))
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for WriteDeadline<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.timed(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_at_the_limit_unless_upgraded() {
        let (ours, _peer) = tokio::io::duplex(16);
        let mut io = WriteDeadline::new(ours, Duration::from_secs(5), Upgraded::default());
        io.write_all(&[0; 16]).await.expect("fits the buffer");
        let err = io.write_all(&[0; 1]).await.expect_err("never taken");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (ours, _peer) = tokio::io::duplex(16);
        let upgraded = Upgraded::default();
        let mut io = WriteDeadline::new(ours, Duration::from_secs(5), upgraded.clone());
        io.write_all(&[0; 16]).await.expect("fits the buffer");
        upgraded.set();
        let waited = tokio::time::timeout(Duration::from_secs(60), io.write_all(&[0; 1])).await;
        assert!(waited.is_err(), "an upgraded connection's writes wait");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_deadline() {
        let (ours, mut peer) = tokio::io::duplex(16);
        let mut io = WriteDeadline::new(ours, Duration::from_secs(5), Upgraded::default());
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0; 8];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                peer.read_exact(&mut buf).await.expect("read");
            }
        });
        // 64 bytes through a 16-byte pipe, 8 every 4 s: each wait is under the limit.
        io.write_all(&[0; 64])
            .await
            .expect("a slow reader is not a stalled one");
        reader.await.expect("reader");
    }
}
