//! `tether env list|get|create|start|stop|restart|delete|logs|attach`: a running server's
//! environments from the command line, as tables for people or `--json` for scripts.
//! `--wait` follows a start until the runtime is connected or the start failed.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Value, json};

use super::client::{ServerArgs, call, follow_lines};
use super::output::{json as print_json, line, printable, printable_json};

/// Longest `--wait` waits.
const WAIT: Duration = Duration::from_secs(300);

/// `--json` or a table.
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct Format {
    /// Print the server's JSON as it is, for scripts.
    #[arg(long)]
    json: bool,
}

/// `tether env ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum EnvCommand {
    /// List the environments the token reaches.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        format: Format,
    },
    /// Show one environment.
    Get {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        format: Format,
        /// Its id.
        id: String,
    },
    /// Create an environment; `--start --wait` shows its start until it runs.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        format: Format,
        /// Its name.
        name: String,
        /// The provider it runs on.
        #[arg(long)]
        provider: String,
        /// Its config, a JSON object.
        #[arg(long)]
        config: Option<String>,
        /// Start it at once.
        #[arg(long)]
        start: bool,
        /// With --start: wait until its runtime is connected (or the start failed).
        #[arg(long, requires = "start")]
        wait: bool,
    },
    /// Start a stopped environment.
    Start(Transition),
    /// Stop an environment, keeping its resource.
    Stop(Transition),
    /// Stop and start an environment again.
    Restart(Transition),
    /// Delete an environment and its resource.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        /// Its id.
        id: String,
    },
    /// Talk to an environment's runtime on a thread: a JSON object a line each way,
    /// resuming across dropped connections.
    Attach(super::attach::Attach),
    /// Print an environment's log; `--follow` keeps printing new lines.
    Logs {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        format: Format,
        /// Its id.
        id: String,
        /// How many of the last lines (at most 10000).
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Keep printing lines as they are written, until ^C or the environment is deleted.
        #[arg(long, short)]
        follow: bool,
    },
}

/// `start`, `stop` and `restart`.
#[derive(Debug, Args)]
pub(crate) struct Transition {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    format: Format,
    /// Its id.
    id: String,
    /// Wait until it gets there (running with its runtime connected, or stopped).
    #[arg(long)]
    wait: bool,
}

/// Runs an env command.
pub(crate) async fn run(command: EnvCommand) -> anyhow::Result<()> {
    match command {
        EnvCommand::List { server, format } => {
            let list = call(&server, Method::GET, "/api/v1/environments", None).await?;
            if format.json {
                return print_json(&list);
            }
            let list = list
                .as_array()
                .context("the server's answer is not a list of environments")?;
            print_table(list)
        }
        EnvCommand::Get { server, format, id } => {
            let env = call(&server, Method::GET, &env_path(&id)?, None).await?;
            show(&env, format)
        }
        EnvCommand::Create {
            server,
            format,
            name,
            provider,
            config,
            start,
            wait,
        } => {
            let mut body = json!({"name": name, "provider": provider, "start": start});
            if let Some(config) = config {
                let config: Value =
                    serde_json::from_str(&config).context("--config must be a JSON object")?;
                body["config"] = config;
            }
            let env = call(&server, Method::POST, "/api/v1/environments", Some(body)).await?;
            if !wait {
                return show(&env, format);
            }
            let id = env["id"]
                .as_str()
                .context("the server's answer has no id")?;
            let env = wait_for(&server, id, true).await?;
            show(&env, format)
        }
        EnvCommand::Attach(args) => super::attach::run(args).await,
        EnvCommand::Start(t) => transition(t, "start", true).await,
        EnvCommand::Stop(t) => transition(t, "stop", false).await,
        EnvCommand::Restart(t) => transition(t, "restart", true).await,
        EnvCommand::Delete { server, id } => {
            call(&server, Method::DELETE, &env_path(&id)?, None).await?;
            line(&format!("deleted {id}"))
        }
        EnvCommand::Logs {
            server,
            format,
            id,
            tail,
            follow,
        } => {
            let path = format!("{}/logs?tail={tail}&follow={follow}", env_path(&id)?);
            let mut failed = Ok(());
            follow_lines(&server, &path, follow, |text| {
                if failed.is_err() {
                    return;
                }
                failed = if format.json {
                    line(&printable_json(text))
                } else {
                    line(&log_line(text))
                };
            })
            .await?;
            failed
        }
    }
}

