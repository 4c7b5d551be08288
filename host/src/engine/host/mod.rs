//! Host implementations of the provider world's imports, one file per interface.

pub(crate) mod filesystem;
pub(crate) mod http;
pub(crate) mod log;
pub(crate) mod open_files;
pub(crate) mod preopens;
mod process;
mod runtime;
pub(crate) mod sockets;
mod state;

use super::bindings::types;
use super::instance::HostState;

impl types::Host for HostState {}
