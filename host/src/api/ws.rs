//! WebSocket routes: `/ws/runtime/{id}` (runtime token) and `/ws/app/{id}` (an API
//! token with the `relay` scope, as a bearer header or, for browsers, a
//! `tether.bearer.<token>` subprotocol).
//!
//! Credentials are checked before the upgrade, so a refused peer gets a plain HTTP
//! status (401, 403, 404, 410) it can act on; someone else's environment is 404 like a
//! missing one; a full environment is upgraded and closed at once with close code
//! 4013. An admitted peer's socket is the relay's from the upgrade on; an app's is
//! closed with 4003 when its token is revoked or expires. An app connecting to an
//! environment asleep for idleness wakes it (`lifecycle/wake.rs`); one its user stopped
//! on purpose is upgraded, told so and closed with 4015 unless it asks `start=true`.
//! An app of a user holding their `[tenancy] max_connections` already is upgraded and
//! closed with 4016 before anything is woken or made for it; an admitted app's place
//! is kept, by its connection or its bridge, until it ends. Runtimes are not counted.
//!
//! `/ws/app?template=NAME&thread=T` (`&workspace=W`) connects an app to the
//! environment provisioned for it from a template (`lifecycle/provision.rs`): found
//! or created, and started, before the upgrade; an unknown template is 404.
//!
//! Cluster mode: an app whose environment another host runs is bridged there, by id
//! or through a template alike (`relay/bridge.rs`), at most one hop.

use std::collections::HashMap;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_KEY};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;

use super::audited::{Act, Remote, audited};
use super::error::{ErrorBody, ErrorCode};
use super::params::Params;
use super::{ApiError, AppCaller, AppState, bearer, caller};
use crate::audit::action;
use crate::config::PublicUrl;
use crate::lifecycle::{LifecycleError, ProvisionTarget};
use crate::relay::{
    self, AppThread, CLOSE_STOPPED, CLOSE_TOO_MANY, CLOSE_USER_LIMIT, Held, Resume,
};
use crate::tenancy::{Opening, Principal, Scope, TicketTarget};
use crate::throttle::Throttled;

/// The subprotocol the host answers with; browsers must offer it with their token.
pub(crate) const SUBPROTOCOL: &str = "tether.v1";

/// The bearer token of a runtime's upgrade request.
#[derive(Debug)]
pub(crate) struct RuntimeToken(String);

impl FromRequestParts<AppState> for RuntimeToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        bearer(parts)?
            .map(|t| RuntimeToken(t.to_owned()))
            .ok_or_else(|| ApiError::unauthorized("missing runtime token"))
    }
}

/// Whose an app's resumable session is: `who`'s user on `thread`. Another user, or
/// the same user on another thread (a ticket may pin one), naming the same session id
/// gets a session of their own (`relay::Resume::holder`).
fn holder(who: &Principal, thread: Option<&str>) -> String {
    // Neither a user name nor a thread holds a control character.
    format!("{}\n{}", who.user(), thread.unwrap_or_default())
}

fn resume_of(query: &HashMap<String, String>) -> Result<Option<Resume>, ApiError> {
    let get = |k: &str| query.get(k).map(String::as_str);
    Resume::from_query(get("session"), get("resume")).map_err(ApiError::bad_request)
}

