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
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION};
use http::{Method, Request, StatusCode, Uri};
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
/// The most of a refusal's `code` and `message` shown (the host's are a few dozen
/// bytes and at most a few KiB).
const MAX_CODE_BYTES: usize = 64;
const MAX_MESSAGE_BYTES: usize = 4 << 10;

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
    let unreadable = || {
        format!(
            "no admin token: pass --token, set TETHER_API_TOKEN, or point --data-dir at the server's data directory ({} unreadable)",
            file.display()
        )
    };
    // Read no further than the longest token the host takes (and an editor's newline).
    let opened = crate::untrusted::open_regular(&file).with_context(unreadable)?;
    let read = crate::untrusted::read_at_most(opened, crate::auth::MAX_TOKEN_BYTES + 1);
    let Some(bytes) = read.with_context(unreadable)? else {
        bail!(
            "{} is not an API token: it is longer than {} bytes",
            file.display(),
            crate::auth::MAX_TOKEN_BYTES
        );
    };
    let text = String::from_utf8(bytes).with_context(unreadable)?;
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
        let (head, body) = response.into_parts();
        anyhow::Ok((head, answer(body).await?))
    };
    let (head, bytes) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("the server did not answer in time")??;
    match json_of(&head, &bytes) {
        // Tether answers every call with JSON, but for a deletion (204, no body).
        Some(answer) if head.status.is_success() => Ok(answer),
        None if head.status == StatusCode::NO_CONTENT => Ok(Value::Null),
        Some(answer) if answer["error"].is_object() => {
            Err(Refused::from_answer(head.status, &answer).into())
        }
        _ => Err(NotTether::new(&server.url, &head).into()),
    }
}

/// The media type of Tether's answers.
pub(super) const JSON: &str = "application/json";
/// The media type of a log, read by [`follow_lines`].
const NDJSON: &str = "application/x-ndjson";

/// Whether `headers` say the body is of `media` (parameters such as `charset` aside).
pub(super) fn is_a(headers: &http::HeaderMap, media: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(media))
}

/// `bytes` as JSON, if `head` says they are JSON and they are.
fn json_of(head: &http::response::Parts, bytes: &[u8]) -> Option<Value> {
    is_a(&head.headers, JSON)
        .then(|| serde_json::from_slice(bytes).ok())
        .flatten()
}

/// The server's answer was not one Tether gives: a redirect, an HTML page, a proxy's
/// error, text that is not JSON. `--url` most likely names something else.
#[derive(Debug, thiserror::Error)]
#[error("{url} answered {status}{what}: not an answer from a Tether server; is --url right?")]
pub(crate) struct NotTether {
    url: String,
    status: StatusCode,
    /// What came instead: where a redirect points, or the body's content type.
    what: String,
}

impl NotTether {
    /// What `url` answered instead of Tether's JSON, from the head of the answer.
    pub(super) fn new(url: &str, head: &http::response::Parts) -> Self {
        // Header text is the peer's: cut and escaped before it reaches a terminal.
        let header = |name| {
            head.headers.get(name).map(|v| {
                super::output::printable(&crate::untrusted::cut(
                    &String::from_utf8_lossy(v.as_bytes()),
                    200,
                ))
            })
        };
        let what = if head.status.is_redirection() {
            let to = header(LOCATION).unwrap_or_else(|| "nowhere".to_owned());
            format!(", a redirect to {to}, which the CLI does not follow")
        } else {
            match header(CONTENT_TYPE) {
                Some(kind) => format!(" with {kind}"),
                None => " with no content type".to_owned(),
            }
        };
        Self {
            url: crate::untrusted::named(url),
            status: head.status,
            what,
        }
    }
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
        let text = |k: &str, none: &str, max: usize| {
            let text = crate::untrusted::cut(error[k].as_str().unwrap_or(none), max);
            super::output::printable(&text)
        };
        Self {
            status,
            code: text("code", "no code", MAX_CODE_BYTES),
            message: text("message", "no message", MAX_MESSAGE_BYTES),
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

/// Reads a streamed NDJSON answer to `GET path` (a log), handing each line to `line`
/// until the server ends it; unless `follow`, all of it within [`TIMEOUT`].
pub(crate) async fn follow_lines(
    server: &ServerArgs,
    path: &str,
    follow: bool,
    mut line: impl FnMut(&str),
) -> anyhow::Result<()> {
    let read = async {
        let opened = open(server, Method::GET, path, "application/json", Bytes::new());
        let response = tokio::time::timeout(TIMEOUT, opened)
            .await
            .context("the server did not answer in time")??;
        let (head, mut body) = response.into_parts();
        if !head.status.is_success() || !is_a(&head.headers, NDJSON) {
            let bytes = answer(body).await?;
            return Err(match json_of(&head, &bytes) {
                Some(a) if !head.status.is_success() && a["error"].is_object() => {
                    Refused::from_answer(head.status, &a).into()
                }
                _ => NotTether::new(&server.url, &head).into(),
            });
        }
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
    };
    if follow {
        return read.await;
    }
    // A log that is not followed is a bounded answer: a server that stops sending
    // midway must not hold the command forever.
    tokio::time::timeout(TIMEOUT, read)
        .await
        .context("the server did not send the whole log in time")?
}

/// The whole of `body`, up to [`MAX_ANSWER_BYTES`].
async fn answer(body: hyper::body::Incoming) -> anyhow::Result<Bytes> {
    match Limited::new(body, MAX_ANSWER_BYTES).collect().await {
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
    // Whatever answered is no HTTP server (or hung up): say so over hyper's words.
    (sender.send_request(request).await).context("no HTTP answer from the server (is --url right?)")
}
