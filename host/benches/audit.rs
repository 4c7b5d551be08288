//! The audit log's price: `AuditLog::record` (group commit: concurrent callers share
//! one write and one fsync) against its naive peer, each writer appending its own line
//! and fsyncing it, at 1, 16 and 128 concurrent writers.
//!
//! `cargo bench -p tether --bench audit` prints one row per mode and writer count:
//! entries made durable per second, the p50 and p99 wait until durable, and how many
//! lines each fsync covered.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether::audit::{Actor, AuditLog, Entry, Outcome, action};
use tether::config::AuditConfig;

const RUN: Duration = Duration::from_secs(2);

fn entry(w: usize, n: usize) -> Entry {
    Entry::new(
        Actor::user(&format!("user-{w}"), &format!("tok-{w}")),
        action::ENVIRONMENT_CREATE,
        Outcome::Ok,
    )
    .target(&format!("env-{w}-{n}"))
    .owner(&format!("user-{w}"))
    .remote("192.0.2.7".parse().unwrap())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    rate: f64,
    p50: Duration,
    p99: Duration,
    per_sync: f64,
}

fn row(mut all: Vec<Duration>, elapsed: Duration, syncs: u64) -> Row {
    all.sort();
    Row {
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        per_sync: all.len() as f64 / syncs.max(1) as f64,
    }
}

async fn batched(writers: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("audit.jsonl"), &AuditConfig::default()).unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while start.elapsed() < RUN {
                let t = Instant::now();
                log.record(entry(w, n)).await.unwrap();
                latencies.push(t.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    log.close().await;
    row(all, elapsed, log.syncs())
}

/// Each writer encodes its line the same way and appends it with a write and an
/// fsync of its own (on the blocking pool, as an async caller would).
async fn naive(writers: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("audit.jsonl"))
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let file = Arc::new(file.try_clone().unwrap());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while start.elapsed() < RUN {
                let t = Instant::now();
                let mut line = serde_json::to_vec(&entry(w, n)).unwrap();
                line.push(b'\n');
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    (&*file).write_all(&line)?;
                    file.sync_data()
                })
                .await
                .unwrap()
                .unwrap();
                latencies.push(t.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    let count = all.len() as u64;
    row(all, elapsed, count)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("audit: {RUN:?} per row, every entry durable (fsync) before it returns");
    println!(
        "{:>8} {:>22} {:>10} {:>12} {:>12} {:>11}",
        "writers", "mode", "entries/s", "p50", "p99", "lines/fsync"
    );
    for writers in [1, 16, 128] {
        for (mode, r) in [
            ("record (group commit)", rt.block_on(batched(writers))),
            ("append + fsync each", rt.block_on(naive(writers))),
        ] {
            println!(
                "{writers:>8} {mode:>22} {:>10.0} {:>12} {:>12} {:>11.1}",
                r.rate,
                ms(r.p50),
                ms(r.p99),
                r.per_sync
            );
        }
    }
}
