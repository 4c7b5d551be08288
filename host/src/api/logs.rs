//! `GET /api/v1/environments/{id}/logs`: an environment's log as NDJSON, one JSON object
//! a line (`ts`, `level`, `source`, `message`, and `stream`/`pid` for process output),
//! oldest first; with `follow=true` the response stays open and carries each new line
//! as it is written, until the client leaves, the environment is deleted, the host
//! shuts down, the token stops working (revoked or expired) or the environment moves to
//! another owner (a last `WARN` line says which, as the app sockets close with 4003). A
//! follow counts against its user's `[tenancy] max_connections` while it is open; past
//! it the request is 429 `quota_exceeded`. Same rules as reading the environment:
//! `envs:read`, and someone else's is 404; to anyone but an admin the data directory's
//! path reads `<data-dir>` (`crate::host_paths`).

use std::collections::HashSet;
use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::broadcast::error::RecvError;

use super::error::ErrorBody;
use super::params::Params;
use super::{ApiError, AppState};
use crate::host_paths::HiddenDataDir;
use crate::logs::{MAX_TAIL, parse_since};
use crate::tenancy::{Principal, Scope};

/// Lines returned when `tail` is not given.
const DEFAULT_TAIL: usize = 100;

#[utoipa::path(
    get,
    path = "/api/v1/environments/{id}/logs",
    tag = "environments",
    params(
        ("id" = String, Path, description = "Environment id."),
        ("tail" = Option<u32>, Query, description = "Lines before now, 0 to 10000 (default 100)."),
        ("since" = Option<String>, Query, description = "Only lines at or after this RFC 3339 time."),
        ("follow" = Option<bool>, Query, description = "`true`: keep the response open and send each new line as it is written."),
    ),
    responses(
        (status = 200, description = "NDJSON, one object a line: `ts`, `level`, `source`, `message`, and `stream`/`pid` for process output; oldest first. To anyone but an admin, the data directory's absolute path reads `<data-dir>`.", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "`tail`, `since` or `follow` is malformed (`invalid_request`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`), or, with `follow=true`, the user holds `[tenancy] max_connections` on this host already (`quota_exceeded`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `envs:read` scope (`missing_scope`).", body = ErrorBody),
        (status = 404, description = "No such environment, or another user's (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = ["envs:read"])),
)]
pub(crate) async fn logs(
    who: Principal,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Params(query): Params,
) -> Result<Response, ApiError> {
    who.require(Scope::EnvsRead)?;
    let tail = match query.get("tail") {
        None => DEFAULT_TAIL,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_TAIL)
            .ok_or_else(|| ApiError::bad_request(format!("tail must be 0 to {MAX_TAIL}")))?,
    };
    let since = match query.get("since") {
        None => None,
        Some(t) => Some(parse_since(t).ok_or_else(|| {
            ApiError::bad_request("since must be an RFC 3339 time, e.g. 2026-12-04T10:00:00Z")
        })?),
    };
    let follow = match query.get("follow").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("follow must be true or false")),
    };
    let (lines, live) = s.manager.env_logs(&who, &id, tail, since, follow).await?;
    // Where the host keeps things is the admins' (docs/rest.md).
    let hidden = match who.is_admin() {
        true => None,
        false => HiddenDataDir::new(&s.manager.data_dir()),
    };
    // What the provider was handed and may have quoted is shown to no one.
    let handed = s.manager.handed_values(&id);
    let shown = move |line: &str| {
        let line = match handed.is_empty() {
            true => line.to_owned(),
            false => handed.hide_in_json(line),
        };
        match &hidden {
            Some(h) => format!("{}\n", h.hide_in_json(&line)),
            None => format!("{line}\n"),
        }
    };
    let ndjson = [(CONTENT_TYPE, "application/x-ndjson")];
    let Some((mut live, moves)) = live else {
        let body: String = lines.iter().map(|l| shown(l)).collect();
        return Ok((ndjson, body).into_response());
    };
    // A follow is held open for the user: it counts against their `max_connections`
    // until its task ends (the client left, or the follow was ended).
    let held = s.manager.hold_connection(&who)?;
    // A line written between the follow starting and the tail being read is in both.
    let seen: HashSet<String> = lines.iter().rev().take(64).cloned().collect();
    let head: Vec<String> = lines.iter().map(|l| shown(l)).collect();
    let head = futures_util::stream::iter(head.into_iter().map(Ok));
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let closing = s.manager.closing();
    tokio::spawn(async move {
        let _held = held;
        let mut closing = std::pin::pin!(closing);
        loop {
            let next = tokio::select! {
                // The client left: stop at once, not at the next line.
                () = tx.closed() => return,
                // The token was checked once, at the request; a revoked or expired one
                // must not go on reading what the environment logs.
                why = who.ended() => {
                    let _ = tx.send(format!("{}\n", host_line(&format!("follow ended: {why}")))).await;
                    return;
                }
                // Admitted as the old owner's: ended as that owner's apps are closed.
                () = moves.cancelled() => {
                    let _ = tx.send(format!("{}\n", host_line("follow ended: the environment moved to another owner"))).await;
                    return;
                }
                // The server lets open responses finish before it stops: this one
                // would never finish on its own.
                () = &mut closing => {
                    let _ = tx.send(format!("{}\n", host_line("follow ended: the host is shutting down"))).await;
                    return;
                }
                next = live.0.recv() => next,
            };
            let line = match next {
                Ok(line) if seen.contains(&*line) => continue,
                Ok(line) => line.to_string(),
                Err(RecvError::Lagged(n)) => {
                    host_line(&format!("{n} lines skipped: this follower fell behind"))
                }
                Err(RecvError::Closed) => return,
            };
            if tx.send(shown(&line)).await.is_err() {
                return;
            }
        }
    });
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    let body = Body::from_stream(head.chain(rest));
    Ok((ndjson, body).into_response())
}

/// A `WARN` line from the host to this follower only (it is not in the log).
fn host_line(message: &str) -> String {
    serde_json::json!({
        "ts": crate::logs::now_ts(),
        "level": "WARN",
        "source": "host",
        "message": message,
    })
    .to_string()
}
