//! How many connections the host serves at once (`[server] max_connections`). Each
//! accepted connection holds a slot until it closes, a WebSocket's after its upgrade
//! included, so a flood of connections (idle ones, or ones that never finish their
//! headers) cannot take the descriptors the records, logs, providers and runtimes'
//! processes need. Past the limit a connection is answered `503 server_busy` and closed.
//! With `[server] max_connections_per_address`, one address (IPv6: its /64) may hold
//! at most that many, so one client cannot take every slot: past it, `429
//! too_many_connections`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
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

/// Connections open per address, for `max_connections_per_address` (and TLS
/// handshakes in progress per address, in `listener.rs`).
pub(super) type PerAddress = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// The host is at `max_connections`.
    Busy,
    /// Its address is at `max_connections_per_address`.
    Address,
}

/// The slots of one listener's connections, and its count of refusals.
#[derive(Debug)]
pub(crate) struct Connections {
    max: usize,
    slots: Arc<Semaphore>,
    per_address: Option<usize>,
    by_address: PerAddress,
    answering: Arc<Semaphore>,
    refused: AtomicU64,
    /// When refusals were last logged, and how many came since.
    warned: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl Connections {
    /// At most `max` connections at once, and `per_address` from one address.
    pub(crate) fn new(max: usize, per_address: Option<usize>) -> Self {
        Self {
            max,
            slots: Arc::new(Semaphore::new(max)),
            per_address,
            by_address: PerAddress::default(),
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

    /// `io` from `remote` with a slot (and one of its address's), which it holds
    /// until it is dropped; or, with none left, `io` back and why.
    pub(super) fn admit<Io>(
        &self,
        io: Io,
        remote: SocketAddr,
    ) -> Result<Slotted<Io>, (Io, Refusal)> {
        let address = match self.per_address {
            None => None,
            Some(most) => match AddressSlot::take(&self.by_address, remote.ip(), most) {
                Some(slot) => Some(slot),
                None => return Err((io, Refusal::Address)),
            },
        };
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(Slotted {
                io,
                _slot: slot,
                _address: address,
            }),
            Err(_) => Err((io, Refusal::Busy)),
        }
    }

    /// Turns away a connection that found no slot: answered (`503 server_busy`, or
    /// `429 too_many_connections` for its address) in a task of its own while few
    /// refusals are being answered, else closed at once.
    pub(super) fn refuse<Io>(&self, io: Io, remote: SocketAddr, why: Refusal)
    where
        Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.warn(remote, why);
        let Ok(answering) = self.answering.clone().try_acquire_owned() else {
            return;
        };
        let (max, per_address) = (self.max, self.per_address.unwrap_or_default());
        tokio::spawn(async move {
            let _answering = answering;
            let service = hyper::service::service_fn(move |_: Request<Incoming>| async move {
                let refusal = match why {
                    Refusal::Busy => ApiError::server_busy(max),
                    Refusal::Address => ApiError::too_many_from_address(per_address),
                };
                Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response(
                    refusal,
                ))
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
    fn warn(&self, remote: SocketAddr, why: Refusal) {
        let mut warned = self.warned.locked();
        warned.1 += 1;
        let now = Instant::now();
        if warned
            .0
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        match why {
            Refusal::Busy => tracing::warn!(
                %remote,
                refused = warned.1,
                max_connections = self.max,
                "at the connection limit: refusing connections (raise [server] max_connections, or the open-files limit)"
            ),
            Refusal::Address => tracing::warn!(
                %remote,
                refused = warned.1,
                max_connections_per_address = self.per_address,
                "an address at its connection limit: refusing its connections"
            ),
        }
        *warned = (Some(now), 0);
    }
}

/// A connection holding its slot.
#[derive(Debug)]
pub(crate) struct Slotted<Io> {
    io: Io,
    _slot: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
}

/// One of an address's connections, given back when dropped.
#[derive(Debug)]
pub(super) struct AddressSlot {
    by_address: PerAddress,
    key: IpAddr,
}

impl AddressSlot {
    /// A slot of `ip`'s, unless it holds `most` already.
    pub(super) fn take(by_address: &PerAddress, ip: IpAddr, most: usize) -> Option<Self> {
        let key = crate::throttle::key(ip);
        let mut counts = by_address.locked();
        let open = counts.entry(key).or_default();
        if *open >= most {
            return None;
        }
        *open += 1;
        Some(Self {
            by_address: by_address.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.by_address.locked();
        if let Some(open) = counts.get_mut(&self.key) {
            *open = open.saturating_sub(1);
            // Addresses with nothing open are forgotten, so the map stays small.
            if *open == 0 {
                counts.remove(&self.key);
            }
        }
    }
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

    fn from(address: &str) -> SocketAddr {
        SocketAddr::new(address.parse().unwrap(), 1000)
    }

    #[test]
    fn a_slot_is_held_until_its_connection_is_dropped() {
        let connections = Connections::new(2, None);
        let here = from("10.0.0.1");
        let a = connections.admit((), here).ok();
        let b = connections.admit((), here).ok();
        assert!(a.is_some() && b.is_some());
        assert_eq!(connections.open(), 2);
        let third = connections.admit((), from("10.0.0.2"));
        assert!(matches!(third, Err(((), Refusal::Busy))), "past the limit");
        drop(a);
        assert_eq!(connections.open(), 1);
        assert!(connections.admit((), here).is_ok());
    }

    #[test]
    fn an_address_holds_at_most_its_share_and_ipv6_counts_by_its_64() {
        let connections = Connections::new(10, Some(2));
        let a = connections.admit((), from("2001:db8::1")).ok();
        let b = connections.admit((), from("2001:db8::2")).ok();
        assert!(a.is_some() && b.is_some());
        let same_64 = connections.admit((), from("2001:db8::3"));
        assert!(matches!(same_64, Err(((), Refusal::Address))));
        let other = connections.admit((), from("2001:db8:1::1"));
        assert!(other.is_ok(), "another /64 has its own share");
        drop(other);
        drop(a);
        assert!(connections.admit((), from("2001:db8::3")).is_ok());
        drop(b);
        assert!(
            connections.by_address.locked().is_empty(),
            "forgotten once closed"
        );
    }
}
