//! `tether-app`: the smallest useful Tether app client.
//!
//! - `tether-app demo [NAME]` creates an environment (local-process provider), waits for its
//!   runtime, sends an `echo`, resumes the relay session after a deliberate reconnect (see
//!   `docs/protocol.md`), and runs `uname -a` through `exec`.
//! - `tether-app chat --template NAME --thread T` connects through an operator's template:
//!   the host finds or creates the thread's environment and starts it, the app shows the
//!   start's phases, and each line typed is sent to the runtime (JSON as it is, anything
//!   else as an `echo`).
//!
//! `--help` needs neither a server nor a token. Over `https://` the server's certificate
//! must match its name and chain to the system's roots or to `TETHER_CA_FILE` (a PEM CA
//! bundle).

mod chat;
mod client;
mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An example app for a running `tether serve`.
#[derive(Parser)]
#[command(name = "tether-app", version, arg_required_else_help = true)]
struct Cli {
    /// The server's address.
    #[arg(
        long,
        global = true,
        env = "TETHER_URL",
        default_value = "http://127.0.0.1:2719"
    )]
    server: String,
    /// An API token (the operator's or a user's); without it, `.codebolt/api-token` in the
    /// current directory is read.
    #[arg(long, global = true, env = "TETHER_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an environment, wait for its runtime, echo, resume, exec; print each step.
    Demo {
        /// The environment's name (default: example-<unix time>).
        name: Option<String>,
    },
    /// Talk to the runtime of a thread provisioned from a template, a line at a time.
    Chat(chat::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match client::Client::new(&cli.server, cli.token.as_deref()) {
        Ok(client) => match cli.command {
            Command::Demo { name } => demo::run(&client, name).await,
            Command::Chat(args) => chat::run(&client, &args).await,
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
