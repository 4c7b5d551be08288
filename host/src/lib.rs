//! Tether: a control plane for remote agent environments.
//!
//! Providers are WebAssembly components that create or reconnect the resource behind
//! each environment; runtimes connect back over WebSocket; apps talk to runtimes through
//! the relay. Data flows one way, from the edge down:
//!
//! - [`cli`] parses flags into settings and runs a command (`serve`, `runtime`).
//! - `api` is the HTTP and WebSocket surface (axum); it only calls `lifecycle`, and
//!   hands an admitted WebSocket to the relay.
//! - `lifecycle` owns environments: desired versus actual state, starts and stops,
//!   runtime tokens; it drives the layers below, and holds the operator's settings in
//!   force, reloading `tether.toml` live (watcher, `SIGHUP`) for the next start.
//! - [`engine`] loads provider components (wasmtime) and runs each instance's calls in turn behind its `ProviderHandle`;
//!   [`broker`] decides what an instance may spawn or touch.
//! - [`store`] persists records in `.codebolt/environments.json` through a write-ahead
//!   journal compacted into it in the background; `watch` is the
//!   debounced directory watch behind its live edits, the providers' hot reload and
//!   `tether.toml`'s live reload.
//! - [`relay`] carries a WebSocket frame from socket to socket: it joins a runtime
//!   connection with its apps, routing by thread, and lets
//!   either side resume without loss inside a bounded window (`docs/protocol.md`).
//! - `auth` holds the operator's API token and mints runtime tokens; `tenancy` the
//!   users' tokens, their scopes and the `Principal` every request
//!   runs as; [`config`] the operator's
//!   settings from flags and `tether.toml` (where it is looked up, what changed between
//!   two versions), as plain types the other modules take (it imports none of them).
//! - [`audit`] is the append-only audit log (`.codebolt/audit.jsonl`); `throttle`
//!   refuses an address after too many failed authentications.
//! - `logs` keeps each environment's own log (`.codebolt/logs/`), fed by a `tracing`
//!   layer with every event that carries the environment's id.
//! - `sync` recovers poisoned locks, in one place; `atomic` replaces a file all at once.
//! - `own_dirs` reaches the host's directories in the data directory through no link
//!   (one `O_NOFOLLOW` directory descriptor per part) and acts relative to them;
//!   `trees` removes a tree a provider filled (a workspace), however deep;
//!   [`disk_quota`] caps the disk a provider's writes take in its workspace and state
//!   directory.
//! - `names` is the one rule for names that become paths (environments, providers);
//!   `untrusted` cuts and escapes the strings a provider sends before the host
//!   stores, shows or logs them; `host_paths` takes the data directory's path out of
//!   text a user's token reads.
//! - `reference_runtime` is the runtime `tether runtime` runs inside an environment;
//!   `scaffold` writes a new provider crate (`tether provider new`).
//! - TLS: `server` serves over TLS when given a certificate (renewed live);
//!   [`broker::tls`] is providers' `https` client; `client_tls` how the runtime and the
//!   CLI trust a host (system roots plus `TETHER_CA_FILE`); `pem` reads the files.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

// Public for the binary (`cli`), the relay client in tests (`relay::peer`) and the
// benchmarks, which drive the audit log, engine, broker, store and disk quota's walk
// directly.
pub mod audit;
pub mod broker;
pub mod cli;
pub mod config;
pub mod disk_quota;
pub mod engine;
pub mod relay;
pub mod store;

mod api;
mod atomic;
mod auth;
mod client_tls;
mod cluster;
mod host_paths;
mod lifecycle;
mod logs;
mod names;
mod own_dirs;
mod pem;
mod redact;
mod reference_runtime;
mod scaffold;
mod server;
mod sync;
mod tenancy;
#[cfg(test)]
mod testing;
mod throttle;
mod trees;
mod untrusted;
mod watch;
