//! `tether-sandbox-service`: a small sandbox service in the shape of the hosted
//! sandbox APIs agents use, running on this machine, for the `http-sandbox`
//! provider's tests and demo.
//!
//! A sandbox is a directory under `--root`; a process started in it runs there in
//! its own process group, and only if it is exactly one of the `--allow-command`
//! lines. Every `/v1` request needs the bearer API key (`SANDBOX_API_KEY` or
//! `--api-key-file`). SIGTERM or Ctrl-C kills every process and removes every
//! sandbox; state is in memory, so a restarted service starts empty. The API is
//! in `docs/sandbox-api.md`; `api` serves it over `sandboxes`.
//!
//! With `--tls-cert` and `--tls-key` it serves HTTPS (`tls`), as a hosted sandbox
//! API does; the `http-sandbox` provider then reaches it through the host's broker.
//!
//! Usage:
//!   SANDBOX_API_KEY=... tether-sandbox-service --listen 127.0.0.1:8790 \
//!       --allow-command "/path/to/tether runtime"

mod api;
mod sandboxes;
mod tls;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::sandboxes::{AllowedCommand, Limits, Registry};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "tether-sandbox-service",
    about = "A local sandbox service with a hosted-sandbox-style HTTP API"
)]
struct Flags {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:8790")]
    listen: SocketAddr,
    /// Directory holding one directory per sandbox.
    #[arg(long)]
    root: Option<PathBuf>,
    /// A command sandboxes may run, as "PROGRAM ARG..." (split on whitespace; a
    /// request must match program and arguments exactly). Repeatable.
    #[arg(long = "allow-command", value_name = "COMMAND")]
    allow: Vec<String>,
    /// The bearer API key clients must present.
    #[arg(long, env = "SANDBOX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A file holding the API key (instead of SANDBOX_API_KEY).
    #[arg(long, conflicts_with = "api_key")]
    api_key_file: Option<PathBuf>,
    /// Sandboxes alive at once.
    #[arg(long, default_value_t = 64)]
    max_sandboxes: usize,
    /// Processes listed per sandbox.
    #[arg(long, default_value_t = 8)]
    max_processes: usize,
    /// Answer the first N sandbox deletes with 500 (to test a client's retries).
    #[arg(long, default_value_t = 0)]
    fail_deletes: usize,
    /// Leave the first N sandbox deletes unanswered until the service stops (to test a
    /// client's timeouts).
    #[arg(long, default_value_t = 0)]
    hang_deletes: usize,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Settings validated from the flags.
struct ServiceConfig {
    listen: SocketAddr,
    root: PathBuf,
    allowed: Vec<AllowedCommand>,
    api_key: String,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    fail_deletes: usize,
    hang_deletes: usize,
}

impl ServiceConfig {
    fn from_flags(flags: Flags) -> anyhow::Result<Self> {
        let api_key = match (flags.api_key, flags.api_key_file) {
            (Some(key), _) => key,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading the API key from {}", path.display()))?,
            (None, None) => bail!("set SANDBOX_API_KEY or --api-key-file"),
        };
        let api_key = api_key.trim().to_owned();
        if api_key.len() < 8 {
            bail!("the API key must be at least 8 characters");
        }
        let allowed = (flags.allow.iter())
            .map(|line| {
                let mut words = line.split_whitespace().map(str::to_owned);
                let program = words.next().context("an empty --allow-command")?;
                Ok(AllowedCommand {
                    program,
                    args: words.collect(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if allowed.is_empty() {
            tracing::warn!("no --allow-command: sandboxes can be created but run nothing");
        }
        let tls = match (&flags.tls_cert, &flags.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let root = flags
            .root
            .unwrap_or_else(|| std::env::temp_dir().join("tether-sandbox-service"));
        Ok(Self {
            listen: flags.listen,
            root,
            allowed,
            api_key,
            limits: Limits {
                max_sandboxes: flags.max_sandboxes,
                max_processes: flags.max_processes,
            },
            tls,
            fail_deletes: flags.fail_deletes,
            hang_deletes: flags.hang_deletes,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Flags::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let config = ServiceConfig::from_flags(flags)?;
    let registry = Registry::new(config.root.clone(), config.allowed, config.limits)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    let stopping = CancellationToken::new();
    let app = api::router(AppState {
        registry: registry.clone(),
        api_key: Arc::from(config.api_key),
        fail_deletes: Arc::new(AtomicUsize::new(config.fail_deletes)),
        hang_deletes: Arc::new(AtomicUsize::new(config.hang_deletes)),
        stopping: stopping.clone(),
    });
    // Tests and scripts read the address from this line.
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("sandbox service listening on {scheme}://{address}");
    tracing::info!(root = %config.root.display(), "serving sandboxes");

    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: killing every sandbox's processes");
        // Hung deletes answer now, or the graceful shutdown would wait for them.
        stopping.cancel();
    };
    match config.tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving")?,
        Some(tls) => axum::serve(tls::TlsListener::new(listener, tls), app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving")?,
    }
    registry.shutdown().await;
    Ok(())
}
