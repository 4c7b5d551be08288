//! Relay benchmark: the same app and runtime clients, side by side in one run, over
//! (a) a direct WebSocket between app and runtime, (b) nginx as a WebSocket reverse
//! proxy in between (the peer an operator would put there instead; skipped, saying
//! so, where `nginx` is not installed) and (c) the relay of a real `tether serve`, with
//! 1, 100 and 1,000 concurrent pairs and 1 KiB messages.
//!
//! Each app does round trips one after another (send, wait for the runtime's echo);
//! the table shows round trips per second and p50/p99 round-trip latency for both
//! and the relay/nginx ratio. The runtimes of the relay case are this process acting
//! as the runtime of `handoff` environments (the test provider that hands its runtime
//! URL and token over in a file), so 1,000 pairs need no runtime processes.
//!
//! A second table splits the CPU time of each case (from `/proc`, Linux only) per round
//! trip: this process (apps plus runtimes, the same client work in every case) and the
//! middle (nginx's master and workers; the host), so the relay's own cost can be read
//! apart from the clients' and from the load.
//!
//! `cargo bench --bench relay [-- PAIRS,...]` (default `1,100,1000`). Loopback only;
//! every case is bounded in round trips (`RELAY_BENCH_ROUND_TRIPS`, default 20,000) and
//! in time. `RELAY_BENCH_WRAP` names a command
//! to run the host under (a profiler), e.g. `valgrind --tool=callgrind`.
//!
//! The clients use tungstenite's default settings, as the reference runtime and the
//! example app do. `RELAY_BENCH_CLIENT_READ=<bytes>` sets every client socket's read
//! buffer instead (in both cases alike): tungstenite zero-fills that much per read, and
//! its 128 KiB default makes the clients heavy enough to hide part of the relay's cost.

mod support;

use std::time::Duration;

use tokio::net::TcpListener;

use support::{Outcome, Res, Server, TOKEN, client_config, connect, echo, measure, rss_kib, us};

/// Round trips per case, spread over its pairs (at least `MIN_PER_PAIR` each).
const ROUND_TRIPS: usize = 20_000;
const MIN_PER_PAIR: usize = 20;

fn main() -> Res<()> {
    let pairs: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "1,100,1000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(pairs))
}

async fn run(pairs: Vec<usize>) -> Res<()> {
    let most = pairs.iter().copied().max().unwrap_or(1);
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), "[relay]\nmax_connections = 16\n", &[])?;
    let host_pid = server.child.id().to_string();
    let rss_before = rss_kib(&host_pid);
    eprintln!("creating {most} handoff environments…");
    let runtimes = server.environments(most).await?;
    server.settle().await?;
    let rss_after = rss_kib(&host_pid);
    // More round trips for a profiler to see past the set-up.
    let round_trips = std::env::var("RELAY_BENCH_ROUND_TRIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUND_TRIPS);
    let nginx = support::nginx::Nginx::start().await?;
    if nginx.is_none() {
        println!(
            "nginx is not installed (`.ci/prepare --bench` installs it): its column is skipped"
        );
        println!();
    }
    println!(
        "| pairs | direct rt/s | nginx rt/s | relay rt/s | relay ÷ nginx | p50 direct / nginx / relay | p99 direct / nginx / relay |"
    );
    println!("|---:|---:|---:|---:|---:|---|---|");
    let mut cpu_rows = Vec::new();
    for &n in &pairs {
        let per_pair = (round_trips / n).max(MIN_PER_PAIR);
        let direct = direct_case(n, per_pair, None).await?;
        let proxied = match &nginx {
            Some(nginx) => Some(direct_case(n, per_pair, Some(nginx)).await?),
            None => None,
        };
        let relay = relay_case(&server, &runtimes[..n], per_pair).await?;
        let of_nginx = |f: &dyn Fn(&Outcome) -> String| proxied.as_ref().map_or("–".into(), f);
        cpu_rows.push(format!(
            "| {n} | {} | {} | {} | {} | {} |",
            per_rt(direct.clients_cpu, &direct),
            of_nginx(&|o| per_rt(o.clients_cpu, o)),
            per_rt(relay.clients_cpu, &relay),
            of_nginx(&|o| per_rt(o.host_cpu, o)),
            per_rt(relay.host_cpu, &relay),
        ));
        let q = |o: &Outcome, at: f64| us(o.hist.value_at_quantile(at));
        println!(
            "| {n} | {:.0} | {} | {:.0} | {} | {} / {} / {} | {} / {} / {} |",
            direct.rate(),
            of_nginx(&|o| format!("{:.0}", o.rate())),
            relay.rate(),
            of_nginx(&|o| format!("{:.2}×", relay.rate() / o.rate())),
            q(&direct, 0.5),
            of_nginx(&|o| q(o, 0.5)),
            q(&relay, 0.5),
            q(&direct, 0.99),
            of_nginx(&|o| q(o, 0.99)),
            q(&relay, 0.99),
        );
    }
    println!();
    println!(
        "| pairs | clients CPU/rt, direct | clients CPU/rt, nginx | clients CPU/rt, relay | nginx CPU/rt | host CPU/rt, relay |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for row in cpu_rows {
        println!("{row}");
    }
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!();
        println!(
            "host resident memory: {before} KiB empty, {after} KiB with {most} running `handoff` \
             environments (instance, record, hub; no runtime connected): {:.1} KiB each",
            after.saturating_sub(before) as f64 / most.max(1) as f64
        );
    }
    server.stop();
    if let Some(nginx) = nginx {
        nginx.stop();
    }
    Ok(())
}

/// `cpu` per round trip of `outcome`, in µs.
fn per_rt(cpu: Option<Duration>, outcome: &Outcome) -> String {
    match cpu {
        Some(cpu) => format!(
            "{:.1} µs",
            cpu.as_secs_f64() * 1e6 / outcome.hist.len() as f64
        ),
        None => "n/a".into(),
    }
}

/// Apps and echoing runtimes over plain WebSockets, directly or through `nginx`.
async fn direct_case(
    pairs: usize,
    per_pair: usize,
    nginx: Option<&support::nginx::Nginx>,
) -> Res<Outcome> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
                if let Ok(ws) =
                    tokio_tungstenite::accept_async_with_config(stream, client_config()).await
                {
                    echo(ws).await;
                }
            });
        }
    });
    let (url, middle) = match nginx {
        Some(nginx) => (nginx.route_to(upstream).await?, nginx.pids()),
        None => (format!("ws://{upstream}"), Vec::new()),
    };
    let mut apps = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        apps.push(connect(&url, None).await?);
    }
    let outcome = measure(apps, per_pair, &middle).await;
    server.abort();
    outcome
}

async fn relay_case(
    server: &Server,
    envs: &[(String, String, String)],
    per_pair: usize,
) -> Res<Outcome> {
    let mut runtimes = Vec::with_capacity(envs.len());
    for (_, url, token) in envs {
        runtimes.push(tokio::spawn(echo(connect(url, Some(token)).await?)));
    }
    let mut apps = Vec::with_capacity(envs.len());
    for (id, _, _) in envs {
        apps.push(connect(&server.ws(&format!("/ws/app/{id}")), Some(TOKEN)).await?);
    }
    let outcome = measure(apps, per_pair, &[server.child.id()]).await;
    for runtime in runtimes {
        runtime.abort();
    }
    outcome
}
