//! What both commands need: the server's address, the token, REST calls and app sockets.
//!
//! Over `https://` (and so `wss://`) the server's certificate is checked against the URL's
//! host name with the system's roots plus the CA bundle `TETHER_CA_FILE` names, if any;
//! there is no way to switch the check off.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

/// How long to wait for any single reply before giving up.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// How long `chat` waits, once stdin has ended, for the answers still owed; a first start
/// may be among them.
pub(crate) const DRAIN: Duration = Duration::from_secs(60);

/// An app WebSocket.
pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A server and the credentials to use on it.
pub(crate) struct Client {
    /// `http://host:port`, no trailing slash.
    pub(crate) base: String,
    /// How the curl commands printed for the user refer to the same token.
    pub(crate) token_hint: &'static str,
    auth: String,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    /// Resolves the token: the flag or `TETHER_API_TOKEN`, else `.codebolt/api-token`.
    pub(crate) fn new(server: &str, token: Option<&str>) -> anyhow::Result<Client> {
        let (token, token_hint) = match token {
            Some(token) => (token.to_owned(), "$TETHER_API_TOKEN"),
            None => {
                let token = std::fs::read_to_string(".codebolt/api-token").context(
                    "pass --token, set TETHER_API_TOKEN, or run from the server's data \
                     directory (.codebolt/api-token)",
                )?;
                (token, "$(cat .codebolt/api-token)")
            }
        };
        let tls = tls_config()?;
        // A server that takes a request and never answers must not hold the app.
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(3 * WAIT)
            .build()?;
        Ok(Client {
            base: server.trim_end_matches('/').to_owned(),
            token_hint,
            auth: format!("Bearer {}", token.trim()),
            http,
            tls,
        })
    }

    /// `ws://…` for `http://…`, `wss://…` for `https://…`.
    pub(crate) fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }

    /// Sends a REST request; returns the JSON body, or turns `{"error": {code, message}}`
    /// into an error.
    pub(crate) async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", &self.auth);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.context("reaching the server")?;
        let status = response.status();
        let body: Value =
            (response.json().await).with_context(|| format!("HTTP {status}, not JSON"))?;
        if !status.is_success() {
            let (code, message) = (&body["error"]["code"], &body["error"]["message"]);
            bail!(
                "HTTP {status}: {} ({})",
                shown(message.as_str().unwrap_or("?")),
                shown(code.as_str().unwrap_or("?"))
            );
        }
        Ok(body)
    }

    /// Opens an app WebSocket (`path` and query after the server's address).
    pub(crate) async fn connect(&self, path: &str) -> anyhow::Result<Ws> {
        let mut request = format!("{}{path}", self.ws_base()).into_client_request()?;
        request
            .headers_mut()
            .insert("Authorization", HeaderValue::from_str(&self.auth)?);
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        // `true`: TCP_NODELAY, so an interactive exchange never waits on delayed ACKs.
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
        // A server that takes the connection and never answers the upgrade must not hold
        // the app.
        let Ok(connected) = tokio::time::timeout(WAIT, connecting).await else {
            bail!(
                "the server did not answer the app WebSocket in {} s",
                WAIT.as_secs()
            );
        };
        match connected {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response.body().as_deref().unwrap_or_default();
                let body: Value = serde_json::from_slice(body).unwrap_or_default();
                let message = body["error"]["message"].as_str().unwrap_or("");
                bail!(
                    "the server refused the app WebSocket: HTTP {status} {}",
                    shown(message)
                )
            }
            Err(e) => Err(e).context("opening the app WebSocket"),
        }
    }
}

/// Text from the server (a provider's `lastError`, a frame) as it may be printed:
/// control characters escaped (`\u{1b}`), so what a provider, a runtime or a server
/// wrote cannot clear the screen, set the title or write the clipboard of the terminal.
/// JSON leaves the C1 controls (`\u{9b}`) raw; they are escaped here too.
pub(crate) fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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

/// The next text frame as JSON; `None` once the host closed, with its close code if any.
pub(crate) async fn next_frame(ws: &mut Ws) -> anyhow::Result<Result<Value, Option<u16>>> {
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => return Ok(Err(frame.map(|f| f.code.into()))),
            None => return Ok(Err(None)),
            Some(Ok(_)) => continue, // pings and pongs are handled for us
            Some(Err(e)) => return Err(e.into()),
        };
        return Ok(Ok(
            serde_json::from_str(&text).context("a frame that is not JSON")?
        ));
    }
}
