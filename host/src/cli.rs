//! Command-line entry: parses flags once into validated settings and runs a command.
//!
//! This is the binary's edge, so errors are `anyhow` here and typed everywhere below.
//! `env`, `token` and `removals` hold the commands that talk to a running server;
//! `output` is how verbs print (a closed pipe is a quiet end, never a panic).

mod attach;
mod client;
mod env;
mod output;
mod provider;
mod removals;
mod token;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::broker::Capabilities;
use crate::config::{ClusterConfig, ConfigSource, DEFAULT_LISTEN, ServeConfig};
use crate::engine::{Engine, ProviderSource};
use crate::reference_runtime::{self, RuntimeConfig};
use crate::{scaffold, server};

/// Tether: a control plane for remote agent environments.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the REST API, the WebSocket relay and the providers.
    Serve {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Directory holding `.codebolt/` (records, providers, tokens, workspaces).
        #[arg(long, default_value = ".")]
        data_dir: PathBuf,
        /// Operator settings and grants (default: `tether.toml` in the data directory,
        /// then in the current directory; none found means the defaults). A relative
        /// path is looked up the same way; a named file that is missing is an error.
        /// Reloaded live on change or on SIGHUP.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve over TLS with this certificate chain (PEM, leaf first); re-read when
        /// it changes. Needs --tls-key.
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// The URL runtimes and clients reach this host at (e.g.
        /// https://tether.example.com), when it is not the listen address: a public
        /// name, or a proxy terminating TLS in front. Runtimes get its ws(s):// form.
        #[arg(long, value_name = "URL")]
        public_url: Option<String>,
        /// Cluster mode: the NATS server (JetStream on) this host shares records and
        /// leases through, e.g. nats://127.0.0.1:4222 (or `[cluster]` url). Needs
        /// --host-id.
        #[arg(long, value_name = "NATS_URL")]
        cluster: Option<String>,
        /// This host's id in the cluster: unique, letters, digits, '-' and '_'.
        #[arg(long, value_name = "ID")]
        host_id: Option<String>,
    },
    /// Run the reference runtime (reads TETHER_RUNTIME_URL and TETHER_RUNTIME_TOKEN).
    Runtime,
    /// Work with provider components.
    Provider {
        #[command(subcommand)]
        command: ProviderCommand,
    },
    /// Environments on a running server: list, get, create, start, stop, restart,
    /// delete, logs, attach.
    Env {
        #[command(subcommand)]
        command: env::EnvCommand,
    },
    /// Make, list and revoke user tokens on a running server.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Deleted environments whose resource a running server still tries to remove:
    /// list them, have one tried now, or drop one.
    Removals {
        #[command(subcommand)]
        command: removals::RemovalsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ProviderCommand {
    /// Write a new provider crate on the SDK, ready to build for wasm32-wasip2.
    New {
        /// Provider (and crate) name: lowercase letters, digits and '-'.
        name: String,
        /// Where to write it (default: ./NAME).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Build a provider crate for wasm32-wasip2 (release; installs the target if
    /// missing) and print the component's path and what it asks for.
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Install a built component into a host's providers directory (`--data-dir`), or
    /// through a running server's API (`--remote`).
    Install {
        /// The component (`.wasm`).
        file: PathBuf,
        #[command(flatten)]
        to: provider::Destination,
    },
    /// Build and install the crate on every change, restarting the environments named
    /// with `--restart` and showing how their start went; until ^C.
    Dev {
        /// The crate's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
        #[command(flatten)]
        to: provider::Destination,
        /// An environment id to restart after each install (repeat for more).
        #[arg(long = "restart")]
        restart: Vec<String>,
    },
    /// Show what a component asks for, what `tether.toml` grants it and what it is
    /// denied, before it is dropped in.
    Inspect {
        /// The provider component (`.wasm`).
        file: PathBuf,
        /// Operator settings and grants to check it against, looked up as `serve`
        /// looks them up (data directory, then current directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data directory `serve` would use (where `tether.toml` is looked for
        /// first).
        #[arg(long, default_value = ".")]
        data_dir: PathBuf,
    },
}

/// Parses the command line, runs the command and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    // The spawn guard takes the rest of the command line as a program and its
    // arguments verbatim (not UTF-8 checked, never parsed as flags), and must stay
    // single-threaded: it is dispatched before clap and the async runtime.
    let mut argv = std::env::args_os().skip(1).peekable();
    if argv.peek().is_some_and(|a| a == tether_guard::GUARD_ARG) {
        std::process::exit(tether_guard::main(argv));
    }
    // Likewise the compiler child of an untrusted provider (`engine::compile`).
    if argv
        .next_if(|a| a == crate::engine::compile::COMPILE_ARG)
        .is_some()
    {
        std::process::exit(crate::engine::compile::child_main(argv));
    }
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read our output has all they wanted (`| head -1`).
        Err(err) if err.is::<output::StdoutClosed>() => ExitCode::SUCCESS,
        Err(err) => {
            output::error(&err);
            // A refusal says what kind it was, for scripts (README, "The CLI").
            if let Some(refused) = err.downcast_ref::<client::Refused>() {
                return ExitCode::from(refused.exit_code());
            }
            match err.downcast_ref::<attach::Closed>() {
                Some(closed) => ExitCode::from(closed.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// This binary as a child will run it: still this very program after an upgrade has
/// replaced (or removed) the file it was started from.
pub(crate) fn own_binary() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve {
            listen,
            data_dir,
            config,
            tls_cert,
            tls_key,
            public_url,
            cluster,
            host_id,
        } => {
            // Said plainly before its path shows up inside another error (`reading
            // FILE/tether.toml: Not a directory`); a missing one is created.
            if std::fs::metadata(&data_dir).is_ok_and(|m| !m.is_dir()) {
                anyhow::bail!("--data-dir {} is not a directory", data_dir.display());
            }
            let source = ConfigSource::locate(config.as_deref(), &data_dir)?;
            let (mut settings, table) = ServeConfig::load_source(listen, data_dir, source)?;
            settings.serving =
                (settings.serving).with_flags(tls_cert, tls_key, public_url.as_deref())?;
            settings.cluster = cluster_settings(settings.cluster.take(), cluster, host_id)?;
            let tether =
                std::env::current_exe().context("locating this binary for the spawn guard")?;
            settings.spawn_guard = Some(crate::broker::spawn_guard_program(&tether));
            settings.compiler = Some(own_binary());
            rt.block_on(async {
                let shutdown = server::shutdown_signal();
                server::serve(settings, table, shutdown).await
            })?;
        }
        Command::Env { command } => {
            let done = rt.block_on(env::run(command));
            // `env attach` reads stdin on a blocking thread, which ends only with the
            // input: dropping the runtime would wait for it, so a session the host
            // ended kept the command running until the user typed a line.
            rt.shutdown_background();
            done?;
        }
        Command::Token { command } => rt.block_on(token::run(command))?,
        Command::Removals { command } => rt.block_on(removals::run(command))?,
        Command::Runtime => {
            let config = RuntimeConfig::from_env()?;
            rt.block_on(async {
                let shutdown = server::shutdown_signal();
                reference_runtime::run(config, shutdown).await
            })?;
        }
        Command::Provider {
            command: ProviderCommand::New { name, path },
        } => {
            let dir = path.unwrap_or_else(|| PathBuf::from(&name));
            scaffold::new_provider(&name, &dir)?;
            output::line(&format!("wrote provider {name} in {}", dir.display()))?;
            output::line(&format!(
                "build it: tether provider build {}",
                dir.display()
            ))?;
        }
        Command::Provider {
            command: ProviderCommand::Build { path },
        } => rt.block_on(provider::build(&path))?,
        Command::Provider {
            command: ProviderCommand::Install { file, to },
        } => rt.block_on(provider::install(&file, &to))?,
        Command::Provider {
            command: ProviderCommand::Dev { path, to, restart },
        } => rt.block_on(provider::dev(&path, &to, &restart))?,
        Command::Provider {
            command:
                ProviderCommand::Inspect {
                    file,
                    config,
                    data_dir,
                },
        } => {
            let source = ConfigSource::locate(config.as_deref(), &data_dir)?;
            let report = rt.block_on(inspect(&file, source, &data_dir))?;
            output::json(&report)?;
        }
    }
    Ok(())
}

/// Loads `file` (reading its `info()` in a sandbox with no grants) and reports its
/// request, the grant the config at `source` gives it, and what is denied.
async fn inspect(
    file: &std::path::Path,
    source: ConfigSource,
    data_dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    // The data directory's path shapes the default grants; a scratch one stands in
    // when it does not exist, so inspecting creates nothing.
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let data_dir = if data_dir.is_dir() {
        data_dir.to_owned()
    } else {
        scratch.path().to_owned()
    };
    let listen: SocketAddr = DEFAULT_LISTEN.parse().context("default listen address")?;
    let config = match source.found {
        true => serde_json::json!(source.path),
        false => serde_json::Value::Null,
    };
    let note = (!source.found).then(|| {
        format!(
            "no tether.toml found in {}: showing what the defaults grant",
            source.searched_list()
        )
    });
    let (settings, _) = ServeConfig::load_source(listen, data_dir, source)?;
    let engine = Engine::new(settings.limits.clone(), settings.net.clone())?;
    engine.set_compiler(own_binary());
    let bytes = crate::engine::read_component(file).await?;
    let source = ProviderSource::DropIn {
        path: file.to_owned(),
    };
    let loaded = engine.load(bytes, source).await?;
    let d = &loaded.description;
    let grant = settings.grant_for(&d.name);
    let denied = Capabilities::new(d.request(), grant.clone()).denied();
    let mut report = serde_json::json!({
        "config": config,
        "name": d.name,
        "version": d.version,
        "sha256": loaded.sha256,
        "requested": d.request(),
        "granted": grant,
        "denied": denied,
    });
    if let (Some(note), Some(map)) = (note, report.as_object_mut()) {
        map.insert("note".into(), note.into());
    }
    Ok(report)
}

fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter::LevelFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let stderr = tracing_subscriber::fmt::layer()
        // Each event one line, whatever provider text reaches it.
        .with_writer(move || crate::untrusted::OneLine::new(std::io::stderr(), !ansi))
        .with_ansi(ansi)
        .with_filter(filter);
    // Environments' logs keep their info lines whatever RUST_LOG says for stderr.
    let env_logs = crate::logs::EnvLogLayer.with_filter(LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(stderr)
        .with(env_logs)
        .init();
}

/// `[cluster]` with `--cluster` and `--host-id` laid over it; `None`: no cluster.
fn cluster_settings(
    file: Option<ClusterConfig>,
    url: Option<String>,
    host_id: Option<String>,
) -> anyhow::Result<Option<ClusterConfig>> {
    let base = match (file, url.as_deref()) {
        (Some(c), _) => c,
        (None, Some(url)) => ClusterConfig::from_url(url)?,
        (None, None) if host_id.is_some() => {
            anyhow::bail!("--host-id is for cluster mode: give --cluster NATS_URL too")
        }
        (None, None) => return Ok(None),
    };
    let settings = base.with_flags(url.as_deref(), host_id)?;
    settings.check_complete()?;
    Ok(Some(settings))
}
