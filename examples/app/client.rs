//! What both commands need: the server's address, the token, REST calls and app sockets.

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
        Ok(Client {
            base: server.trim_end_matches('/').to_owned(),
            token_hint,
            auth: format!("Bearer {}", token.trim()),
            http: reqwest::Client::new(),
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
                message.as_str().unwrap_or("?"),
                code.as_str().unwrap_or("?")
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
        // `true`: TCP_NODELAY, so an interactive exchange never waits on delayed ACKs.
        match tokio_tungstenite::connect_async_with_config(request, None, true).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response.body().as_deref().unwrap_or_default();
                let body: Value = serde_json::from_slice(body).unwrap_or_default();
                let message = body["error"]["message"].as_str().unwrap_or("");
                bail!("the server refused the app WebSocket: HTTP {status} {message}")
            }
            Err(e) => Err(e).context("opening the app WebSocket"),
        }
    }
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
