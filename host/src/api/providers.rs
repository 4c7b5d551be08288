//! `/api/v1/providers`: the loaded providers as the lifecycle shows them
//! ([`ProviderView`]: description, source, world, grant, denials, config keys,
//! load error). Grants are the operator's business: these need the `admin` scope.
//! `PUT /api/v1/providers/{name}` installs a component sent as the body.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::audited::{Act, Remote, audited};
use super::{ApiError, AppState};
use crate::audit::action;
use crate::lifecycle::ProviderView;
use crate::tenancy::{Principal, Scope};

/// Largest component `PUT` takes.
pub(crate) const MAX_COMPONENT_BYTES: usize = 64 * 1024 * 1024;

pub(crate) async fn list(
    who: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.providers()))
}

pub(crate) async fn get(
    who: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.provider(&name)?))
}

/// `PUT /api/v1/providers/{name}`: the body (`application/wasm`, at most
/// [`MAX_COMPONENT_BYTES`]) becomes the drop-in `{name}.wasm` if it loads and calls
/// itself `name`; 201 with the provider as loaded. Audited as `provider.install`.
pub(crate) async fn install(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    let result = match (who.require(Scope::Admin), body) {
        (Err(e), _) => Err(e.into()),
        (Ok(()), Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("a component is limited to {MAX_COMPONENT_BYTES} bytes"),
            ))
        }
        (Ok(()), Err(rejection)) => Err(ApiError::bad_request(format!(
            "the component could not be read: {rejection}"
        ))),
        (Ok(()), Ok(bytes)) => {
            (s.manager.install_provider(&name, bytes.to_vec()).await).map_err(ApiError::from)
        }
    };
    let act = Act {
        who: &who,
        remote,
        action: action::PROVIDER_INSTALL,
        target: &name,
        owner: None,
    };
    let view = audited(&s, act, result).await?;
    Ok((StatusCode::CREATED, Json(view)))
}
