//! Spinning-guest benchmark: how much the API and the relay slow down while guests burn
//! CPU. A real `tether serve` runs one `handoff` environment (this process plays its
//! runtime) and 0, 1 or 3 `hostile` environments that spin in `on-provider-start` for as
//! long as the case lasts. For each case it times `/healthz` requests and relayed 1 KiB
//! round trips, one after another, and prints p50 and p99 with the ratio to the case with
//! no guest spinning (the aim: at most 1.5× at p99).
//!
//! `cargo bench -p tether --bench spin [-- THREADS]`: `THREADS` sets
//! `limits.guest_threads` (default: the host's own default, one less than the cores);
//! `0` runs guests on the host's own runtime, as before the guest executor existed, to
//! show what the executor buys. Loopback only; every case is bounded in requests and
//! in time (a case cut short says how many requests it finished).

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use support::{Res, Server, TOKEN, connect, echo, guests, us};

/// Requests of each kind per case.
const SAMPLES: usize = 2_000;
/// Requests of each kind before the first case, not measured.
const WARM_UP: usize = 500;
/// Longest one kind of request may take in one case; fewer samples are reported then.
const CASE_LIMIT: Duration = Duration::from_secs(60);
/// How long spinners get to start spinning before a case is measured.
const SPIN_UP: Duration = Duration::from_millis(500);

fn main() -> Res<()> {
    let threads: Option<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(threads))
}

async fn run(threads: Option<usize>) -> Res<()> {
    let dir = tempfile::tempdir()?;
    // Spinners spin in their start for as long as a case lasts; the bench deletes them.
    let mut toml = "[lifecycle]\nstart_timeout_secs = 600\n".to_owned();
    if let Some(n) = threads {
        toml.push_str(&format!("\n[limits]\nguest_threads = {n}\n"));
    }
    let server = Server::start(dir.path(), &toml, &[("hostile.wasm", guests::HOSTILE)])?;
    let envs = server.environments(1).await?;
    server.settle().await?;
    let (id, url, token) = envs.first().ok_or("no environment")?;
    let runtime = tokio::spawn(echo(connect(url, Some(token)).await?));
    let mut app = connect(&server.ws(&format!("/ws/app/{id}")), Some(TOKEN)).await?;
    println!(
        "guest_threads: {}",
        threads.map_or("default".to_owned(), |n| n.to_string())
    );
    println!(
        "| spinning guests | /healthz p50 | /healthz p99 | p99 ÷ none | relay p50 | relay p99 | p99 ÷ none | done in {} s |",
        CASE_LIMIT.as_secs()
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    // Warm the connections and the host's caches first: the first case would otherwise
    // pay for them and flatter the others.
    healthz_case(&server, WARM_UP).await?;
    relay_case(&mut app, WARM_UP).await?;
    let mut base: Option<(u64, u64)> = None;
    for spinning in [0usize, 1, 3] {
        let spinners = spin(&server, spinning).await?;
        let healthz = healthz_case(&server, SAMPLES).await?;
        let relay = relay_case(&mut app, SAMPLES).await?;
        for id in &spinners {
            server
                .http
                .delete(format!("{}/api/v1/environments/{id}", server.base))
                .bearer_auth(TOKEN)
                .send()
                .await?;
        }
        let (h99, r99) = (
            healthz.value_at_quantile(0.99),
            relay.value_at_quantile(0.99),
        );
        let (h0, r0) = *base.get_or_insert((h99, r99));
        println!(
            "| {spinning} | {} | {} | {:.2}× | {} | {} | {:.2}× | {} + {} of {SAMPLES} + {SAMPLES} |",
            us(healthz.value_at_quantile(0.5)),
            us(h99),
            h99 as f64 / h0.max(1) as f64,
            us(relay.value_at_quantile(0.5)),
            us(r99),
            r99 as f64 / r0.max(1) as f64,
            healthz.len(),
            relay.len(),
        );
        wait_deleted(&server, &spinners).await?;
    }
    runtime.abort();
    server.stop();
    Ok(())
}

/// Creates `n` environments that spin in their start and waits until they do.
async fn spin(server: &Server, n: usize) -> Res<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({
            "name": format!("spin{i}"), "provider": "hostile",
            "config": {"attack": "spin"}, "start": true, "restartPolicy": "never",
        });
        ids.push(server.create(&body).await?);
    }
    tokio::time::sleep(SPIN_UP).await;
    Ok(ids)
}

async fn wait_deleted(server: &Server, ids: &[String]) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in ids {
        loop {
            let status = server
                .http
                .get(format!("{}/api/v1/environments/{id}", server.base))
                .bearer_auth(TOKEN)
                .send()
                .await?
                .status();
            if status == reqwest::StatusCode::NOT_FOUND {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("environment {id} was never deleted").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

fn histogram() -> Res<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 120_000_000, 3)?)
}

async fn healthz_case(server: &Server, samples: usize) -> Res<Histogram<u64>> {
    let mut hist = histogram()?;
    let url = format!("{}/healthz", server.base);
    let limit = Instant::now() + CASE_LIMIT;
    for _ in 0..samples {
        if Instant::now() > limit {
            break;
        }
        let sent = Instant::now();
        let status = server.http.get(&url).send().await?.status();
        if !status.is_success() {
            return Err(format!("/healthz answered {status}").into());
        }
        hist.record(u64::try_from(sent.elapsed().as_micros())?.max(1))?;
    }
    Ok(hist)
}

async fn relay_case(app: &mut support::Ws, samples: usize) -> Res<Histogram<u64>> {
    let mut hist = histogram()?;
    let payload = json!({"type": "bench", "p": "x".repeat(1000)}).to_string();
    let limit = Instant::now() + CASE_LIMIT;
    for _ in 0..samples {
        if Instant::now() > limit {
            break;
        }
        let sent = Instant::now();
        app.send(Message::Text(payload.clone().into())).await?;
        loop {
            match app.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().starts_with("{\"type\":\"bench\"") => {
                    break;
                }
                Some(Ok(_)) => continue,
                _ => return Err("the app connection ended".into()),
            }
        }
        hist.record(u64::try_from(sent.elapsed().as_micros())?.max(1))?;
    }
    Ok(hist)
}
