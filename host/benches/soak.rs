//! Soak: app/runtime pairs (default 1,000) exchange numbered messages through a real
//! `tether serve` for a set time (default 60 s; the documented run is 10 minutes) while,
//! at a fixed rate, apps' connections are cut and resumed, runtimes' connections are cut
//! and resumed, and environments are stopped and started again. Every app and runtime
//! speaks the resume protocol (`docs/protocol.md`); the runtimes are this process,
//! playing the runtime of `handoff` environments.
//!
//! It reports messages sent and answered, how many were lost (sent, never answered,
//! and not abandoned by a stop — must be 0), answered twice (must be 0), re-sent after a
//! stop (the protocol's rule: an app treats what was unanswered at a stop as not done),
//! errors, the chaos done, and the host's resident memory and open file descriptors at
//! the start, middle and end (they should stay flat).
//!
//! `cargo bench -p tether --bench soak [-- PAIRS SECS]`, e.g. `-- 1000 600`.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tether::relay::peer::{Incoming, PeerState};
use tokio::sync::{Mutex, Notify};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use support::{Res, Server, TOKEN, Ws, rss_kib};

/// Each app sends one message this often.
const SEND_EVERY: Duration = Duration::from_millis(500);
/// One chaos event (a cut app, a cut runtime, or a stop and start) this often.
const CHAOS_EVERY: Duration = Duration::from_millis(100);
/// How long the end waits for the last answers.
const DRAIN: Duration = Duration::from_secs(60);

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let pairs: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let secs: u64 = args.next().map_or(Ok(60), |a| a.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(pairs, Duration::from_secs(secs)))
}

/// Counters every task adds to.
#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    answered: AtomicU64,
    duplicated: AtomicU64,
    resent_after_stop: AtomicU64,
    reported_lost: AtomicU64,
    errors: AtomicU64,
    app_cuts: AtomicU64,
    runtime_cuts: AtomicU64,
    stops: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// One pair's shared state: what its app is waiting for, and the levers of chaos.
struct Pair {
    id: String,
    /// Sequence numbers sent and not answered yet.
    pending: Mutex<HashMap<u64, ()>>,
    /// Answers seen per number (to count duplicates).
    answered: Mutex<HashMap<u64, u32>>,
    cut_app: Notify,
    cut_runtime: Notify,
    sending: std::sync::atomic::AtomicBool,
}

