//! Host implementations of the provider world's imports, one file per interface.

pub(crate) mod filesystem;
pub(crate) mod http;
mod listing;
pub(crate) mod log;
pub(crate) mod open_files;
pub(crate) mod preopens;
mod process;
mod runtime;
pub(crate) mod sockets;
mod state;

use wasmtime::component::Linker;

use super::bindings::types;
use super::instance::HostState;

/// Adds what `add` defines in place of the definitions of the same names already in
/// `linker` (wasmtime-wasi's, added before).
pub(crate) fn shadowing(
    linker: &mut Linker<HostState>,
    add: impl FnOnce(&mut Linker<HostState>) -> wasmtime::Result<()>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = add(linker);
    linker.allow_shadowing(false);
    added
}

impl types::Host for HostState {}
