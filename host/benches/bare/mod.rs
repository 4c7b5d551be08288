//! Bare wasmtime, the yardstick of the provider benchmark: the same component in a
//! plain `wasmtime::Engine` with the same code-shaping settings as Tether's (component
//! model, epoch interruption, the wasm stack cap), a component `Linker` with WASI p2
//! (`wasi:http` included, with wasmtime's default hooks) and the provider world's own
//! imports stubbed as traps, a `Store` holding bare WASI and HTTP contexts,
//! `InstancePre::instantiate_async`, and a typed async export call made in the calling
//! task. No actor, no broker, no preopens, no limiter, no deadline armed per call:
//! what wasmtime itself costs.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, InstancePre, Lift, Linker, ResourceTable,
    ResourceType, TypedFunc,
};
use wasmtime::{Config, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

type BoxError = Box<dyn std::error::Error>;

/// The provider interface every built-in exports (any version).
const PROVIDER_EXPORT: &str = "tether:provider/provider@";

/// The store data of a bare instance: WASI and `wasi:http`, nothing else.
pub(crate) struct BareState {
    ctx: WasiCtx,
    http: WasiHttpCtx,
    hooks: NoRequests,
    table: ResourceTable,
}

/// `wasi:http` hooks that send nothing (the benchmark makes no request).
struct NoRequests;

type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
);

impl WasiHttpHooks for NoRequests {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<Sent, HttpError>> + Send> {
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for BareState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// `health-state` of the provider world, lifted directly (a typed call).
#[allow(dead_code)] // built by the lift, never by name
#[derive(ComponentType, Lift, Debug)]
#[component(enum)]
#[repr(u8)]
pub(crate) enum HealthState {
    #[component(name = "healthy")]
    Healthy,
    #[component(name = "degraded")]
    Degraded,
    #[component(name = "unhealthy")]
    Unhealthy,
}

/// `health` of the provider world.
#[derive(ComponentType, Lift, Debug)]
#[component(record)]
pub(crate) struct Health {
    pub(crate) state: HealthState,
    pub(crate) detail: Option<String>,
}

/// One instance: its store and its typed `check-health`.
pub(crate) struct BareInstance {
    pub(crate) store: Store<BareState>,
    pub(crate) check_health: TypedFunc<(), (Health,)>,
}

/// A component compiled and pre-instantiated once, as an embedder would keep it.
pub(crate) struct Bare {
    engine: wasmtime::Engine,
    pre: InstancePre<BareState>,
    check_health: ComponentExportIndex,
}

impl Bare {
    /// Compiles `bytes` in an engine configured like Tether's (`max_wasm_stack` is
    /// Tether's cap).
    pub(crate) fn new(bytes: &[u8], max_wasm_stack: usize) -> Result<Self, BoxError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(max_wasm_stack);
        let engine = wasmtime::Engine::new(&config)?;
        let component = Component::new(&engine, bytes)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        stub_provider_imports(&mut linker, &engine, &component)?;
        let pre = linker.instantiate_pre(&component)?;
        let ty = component.component_type();
        let iface = (ty.exports(&engine).map(|(name, _)| name.to_owned()))
            .find(|name| name.starts_with(PROVIDER_EXPORT))
            .ok_or("the component exports no provider interface")?;
        let iface = component
            .get_export_index(None, &iface)
            .ok_or("no provider interface index")?;
        let check_health = component
            .get_export_index(Some(&iface), "check-health")
            .ok_or("the provider interface has no check-health")?;
        Ok(Self {
            engine,
            pre,
            check_health,
        })
    }

    /// A new store with a bare WASI context, instantiated from the reused
    /// `InstancePre`, with its typed `check-health` looked up once.
    pub(crate) async fn instantiate(&self) -> Result<BareInstance, BoxError> {
        let state = BareState {
            ctx: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            hooks: NoRequests,
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        // Nothing advances this engine's epoch: one tick of deadline never runs out.
        store.set_epoch_deadline(1);
        let instance = self.pre.instantiate_async(&mut store).await?;
        let check_health = instance.get_typed_func(&mut store, self.check_health)?;
        Ok(BareInstance {
            store,
            check_health,
        })
    }
}

/// Defines every import outside WASI (the provider world's own interfaces) as a
/// function that traps and a resource of no use, as `define_unknown_imports_as_traps`
/// does; that one cannot be used here, since it also re-opens the WASI instances under
/// the guest's exact version, which hides the linker's semver-compatible ones and
/// fails the type check of their resources.
fn stub_provider_imports(
    linker: &mut Linker<BareState>,
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<(), BoxError> {
    let ty = component.component_type();
    for (name, import) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(instance) = import.ty else {
            continue;
        };
        if name.starts_with("wasi:") {
            continue;
        }
        let mut stubs = linker.instance(name)?;
        for (item, export) in instance.exports(engine) {
            match export.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{name}#{item}");
                    stubs.func_new(item, move |_, _, _, _| {
                        Err(wasmtime::format_err!("{what} is stubbed in bare wasmtime"))
                    })?;
                }
                ComponentItem::Resource(_) => {
                    stubs.resource(item, ResourceType::host::<()>(), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

impl BareInstance {
    /// One typed async `check-health` call, in the calling task.
    pub(crate) async fn check_health(&mut self) -> Result<Health, BoxError> {
        let (health,) = self.check_health.call_async(&mut self.store, ()).await?;
        Ok(health)
    }
}
