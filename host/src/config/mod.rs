//! Operator settings: command-line flags plus the optional `tether.toml`.
//!
//! Everything here is parsed and validated whole — at start-up and at each live
//! reload (`lifecycle::config_reload`) — so the rest of the host never sees raw
//! strings. `locate` finds the file, `diff` names the keys two versions differ in. Grants live here because they are the operator's word;
//! nothing an API caller sends (an environment's `config`) can widen them.
//!
//! This module is a leaf: it defines the plain settings types the other modules take
//! (grants and their patterns, network, compile cache, built-in replacements) and
//! imports none of them, so what a setting *does* lives with the module that acts on
//! it (matching in the broker, opening the cache in the engine).

mod audit;
mod cache;
mod cluster;
mod diff;
mod digest;
mod file;
mod grant;
mod locate;
mod net;
mod operator;
mod parse_error;
mod pattern;
mod replace;
mod serving;
mod templates;
mod tenancy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use audit::{AuditConfig, ThrottleConfig};
pub use cache::CompileCacheConfig;
pub use cluster::{ClusterConfig, ClusterRelay, DEFAULT_LEASE_TTL, is_host_id};
pub use diff::{ConfigDiff, needs_restart};
pub use digest::ProvidersDigest;
use file::{FileCache, FileConfig, FileNet, FileRelay};
use grant::check_set_env_entry;
pub(crate) use grant::valid_env_name;
pub use grant::{GIT_HARDENING, Grant, GrantOrigin, git_worktree_commands};
pub use locate::{CONFIG_FILE_NAME, ConfigSource};
pub use net::NetConfig;
pub use operator::OperatorConfig;
pub use parse_error::ParseError;
pub(crate) use pattern::is_rest;
pub use pattern::{
    ANY_ARG, ANY_REST, CommandPattern, PATH_ARG, PatternError, UrlPattern, UrlPatternError,
};
pub use replace::BuiltinReplacement;
pub use serving::{PublicUrl, ServingConfig, TlsFiles};
pub use templates::{
    MAX_TEMPLATES, Template, TemplateRestart, TemplateScope, TemplateView, templates_digest,
};
pub use tenancy::{MAX_OVERRIDES, Quota, TenancyConfig};

