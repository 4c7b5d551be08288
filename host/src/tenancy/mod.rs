//! Tenancy: who is calling and what they may reach. The operator's token is the
//! `admin`; admins make tokens for users, each with scopes that only narrow
//! (`scopes`), optionally limited to named environments and given an expiry. Only
//! a token's SHA-256 is kept, in `.codebolt/tokens.json` (`file`, `record`); the
//! registry (`tokens`) turns a presented secret into a [`Principal`] in one map
//! lookup, and every check of what a principal may do is a method of it
//! (`principal`). Environments carry an `owner`; the lifecycle asks the principal
//! whether it reaches one, and answers "not found" when it does not. How many
//! long-lived connections each user holds is counted in `connections`.

mod connections;
mod file;
mod principal;
mod record;
mod scopes;
mod tickets;
mod tokens;

use std::path::PathBuf;

pub(crate) use connections::{AtLimit, HeldConnection, UserConnections};
pub(crate) use file::tokens_path;
pub(crate) use principal::{ADMIN_TOKEN_ID, ADMIN_USER, MissingScope, Principal};
pub(crate) use record::TokenRecord;
pub(crate) use record::{check_user, stamp};
pub(crate) use scopes::{Scope, Scopes};
pub(crate) use tickets::{Opening, Ticket, TicketTarget, Tickets};
pub(crate) use tokens::{Issued, NewToken, TokenChange, TokenView, Tokens};

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TenancyError {
    /// The request breaks a rule (an unknown scope, a bad user name, ...).
    #[error("{0}")]
    Invalid(String),
    /// No such token, or not one the caller may see.
    #[error("{0}")]
    NotFound(String),
    /// The caller's token may not do this to another token (it is narrower than
    /// its user's full tokens).
    #[error("{0}")]
    Forbidden(String),
    /// The host holds as many user tokens as it takes ([`tokens::MAX_TOKENS`]).
    #[error("{0}")]
    Limit(String),
    /// The request conflicts with how the host was started.
    #[error("{0}")]
    Conflict(String),
    /// Reading or writing a token file failed.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The token file is broken (a bad hand edit); the host will not start on it.
    #[error(
        "token file {path} is invalid: {reason}; fix it, or remove it to revoke every user token"
    )]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        reason: String,
    },
}
