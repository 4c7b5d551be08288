//! `tether removals list|retry|drop`: the pending removals of deleted environments'
//! resources on a running server (`/api/v1/removals`, admin), for its operator. The
//! server and token are found as for `tether token`.

use clap::Subcommand;
use http::Method;

use super::client::{ServerArgs, call};

/// `tether removals ...`.
#[derive(Debug, Subcommand)]
pub(super) enum RemovalsCommand {
    /// List deleted environments whose resource the server still tries to remove.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Have one tried within a second (after fixing what made it fail).
    Retry {
        #[command(flatten)]
        server: ServerArgs,
        /// The deleted environment's id.
        id: String,
    },
    /// Stop trying: the resource stays as it is (removed by hand, or to be kept).
    Drop {
        #[command(flatten)]
        server: ServerArgs,
        /// The deleted environment's id.
        id: String,
    },
}

/// Runs a removals command, printing the server's answer as JSON.
pub(super) async fn run(command: RemovalsCommand) -> anyhow::Result<()> {
    let answer = match command {
        RemovalsCommand::List { server } => {
            call(&server, Method::GET, "/api/v1/removals", None).await?
        }
        RemovalsCommand::Retry { server, id } => {
            crate::names::validate("environment id", &id)?;
            let path = format!("/api/v1/removals/{id}/retry");
            call(&server, Method::POST, &path, None).await?
        }
        RemovalsCommand::Drop { server, id } => {
            crate::names::validate("environment id", &id)?;
            call(
                &server,
                Method::DELETE,
                &format!("/api/v1/removals/{id}"),
                None,
            )
            .await?
        }
    };
    super::output::json(&answer)
}
