//! Provisioning benchmark (issue 13): how long an app waits for its first answer when
//! the host makes its environment on connect, against doing the same by hand, and what
//! a burst of new threads costs.
//!
//! A real `tether serve` (release build) with a `thread`-scoped template over the
//! built-in `local-process` provider, so every environment runs a real reference runtime
//! (`tether runtime`) as its own process. Three parts:
//!
//! 1. **Provisioned**: connect to `/ws/app?template=chat&thread=T` on a new thread, send an
//!    `echo` at once, time until its answer.
//! 2. **Manual**, interleaved with 1 so both see the same load: `POST /api/v1/environments`
//!    with `start: true`, poll `GET …/{id}` every 25 ms until `running` with the runtime
//!    connected, open `/ws/app/{id}`, send the `echo`, time until its answer.
//!    Each environment is deleted after its sample, so every sample starts from the same
//!    number of live runtimes.
//! 3. **Burst**: BURST new threads connect spread evenly over one second, each sends an
//!    `echo`; time until every one is answered, errors, and the host's resident memory
//!    (and the runtimes') per provisioned environment.
//!
//! `cargo bench -p tether --bench provision [-- SAMPLES [BURST]]` (defaults 100 and 1000).

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use support::{Res, Server, TOKEN, Ws, connect, rss_kib, us};

/// How often the manual path polls the environment.
const POLL: Duration = Duration::from_millis(25);
/// Longest any one sample may take before it counts as an error.
const SAMPLE_LIMIT: Duration = Duration::from_secs(300);
/// Samples of each path before measuring, not counted.
const WARM_UP: usize = 3;

// Thousands of threads for one user: past the template's default cap of 100.
const TOML: &str = "[templates.chat]\nprovider = \"local-process\"\nscope = \"thread\"\n\
max_per_user = 1000000\n\n[lifecycle]\nstart_timeout_secs = 300\n";

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let samples: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let burst: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(samples, burst))
}

async fn run(samples: usize, burst: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), TOML, &[])?;
    let token = user_token(&server, "bench").await?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());

    let mut provisioned = Histogram::<u64>::new(3)?;
    let mut manual = Histogram::<u64>::new(3)?;
    for i in 0..WARM_UP + samples {
        let (id_p, took_p) = first_echo_provisioned(&server, &token, &format!("p{i}")).await?;
        let (id_m, took_m) = first_echo_manual(&server, &token, &format!("m{i}")).await?;
        if i >= WARM_UP {
            provisioned.record(micros(took_p))?;
            manual.record(micros(took_m))?;
        }
        delete(&server, &id_p).await?;
        delete(&server, &id_m).await?;
    }
    println!("\nfirst connect to first echo, {samples} new threads each (interleaved)\n");
    println!("| path | p50 | p99 | mean |");
    println!("|---|---|---|---|");
    for (name, h) in [
        ("provisioned (template)", &provisioned),
        ("manual (create, poll, connect)", &manual),
    ] {
        let mean = h.mean() as u64;
        println!(
            "| {name} | {} | {} | {} |",
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(mean)
        );
    }
    let ratio = |q: f64| {
        provisioned.value_at_quantile(q) as f64 / manual.value_at_quantile(q).max(1) as f64
    };
    println!(
        "| ratio provisioned / manual | {:.2}× | {:.2}× | {:.2}× |",
        ratio(0.5),
        ratio(0.99),
        provisioned.mean() / manual.mean().max(1.0)
    );

    burst_of(&server, &token, burst).await?;
    server.stop();
    Ok(())
}

/// Part 3: `n` new threads within a second.
async fn burst_of(server: &Server, token: &str, n: usize) -> Res<()> {
    let host = server.child.id().to_string();
    let rss_before = rss_kib(&host).ok_or("no host RSS")?;
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (url, token) = (
            template_url(server, &format!("burst-{i}")),
            token.to_owned(),
        );
        let offset = Duration::from_secs(1).mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let at = Instant::now();
            let result = tokio::time::timeout(SAMPLE_LIMIT, async {
                let mut ws = connect(&url, Some(&token)).await?;
                let id = provisioned_id(&mut ws).await?;
                echo(&mut ws).await?;
                Res::<(String, Duration, Ws)>::Ok((id, at.elapsed(), ws))
            })
            .await;
            match result {
                Ok(Ok(done)) => Ok(done),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within the limit".to_owned()),
            }
        }));
    }
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut ids, mut sockets, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for task in tasks {
        match task.await? {
            Ok((id, took, ws)) => {
                latency.record(micros(took))?;
                ids.push(id);
                sockets.push(ws); // kept open until the memory is read
            }
            Err(e) => errors.push(e),
        }
    }
    let all_answered = began.elapsed();
    let rss_after = rss_kib(&host).ok_or("no host RSS")?;
    let runtimes = children_rss_kib(&host);
    let ok = ids.len().max(1) as u64;
    println!("\nburst: {n} new threads connecting within 1 s, an echo each\n");
    println!(
        "| answered | errors | all answered after | p50 | p99 | host RSS before → after | host RSS per environment | runtimes' RSS per environment |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.1} s | {} | {} | {} → {} MiB | {} KiB | {} KiB ({} processes) |",
        ids.len(),
        errors.len(),
        all_answered.as_secs_f64(),
        us(latency.value_at_quantile(0.5)),
        us(latency.value_at_quantile(0.99)),
        rss_before / 1024,
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) / ok,
        runtimes.1 / ok,
        runtimes.0,
    );
    if let Some(first) = errors.first() {
        println!("first error: {first}");
    }
    drop(sockets);
    // Deletes a few at a time, so the host is left as it was found.
    for chunk in ids.chunks(32) {
        let deletes = chunk.iter().map(|id| delete(server, id));
        for result in futures_util::future::join_all(deletes).await {
            result?;
        }
    }
    Ok(())
}

