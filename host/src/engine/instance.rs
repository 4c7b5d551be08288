//! One provider instance per started environment: a task owns its `Store` and takes
//! calls through a channel, one at a time, each under a deadline.
//!
//! A trap or a timeout kills the instance (its `Store` is no longer trustworthy);
//! later calls get [`CallError::Closed`] with the reason. Dropping the store drops the
//! resource table, which kills every process the instance spawned.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;

use super::bindings::{AnyBindings, AnyPre};
use super::executor::GuestExecutor;
use super::host::http::NetHooks;
use super::host::log::LogBudget;
use super::persisted::StateWriter;
use super::types::{Call, CallError, Reply, RuntimePort, STATE_GUEST_DIR, WORKSPACE_GUEST_DIR};
use super::{EngineError, TICK};
use crate::broker::net::NetPolicy;
use crate::broker::process::ProcessBroker;
use crate::broker::tls::TlsClient;
use crate::broker::{Capabilities, Refusals, Request};
use crate::config::{Grant, LimitsConfig, NetConfig};

/// The data of one instance's `Store`: WASI, the resource table and the brokered
/// capabilities of its environment.
pub struct HostState {
    wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) net: NetHooks,
    pub(crate) log_budget: LogBudget,
    pub(crate) table: ResourceTable,
    limits: StoreLimits,
    pub(crate) env_id: String,
    pub(crate) provider: String,
    pub(crate) broker: Option<ProcessBroker>,
    pub(crate) runtime: Arc<dyn RuntimePort>,
    pub(crate) state: StateWriter,
    pub(crate) max_state_entries: usize,
    /// When the call in progress must end; the epoch callback traps past it.
    deadline: Instant,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// State for an instance that serves no environment (reading `info`).
    pub(crate) fn detached(provider: &str, limits: &LimitsConfig) -> Self {
        Self::new(
            WasiCtxBuilder::new().build(),
            NetHooks::new(NetPolicy::deny_all(), None),
            "-".into(),
            provider.into(),
            None,
            Arc::new(super::types::NoRuntime),
            StateWriter::detached(),
            limits,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        wasi: WasiCtx,
        net: NetHooks,
        env_id: String,
        provider: String,
        broker: Option<ProcessBroker>,
        runtime: Arc<dyn RuntimePort>,
        state: StateWriter,
        limits: &LimitsConfig,
    ) -> Self {
        let mut table = ResourceTable::new();
        // Every WASI stream, HTTP body and child is an entry: cap what a guest can pile up.
        table.set_max_capacity(limits.max_resources);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(limits.host_call_bytes);
        Self {
            wasi,
            http,
            net,
            log_budget: LogBudget::default(),
            table,
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(16)
                .tables(16)
                .memories(4)
                .table_elements(100_000)
                .trap_on_grow_failure(true)
                .build(),
            env_id,
            provider,
            broker,
            runtime,
            state,
            max_state_entries: limits.max_state_entries,
            deadline: Instant::now(),
        }
    }
}

/// What an environment gives the instance that serves it.
pub struct InstanceSetup {
    /// Environment id (tags every log line and span).
    pub env_id: String,
    /// Host directory preopened as the workspace.
    pub workspace: PathBuf,
    /// The provider's own state directory, preopened as `/state`.
    pub state_dir: PathBuf,
    /// What the provider asks for in this environment (its `info()` request, with
    /// `{projectPath}` resolved).
    pub request: Request,
    /// What the operator grants the provider; the instance gets the part of its
    /// request that the grant covers.
    pub grant: Grant,
    /// The runtime connection.
    pub runtime: Arc<dyn RuntimePort>,
    /// The persisted resource id and key/values, as the instance changes them.
    pub state: StateWriter,
    /// Where the broker notes what it refuses this instance.
    pub refusals: Refusals,
}

