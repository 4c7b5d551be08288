//! `tether-app`: the smallest useful Tether app client.
//!
//! It creates an environment on a running `tether` server (local-process provider), waits for
//! it to be running with its runtime connected, then talks to that runtime over the app
//! WebSocket: one `echo`, then a deliberate reconnect that resumes the relay session
//! (see `docs/protocol.md`), then one `exec` of `uname -a`.
//!
//! Usage: `tether-app [environment-name]`
//!   TETHER_URL        server address (default http://127.0.0.1:2719; https:// for TLS)
//!   TETHER_API_TOKEN  API token (default: read from .codebolt/api-token in this directory)
//!   TETHER_CA_FILE    a CA bundle (PEM) to trust besides the system's roots, over TLS
//!
//! Over `https://` (and so `wss://`) it checks the server's certificate against the
//! URL's host name and the system's roots plus `TETHER_CA_FILE`; there is no way to
//! switch the check off.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

/// How long to wait for any single reply before giving up.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // 1. Configuration: where the server is, how to authenticate, what to call the environment.
    let base = std::env::var("TETHER_URL").unwrap_or_else(|_| "http://127.0.0.1:2719".into());
    let base = base.trim_end_matches('/').to_owned();
    // `token_hint` is how the curl commands printed at the end refer to the same token.
    let (token, token_hint) = match std::env::var("TETHER_API_TOKEN") {
        Ok(token) => (token, "$TETHER_API_TOKEN"),
        Err(_) => {
            let token = std::fs::read_to_string(".codebolt/api-token").context(
                "set TETHER_API_TOKEN, or run from the server's data directory (.codebolt/api-token)",
            )?;
            (token, "$(cat .codebolt/api-token)")
        }
    };
    let auth = format!("Bearer {}", token.trim());
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let name = std::env::args().nth(1).unwrap_or(format!("example-{now}"));

    // 2. Create the environment and ask for it to be started straight away.
    let tls = tls_config()?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()?;
    let body = json!({ "name": name, "provider": "local-process", "start": true });
    let url = format!("{base}/api/v1/environments");
    let env = api(http.post(url).json(&body), &auth).await?;
    let id = env["id"].as_str().context("no id in the reply")?;
    println!("created environment {name} ({id})");

    // 3. Poll until the environment is running and its runtime has connected back to the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_status = String::new();
    loop {
        let env = api(http.get(format!("{base}/api/v1/environments/{id}")), &auth).await?;
        let status = env["status"].as_str().unwrap_or("unknown").to_owned();
        if status != last_status {
            println!("status: {status}");
            last_status = status.clone();
        }
        if status == "error" {
            bail!("the environment failed: {}", env["lastError"]);
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

    // 4. Open the app WebSocket on thread "main", authenticating with the same API token,
    //    as a resumable session: every message from the host then carries `relaySeq`.
    let ws_base = base.replacen("http", "ws", 1); // http://… becomes ws://…, https://… wss://…
    let session = format!("example-app-{now}");
    let url = format!("{ws_base}/ws/app/{id}?thread=main&session={session}");
    let mut last_seq = 0; // the last `relaySeq` received: where a reconnect resumes
    let mut ws = connect(&format!("{url}&resume={last_seq}"), &auth, &tls).await?;

    // 5. Echo: the runtime sends the payload straight back.
    let echo = json!({ "type": "echo", "requestId": "1", "payload": "hello from the example app" });
    ws.send(Message::text(echo.to_string())).await?;
    let reply = wait_for(&mut ws, "1", &mut last_seq).await?;
    println!("echo reply: {}", reply["payload"]);

    // 5b. A network blip: drop the connection and resume where we stopped. The host
    //     replays anything numbered after `last_seq` and says how many of our frames it had.
    drop(ws);
    let mut ws = connect(&format!("{url}&resume={last_seq}"), &auth, &tls).await?;
    ws.send(Message::text(
        json!({"type": "relayAck", "received": last_seq}).to_string(),
    ))
    .await?;

    // 6. Exec: output arrives in `execOutput` chunks, then one `execExit` with the exit code.
    let exec = json!({ "type": "exec", "requestId": "2", "command": ["uname", "-a"] });
    ws.send(Message::text(exec.to_string())).await?;
    loop {
        let msg = wait_for(&mut ws, "2", &mut last_seq).await?;
        match msg["type"].as_str() {
            Some("execOutput") => print!("{}", msg["data"].as_str().unwrap_or_default()),
            Some("execExit") if msg.get("error").is_some() => {
                bail!("exec failed: {}", msg["error"])
            }
            Some("execExit") => {
                println!("exec exited with code {}", msg["code"]);
                break;
            }
            _ => bail!("unexpected reply: {msg}"),
        }
    }
    let _ = ws.close(None).await;

    // 7. Tell the user how to stop or delete the environment with plain curl.
    let header = format!("-H \"Authorization: Bearer {token_hint}\"");
    println!("\nDone. The environment keeps running; to stop or delete it:");
    println!("  curl -X POST {header} {base}/api/v1/environments/{id}/stop");
    println!("  curl -X DELETE {header} {base}/api/v1/environments/{id}");
    Ok(())
}

/// Sends an API request; returns the JSON body, or turns `{"error": {code, message}}` into an error.
async fn api(request: reqwest::RequestBuilder, auth: &str) -> anyhow::Result<Value> {
    let response = request.header("Authorization", auth).send().await?;
    let status = response.status();
    let body: Value =
        (response.json().await).with_context(|| format!("HTTP {status}, not JSON"))?;
    if !status.is_success() {
        let (code, message) = (&body["error"]["code"], &body["error"]["message"]);
        bail!(
            "HTTP {status}: {} ({})",
            message.as_str().unwrap_or("?"),
            code.as_str().unwrap_or("?")
        );
    }
    Ok(body)
}

/// What the client trusts over TLS: the system's roots plus `TETHER_CA_FILE`.
fn tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(file) = std::env::var_os("TETHER_CA_FILE").filter(|f| !f.is_empty()) {
        let certs = CertificateDer::pem_file_iter(&file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("TETHER_CA_FILE {}", file.to_string_lossy()))?;
        for cert in certs {
            roots
                .add(cert)
                .context("TETHER_CA_FILE holds an unusable certificate")?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens the app WebSocket and reads the host's `relayResumed` greeting.
async fn connect(url: &str, auth: &str, tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", HeaderValue::from_str(auth)?);
    let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
            .await
            .context("opening the app WebSocket")?;
    let greeting = match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(&text)?,
        _ => bail!("no relayResumed greeting from the host"),
    };
    println!(
        "relay session: host had {} of our frames, replays from #{}",
        greeting["received"], greeting["next"]
    );
    Ok(ws)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads messages until one answers `request_id`, skipping others (such as `environmentStatus`)
/// and noting each message's `relaySeq`.
async fn wait_for<S>(ws: &mut S, request_id: &str, last_seq: &mut u64) -> anyhow::Result<Value>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let secs = WAIT.as_secs();
        let frame =
            next.with_context(|| format!("no reply to request {request_id} in {secs} s"))?;
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => bail!("the server closed the WebSocket"),
            Some(Ok(_)) => continue, // pings and pongs are handled for us
            Some(Err(e)) => return Err(e.into()),
        };
        let msg: Value = serde_json::from_str(&text)?;
        if let Some(seq) = msg["relaySeq"].as_u64() {
            *last_seq = seq;
        }
        if msg["type"] == "relayLost" {
            println!(
                "(the host could not replay messages {} to {})",
                msg["from"], msg["to"]
            );
        }
        if msg["requestId"] == request_id {
            if msg["type"] == "error" {
                bail!("the runtime answered with an error: {}", msg["error"]);
            }
            return Ok(msg);
        }
        println!("(other message: {msg})");
    }
}
