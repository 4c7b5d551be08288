//! Outgoing network settings (`[net]` in `tether.toml`), shared by every environment;
//! the broker's `NetPolicy` applies them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Operator network settings shared by every environment.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Static name → address overrides consulted before DNS (like curl's `--resolve`).
    pub hosts: BTreeMap<String, IpAddr>,
    /// Longest a TCP connect may take.
    pub connect_timeout: Duration,
    /// Longest the wait for a response's first byte may take.
    pub first_byte_timeout: Duration,
    /// Concurrent outgoing connections per environment.
    pub max_connections: usize,
    /// CA bundles (PEM) whose certificates providers' `https` requests also trust.
    pub extra_ca_files: Vec<PathBuf>,
    /// Whether the Mozilla root set (webpki-roots) is trusted besides `extra_ca_files`.
    pub use_builtin_roots: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            hosts: BTreeMap::new(),
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(15),
            max_connections: 16,
            extra_ca_files: Vec::new(),
            use_builtin_roots: true,
        }
    }
}
