//! Slow consumers at scale: 900 app/runtime pairs doing 1 KiB echo round trips while
//! 100 more environments' runtimes stream 1 KiB frames to their apps, run twice in one
//! process against one real `tether serve`: once with those 100 apps reading, once with
//! them connected but never reading. The relay's policy (`docs/protocol.md`,
//! "Backpressure and slow consumers") is that nobody waits on a slow app: its window
//! fills and it is closed with 4008 while the others keep their pace.
//!
//! Prints, for both runs: the 900's round trips/s, p50 and p99, the host's resident
//! memory before, at its peak and after, and how the 100 streaming apps ended (closed
//! by the host with which code, or still open). The p99 ratio of the two runs is what
//! the policy is judged by.
//!
//! `cargo bench -p tether --bench slow_peers [-- MEASURED,SLOW]` (default `900,100`).
//! The host runs with a small window (`window_messages = 1024`, `window_kib = 1024`) so
//! the policy acts within the run; the kernel's socket buffers take a few MB per socket
//! before the window even starts to fill.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use support::{Outcome, PAYLOAD, Res, Server, TOKEN, Ws, connect, echo, measure, rss_kib, us};

/// Each streaming runtime sends a frame this often.
const STREAM_EVERY: Duration = Duration::from_millis(5);
/// Streams run this long before the 900 start, so slow apps' buffers are full by then.
const WARM_UP: Duration = Duration::from_secs(10);
/// Round trips each measured pair makes (about 20 s at the usual pace).
const PER_PAIR: usize = 300;

fn main() -> Res<()> {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "900,100".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let (measured, slow) = match counts[..] {
        [measured, slow] => (measured, slow),
        _ => return Err("pass MEASURED,SLOW".into()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(measured, slow))
}

/// Whether the streaming apps read what they are sent.
#[derive(Clone, Copy, PartialEq)]
enum Streams {
    Read,
    Ignored,
}

async fn run(measured: usize, slow: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let config = "[relay]\nwindow_messages = 1024\nwindow_kib = 1024\nmax_connections = 16\n";
    let server = Server::start(dir.path(), config, &[])?;
    eprintln!("creating {} handoff environments…", measured + slow);
    let envs = server.environments(measured + slow).await?;
    server.settle().await?;
    let (pairs, streaming) = envs.split_at(measured);
    let host = server.child.id();
    println!(
        "| streaming apps | rt/s | p50 | p99 | host RSS before / peak / after | streaming apps at the end |"
    );
    println!("|---|---:|---:|---:|---|---|");
    let mut p99 = Vec::new();
    for streams in [Streams::Read, Streams::Ignored] {
        let (outcome, memory, ends) = case(&server, pairs, streaming, streams).await?;
        p99.push(outcome.hist.value_at_quantile(0.99));
        println!(
            "| {} | {:.0} | {} | {} | {} | {ends} |",
            match streams {
                Streams::Read => "reading",
                Streams::Ignored => "not reading",
            },
            outcome.rate(),
            us(outcome.hist.value_at_quantile(0.5)),
            us(outcome.hist.value_at_quantile(0.99)),
            memory,
        );
    }
    if let [reading, ignored] = p99[..] {
        println!();
        println!(
            "p99 with {slow} apps not reading ÷ p99 with them reading: {:.2}× ({measured} measured pairs, host pid {host})",
            ignored as f64 / reading.max(1) as f64
        );
    }
    server.stop();
    Ok(())
}

/// One run: streams started, warmed up, the measured pairs' round trips, then how the
/// streaming apps ended.
async fn case(
    server: &Server,
    pairs: &[(String, String, String)],
    streaming: &[(String, String, String)],
    streams: Streams,
) -> Res<(Outcome, String, String)> {
    let host = server.child.id().to_string();
    let before = rss_kib(&host).unwrap_or(0);
    let mut tasks = JoinSet::new();
    let mut ignored: Vec<Ws> = Vec::new();
    let received = Arc::new(AtomicU64::new(0));
    for (id, url, token) in streaming {
        tasks.spawn(stream(connect(url, Some(token)).await?));
        let app = connect(&server.ws(&format!("/ws/app/{id}")), Some(TOKEN)).await?;
        match streams {
            Streams::Read => {
                let received = received.clone();
                tasks.spawn(async move { drain(app, &received).await });
            }
            Streams::Ignored => ignored.push(app),
        }
    }
    // The host's resident memory, sampled through the run.
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (peak, host) = (peak.clone(), host.clone());
        tokio::spawn(async move {
            loop {
                if let Some(now) = rss_kib(&host) {
                    peak.fetch_max(now, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(WARM_UP).await;
    for (_, url, token) in pairs {
        tasks.spawn(echo(connect(url, Some(token)).await?));
    }
    let mut apps = Vec::with_capacity(pairs.len());
    for (id, _, _) in pairs {
        apps.push(connect(&server.ws(&format!("/ws/app/{id}")), Some(TOKEN)).await?);
    }
    let outcome = measure(apps, PER_PAIR, &[server.child.id()]).await?;
    // How the apps that never read ended: read what is left until the close.
    let mut ends = std::collections::BTreeMap::<String, usize>::new();
    for mut app in ignored {
        *ends.entry(ending(&mut app).await).or_default() += 1;
    }
    if streams == Streams::Read {
        let frames = received.load(Ordering::Relaxed);
        ends.insert(format!("open, read {frames} frames"), streaming.len());
    }
    sampler.abort();
    tasks.shutdown().await;
    // Let the host let go of what the closed connections held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(&host).unwrap_or(0);
    let memory = format!(
        "{} / {} / {} MiB",
        before / 1024,
        peak.load(Ordering::Relaxed) / 1024,
        after / 1024
    );
    let ends = (ends.iter())
        .map(|(how, n)| format!("{n} {how}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((outcome, memory, ends))
}

/// A runtime that streams a 1 KiB frame to its apps every [`STREAM_EVERY`], reading
/// (and so answering the host's pings) meanwhile.
async fn stream(ws: Ws) {
    let (mut write, mut read) = ws.split();
    let pad = "x".repeat(PAYLOAD - 40);
    let mut tick = tokio::time::interval(STREAM_EVERY);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let frame = json!({"type": "stream", "n": n, "p": pad}).to_string();
                if write.send(Message::Text(frame.into())).await.is_err() {
                    return;
                }
            }
            msg = read.next() => if !matches!(msg, Some(Ok(_))) { return },
        }
    }
}

/// An app that reads and counts everything it gets.
async fn drain(mut ws: Ws, received: &AtomicU64) {
    while let Some(Ok(_)) = ws.next().await {
        received.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads what an app left unread until the host's close (or 10 s of nothing more) and
/// says how it ended.
async fn ending(ws: &mut Ws) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_secs(10)), ws.next()).await {
            Err(_) => return "still open".into(),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return format!("closed by the host with {}", u16::from(frame.code));
            }
            Ok(Some(Ok(Message::Close(None)))) => return "closed without a code".into(),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return "connection dropped".into(),
        }
    }
}
