//! `/api/v1/tokens`: admins make tokens for users (the secret is answered once),
//! anyone lists and revokes their own user's tokens (admins: everyone's), and an
//! admin rotates the operator's token.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::audited::{Act, Remote, audited};
use super::body::{Body, Fields, FromObject};
use super::{ApiError, AppState};
use crate::audit::action;
use crate::tenancy::{Issued, NewToken, Principal, Scope, TokenView};

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

pub(crate) async fn create(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Body(CreateBody(new)): Body<CreateBody>,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
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
pub(crate) async fn list(
    who: Principal,
    State(s): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let user = query.get("user");
    if let Some(user) = user {
        crate::tenancy::check_user(user)
            .map_err(|e| ApiError::bad_request(format!("user: {e}")))?;
    }
    Ok(Json(s.tokens.list(&who, user.map(String::as_str))))
}

/// `DELETE /api/v1/tokens/{id}`: the revoked token, as it was listed.
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

/// `POST /api/v1/tokens/admin/rotate`: the new operator token, answered once.
pub(crate) async fn rotate_admin(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "token": token })))
}

/// `GET /api/v1/whoami`: the calling token as the host sees it (any valid token).
pub(crate) async fn whoami(who: Principal) -> Json<Value> {
    Json(json!({
        "user": who.user(),
        "tokenId": who.token_id(),
        "scopes": who.scopes(),
        "environments": who.environments(),
    }))
}
