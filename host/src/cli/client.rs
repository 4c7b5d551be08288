//! Calls to a running server's API for the CLI's verbs (`token`, `provider install`,
//! `provider dev`): its URL from `--url` (or `TETHER_URL`), the admin token from
//! `--token`, else `TETHER_API_TOKEN`, else the data directory's `.codebolt/api-token`.
//! `http://` or `https://`; over TLS the server's certificate must match the URL's host
//! and chain to the system's roots or to `TETHER_CA_FILE` (see `client_tls`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use serde_json::Value;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;

/// How long a call to the server may take.
pub(super) const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from the server: far above any listing a host makes, and a
/// bound on what a wrong URL (a server that streams without end) can make the CLI hold.
const MAX_ANSWER_BYTES: usize = 256 << 20;
/// The longest line of a followed log read before it is given up on (the host's own
/// lines are a few KiB).
const MAX_LINE_BYTES: usize = 1 << 20;

/// Where the server is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// The server's URL.
    #[arg(
        long,
        visible_alias = "server",
        env = "TETHER_URL",
        default_value = "http://127.0.0.1:2719"
    )]
    pub(crate) url: String,
    /// The admin token (default: TETHER_API_TOKEN, else DATA_DIR/.codebolt/api-token).
    #[arg(long, env = "TETHER_API_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The server's data directory, to read the admin token from.
    #[arg(long, default_value = ".")]
    pub(crate) data_dir: PathBuf,
}

/// The admin token: the flag (or `TETHER_API_TOKEN`), else the data directory's.
pub(super) fn admin_token(server: &ServerArgs) -> anyhow::Result<String> {
    if let Some(token) = server.token.as_ref().filter(|t| !t.is_empty()) {
        return Ok(token.clone());
    }
    let file = server.data_dir.join(".codebolt/api-token");
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "no admin token: pass --token, set TETHER_API_TOKEN, or point --data-dir at the server's data directory ({} unreadable)",
            file.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

/// One JSON request to the server; a refusal becomes an error carrying its message.
pub(crate) async fn call(
    server: &ServerArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let body = Bytes::from(body.map(|b| b.to_string()).unwrap_or_default());
    send(server, method, path, "application/json", body).await
}

/// One request with `body` of `content_type`; the answer as JSON, or the refusal as an
/// error carrying its message.
pub(crate) async fn send(
    server: &ServerArgs,
    method: Method,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<Value> {
    let exchange = async {
        let response = open(server, method, path, content_type, body).await?;
        let status = response.status();
        anyhow::Ok((status, answer(response).await?))
    };
    let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("the server did not answer in time")??;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(Refused::from_answer(status, &answer).into());
    }
    Ok(answer)
}

/// The server refused a request: its status and its `{"error": {code, message}}`.
#[derive(Debug, thiserror::Error)]
#[error("the server answered {status}: {message} ({code})")]
pub(crate) struct Refused {
    /// The HTTP status.
    pub(crate) status: http::StatusCode,
    code: String,
    message: String,
}

impl Refused {
    pub(super) fn from_answer(status: http::StatusCode, answer: &Value) -> Self {
        let error = &answer["error"];
        // Shown to a person as the command's error: escaped like any server text.
        let text =
            |k: &str, none: &str| super::output::printable(error[k].as_str().unwrap_or(none));
        Self {
            status,
            code: text("code", "no code"),
            message: text("message", "no message"),
        }
    }

    /// The exit code the CLI ends with: 3 not found, 4 unauthorized or forbidden,
    /// 5 conflict, 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self.status.as_u16() {
            404 => 3,
            401 | 403 => 4,
            409 | 410 => 5,
            _ => 1,
        }
    }
}

/// Reads a streamed NDJSON answer to `GET path` (a followed log), handing each line to
/// `line` until the server ends it.
pub(crate) async fn follow_lines(
    server: &ServerArgs,
    path: &str,
    mut line: impl FnMut(&str),
) -> anyhow::Result<()> {
    let opened = open(server, Method::GET, path, "application/json", Bytes::new());
    let response = tokio::time::timeout(TIMEOUT, opened)
        .await
        .context("the server did not answer in time")??;
    if !response.status().is_success() {
        let status = response.status();
        let bytes = answer(response).await?;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return Err(Refused::from_answer(status, &answer).into());
    }
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let text: Vec<u8> = pending.drain(..=end).collect();
                line(String::from_utf8_lossy(&text).trim_end());
            }
            if pending.len() > MAX_LINE_BYTES {
                bail!("the server sent a line longer than {MAX_LINE_BYTES} bytes");
            }
        }
    }
    Ok(())
}

/// The whole body of `response`, up to [`MAX_ANSWER_BYTES`].
async fn answer(response: http::Response<hyper::body::Incoming>) -> anyhow::Result<Bytes> {
    match Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
    {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            bail!("the server's answer is larger than {MAX_ANSWER_BYTES} bytes")
        }
        Err(e) => Err(anyhow::anyhow!(e).context("reading the server's answer")),
    }
}

/// Sends one request and returns the response with its body still to read.
async fn open(
    server: &ServerArgs,
    method: Method,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let token = admin_token(server)?;
    let uri: Uri = server
        .url
        .parse()
        .with_context(|| format!("--url {}", crate::untrusted::named(&server.url)))?;
    let tls = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => Some(crate::client_tls::from_env()?),
        _ => bail!("--url must be an http:// or https:// URL"),
    };
    let authority = uri.authority().context("--url names no host")?.clone();
    let default_port = if tls.is_some() { 443 } else { 80 };
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(default_port)
    );
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", uri.path().trim_end_matches('/')))
        .header(HOST, authority.as_str())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(body))?;
    let stream = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let Some(config) = tls else {
        return exchange(TokioIo::new(stream), request).await;
    };
    let host = (authority.host())
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host} is not a TLS server name"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS with {addr}"))?;
    exchange(TokioIo::new(stream), request).await
}

/// Sends `request` over an established connection, plain or TLS.
async fn exchange<T>(
    io: T,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(io).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}