/// Part 1: one new thread through the template; its environment id and the time.
async fn first_echo_provisioned(
    server: &Server,
    token: &str,
    thread: &str,
) -> Res<(String, Duration)> {
    let url = template_url(server, thread);
    let began = Instant::now();
    let mut ws = connect(&url, Some(token)).await?;
    let id = provisioned_id(&mut ws).await?;
    echo(&mut ws).await?;
    Ok((id, began.elapsed()))
}

/// Part 2: the same by hand.
async fn first_echo_manual(server: &Server, token: &str, name: &str) -> Res<(String, Duration)> {
    let began = Instant::now();
    let body = json!({"name": name, "provider": "local-process", "start": true});
    let env: Value = server
        .http
        .post(format!("{}/api/v1/environments", server.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let id = env["id"].as_str().ok_or("no id")?.to_owned();
    loop {
        let env: Value = server
            .http
            .get(format!("{}/api/v1/environments/{id}", server.base))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        if env["status"] == "running" && env["runtime"]["connected"] == true {
            break;
        }
        if env["status"] == "error" || began.elapsed() > SAMPLE_LIMIT {
            return Err(format!("{name} did not run: {}", env["lastError"]).into());
        }
        tokio::time::sleep(POLL).await;
    }
    let mut ws = connect(
        &server.ws(&format!("/ws/app/{id}?thread=main")),
        Some(token),
    )
    .await?;
    echo(&mut ws).await?;
    Ok((id, began.elapsed()))
}

fn template_url(server: &Server, thread: &str) -> String {
    server.ws(&format!("/ws/app?template=chat&thread={thread}"))
}

/// Reads the `provisioned` frame that opens a provisioned connection.
async fn provisioned_id(ws: &mut Ws) -> Res<String> {
    let first = next_json(ws).await?;
    match first["environmentId"].as_str() {
        Some(id) if first["type"] == "provisioned" => Ok(id.to_owned()),
        _ => Err(format!("not a provisioned frame: {first}").into()),
    }
}

/// Sends an `echo` and waits for its answer, skipping status frames.
async fn echo(ws: &mut Ws) -> Res<()> {
    let echo = json!({"type": "echo", "requestId": "e", "payload": "x"});
    ws.send(Message::Text(echo.to_string().into())).await?;
    loop {
        let frame = next_json(ws).await?;
        if frame["requestId"] == "e" {
            return match frame["type"].as_str() {
                Some("echoResponse") => Ok(()),
                _ => Err(format!("answered with {frame}").into()),
            };
        }
    }
}

async fn next_json(ws: &mut Ws) -> Res<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}").into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err("connection ended".into()),
        }
    }
}

async fn delete(server: &Server, id: &str) -> Res<()> {
    let response = server
        .http
        .delete(format!("{}/api/v1/environments/{id}", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(format!("deleting {id}: HTTP {}", response.status()).into());
    }
    Ok(())
}

/// A user token for `user`, made with the operator's token.
async fn user_token(server: &Server, user: &str) -> Res<String> {
    let issued: Value = server
        .http
        .post(format!("{}/api/v1/tokens", server.base))
        .bearer_auth(TOKEN)
        .json(&json!({"user": user}))
        .send()
        .await?
        .json()
        .await?;
    Ok(issued["token"].as_str().ok_or("no token")?.to_owned())
}

/// How many child processes `pid` has and their resident memory in KiB, from `/proc`.
fn children_rss_kib(pid: &str) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    let mut found = (0, 0);
    for entry in entries.flatten() {
        let child = entry.file_name().to_string_lossy().into_owned();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if parent == Some(pid) {
            found.0 += 1;
            found.1 += rss_kib(&child).unwrap_or(0);
        }
    }
    found
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
