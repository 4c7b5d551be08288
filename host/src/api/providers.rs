//! `/api/v1/providers`: the loaded providers as the lifecycle shows them
//! ([`ProviderView`]: description, source, world, grant, denials, config keys,
//! load error). Grants are the operator's business: these need the `admin` scope.
//! `PUT /api/v1/providers/{name}` installs a component sent as the body.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;

use super::audited::{Act, Remote, audited};
use super::body::is_component;
use super::error::{ErrorBody, ErrorCode};
use super::{ApiError, AppState};
use crate::audit::action;
use crate::lifecycle::ProviderView;
use crate::tenancy::{Principal, Scope};

/// Largest component `PUT` takes.
pub(crate) const MAX_COMPONENT_BYTES: usize = crate::engine::MAX_COMPONENT_BYTES;

/// The body of `PUT /api/v1/providers/{name}`, for the spec: the component's bytes.
pub(crate) struct ComponentBytes;

impl utoipa::PartialSchema for ComponentBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/wasm")
            .description(Some("The component's bytes, as built (`.wasm`)."))
            .into()
    }
}

impl utoipa::ToSchema for ComponentBytes {}

/// `GET /api/v1/providers` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/providers",
    tag = "providers",
    responses(
        (status = 200, description = "Every loaded provider.", body = Vec<ProviderView>),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn list(
    who: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.providers()))
}

/// `GET /api/v1/providers/{name}` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/providers/{name}",
    tag = "providers",
    params(
        ("name" = String, Path, description = "Provider name."),
    ),
    responses(
        (status = 200, description = "The provider.", body = ProviderView),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
        (status = 404, description = "No provider of that name is loaded; the message says why a file meant to provide it did not load (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn get(
    who: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.provider(&name)?))
}

/// `PUT /api/v1/providers/{name}`: the body (`application/wasm` or
/// `application/octet-stream`, else 415, at most 64 MiB) becomes the drop-in `{name}.wasm` if it loads and calls itself `name`; 201 with
/// the provider as loaded. Audited as `provider.install`.
#[utoipa::path(
    put,
    path = "/api/v1/providers/{name}",
    tag = "providers",
    params(
        ("name" = String, Path, description = "Provider name; the file becomes `{name}.wasm` in the providers directory."),
    ),
    request_body(content = ComponentBytes, description = "A WebAssembly component (`wasm32-wasip2`) exporting the provider world, at most 64 MiB, sent as `application/wasm` (or `application/octet-stream`).", content_type = "application/wasm"),
    responses(
        (status = 201, description = "Installed and loaded.", body = ProviderView),
        (status = 400, description = "The component does not load, calls itself by another name, or stopped arriving for `[server] header_timeout_secs` or was not whole within `body_timeout_secs` (`invalid_request`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`); answered before the body is read.", body = ErrorBody),
        (status = 413, description = "The component is over 64 MiB (`body_too_large`).", body = ErrorBody),
        (status = 415, description = "The body was not sent as `application/wasm` or `application/octet-stream` (`unsupported_media_type`).", body = ErrorBody),
        (status = 500, description = "The file or the audit log could not be written (`internal_error`, `audit_failed`).", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn install(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    let result = match read_component(&who, &s, request).await {
        Ok(bytes) => {
            (s.manager.install_provider(&name, bytes.to_vec()).await).map_err(ApiError::from)
        }
        Err(e) => Err(e),
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

/// The component `request` carries, read only once the caller is known to be an
/// admin and the type is right: read first, anyone with a token could make the host
/// hold up to [`MAX_COMPONENT_BYTES`] per connection before being refused.
async fn read_component(
    who: &Principal,
    s: &AppState,
    request: Request,
) -> Result<Bytes, ApiError> {
    who.require(Scope::Admin)?;
    // As JSON routes refuse a body not sent as JSON: a client that sends a component
    // as something else (a form, text) has a bug worth hearing about.
    if !is_component(request.headers().get(CONTENT_TYPE)) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the component as `Content-Type: application/wasm` (or `application/octet-stream`)",
        ));
    }
    Bytes::from_request(request, s).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::BodyTooLarge,
                format!("a component is limited to {MAX_COMPONENT_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request(format!("the component could not be read: {rejection}"))
        }
    })
}
