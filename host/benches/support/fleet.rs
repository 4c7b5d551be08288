//! Many environments at once, for the scale and start benchmarks: the descriptor limit
//! raised so thousands of sockets fit, `handoff` environments created by concurrent
//! clients, and runtimes dialled the way the reference runtime dials (retrying with
//! capped backoff) from this process.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{Res, Server, Ws};

/// Raises this process's limit on open files toward `want` (children such as the
/// host inherit it): the soft limit, and the hard one where the process may (root);
/// returns the limit now in force and says so on stderr when it is short of `want`.
pub(crate) fn raise_nofile(want: u64) -> u64 {
    let Ok((soft, mut hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        eprintln!("could not read the open-files limit; leaving it as it is");
        return 0;
    };
    if want > hard && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        eprintln!("open-files limit raised to {want} (hard limit was {hard})");
        return want;
    }
    hard = hard.max(soft);
    let target = want.min(hard).max(soft);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_err() {
        eprintln!("could not raise the open-files limit from {soft} to {target}");
        return soft;
    }
    if target < want {
        eprintln!(
            "the open-files limit is {target} (hard limit {hard}), short of the {want} wanted: \
             raise the hard limit (`ulimit -Hn`, limits.conf) for the larger cases"
        );
    }
    target
}

/// The machine's load averages, as `/proc/loadavg` gives them.
pub(crate) fn load() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Creates `n` started `handoff` environments named `{prefix}{i}` with `clients`
/// requests in flight at a time; returns their ids (in order) and each create's
/// latency in microseconds.
pub(crate) async fn create_many(
    server: &Arc<Server>,
    prefix: &str,
    n: usize,
    clients: usize,
) -> Res<(Vec<String>, Histogram<u64>)> {
    let slots = Arc::new(Semaphore::new(clients));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = slots.clone().acquire_owned().await?;
        let server = server.clone();
        let body = json!({"name": format!("{prefix}{i}"), "provider": "handoff", "start": true});
        tasks.spawn(async move {
            let began = Instant::now();
            let id = server.create(&body).await;
            drop(permit);
            id.map(|id| (i, id, began.elapsed()))
        });
    }
    let mut ids = vec![String::new(); n];
    let mut hist = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    while let Some(done) = tasks.join_next().await {
        let (i, id, took) = done??;
        hist.record(u64::try_from(took.as_micros())?.max(1))?;
        ids[i] = id;
    }
    Ok((ids, hist))
}

/// The runtime URL and token the `handoff` provider wrote for environment `name`,
/// waiting (until `deadline`) for the start to write them.
pub(crate) async fn handoff(dir: &Path, name: &str, deadline: Instant) -> Res<(String, String)> {
    let file = dir.join(format!(".codebolt/environments/{name}/runtime.json"));
    loop {
        if let Ok(text) = tokio::fs::read_to_string(&file).await {
            let v: Value = serde_json::from_str(&text)?;
            let field = |k: &str| v[k].as_str().map(str::to_owned).ok_or("field");
            return Ok((field("url")?, field("token")?));
        }
        if Instant::now() > deadline {
            return Err(format!("environment {name} never started").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Dials a runtime connection as the reference runtime does: on a failed attempt it
/// waits 200 ms, doubling to at most 5 s, and tries again until `deadline`. A small
/// read buffer, so ten thousand idle sockets stay cheap in this process.
pub(crate) async fn dial(url: &str, token: &str, deadline: Instant) -> Res<Ws> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async_with_config(req, Some(config), true),
        )
        .await;
        match attempt {
            Ok(Ok((ws, _))) => return Ok(ws),
            Ok(Err(e)) if Instant::now() + backoff > deadline => {
                return Err(format!("{url}: {e}").into());
            }
            Err(_) if Instant::now() + backoff > deadline => {
                return Err(format!("{url}: timed out").into());
            }
            _ => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
