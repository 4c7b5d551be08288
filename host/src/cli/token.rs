//! `tether token create|list|revoke`: the token endpoints of a running server, for
//! its operator. The server's URL comes from `--url` (or `TETHER_URL`); the admin
//! token from `--token`, else `TETHER_API_TOKEN`, else the data directory's
//! `.codebolt/api-token`. `http://` or `https://`; over TLS the server's certificate
//! must match the URL's host and chain to the system's roots or to `TETHER_CA_FILE`.

use anyhow::bail;
use clap::Subcommand;
use http::Method;
use serde_json::json;

use super::client::{ServerArgs, call};

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
            if id.is_empty() || !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
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
    super::output::json(&answer)
}
