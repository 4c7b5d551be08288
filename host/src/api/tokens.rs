//! `/api/v1/tokens`: admins make tokens for users (the secret is answered once),
//! anyone lists and revokes their own user's tokens (admins: everyone's), and an
//! admin rotates the operator's token.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::audited::{Act, Remote, audited};
use super::body::{Deferred, Fields, FromObject};
use super::error::ErrorBody;
use super::params::Params;
use super::{ApiError, AppState};
use crate::audit::action;
use crate::tenancy::{Issued, NewToken, Principal, Scope, Scopes, TokenView};

/// Most scope names a request may list.
const MAX_SCOPE_NAMES: usize = 16;
/// Most environment ids a request may list (the rule itself is the tenancy's).
const MAX_ENVIRONMENT_IDS: usize = 64;

/// `POST /api/v1/tokens`.
#[derive(Debug)]
pub(crate) struct CreateBody(NewToken);

impl FromObject for CreateBody {
    const FIELDS: &'static [&'static str] =
        &["user", "scopes", "environments", "expiresInSecs", "note"];

    fn from_object(f: &mut Fields) -> Result<Self, String> {
        Ok(Self(NewToken {
            user: f.string("user")?,
            scopes: f.strings("scopes", MAX_SCOPE_NAMES)?,
            environments: f.strings("environments", MAX_ENVIRONMENT_IDS)?,
            expires_in_secs: f.unsigned("expiresInSecs")?,
            note: f.optional_string("note")?,
        }))
    }
}

/// `POST /api/v1/tokens` (admin): 201 with the token and, this once, its secret.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, description = "Made; `token` is the secret, shown only here.", body = Issued),
        (status = 400, description = "The body is not JSON (`invalid_json`); or it stopped arriving for `[server] header_timeout_secs` or was not whole within `body_timeout_secs`, is not an object, has an unknown field or a bad value (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "The body is over 2 MiB (`body_too_large`).", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json` (`unsupported_media_type`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`), or the host holds 10,000 user tokens, as many as it takes (`quota_exceeded`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
        (status = 500, description = "The tokens file or the audit log could not be written (`store_error`, `audit_failed`).", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only (`storage_unavailable`): nothing was changed.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): nothing was changed.", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn create(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    body: Deferred<CreateBody>,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
    // Before the body is read: only an admin makes tokens; anyone else is refused at
    // once, the body (and the user in it) unread, so the audit entry has no target.
    if let Err(e) = who.require(Scope::Admin) {
        let act = Act {
            who: &who,
            remote,
            action: action::TOKEN_CREATE,
            target: "",
            owner: None,
        };
        return audited(&s, act, Err(e.into())).await;
    }
    let CreateBody(new) = body.read().await?;
    let user = new.user.clone();
    let result = create_for(&who, &s, new).await;
    let target = result
        .as_ref()
        .map_or_else(|_| user.clone(), |i| i.view.id.clone());
    let act = Act {
        who: &who,
        remote,
        action: action::TOKEN_CREATE,
        target: &target,
        owner: Some(&user),
    };
    let issued = audited(&s, act, result).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

async fn create_for(who: &Principal, s: &AppState, new: NewToken) -> Result<Issued, ApiError> {
    who.require(Scope::Admin)?;
    if let Some(envs) = &new.environments {
        crate::tenancy::check_user(&new.user).map_err(ApiError::bad_request)?;
        s.manager.check_owned(&new.user, envs)?;
    }
    Ok(s.tokens.create(new).await?)
}

/// `GET /api/v1/tokens[?user=USER]`.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    params(
        ("user" = Option<String>, Query, description = "Only this user's tokens (another user's need `admin`)."),
    ),
    responses(
        (status = 200, description = "The caller's user's tokens (every user's, for `admin`), never their secrets; a token that lacks a user scope or is limited to named environments sees only itself.", body = Vec<TokenView>),
        (status = 400, description = "`user` is not a valid user name (`invalid_request`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    who: Principal,
    State(s): State<AppState>,
    Params(query): Params,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let user = query.get("user");
    if let Some(user) = user {
        crate::tenancy::check_user(user)
            .map_err(|e| ApiError::bad_request(format!("user: {e}")))?;
    }
    Ok(Json(s.tokens.list(&who, user.map(String::as_str))))
}

/// `DELETE /api/v1/tokens/{id}`: the revoked token, as it was listed.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(
        ("id" = String, Path, description = "Token id (`tok_…`)."),
    ),
    responses(
        (status = 200, description = "Revoked; its connections are closed.", body = TokenView),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The caller's token lacks a user scope or is limited to named environments, and `id` is not its own: such a token may revoke only itself (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such token, or another user's (`not_found`).", body = ErrorBody),
        (status = 500, description = "The tokens file or the audit log could not be written (`store_error`, `audit_failed`).", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only (`storage_unavailable`): nothing was changed.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): nothing was changed.", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn revoke(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let result = s.tokens.revoke(&who, &id).await.map_err(ApiError::from);
    let owner = result.as_ref().ok().map(|v| v.user.clone());
    let act = Act {
        who: &who,
        remote,
        action: action::TOKEN_REVOKE,
        target: &id,
        owner: owner.as_deref(),
    };
    Ok(Json(audited(&s, act, result).await?))
}

/// The operator's new token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Rotated {
    /// The new secret, shown only in this answer; the old one is refused from now on.
    token: String,
}

/// `POST /api/v1/tokens/admin/rotate`: the new operator token, answered once.
#[utoipa::path(
    post,
    path = "/api/v1/tokens/admin/rotate",
    tag = "tokens",
    responses(
        (status = 200, description = "The new operator token; the old one is refused from now on.", body = Rotated),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
        (status = 409, description = "The operator token comes from `TETHER_API_TOKEN` (`conflict`).", body = ErrorBody),
        (status = 500, description = "The token file or the audit log could not be written (`store_error`, `audit_failed`).", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only (`storage_unavailable`): nothing was changed.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): nothing was changed.", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn rotate_admin(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
) -> Result<Json<Rotated>, ApiError> {
    let result = match who.require(Scope::Admin) {
        Err(e) => Err(e.into()),
        Ok(()) => s.tokens.rotate_admin().await.map_err(ApiError::from),
    };
    let act = Act {
        who: &who,
        remote,
        action: action::TOKEN_ROTATE,
        target: crate::tenancy::ADMIN_TOKEN_ID,
        owner: Some(crate::tenancy::ADMIN_USER),
    };
    let token = audited(&s, act, result).await?;
    Ok(Json(Rotated { token }))
}

/// The calling token as the host sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WhoAmI {
    /// The user it acts for (`admin` for the operator's token).
    user: String,
    /// Its id (never its secret).
    token_id: String,
    /// Its scopes.
    scopes: Scopes,
    /// The environments it is limited to (`null`: all of the user's).
    #[schema(required = true)]
    environments: Option<Vec<String>>,
}

/// `GET /api/v1/whoami`: the calling token as the host sees it (any valid token).
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "tokens",
    responses(
        (status = 200, description = "The calling token.", body = WhoAmI),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn whoami(who: Principal) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: who.user().to_owned(),
        token_id: who.token_id().to_owned(),
        scopes: who.scopes(),
        environments: who.environments().map(<[String]>::to_vec),
    })
}
