//! How calls reach a running provider instance: its `Store` sits behind a lock that
//! every call takes in turn, each call under a deadline.
//!
//! A call (and the instance's start-up code) starts in the caller's task: when the
//! guest answers without waiting or being preempted (a `check-health`, a routed
//! message), that costs no thread hop.
//! A call that cannot finish in that first step — the guest waits on a host call, or
//! an epoch tick came — moves to the guest executor for the rest. First steps are
//! metered ([`super::inline`]): they are taken only while the host's credit lasts
//! (1 % of the time), and an instance whose steps ran long three times in a minute
//! makes every later call on the guest executor. So a guest that answers in
//! microseconds stays on the fast path (a step the OS happened to deschedule does not
//! push it off), while one that spins or computes costs the API and the relay a few
//! steps, once.
//!
//! A trap or a timeout kills the instance (its `Store` is no longer trustworthy);
//! later calls get [`CallError::Closed`] with the reason. Dropping the store drops the
//! resource table, which kills every process the instance spawned.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wasmtime::{Store, Trap};

use super::bindings::AnyBindings;
use super::executor::GuestExecutor;
use super::inline::{InlineBudget, Strikes};
use super::instance::{HostState, arm_deadline};
use super::stacks::StackSlot;
use super::types::{Call, CallError, Reply};
use super::{EngineError, TICK};
use crate::config::LimitsConfig;

/// A live instance: what each call needs, taken by one call at a time.
struct Live {
    store: Store<HostState>,
    bindings: AnyBindings,
    /// The store's fiber stack, for the sweeper.
    stack: StackSlot,
    /// Why the instance is dead (a trap, a timeout), once it is.
    dead: Option<String>,
}

/// What every clone of a handle shares.
struct Shared {
    /// `None` once shut down (the store is dropped then).
    live: Arc<Mutex<Option<Live>>>,
    /// Whether calls may still start in the caller's task.
    inline: AtomicBool,
    /// Its long first steps, which end that.
    strikes: Strikes,
    /// The host's meter of guest time in callers' tasks.
    budget: Arc<InlineBudget>,
    cancel: CancellationToken,
    guests: Handle,
    limits: LimitsConfig,
    span: tracing::Span,
}

