//! Who is calling: the [`Principal`] extractor. A request's bearer token (or, on an
//! app WebSocket, a `tether.bearer.<token>` subprotocol entry, for browsers) is
//! looked up once in the token registry; everything after that asks the principal.
//! This is the one place a request's credentials are read.

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use axum::http::request::Parts;

use super::origin::source_of;
use super::params::Params;
use super::{ApiError, AppState, audited};
use crate::audit::action;
use crate::tenancy::{Opening, Principal, Ticket};
use crate::throttle::{Source, Throttled};

/// Prefix of the subprotocol entry carrying the API token.
const TOKEN_PROTOCOL: &str = "tether.bearer.";

/// The refusal of a request with more than one `Authorization` header.
pub(crate) const SEVERAL_AUTHORIZATIONS: &str =
    "several `Authorization` headers: send exactly one, `Authorization: Bearer <token>`";

/// The bearer token of a request, if it carries one. The scheme is matched in any
/// case (RFC 9110 §11.1: `bearer x` is `Bearer x`), else a client sending it in lower
/// case is told it sent no token at all. Several `Authorization` headers are refused
/// (400): a proxy in front may check one and the host would act on another.
pub(crate) fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(SEVERAL_AUTHORIZATIONS));
    }
    let Ok(value) = value.to_str() else {
        return Ok(None);
    };
    let Some((scheme, token)) = value.trim_start().split_once([' ', '\t']) else {
        return Ok(None);
    };
    Ok(scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()))
}

/// The subprotocols a WebSocket upgrade offers, each trimmed.
pub(crate) fn offered_protocols(headers: &axum::http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The token a browser offered as a `tether.bearer.<token>` subprotocol entry.
pub(crate) fn presented_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    offered_protocols(headers).find_map(|p| p.strip_prefix(TOKEN_PROTOCOL))
}

/// The token in a `tether.bearer.<token>` subprotocol entry, if one is offered.
fn subprotocol_token(parts: &Parts) -> Option<&str> {
    presented_token(&parts.headers)
}

/// The caller presenting `secret`. An address that presented wrong tokens too often
/// is refused (429) before its token is even looked at, until its window passes; a
/// missing token is not a guess and is not counted. Web pages count apart from the
/// rest of their address ([`Source`]).
fn authenticate(
    state: &AppState,
    parts: &Parts,
    secret: Option<&str>,
) -> Result<Principal, ApiError> {
    let Some(secret) = secret else {
        return Err(ApiError::unauthorized(
            "missing API token: send `Authorization: Bearer <token>`",
        ));
    };
    let source = source_of(parts);
    let remote = source.addr;
    let throttled = |t: Throttled| {
        audited::refused(state, remote, action::AUTH_THROTTLED, &t.to_string());
        ApiError::throttled(t.to_string(), t.retry_after_secs())
    };
    state.throttle.check(source).map_err(throttled)?;
    state.tokens.authenticate(secret).map_err(|refused| {
        let reason = refused.to_string();
        audited::refused(state, remote, action::AUTH_REFUSED, &reason);
        match state.throttle.failed(source) {
            Err(t) => throttled(t),
            Ok(()) => ApiError::unauthorized(reason),
        }
    })
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, parts, bearer(parts)?)
    }
}

/// Whether a request is an admin's, for answers that show admins more (`/healthz`): a
/// good token with the `admin` scope. No token, a bad one, several `Authorization`
/// headers or a throttled address make it not an admin's, never an error. A bad token
/// still counts as a failed authentication (and is audited), so such a route is no way
/// around the throttle for guessing tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdminOrNot(pub(crate) bool);

impl FromRequestParts<AppState> for AdminOrNot {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        let Ok(Some(secret)) = bearer(parts) else {
            return Ok(Self(false));
        };
        let admin = authenticate(state, parts, Some(secret)).is_ok_and(|p| p.is_admin());
        Ok(Self(admin))
    }
}

/// The caller of an app (or events) WebSocket upgrade: a single-use ticket (`?ticket=`, for
/// browsers, so no token is ever in a URL), else the subprotocol entry, else the
/// bearer header.
#[derive(Debug)]
pub(crate) enum AppCaller {
    /// A token was presented and is good.
    Token(Principal),
    /// A ticket was presented, from `source`; it is taken (or refused) by [`redeem`]
    /// for the environment in the path.
    Ticket(String, Source),
}

impl FromRequestParts<AppState> for AppCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Each parameter at most once, as everywhere: `?ticket=a&ticket=b` read as the
        // last would let a proxy that logs or checks the first disagree with the host.
        let Params(query) = Params::from_request_parts(parts, state).await?;
        // Refused before a ticket is looked at too: the rule is one per request.
        let header = bearer(parts)?;
        if let Some(ticket) = query.get("ticket") {
            return Ok(AppCaller::Ticket(ticket.clone(), source_of(parts)));
        }
        let secret = subprotocol_token(parts).or(header);
        authenticate(state, parts, secret).map(AppCaller::Token)
    }
}

/// Takes the ticket `secret` for `opening`. A bad ticket counts as a failed
/// authentication of `source`, like a bad token.
pub(crate) fn redeem(
    state: &AppState,
    source: Source,
    secret: &str,
    opening: Opening<'_>,
) -> Result<Ticket, ApiError> {
    let remote = source.addr;
    let throttled = |t: Throttled| {
        audited::refused(state, remote, action::AUTH_THROTTLED, &t.to_string());
        ApiError::throttled(t.to_string(), t.retry_after_secs())
    };
    state.throttle.check(source).map_err(throttled)?;
    state.tickets.redeem(secret, opening).map_err(|bad| {
        let reason = bad.to_string();
        audited::refused(state, remote, action::AUTH_REFUSED, &reason);
        match state.throttle.failed(source) {
            Err(t) => throttled(t),
            Ok(()) => ApiError::unauthorized(reason),
        }
    })
}
