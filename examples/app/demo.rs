//! `tether-app demo`: the walk-through of an app's side, step by step.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::SinkExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, WAIT, Ws, next_frame, shown};

/// Creates and starts an environment, then echoes, resumes and execs through it.
pub(crate) async fn run(client: &Client, name: Option<String>) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let name = name.unwrap_or(format!("example-{now}"));

    // 1. Create the environment and ask for it to be started straight away.
    let body = json!({ "name": name, "provider": "local-process", "start": true });
    let env = client
        .api(Method::POST, "/api/v1/environments", Some(&body))
        .await?;
    let id = env["id"].as_str().context("no id in the reply")?.to_owned();
    println!("created environment {name} ({id})");

    // 2. Poll until the environment is running and its runtime has connected back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_status = String::new();
    loop {
        let path = format!("/api/v1/environments/{id}");
        let env = client.api(Method::GET, &path, None).await?;
        let status = shown(env["status"].as_str().unwrap_or("unknown"));
        if status != last_status {
            println!("status: {status}");
            last_status = status.clone();
        }
        if status == "error" {
            bail!(
                "the environment failed: {}",
                shown(&env["lastError"].to_string())
            );
        }
        if status == "running" && env["runtime"]["connected"] == true {
            break;
        }
        if Instant::now() > deadline {
            bail!("no running environment with a connected runtime after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("runtime connected");

    // 3. Open the app WebSocket on thread "main" as a resumable session: every message
    //    from the host then carries `relaySeq`.
    let session = format!("example-app-{now}");
    let path = format!("/ws/app/{id}?thread=main&session={session}");
    let mut last_seq = 0; // the last `relaySeq` received: where a reconnect resumes
    let mut ws = resume(client, &path, last_seq).await?;

    // 4. Echo: the runtime sends the payload straight back.
    let echo = json!({ "type": "echo", "requestId": "1", "payload": "hello from the example app" });
    ws.send(Message::text(echo.to_string())).await?;
    let reply = wait_for(&mut ws, "1", &mut last_seq).await?;
    println!("echo reply: {}", shown(&reply["payload"].to_string()));

    // 5. A network blip: drop the connection and resume where we stopped. The host
    //    replays anything numbered after `last_seq` and says how many of our frames it had.
    drop(ws);
    let mut ws = resume(client, &path, last_seq).await?;
    let ack = json!({"type": "relayAck", "received": last_seq});
    ws.send(Message::text(ack.to_string())).await?;

    // 6. Exec: output arrives in `execOutput` chunks, then one `execExit` with the exit code.
    let exec = json!({ "type": "exec", "requestId": "2", "command": ["uname", "-a"] });
    ws.send(Message::text(exec.to_string())).await?;
    loop {
        let msg = wait_for(&mut ws, "2", &mut last_seq).await?;
        match msg["type"].as_str() {
            Some("execOutput") => print!("{}", msg["data"].as_str().unwrap_or_default()),
            Some("execExit") if msg.get("error").is_some() => {
                bail!("exec failed: {}", shown(&msg["error"].to_string()))
            }
            Some("execExit") => {
                println!("exec exited with code {}", msg["code"]);
                break;
            }
            _ => bail!("unexpected reply: {}", shown(&msg.to_string())),
        }
    }
    let _ = ws.close(None).await;

    // 7. Tell the user how to stop or delete the environment with plain curl.
    let header = format!("-H \"Authorization: Bearer {}\"", client.token_hint);
    let api = format!("{}/api/v1/environments/{id}", client.base);
    println!("\nDone. The environment keeps running; to stop or delete it:");
    println!("  curl -X POST {header} {api}/stop");
    println!("  curl -X DELETE {header} {api}");
    Ok(())
}

/// Opens the app WebSocket at `resume` and reads the host's `relayResumed` greeting.
async fn resume(client: &Client, path: &str, resume: u64) -> anyhow::Result<Ws> {
    let mut ws = client.connect(&format!("{path}&resume={resume}")).await?;
    let greeting = match tokio::time::timeout(WAIT, next_frame(&mut ws)).await {
        Ok(Ok(Ok(greeting))) if greeting["type"] == "relayResumed" => greeting,
        _ => bail!("no relayResumed greeting from the host"),
    };
    println!(
        "relay session: host had {} of our frames, replays from #{}",
        shown(&greeting["received"].to_string()),
        shown(&greeting["next"].to_string())
    );
    Ok(ws)
}

/// Reads messages until one answers `request_id`, skipping others (such as
/// `environmentStatus`) and noting each message's `relaySeq`.
async fn wait_for(ws: &mut Ws, request_id: &str, last_seq: &mut u64) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, next_frame(ws)).await;
        let secs = WAIT.as_secs();
        let frame =
            next.with_context(|| format!("no reply to request {request_id} in {secs} s"))?;
        let Ok(msg) = frame? else {
            bail!("the server closed the WebSocket")
        };
        if let Some(seq) = msg["relaySeq"].as_u64() {
            *last_seq = seq;
        }
        if msg["type"] == "relayLost" {
            println!(
                "(the host could not replay messages {} to {})",
                shown(&msg["from"].to_string()),
                shown(&msg["to"].to_string())
            );
        }
        if msg["requestId"] == request_id {
            if msg["type"] == "error" {
                bail!(
                    "the runtime answered with an error: {}",
                    shown(&msg["error"].to_string())
                );
            }
            return Ok(msg);
        }
        println!("(other message: {})", shown(&msg.to_string()));
    }
}
