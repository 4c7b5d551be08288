//! Persistence throughput: how many record mutations per second the store makes
//! durable, and how long an API-style mutation waits until its write is on disk, with
//! 100, 1,000 and 10,000 environments in the file.
//!
//! `cargo bench -p tether --bench store` prints one row per size. Concurrent writers
//! stand in for concurrent API requests; group commit lets their mutations share
//! writes, so throughput should not collapse as the file grows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tether::store::{DesiredState, Store};

const WRITERS: usize = 64;
const RUN: Duration = Duration::from_secs(3);

fn seed(path: &std::path::Path, n: usize) {
    let envs: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "id": format!("env-{i}"), "name": format!("env-{i}"), "provider": "local-process",
                "config": {"command": "tether", "args": ["runtime"]},
                "desiredState": "stopped",
                "resourceId": format!("/data/.codebolt/environments/env-{i}"),
                "createdAt": "2026-11-28T00:00:00Z", "updatedAt": "2026-11-28T00:00:00Z"
            })
        })
        .collect();
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

async fn run(n: usize) -> (f64, Duration, Duration, u64) {
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
    let elapsed = start.elapsed();
    all.sort();
    let bytes = std::fs::metadata(&path).unwrap().len();
    (
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        bytes,
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "store: {WRITERS} concurrent writers, {RUN:?} per size, every mutation durable (fsync) before it returns"
    );
    println!(
        "{:>12} {:>12} {:>16} {:>16} {:>12}",
        "environments", "mutations/s", "p50 to durable", "p99 to durable", "file size"
    );
    for n in [100, 1_000, 10_000] {
        let (rate, p50, p99, bytes) = rt.block_on(run(n));
        println!(
            "{n:>12} {rate:>12.0} {:>16} {:>16} {:>11}K",
            format!("{:.2} ms", p50.as_secs_f64() * 1e3),
            format!("{:.2} ms", p99.as_secs_f64() * 1e3),
            bytes / 1024
        );
    }
}