/// What an instance's store is built with besides its setup: the engine's settings.
pub(crate) struct StoreSettings<'a> {
    pub(crate) limits: &'a LimitsConfig,
    pub(crate) net: &'a NetConfig,
    /// The TLS client of providers' `https` requests.
    pub(crate) tls: &'a TlsClient,
    /// The `tether` binary children run under (see [`crate::broker::guard`]).
    pub(crate) spawn_guard: Option<&'a PathBuf>,
}

pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    provider: &str,
    setup: InstanceSetup,
    settings: StoreSettings<'_>,
) -> Result<Store<HostState>, EngineError> {
    let StoreSettings {
        limits,
        net,
        tls,
        spawn_guard,
    } = settings;
    let caps = Capabilities::new(setup.request, setup.grant).with_refusals(setup.refusals);
    for reason in crate::broker::directory_fixes(&caps) {
        tracing::warn!(env = %setup.env_id, %provider, %reason, "directory not preopened");
    }
    let policy = caps.net_policy(setup.env_id.clone(), net.clone());
    // Only these directories exist for the guest; WASI resolves every path inside a
    // preopen with cap-std, which refuses `..`, absolute and symlink escapes.
    let mut dirs = vec![
        (setup.workspace.clone(), WORKSPACE_GUEST_DIR.to_owned()),
        (setup.state_dir.clone(), STATE_GUEST_DIR.to_owned()),
    ];
    dirs.extend(caps.directories().into_iter().map(|d| {
        let guest = d.display().to_string();
        (d, guest)
    }));
    std::fs::create_dir_all(&setup.state_dir).map_err(|e| {
        EngineError::Instantiate(format!("creating {}: {e}", setup.state_dir.display()))
    })?;
    let mut wasi = WasiCtxBuilder::new();
    for (host, guest) in &dirs {
        wasi.preopened_dir(host, guest, FsPerms::ReadWrite)
            .map_err(|e| EngineError::Instantiate(format!("preopening {}: {e}", host.display())))?;
    }
    let check = policy.clone();
    wasi.max_random_size(limits.host_call_bytes as u64)
        .allow_tcp(true)
        .allow_udp(true)
        // Names are resolved by the host for HTTP only; raw sockets take literal addresses.
        .allow_ip_name_lookup(false)
        .socket_addr_check(move |addr, usage| {
            let verdict = super::host::sockets::allowed(&check, addr, usage);
            Box::pin(async move { verdict })
        });
    let mut broker = ProcessBroker::new(
        setup.env_id.clone(),
        caps,
        setup.workspace,
        limits.max_processes,
        limits.output_tail_bytes,
    );
    if let Some(tether) = spawn_guard {
        broker = broker.with_guard(tether.clone());
    }
    let state = HostState::new(
        wasi.build(),
        NetHooks::new(policy, Some(tls.clone())),
        setup.env_id,
        provider.to_owned(),
        Some(broker),
        setup.runtime,
        setup.state,
        limits,
    );
    Ok(configured_store(engine, state))
}

