//! `tether:provider@0.2.0`, the newest version: its bindings, which the host's import
//! implementations (`engine/host/`) and [`crate::engine::types`] use through
//! [`super::latest`]. When a newer version arrives, this module keeps the bindings and
//! gains the conversions up to it, as [`super::v0_1`] has.

wasmtime::component::bindgen!({
    path: "../wit/tether-provider@0.2.0",
    world: "tether:provider/provider-world",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "tether:provider/process.child": crate::broker::process::Child,
    },
});

pub(crate) use self::tether::provider::{log, process, runtime, state, types};
