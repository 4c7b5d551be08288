//! A request body that stops arriving. hyper times a request's headers, never its
//! body: a client that announces a `Content-Length` it never sends, or a chunked body
//! without its last chunk (or one gone without a FIN mid-upload), would hold its
//! connection for as long as it liked. Wrapped in [`BodyDeadline`], a body from which
//! nothing arrives for the limit fails, and so does one not read whole within the
//! body limit (`[server] body_timeout_secs`) of its first read: one byte sent just
//! inside each pause would otherwise hold the connection (and its slot) for ever. The
//! handler answers that it could not read it and hyper closes the connection, whose
//! body was not read to its end.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

/// Why a body was given up on.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// The connection failed, or the body broke the protocol.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// Nothing of it arrived for this long.
    #[error("nothing of it arrived for {} s", .0.as_secs())]
    Stalled(Duration),
    /// It was not whole this long after its reading began.
    #[error("it did not arrive whole within {} s", .0.as_secs())]
    TooSlow(Duration),
}

/// `Incoming`, failing once nothing of it has arrived for `limit` while it is read, or
/// once it has been read for `whole` without its end.
#[derive(Debug)]
pub(super) struct BodyDeadline {
    inner: Incoming,
    limit: Duration,
    whole: Duration,
    /// Armed when a read is first left pending, cleared when a frame arrives.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Armed at the first read, never cleared.
    overall: Option<Pin<Box<Sleep>>>,
}

impl BodyDeadline {
    /// `inner`, allowed pauses of at most `limit` and `whole` in all.
    pub(super) fn new(inner: Incoming, limit: Duration, whole: Duration) -> Self {
        Self {
            inner,
            limit,
            whole,
            stalled: None,
            overall: None,
        }
    }
}

impl Body for BodyDeadline {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let whole = this.whole;
        let overall = (this.overall).get_or_insert_with(|| Box::pin(tokio::time::sleep(whole)));
        if overall.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyError::TooSlow(whole))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.stalled = None;
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let limit = this.limit;
        let stalled = (this.stalled).get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyError::Stalled(limit))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
