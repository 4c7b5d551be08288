//! Scale benchmark (issue 16, item 6): one real `tether serve` with thousands of
//! running `handoff` environments whose runtimes (this process) are all connected.
//!
//! For each size (default 1,000, 5,000, 10,000 and 20,000; a size the open-files limit
//! cannot hold is skipped, saying so) a fresh host:
//!
//! 1. answers `/healthz` and `GET /api/v1/environments/{id}` while empty (one
//!    environment): the bare figures the loaded ones are read against;
//! 2. is sent N creates with `start: true`, [`CREATORS`] in flight at a time: creates
//!    per second and each create's p50/p99;
//! 3. has every runtime dialled at once, retrying as the reference runtime does: the
//!    time until all are admitted, beside the same N dials to a bare WebSocket server
//!    (accept and handshake, nothing else) in a process of its own — this benchmark
//!    started again with `--bare-server` — so no process needs more than N sockets;
//! 4. with all N running and connected, over [`SPREAD`] (longer than a health
//!    interval): `/healthz` and one record, p50/p99, the full list, the host's CPU use
//!    while idle, its open descriptors and resident memory per environment (growth
//!    from empty / N), its proportional memory (PSS: a page mapped by every instance,
//!    such as a shared memory image, counted once) per environment split into the
//!    guests' linear memories, stacks and the rest (from `smaps`), and its memory
//!    mappings per environment (Linux caps them per process: `vm.max_map_count`).
//!
//! The host shares providers' memory images between instances where the cap holds
//! 10,000 sharing (`engine`); at a size the cap cannot hold sharing, it is told to
//! copy them (`limits.share_memory_images = false`), saying so.
//!
//! `cargo bench -p tether --bench scale [-- SIZES]`, e.g. `-- 1000,10000`. Under a
//! wrapper (`RELAY_BENCH_WRAP`, e.g. `heaptrack -o FILE`) the CPU and memory columns read
//! the wrapper's process, not the host's.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;
use tokio::net::TcpListener;

use support::fleet::{create_many, dial, handoff, load, raise_nofile};
use support::{Res, Server, TOKEN, cpu_time, echo, memory_by_kind, rss_kib, us};

/// Create requests in flight at a time.
const CREATORS: usize = 64;
/// How long the loaded latency samples are spread over.
const SPREAD: Duration = Duration::from_secs(12);
/// Samples of `/healthz` and of one record.
const SAMPLES: u32 = 600;
/// Longest any phase may take.
const PHASE_LIMIT: Duration = Duration::from_secs(600);
/// The host's settings: the runtimes here dial only once every environment has
/// started, so a runtime's grace to connect is longer than the creates take (with
/// the default 30 s, the first environments would fail and restart while the last
/// are still being created — a churn that is the benchmark's making, not the host's).
const TOML: &str = "[health]\nruntime_grace_ms = 900000\n";
/// Mappings a running environment holds when it shares its memory image, with room
/// to spare (measured: 4.35 at 10,000).
const MAPPINGS_SHARING: u64 = 5;
/// Descriptors besides one socket per runtime (and the host's one per environment).
const SPARE_FDS: u64 = 1024;

fn main() -> Res<()> {
    if std::env::args().any(|a| a == "--bare-server") {
        return bare_server();
    }
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "1000,5000,10000,20000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let most = sizes.iter().copied().max().unwrap_or(0) as u64;
    // The host (it inherits the limit) holds one per running environment, its
    // runtime's socket (a `handoff` instance opens no directory), and this process
    // one per runtime it dials.
    let fds = raise_nofile(most + SPARE_FDS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("load average before: {}", load());
    let mut rows = Vec::new();
    for n in sizes {
        if (n as u64 + SPARE_FDS) > fds {
            println!("{n}: skipped, the open-files limit ({fds}) cannot hold it");
            continue;
        }
        rows.push(rt.block_on(case(n))?);
        eprintln!("{}", rows.last().map_or("", |r: &Row| r.first.as_str()));
    }
    table(
        "| environments | creates/s | create p50 | create p99 | all started | all connected (bare server) | all connected (Tether) |",
        rows.iter().map(|r| &r.first),
    );
    table(
        "| environments | /healthz p50 | /healthz p99 (empty host) | record p50 | record p99 (empty host) | list all | idle host CPU | host RSS per environment | host descriptors per environment |",
        rows.iter().map(|r| &r.second),
    );
    table(
        "| environments | host RSS per environment | host PSS per environment | of which guest linear memory | stacks | the rest (heap, buffers) | host memory mappings per environment |",
        rows.iter().map(|r| &r.third),
    );
    println!();
    println!("load average after: {}", load());
    Ok(())
}

/// Prints a Markdown table: `header`, its alignment line (every column right
/// aligned), then `rows`, after an empty line.
fn table<'a>(header: &str, rows: impl Iterator<Item = &'a String>) {
    println!();
    println!("{header}");
    println!("|{}", "---:|".repeat(header.matches('|').count() - 1));
    for row in rows {
        println!("{row}");
    }
}

