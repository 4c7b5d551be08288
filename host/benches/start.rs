//! Start latency (issue 16, item 7): from `POST /api/v1/environments/{id}/start` to
//! the environment's runtime connected, against spawning the same runtime by hand and
//! having it connect.
//!
//! `cargo bench -p tether --bench start [-- ROUNDS]` (default 15) starts a release
//! `tether serve` and, at 1 and at 100 concurrent starts:
//!
//! - **Tether:** `local-process` environments, created stopped; each round starts all
//!   of them at once (one REST call each) and takes, per environment, the time from
//!   its call to the `/ws/events` frame that says its runtime is connected; then stops
//!   them all and waits until each is `stopped`.
//! - **by hand:** `handoff` environments (started, waiting for a runtime); each round
//!   spawns the same program `local-process` runs (`tether runtime`, with the URL,
//!   token and id a start hands it) for all of them, one after another as fast as a
//!   script can, and takes the time from the round's start to the same event; then
//!   ends the processes and waits until the host has seen each runtime go.
//!
//! Both connect to the same host and are seen by the same events stream, so only what
//! happens before the runtime dials differs: the REST call, the provider's `start`,
//! the brokered spawn. It prints p50 and p99 of each and the ratio of the medians.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use support::{Res, Server, TOKEN, connect, us};

/// How long one round may take before the benchmark gives up.
const ROUND_LIMIT: Duration = Duration::from_secs(120);

/// What the events stream said about one environment, and when it arrived.
struct Seen {
    id: String,
    connected: bool,
    status: String,
    at: Instant,
}

fn main() -> Res<()> {
    let rounds: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(15);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(rounds))
}