pub(crate) fn configured_store(engine: &wasmtime::Engine, state: HostState) -> Store<HostState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    // At every tick a running guest yields to the guest executor, so guests share its
    // workers a tick at a time; past the call's deadline it traps instead.
    store.epoch_deadline_callback(|store| {
        if Instant::now() >= store.data().deadline {
            Err(Trap::Interrupt.into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// Gives the next guest call `timeout` of running time before it traps.
pub(crate) fn arm_deadline(store: &mut Store<HostState>, timeout: Duration) {
    store.data_mut().deadline = Instant::now() + timeout;
    store.set_epoch_deadline(1);
}

struct Job {
    call: Call,
    timeout: Duration,
    reply: oneshot::Sender<Result<Reply, CallError>>,
}

/// A cloneable front of one running provider instance.
#[derive(Clone, Debug)]
pub struct ProviderHandle {
    tx: mpsc::Sender<Job>,
    cancel: CancellationToken,
    finished: watch::Receiver<bool>,
    /// Provider name.
    pub provider: String,
    /// Provider version.
    pub version: String,
    /// SHA-256 of the component this instance runs.
    pub sha256: String,
}

impl ProviderHandle {
    /// Calls the instance, waiting at most `timeout` for the answer.
    pub async fn call(&self, call: Call, timeout: Duration) -> Result<Reply, CallError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                call,
                timeout,
                reply,
            })
            .await
            .map_err(|_| CallError::Closed("instance has shut down".into()))?;
        rx.await
            .map_err(|_| CallError::Closed("instance has shut down".into()))?
    }

    /// Ends the instance (abandoning a call in progress) and waits until its store,
    /// and with it every process it spawned, is gone.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// Whether both handles front the same instance.
    pub fn same_instance(&self, other: &ProviderHandle) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

pub(crate) async fn instantiate(
    guests: &GuestExecutor,
    pre: AnyPre,
    mut store: Store<HostState>,
    provider: String,
    version: String,
    sha256: String,
    limits: LimitsConfig,
) -> Result<ProviderHandle, EngineError> {
    const START_UP: Duration = Duration::from_secs(10);
    let env_id = store.data().env_id.clone();
    let (tx, rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let (done, finished) = watch::channel(false);
    let (ready, started) = oneshot::channel();
    let span = tracing::info_span!("provider", env = %env_id, provider = %provider);
    let actor_cancel = cancel.clone();
    guests.spawn(
        async move {
            // Instantiation runs the guest's start-up code: bound it like any call.
            arm_deadline(&mut store, START_UP);
            let instantiated =
                tokio::time::timeout(START_UP + TICK * 5, pre.instantiate(&mut store)).await;
            let bindings = match instantiated {
                Ok(Ok(bindings)) => bindings,
                Ok(Err(e)) => {
                    let _ = ready.send(Err(EngineError::Instantiate(format!("{e:#}"))));
                    return;
                }
                Err(_) => {
                    let _ = ready.send(Err(EngineError::Instantiate(format!(
                        "start-up code did not finish within {} s",
                        START_UP.as_secs()
                    ))));
                    return;
                }
            };
            if ready.send(Ok(())).is_err() {
                return;
            }
            run(store, bindings, rx, actor_cancel, limits).await;
            let _ = done.send(true);
        }
        .instrument(span),
    );
    started
        .await
        .map_err(|_| EngineError::Instantiate("the guest executor has shut down".into()))??;
    Ok(ProviderHandle {
        tx,
        cancel,
        finished,
        provider,
        version,
        sha256,
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

async fn run(
    mut store: Store<HostState>,
    bindings: AnyBindings,
    mut rx: mpsc::Receiver<Job>,
    cancel: CancellationToken,
    limits: LimitsConfig,
) {
    let mut dead: Option<String> = None;
    loop {
        let job = tokio::select! {
            _ = cancel.cancelled() => break,
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        if let Some(reason) = &dead {
            let _ = job.reply.send(Err(CallError::Closed(reason.clone())));
            continue;
        }
        arm_deadline(&mut store, job.timeout);
        // The epoch deadline catches a spinning guest; the wall-clock timeout catches
        // one parked in a host call. Either way the store is abandoned.
        let grace = job.timeout + TICK * 5;
        let call = tokio::time::timeout(
            grace,
            super::dispatch::dispatch(&mut store, &bindings, job.call),
        );
        let outcome = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = job.reply.send(Err(CallError::Closed("instance shut down".into())));
                break;
            }
            outcome = call => outcome,
        };
        let result = match outcome {
            Ok(Ok(r)) => super::types::bounded(r).map_err(CallError::Provider),
            Ok(Err(trap)) => {
                let err = classify(&trap, job.timeout, &limits);
                let error = crate::untrusted::logged(&err.to_string());
                tracing::error!(%error, "provider instance failed");
                dead = Some(err.to_string());
                Err(err)
            }
            Err(_) => {
                let err = CallError::TimedOut(job.timeout);
                tracing::error!(error = %err, "provider instance failed");
                dead = Some(err.to_string());
                Err(err)
            }
        };
        let _ = job.reply.send(result);
    }
    // Dropping the store drops the resource table: spawned processes are killed.
    drop(store);
    tracing::debug!("provider instance shut down");
}
