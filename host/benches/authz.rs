//! The price of authorization: the same requests with a scoped user token and with the
//! operator's (admin) token, side by side in one run, on a host holding 10,000 user
//! tokens and 10,000 environments.
//!
//! Two cases, each run for both tokens, alternately, twice: REST
//! `GET /api/v1/environments/{id}` one request after another on a kept-alive
//! connection, and app-WebSocket round trips (1 KiB, through the relay to a `handoff`
//! runtime this process plays). The table shows requests per second, p50 and p99 for
//! each, and the user/admin ratio of p50 (aim: at most 1.05×).
//!
//! `cargo bench -p tether --bench authz [-- TOKENS,ENVIRONMENTS,REQUESTS]`
//! (default `10000,10000,5000`). Loopback only.

mod support;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use support::{Res, Server, TOKEN, Ws, connect, echo, round_trip, us};

/// A user token's secret, made up front so the benchmark can present it.
fn secret(i: usize) -> String {
    format!("tth_{}", hex::encode(Sha256::digest(format!("bench-{i}"))))
}

/// Writes `tokens` user tokens (user `u{i}`, the default user scopes) and
/// `environments` stopped environments spread over those users, before the host starts.
fn seed(dir: &std::path::Path, tokens: usize, environments: usize) -> Res<()> {
    let codebolt = dir.join(".codebolt");
    std::fs::create_dir_all(&codebolt)?;
    let list: Vec<Value> = (0..tokens)
        .map(|i| {
            json!({
                "id": format!("tok_{i:016x}"),
                "user": format!("u{i}"),
                "scopes": ["envs:read", "envs:write", "envs:delete", "relay"],
                "createdAt": "2026-01-01T00:00:00Z",
                "sha256": hex::encode(Sha256::digest(secret(i))),
            })
        })
        .collect();
    std::fs::write(
        codebolt.join("tokens.json"),
        serde_json::to_vec(&json!({"version": 1, "tokens": list}))?,
    )?;
    let records: Vec<Value> = (0..environments)
        .map(|i| {
            json!({
                "id": format!("00000000-0000-4000-8000-{i:012}"),
                "name": format!("seed-{i}"),
                "provider": "local-process",
                "owner": format!("u{}", i % tokens.max(1)),
                "createdAt": "2026-01-01T00:00:00Z",
                "updatedAt": "2026-01-01T00:00:00Z",
            })
        })
        .collect();
    std::fs::write(
        codebolt.join("environments.json"),
        serde_json::to_vec(&json!({"version": 1, "environments": records}))?,
    )?;
    Ok(())
}

fn main() -> Res<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "10000,10000,5000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [tokens, environments, requests] = sizes[..] else {
        return Err("give TOKENS,ENVIRONMENTS,REQUESTS".into());
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(tokens.max(1), environments, requests.max(1)))
}

async fn run(tokens: usize, environments: usize, requests: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    seed(dir.path(), tokens, environments)?;
    let server = Server::start(dir.path(), "", &[])?;
    // The one environment both tokens use: user u0's, on a runtime played here.
    let user = secret(0);
    let id = server
        .create(&json!({"name": "authz", "provider": "handoff", "start": true, "owner": "u0"}))
        .await?;
    let handoff_file = dir.path().join(".codebolt/environments/authz/runtime.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let handoff: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&handoff_file) {
            break serde_json::from_str(&text)?;
        }
        if Instant::now() > deadline {
            return Err("the handoff environment never started".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let url = handoff["url"].as_str().ok_or("url")?;
    let token = handoff["token"].as_str().ok_or("token")?;
    let runtime = tokio::spawn(echo(connect(url, Some(token)).await?));
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!("{tokens} user tokens, {environments} environments; {requests} requests per case");
    println!();
    println!("| case | token | req/s | p50 | p99 | p50 user/admin |");
    println!("|---|---|---:|---:|---:|---:|");
    for round in 1..=2 {
        let admin = rest(&server, &id, TOKEN, requests).await?;
        let scoped = rest(&server, &id, &user, requests).await?;
        row(&format!("REST GET, run {round}"), &admin, &scoped);
    }
    for round in 1..=2 {
        let admin = relay(&server, &id, TOKEN, requests).await?;
        let scoped = relay(&server, &id, &user, requests).await?;
        row(
            &format!("app WebSocket round trip, run {round}"),
            &admin,
            &scoped,
        );
    }
    runtime.abort();
    server.stop();
    Ok(())
}

struct Case {
    hist: Histogram<u64>,
    elapsed: Duration,
}

fn row(case: &str, admin: &Case, user: &Case) {
    let rate = |c: &Case| c.hist.len() as f64 / c.elapsed.as_secs_f64();
    for (who, c) in [("admin", admin), ("user", user)] {
        let ratio = if who == "user" {
            format!(
                "{:.2}×",
                user.hist.value_at_quantile(0.5) as f64
                    / admin.hist.value_at_quantile(0.5).max(1) as f64
            )
        } else {
            String::new()
        };
        println!(
            "| {case} | {who} | {:.0} | {} | {} | {ratio} |",
            rate(c),
            us(c.hist.value_at_quantile(0.5)),
            us(c.hist.value_at_quantile(0.99)),
        );
    }
}

async fn rest(server: &Server, id: &str, token: &str, n: usize) -> Res<Case> {
    let url = format!("{}/api/v1/environments/{id}", server.base);
    let client = reqwest::Client::new();
    // One request first, so the connection is open before timing.
    client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    let mut hist = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    let began = Instant::now();
    for _ in 0..n {
        let sent = Instant::now();
        let resp = client.get(&url).bearer_auth(token).send().await?;
        let status = resp.status();
        resp.bytes().await?;
        if !status.is_success() {
            return Err(format!("GET answered {status}").into());
        }
        hist.record(u64::try_from(sent.elapsed().as_micros())?.max(1))?;
    }
    Ok(Case {
        hist,
        elapsed: began.elapsed(),
    })
}

async fn relay(server: &Server, id: &str, token: &str, n: usize) -> Res<Case> {
    let mut ws: Ws = connect(&server.ws(&format!("/ws/app/{id}")), Some(token)).await?;
    let payload = json!({"type": "bench", "p": "x".repeat(1000)}).to_string();
    let mut hist = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    let began = Instant::now();
    for _ in 0..n {
        let sent = Instant::now();
        round_trip(&mut ws, &payload).await?;
        hist.record(u64::try_from(sent.elapsed().as_micros())?.max(1))?;
    }
    let elapsed = began.elapsed();
    let _ = ws.close(None).await;
    Ok(Case { hist, elapsed })
}
