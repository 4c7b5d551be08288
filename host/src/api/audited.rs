//! The API's side of the audit log: every mutating request is recorded, with who made
//! it, from where, on what, and how it ended, before it is answered (so a change a
//! client was told about is never missing from the log); `GET /api/v1/audit` reads it
//! back for admins.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::{ErrorBody, ErrorCode};
use super::params::Params;
use super::{ApiError, AppState};
use crate::audit::{self, Actor, Entry, Outcome};
use crate::tenancy::{Principal, Scope};

/// The address a request came from (unspecified when the server was not told).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remote(pub(crate) IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Remote {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Remote(remote_of(parts)))
    }
}

/// The peer address of the connection a request came on.
pub(crate) fn remote_of(parts: &Parts) -> IpAddr {
    (parts.extensions.get::<ConnectInfo<SocketAddr>>())
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// What one mutating request did, for its audit line.
pub(crate) struct Act<'a> {
    /// The caller.
    pub(crate) who: &'a Principal,
    /// Where from.
    pub(crate) remote: Remote,
    /// One of [`audit::action`].
    pub(crate) action: &'static str,
    /// The environment or token acted on.
    pub(crate) target: &'a str,
    /// The user the target belongs to, when known.
    pub(crate) owner: Option<&'a str>,
}

/// Records `act` with `result`'s outcome and only then hands the result back: a
/// change the log could not take is answered 500 `audit_failed` rather than
/// acknowledged unrecorded.
pub(crate) async fn audited<T>(
    s: &AppState,
    act: Act<'_>,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let (outcome, reason) = match &result {
        Ok(_) => (Outcome::Ok, None),
        Err(e) if e.status().is_server_error() => (Outcome::Failed, Some(e.message())),
        Err(e) => (Outcome::Refused, Some(e.message())),
    };
    let mut entry = Entry::new(
        Actor::user(act.who.user(), act.who.token_id()),
        act.action,
        outcome,
    )
    .target(act.target)
    .remote(act.remote.0);
    if let Some(owner) = act.owner {
        entry = entry.owner(owner);
    }
    if let Some(reason) = reason {
        entry = entry.reason(reason);
    }
    if let Err(e) = s.audit.record(entry).await {
        tracing::error!(error = %e, action = act.action, "the audit log did not take a request");
        // A refused or failed request changed nothing: its own error says more than
        // the log's (a full disk refuses both the change and its audit line).
        result?;
        return Err(ApiError::new(
            ErrorCode::AuditFailed,
            format!(
                "the change could not be recorded in the audit log: {}",
                super::client_text::audit(&e)
            ),
        ));
    }
    result
}

/// A refused authentication, noted (sampled when flooded, lost on a crash).
pub(crate) fn refused(s: &AppState, remote: IpAddr, action: &'static str, reason: &str) {
    s.audit.note(
        Entry::new(Actor::Anonymous, action, Outcome::Refused)
            .reason(reason)
            .remote(remote),
    );
}

/// `GET /api/v1/audit?since=RFC3339&limit=N&owner=USER` (admin): the newest entries
/// matching, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(
        ("since" = Option<String>, Query, description = "Only entries at or after this RFC 3339 time."),
        ("limit" = Option<u32>, Query, description = "At most this many (the newest), 1 to 10000."),
        ("owner" = Option<String>, Query, description = "Only entries about this user's environments and tokens, or made by them."),
    ),
    responses(
        (status = 200, description = "Entries, oldest first.", body = Vec<Entry>),
        (status = 400, description = "`since`, `limit` or `owner` is malformed (`invalid_request`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
        (status = 500, description = "The audit log could not be read (`audit_failed`).", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn list(
    who: Principal,
    State(s): State<AppState>,
    Params(query): Params,
) -> Result<Json<Vec<Entry>>, ApiError> {
    who.require(Scope::Admin)?;
    let since = match query.get("since") {
        None => None,
        Some(t) => Some(OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
            ApiError::bad_request("since: an RFC 3339 time, such as 2026-12-04T08:00:00Z")
        })?),
    };
    let limit = match query.get("limit") {
        None => 0,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=audit::MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit: a number from 1 to {}", audit::MAX_LIMIT))
            })?,
    };
    let owner = query.get("owner").cloned();
    if let Some(owner) = &owner {
        crate::tenancy::check_user(owner)
            .map_err(|e| ApiError::bad_request(format!("owner: {e}")))?;
    }
    let entries = s
        .audit
        .query(audit::Query {
            since,
            limit,
            owner,
        })
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::AuditFailed,
                format!("reading the audit log: {}", super::client_text::audit(&e)),
            )
        })?;
    Ok(Json(entries))
}
