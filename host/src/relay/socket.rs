//! A peer's upgraded connection as the relay serves it: the `101` that answers the
//! upgrade, and the connection itself, shared by the task that reads it and whoever
//! writes to it (its own writer, or a reader of another connection writing through,
//! `relay/send.rs`) under one short lock that no one holds across a wait.
//!
//! Reading runs tungstenite's protocol state (masking, fragments, size limits, UTF-8,
//! control frames) straight on the connection, polled with the reading task's own
//! context: no split halves with a lock of their own, no waker proxies between the
//! socket and the task. Writing encodes the relay's frames as a server's (unmasked,
//! never fragmented) into the sending half's buffer; the close and pong replies
//! tungstenite would queue while reading are the connection's to send, in order with
//! the rest, so the reading side discards them.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error, Message};

use crate::sync::MutexExt;

/// A WebSocket upgrade request the API checked, to be answered by the relay (or by a
/// bridge to the host running the environment, in cluster mode).
pub struct Upgrade {
    /// Resolves to the peer's connection once the `101` is sent.
    pub on_upgrade: OnUpgrade,
    /// Its `Sec-WebSocket-Key`.
    pub key: HeaderValue,
    /// Whether it offered the subprotocol the host answers apps with.
    pub offers_protocol: bool,
}

impl Upgrade {
    /// The `101 Switching Protocols` answer, naming `protocol` if the peer offered it.
    pub(super) fn answer(&self, protocol: Option<&'static str>) -> Response {
        let mut answer = Response::new(Body::empty());
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = answer.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let accept = derive_accept_key(self.key.as_bytes());
        // Base64 is always a valid header value; the fallback is never taken.
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol.filter(|_| self.offers_protocol) {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        answer
    }
}

/// The upgraded connection under hyper.
type Io = TokioIo<Upgraded>;

/// A peer's upgraded connection, read by its own task and written by whoever holds
/// its sending half.
pub(super) struct Socket {
    io: Mutex<Io>,
}

impl Socket {
    /// The connection hyper upgraded.
    pub(super) fn new(upgraded: Upgraded) -> Self {
        Self {
            io: Mutex::new(TokioIo::new(upgraded)),
        }
    }

    /// The connection, waiting for whoever is polling it now (never long: nobody
    /// holds it across a wait).
    fn io(&self) -> MutexGuard<'_, Io> {
        self.io.locked()
    }

    /// The connection if nobody else is polling it now.
    fn try_io(&self) -> Option<MutexGuard<'_, Io>> {
        match self.io.try_lock() {
            Ok(io) => Some(io),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Writes `bytes` as far as the connection takes them now; `Ok(0)` is a connection
    /// that will take no more. Without `wait`, a connection someone else is polling
    /// counts as full.
    pub(super) fn poll_write(
        &self,
        cx: &mut Context<'_>,
        bytes: &[u8],
        wait: bool,
    ) -> Poll<io::Result<usize>> {
        let io = if wait { Some(self.io()) } else { self.try_io() };
        match io {
            Some(mut io) => Pin::new(&mut *io).poll_write(cx, bytes),
            None => Poll::Pending,
        }
    }

    /// Flushes what the connection buffers itself (TLS records).
    pub(super) fn poll_flush(&self, cx: &mut Context<'_>, wait: bool) -> Poll<io::Result<()>> {
        let io = if wait { Some(self.io()) } else { self.try_io() };
        match io {
            Some(mut io) => Pin::new(&mut *io).poll_flush(cx),
            None => Poll::Pending,
        }
    }
}

/// Appends `message` to `out` as one server frame.
pub(super) fn encode(message: Message, out: &mut Vec<u8>) -> io::Result<()> {
    let frame = match message {
        Message::Text(text) => Frame::message(text, OpCode::Data(Data::Text), true),
        Message::Binary(bytes) => Frame::message(bytes, OpCode::Data(Data::Binary), true),
        Message::Ping(bytes) => Frame::ping(bytes),
        Message::Pong(bytes) => Frame::pong(bytes),
        Message::Close(close) => Frame::close(close),
        Message::Frame(frame) => frame,
    };
    frame.format(out).map_err(io::Error::other)
}

/// Reads a peer's messages off its [`Socket`].
pub(super) struct Reader {
    socket: Arc<Socket>,
    protocol: WebSocketContext,
}

impl Reader {
    /// Reads `socket` as a server, within `config`'s limits.
    pub(super) fn new(socket: Arc<Socket>, config: WebSocketConfig) -> Self {
        Self {
            socket,
            protocol: WebSocketContext::new(Role::Server, Some(config)),
        }
    }

    /// The next message: `None` once the connection is closed.
    pub(super) async fn next(&mut self) -> Option<Result<Message, Error>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        let mut io = self.socket.io();
        let mut polled = Polled { io: &mut io, cx };
        match self.protocol.read(&mut polled) {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(Error::ConnectionClosed | Error::AlreadyClosed) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// The connection as tungstenite's blocking-style reader expects it, for one poll: a
/// read that would wait says `WouldBlock`, with the task registered to be woken.
struct Polled<'a, 'b> {
    io: &'a mut Io,
    cx: &'a mut Context<'b>,
}

impl Read for Polled<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// What the reading side would write (pong and close replies) is dropped: the
/// connection answers a ping itself, in order with its other frames, and a peer's
/// close ends the connection.
impl Write for Polled<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
