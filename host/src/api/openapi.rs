//! The REST API described by the code: the OpenAPI document the router's `routes!`
//! lists build up (every handler carries its `#[utoipa::path]`), completed here with
//! what no single handler owns (the bearer scheme, the table of error codes, the body
//! limit), served at `GET /api/v1/openapi.json` and browsable at `/api/docs` (Swagger
//! UI, its assets built into the binary). Neither needs a token: the spec holds no
//! secrets. `docs/openapi.json` is a checked-in copy a test keeps in step.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use axum::extract::Path;
use axum::http::header::{
    CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Redirect, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::Config;

use super::ApiError;
use super::body::MAX_BODY_BYTES;
use super::error::{ErrorBody, ErrorCode};
use super::providers::MAX_COMPONENT_BYTES;

/// Where the spec is served.
pub(crate) const SPEC_PATH: &str = "/api/v1/openapi.json";

/// The parts of the document no handler owns; `routes!` adds the paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tether",
        description = "Control plane for remote agent environments: REST for environments, providers, tokens, tickets, templates and the audit log; WebSockets for apps and runtimes (`docs/protocol.md`)."
    ),
    modifiers(&Contract),
    components(schemas(ErrorBody, ErrorCode)),
    tags(
        (name = "environments", description = "Environments: records with live status, and their logs."),
        (name = "providers", description = "Loaded providers, what each asks for and is granted (admin)."),
        (name = "tokens", description = "API tokens: made by admins, listed and revoked by their users."),
        (name = "tickets", description = "Single-use tickets for browser WebSockets."),
        (name = "templates", description = "The operator's templates apps provision environments from."),
        (name = "audit", description = "The audit log (admin)."),
        (name = "config", description = "The operator's `tether.toml` in force (admin)."),
        (name = "removals", description = "Deleted environments whose resource the host still tries to remove (admin)."),
        (name = "cluster", description = "Cluster mode: the hosts sharing one NATS JetStream, and what each runs (admin)."),
        (name = "websockets", description = "Upgrades for apps and runtimes; what flows after the upgrade is in `docs/protocol.md`."),
        (name = "host", description = "Health, metrics and this description."),
    )
)]
pub(crate) struct ApiDoc;

/// Adds the bearer scheme and the contract's prose, which comes from the code
/// (codes, statuses, limits) so it cannot drift from it.
struct Contract;

impl Modify for Contract {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>`: the operator's token or a user token. The scopes listed on an operation are the ones it needs (`admin` allows every one). A runtime presents its environment's runtime token the same way.",
                    ))
                    .build(),
            ),
        );
        let description = api.info.description.get_or_insert_with(String::new);
        description.push_str(&contract_text());
    }
}

/// The error table and the limits, in Markdown.
fn contract_text() -> String {
    let mut text = format!(
        "\n\nErrors are `{{\"error\": {{\"code\", \"message\"}}}}`. A JSON request body is at most {MAX_BODY_BYTES} bytes (a provider component for `PUT /api/v1/providers/{{name}}`, at most {MAX_COMPONENT_BYTES}); a larger one is answered 413 `body_too_large`.\n\n| code | status | meaning |\n|---|---|---|\n"
    );
    for code in ErrorCode::ALL {
        let _ = writeln!(
            text,
            "| `{}` | {} | {} |",
            code.as_str(),
            code.status().as_u16(),
            code.meaning()
        );
    }
    text
}

/// What every operation taking a token says of a request with several
/// `Authorization` headers ([`super::caller::bearer`]).
const SEVERAL_AUTHORIZATIONS: &str = "Several `Authorization` headers (`invalid_request`).";

/// Gives every operation that takes a token the 400 of a request carrying several
/// `Authorization` headers: no handler owns that refusal, the token's extractor does.
pub(super) fn refuse_several_authorizations(api: &mut utoipa::openapi::OpenApi) {
    use std::collections::btree_map::Entry;
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            // No token, or one optional (`/healthz`): several headers are not refused.
            let optional = |s: &Vec<SecurityRequirement>| {
                s.is_empty() || s.contains(&SecurityRequirement::default())
            };
            if op.security.as_ref().is_none_or(optional) {
                continue;
            }
            let body = || {
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build()
            };
            match op.responses.responses.entry("400".to_owned()) {
                Entry::Occupied(mut said) => {
                    if let RefOr::T(response) = said.get_mut() {
                        response.description =
                            format!("{} {SEVERAL_AUTHORIZATIONS}", response.description);
                        // A WebSocket route's 400 may say only its plain-text refusal.
                        let json = "application/json".to_owned();
                        if !response.content.contains_key(&json) {
                            response.content.shift_insert(0, json, RefOr::T(body()));
                        }
                    }
                }
                Entry::Vacant(unsaid) => {
                    let response = ResponseBuilder::new()
                        .description(SEVERAL_AUTHORIZATIONS)
                        .content("application/json", body())
                        .build();
                    unsaid.insert(RefOr::T(response));
                }
            }
        }
    }
}

