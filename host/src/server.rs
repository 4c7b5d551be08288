//! `tether serve`: wires store, engine, lifecycle and API together and serves them
//! until a shutdown signal, then stops every provider instance before returning.
//! Plain HTTP by default; with a certificate, over TLS through [`listener`], with the
//! certificate of [`tls`] renewed from its files without a restart.

mod body_deadline;
mod connections;
pub(crate) mod forwarded;
mod http;
mod listener;
mod open_files;
mod tls;
mod tunnels;
mod write_deadline;

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) use connections::Connections;
use listener::TlsListener;
use tls::ServingCert;

use crate::api::{self, AppState};
use crate::audit::{AuditError, AuditLog};
use crate::auth::{ApiToken, TokenError, TokenSource};
use crate::cluster::Cluster;
use crate::config::ServeConfig;
use crate::engine::{DirWatchError, Engine, EngineError};
use crate::lifecycle::{Manager, Site};
use crate::logs::EnvLogs;
use crate::store::lock::{DataDirLock, LockError};
use crate::store::watch::WatchError;
use crate::store::{Store, StoreError};
use crate::tenancy::Tickets;
use crate::tenancy::{TenancyError, Tokens, tokens_path};
use crate::throttle::Throttle;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// Binding or serving the socket failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The API token could not be loaded or created.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The user token file could not be read.
    #[error(transparent)]
    Tenancy(#[from] TenancyError),
    /// The records file could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Another host serves this data directory.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The records file cannot be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The audit log cannot be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The providers directory cannot be watched for hot reload.
    #[error(transparent)]
    ProviderWatch(#[from] DirWatchError),
    /// The TLS certificate cannot be served.
    #[error(transparent)]
    Tls(#[from] tls::CertError),
    /// Cluster mode cannot start (NATS unreachable, no JetStream).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// One of the host's directories in the data directory is a link (or no directory).
    #[error("the data directory: {source}")]
    OwnDir { source: std::io::Error },
    /// The per-environment logs directory cannot be made.
    #[error("setting up the environments' logs: {source}")]
    Logs { source: std::io::Error },
}

/// Binds `config.listen` and serves until `shutdown` resolves; `table` is the
/// config file's content `config` was read from (the base of its live reloads).
pub(crate) async fn serve(
    config: ServeConfig,
    table: toml::Table,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Before the lock, which is made in `.codebolt/`: a link there is followed by nothing.
    crate::own_dirs::check_at_start(&config).map_err(|source| ServeError::OwnDir { source })?;
    // Before anything else, so a second host fails fast and touches nothing.
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    open_files::raise();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    run(listener, config, table, shutdown).await
}

/// Serves on a bound listener until `shutdown` resolves; the caller holds the data
/// directory's lock.
pub(crate) async fn run(
    listener: TcpListener,
    config: ServeConfig,
    table: toml::Table,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let timeouts = http::Timeouts {
        header: config.serving.header_timeout,
        body: config.serving.body_timeout,
    };
    let max_connections = (config.serving.max_connections)
        .unwrap_or_else(|| connections::default_limit(open_files::limit()));
    tracing::info!(max_connections, "connections served at once");
    let per_address = config.serving.max_connections_per_address;
    let proxies = std::sync::Arc::new(forwarded::TrustedProxies::new(
        config.serving.trusted_proxies.clone(),
    ));
    // First, so a bad certificate stops the host before it does anything else.
    let serving_cert = match &config.serving.tls {
        Some(files) => Some(ServingCert::load(files.clone())?),
        None => None,
    };
    let token_file = config.codebolt_dir().join("api-token");
    let (token, source) =
        ApiToken::load_or_create(std::env::var("TETHER_API_TOKEN").ok(), &token_file)?;
    let admin_file = (source != TokenSource::Environment).then(|| token_file.clone());
    let tokens = std::sync::Arc::new(Tokens::open(
        tokens_path(&config.codebolt_dir()),
        token.reveal(),
        admin_file,
    )?);
    let store = Store::open(config.codebolt_dir().join("environments.json"))?;
    let engine = Engine::with_compile_cache(
        config.limits.clone(),
        config.net.clone(),
        &config.compile_cache,
    )?;
    engine.set_builtin_replacements(config.builtin_replacements.clone());
    if let Some(tether) = &config.spawn_guard {
        engine.set_spawn_guard(tether.clone());
    }
    if let Some(tether) = &config.compiler {
        engine.set_compiler(tether.clone());
    }
    engine.load_all(&config.providers_dir()).await;
    let runtime_base = config.serving.runtime_base(reachable(addr));
    let cluster = match &config.cluster {
        Some(settings) => {
            let scheme = if serving_cert.is_some() {
                "https"
            } else {
                "http"
            };
            let public = match &config.serving.public_url {
                Some(url) => url.http_base(),
                None => format!("{scheme}://{}", reachable(addr)),
            };
            let providers = crate::lifecycle::providers_digest(&engine, &config);
            let settings = settings.clone();
            let (templates, tenancy) = (&config.templates, &config.tenancy);
            let state = config.codebolt_dir().join("cluster");
            Some(Cluster::connect(settings, public, templates, &providers, tenancy, &state).await?)
        }
        None => None,
    };
    let tunnels = match &cluster {
        Some(cluster) => {
            cluster.share_tokens(tokens.clone()).await?;
            Some(cluster.serve_tunnels().await?)
        }
        None => None,
    };
    let data_dir = config.data_dir.clone();
    let audit = AuditLog::open(&config.audit_path(), &config.audit)?;
    let config_throttle = config.throttle.clone();
    let ticket_ttl = config.tenancy.ticket_ttl;
    log_config_source(&config);
    let logs = EnvLogs::install(config.data_dir.clone(), config.codebolt_dir().join("logs"))
        .map_err(|source| ServeError::Logs { source })?;
    let manager = Manager::new(
        config,
        table,
        store,
        engine,
        Site {
            runtime_base: runtime_base.clone(),
            cluster,
        },
        audit.clone(),
        logs,
    );
    manager.watch_records()?;
    manager.join_cluster().await?;
    manager.watch_config()?;
    manager.watch_providers()?;
    manager.run_background();
    manager.recover();

    // Tests and scripts read these two lines; keep their shape.
    let mut out = std::io::stdout().lock();
    let scheme = if serving_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let _ = writeln!(out, "tether listening on {scheme}://{addr}");
    match source {
        TokenSource::Generated => {
            let _ = writeln!(
                out,
                "API token (saved to {}): {}",
                token_file.display(),
                token.reveal()
            );
        }
        TokenSource::File => {
            let _ = writeln!(out, "API token: in {}", token_file.display());
        }
        TokenSource::Environment => {
            let _ = writeln!(out, "API token: from TETHER_API_TOKEN");
        }
    }
    let _ = out.flush();
    drop(out);
    tracing::info!(%addr, data_dir = %data_dir.display(), %runtime_base, tls = serving_cert.is_some(), "serving");
    if serving_cert.is_none() && !addr.ip().is_loopback() && !runtime_base.starts_with("wss://") {
        // Tokens would cross the network in clear unless a proxy in front adds TLS.
        tracing::warn!(%addr, "serving plain HTTP beyond loopback: use --tls-cert and --tls-key, or a TLS proxy with --public-url https://…");
    }

    let throttle = std::sync::Arc::new(Throttle::new(config_throttle));
    let connections = std::sync::Arc::new(Connections::new(max_connections, per_address));
    // Bridged apps hold no descriptor here, but are bounded all the same. Every tunnel
    // comes from NATS, not an app's address: no share per address.
    let bridged =
        (tunnels.as_ref()).map(|_| std::sync::Arc::new(Connections::new(max_connections, None)));
    let state = AppState {
        connections: connections.clone(),
        tunnels: bridged.clone(),
        manager: manager.clone(),
        tokens,
        audit: audit.clone(),
        throttle,
        tickets: std::sync::Arc::new(Tickets::new(ticket_ttl)),
    };
    let app = api::router(state.clone());
    let stopped = CancellationToken::new();
    if let (Some(tunnels), Some(bridged)) = (tunnels, bridged) {
        // Apps bridged from other hosts, through NATS: served like TCP connections.
        let listener = tunnels::TunnelListener::new(tunnels);
        let router = api::tunnel_router(state);
        tokio::spawn(http::serve(
            listener,
            router,
            stopped.clone(),
            timeouts,
            bridged,
            // Bridged apps carry no proxy's header that this host could vouch for.
            std::sync::Arc::new(forwarded::TrustedProxies::default()),
        ));
    }
    let stopping = stopped.clone();
    let lifecycle = manager.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: stopping provider instances");
        lifecycle.shutdown().await;
        // After every instance is down, so the host's own last changes are in it.
        audit.close().await;
        stopping.cancel();
    });
    match serving_cert {
        None => {
            // Small frames go out at once: with Nagle's algorithm on, a reply in several
            // frames (exec output) waits on the peer's delayed ACK, about 40 ms each time.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
            });
            http::serve(listener, app, stopped, timeouts, connections, proxies).await;
        }
        Some(cert) => {
            let _renewals = cert.watch()?;
            let tls = TlsListener::new(listener, cert.server_config()?, per_address)
                .map_err(|source| ServeError::Listen { addr, source })?;
            // The listener set TCP_NODELAY before the handshake.
            http::serve(tls, app, stopped, timeouts, connections, proxies).await;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Says which `tether.toml` is in force, or that none is.
fn log_config_source(config: &ServeConfig) {
    let source = &config.source;
    let path = source.path.display().to_string();
    if source.found {
        tracing::info!(%path, "config: loaded {path}");
    } else {
        tracing::info!(
            expected = %path,
            searched = %source.searched_list(),
            "config: no tether.toml: built-in defaults (a file created at {path} is picked up)"
        );
    }
}

/// The address runtimes should dial: the listen address, with loopback standing in
/// for an unspecified one.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    // Registered now, when it is called (in the runtime, before anything is served or
    // announced), not when the future is first polled: until then a SIGTERM would
    // take the default action and kill the host without its orderly shutdown.
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {}
            _ = wait(interrupt) => {}
        }
    }
}