/// A cloneable front of one running provider instance.
#[derive(Clone)]
pub struct ProviderHandle {
    shared: Arc<Shared>,
    /// Provider name.
    pub provider: String,
    /// Provider version.
    pub version: String,
    /// SHA-256 of the component this instance runs.
    pub sha256: String,
}

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderHandle")
            .field("provider", &self.provider)
            .field("version", &self.version)
            .field("inline", &self.shared.inline.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ProviderHandle {
    /// Calls the instance, waiting at most `timeout` for the answer (calls queue in
    /// the order they arrive).
    pub async fn call(&self, call: Call, timeout: Duration) -> Result<Reply, CallError> {
        let shared = &self.shared;
        if shared.cancel.is_cancelled() {
            return Err(closed());
        }
        let live = shared.live.clone().lock_owned().await;
        let job =
            run_call(live, call, timeout, self.shared.clone()).instrument(shared.span.clone());
        // Two readings of the clock per call, one each side of the step: a quick call
        // costs little more than a bare one, and every reading counts there.
        let began = Instant::now();
        if !shared.inline.load(Ordering::Relaxed) || !shared.budget.available(began) {
            return on_guests(&shared.guests, job).await;
        }
        let (first, now) = first_step(job).await;
        let spent = now.saturating_duration_since(began);
        if !shared.budget.charge(spent, now) && shared.strikes.strike(now) {
            shared.inline.store(false, Ordering::Relaxed);
            tracing::debug!(parent: &shared.span, ?spent, "calls ran long in the caller's task three times in a minute: this instance's calls run on the guest executor from now on");
        }
        match first {
            Step::Done(reply) => reply,
            Step::Waiting(job) => on_guests(&shared.guests, job).await,
        }
    }

    /// Ends the instance (abandoning a call in progress) and waits until its store,
    /// and with it every process it spawned, is gone.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.cancel.cancel();
        // A call in progress sees the cancellation at its next step and lets go.
        let taken = shared.live.lock().await.take();
        if let Some(live) = taken {
            // Dropping the store kills processes: keep that off the caller's runtime.
            let _ = shared.guests.spawn(async move { drop(live) }).await;
            tracing::debug!(parent: &shared.span, "provider instance shut down");
        }
    }

    /// Whether both handles front the same instance.
    pub fn same_instance(&self, other: &ProviderHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

fn closed() -> CallError {
    CallError::Closed("instance has shut down".into())
}

/// Where a job stands after its first step in the caller's task.
enum Step<T, F> {
    Done(T),
    /// It waits or was preempted: the rest is for the guest executor.
    Waiting(F),
}

/// Polls `job` once in the caller's task; returns where it stands and when the step
/// ended.
async fn first_step<F: Future>(job: F) -> (Step<F::Output, Pin<Box<F>>>, Instant) {
    let mut job = Box::pin(job);
    let first = std::future::poll_fn(|cx| Poll::Ready(job.as_mut().poll(cx))).await;
    let ended = Instant::now();
    let step = match first {
        Poll::Ready(out) => Step::Done(out),
        Poll::Pending => Step::Waiting(job),
    };
    (step, ended)
}

/// Finishes `job` on the guest executor.
async fn on_guests<F>(guests: &Handle, job: F) -> Result<Reply, CallError>
where
    F: Future<Output = Result<Reply, CallError>> + Send + 'static,
{
    guests
        .spawn(job)
        .await
        .unwrap_or_else(|_| Err(CallError::Closed("the guest executor has shut down".into())))
}

/// One call on the instance held by `live`.
async fn run_call(
    mut live: OwnedMutexGuard<Option<Live>>,
    call: Call,
    timeout: Duration,
    shared: Arc<Shared>,
) -> Result<Reply, CallError> {
    let Shared { cancel, limits, .. } = &*shared;
    let Some(live) = live.as_mut() else {
        return Err(closed());
    };
    if let Some(reason) = &live.dead {
        return Err(CallError::Closed(reason.clone()));
    }
    // A call queued behind a shutdown must not touch a store it may have cut short.
    if cancel.is_cancelled() {
        return Err(closed());
    }
    arm_deadline(&mut live.store, timeout);
    // The epoch deadline catches a spinning guest; the wall-clock timeout catches one
    // parked in a host call. Either way the store is abandoned.
    let grace = timeout + TICK * 5;
    let outcome = {
        let call = tokio::time::timeout(
            grace,
            live.stack.run(super::dispatch::dispatch(
                &mut live.store,
                &live.bindings,
                call,
            )),
        );
        let mut call = pin!(call);
        let mut cancelled = pin!(cancel.cancelled());
        std::future::poll_fn(|cx| {
            // The call first: a call that answers at once never registers a waiter.
            if let Poll::Ready(out) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            cancelled.as_mut().poll(cx).map(|()| None)
        })
        .await
    };
    let Some(outcome) = outcome else {
        // The guest was stopped mid-call: its store is not to be used again.
        live.dead = Some("instance shut down".into());
        return Err(CallError::Closed("instance shut down".into()));
    };
    match outcome {
        Ok(Ok(r)) => super::types::bounded(r).map_err(CallError::Provider),
        Ok(Err(trap)) => {
            let err = classify(&trap, timeout, limits);
            let error = crate::untrusted::logged(&err.to_string());
            tracing::error!(%error, "provider instance failed");
            live.dead = Some(err.to_string());
            Err(err)
        }
        Err(_) => {
            let err = CallError::TimedOut(timeout);
            tracing::error!(error = %err, "provider instance failed");
            live.dead = Some(err.to_string());
            Err(err)
        }
    }
}

/// Instantiates `loaded` in `store` (whose fiber stack `stack` tracks) on the guest
/// executor (instantiation runs the guest's start-up code) and returns the handle
/// calls go through.
pub(crate) async fn instantiate(
    guests: &GuestExecutor,
    loaded: &super::LoadedProvider,
    (mut store, stack): (Store<HostState>, StackSlot),
    limits: LimitsConfig,
) -> Result<ProviderHandle, EngineError> {
    let pre = loaded.pre.clone();
    let provider = loaded.description.name.clone();
    let budget = guests.inline_budget().clone();
    const START_UP: Duration = Duration::from_secs(10);
    let env_id = store.data().env_id.clone();
    let span = tracing::info_span!("provider", env = %env_id, provider = %provider);
    let job = async move {
        // Bound the start-up code like any call.
        arm_deadline(&mut store, START_UP);
        let started = stack.run(pre.instantiate(&mut store));
        match tokio::time::timeout(START_UP + TICK * 5, started).await {
            Ok(Ok(bindings)) => Ok((store, bindings, stack)),
            Ok(Err(e)) => Err(EngineError::Instantiate(format!("{e:#}"))),
            Err(_) => Err(EngineError::Instantiate(format!(
                "start-up code did not finish within {} s",
                START_UP.as_secs()
            ))),
        }
    }
    .instrument(span.clone());
    // Start-up code is metered like a call, with more left unmetered (`FREE_START_UP`).
    let strikes = Strikes::default();
    let began = Instant::now();
    let (first, inline) = if budget.available(began) {
        let (first, now) = first_step(job).await;
        let spent = now.saturating_duration_since(began);
        (
            first,
            budget.charge_start_up(spent, now) || !strikes.strike(now),
        )
    } else {
        (Step::Waiting(Box::pin(job)), true)
    };
    let started = match first {
        Step::Done(started) => started,
        Step::Waiting(job) => guests
            .spawn(job)
            .await
            .map_err(|_| EngineError::Instantiate("the guest executor has shut down".into()))?,
    };
    let (store, bindings, stack) = started?;
    Ok(ProviderHandle {
        shared: Arc::new(Shared {
            live: Arc::new(Mutex::new(Some(Live {
                store,
                bindings,
                stack,
                dead: None,
            }))),
            inline: AtomicBool::new(inline),
            strikes,
            budget,
            cancel: CancellationToken::new(),
            guests: guests.handle().clone(),
            limits,
            span,
        }),
        provider,
        version: loaded.description.version.clone(),
        sha256: loaded.sha256.clone(),
    })
}

/// Turns a trap into an error a person can act on.
pub(crate) fn classify(
    trap: &wasmtime::Error,
    timeout: Duration,
    limits: &LimitsConfig,
) -> CallError {
    let text = format!("{trap:#}");
    match trap.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return CallError::TimedOut(timeout),
        Some(Trap::StackOverflow) => {
            return CallError::Trapped(format!(
                "stack overflow: the provider recursed too deep (wasm stack capped at {} KiB) [{text}]",
                super::MAX_WASM_STACK >> 10
            ));
        }
        Some(Trap::MemoryOutOfBounds) => {
            return CallError::Trapped(format!(
                "out-of-bounds memory access: the provider overran its memory, typically its stack \
                 (kept in linear memory) through unbounded recursion [{text}]"
            ));
        }
        Some(Trap::UnreachableCodeReached) => {
            return CallError::Trapped(format!(
                "the provider panicked (wasm `unreachable`); see its log lines above [{text}]"
            ));
        }
        _ => {}
    }
    if text.contains("growing memory") {
        CallError::Trapped(format!(
            "memory limit exceeded: the provider tried to grow past {} MiB (limits.memory_mib in tether.toml) [{text}]",
            limits.memory_bytes >> 20
        ))
    } else if trap
        .downcast_ref::<wasmtime::component::ResourceTableError>()
        .is_some_and(|e| matches!(e, wasmtime::component::ResourceTableError::Full))
    {
        CallError::Trapped(format!(
            "resource limit exceeded: more than {} open handles (limits.max_resources) [{text}]",
            limits.max_resources
        ))
    } else {
        CallError::Trapped(text)
    }
}