/// One size's three table rows.
struct Row {
    first: String,
    second: String,
    third: String,
}

async fn case(n: usize) -> Res<Row> {
    let dir = tempfile::tempdir()?;
    let cap = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|c| c.trim().parse::<u64>().ok());
    let toml = match cap {
        Some(cap) if n as u64 * MAPPINGS_SHARING > cap => {
            eprintln!("{n}: memory images copied (vm.max_map_count {cap} cannot hold {n} sharing)");
            format!("{TOML}[limits]\nshare_memory_images = false\n")
        }
        _ => TOML.to_owned(),
    };
    let server = Arc::new(Server::start(dir.path(), &toml, &[])?);
    let host = server.child.id().to_string();
    let probe = server
        .create(&json!({"name": "probe", "provider": "handoff"}))
        .await?;
    let empty_health = sample(&server, "/healthz", SAMPLES / 2, Duration::ZERO).await?;
    let empty_get = sample(
        &server,
        &format!("/api/v1/environments/{probe}"),
        SAMPLES / 2,
        Duration::ZERO,
    )
    .await?;
    let rss_empty = rss_kib(&host).unwrap_or(0);
    let fds_empty = descriptors(&host);
    let maps_empty = mappings(&host);
    let kinds_empty = memory_by_kind(&host).unwrap_or_default();

    eprintln!("{n}: creating…");
    let began = Instant::now();
    let (ids, creates) = create_many(&server, "s", n, CREATORS).await?;
    let created = began.elapsed();
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut credentials = Vec::with_capacity(n);
    for i in 0..n {
        credentials.push(handoff(dir.path(), &format!("s{i}"), deadline).await?);
    }
    let started = began.elapsed();

    eprintln!("{n}: dialling a bare server…");
    let bare = bare_dials(n).await?;
    eprintln!("{n}: dialling the host…");
    let connected = Arc::new(AtomicUsize::new(0));
    let dialled = Instant::now();
    let deadline = dialled + PHASE_LIMIT;
    let mut runtimes = tokio::task::JoinSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for (url, token) in credentials {
        let (connected, done_tx) = (connected.clone(), done_tx.clone());
        runtimes.spawn(async move {
            match dial(&url, &token, deadline).await {
                Ok(ws) => {
                    if connected.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        let _ = done_tx.send(Ok(dialled.elapsed()));
                    }
                    echo(ws).await;
                }
                Err(e) => {
                    let _ = done_tx.send(Err(e.to_string()));
                }
            }
        });
    }
    let all_connected = match tokio::time::timeout(PHASE_LIMIT, done_rx.recv()).await {
        Ok(Some(Ok(took))) => format!("{:.2} s", took.as_secs_f64()),
        Ok(Some(Err(e))) => format!("failed: {e}"),
        _ => format!(
            "{} of {n} in {} s",
            connected.load(Ordering::Relaxed),
            PHASE_LIMIT.as_secs()
        ),
    };
    eprintln!("{n}: all connected: {all_connected}");

    // Loaded figures, spread over more than one health interval.
    let gap = SPREAD / SAMPLES;
    let cpu_before = cpu_time(&host);
    let spread = Instant::now();
    let health = sample(&server, "/healthz", SAMPLES, gap).await?;
    let idle_cpu = cpu_before.zip(cpu_time(&host)).map(|(b, a)| {
        let share = a.saturating_sub(b).as_secs_f64() / spread.elapsed().as_secs_f64();
        format!("{:.0} %", share * 100.0)
    });
    let mut get = Histogram::<u64>::new(3)?;
    for _ in 0..SAMPLES {
        let id = &ids[rand::rng().random_range(0..ids.len())];
        get.add(
            sample(
                &server,
                &format!("/api/v1/environments/{id}"),
                1,
                Duration::ZERO,
            )
            .await?,
        )?;
        tokio::time::sleep(gap).await;
    }
    let listed = Instant::now();
    let list = server.list().await?;
    let list_took = listed.elapsed();
    let shown_connected = list.as_array().map_or(0, |l| {
        l.iter()
            .filter(|e| e["runtime"]["connected"] == true)
            .count()
    });
    let rss = rss_kib(&host).unwrap_or(0);
    let fds = descriptors(&host);
    let maps = mappings(&host);
    let kinds = memory_by_kind(&host).unwrap_or_default();
    if shown_connected != n {
        eprintln!("{n}: the list shows {shown_connected} runtimes connected");
    }
    server_stop(server);
    runtimes.shutdown().await;

    let q = |h: &Histogram<u64>, at: f64| us(h.value_at_quantile(at));
    Ok(Row {
        first: format!(
            "| {n} | {:.0} | {} | {} | {:.1} s | {:.2} s | {all_connected} |",
            n as f64 / created.as_secs_f64(),
            q(&creates, 0.5),
            q(&creates, 0.99),
            started.as_secs_f64(),
            bare.as_secs_f64(),
        ),
        second: format!(
            "| {n} | {} | {} ({}) | {} | {} ({}) | {:.0} ms | {} | {:.1} KiB | {:.2} |",
            q(&health, 0.5),
            q(&health, 0.99),
            q(&empty_health, 0.99),
            q(&get, 0.5),
            q(&get, 0.99),
            q(&empty_get, 0.99),
            list_took.as_secs_f64() * 1000.0,
            idle_cpu.unwrap_or_else(|| "–".into()),
            rss.saturating_sub(rss_empty) as f64 / n as f64,
            fds.saturating_sub(fds_empty) as f64 / n as f64,
        ),
        third: {
            let per = |full: u64, empty: u64| full.saturating_sub(empty) as f64 / n as f64;
            format!(
                "| {n} | {:.1} KiB | {:.1} KiB | {:.1} KiB | {:.1} KiB | {:.1} KiB | {:.2} |",
                per(rss, rss_empty),
                per(kinds.total(), kinds_empty.total()),
                per(kinds.guest, kinds_empty.guest),
                per(kinds.stacks, kinds_empty.stacks),
                per(kinds.rest, kinds_empty.rest),
                maps.saturating_sub(maps_empty) as f64 / n as f64,
            )
        },
    })
}