async fn run(rounds: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), "", &[])?;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut events = connect(&server.ws("/ws/events"), Some(TOKEN)).await?;
    tokio::spawn(async move {
        while let Some(Ok(frame)) = events.next().await {
            let Message::Text(text) = frame else { continue };
            let at = Instant::now();
            let Ok(msg) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if msg["type"] != "environmentStatus" {
                continue;
            }
            let seen = Seen {
                id: msg["environmentId"].as_str().unwrap_or_default().to_owned(),
                connected: msg["runtime"]["connected"] == true,
                status: msg["status"].as_str().unwrap_or_default().to_owned(),
                at,
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    println!(
        "start latency: REST start to runtime connected (Tether) against spawning the runtime by hand; {rounds} rounds; load average {}",
        load()
    );
    println!();
    println!(
        "| concurrent | Tether p50 | Tether p99 | by hand p50 | by hand p99 | Tether ÷ by hand (p50) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for concurrent in [1usize, 100] {
        let rounds = if concurrent == 1 {
            rounds
        } else {
            rounds.div_ceil(5)
        };
        let tether = through_tether(&server, &mut seen, concurrent, rounds).await?;
        let by_hand = by_hand(&server, dir.path(), &mut seen, concurrent, rounds).await?;
        let (t50, h50) = (
            tether.value_at_quantile(0.5),
            by_hand.value_at_quantile(0.5),
        );
        println!(
            "| {concurrent} | {} | {} | {} | {} | {:.2} |",
            us(t50),
            us(tether.value_at_quantile(0.99)),
            us(h50),
            us(by_hand.value_at_quantile(0.99)),
            t50 as f64 / h50.max(1) as f64,
        );
    }
    println!();
    println!("load average after: {}", load());
    server.stop();
    Ok(())
}

/// Starts `concurrent` `local-process` environments at once per round.
async fn through_tether(
    server: &Server,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    concurrent: usize,
    rounds: usize,
) -> Res<Histogram<u64>> {
    let mut ids = Vec::new();
    for i in 0..concurrent {
        let body = json!({"name": format!("lp-{concurrent}-{i}"), "provider": "local-process"});
        ids.push(server.create(&body).await?);
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for _ in 0..rounds {
        drain(seen);
        let mut started = HashMap::new();
        let calls = ids.iter().map(|id| async move {
            let at = Instant::now();
            server
                .post(&format!("/api/v1/environments/{id}/start"))
                .await
                .map(|_| (id.clone(), at))
        });
        for call in futures_util::future::join_all(calls).await {
            let (id, at) = call?;
            started.insert(id, at);
        }
        record(seen, &started, &mut hist, |s| s.connected).await?;
        stop_all(server, seen, &ids).await?;
    }
    Ok(hist)
}

/// Spawns `concurrent` runtimes by hand at once per round, for `handoff` environments.
async fn by_hand(
    server: &Server,
    dir: &std::path::Path,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    concurrent: usize,
    rounds: usize,
) -> Res<Histogram<u64>> {
    let mut envs = Vec::new();
    for i in 0..concurrent {
        let name = format!("ho-{concurrent}-{i}");
        let id = server
            .create(&json!({"name": name, "provider": "handoff", "start": true}))
            .await?;
        let file = dir.join(format!(".codebolt/environments/{name}/runtime.json"));
        let deadline = Instant::now() + ROUND_LIMIT;
        let handoff: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(v) = serde_json::from_str(&text)
            {
                break v;
            }
            if Instant::now() > deadline {
                return Err(format!("{name} never handed off its runtime").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let workspace = dir.join(format!(".codebolt/environments/{name}"));
        envs.push((id, handoff, workspace));
    }
    let ids: Vec<String> = envs.iter().map(|(id, ..)| id.clone()).collect();
    let mut hist = Histogram::<u64>::new(3)?;
    for _ in 0..rounds {
        drain(seen);
        let mut started = HashMap::new();
        let mut children: Vec<Child> = Vec::new();
        // One instant for the round, as the REST calls are all made at once: each
        // runtime's time includes waiting for the spawns before it.
        let at = Instant::now();
        for (id, handoff, workspace) in &envs {
            let field = |k: &str| handoff[k].as_str().unwrap_or_default().to_owned();
            let child = Command::new(env!("CARGO_BIN_EXE_tether"))
                .arg("runtime")
                .current_dir(workspace)
                .env("TETHER_RUNTIME_URL", field("url"))
                .env("TETHER_RUNTIME_TOKEN", field("token"))
                .env("TETHER_ENVIRONMENT_ID", id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            started.insert(id.clone(), at);
            children.push(child);
        }
        record(seen, &started, &mut hist, |s| s.connected).await?;
        for child in &mut children {
            let _ = child.kill();
        }
        for child in &mut children {
            let _ = child.wait();
        }
        wait_all(seen, &ids, |s| !s.connected).await?;
    }
    stop_all(server, seen, &ids).await?;
    Ok(hist)
}

/// Stops environments `ids` and waits until each is `stopped`.
async fn stop_all(
    server: &Server,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    ids: &[String],
) -> Res<()> {
    for id in ids {
        server
            .post(&format!("/api/v1/environments/{id}/stop"))
            .await?;
    }
    wait_all(seen, ids, |s| s.status == "stopped").await
}

/// Records, for each environment in `started`, the time to the first event `done`
/// says is the one awaited.
async fn record(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    started: &HashMap<String, Instant>,
    hist: &mut Histogram<u64>,
    done: impl Fn(&Seen) -> bool,
) -> Res<()> {
    let mut left = started.len();
    let deadline = Instant::now() + ROUND_LIMIT;
    let mut counted = std::collections::HashSet::new();
    while left > 0 {
        let event = tokio::time::timeout_at(deadline.into(), seen.recv())
            .await
            .map_err(|_| format!("{left} runtimes never connected"))?
            .ok_or("the events stream ended")?;
        if let Some(at) = started.get(&event.id)
            && done(&event)
            && counted.insert(event.id.clone())
        {
            let took = event.at.saturating_duration_since(*at);
            hist.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1))?;
            left -= 1;
        }
    }
    Ok(())
}

/// Waits until an event `done` accepts has arrived for every one of `ids`.
async fn wait_all(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    ids: &[String],
    done: impl Fn(&Seen) -> bool,
) -> Res<()> {
    let mut left: std::collections::HashSet<&String> = ids.iter().collect();
    let deadline = Instant::now() + ROUND_LIMIT;
    while !left.is_empty() {
        let event = tokio::time::timeout_at(deadline.into(), seen.recv())
            .await
            .map_err(|_| format!("{} environments never settled", left.len()))?
            .ok_or("the events stream ended")?;
        if done(&event) {
            left.remove(&event.id);
        }
    }
    Ok(())
}

/// Drops events left from before.
fn drain(seen: &mut mpsc::UnboundedReceiver<Seen>) {
    while seen.try_recv().is_ok() {}
}

/// The one-minute load average.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