/// The default listen address of `tether serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2719";

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The config file is not valid TOML of the expected shape.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Where and why parsing failed (quoting none of the file's values).
        source: ParseError,
    },
    /// The data directory could not be created or resolved.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `--config` names a file that is not there.
    #[error("config file {path} not found (looked for {})", list(searched))]
    Missing {
        /// The file as given.
        path: PathBuf,
        /// Where it was looked for.
        searched: Vec<PathBuf>,
    },
    /// The config file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path} is larger than {limit} bytes: a tether.toml is at most 1 MiB")]
    TooLarge {
        /// The config file.
        path: PathBuf,
        /// The limit, [`MAX_CONFIG_BYTES`].
        limit: u64,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// The most `tether.toml` may hold: far above any real one, and a bound on what a
/// reload reads and parses when someone points the file at something huge (or at
/// a device that never ends).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The longest any duration setting may be (a year): longer is no one's intent, and
/// a deadline reckoned from a clock reading and a near-endless setting would overflow.
pub const MAX_SETTING_SECS: u64 = 366 * 24 * 3600;

/// `n` seconds of setting `what`, at most [`MAX_SETTING_SECS`] and more than 0.
fn setting_secs(n: u64, what: &str) -> Result<Duration, ConfigError> {
    match n {
        0 => Err(ConfigError::Invalid(format!("{what} must be > 0"))),
        1..=MAX_SETTING_SECS => Ok(Duration::from_secs(n)),
        _ => Err(ConfigError::Invalid(format!(
            "{what} must be at most {MAX_SETTING_SECS} (a year), not {n}"
        ))),
    }
}

/// `n` milliseconds of setting `what`, at most [`MAX_SETTING_SECS`] and more than 0.
fn setting_ms(n: u64, what: &str) -> Result<Duration, ConfigError> {
    match n {
        0 => Err(ConfigError::Invalid(format!("{what} must be > 0"))),
        _ if n <= MAX_SETTING_SECS * 1000 => Ok(Duration::from_millis(n)),
        _ => Err(ConfigError::Invalid(format!(
            "{what} must be at most {} (a year), not {n}",
            MAX_SETTING_SECS * 1000
        ))),
    }
}

/// `n` KiB of setting `what` in bytes, at most `max_kib` and more than 0.
fn setting_kib(n: usize, max_kib: usize, what: &str) -> Result<usize, ConfigError> {
    match n {
        0 => Err(ConfigError::Invalid(format!("{what} must be > 0"))),
        _ if n <= max_kib => Ok(n << 10),
        _ => Err(ConfigError::Invalid(format!(
            "{what} must be at most {max_kib}, not {n}"
        ))),
    }
}

fn list(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// Settings of `tether serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// TLS and the public URL (`[server]`, `--tls-cert`, `--tls-key`, `--public-url`).
    pub serving: ServingConfig,
    /// Absolute data directory.
    pub data_dir: PathBuf,
    /// Timeouts of lifecycle steps.
    pub lifecycle: LifecycleConfig,
    /// Per-instance resource limits.
    pub limits: LimitsConfig,
    /// Health checking of running environments.
    pub health: HealthConfig,
    /// Backoff of policy restarts.
    pub restart: RestartConfig,
    /// Operator grants by provider name; providers without an entry get their default.
    pub grants: BTreeMap<String, Grant>,
    /// Operator config by provider name, merged over environments' config (secrets
    /// such as API keys live here, never in the records).
    pub provider_config: BTreeMap<String, OperatorConfig>,
    /// Drop-ins the operator lets replace a built-in, by the built-in's name
    /// (`replace_builtin`); any other drop-in with a built-in's name is refused.
    pub builtin_replacements: BTreeMap<String, BuiltinReplacement>,
    /// Relay windows, limits and liveness.
    pub relay: RelayConfig,
    /// Outgoing network settings (timeouts, connection cap, static host overrides).
    pub net: NetConfig,
    /// Where compiled providers are cached (`[cache]`; default `.codebolt/cache`).
    pub compile_cache: CompileCacheConfig,
    /// Rotation and sampling of the audit log (`[audit]`).
    pub audit: AuditConfig,
    /// Each user's environment limits (`[tenancy]`).
    pub tenancy: TenancyConfig,
    /// Cluster mode (`[cluster]`, `--cluster`, `--host-id`); `None`: this host alone.
    pub cluster: Option<ClusterConfig>,
    /// What apps may provision environments from, by name (`[templates.NAME]`).
    pub templates: BTreeMap<String, Template>,
    /// Failed-authentication throttling per address (`[auth]`).
    pub throttle: ThrottleConfig,
    /// The `tether` binary whose spawn guard runs every brokered child (set by
    /// `tether serve` to itself); `None` kills only the child's process group.
    pub spawn_guard: Option<PathBuf>,
    /// The `tether` binary that compiles providers that are not built in first, in a
    /// child process under `[limits] compile_mib` and `compile_secs` (set by `tether
    /// serve` to itself); `None` compiles them in the host.
    pub compiler: Option<PathBuf>,
    /// The `tether.toml` these settings were read from (or would be).
    pub source: ConfigSource,
}

/// Relay windows, limits and liveness (`[relay]` in `tether.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Unacknowledged messages kept per connection identity for replay.
    pub window_messages: usize,
    /// Unacknowledged bytes kept per connection identity for replay.
    pub window_bytes: usize,
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Live connections (runtime and apps) per environment.
    pub max_connections: usize,
    /// How often the host pings a quiet peer.
    pub ping_interval: Duration,
    /// Silence after which a peer counts as dead and is closed.
    pub idle_timeout: Duration,
    /// How long a disconnected app's session (and its window) waits to be resumed.
    pub session_ttl: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            window_messages: 8192,
            window_bytes: 8 << 20,
            max_message_bytes: 1 << 20,
            max_connections: 256,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            session_ttl: Duration::from_secs(300),
        }
    }
}