/// `GET /ws/runtime/{id}`: the runtime of environment `id`, with its runtime token.
#[utoipa::path(
    get,
    path = "/ws/runtime/{id}",
    tag = "websockets",
    params(
        ("id" = String, Path, description = "Environment id."),
        ("session" = Option<String>, Query, description = "A resumable session id (see `docs/protocol.md`, Resuming)."),
        ("resume" = Option<u64>, Query, description = "With `session`: the last sequence number received."),
    ),
    responses(
        (status = 101, description = "Upgraded: the runtime's socket (`docs/protocol.md`). A runtime connection the environment already has is replaced: it is closed with 4009. An environment at `max_connections` is upgraded and closed with 4013."),
        (status = 400, description = "A malformed query (`session`, `resume`, …; `invalid_request`), or an upgrade request missing a WebSocket header (plain text).", content(
            (ErrorBody = "application/json"),
            (String = "text/plain"),
        )),
        (status = 401, description = "No runtime token, or not the current start's (`unauthorized`). A wrong token is answered alike whether the id is an environment's or not, and before this host says whether it runs it.", body = ErrorBody),
        (status = 429, description = "This address presented too many forged runtime tokens (or wrong API tokens) in the last minute (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 404, description = "The environment was deleted while the upgrade was checked (`not_found`); an id that is no environment's is 401 like a wrong token.", body = ErrorBody),
        (status = 409, description = "Cluster mode: this host does not run the environment; the message names the host that does (`conflict`).", body = ErrorBody),
        (status = 410, description = "The environment is stopped; the runtime should exit (`conflict`).", body = ErrorBody),
        (status = 426, description = "Not an upgrade request a WebSocket can be made of (plain text).", content_type = "text/plain", body = String),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn runtime(
    State(s): State<AppState>,
    Remote(remote): Remote,
    Path(id): Path<String>,
    RuntimeToken(token): RuntimeToken,
    Params(query): Params,
    upgrading: Upgrading,
) -> Result<Response, ApiError> {
    let Upgrading { check, upgrade } = upgrading;
    // Forged runtime tokens count against the address like wrong API tokens (a stale
    // one, of an earlier start, is a runtime that outlived it, not a guess).
    let throttled = |t: Throttled| ApiError::throttled(t.to_string(), t.retry_after_secs());
    s.throttle.check(remote).map_err(throttled)?;
    let resume = resume_of(&query)?;
    // A stopped environment's runtime is told it is gone (410), so it exits.
    let connection = match s.manager.attach_runtime(&id, &token, resume).await {
        Ok(connection) => connection,
        Err(e @ LifecycleError::InvalidToken(_)) => {
            s.throttle.failed(remote).map_err(throttled)?;
            return Err(e.into());
        }
        Err(LifecycleError::TooManyConnections(why)) => {
            return Ok(relay::refuse(check, CLOSE_TOO_MANY, why));
        }
        Err(e @ LifecycleError::Conflict(_)) => {
            return Err(ApiError::from(e).with_status(StatusCode::GONE));
        }
        Err(other) => return Err(other.into()),
    };
    Ok(connection.serve(upgrade, None))
}

/// `GET /ws/app/{id}`: an app joining environment `id`.
#[utoipa::path(
    get,
    path = "/ws/app/{id}",
    tag = "websockets",
    params(
        ("id" = String, Path, description = "Environment id."),
        ("thread" = Option<String>, Query, description = "The thread this app joins."),
        ("start" = Option<bool>, Query, description = "`true`: start the environment even if its user stopped it on purpose (`envs:write`)."),
        ("ticket" = Option<String>, Query, description = "A single-use ticket from `POST /api/v1/tickets`, instead of a token."),
        ("session" = Option<String>, Query, description = "A resumable session id (see `docs/protocol.md`, Resuming)."),
        ("resume" = Option<u64>, Query, description = "With `session`: the last sequence number received."),
    ),
    responses(
        (status = 101, description = "Upgraded: the app's socket, subprotocol `tether.v1` (`docs/protocol.md`). A full environment is closed at once with 4013; one stopped on purpose gets an `error` frame with code `stopped` and close 4015 unless `start=true`; a user holding `[tenancy] max_connections` on this host already is closed at once with 4016."),
        (status = 400, description = "A malformed query (`thread` over 256 bytes or with control characters, `start` other than `true` or `false`, `session`, `resume`, …; `invalid_request`), or an upgrade request missing a WebSocket header (plain text).", content(
            (ErrorBody = "application/json"),
            (String = "text/plain"),
        )),
        (status = 401, description = "No token or ticket, or one that is unknown, revoked, expired or used (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The token lacks `relay` (or `envs:write`, for `start=true`) (`missing_scope`), or the connect would start a user's environment whose provider is outside the user's `[tenancy] providers` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such environment, or another user's (`not_found`).", body = ErrorBody),
        (status = 409, description = "The relay could not admit the app, or (cluster mode) the app used a ticket on a host that does not run the environment: the message names the host that does (`conflict`).", body = ErrorBody),
        (status = 502, description = "Cluster mode: the host running the environment could not be reached to bridge the app there (`host_unreachable`).", body = ErrorBody),
        (status = 426, description = "Not an upgrade request a WebSocket can be made of (plain text).", content_type = "text/plain", body = String),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`), or starting it would pass `max_running` (`quota_exceeded`).", body = ErrorBody),
        (status = 500, description = "The records file could not be written (`store_error`), the audit log could not take the start this connect asked for (`audit_failed`: the environment was asked to run, the app is not admitted), or the host failed (`internal_error`).", body = ErrorBody),
        (status = 503, description = "Waking the environment could not be recorded: the data directory's filesystem is read-only or fails (`storage_unavailable`); or, cluster mode, waking it counts against the user's `max_running` and could not be admitted across the cluster (`cluster_unavailable`). It was not woken.", body = ErrorBody),
        (status = 507, description = "Waking the environment could not be recorded: the data directory's filesystem is full (`storage_full`). It was not woken.", body = ErrorBody),
    ),
    security(("bearer" = ["relay"])),
)]
pub(crate) async fn app(
    caller: AppCaller,
    Remote(remote): Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Params(query): Params,
    forward: Forward,
    upgrading: Upgrading,
) -> Result<Response, ApiError> {
    let Upgrading { check, upgrade } = upgrading;
    let by_token = matches!(caller, AppCaller::Token(_));
    let (who, pinned) = match caller {
        AppCaller::Token(who) => (who, None),
        AppCaller::Ticket(secret, from) => {
            let ticket = caller::redeem(&s, from, &secret, Opening::Environment(&id))?;
            (ticket.principal, ticket.thread)
        }
    };
    who.require(Scope::Relay)?;
    let start = wants_start(&who, &query)?;
    // A ticket that names a thread decides it; otherwise the query does, within the
    // bounds a ticket's thread has (every frame without one is given it).
    let asked = query.get("thread").filter(|t| !t.is_empty());
    super::tickets::check_id("thread", asked).map_err(ApiError::bad_request)?;
    let thread = AppThread::ticketed(pinned, asked.cloned());
    let resume = resume_of(&query)?.map(|r| r.held_by(holder(&who, thread.name.as_deref())));
    // Before anything is woken for it.
    let held = match s.manager.hold_connection(&who) {
        Ok(held) => Held::new(held),
        Err(e) => return Ok(at_user_limit(check, e)),
    };
    match s.manager.attach_app(&who, &id, thread, resume, start).await {
        Ok(joined) => {
            if let Some(owner) = &joined.woke {
                audit_start(&s, &who, Remote(remote), &id, owner).await?;
            }
            let connection = joined.connection.holding(held);
            Ok(connection.serve(upgrade, Some(SUBPROTOCOL)))
        }
        Err(LifecycleError::Elsewhere { id, url, host }) if by_token && !forward.bridged => {
            let path = format!("/ws/app/{id}?{}", forward.query);
            let elsewhere = Elsewhere { id, url, host };
            let to = Bridged {
                elsewhere,
                path,
                held,
            };
            bridge_to(&s, remote, to, forward, check, upgrade).await
        }
        // A ticket was used up here; only a token can be presented there again. An app
        // bridged here already is not bridged on (`Forward::bridged`).
        Err(e) => refused(e, check),
    }
}

/// The host running an app's environment, from [`LifecycleError::Elsewhere`].
struct Elsewhere {
    id: String,
    /// The URL its lease gives when its host publishes it as its own; else why not.
    url: Result<String, String>,
    host: String,
}

/// Where a bridge takes an app: the host running its environment, the path (with
/// its query) to ask there, and the app's place under its user's `max_connections`
/// on this host, kept until the bridge ends.
struct Bridged {
    elsewhere: Elsewhere,
    path: String,
    held: Held,
}

/// Bridges an app to `path` (with its query) on the host running its environment:
/// through a NATS tunnel, or straight to that host's URL (`[cluster] relay`). That
/// host answers the upgrade (or refuses it: its status, code and message are
/// answered), and from then on its relay serves the app.
async fn bridge_to(
    s: &AppState,
    remote: std::net::IpAddr,
    to: Bridged,
    forward: Forward,
    check: WebSocketUpgrade,
    upgrade: relay::Upgrade,
) -> Result<Response, ApiError> {
    let Bridged {
        elsewhere: Elsewhere { id, url, host },
        path,
        held,
    } = to;
    tracing::debug!(env = %id, %host, "bridging an app to the host running its environment");
    let upstream = match s.manager.tunnel_to(&host, &id, remote).await {
        Some(Ok(stream)) => relay::Upstream::Stream(stream, path),
        Some(Err(e)) => {
            return Err(ApiError::bridged(StatusCode::BAD_GATEWAY, e.to_string()));
        }
        None => {
            // Anyone who can write the leases bucket could have put any URL there:
            // it is dialled only when its host publishes it as its own.
            let url = url.map_err(|why| {
                let message = format!("the host running environment {id} cannot be reached: {why}");
                ApiError::new(ErrorCode::HostUnreachable, message)
            })?;
            // Checked when the lease was read; its ws(s):// form is the one to dial.
            let base = PublicUrl::parse(&url)
                .map_err(|e| ApiError::bridged(StatusCode::BAD_GATEWAY, e))?
                .websocket_base();
            relay::Upstream::Direct(format!("{base}{path}"))
        }
    };
    let stall = s.manager.bridge_stall();
    // The bridge answers the upgrade itself.
    drop(check);
    relay::bridge(
        upgrade,
        upstream,
        forward.authorization,
        SUBPROTOCOL,
        stall,
        held,
    )
    .await
    .map_err(|refused| ApiError::bridged(refused.status, refused.body))
}

/// What an app's upgrade carries that a bridge presents again to the host running
/// its environment (cluster mode): its query and its token, as a bearer header.
pub(crate) struct Forward {
    query: String,
    authorization: Option<HeaderValue>,
    /// The upgrade came from another host's bridge ([`relay::BRIDGED`]). Such an app
    /// is never bridged on: two hosts whose views of a lease disagree for a moment
    /// would otherwise pass it back and forth. It is refused (409 naming the host)
    /// and connects again once they agree. A client that sends the header itself
    /// only gives up its own bridging.
    bridged: bool,
}

impl FromRequestParts<AppState> for Forward {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let authorization = parts.headers.get(AUTHORIZATION).cloned().or_else(|| {
            caller::presented_token(&parts.headers)
                .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
        });
        Ok(Self {
            query: parts.uri.query().unwrap_or_default().to_owned(),
            authorization,
            bridged: parts.headers.contains_key(relay::BRIDGED),
        })
    }
}

/// A WebSocket upgrade request, checked by axum's `WebSocketUpgrade` (which also
/// answers a peer refused after the upgrade, with a close code) and answered by the
/// relay, or a bridge, itself when the peer is admitted.
pub(crate) struct Upgrading {
    check: WebSocketUpgrade,
    upgrade: relay::Upgrade,
}

impl FromRequestParts<AppState> for Upgrading {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        // Cloned before `WebSocketUpgrade` takes hyper's handle out of the request.
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let check = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // HTTP/1.1 (the only version served) always has both once checked.
        let key = parts.headers.get(SEC_WEBSOCKET_KEY).cloned();
        let (Some(on_upgrade), Some(key)) = (on_upgrade, key) else {
            return Err((StatusCode::BAD_REQUEST, "not a WebSocket upgrade").into_response());
        };
        let offers_protocol = caller::offered_protocols(&parts.headers).any(|p| p == SUBPROTOCOL);
        let upgrade = relay::Upgrade {
            on_upgrade,
            key,
            offers_protocol,
        };
        Ok(Self { check, upgrade })
    }
}

/// `?start=true`: start the environment even if its user stopped it on purpose, which
/// is a write.
fn wants_start(who: &Principal, query: &HashMap<String, String>) -> Result<bool, ApiError> {
    // Anything but `true` or `false` is refused, as `follow` and `force` are: read as
    // false, `start=1` would leave the app at a stopped environment it asked to start.
    let start = match field(query, "start").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("start must be true or false")),
    };
    if start {
        who.require(Scope::EnvsWrite)?;
    }
    Ok(start)
}

/// An app the lifecycle did not admit: refused before the upgrade with an HTTP error,
/// or after it with a close code where the contract says so.
fn refused(e: LifecycleError, upgrade: WebSocketUpgrade) -> Result<Response, ApiError> {
    match e {
        LifecycleError::TooManyConnections(why) => Ok(relay::refuse(upgrade, CLOSE_TOO_MANY, why)),
        LifecycleError::StoppedOnPurpose(why) => {
            let frame =
                serde_json::json!({"type": "error", "error": {"code": "stopped", "message": why}});
            let reason = "stopped on purpose; connect with start=true".to_owned();
            Ok(relay::refuse_with(
                upgrade,
                frame.to_string(),
                CLOSE_STOPPED,
                reason,
            ))
        }
        other => Err(other.into()),
    }
}

/// A connection of a user at `[tenancy] max_connections` (`e`, the lifecycle's
/// `QuotaExceeded`): upgraded and closed at once with 4016, the reason saying the
/// limit, its value and the use, as the 429 `quota_exceeded` of a followed log does.
pub(crate) fn at_user_limit(upgrade: WebSocketUpgrade, e: LifecycleError) -> Response {
    let mut reason = e.to_string();
    // A close frame's reason is at most 123 bytes; a long user name is the caller's own.
    if let LifecycleError::QuotaExceeded { limit, used, .. } = &e
        && reason.len() > MAX_CLOSE_REASON
    {
        reason = format!("at the max_connections quota: {used} of {limit} in use");
    }
    relay::refuse(upgrade, CLOSE_USER_LIMIT, reason)
}

/// Most bytes of a close frame's reason (RFC 6455 §5.5: 125 with the code).
const MAX_CLOSE_REASON: usize = 123;

/// A query value given and not empty.
fn field(query: &HashMap<String, String>, key: &str) -> Option<String> {
    query.get(key).filter(|v| !v.is_empty()).cloned()
}

/// `GET /ws/app?template=NAME`: an app joining the environment provisioned for it.
#[utoipa::path(
    get,
    path = "/ws/app",
    tag = "websockets",
    params(
        ("template" = Option<String>, Query, description = "The template to provision from (required unless a template ticket is given)."),
        ("workspace" = Option<String>, Query, description = "The workspace, for a `workspace` template."),
        ("thread" = Option<String>, Query, description = "The thread this app joins."),
        ("start" = Option<bool>, Query, description = "`true`: start the environment even if its user stopped it on purpose (`envs:write`)."),
        ("ticket" = Option<String>, Query, description = "A single-use ticket from `POST /api/v1/tickets`, instead of a token."),
        ("session" = Option<String>, Query, description = "A resumable session id (see `docs/protocol.md`, Resuming)."),
        ("resume" = Option<u64>, Query, description = "With `session`: the last sequence number received."),
    ),
    responses(
        (status = 101, description = "Upgraded: the first frame is `provisioned` (`docs/protocol.md`, Provisioning); close codes as for `/ws/app/{id}` (4016 before anything is made or woken). Cluster mode: when the environment runs on another host, the app is bridged there (the same path and query) and that host's relay serves it, as for `/ws/app/{id}`; a refusal there is answered with its status, code and message."),
        (status = 400, description = "A malformed query (`start` other than `true` or `false`, `session`, `resume`, …; `invalid_request`), a token limited to named environments whose key's environment is not one of them, new or existing (`invalid_request`), or an upgrade request missing a WebSocket header (plain text).", content(
            (ErrorBody = "application/json"),
            (String = "text/plain"),
        )),
        (status = 401, description = "No token or ticket, or one that is unknown, revoked, expired or used (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The token lacks `relay` (or `envs:write`, for `start=true`) (`missing_scope`), or the key's environment, made before the template was pointed at another provider, is on a provider outside the user's `[tenancy] providers` and the connect would start it (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such template (`not_found`).", body = ErrorBody),
        (status = 409, description = "The template's provider is not loaded, or the derived name is taken by an environment made by hand, or (cluster mode) the app used a ticket on a host that does not run the environment: the message names the host that does (`conflict`).", body = ErrorBody),
        (status = 502, description = "Cluster mode: the host running the environment could not be reached to bridge the app there (`host_unreachable`).", body = ErrorBody),
        (status = 426, description = "Not an upgrade request a WebSocket can be made of (plain text).", content_type = "text/plain", body = String),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`), or the user is at a quota (`quota_exceeded`).", body = ErrorBody),
        (status = 500, description = "The records file or the audit log could not be written (`store_error`; `audit_failed`: the environment was made or asked to run, and the app is not admitted) or the host failed (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The environment could not be made or woken: the data directory's filesystem is read-only or fails (`storage_unavailable`); or, cluster mode, NATS does not answer, or another host has been admitting the user's change for over 5 s (`cluster_unavailable`): the environment's name could not be reserved or its making, counted against the user's limits, not admitted across the cluster. Nothing was made.", body = ErrorBody),
        (status = 507, description = "The environment could not be made or woken: the data directory's filesystem is full (`storage_full`). Nothing was made.", body = ErrorBody),
    ),
    security(("bearer" = ["relay"])),
)]
pub(crate) async fn provisioned(
    caller: AppCaller,
    remote: Remote,
    State(s): State<AppState>,
    Params(query): Params,
    forward: Forward,
    upgrading: Upgrading,
) -> Result<Response, ApiError> {
    let Upgrading { check, upgrade } = upgrading;
    let by_token = matches!(caller, AppCaller::Token(_));
    let (who, target) = match caller {
        AppCaller::Token(who) => {
            let template = field(&query, "template")
                .ok_or_else(|| ApiError::bad_request("missing ?template="))?;
            let start = wants_start(&who, &query)?;
            let target = ProvisionTarget {
                template,
                thread: field(&query, "thread"),
                pinned: false,
                workspace: field(&query, "workspace"),
                start,
            };
            (who, target)
        }
        // A template ticket decides the template, thread and workspace.
        AppCaller::Ticket(secret, from) => {
            let ticket = caller::redeem(&s, from, &secret, Opening::Template)?;
            let TicketTarget::Template {
                template,
                workspace,
            } = ticket.target
            else {
                return Err(ApiError::unauthorized(
                    "the ticket is unknown, used or expired",
                ));
            };
            let target = ProvisionTarget {
                template,
                pinned: ticket.thread.is_some(),
                thread: ticket.thread,
                workspace,
                start: false,
            };
            (ticket.principal, target)
        }
    };
    who.require(Scope::Relay)?;
    let resume = resume_of(&query)?.map(|r| r.held_by(holder(&who, target.thread.as_deref())));
    // Before anything is made or woken for it.
    let held = match s.manager.hold_connection(&who) {
        Ok(held) => Held::new(held),
        Err(e) => return Ok(at_user_limit(check, e)),
    };
    let provisioned = match s.manager.provision_app(&who, target, resume).await {
        Ok(p) => p,
        // The key's environment runs on another host: the app is bridged there with
        // the same path and query, and that host provisions it (finding the same
        // record, so `created: false`) and sends the `provisioned` frame. As by id,
        // only a token can be presented there again; a ticket was used up here.
        Err(LifecycleError::Elsewhere { id, url, host }) if by_token && !forward.bridged => {
            let path = format!("/ws/app?{}", forward.query);
            let elsewhere = Elsewhere { id, url, host };
            let to = Bridged {
                elsewhere,
                path,
                held,
            };
            return bridge_to(&s, remote.0, to, forward, check, upgrade).await;
        }
        Err(e) => return refused(e, check),
    };
    if provisioned.created {
        let act = Act {
            who: &who,
            remote,
            action: action::ENVIRONMENT_CREATE,
            target: &provisioned.environment_id,
            owner: Some(who.user()),
        };
        audited(&s, act, Ok(())).await?;
    }
    if provisioned.woke {
        let id = &provisioned.environment_id;
        audit_start(&s, &who, remote, id, who.user()).await?;
    }
    let connection = provisioned.connection.holding(held);
    Ok(connection.serve(upgrade, Some(SUBPROTOCOL)))
}

/// Records an app's connect that asked a stopped environment to run again as the
/// start it is (`environment.start` by the app's token), durably before the app is
/// admitted, as `POST …/start` is before it is answered: one the log cannot take is
/// answered 500 `audit_failed` and the app is not admitted (the start stands).
async fn audit_start(
    s: &AppState,
    who: &Principal,
    remote: Remote,
    id: &str,
    owner: &str,
) -> Result<(), ApiError> {
    let act = Act {
        who,
        remote,
        action: action::ENVIRONMENT_START,
        target: id,
        owner: Some(owner),
    };
    audited(s, act, Ok(())).await
}
