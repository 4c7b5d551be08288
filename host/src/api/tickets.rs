//! `POST /api/v1/tickets`: a single-use, short-lived ticket for one WebSocket, so a
//! browser never puts its token in a URL (`/ws/app/{id}?ticket=…`, for a template
//! `/ws/app?ticket=…`, for the change stream `/ws/events?ticket=…`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::body::{Deferred, Fields, FromObject};
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::tenancy::{Principal, Scope, TicketTarget};

/// Longest thread id a ticket may name.
const MAX_THREAD: usize = 256;

/// `POST /api/v1/tickets`: exactly one of `environment`, `template` and `events:
/// true`; unknown fields are refused.
#[derive(Debug, ToSchema)]
pub(crate) struct TicketBody {
    /// An environment the caller reaches (the ticket opens `/ws/app/{id}`).
    environment: Option<String>,
    /// A defined template (the ticket opens `/ws/app`).
    #[schema(min_length = 1, max_length = 256)]
    template: Option<String>,
    /// `true` (alone): a ticket for `/ws/events` (scope `envs:read`).
    #[schema(required = false)]
    events: bool,
    /// The thread the socket joins, 1 to 256 bytes without control characters.
    #[schema(min_length = 1, max_length = 256)]
    thread: Option<String>,
    /// With `template` only: the workspace of a `workspace` template.
    #[schema(min_length = 1, max_length = 256)]
    workspace: Option<String>,
}

/// A ticket just issued: its secret, once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TicketView {
    /// The single-use secret, for `?ticket=`.
    ticket: String,
    /// Seconds it stays valid (`[tenancy] ticket_ttl_secs`).
    expires_in_secs: u64,
    /// The environment it opens, for an environment ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<String>,
    /// The template it provisions from, for a template ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    /// `true`, for an events ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<bool>,
    /// The workspace, for a template ticket (`null` when none was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    workspace: Option<Option<String>>,
    /// The thread the socket joins (`null`: the connect's `?thread=` decides).
    #[schema(required = true)]
    thread: Option<String>,
}

/// `Err` unless `value` (of field `name`) is 1 to [`MAX_THREAD`] bytes without
/// control characters.
pub(crate) fn check_id(name: &str, value: Option<&String>) -> Result<(), String> {
    match value {
        Some(t) if t.is_empty() || t.len() > MAX_THREAD || t.chars().any(char::is_control) => Err(
            format!("`{name}` must be 1 to {MAX_THREAD} bytes without control characters"),
        ),
        _ => Ok(()),
    }
}

impl FromObject for TicketBody {
    const FIELDS: &'static [&'static str] =
        &["environment", "template", "events", "thread", "workspace"];

    fn from_object(f: &mut Fields) -> Result<Self, String> {
        let environment = f.optional_string("environment")?;
        let template = f.optional_string("template")?;
        let events = f.boolean("events")?.unwrap_or(false);
        let thread = f.optional_string("thread")?;
        let workspace = f.optional_string("workspace")?;
        check_id("thread", thread.as_ref())?;
        check_id("workspace", workspace.as_ref())?;
        check_id("template", template.as_ref())?;
        let body = Self {
            environment,
            template,
            events,
            thread,
            workspace,
        };
        match (&body.environment, &body.template, body.events) {
            (None, None, true) if body.thread.is_some() || body.workspace.is_some() => {
                Err("fields `thread` and `workspace` do not go with `events`".to_owned())
            }
            (Some(_), None, false) if body.workspace.is_some() => {
                Err("field `workspace` goes with `template`".to_owned())
            }
            (Some(_), None, false) | (None, Some(_), false) | (None, None, true) => Ok(body),
            _ => Err(
                "give exactly one of the fields `environment`, `template` and `events: true`"
                    .to_owned(),
            ),
        }
    }
}

/// `POST /api/v1/tickets {"environment", "thread"?}` (scope `relay`, an environment the
/// caller reaches), `{"template", "thread"?, "workspace"?}` (scope `relay`, a defined
/// template) or `{"events": true}` (scope `envs:read`, for `/ws/events`):
/// `{"ticket", "expiresInSecs", "environment" | "template" | "events", "thread", "workspace"?}`, 201.
#[utoipa::path(
    post,
    path = "/api/v1/tickets",
    tag = "tickets",
    request_body(content = TicketBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The ticket, valid once within `expiresInSecs`.", body = TicketView),
        (status = 400, description = "The body is not JSON (`invalid_json`); or it stopped arriving for `[server] header_timeout_secs` or was not whole within `body_timeout_secs`, is not an object, has an unknown field or a bad value (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "The body is over 2 MiB (`body_too_large`).", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json` (`unsupported_media_type`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `relay` scope (`envs:read` for an events ticket) (`missing_scope`).", body = ErrorBody),
        (status = 404, description = "No such environment (or another user's), or no such template (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = ["relay"]), ("bearer" = ["envs:read"])),
)]
pub(crate) async fn create(
    who: Principal,
    State(s): State<AppState>,
    body: Deferred<TicketBody>,
) -> Result<(StatusCode, Json<TicketView>), ApiError> {
    // Before the body is read: a token that can have no ticket at all is refused at
    // once; which of the two scopes is needed depends on the body.
    if who.require(Scope::EnvsRead).is_err() {
        who.require(Scope::Relay)?;
    }
    let body = body.read().await?;
    if body.events {
        who.require(Scope::EnvsRead)?;
    } else {
        who.require(Scope::Relay)?;
    }
    let mut answer = TicketView {
        ticket: String::new(),
        expires_in_secs: s.tickets.ttl().as_secs(),
        environment: None,
        template: None,
        events: None,
        workspace: None,
        thread: body.thread.clone(),
    };
    let target = match (body.environment, body.template) {
        (Some(environment), _) => {
            // Someone else's environment is, to this caller, one that does not exist.
            s.manager.get(&who, &environment)?;
            answer.environment = Some(environment.clone());
            TicketTarget::Environment(environment)
        }
        (None, Some(template)) => {
            s.manager.check_template(&template)?;
            answer.template = Some(template.clone());
            answer.workspace = Some(body.workspace.clone());
            TicketTarget::Template {
                template,
                workspace: body.workspace,
            }
        }
        (None, None) if body.events => {
            answer.events = Some(true);
            TicketTarget::Events
        }
        (None, None) => return Err(ApiError::bad_request("give `environment` or `template`")),
    };
    answer.ticket = (s.tickets).issue(who, target, body.thread);
    Ok((StatusCode::CREATED, Json(answer)))
}
