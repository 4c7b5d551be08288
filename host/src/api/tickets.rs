//! `POST /api/v1/tickets`: a single-use, short-lived ticket for one app WebSocket, so a
//! browser never puts its token in a URL (`/ws/app/{id}?ticket=…`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::body::{Body, Fields, FromObject};
use super::{ApiError, AppState};
use crate::tenancy::{Principal, Scope};

/// Longest thread id a ticket may name.
const MAX_THREAD: usize = 256;

#[derive(Debug)]
pub(crate) struct TicketBody {
    environment: String,
    thread: Option<String>,
}

impl FromObject for TicketBody {
    const FIELDS: &'static [&'static str] = &["environment", "thread"];

    fn from_object(f: &mut Fields) -> Result<Self, String> {
        let environment = f.string("environment")?;
        let thread = f.optional_string("thread")?;
        if let Some(t) = &thread
            && (t.is_empty() || t.len() > MAX_THREAD || t.chars().any(char::is_control))
        {
            return Err(format!(
                "field `thread` must be 1 to {MAX_THREAD} bytes without control characters"
            ));
        }
        Ok(Self {
            environment,
            thread,
        })
    }
}

/// `POST /api/v1/tickets {"environment", "thread"?}` (scope `relay`, an environment the
/// caller reaches): `{"ticket", "expiresInSecs", "environment", "thread"}`, 201.
pub(crate) async fn create(
    who: Principal,
    State(s): State<AppState>,
    Body(body): Body<TicketBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    who.require(Scope::Relay)?;
    // Someone else's environment is, to this caller, one that does not exist.
    s.manager.get(&who, &body.environment)?;
    let ticket = (s.tickets).issue(who, body.environment.clone(), body.thread.clone());
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "ticket": ticket,
            "expiresInSecs": s.tickets.ttl().as_secs(),
            "environment": body.environment,
            "thread": body.thread,
        })),
    ))
}