/// Timeouts of lifecycle steps.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// Longest a provider's start may take.
    pub start_timeout: Duration,
    /// Longest a provider's stop may take.
    pub stop_timeout: Duration,
    /// Longest any other provider call may take.
    pub call_timeout: Duration,
    /// Wait before the first retry of a failed removal of a deleted environment's
    /// resource; doubled per attempt up to an hour.
    pub removal_retry: Duration,
}

/// Longest `lifecycle.removal_retry_secs`: an hour, the longest wait between retries.
pub const MAX_REMOVAL_RETRY_SECS: u64 = 3600;

/// Per-instance resource limits.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Linear memory an instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Live child processes per environment.
    pub max_processes: usize,
    /// Bytes of output kept per child process.
    pub output_tail_bytes: usize,
    /// Bytes an environment's workspace may hold before its provider's writes there
    /// fail as on a full disk (see `disk_quota`).
    pub workspace_bytes: u64,
    /// Bytes a provider's state directory may hold, likewise.
    pub state_bytes: u64,
    /// Open files (descriptors, directory listings, file streams) one instance may hold
    /// on the host through WASI.
    pub max_open_files: usize,
    /// Open files all instances together may hold; `None`: a sixteenth of the process's
    /// open-files limit.
    pub host_open_files: Option<usize>,
    /// Persisted provider state entries per environment.
    pub max_state_entries: usize,
    /// Entries in an instance's resource table (streams, bodies, children, ...).
    pub max_resources: usize,
    /// Bytes a single host call may be asked to produce or hold (random bytes,
    /// HTTP header fields).
    pub host_call_bytes: usize,
    /// Worker threads of the guest executor (see `engine::executor`).
    pub guest_threads: usize,
    /// Whether instances share their provider's initial memory image (copy-on-write)
    /// instead of each copying it; `None` leaves it to `vm.max_map_count` (see
    /// `engine`).
    pub share_memory_images: Option<bool>,
    /// Memory a provider that is not built in may take to compile (see
    /// `engine::compile`).
    pub compile_bytes: u64,
    /// Time it may take to compile.
    pub compile_time: Duration,
}

/// Health checking of running environments.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// How often the provider's `check-health` runs and runtime liveness is checked.
    pub interval: Duration,
    /// Longest a `check-health` call may take.
    pub timeout: Duration,
    /// Consecutive failed checks before the environment counts as failed.
    pub failure_threshold: u32,
    /// How long a disconnected runtime has to come back before the environment fails.
    pub runtime_grace: Duration,
}

/// Backoff of policy restarts.
#[derive(Debug, Clone)]
pub struct RestartConfig {
    /// Delay before the first restart.
    pub initial_backoff: Duration,
    /// Longest delay between restarts.
    pub max_backoff: Duration,
    /// Restarts in a row before `on-failure` gives up (`always` ignores it).
    pub max_retries: u32,
    /// Running this long without failing resets the backoff and the retry count.
    pub stable_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            failure_threshold: 3,
            runtime_grace: Duration::from_secs(30),
        }
    }
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_retries: 5,
            stable_after: Duration::from_secs(300),
        }
    }
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(30),
            removal_retry: Duration::from_secs(30),
        }
    }
}

/// Workers of the guest executor unless configured: one less than the machine's cores,
/// at least one, so the API and the relay always keep a core whatever guests do.
fn default_guest_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            max_processes: 32,
            output_tail_bytes: 64 << 10,
            max_state_entries: 64,
            max_open_files: 256,
            host_open_files: None,
            workspace_bytes: 8 << 30,
            state_bytes: 256 << 20,
            max_resources: 4096,
            guest_threads: default_guest_threads(),
            host_call_bytes: 1 << 20,
            share_memory_images: None,
            compile_bytes: 2 << 30,
            compile_time: Duration::from_secs(120),
        }
    }
}

