//! The one `bindgen!` of the provider world, version 0.1.0.
//!
//! Imports are async and trappable (a host bug traps; expected failures are WIT
//! `result`s); the `child` resource is backed by the broker's [`Child`].
//!
//! [`Child`]: crate::broker::process::Child

wasmtime::component::bindgen!({
    path: "../wit/tether-provider@0.1.0",
    world: "tether:provider/provider-world",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "tether:provider/process.child": crate::broker::process::Child,
    },
});

pub(crate) use self::tether::provider::{log, process, runtime, state, types};
