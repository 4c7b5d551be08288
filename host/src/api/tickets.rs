//! `POST /api/v1/tickets`: a single-use, short-lived ticket for one WebSocket, so a
//! browser never puts its token in a URL (`/ws/app/{id}?ticket=…`, for a template
//! `/ws/app?ticket=…`, for the change stream `/ws/events?ticket=…`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::body::{Body, Fields, FromObject};
use super::{ApiError, AppState};
use crate::tenancy::{Principal, Scope, TicketTarget};

/// Longest thread id a ticket may name.
const MAX_THREAD: usize = 256;

#[derive(Debug)]
pub(crate) struct TicketBody {
    environment: Option<String>,
    template: Option<String>,
    events: bool,
    thread: Option<String>,
    workspace: Option<String>,
}

/// `Err` unless `value` (of field `name`) is 1 to [`MAX_THREAD`] bytes without
/// control characters.
fn check_id(name: &str, value: Option<&String>) -> Result<(), String> {
    match value {
        Some(t) if t.is_empty() || t.len() > MAX_THREAD || t.chars().any(char::is_control) => Err(
            format!("field `{name}` must be 1 to {MAX_THREAD} bytes without control characters"),
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
pub(crate) async fn create(
    who: Principal,
    State(s): State<AppState>,
    Body(body): Body<TicketBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if body.events {
        who.require(Scope::EnvsRead)?;
    } else {
        who.require(Scope::Relay)?;
    }
    let (target, mut answer) = match (body.environment, body.template) {
        (Some(environment), _) => {
            // Someone else's environment is, to this caller, one that does not exist.
            s.manager.get(&who, &environment)?;
            let answer = json!({"environment": environment});
            (TicketTarget::Environment(environment), answer)
        }
        (None, Some(template)) => {
            s.manager.check_template(&template)?;
            let answer = json!({"template": template, "workspace": body.workspace});
            let target = TicketTarget::Template {
                template,
                workspace: body.workspace,
            };
            (target, answer)
        }
        (None, None) if body.events => (TicketTarget::Events, json!({"events": true})),
        (None, None) => return Err(ApiError::bad_request("give `environment` or `template`")),
    };
    let ticket = (s.tickets).issue(who, target, body.thread.clone());
    answer["ticket"] = json!(ticket);
    answer["expiresInSecs"] = json!(s.tickets.ttl().as_secs());
    answer["thread"] = json!(body.thread);
    Ok((StatusCode::CREATED, Json(answer)))
}