async fn run(pairs: usize, length: Duration) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let server = Arc::new(Server::start(
        dir.path(),
        "[relay]\nmax_connections = 16\n",
        &[],
    )?);
    eprintln!("creating {pairs} handoff environments…");
    let envs = server.environments(pairs).await?;
    server.settle().await?;
    let host = server.child.id().to_string();
    let stats = Arc::new(Stats::default());
    let mut all = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (id, _, _)) in envs.iter().enumerate() {
        let pair = Arc::new(Pair {
            id: id.clone(),
            pending: Mutex::default(),
            answered: Mutex::default(),
            cut_app: Notify::new(),
            cut_runtime: Notify::new(),
            sending: true.into(),
        });
        all.push(pair.clone());
        let handoff = dir
            .path()
            .join(format!(".codebolt/environments/b{i}/runtime.json"));
        tasks.spawn(runtime(handoff, pair.clone()));
        tasks.spawn(app(server.clone(), i, pair, stats.clone()));
    }
    let sample = |label: &str| {
        let fds = std::fs::read_dir(format!("/proc/{host}/fd")).map_or(0, |d| d.count());
        let rss = rss_kib(&host).unwrap_or(0);
        format!("{label}: {} MiB, {fds} fds", rss / 1024)
    };
    // Every app and runtime connected before the first reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut samples = vec![sample("start")];
    let began = Instant::now();
    let mut chaos = tokio::time::interval(CHAOS_EVERY);
    let mut middle_taken = false;
    while began.elapsed() < length {
        chaos.tick().await;
        if !middle_taken && began.elapsed() >= length / 2 {
            samples.push(sample("middle"));
            middle_taken = true;
        }
        let (pick, roll) = {
            let mut rng = rand::rng();
            (rng.random_range(0..all.len()), rng.random_range(0..100))
        };
        let pair = &all[pick];
        match roll {
            0..45 => {
                pair.cut_app.notify_one();
                add(&stats.app_cuts, 1);
            }
            45..90 => {
                pair.cut_runtime.notify_one();
                add(&stats.runtime_cuts, 1);
            }
            _ => {
                add(&stats.stops, 1);
                let (server, id, stats) = (server.clone(), pair.id.clone(), stats.clone());
                tasks.spawn(async move {
                    if stop_and_start(&server, &id).await.is_err() {
                        add(&stats.errors, 1);
                    }
                });
            }
        }
    }
    for pair in &all {
        pair.sending.store(false, Ordering::Relaxed);
    }
    let drained = Instant::now();
    while drained.elapsed() < DRAIN {
        let mut left = 0;
        for pair in &all {
            left += pair.pending.lock().await.len();
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples.push(sample("end"));
    tasks.shutdown().await;
    let mut lost = 0;
    for pair in &all {
        lost += pair.pending.lock().await.len() as u64;
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "| pairs | seconds | sent | answered | lost | duplicated | re-sent after a stop | relayLost | errors | app cuts | runtime cuts | stops |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {pairs} | {} | {} | {} | {lost} | {} | {} | {} | {} | {} | {} | {} |",
        length.as_secs(),
        get(&stats.sent),
        get(&stats.answered),
        get(&stats.duplicated),
        get(&stats.resent_after_stop),
        get(&stats.reported_lost),
        get(&stats.errors),
        get(&stats.app_cuts),
        get(&stats.runtime_cuts),
        get(&stats.stops),
    );
    println!();
    println!("host: {}", samples.join("; "));
    // Every task that held the server is gone by now.
    match Arc::try_unwrap(server) {
        Ok(server) => server.stop(),
        Err(_) => return Err("the server is still shared; not stopped".into()),
    }
    Ok(())
}

async fn stop_and_start(server: &Server, id: &str) -> Res<()> {
    server
        .post(&format!("/api/v1/environments/{id}/stop"))
        .await?;
    server.wait_status(id, "stopped").await?;
    server
        .post(&format!("/api/v1/environments/{id}/start"))
        .await?;
    Ok(())
}

/// Opens a resumable WebSocket to `url` as `peer`, sends again what the host did not
/// count; `Err(Some(code))` when the host closed it at once with `code`, `Err(None)`
/// when it could not connect.
async fn open(url: &str, token: &str, peer: &mut PeerState) -> Result<Ws, Option<u16>> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut request = format!("{url}{sep}{}", peer.query())
        .into_client_request()
        .map_err(|_| None)?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| None)?;
    request.headers_mut().insert("authorization", auth);
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|_| None)?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Incoming::Resumed(resend) = peer.on_frame(&text) {
                    for frame in resend {
                        ws.feed(Message::text(frame)).await.map_err(|_| None)?;
                    }
                    ws.flush().await.map_err(|_| None)?;
                    return Ok(ws);
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => return Err(frame.map(|f| f.code.into())),
            Ok(Some(Ok(_))) => {}
            _ => return Err(None),
        }
    }
}

/// The runtime of one handoff environment: echoes every message, resuming after cuts;
/// after a stop it is a new process (a new session) with the next start's token.
async fn runtime(handoff: std::path::PathBuf, pair: Arc<Pair>) {
    let mut generation = String::new();
    loop {
        // The start's URL and token; a new start writes new ones.
        let (url, token) = loop {
            let read = std::fs::read_to_string(&handoff)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            if let Some(h) = read
                && let (Some(url), Some(token)) = (h["url"].as_str(), h["token"].as_str())
                && token != generation
            {
                break (url.to_owned(), token.to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut peer = PeerState::new(format!("rt-{}-{}", pair.id, rand::rng().random::<u32>()));
        // One process's life: connections until the host says it is over.
        loop {
            let mut ws = match open(&url, &token, &mut peer).await {
                Ok(ws) => ws,
                // Stopped (4010 on the socket, 410 on the upgrade): this process ends.
                Err(Some(_)) => break,
                Err(None) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    // A refused upgrade (the environment stopped) looks like this too.
                    if std::fs::read_to_string(&handoff).is_ok_and(|t| !t.contains(&token)) {
                        break;
                    }
                    continue;
                }
            };
            // Stopped, or replaced by a newer start's runtime: this process ends.
            // Anything else (a cut) resumes.
            if let Some(4010 | 4009) = serve_runtime(&mut ws, &mut peer, &pair).await {
                break;
            }
        }
        generation = token;
    }
}

/// Echoes until the connection ends; the close code if the host sent one.
async fn serve_runtime(ws: &mut Ws, peer: &mut PeerState, pair: &Pair) -> Option<u16> {
    loop {
        tokio::select! {
            _ = pair.cut_runtime.notified() => return None,
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Incoming::Message(mut msg) = peer.on_frame(&text) {
                        if let Some(m) = msg.as_object_mut() {
                            m.remove("relaySeq");
                            m.insert("type".into(), json!("soakReply"));
                        }
                        let out = peer.send(msg.to_string());
                        if ws.send(Message::text(out)).await.is_err() {
                            return None;
                        }
                    }
                    if let Some(ack) = peer.ack(false)
                        && ws.send(Message::text(ack)).await.is_err()
                    {
                        return None;
                    }
                }
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            },
        }
    }
}

