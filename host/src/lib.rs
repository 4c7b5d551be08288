//! Tether: a control plane for remote agent environments.
//!
//! Providers are WebAssembly components that create or reconnect the resource behind
//! each environment; runtimes connect back over WebSocket; apps talk to runtimes through
//! the relay. Data flows one way, from the edge down:
//!
//! - [`cli`] parses flags into settings and runs a command (`serve`, `runtime`).
//! - [`api`] is the HTTP and WebSocket surface (axum); it only calls [`lifecycle`].
//! - [`lifecycle`] owns environments: desired versus actual state, starts and stops,
//!   runtime tokens; it drives the layers below.
//! - [`engine`] loads provider components (wasmtime) and runs one actor per instance;
//!   [`broker`] decides what an instance may spawn or touch.
//! - [`store`] persists records in `.codebolt/environments.json`; [`watch`] is the
//!   debounced directory watch behind its live edits and the providers' hot reload.
//! - [`relay`] joins a runtime connection with its apps, routing by thread, and lets
//!   either side resume without loss inside a bounded window (`docs/protocol.md`).
//! - [`auth`] holds the API token and mints runtime tokens; [`config`] the operator's
//!   settings from flags and `tether.toml`, as plain types the other modules take (it
//!   imports none of them).
//! - `sync` recovers poisoned locks, in one place.
//! - [`names`] is the one rule for names that become paths (environments, providers);
//!   [`untrusted`] cuts and escapes the strings a provider sends before the host
//!   stores, shows or logs them.
//! - [`reference_runtime`] is the runtime `tether runtime` runs inside an environment;
//!   [`scaffold`] writes a new provider crate (`tether provider new`).

pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod engine;
pub mod lifecycle;
pub mod names;
pub mod reference_runtime;
pub mod relay;
pub mod scaffold;
pub mod server;
pub mod store;
mod sync;
pub mod untrusted;
pub mod watch;
