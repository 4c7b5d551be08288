//! Cluster mode (issue 17): acknowledged record mutations per second across three
//! hosts at 10,000 environments, and how soon every host has them. Needs
//! `nats-server` (`.ci/prepare` installs it); says so and stops where there is none.
//!
//! `cargo bench -p tether --bench cluster_records [-- ENVIRONMENTS]` (default 10000):
//!
//! - **Seed:** host `a`'s records file holds ENVIRONMENTS stopped records before it
//!   starts; its first sync writes them to the records bucket, and hosts `b` and `c`
//!   take them from there. Timed until `b` and `c` list them all.
//! - **Mutations:** 64 writers, a third on each host, `PATCH` records for 10 s; each
//!   writer owns the records whose index is its own modulo 64 and sets `config.n` to
//!   its next counter on one of them after another. A mutation counts when the API
//!   answered 200 (durable in that host's journal, audited). Rate, p50 and p99.
//! - **Replicated:** then, how long until all three hosts list every record with the
//!   last value written to it, and the end-to-end rate that makes (mutations ÷ (the
//!   run + that wait)).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use support::nats::{Nats, host, with_nats};
use support::{Res, Server, TOKEN, us};

/// Concurrent writers, spread over the three hosts.
const WRITERS: usize = 64;
/// How long they write.
const RUN: Duration = Duration::from_secs(10);
/// The longest the records may take to reach every host.
const CONVERGE: Duration = Duration::from_secs(300);

fn main() -> Res<()> {
    let environments: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    with_nats("cluster records", |nats| run(environments, nats))
}

/// Record `i` as `environments.json` stores it.
fn record(i: usize) -> Value {
    json!({
        "id": format!("env-{i}"), "name": format!("env-{i}"), "provider": "handoff",
        "config": {"n": 0},
        "desiredState": "stopped",
        "createdAt": "2026-12-01T00:00:00Z", "updatedAt": "2026-12-01T00:00:00Z"
    })
}

async fn run(environments: usize, nats_binary: std::path::PathBuf) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let nats = Nats::start(&nats_binary, dir.path())?;
    let seeded = dir.path().join("a/.codebolt/environments.json");
    std::fs::create_dir_all(seeded.parent().ok_or("no parent")?)?;
    let records: Vec<Value> = (0..environments).map(record).collect();
    std::fs::write(
        &seeded,
        serde_json::to_vec(&json!({"version": 1, "environments": records}))?,
    )?;

    eprintln!("seeding {environments} records through a…");
    let started = Instant::now();
    let hosts = [
        host(dir.path(), &nats, "a", "")?,
        host(dir.path(), &nats, "b", "")?,
        host(dir.path(), &nats, "c", "")?,
    ];
    for server in &hosts[1..] {
        until(server, CONVERGE, |list| list.len() == environments).await?;
    }
    let seed = started.elapsed();

    eprintln!("{WRITERS} writers for {} s…", RUN.as_secs());
    let hosts = Arc::new(hosts);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let hosts = hosts.clone();
        tasks.push(tokio::spawn(async move {
            let server = &hosts[w % hosts.len()];
            let mine: Vec<usize> = (w..environments).step_by(WRITERS).collect();
            let mut last: HashMap<usize, u64> = HashMap::new();
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while began.elapsed() < RUN && !mine.is_empty() {
                n += 1;
                let i = mine[(n as usize) % mine.len()];
                let sent = Instant::now();
                let status = server
                    .http
                    .patch(format!("{}/api/v1/environments/env-{i}", server.base))
                    .bearer_auth(TOKEN)
                    .json(&json!({"config": {"n": n}}))
                    .send()
                    .await?
                    .status();
                if !status.is_success() {
                    return Err(format!("PATCH env-{i}: {status}").into());
                }
                latencies.push(sent.elapsed());
                last.insert(i, n);
            }
            Res::Ok((latencies, last))
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut last = HashMap::new();
    for task in tasks {
        let (took, written) = task.await??;
        for t in took {
            latencies.record(u64::try_from(t.as_micros())?.max(1))?;
        }
        last.extend(written);
    }
    let ran = began.elapsed();
    let mutations = latencies.len();

    let waited = Instant::now();
    for server in hosts.iter() {
        until(server, CONVERGE, |list| {
            let now: HashMap<&str, u64> = list
                .iter()
                .filter_map(|e| Some((e["id"].as_str()?, e["config"]["n"].as_u64()?)))
                .collect();
            last.iter()
                .all(|(i, n)| now.get(format!("env-{i}").as_str()) == Some(n))
        })
        .await?;
    }
    let converged = waited.elapsed();

    println!(
        "| environments | seeded on 3 hosts | acknowledged mutations/s | p50 / p99 | every host has them after | end-to-end mutations/s |"
    );
    println!("|---:|---:|---:|---|---:|---:|");
    println!(
        "| {environments} | {:.1} s | {:.0} | {} / {} | {:.2} s | {:.0} |",
        seed.as_secs_f64(),
        mutations as f64 / ran.as_secs_f64(),
        us(latencies.value_at_quantile(0.5)),
        us(latencies.value_at_quantile(0.99)),
        converged.as_secs_f64(),
        mutations as f64 / (ran + converged).as_secs_f64(),
    );
    if let Ok(hosts) = Arc::try_unwrap(hosts) {
        for server in hosts {
            server.stop();
        }
    }
    drop(nats);
    Ok(())
}

/// Polls `server`'s list until `done` says so, within `limit`.
async fn until(server: &Server, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Res<()> {
    let deadline = Instant::now() + limit;
    loop {
        let list = server.list().await?;
        if list.as_array().is_some_and(|l| done(l)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} never got there", server.base).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