/// The app of pair `i`: sends a numbered message every [`SEND_EVERY`], counts answers,
/// resumes after cuts, and after a stop re-sends what was unanswered on a new session.
async fn app(server: Arc<Server>, i: usize, pair: Arc<Pair>, stats: Arc<Stats>) {
    let url = server.ws(&format!("/ws/app/{}?thread=t", pair.id));
    let mut next = 0u64;
    let mut session = 0u32;
    // Numbers to send again on the next connection (unanswered at a stop).
    let mut redo: Vec<u64> = Vec::new();
    loop {
        session += 1;
        let mut peer = PeerState::new(format!("app-{i}-{session}"));
        let mut redo_now = std::mem::take(&mut redo);
        // Connections of one session, until a stop ends it.
        loop {
            let mut ws = match open(&url, TOKEN, &mut peer).await {
                Ok(ws) => ws,
                Err(_) => {
                    // Stopped on purpose (4015) or starting: try again shortly.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            for n in redo_now.drain(..) {
                add(&stats.resent_after_stop, 1);
                if send(&mut ws, &mut peer, n).await.is_err() {
                    break;
                }
            }
            let mut tick = tokio::time::interval(SEND_EVERY);
            let ended = loop {
                tokio::select! {
                    _ = pair.cut_app.notified() => break None,
                    _ = tick.tick(), if pair.sending.load(Ordering::Relaxed) => {
                        // The flag may have turned while this branch waited.
                        if !pair.sending.load(Ordering::Relaxed) {
                            continue;
                        }
                        next += 1;
                        pair.pending.lock().await.insert(next, ());
                        add(&stats.sent, 1);
                        if send(&mut ws, &mut peer, next).await.is_err() {
                            break None;
                        }
                    }
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => match peer.on_frame(&text) {
                            Incoming::Message(msg) if msg["type"] == "soakReply" => {
                                let Some(n) = msg["n"].as_u64() else { continue };
                                let times = {
                                    let mut answered = pair.answered.lock().await;
                                    let times = answered.entry(n).or_default();
                                    *times += 1;
                                    *times
                                };
                                if times == 1 {
                                    pair.pending.lock().await.remove(&n);
                                    add(&stats.answered, 1);
                                } else {
                                    add(&stats.duplicated, 1);
                                }
                                if let Some(ack) = peer.ack(false)
                                    && ws.send(Message::text(ack)).await.is_err()
                                {
                                    break None;
                                }
                            }
                            Incoming::Message(msg) if msg["type"] == "error" => add(&stats.errors, 1),
                            Incoming::Lost(from, to) => add(&stats.reported_lost, to - from + 1),
                            _ => {}
                        },
                        Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break None,
                    },
                }
            };
            // A stop ends the session: what is unanswered is not done, and is sent
            // again on a new one.
            if ended == Some(4010) {
                redo = pair.pending.lock().await.keys().copied().collect();
                redo.sort_unstable();
                break;
            }
        }
    }
}

async fn send(ws: &mut Ws, peer: &mut PeerState, n: u64) -> Result<(), ()> {
    let frame = json!({"type": "soak", "requestId": n, "n": n, "p": "x".repeat(200)});
    let out = peer.send(frame.to_string());
    ws.send(Message::text(out)).await.map_err(|_| ())
}
