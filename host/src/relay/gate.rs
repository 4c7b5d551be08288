//! A future that is polled only when something it waits on woke it.
//!
//! A connection's task waits on several things at once (its socket's reads, its
//! writer's wake-up and timer, the signal that ends it), and `select!` polls every one
//! of them whenever any of them wakes the task. Almost every wake-up is a frame to
//! read, so each frame paid for polling the writer's notifier, its timer and the end
//! signal too. [`Gated`] remembers whether its own future was woken and otherwise
//! answers `Pending` without polling it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use crate::sync::MutexExt;

/// Whether the gated future was woken, and whom to wake when it is.
struct Gate {
    woken: AtomicBool,
    parent: Mutex<Option<Waker>>,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(parent) = self.parent.locked().as_ref() {
            parent.wake_by_ref();
        }
    }
}

/// `inner`, polled only on its first poll and after it woke its task.
pub(super) struct Gated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
    waker: Waker,
}

impl<F: Future> Gated<F> {
    /// Gates `inner` (boxed once here, so the gated future is `Unpin`).
    pub(super) fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            // Polled the first time, to start it.
            woken: AtomicBool::new(true),
            parent: Mutex::new(None),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(gate.clone()),
            gate,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        {
            let mut parent = self.gate.parent.locked();
            if !parent.as_ref().is_some_and(|p| p.will_wake(cx.waker())) {
                *parent = Some(cx.waker().clone());
            }
        }
        // Cleared before the poll: a wake-up during it sets it again and wakes us.
        if !self.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut own = Context::from_waker(&this.waker);
        this.inner.as_mut().poll(&mut own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, waking whoever waits when told.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.locked() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn polls_only_after_its_own_wake_up() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None));
        let mut gated = Gated::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken: not polled");
        ready.store(true, Ordering::SeqCst);
        if let Some(w) = waker.locked().take() {
            w.wake();
        }
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn wakes_the_task_that_polls_it() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let waiting = notify.clone();
        let gated = Gated::new(async move { waiting.notified().await });
        let task = tokio::spawn(gated);
        tokio::task::yield_now().await;
        notify.notify_one();
        assert!(task.await.is_ok());
    }
}
