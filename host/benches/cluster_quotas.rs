//! Cluster mode: what a user's limits cost when every host admits their creates at
//! once. A create counted against a user's limits holds the user's key in
//! `PREFIX-admissions` until its record is in the bucket (`docs/cluster.md`,
//! "Quotas"), so one user's counted creates are made one after another across the
//! cluster; other users' are not held up. Needs `nats-server` (`.ci/prepare` installs
//! it); says so and stops where there is none.
//!
//! `cargo bench -p tether --bench cluster_quotas`: three hosts; 12 writers, four on
//! each host, create stopped environments for 5 s in each case:
//!
//! - **no limits:** all for one user without `[tenancy]` limits (nothing counted);
//! - **one limited user:** all for one user with a limit they never reach;
//! - **a limited user each:** each writer for a user of its own, each with that limit.
//!
//! Creates per second, p50 and p99 (answered 201: durable, audited, in that host's
//! records; counted ones also in the cluster's).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use support::nats::{Nats, host, with_nats};
use support::{Res, Server, TOKEN, us};

/// Concurrent writers, spread over the three hosts.
const WRITERS: usize = 12;
/// How long each case writes.
const RUN: Duration = Duration::from_secs(5);
/// A limit nobody reaches here.
const LIMIT: usize = 1_000_000;

/// The user writer `w` creates for.
type OwnerOf = fn(usize) -> String;

fn main() -> Res<()> {
    with_nats("cluster quotas", run)
}

async fn run(nats_binary: std::path::PathBuf) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let nats = Nats::start(&nats_binary, dir.path())?;
    let mut config = format!("[tenancy.users.solo]\nmax_environments = {LIMIT}\n");
    for w in 0..WRITERS {
        config.push_str(&format!(
            "[tenancy.users.own-{w}]\nmax_environments = {LIMIT}\n"
        ));
    }
    let hosts = Arc::new([
        host(dir.path(), &nats, "a", &config)?,
        host(dir.path(), &nats, "b", &config)?,
        host(dir.path(), &nats, "c", &config)?,
    ]);
    let cases: [(&str, OwnerOf); 3] = [
        ("no limits", |_| "free".into()),
        ("one limited user", |_| "solo".into()),
        ("a limited user each", |w| format!("own-{w}")),
    ];
    println!("| case | creates/s | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    for (case, (label, owner_of)) in cases.into_iter().enumerate() {
        eprintln!("{label}: {WRITERS} writers for {} s…", RUN.as_secs());
        let (made, latencies, ran) = creates(&hosts, case, owner_of).await?;
        println!(
            "| {label} | {:.0} | {} | {} |",
            made as f64 / ran.as_secs_f64(),
            us(latencies.value_at_quantile(0.5)),
            us(latencies.value_at_quantile(0.99)),
        );
    }
    if let Ok(hosts) = Arc::try_unwrap(hosts) {
        for server in hosts {
            server.stop();
        }
    }
    drop(nats);
    Ok(())
}

/// [`WRITERS`] writers creating environments for `owner_of(writer)` for [`RUN`]:
/// how many were made, their latencies, and how long it took.
async fn creates(
    hosts: &Arc<[Server; 3]>,
    case: usize,
    owner_of: OwnerOf,
) -> Res<(u64, Histogram<u64>, Duration)> {
    let began = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let hosts = hosts.clone();
        tasks.push(tokio::spawn(async move {
            let server = &hosts[w % hosts.len()];
            let owner = owner_of(w);
            let mut latencies = Vec::new();
            while began.elapsed() < RUN {
                let name = format!("c{case}-w{w}-{}", latencies.len());
                let body = json!({"name": name, "provider": "handoff", "owner": owner});
                let sent = Instant::now();
                let response = server
                    .http
                    .post(format!("{}/api/v1/environments", server.base))
                    .bearer_auth(TOKEN)
                    .json(&body)
                    .send()
                    .await?;
                let status = response.status();
                if !status.is_success() {
                    let text = response.text().await.unwrap_or_default();
                    return Err(format!("creating {name}: {status} {text}").into());
                }
                latencies.push(sent.elapsed());
            }
            Res::Ok(latencies)
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        for t in task.await?? {
            latencies.record(u64::try_from(t.as_micros())?.max(1))?;
        }
    }
    let ran = began.elapsed();
    Ok((latencies.len(), latencies, ran))
}
