//! How many connections the host serves at once (`[server] max_connections`). Each
//! accepted connection holds a slot until it closes, a WebSocket's after its upgrade
//! included, so a flood of connections (idle ones, or ones that never finish their
//! headers) cannot take the descriptors the records, logs, providers and runtimes'
//! processes need. Past the limit a connection is answered `503 server_busy` and closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;
use crate::sync::MutexExt;

/// Refusals answered at once; past them a refused connection is closed unanswered,
/// so refusing never takes more than this many descriptors of its own.
const MAX_ANSWERING: usize = 64;
/// Longest a refused connection is given to send its request and read the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Refusals are logged at most this often, with how many there were since.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Descriptors kept back from connections, at least: the records, the audit and
/// environments' logs, providers' files, runtimes' processes and their pipes.
const MIN_RESERVE: u64 = 64;
/// The default limit when the open-files limit is unknown or unlimited.
const FALLBACK: usize = 1 << 20;

/// The default `max_connections` for an open-files limit of `open_files`: all but an
/// eighth of it (at least [`MIN_RESERVE`]), which is kept for everything else.
pub(super) fn default_limit(open_files: Option<u64>) -> usize {
    let Some(limit) = open_files else {
        return FALLBACK;
    };
    let reserve = (limit / 8).max(MIN_RESERVE);
    let usable = limit.saturating_sub(reserve).max(1);
    usize::try_from(usable).map_or(FALLBACK, |n| n.min(FALLBACK))
}

/// The slots of one listener's connections, and its count of refusals.
#[derive(Debug)]
pub(crate) struct Connections {
    max: usize,
    slots: Arc<Semaphore>,
    answering: Arc<Semaphore>,
    refused: AtomicU64,
    /// When refusals were last logged, and how many came since.
    warned: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl Connections {
    /// At most `max` connections at once.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            slots: Arc::new(Semaphore::new(max)),
            answering: Arc::new(Semaphore::new(MAX_ANSWERING)),
            refused: AtomicU64::new(0),
            warned: std::sync::Mutex::new((None, 0)),
        }
    }

    /// The limit.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// Connections refused since the host started.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// `io` with a slot, which it holds until it is dropped; or, with none left,
    /// `io` back.
    pub(super) fn admit<Io>(&self, io: Io) -> Result<Slotted<Io>, Io> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(Slotted { io, _slot: slot }),
            Err(_) => Err(io),
        }
    }

    /// Turns away a connection that found no slot: answered `503 server_busy` in a
    /// task of its own while few refusals are being answered, else closed at once.
    pub(super) fn refuse<Io>(&self, io: Io, remote: std::net::SocketAddr)
    where
        Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.warn(remote);
        let Ok(answering) = self.answering.clone().try_acquire_owned() else {
            return;
        };
        let max = self.max;
        tokio::spawn(async move {
            let _answering = answering;
            let service = hyper::service::service_fn(move |_: Request<Incoming>| async move {
                let busy = ApiError::server_busy(max);
                Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response(busy))
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ANSWER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(io), service);
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, connection).await;
        });
    }

    /// Logs refusals, at most once per [`WARN_EVERY`], with the count since the last.
    fn warn(&self, remote: std::net::SocketAddr) {
        let mut warned = self.warned.locked();
        warned.1 += 1;
        let now = Instant::now();
        if warned
            .0
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            %remote,
            refused = warned.1,
            max_connections = self.max,
            "at the connection limit: refusing connections (raise [server] max_connections, or the open-files limit)"
        );
        *warned = (Some(now), 0);
    }
}

/// A connection holding its slot.
#[derive(Debug)]
pub(crate) struct Slotted<Io> {
    io: Io,
    _slot: OwnedSemaphorePermit,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Slotted<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Slotted<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keeps_an_eighth_of_the_open_files_limit_back() {
        assert_eq!(default_limit(Some(20_000)), 17_500);
        assert_eq!(default_limit(Some(1024)), 1024 - 128);
        assert_eq!(default_limit(Some(256)), 256 - 64);
        assert_eq!(default_limit(Some(10)), 1);
        assert_eq!(default_limit(Some(u64::MAX)), FALLBACK);
        assert_eq!(default_limit(None), FALLBACK);
    }

    #[test]
    fn a_slot_is_held_until_its_connection_is_dropped() {
        let connections = Connections::new(2);
        let a = connections.admit(()).ok();
        let b = connections.admit(()).ok();
        assert!(a.is_some() && b.is_some());
        assert_eq!(connections.open(), 2);
        assert!(connections.admit(()).is_err(), "a third past the limit");
        drop(a);
        assert_eq!(connections.open(), 1);
        assert!(connections.admit(()).is_ok());
    }
}