/// The document as served, made once.
static SPEC_JSON: LazyLock<String> = LazyLock::new(|| {
    // Serialising a document of strings and maps cannot fail; an empty object would
    // still be valid JSON if it somehow did.
    super::spec()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
});

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "host",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API (no token needed).", content_type = "application/json", body = Object),
    ),
)]
pub(crate) async fn spec_json() -> Response {
    ([(CONTENT_TYPE, "application/json")], SPEC_JSON.as_str()).into_response()
}

/// Swagger UI's settings: the document above.
static SWAGGER: LazyLock<Arc<Config<'static>>> =
    LazyLock::new(|| Arc::new(Config::from(SPEC_PATH)));

/// `/api/docs` sends browsers to `/api/docs/`, so the page's relative asset links
/// resolve below it.
#[utoipa::path(
    get,
    path = "/api/docs",
    tag = "host",
    responses(
        (status = 303, description = "To `/api/docs/`.", headers(("location" = String, description = "`/api/docs/`"))),
    ),
)]
pub(crate) async fn docs_redirect() -> Redirect {
    Redirect::to("/api/docs/")
}

/// The interactive page.
#[utoipa::path(
    get,
    path = "/api/docs/",
    tag = "host",
    responses(
        (status = 200, description = "Swagger UI over `/api/v1/openapi.json`.", content_type = "text/html", body = String),
    ),
)]
pub(crate) async fn docs_index() -> Result<Response, ApiError> {
    docs_file(Path("index.html".to_owned())).await
}

/// What the docs page's answers add to their type: no other site may frame the page
/// (it runs on the dashboard's origin and takes a token in its Authorize dialog), no
/// browser second-guesses a type, no URL leaves in a `Referer`. Swagger UI sets inline
/// styles, so its scripts and styles are not restricted the way the dashboard's are.
const DOCS_HEADERS: [(axum::http::HeaderName, &str); 4] = [
    (CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
    (X_FRAME_OPTIONS, "DENY"),
    (X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (REFERRER_POLICY, "no-referrer"),
];

/// One of the page's assets.
#[utoipa::path(
    get,
    path = "/api/docs/{file}",
    tag = "host",
    params(("file" = String, Path, description = "An asset of Swagger UI (`swagger-ui.css`, `swagger-initializer.js`, …).")),
    responses(
        (status = 200, description = "The asset (HTML, JavaScript, CSS or an image)."),
        (status = 404, description = "No such asset (`not_found`).", body = ErrorBody),
    ),
)]
pub(crate) async fn docs_file(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = utoipa_swagger_ui::serve(&file, SWAGGER.clone())
        .map_err(|e| {
            ApiError::new(
                ErrorCode::InternalError,
                format!("preparing the docs page: {e}"),
            )
        })?
        .ok_or_else(|| ApiError::not_found("no such file of the docs page"))?;
    let mut response = (
        [(CONTENT_TYPE, asset.content_type)],
        asset.bytes.into_owned(),
    )
        .into_response();
    for (name, value) in DOCS_HEADERS {
        (response.headers_mut()).insert(name, axum::http::HeaderValue::from_static(value));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set to rewrite `docs/openapi.json` from the code instead of comparing.
    const UPDATE: &str = "TETHER_UPDATE_OPENAPI";

    #[test]
    fn the_checked_in_spec_is_the_one_the_code_serves() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let served = format!("{}\n", SPEC_JSON.as_str());
        if std::env::var_os(UPDATE).is_some() {
            std::fs::write(&path, &served).expect("writing docs/openapi.json");
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        if checked_in != served {
            let line = (checked_in.lines().zip(served.lines()))
                .position(|(a, b)| a != b)
                .unwrap_or(checked_in.lines().count().min(served.lines().count()));
            panic!(
                "docs/openapi.json differs from the spec the code serves (first at line {}); \
                 if the change is meant, rewrite it with \
                 `{UPDATE}=1 cargo test -p tether --lib the_checked_in_spec` and commit it",
                line + 1
            );
        }
    }

    #[test]
    fn the_rest_reference_lists_every_code_with_its_status() {
        let reference = include_str!("../../../docs/rest.md");
        for code in ErrorCode::ALL {
            let row = format!("| {} | `{}` |", code.status().as_u16(), code.as_str());
            assert!(reference.contains(&row), "docs/rest.md has no row {row}");
        }
    }

    #[test]
    fn the_description_gives_every_code_its_status() {
        let spec = super::super::spec();
        let text = spec.info.description.unwrap_or_default();
        for code in ErrorCode::ALL {
            let row = format!("| `{}` | {} |", code.as_str(), code.status().as_u16());
            assert!(text.contains(&row), "no row {row} in\n{text}");
        }
    }
}