/// `/api/v1/environments/{id}` for an id that can only be one.
pub(super) fn env_path(id: &str) -> anyhow::Result<String> {
    if id.is_empty() || !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
        bail!("{} is not an environment id", crate::untrusted::named(id));
    }
    Ok(format!("/api/v1/environments/{id}"))
}

async fn transition(t: Transition, verb: &str, to_running: bool) -> anyhow::Result<()> {
    let path = format!("{}/{verb}", env_path(&t.id)?);
    let env = call(&t.server, Method::POST, &path, None).await?;
    if !t.wait {
        return show(&env, t.format);
    }
    let env = wait_for(&t.server, &t.id, to_running).await?;
    show(&env, t.format)
}

/// Polls `id` until it runs with its runtime connected (`running`) or is stopped,
/// printing each phase with the time since the wait began (a spinner on a terminal);
/// an `error` status is an error carrying `lastError`.
async fn wait_for(server: &ServerArgs, id: &str, running: bool) -> anyhow::Result<Value> {
    let began = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut last = String::new();
    let spinner = ['|', '/', '-', '\\'];
    let mut tick = 0usize;
    while began.elapsed() < WAIT {
        let env = call(server, Method::GET, &env_path(id)?, None).await?;
        let Some(status) = env["status"].as_str() else {
            bail!("the server's answer is not an environment");
        };
        let connected = env["runtime"]["connected"] == true;
        // The start's phase where the host reports one (it names the wait for the
        // runtime); the runtime's connection otherwise.
        let phase = match (status, env["startPhase"].as_str(), connected) {
            ("starting", Some(phase), _) => format!("starting: {}", printable(phase)),
            ("running", Some("waiting-for-runtime"), _) | ("running", None, false) => {
                "running, waiting for the runtime".to_owned()
            }
            ("running", _, _) => "running, runtime connected".to_owned(),
            (s, _, _) => printable(s),
        };
        let secs = began.elapsed().as_secs_f64();
        if phase != last {
            if terminal {
                eprint!("\r\x1b[K");
            }
            eprintln!("[{secs:6.2}s] {phase}");
            last = phase;
        } else if terminal {
            tick += 1;
            eprint!("\r{} {secs:.1}s", spinner[tick % spinner.len()]);
        }
        match status {
            "error" => bail!(
                "the environment failed{}: {}",
                env["startPhase"]
                    .as_str()
                    .map(|p| format!(" in {}", printable(p)))
                    .unwrap_or_default(),
                printable(env["lastError"].as_str().unwrap_or("no reason given"))
            ),
            "running" if running && connected => return Ok(env),
            "stopped" if !running => return Ok(env),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("still not there after {} s", WAIT.as_secs())
}

fn show(env: &Value, format: Format) -> anyhow::Result<()> {
    if !env["id"].is_string() {
        bail!("the server's answer is not an environment");
    }
    if format.json {
        return print_json(env);
    }
    let field = |key: &str| match &env[key] {
        Value::Null => "-".to_owned(),
        Value::String(s) => printable(s),
        other => printable(&other.to_string()),
    };
    for key in [
        "id",
        "name",
        "provider",
        "owner",
        "status",
        "desiredState",
        "resourceId",
        "lastError",
        "providerVersion",
        "createdAt",
    ] {
        line(&format!("{key:<16}{}", field(key)))?;
    }
    let connected = env["runtime"]["connected"] == true;
    line(&format!(
        "{:<16}{}",
        "runtime",
        if connected {
            "connected"
        } else {
            "not connected"
        }
    ))
}

fn print_table(envs: &[Value]) -> anyhow::Result<()> {
    let cell = |env: &Value, key: &str| printable(env[key].as_str().unwrap_or("-"));
    let rows: Vec<[String; 6]> = envs
        .iter()
        .map(|e| {
            let runtime = if e["runtime"]["connected"] == true {
                "connected"
            } else {
                "-"
            };
            [
                cell(e, "id"),
                cell(e, "name"),
                cell(e, "provider"),
                cell(e, "status"),
                runtime.to_owned(),
                cell(e, "owner"),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "PROVIDER", "STATUS", "RUNTIME", "OWNER"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        line(cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// A log line for people: `ts level source: message`.
fn log_line(text: &str) -> String {
    let Ok(l) = serde_json::from_str::<Value>(text) else {
        return printable(text);
    };
    let s = |k: &str| printable(l[k].as_str().unwrap_or(""));
    format!(
        "{} {:<5} {}: {}",
        s("ts"),
        s("level"),
        s("source"),
        s("message")
    )
}
