//! Persistence throughput: how many record mutations per second the store makes
//! durable, and how long an API-style mutation waits until it is on disk, with 100,
//! 1,000 and 10,000 environments, beside SQLite doing the same.
//!
//! `cargo bench -p tether --bench store` prints one row per size. 64 concurrent
//! writers stand in for concurrent API requests, each flipping one record's desired
//! state again and again. Tether acknowledges a mutation once its journal entry is
//! appended and `fdatasync`ed (group commit: writers waiting together share one
//! append); the background compaction into `environments.json` runs during the
//! measurement. The peer is SQLite in WAL mode with `synchronous=FULL` (one row of
//! JSON per environment, one connection per writer, each update its own transaction),
//! the store a user might pick instead; it is measured in the same run, on the same
//! disk, right after Tether.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tether::store::{DesiredState, Store};

const WRITERS: usize = 64;
const RUN: Duration = Duration::from_secs(5);

fn record(i: usize) -> serde_json::Value {
    json!({
        "id": format!("env-{i}"), "name": format!("env-{i}"), "provider": "local-process",
        "config": {"command": "tether", "args": ["runtime"]},
        "desiredState": "stopped",
        "resourceId": format!("/data/.codebolt/environments/env-{i}"),
        "createdAt": "2026-11-28T00:00:00Z", "updatedAt": "2026-11-28T00:00:00Z"
    })
}

fn seed(path: &std::path::Path, n: usize) {
    let envs: Vec<_> = (0..n).map(record).collect();
    let doc = json!({"version": 1, "environments": envs});
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Mutations per second, p50 and p99 to durable.
struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn of(mut all: Vec<Duration>, elapsed: Duration) -> Self {
        all.sort();
        Self {
            rate: all.len() as f64 / elapsed.as_secs_f64(),
            p50: percentile(&all, 0.5),
            p99: percentile(&all, 0.99),
        }
    }
}

async fn tether(n: usize) -> (Figures, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".codebolt/environments.json");
    seed(&path, n);
    let store = Arc::new(Store::open(path.clone()).unwrap());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = w;
            while start.elapsed() < RUN {
                let id = format!("env-{}", i % n);
                let t = Instant::now();
                store
                    .update(&id, |r| {
                        r.desired_state = match r.desired_state {
                            DesiredState::Running => DesiredState::Stopped,
                            DesiredState::Stopped => DesiredState::Running,
                        }
                    })
                    .await
                    .unwrap();
                latencies.push(t.elapsed());
                i += WRITERS;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let figures = Figures::of(all, start.elapsed());
    store.flush().await.unwrap();
    (figures, std::fs::metadata(&path).unwrap().len())
}

fn sqlite(n: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.db");
    let open = || {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.busy_timeout(Duration::from_secs(60)).unwrap();
        db.pragma_update(None, "journal_mode", "WAL").unwrap();
        db.pragma_update(None, "synchronous", "FULL").unwrap();
        db
    };
    let mut db = open();
    db.execute(
        "CREATE TABLE environments (id TEXT PRIMARY KEY, doc TEXT NOT NULL)",
        [],
    )
    .unwrap();
    let tx = db.transaction().unwrap();
    for i in 0..n {
        tx.execute(
            "INSERT INTO environments (id, doc) VALUES (?1, ?2)",
            (format!("env-{i}"), record(i).to_string()),
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let start = Instant::now();
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = open();
            std::thread::spawn(move || {
                let mut update = db
                    .prepare(
                        "UPDATE environments SET doc = json_set(doc, \
                         '$.desiredState', CASE json_extract(doc, '$.desiredState') \
                         WHEN 'running' THEN 'stopped' ELSE 'running' END, \
                         '$.updatedAt', ?1) WHERE id = ?2",
                    )
                    .unwrap();
                let mut latencies = Vec::new();
                let mut i = w;
                while start.elapsed() < RUN {
                    let t = Instant::now();
                    let stamp = tether::store::now();
                    assert_eq!(
                        update.execute((stamp, format!("env-{}", i % n))).unwrap(),
                        1
                    );
                    latencies.push(t.elapsed());
                    i += WRITERS;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    Figures::of(all, start.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "store: {WRITERS} concurrent writers, {RUN:?} per size and store, every mutation durable (fsync) before it returns"
    );
    println!(
        "{:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "environments",
        "tether/s",
        "tether p50",
        "tether p99",
        "sqlite/s",
        "sqlite p50",
        "sqlite p99",
        "ratio",
        "file size"
    );
    for n in [100, 1_000, 10_000] {
        let (ours, bytes) = rt.block_on(tether(n));
        let peer = sqlite(n);
        println!(
            "{n:>12} {:>12.0} {:>12} {:>12} {:>12.0} {:>12} {:>12} {:>9.2}x {:>9}K",
            ours.rate,
            ms(ours.p50),
            ms(ours.p99),
            peer.rate,
            ms(peer.p50),
            ms(peer.p99),
            ours.rate / peer.rate,
            bytes / 1024
        );
    }
}
