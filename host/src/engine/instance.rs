//! What one provider instance runs in: its `Store`, with the WASI context, the
//! brokered capabilities and the limits of the environment it serves, and the epoch
//! deadline every call runs under. How calls reach it is [`super::handle`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;

use super::EngineError;
use super::host::filesystem::Quotas;
use super::host::http::{HTTP_RESOURCE_BYTES, NetHooks};
use super::host::log::LogBudget;
use super::host::open_files::{HostFiles, OpenFiles};
use super::host::preopens::Preopen;
use super::persisted::StateWriter;
use super::types::{RuntimePort, STATE_GUEST_DIR, WORKSPACE_GUEST_DIR};
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
    pub(crate) log_budget: Arc<LogBudget>,
    pub(crate) table: ResourceTable,
    /// The directories the guest sees, in order, opened when it asks for them.
    pub(crate) preopens: Vec<Preopen>,
    /// Which disk quota each open descriptor is under.
    pub(crate) disk: Quotas,
    /// The open files the guest holds on the host.
    pub(crate) files: OpenFiles,
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
            NetHooks::new(NetPolicy::deny_all(), None, Arc::default()),
            "-".into(),
            provider.into(),
            None,
            Arc::new(super::types::NoRuntime),
            StateWriter::detached(),
            limits,
            // No directory to open files in; a count of its own.
            OpenFiles::new(
                HostFiles::new(),
                limits.max_open_files,
                limits.max_open_files,
            ),
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
        files: OpenFiles,
    ) -> Self {
        let mut table = ResourceTable::new();
        // Every WASI stream, HTTP body and child is an entry: cap what a guest can pile up.
        table.set_max_capacity(limits.max_resources);
        let log_budget = net.log_budget().clone();
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(limits.host_call_bytes.min(HTTP_RESOURCE_BYTES));
        Self {
            wasi,
            http,
            net,
            log_budget,
            table,
            preopens: Vec::new(),
            disk: Quotas::default(),
            files,
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
    /// The device and inode of the workspace and of the state directory as the host
    /// made them, reached through no link, when it did: found at their paths when
    /// the instance is made, or it is not (a part of a path swapped for a link since
    /// would hand the provider a directory elsewhere).
    pub made: Option<[(u64, u64); 2]>,
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
    /// The spawn guards children run under (see [`crate::broker::launch`]).
    pub(crate) spawn_guard: Option<&'a Arc<crate::broker::launch::Guards>>,
    /// The quotas on workspaces and state directories.
    pub(crate) disk: &'a crate::disk_quota::DiskQuotas,
    /// The count of open files all instances hold.
    pub(crate) files: &'a Arc<HostFiles>,
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
        disk,
        files,
    } = settings;
    let caps = Capabilities::new(setup.request, setup.grant).with_refusals(setup.refusals);
    for reason in crate::broker::directory_fixes(&caps) {
        tracing::warn!(env = %setup.env_id, %provider, %reason, "directory not preopened");
    }
    let policy = caps.net_policy(setup.env_id.clone(), net.clone());
    // Only these directories exist for the guest; WASI resolves every path inside a
    // preopen with cap-std, which refuses `..`, absolute and symlink escapes. They are
    // opened when the guest asks for them; a missing one fails here, where the
    // environment's start can say which.
    let preopened = |host: &std::path::Path, made: std::io::Result<Preopen>| {
        made.map_err(|e| EngineError::Instantiate(format!("preopening {}: {e}", host.display())))
    };
    // The workspace and the state directory are the host's own: never through a link.
    // What the guest writes there is capped (see `crate::disk_quota`).
    let preopen = |host: &std::path::Path, guest: &str, made: Option<(u64, u64)>, cap: u64| {
        let own = Preopen::own(host.to_owned(), guest.to_owned());
        let own = own.and_then(|p| p.made_as(made));
        preopened(host, own.map(|p| p.with_quota(disk, cap)))
    };
    let [workspace_made, state_made] = setup.made.map_or([None, None], |m| m.map(Some));
    let mut dirs = vec![preopen(
        &setup.workspace,
        WORKSPACE_GUEST_DIR,
        workspace_made,
        limits.workspace_bytes,
    )?];
    // After the first start the state directory exists: one stat, no mkdir.
    dirs.push(
        match preopen(
            &setup.state_dir,
            STATE_GUEST_DIR,
            state_made,
            limits.state_bytes,
        ) {
            Ok(dir) => dir,
            Err(_) => {
                // The provider's alone (it may keep its backend's credentials there): no
                // other local user lists or reads it, whatever the umask.
                use std::os::unix::fs::DirBuilderExt;
                let mut private = std::fs::DirBuilder::new();
                private.recursive(true).mode(0o700);
                private.create(&setup.state_dir).map_err(|e| {
                    EngineError::Instantiate(format!("creating {}: {e}", setup.state_dir.display()))
                })?;
                preopen(
                    &setup.state_dir,
                    STATE_GUEST_DIR,
                    state_made,
                    limits.state_bytes,
                )?
            }
        },
    );
    // The operator's grants, as the operator made them (a link among them).
    for dir in caps.directories() {
        let made = Preopen::at(dir.clone(), dir.display().to_string());
        dirs.push(preopened(&dir, made)?);
    }
    // The provider's own lines, those its children write and the refusals it meets
    // share one budget.
    let log_budget = Arc::new(LogBudget::default());
    let mut wasi = WasiCtxBuilder::new();
    let (check, budget) = (policy.clone(), log_budget.clone());
    wasi.max_random_size(limits.host_call_bytes as u64)
        .allow_tcp(true)
        // Every datagram is checked against a `udp://` grant: no UDP socket for a
        // provider that has none (it could do nothing with it but hold a file open).
        .allow_udp(policy.grants_scheme("udp"))
        // Names are resolved by the host for HTTP only; raw sockets take literal addresses.
        .allow_ip_name_lookup(false)
        .socket_addr_check(move |addr, usage| {
            let verdict = super::host::sockets::allowed(&check, &budget, addr, usage);
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
    let gate = log_budget.clone();
    broker = broker.with_log_gate(Arc::new(move || gate.take(Instant::now()).is_some()));
    let host_cap = limits
        .host_open_files
        .unwrap_or_else(|| files.default_cap());
    let mut state = HostState::new(
        wasi.build(),
        NetHooks::new(policy, Some(tls.clone()), log_budget),
        setup.env_id,
        provider.to_owned(),
        Some(broker),
        setup.runtime,
        setup.state,
        limits,
        OpenFiles::new(files.clone(), limits.max_open_files, host_cap),
    );
    state.preopens = dirs;
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
