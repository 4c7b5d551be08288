//! `tether-app chat`: a thread's runtime through a template, a line at a time.
//!
//! The host finds or creates the caller's environment for the template and thread and
//! starts it; what is typed before its runtime is up is held by the host and delivered in
//! order. Each status change is printed with the time since the connect, so a slow start
//! shows where it is.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, DRAIN, Ws, next_frame, shown};

/// Which provisioned environment to talk to.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The operator's template (`GET /api/v1/templates` lists them).
    #[arg(long)]
    template: String,
    /// The thread: the environment's key for a `thread` template, and the relay thread.
    #[arg(long)]
    thread: String,
    /// The workspace, for a `workspace` template.
    #[arg(long)]
    workspace: Option<String>,
    /// Start the environment even if its user stopped it on purpose (needs `envs:write`).
    #[arg(long)]
    start: bool,
}

/// Connects, shows the phases, then relays stdin lines until stdin ends, every request
/// sent has its answer and the environment is running.
pub(crate) async fn run(client: &Client, args: &Args) -> anyhow::Result<()> {
    let mut query = vec![
        ("template", args.template.as_str()),
        ("thread", &args.thread),
    ];
    if let Some(workspace) = &args.workspace {
        query.push(("workspace", workspace));
    }
    if args.start {
        query.push(("start", "true"));
    }
    // The URL type encodes the values; only its query is used.
    let encoded = reqwest::Url::parse_with_params("http://localhost/", &query)?;
    let path = format!("/ws/app?{}", encoded.query().unwrap_or_default());

    let began = Instant::now();
    let mut ws = client.connect(&path).await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut chat = Chat {
        began,
        pending: HashSet::new(),
        sent: 0,
        running: false,
    };
    let mut stdin_open = true;
    let mut drain_deadline = None;
    loop {
        // Answers can overtake the `running` status (a runtime often connects and
        // answers before the provider's start returns): the session ends once both
        // are in.
        if !stdin_open && chat.pending.is_empty() && chat.running {
            let _ = ws.close(None).await;
            return Ok(());
        }
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line.context("reading stdin")? {
                Some(line) => chat.send(&mut ws, &line).await?,
                None => {
                    stdin_open = false;
                    drain_deadline = Some(tokio::time::Instant::now() + DRAIN);
                }
            },
            frame = next_frame(&mut ws) => match frame? {
                Ok(frame) => chat.show(&frame),
                Err(code) => return closed(code),
            },
            () = sleep_until(drain_deadline) => {
                if chat.pending.is_empty() {
                    bail!("the environment did not reach running in {} s", DRAIN.as_secs())
                }
                bail!("no answer to {} request(s) in {} s", chat.pending.len(), DRAIN.as_secs())
            }
        }
    }
}

/// What the session has sent and is waiting for.
struct Chat {
    began: Instant,
    /// `requestId`s sent and not answered yet.
    pending: HashSet<String>,
    sent: u64,
    /// Whether the environment has been seen `running`.
    running: bool,
}

impl Chat {
    /// Sends a line: a JSON object as it is, anything else as an `echo`.
    async fn send(&mut self, ws: &mut Ws, line: &str) -> anyhow::Result<()> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        let message = if line.starts_with('{') {
            match serde_json::from_str::<Value>(line) {
                Ok(message) => message,
                Err(e) => {
                    eprintln!("not sent, not JSON: {e}");
                    return Ok(());
                }
            }
        } else {
            self.sent += 1;
            json!({"type": "echo", "requestId": format!("line-{}", self.sent), "payload": line})
        };
        if let Some(id) = message["requestId"].as_str() {
            self.pending.insert(id.to_owned());
        }
        ws.send(Message::text(message.to_string())).await?;
        Ok(())
    }

    /// Prints a frame from the host, and notes the answer to a pending request.
    fn show(&mut self, frame: &Value) {
        let at = self.began.elapsed().as_secs_f64();
        match frame["type"].as_str().unwrap_or_default() {
            "provisioned" => {
                let how = if frame["created"] == true {
                    "created"
                } else {
                    "existing"
                };
                println!(
                    "[{at:6.2}s] environment {} ({how})",
                    str_of(&frame["environmentId"])
                );
            }
            "environmentStatus" => {
                self.running |= frame["status"] == "running";
                let mut line = format!("[{at:6.2}s] status: {}", str_of(&frame["status"]));
                if frame["runtime"]["connected"] == true {
                    line.push_str(" (runtime connected)");
                }
                if let Some(error) = frame["lastError"].as_str() {
                    line.push_str(&format!(": {}", shown(error)));
                }
                println!("{line}");
            }
            "echoResponse" => println!("< {}", shown(&frame["payload"].to_string())),
            "error" => {
                let (code, message) = (&frame["error"]["code"], &frame["error"]["message"]);
                println!("! {}: {}", str_of(code), str_of(message));
                if code == "stopped" {
                    println!("  (its user stopped it; pass --start to start it again)");
                }
            }
            _ => println!("< {}", shown(&frame.to_string())),
        }
        // `execOutput` is a chunk of an answer, not the answer.
        if frame["type"] != "execOutput"
            && let Some(id) = frame["requestId"].as_str()
        {
            self.pending.remove(id);
        }
    }
}

/// The end of a session the host closed before it was done.
fn closed(code: Option<u16>) -> anyhow::Result<()> {
    match code {
        Some(4014) => bail!("the environment failed to start (close 4014)"),
        Some(4015) => bail!("the environment was stopped on purpose (close 4015)"),
        Some(code) => bail!("the host closed the connection (close {code}; docs/protocol.md)"),
        None => bail!("the connection was lost"),
    }
}

/// A string field of a frame, for printing ([`shown`]).
fn str_of(value: &Value) -> String {
    shown(value.as_str().unwrap_or("?"))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