impl ServeConfig {
    /// Builds settings from flags and the config file at `config_path` (absent is fine).
    pub fn load(
        listen: SocketAddr,
        data_dir: PathBuf,
        config_path: &Path,
    ) -> Result<Self, ConfigError> {
        Self::load_source(listen, data_dir, ConfigSource::at(config_path)).map(|(c, _)| c)
    }

    /// Builds settings from flags and the file `source` located; also returns the
    /// file's table (the base the next reload is compared with).
    pub fn load_source(
        listen: SocketAddr,
        data_dir: PathBuf,
        source: ConfigSource,
    ) -> Result<(Self, toml::Table), ConfigError> {
        let (file, table) = read_file(&source)?;
        std::fs::create_dir_all(&data_dir).map_err(|source| ConfigError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|source| ConfigError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
        let mut config = Self::defaults(listen, data_dir);
        config.source = ConfigSource {
            found: !table.is_empty() || source.path.is_file(),
            ..source
        };
        config.apply(file)?;
        Ok((config, table))
    }

    /// These settings read again from their file (a live reload): the flags, the
    /// data directory and the spawn guard are kept; the file's table is returned too.
    pub fn reread(&self) -> Result<(Self, toml::Table), ConfigError> {
        let (file, table) = read_file(&self.source)?;
        let mut config = Self::defaults(self.listen, self.data_dir.clone());
        config.spawn_guard = self.spawn_guard.clone();
        config.compiler = self.compiler.clone();
        config.source = ConfigSource {
            found: self.source.path.is_file(),
            ..self.source.clone()
        };
        config.apply(file)?;
        Ok((config, table))
    }

    /// Settings with every default, for a data directory that already exists.
    pub fn defaults(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            serving: ServingConfig::default(),
            lifecycle: LifecycleConfig::default(),
            limits: LimitsConfig::default(),
            health: HealthConfig::default(),
            restart: RestartConfig::default(),
            grants: BTreeMap::new(),
            provider_config: BTreeMap::new(),
            builtin_replacements: BTreeMap::new(),
            relay: RelayConfig::default(),
            net: NetConfig::default(),
            compile_cache: CompileCacheConfig::in_dir(data_dir.join(".codebolt/cache")),
            audit: AuditConfig::default(),
            tenancy: TenancyConfig::default(),
            cluster: None,
            templates: BTreeMap::new(),
            throttle: ThrottleConfig::default(),
            spawn_guard: None,
            compiler: None,
            source: ConfigSource::at(&data_dir.join(CONFIG_FILE_NAME)),
            data_dir,
        }
    }