/// How many descriptors process `pid` holds open.
fn descriptors(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// How many memory mappings process `pid` has.
fn mappings(pid: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).map_or(0, |m| m.lines().count())
}

/// `count` GETs of `path`, `gap` apart; their latencies in microseconds.
async fn sample(server: &Server, path: &str, count: u32, gap: Duration) -> Res<Histogram<u64>> {
    let mut hist = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    let url = format!("{}{path}", server.base);
    for _ in 0..count {
        let sent = Instant::now();
        let response = server.http.get(&url).bearer_auth(TOKEN).send().await?;
        let status = response.status();
        response.bytes().await?;
        hist.record(u64::try_from(sent.elapsed().as_micros())?.max(1))?;
        if !status.is_success() {
            return Err(format!("GET {path}: {status}").into());
        }
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    Ok(hist)
}

/// The time `n` runtimes dialled at once take to be connected to a bare WebSocket
/// server (accept and handshake, nothing else) in a process of its own.
async fn bare_dials(n: usize) -> Res<Duration> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--bare-server")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let url = format!("ws://{}/ws/runtime/bare", line.trim());
    let began = Instant::now();
    let deadline = began + PHASE_LIMIT;
    let mut dials = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = url.clone();
        dials.spawn(async move { dial(&url, "bare", deadline).await });
    }
    let mut sockets = Vec::with_capacity(n);
    let mut failed = None;
    while let Some(ws) = dials.join_next().await {
        match ws? {
            Ok(ws) => sockets.push(ws),
            Err(e) => failed = Some(e),
        }
    }
    let took = began.elapsed();
    drop(sockets);
    let _ = child.kill();
    let _ = child.wait();
    match failed {
        Some(e) => Err(e),
        None => Ok(took),
    }
}

/// The bare server: accepts WebSockets on a loopback port (printed on stdout) and
/// reads them until they close, until killed.
fn bare_server() -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        loop {
            let (tcp, _) = listener.accept().await?;
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    use futures_util::StreamExt;
                    let (_, mut read) = ws.split();
                    while let Some(Ok(_)) = read.next().await {}
                }
            });
        }
    })
}

/// Stops the host once no task holds it any more.
fn server_stop(server: Arc<Server>) {
    match Arc::try_unwrap(server) {
        Ok(server) => server.stop(),
        Err(server) => eprintln!("host {} still shared; left to the drop", server.child.id()),
    }
}
