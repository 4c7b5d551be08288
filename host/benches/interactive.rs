//! Interactive exchanges, one at a time, through a real `tether serve` (release) to a
//! real reference runtime (`local-process`): an `echo` (one frame back) and an `exec`
//! whose answer comes in three frames (stdout, stderr, exit). With Nagle's algorithm on
//! any socket of the path, a reply in several frames waits on a delayed ACK (~40 ms)
//! now and then, which shows as a p99 far above the p50; every socket Tether opens or
//! accepts sets TCP_NODELAY, and this prints p50, p99 and their ratio (aim ≤ 2×).
//!
//! `cargo bench -p tether --bench interactive [-- SAMPLES]` (default 300).

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use support::{Res, Server, TOKEN, Ws, us};

fn main() -> Res<()> {
    let samples: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(samples))
}

async fn run(samples: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), "", &[])?;
    let body = json!({"name": "i", "provider": "local-process", "start": true});
    let id = server.create(&body).await?;
    let mut ws = loop {
        // Admitted at once; wait until the runtime is there, so starting is not timed.
        let env: Value = server
            .http
            .get(format!("{}/api/v1/environments/{id}", server.base))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json()
            .await?;
        if env["runtime"]["connected"] == true {
            break connect(&server.ws(&format!("/ws/app/{id}?thread=t"))).await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    println!("\n| exchange | frames back | samples | p50 | p99 | p99 / p50 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let echo = |n: usize| json!({"type": "echo", "requestId": format!("e{n}"), "payload": "x"});
    let exec = |n: usize| {
        let command = ["sh", "-c", "echo out; echo err >&2"];
        json!({"type": "exec", "requestId": format!("x{n}"), "command": command})
    };
    for (name, frames, make, last) in [
        ("echo", 1, &echo as &dyn Fn(usize) -> Value, "echoResponse"),
        ("exec (stdout, stderr, exit)", 3, &exec, "execExit"),
    ] {
        let mut h = Histogram::<u64>::new(3)?;
        for n in 0..samples + 20 {
            let began = Instant::now();
            ws.send(Message::Text(make(n).to_string().into())).await?;
            wait_for(&mut ws, last).await?;
            if n >= 20 {
                h.record(u64::try_from(began.elapsed().as_micros())?)?;
            }
        }
        let (p50, p99) = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
        let ratio = p99 as f64 / p50.max(1) as f64;
        println!(
            "| {name} | {frames} | {samples} | {} | {} | {ratio:.2}× |",
            us(p50),
            us(p99)
        );
    }
    server.stop();
    Ok(())
}

/// A client socket with TCP_NODELAY, as Tether's own clients open them.
async fn connect(url: &str) -> Res<Ws> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    Ok(
        tokio_tungstenite::connect_async_with_config(request, None, true)
            .await?
            .0,
    )
}

/// Reads until a frame of type `last` arrives.
async fn wait_for(ws: &mut Ws, last: &str) -> Res<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text)?;
                if frame["type"] == last {
                    return Ok(());
                }
            }
            Some(Ok(_)) => continue,
            _ => return Err("connection ended".into()),
        }
    }
}