    fn apply(&mut self, file: FileConfig) -> Result<(), ConfigError> {
        let secs = |v: Option<u64>, default: Duration, what: &str| match v {
            Some(n) => setting_secs(n, &format!("lifecycle.{what}")),
            None => Ok(default),
        };
        let l = &mut self.lifecycle;
        l.start_timeout = secs(
            file.lifecycle.start_timeout_secs,
            l.start_timeout,
            "start_timeout_secs",
        )?;
        l.stop_timeout = secs(
            file.lifecycle.stop_timeout_secs,
            l.stop_timeout,
            "stop_timeout_secs",
        )?;
        l.call_timeout = secs(
            file.lifecycle.call_timeout_secs,
            l.call_timeout,
            "call_timeout_secs",
        )?;
        l.removal_retry = secs(
            file.lifecycle.removal_retry_secs,
            l.removal_retry,
            "removal_retry_secs",
        )?;
        if l.removal_retry.as_secs() > MAX_REMOVAL_RETRY_SECS {
            return Err(ConfigError::Invalid(format!(
                "lifecycle.removal_retry_secs must be at most {MAX_REMOVAL_RETRY_SECS}"
            )));
        }
        if let Some(mib) = file.limits.memory_mib {
            if mib == 0 || mib > MAX_MEMORY_MIB {
                return Err(ConfigError::Invalid(format!(
                    "limits.memory_mib must be 1-{MAX_MEMORY_MIB}, not {mib}"
                )));
            }
            self.limits.memory_bytes = mib << 20;
        }
        for (setting, mib, bytes) in [
            (
                "workspace_mib",
                file.limits.workspace_mib,
                &mut self.limits.workspace_bytes,
            ),
            (
                "state_mib",
                file.limits.state_mib,
                &mut self.limits.state_bytes,
            ),
        ] {
            if let Some(mib) = mib {
                if mib == 0 || mib > MAX_DISK_MIB {
                    return Err(ConfigError::Invalid(format!(
                        "limits.{setting} must be 1-{MAX_DISK_MIB}, not {mib}"
                    )));
                }
                *bytes = mib << 20;
            }
        }
        if let Some(mib) = file.limits.compile_mib {
            if !(MIN_COMPILE_MIB..=MAX_MEMORY_MIB as u64).contains(&mib) {
                return Err(ConfigError::Invalid(format!(
                    "limits.compile_mib must be {MIN_COMPILE_MIB}-{MAX_MEMORY_MIB}, not {mib}"
                )));
            }
            self.limits.compile_bytes = mib << 20;
        }
        if let Some(secs) = file.limits.compile_secs {
            self.limits.compile_time = setting_secs(secs, "limits.compile_secs")?;
        }
        if let Some(n) = file.limits.max_open_files {
            if n == 0 {
                return Err(ConfigError::Invalid(
                    "limits.max_open_files must be > 0".into(),
                ));
            }
            self.limits.max_open_files = n;
        }
        if let Some(n) = file.limits.host_open_files {
            if n == 0 {
                return Err(ConfigError::Invalid(
                    "limits.host_open_files must be > 0".into(),
                ));
            }
            self.limits.host_open_files = Some(n);
        }
        if let Some(n) = file.limits.max_processes {
            self.limits.max_processes = n;
        }
        let ms = |v: Option<u64>, default: Duration, what: &str| match v {
            Some(n) => setting_ms(n, what),
            None => Ok(default),
        };
        let (h, fh) = (&mut self.health, file.health);
        h.interval = ms(fh.interval_ms, h.interval, "health.interval_ms")?;
        h.timeout = ms(fh.timeout_ms, h.timeout, "health.timeout_ms")?;
        h.runtime_grace = ms(
            fh.runtime_grace_ms,
            h.runtime_grace,
            "health.runtime_grace_ms",
        )?;
        match fh.failure_threshold {
            Some(0) => {
                return Err(ConfigError::Invalid(
                    "health.failure_threshold must be > 0".into(),
                ));
            }
            Some(n) => h.failure_threshold = n,
            None => {}
        }
        let (r, fr) = (&mut self.restart, file.restart);
        r.initial_backoff = ms(
            fr.initial_backoff_ms,
            r.initial_backoff,
            "restart.initial_backoff_ms",
        )?;
        r.max_backoff = ms(fr.max_backoff_ms, r.max_backoff, "restart.max_backoff_ms")?;
        r.stable_after = ms(
            fr.stable_after_ms,
            r.stable_after,
            "restart.stable_after_ms",
        )?;
        if let Some(n) = fr.max_retries {
            r.max_retries = n;
        }
        self.relay = relay_config(file.relay)?;
        if let Some(n) = file.limits.max_resources {
            self.limits.max_resources = n;
        }
        if let Some(n) = file.limits.guest_threads {
            if n > 256 {
                return Err(ConfigError::Invalid(format!(
                    "limits.guest_threads must be 0-256, not {n}"
                )));
            }
            self.limits.guest_threads = n;
        }
        if let Some(share) = file.limits.share_memory_images {
            self.limits.share_memory_images = Some(share);
        }
        for (name, grant) in file.providers {
            if let Some(table) = grant.config {
                let config = OperatorConfig::from_toml(table)
                    .map_err(|e| ConfigError::Invalid(format!("providers.{name}.{e}")))?;
                self.provider_config.insert(name.clone(), config);
            }
            if let Some(replace) = grant.replace_builtin {
                let replacement = replace.validate(&name)?;
                self.builtin_replacements.insert(name.clone(), replacement);
            }
            // A table that only sets `config` keeps the built-in default grant.
            if grant.commands.is_none()
                && grant.env.is_none()
                && grant.set_env.is_none()
                && grant.urls.is_none()
                && grant.directories.is_none()
            {
                continue;
            }
            let directories = grant.directories.unwrap_or_default();
            let commands = (grant.commands.unwrap_or_default())
                .into_iter()
                .map(|c| CommandPattern::new(c.program, c.args))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::Invalid(format!("providers.{name}: {e}")))?;
            let urls = (grant.urls.unwrap_or_default().iter())
                .map(|u| UrlPattern::parse(u))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::Invalid(format!("providers.{name}: {e}")))?;
            if let Some(d) = directories.iter().find(|d| !d.is_absolute()) {
                return Err(ConfigError::Invalid(format!(
                    "providers.{name}: directory {} must be absolute",
                    d.display()
                )));
            }
            let env = grant.env.unwrap_or_default();
            if let Some(bad) = env.iter().find(|n| !valid_env_name(n)) {
                return Err(ConfigError::Invalid(format!(
                    "providers.{name}: env entry {bad:?} is not a variable name"
                )));
            }
            let set_env = grant.set_env.unwrap_or_default();
            for entry in &set_env {
                check_set_env_entry(entry)
                    .map_err(|e| ConfigError::Invalid(format!("providers.{name}: {e}")))?;
            }
            self.grants.insert(
                name,
                Grant {
                    commands,
                    env,
                    set_env,
                    urls,
                    directories,
                    origin: None,
                },
            );
        }
        self.apply_cache(file.cache)?;
        self.audit = audit::audit_config(file.audit)?;
        self.throttle = audit::throttle_config(file.auth)?;
        self.tenancy = tenancy::tenancy_config(file.tenancy)?;
        self.templates = templates::templates_config(file.templates)?;
        self.serving = serving::serving_config(file.server)?;
        self.cluster = cluster::cluster_config(file.cluster)?;
        self.apply_net(file.net)
    }

    fn apply_cache(&mut self, file: FileCache) -> Result<(), ConfigError> {
        if let Some(dir) = file.dir {
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "cache.dir {} must be absolute",
                    dir.display()
                )));
            }
            self.compile_cache = CompileCacheConfig::in_dir(dir);
        }
        if file.enabled == Some(false) {
            self.compile_cache = CompileCacheConfig::disabled();
        }
        Ok(())
    }

    fn apply_net(&mut self, file: FileNet) -> Result<(), ConfigError> {
        let ms = |v: Option<u64>, default: Duration, what: &str| match v {
            Some(n) => setting_ms(n, &format!("net.{what}")),
            None => Ok(default),
        };
        let net = &mut self.net;
        net.connect_timeout = ms(
            file.connect_timeout_ms,
            net.connect_timeout,
            "connect_timeout_ms",
        )?;
        net.first_byte_timeout = ms(
            file.first_byte_timeout_ms,
            net.first_byte_timeout,
            "first_byte_timeout_ms",
        )?;
        if let Some(n) = file.max_connections {
            net.max_connections = n;
        }
        net.hosts = (file.hosts.into_iter())
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        // The files themselves are read (and a bad one refused) when the engine builds
        // its TLS client config at start-up; here only what needs no reading.
        net.extra_ca_files = file.extra_ca_files;
        net.use_builtin_roots = file.use_builtin_roots.unwrap_or(true);
        if !net.use_builtin_roots && net.extra_ca_files.is_empty() {
            return Err(ConfigError::Invalid(
                "net.use_builtin_roots = false needs net.extra_ca_files: \
                 with no roots at all every https request would fail"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The grant in force for `provider`: the operator's, else the built-in default.
    pub fn grant_for(&self, provider: &str) -> Grant {
        let grant = (self.grants.get(provider).cloned())
            .unwrap_or_else(|| Grant::builtin_default(provider, &self.data_dir));
        grant.from_origin(GrantOrigin {
            provider: provider.to_owned(),
            file: self.source.path.clone(),
        })
    }

    /// `environment` config with the secret values of its `template` (if it was
    /// provisioned from one that still runs on `provider`) and then the operator's
    /// config for `provider` laid over it: what the provider is handed, never what is
    /// stored or shown. A template since moved to another provider keeps its secrets
    /// for that one: they are not handed to the provider its old environments run on.
    pub fn merged_config(
        &self,
        provider: &str,
        template: Option<&str>,
        environment: &serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let template = template.and_then(|t| self.templates.get(t));
        let environment = match template.filter(|t| t.provider == provider) {
            Some(template) => template.with_secrets(environment),
            None => environment.clone(),
        };
        match self.provider_config.get(provider) {
            Some(operator) => operator.merged_over(&environment),
            None => environment,
        }
    }

    /// `.codebolt/` under the data directory.
    pub fn codebolt_dir(&self) -> PathBuf {
        self.data_dir.join(".codebolt")
    }

    /// The audit log, `.codebolt/audit.jsonl` (rotated beside it).
    pub fn audit_path(&self) -> PathBuf {
        self.codebolt_dir().join("audit.jsonl")
    }

    /// Directory of drop-in provider components.
    pub fn providers_dir(&self) -> PathBuf {
        self.codebolt_dir().join("providers")
    }

    /// The private state directory of `provider` (preopened for its instances); a
    /// name that breaks [`crate::names`] has none, so no name can leave the directory.
    pub fn provider_state_dir(&self, provider: &str) -> Result<PathBuf, crate::names::InvalidName> {
        crate::names::join(
            "provider",
            &self.codebolt_dir().join("provider-state"),
            provider,
        )
    }

    /// Workspace directory of the environment named `name`; a name that is not one
    /// safe path component is refused, so no caller can reach outside the data dir.
    pub fn workspace_dir(&self, name: &str) -> Result<PathBuf, crate::names::InvalidName> {
        let environments = self.codebolt_dir().join("environments");
        crate::names::join("environment", &environments, name)
    }
}

/// The file `source` names as settings and as a table; a missing file is the
/// defaults unless it was named explicitly.
fn read_file(source: &ConfigSource) -> Result<(FileConfig, toml::Table), ConfigError> {
    let path = &source.path;
    let text = match read_bounded(path) {
        Ok(Some(text)) => text,
        Ok(None) => {
            return Err(ConfigError::TooLarge {
                path: path.clone(),
                limit: MAX_CONFIG_BYTES,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.explicit => {
            return Ok((FileConfig::default(), toml::Table::new()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::Missing {
                path: path.clone(),
                searched: vec![path.clone()],
            });
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.clone(),
                source,
            });
        }
    };
    let parse = |e: toml::de::Error| ConfigError::Parse {
        path: path.clone(),
        source: ParseError::new(&e, &text),
    };
    let file = toml::from_str::<FileConfig>(&text).map_err(parse)?;
    let table = toml::from_str::<toml::Table>(&text).map_err(parse)?;
    warn_if_secrets_exposed(path, &table);
    Ok((file, table))
}

/// The text of `path`, or `None` when it holds more than [`MAX_CONFIG_BYTES`]; never
/// reads more than one byte past the limit.
fn read_bounded(path: &Path) -> std::io::Result<Option<String>> {
    let file = crate::untrusted::open_regular(path)?;
    refuse_if_others_may_write(path, &file.metadata()?)?;
    let Some(bytes) = crate::untrusted::read_at_most(file, MAX_CONFIG_BYTES)? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Refuses a `tether.toml` that users other than the host's may change: it grants
/// providers commands, hosts and directories, so whoever may write it may run
/// anything as the host. Writable by everyone, or owned by another user (who may
/// change its mode at will; root's is taken), it is refused; writable by the group
/// is only warned of (a user-private group under a `002` umask is common).
fn refuse_if_others_may_write(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(why) = crate::untrusted::others_may_change(meta) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{why}; whoever may change it may grant providers anything"),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o020 != 0 {
        tracing::warn!(
            path = %path.display(),
            "{} may be written by its group (mode {mode:04o}): every member may grant providers anything; chmod g-w it unless the group is the host user's alone",
            path.display()
        );
    }
    Ok(())
}

/// Logs a warning when `path` holds operator config values (`[providers.NAME] config`,
/// where API keys go) and users other than its owner may read it: the values are
/// kept from the API and the log, but not from whoever reads the file.
fn warn_if_secrets_exposed(path: &std::path::Path, table: &toml::Table) {
    use std::os::unix::fs::PermissionsExt;
    let holds_values =
        (table.get("providers").and_then(|p| p.as_table())).is_some_and(|providers| {
            (providers.values()).any(|p| {
                (p.get("config").and_then(|c| c.as_table())).is_some_and(|c| !c.is_empty())
            })
        });
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if holds_values && mode & 0o044 != 0 {
        tracing::warn!(
            path = %path.display(),
            "{} holds operator config values and other users may read it (mode {mode:04o}); chmod 600 it",
            path.display()
        );
    }
}

/// The largest `[relay] window_kib`: 4 GiB of held frames per connection.
const MAX_WINDOW_KIB: usize = 4 << 20;

/// The largest `[relay] max_message_kib`: 64 MiB, the most any client here reads.
const MAX_MESSAGE_KIB: usize = 64 << 10;

/// The largest `[limits] workspace_mib` and `state_mib`: 1 PiB.
const MAX_DISK_MIB: u64 = 1 << 30;

/// The largest `[limits] memory_mib`: 1 TiB per instance.
const MAX_MEMORY_MIB: usize = 1 << 20;

/// The least `[limits] compile_mib`: the compiler process itself takes tens of MiB
/// before it compiles anything.
const MIN_COMPILE_MIB: u64 = 64;

/// `[relay]` over the defaults; every value must be positive and bounded.
fn relay_config(file: FileRelay) -> Result<RelayConfig, ConfigError> {
    let size = |v: Option<usize>, what: &str| match v {
        Some(0) => Err(ConfigError::Invalid(format!("relay.{what} must be > 0"))),
        other => Ok(other),
    };
    let mut r = RelayConfig::default();
    if let Some(n) = size(file.window_messages, "window_messages")? {
        r.window_messages = n;
    }
    if let Some(n) = file.window_kib {
        r.window_bytes = setting_kib(n, MAX_WINDOW_KIB, "relay.window_kib")?;
    }
    if let Some(n) = file.max_message_kib {
        r.max_message_bytes = setting_kib(n, MAX_MESSAGE_KIB, "relay.max_message_kib")?;
    }
    if let Some(n) = size(file.max_connections, "max_connections")? {
        r.max_connections = n;
    }
    if let Some(n) = file.ping_interval_secs {
        r.ping_interval = setting_secs(n, "relay.ping_interval_secs")?;
    }
    if let Some(n) = file.idle_timeout_secs {
        r.idle_timeout = setting_secs(n, "relay.idle_timeout_secs")?;
    }
    if let Some(n) = file.session_ttl_secs {
        r.session_ttl = setting_secs(n, "relay.session_ttl_secs")?;
    }
    if r.idle_timeout <= r.ping_interval {
        return Err(ConfigError::Invalid(
            "relay.idle_timeout_secs must be longer than relay.ping_interval_secs".into(),
        ));
    }
    Ok(r)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
