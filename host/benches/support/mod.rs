//! What the benchmarks that drive a real `tether serve` share: the host process (with
//! `handoff` environments whose runtime the benchmark itself plays), WebSocket clients,
//! and readings of a process's memory and CPU time from `/proc`.

#![allow(dead_code)] // each benchmark uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};

/// Paths of the guest components built for tests and benchmarks.
#[allow(dead_code, unreachable_pub)] // generated: one constant per guest, not all used here
pub(crate) mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

pub(crate) mod fleet;
pub(crate) mod nats;
pub(crate) mod nginx;

/// The API token every benchmark host runs with.
pub(crate) const TOKEN: &str = "bench-token-0123456789abcdef";

/// What benchmark code returns.
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A command running `program` that is killed when the benchmark's thread that
/// started it ends (`setpriv --pdeathsig`, where util-linux has it), so a benchmark
/// killed by hand leaves no host, NATS or nginx running; they are all started from
/// the thread that runs the benchmark throughout. A profiler named in
/// `RELAY_BENCH_WRAP` is tied so, but a host it runs as its own child is not.
pub(crate) fn dies_with_benchmark(program: impl AsRef<std::ffi::OsStr>) -> Command {
    const SETPRIV: &str = "/usr/bin/setpriv";
    if std::path::Path::new(SETPRIV).exists() {
        let mut command = Command::new(SETPRIV);
        command.args(["--pdeathsig", "KILL", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Resident memory of process `pid` in KiB, from `/proc/<pid>/status`.
pub(crate) fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Memory of process `pid` by kind, in KiB, from `/proc/<pid>/smaps`: each mapping's
/// proportional set (PSS), in which a page mapped n times counts 1/n each time, so a
/// memory image every instance maps counts once, as it occupies memory once (the
/// resident set would count it once per instance).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MemoryKinds {
    /// Guest linear memories: read-write mappings right below a reservation of 1 GiB
    /// or more without access (wasmtime's layout), a shared initial image included.
    pub(crate) guest: u64,
    /// Stacks: read-write anonymous mappings right above a guard region of at most
    /// 2 MiB (fiber stacks, and the threads' own, whose number hardly changes).
    pub(crate) stacks: u64,
    /// Everything else (the host's heap, code, buffers).
    pub(crate) rest: u64,
}

impl MemoryKinds {
    /// All of it.
    pub(crate) fn total(&self) -> u64 {
        self.guest + self.stacks + self.rest
    }
}

/// [`MemoryKinds`] of process `pid`; `None` where it cannot be read.
pub(crate) fn memory_by_kind(pid: &str) -> Option<MemoryKinds> {
    struct Map {
        start: u64,
        end: u64,
        perms: String,
        anonymous: bool,
        pss: u64,
    }
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut maps: Vec<Map> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next()?;
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let perms = words.next()?.to_owned();
            // offset, device, inode, then the name if any.
            let anonymous = words.nth(3).is_none();
            maps.push(Map {
                start,
                end,
                perms,
                anonymous,
                pss: 0,
            });
        } else if first == "Pss:"
            && let Some(last) = maps.last_mut()
        {
            last.pss = words.next()?.parse().ok()?;
        }
    }
    fn none(other: Option<&Map>) -> Option<&Map> {
        other.filter(|o| o.anonymous && o.perms.starts_with("---"))
    }
    let writable = |m: &Map| m.perms.starts_with("rw");
    let mut kinds = MemoryKinds::default();
    let mut i = 0;
    while i < maps.len() {
        // A run of read-write mappings next to each other: a linear memory is one
        // (anonymous pieces, and the shared image between them) right below its
        // reservation.
        let mut last = i;
        while writable(&maps[i])
            && maps
                .get(last + 1)
                .is_some_and(|n| n.start == maps[last].end && writable(n))
        {
            last += 1;
        }
        let memory = writable(&maps[i])
            && none(maps.get(last + 1))
                .is_some_and(|n| n.start == maps[last].end && n.end - n.start >= 1 << 30);
        for k in i..=last {
            let m = &maps[k];
            let guard_below = k
                .checked_sub(1)
                .and_then(|j| none(maps.get(j)))
                // Up to the 2 MiB of a fiber stack's (4 KiB for a thread's): a larger
                // one is more likely the rest of another malloc arena.
                .is_some_and(|p| p.end == m.start && p.end - p.start <= 2 << 20);
            if memory {
                kinds.guest += m.pss;
            } else if m.anonymous && writable(m) && guard_below {
                kinds.stacks += m.pss;
            } else {
                kinds.rest += m.pss;
            }
        }
        i = last + 1;
    }
    Some(kinds)
}

/// CPU time (user + system, all threads) process `pid` has used so far, from
/// `/proc/<pid>/stat`; `None` where there is no such file.
pub(crate) fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may itself hold spaces;
    // utime and stime are fields 14 and 15 of the whole line.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Microseconds, or milliseconds past 1,000 µs.
pub(crate) fn us(v: u64) -> String {
    if v >= 1000 {
        format!("{:.2} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

/// A `tether serve` child with the `handoff` provider (and any others asked for)
/// dropped in.
pub(crate) struct Server {
    /// The host process.
    pub(crate) child: Child,
    /// Its `http://` base URL.
    pub(crate) base: String,
    data_dir: std::path::PathBuf,
    /// A client for its API.
    pub(crate) http: reqwest::Client,
    /// What WebSocket clients trust when it serves TLS.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Server {
    /// Starts a host on `dir` with `tether_toml` and the components `drop_ins` (file
    /// name, path) besides `handoff`.
    pub(crate) fn start(
        dir: &std::path::Path,
        tether_toml: &str,
        drop_ins: &[(&str, &str)],
    ) -> Res<Self> {
        Self::start_with(dir, tether_toml, drop_ins, &[], None)
    }

    /// [`Server::start`] with more `serve` flags (`--tls-cert` …); over TLS the
    /// benchmark's clients trust what `tls` trusts.
    pub(crate) fn start_with(
        dir: &std::path::Path,
        tether_toml: &str,
        drop_ins: &[(&str, &str)],
        flags: &[&std::ffi::OsStr],
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Res<Self> {
        let providers = dir.join(".codebolt/providers");
        std::fs::create_dir_all(&providers)?;
        std::fs::copy(guests::HANDOFF, providers.join("handoff.wasm"))?;
        for (name, path) in drop_ins {
            std::fs::copy(path, providers.join(name))?;
        }
        std::fs::write(dir.join("tether.toml"), tether_toml)?;
        // A profiler to run the host under, if asked for (see the top of this file).
        let wrap = std::env::var("RELAY_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = dies_with_benchmark(program);
                c.args(words).arg(env!("CARGO_BIN_EXE_tether"));
                c
            }
            None => dies_with_benchmark(env!("CARGO_BIN_EXE_tether")),
        };
        // A group of its own: stopping a host run under a wrapper (which may not pass
        // signals on) stops the host too, not only the wrapper.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .arg("--config")
            .arg(dir.join("tether.toml"))
            .args(flags)
            .env("TETHER_API_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines.next().ok_or("server exited")??;
            if let Some(url) = line.strip_prefix("tether listening on ") {
                break url.trim().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let http = match &tls {
            Some(tls) => reqwest::Client::builder()
                .use_preconfigured_tls((**tls).clone())
                .build()?,
            None => reqwest::Client::new(),
        };
        Ok(Self {
            child,
            base,
            data_dir: dir.to_owned(),
            http,
            tls,
        })
    }

    /// Creates an environment from a create request's `body`; returns its id.
    pub(crate) async fn create(&self, body: &Value) -> Res<String> {
        let env: Value = self
            .http
            .post(format!("{}/api/v1/environments", self.base))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await?
            .json()
            .await?;
        Ok(env["id"].as_str().ok_or("no id")?.to_owned())
    }

    /// `POST path` with the benchmark's token; an error unless it succeeded.
    pub(crate) async fn post(&self, path: &str) -> Res<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            return Err(format!("POST {path}: {status} {body}").into());
        }
        Ok(body)
    }

    /// `GET /api/v1/environments`: every environment as the API lists it.
    pub(crate) async fn list(&self) -> Res<Value> {
        Ok(self
            .http
            .get(format!("{}/api/v1/environments", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits (up to a minute) until environment `id` has `status`.
    pub(crate) async fn wait_status(&self, id: &str, status: &str) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let env: Value = self
                .http
                .get(format!("{}/api/v1/environments/{id}", self.base))
                .bearer_auth(TOKEN)
                .send()
                .await?
                .json()
                .await?;
            if env["status"] == status {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{id} never reached {status}: {env}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates `n` started environments; returns each one's (id, runtime URL, token).
    pub(crate) async fn environments(&self, n: usize) -> Res<Vec<(String, String, String)>> {
        let mut out = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
            let mut ids = Vec::new();
            for i in chunk {
                let body = json!({"name": format!("b{i}"), "provider": "handoff", "start": true});
                ids.push((*i, self.create(&body).await?));
            }
            for (i, id) in ids {
                let file = self
                    .data_dir
                    .join(format!(".codebolt/environments/b{i}/runtime.json"));
                let deadline = Instant::now() + Duration::from_secs(60);
                let handoff: Value = loop {
                    if let Ok(text) = std::fs::read_to_string(&file) {
                        break serde_json::from_str(&text)?;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("environment b{i} never started").into());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                let field = |k: &str| handoff[k].as_str().map(str::to_owned).ok_or("field");
                out.push((id, field("url")?, field("token")?));
            }
        }
        Ok(out)
    }

    /// Waits until every environment is `running` and the records file has stopped
    /// changing, so the starts' own bookkeeping is not measured as relay cost.
    pub(crate) async fn settle(&self) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let envs: Value = self
                .http
                .get(format!("{}/api/v1/environments", self.base))
                .bearer_auth(TOKEN)
                .send()
                .await?
                .json()
                .await?;
            let all_running = envs
                .as_array()
                .is_some_and(|l| l.iter().all(|e| e["status"] == "running"));
            if all_running {
                break;
            }
            if Instant::now() > deadline {
                return Err("environments never all ran".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let records = self.data_dir.join(".codebolt/environments.json");
        let modified = || std::fs::metadata(&records).and_then(|m| m.modified()).ok();
        let mut last = modified();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = modified();
            if now == last || Instant::now() > deadline {
                return Ok(());
            }
            last = now;
        }
    }

    /// The `ws://` (or `wss://`) URL of `path` on this host.
    pub(crate) fn ws(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http", "ws", 1))
    }

    /// Asks the host to shut down (so a profiler around it writes its report), and
    /// kills it if it has not within a few seconds.
    pub(crate) fn stop(mut self) {
        // The host's process group (see `start_with`): the host, and its wrapper if any.
        let group = i32::try_from(self.child.id())
            .ok()
            .map(|pid| Pid::from_raw(-pid));
        if let Some(group) = group {
            let _ = kill(group, Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever of the group is left (a host its wrapper left behind, or all of it).
        if let Some(group) = group {
            let _ = kill(group, Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A client WebSocket.
pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The clients' socket settings: tungstenite's defaults unless the environment says.
pub(crate) fn client_config() -> Option<WebSocketConfig> {
    let read = std::env::var("RELAY_BENCH_CLIENT_READ")
        .ok()?
        .parse()
        .ok()?;
    Some(WebSocketConfig::default().read_buffer_size(read))
}

/// Opens a WebSocket to `url`, with a bearer token if given.
pub(crate) async fn connect(url: &str, token: Option<&str>) -> Res<Ws> {
    connect_tls(url, token, None).await
}

/// Opens a WebSocket to `url`, over TLS trusting what `tls` trusts for `wss://`.
pub(crate) async fn connect_tls(
    url: &str,
    token: Option<&str>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Res<Ws> {
    let mut req = url.into_client_request()?;
    if let Some(token) = token {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let config = client_config();
    Ok(
        tokio_tungstenite::connect_async_tls_with_config(req, config, false, connector)
            .await?
            .0,
    )
}

/// Sends `payload` (a `{"type":"bench",…}` frame) and waits for its echo, skipping any
/// other frame (status events, acknowledgements).
pub(crate) async fn round_trip(ws: &mut Ws, payload: &str) -> Res<()> {
    ws.send(Message::Text(payload.to_owned().into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().starts_with("{\"type\":\"bench\"") => {
                return Ok(());
            }
            Some(Ok(_)) => continue,
            _ => return Err("connection ended".into()),
        }
    }
}

/// Answers every text frame with itself: the runtime of both cases.
pub(crate) async fn echo(mut ws: Ws) {
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(text) = msg
            && ws.send(Message::Text(text)).await.is_err()
        {
            return;
        }
    }
}

/// Size of the benchmark's messages.
pub(crate) const PAYLOAD: usize = 1024;
/// Longest any one case may run.
pub(crate) const CASE_LIMIT: Duration = Duration::from_secs(120);

/// What one case measured.
pub(crate) struct Outcome {
    pub(crate) hist: Histogram<u64>,
    pub(crate) elapsed: Duration,
    /// CPU time this process (apps and runtimes) used meanwhile.
    pub(crate) clients_cpu: Option<Duration>,
    /// CPU time the host used meanwhile (relay case only).
    pub(crate) host_cpu: Option<Duration>,
}

impl Outcome {
    pub(crate) fn rate(&self) -> f64 {
        self.hist.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// One app: `count` round trips after everyone is ready; skips host events.
async fn app(mut ws: Ws, count: usize, start: Arc<Barrier>) -> Res<Histogram<u64>> {
    let mut hist = Histogram::new_with_bounds(1, 120_000_000, 3)?;
    let payload = json!({"type": "bench", "p": "x".repeat(PAYLOAD - 24)}).to_string();
    start.wait().await;
    for _ in 0..count {
        let sent = Instant::now();
        round_trip(&mut ws, &payload).await?;
        hist.record(u64::try_from(sent.elapsed().as_micros())?.max(1))?;
    }
    let _ = ws.close(None).await;
    Ok(hist)
}

/// Runs the apps over their sockets and merges their histograms; `host` are the pids
/// of the processes in the middle (the relay's, or nginx's master and workers), whose
/// CPU time is summed.
pub(crate) async fn measure(apps: Vec<Ws>, per_pair: usize, host: &[u32]) -> Res<Outcome> {
    let host: Vec<String> = host.iter().map(u32::to_string).collect();
    let host_cpu = || -> Option<Duration> {
        let times: Option<Vec<Duration>> = host.iter().map(|p| cpu_time(p)).collect();
        times.filter(|t| !t.is_empty()).map(|t| t.into_iter().sum())
    };
    let start = Arc::new(Barrier::new(apps.len() + 1));
    let tasks: Vec<_> = apps
        .into_iter()
        .map(|ws| tokio::spawn(app(ws, per_pair, start.clone())))
        .collect();
    start.wait().await;
    let began = Instant::now();
    let cpu_before = cpu_time("self");
    let host_before = host_cpu();
    let mut hist = Histogram::new_with_bounds(1, 120_000_000, 3)?;
    for task in tasks {
        let h = tokio::time::timeout(CASE_LIMIT, task).await???;
        hist.add(h)?;
    }
    let elapsed = began.elapsed();
    let clients_cpu = cpu_before
        .zip(cpu_time("self"))
        .map(|(before, after)| after.saturating_sub(before));
    let host_cpu = host_before
        .zip(host_cpu())
        .map(|(before, after)| after.saturating_sub(before));
    Ok(Outcome {
        hist,
        elapsed,
        clients_cpu,
        host_cpu,
    })
}
