//! `tether token create|list|revoke`: the token endpoints of a running server, for
//! its operator. The server's URL comes from `--url` (or `TETHER_URL`); the admin
//! token from `--token`, else `TETHER_API_TOKEN`, else the data directory's
//! `.codebolt/api-token`. Plain `http://` only: run it on the host, or put the host
//! behind a proxy and use any HTTP client against the same endpoints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;

/// How long a call to the server may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server is and how to authenticate to it.
#[derive(Debug, Args)]
pub(super) struct ServerArgs {
    /// The server's URL.
    #[arg(long, env = "TETHER_URL", default_value = "http://127.0.0.1:2719")]
    url: String,
    /// The admin token (default: TETHER_API_TOKEN, else DATA_DIR/.codebolt/api-token).
    #[arg(long, env = "TETHER_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's data directory, to read the admin token from.
    #[arg(long, default_value = ".")]
    data_dir: PathBuf,
}

/// `tether token ...`.
#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Make a token for a user; prints it with its secret (shown only this once).
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// The user it acts for.
        #[arg(long)]
        user: String,
        /// A scope (repeat for more): envs:read, envs:write, envs:delete, relay, admin.
        /// Default: every scope but admin.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Limit it to this environment id (repeat for more).
        #[arg(long = "environment")]
        environments: Vec<String>,
        /// Seconds until it expires (default: never).
        #[arg(long)]
        expires_in: Option<u64>,
        /// A note for people.
        #[arg(long)]
        note: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token at once; apps connected with it are disconnected.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        /// The token's id (`tok_...`).
        id: String,
    },
}

/// Runs a token command, printing the server's answer as JSON.
pub(super) async fn run(command: TokenCommand) -> anyhow::Result<()> {
    let answer = match command {
        TokenCommand::Create {
            server,
            user,
            scopes,
            environments,
            expires_in,
            note,
        } => {
            let mut body = json!({"user": user});
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
            if !environments.is_empty() {
                body["environments"] = json!(environments);
            }
            if let Some(secs) = expires_in {
                body["expiresInSecs"] = json!(secs);
            }
            if let Some(note) = note {
                body["note"] = json!(note);
            }
            call(&server, Method::POST, "/api/v1/tokens", Some(body)).await?
        }
        TokenCommand::List { server, user } => {
            let path = match user {
                Some(user) => {
                    crate::names::validate("user", &user)?;
                    format!("/api/v1/tokens?user={user}")
                }
                None => "/api/v1/tokens".to_owned(),
            };
            call(&server, Method::GET, &path, None).await?
        }
        TokenCommand::Revoke { server, id } => {
            if !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                bail!("{} is not a token id", crate::untrusted::named(&id));
            }
            call(
                &server,
                Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                None,
            )
            .await?
        }
    };
    super::output::line(&serde_json::to_string_pretty(&answer)?)?;
    Ok(())
}

/// The admin token: the flag (or `TETHER_API_TOKEN`), else the data directory's.
fn admin_token(server: &ServerArgs) -> anyhow::Result<String> {
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
async fn call(
    server: &ServerArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let token = admin_token(server)?;
    let uri: Uri = server
        .url
        .parse()
        .with_context(|| format!("--url {}", crate::untrusted::named(&server.url)))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be an http:// URL");
    }
    let authority = uri.authority().context("--url names no host")?.clone();
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", uri.path().trim_end_matches('/')))
        .header(HOST, authority.as_str())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let exchange = async {
        let stream = TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("the server did not answer in time")??;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let error = &answer["error"];
        bail!(
            "the server answered {status}: {} ({})",
            error["message"].as_str().unwrap_or("no message"),
            error["code"].as_str().unwrap_or("no code")
        );
    }
    Ok(answer)
}
