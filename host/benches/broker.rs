//! What the capability broker costs: a brokered spawn against a plain
//! `tokio::process` spawn, and a granted outgoing HTTP request made by a provider
//! (through wasi:http and the broker's checks) against a direct one from the host.
//! Prints a table; run with `cargo bench --bench broker` (add `--profile dev` for a
//! quick look). Traffic goes to a server on 127.0.0.1 only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tether::broker::process::{ProcessBroker, SpawnSpec};
use tether::broker::{Capabilities, Request};
use tether::config::{CommandPattern, Grant, LimitsConfig, NetConfig, UrlPattern};
use tether::engine::{Call, Engine, InstanceSetup, NoRuntime, ProviderSource, Reply, StateWriter};

#[allow(dead_code, unreachable_pub)]
mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

const SPAWNS: u32 = 200;
const REQUESTS: u32 = 300;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();

    let plain = time(SPAWNS, || async {
        tokio::process::Command::new("/bin/true")
            .status()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await?;
    let true_pattern = CommandPattern::new("/bin/true".into(), vec![])?;
    let caps = Capabilities::new(
        Request {
            commands: vec![true_pattern.clone()].into(),
            ..Request::default()
        },
        Grant {
            commands: vec![true_pattern],
            ..Grant::default()
        },
    );
    let broker = Arc::new(ProcessBroker::new(
        "bench".into(),
        caps,
        dir.path().to_owned(),
        8,
        4096,
    ));
    let brokered = time(SPAWNS, || {
        let broker = broker.clone();
        async move {
            let spec = SpawnSpec {
                program: "/bin/true".into(),
                args: vec![],
                env: vec![],
                cwd: None,
            };
            let mut child = broker.spawn(spec).await.map_err(|e| e.to_string())?;
            child.wait().await;
            Ok(())
        }
    })
    .await?;
    rows.push(("spawn /bin/true + wait", plain, brokered));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = format!("http://127.0.0.1:{port}/");
    // A fresh connection per request on both sides, as the broker makes one each time.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let direct = time(REQUESTS, || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
            resp.bytes().await.map(|_| ()).map_err(|e| e.to_string())
        }
    })
    .await?;
    let engine = Engine::new(LimitsConfig::default(), NetConfig::default())?;
    let bytes = std::fs::read(guests::HOSTILE)?;
    let hostile = engine.load(bytes, ProviderSource::BuiltIn).await?;
    let literal = UrlPattern::parse("http://127.0.0.1:*")?;
    let setup = InstanceSetup {
        env_id: "bench".into(),
        workspace: dir.path().to_owned(),
        state_dir: dir.path().join(".state"),
        made: None,
        request: hostile.description.request(),
        grant: Grant {
            urls: vec![literal],
            ..Grant::default()
        },
        runtime: Arc::new(NoRuntime),
        state: StateWriter::detached(),
        refusals: Default::default(),
    };
    let handle = engine.instantiate(&hostile, setup).await?;
    let message = json!({"attack": "http", "url": url}).to_string();
    let granted = time(REQUESTS, || {
        let (handle, message) = (handle.clone(), message.clone());
        async move {
            match handle
                .call(Call::Raw(message), Duration::from_secs(10))
                .await
            {
                Ok(Reply::Text(t)) if t.contains("200") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await?;
    rows.push(("HTTP GET on loopback", direct, granted));
    handle.shutdown().await;

    println!(
        "{:<26} {:>14} {:>14} {:>8}",
        "operation", "direct µs/op", "brokered µs/op", "ratio"
    );
    for (name, direct, brokered) in rows {
        println!(
            "{:<26} {:>14.1} {:>14.1} {:>7.2}x",
            name,
            direct,
            brokered,
            brokered / direct
        );
    }
    Ok(())
}

/// Mean microseconds per call of `op` over `n` calls, after a short warm-up.
async fn time<F, Fut>(n: u32, op: F) -> Result<f64, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    for _ in 0..n / 10 {
        op().await?;
    }
    let start = Instant::now();
    for _ in 0..n {
        op().await?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}
