//! Who is calling: the [`Principal`] extractor. A request's bearer token (or, on an
//! app WebSocket, a `tether.bearer.<token>` subprotocol entry, for browsers) is
//! looked up once in the token registry; everything after that asks the principal.
//! This is the one place a request's credentials are read.

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::tenancy::Principal;

/// Prefix of the subprotocol entry carrying the API token.
const TOKEN_PROTOCOL: &str = "tether.bearer.";

/// The bearer token of a request, if it carries one.
pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The token in a `tether.bearer.<token>` subprotocol entry, if one is offered.
fn subprotocol_token(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL))
}

fn authenticate(state: &AppState, secret: Option<&str>) -> Result<Principal, ApiError> {
    match secret {
        Some(secret) => state
            .tokens
            .authenticate(secret)
            .map_err(|refused| ApiError::unauthorized(refused.to_string())),
        None => Err(ApiError::unauthorized(
            "missing API token: send `Authorization: Bearer <token>`",
        )),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, bearer(parts))
    }
}

/// The caller of an app WebSocket upgrade: the subprotocol entry if offered, else
/// the bearer header.
#[derive(Debug)]
pub(crate) struct AppCaller(pub(crate) Principal);

impl FromRequestParts<AppState> for AppCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = subprotocol_token(parts).or_else(|| bearer(parts));
        authenticate(state, secret).map(AppCaller)
    }
}
