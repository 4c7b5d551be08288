//! The web dashboard: plain HTML, CSS and ES modules from `host/dashboard/` and the
//! JavaScript client from `clients/js/`, embedded in the binary at build time and
//! served at `/` and `/ui/...`. Nothing is fetched from elsewhere and nothing is built:
//! the files are served as they are in the repository. The pages talk to the same
//! host's REST API and WebSockets, so every response carries a same-origin-only
//! `Content-Security-Policy`. The assets are public; every call they make needs a token.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::ApiError;

/// Scripts, styles, images and connections (WebSockets included: CSP 3 lets `'self'`
/// match `ws:`/`wss:` on the same host and port) from this host only; no inline code,
/// no frames, no plugins, forms only back here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The files are part of the binary, so a new binary may change them: browsers
/// revalidate every time (a 304 costs one small request) instead of guessing a lifetime.
const CACHE: &str = "no-cache";

/// One embedded file.
struct Asset {
    /// The path below `/ui/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! dashboard {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../dashboard/", $path)),
        }
    };
}

macro_rules! client {
    ($path:literal) => {
        Asset {
            path: concat!("client/", $path),
            content_type: JS,
            body: include_bytes!(concat!("../../../clients/js/", $path)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file the dashboard serves. The client is included from `clients/js` itself,
/// never copied, so the dashboard always runs the client the repository tests.
static ASSETS: &[Asset] = &[
    dashboard!("index.html", HTML),
    dashboard!("app.css", CSS),
    dashboard!("favicon.svg", SVG),
    dashboard!("js/main.js", JS),
    dashboard!("js/dom.js", JS),
    dashboard!("js/session.js", JS),
    dashboard!("js/format.js", JS),
    dashboard!("js/views/signin.js", JS),
    dashboard!("js/views/environments.js", JS),
    dashboard!("js/views/environment.js", JS),
    dashboard!("js/views/console.js", JS),
    dashboard!("js/views/providers.js", JS),
    dashboard!("js/views/tokens.js", JS),
    dashboard!("js/views/audit.js", JS),
    dashboard!("js/views/removals.js", JS),
    client!("index.js"),
    client!("src/app.js"),
    client!("src/client.js"),
    client!("src/emitter.js"),
    client!("src/errors.js"),
    client!("src/events.js"),
    client!("src/socket.js"),
];

/// Strong validators, one per asset in [`ASSETS`] order, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let tag = format!("\"{}\"", hex::encode(&digest[..12]));
            HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// `api`'s router with the dashboard's pages beside it.
pub(crate) fn beside<S: Clone + Send + Sync + 'static>(api: Router<S>) -> Router<S> {
    api.merge(routes())
}

/// The dashboard's routes.
fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// The asset at `path` (compared with the fixed list, so the request's path never
/// reaches the filesystem), or 404.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return ApiError::not_found("no such page").into_response();
    };
    let asset = &ASSETS[i];
    let etag = ETAGS[i].clone();
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(CONTENT_TYPE, HeaderValue::from_static(asset.content_type))],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(ETAG, etag);
    h.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_unique_path_and_a_body() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.body.is_empty(), "{} is empty", a.path);
            assert!(
                ASSETS[..i].iter().all(|b| b.path != a.path),
                "{} twice",
                a.path
            );
        }
    }

    #[test]
    fn a_path_outside_the_list_is_404_even_when_it_names_a_file() {
        for path in ["../Cargo.toml", "js/../index.html", "", "client", "client/"] {
            let r = serve(path, &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn a_matching_etag_is_answered_304_with_the_same_headers() {
        let first = serve("app.css", &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, etag.clone());
        let again = serve("app.css", &headers);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[ETAG], etag);
        assert_eq!(again.headers()[CONTENT_SECURITY_POLICY], CSP);
    }

    #[test]
    fn every_local_import_of_a_module_is_served() {
        // A module importing a file missing from ASSETS would fail only in a browser.
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(a.body).unwrap_or_default();
            for line in text
                .lines()
                .filter(|l| l.trim_start().starts_with("import "))
            {
                let Some(spec) = line.split(['\'', '"']).nth(1) else {
                    continue;
                };
                let target = resolve(a.path, spec);
                assert!(
                    ASSETS.iter().any(|b| b.path == target),
                    "{} imports {spec} ({target}), which is not served",
                    a.path
                );
            }
        }
    }

    /// `spec` as imported from the asset at `from`, as a path below `/ui/`.
    fn resolve(from: &str, spec: &str) -> String {
        if let Some(abs) = spec.strip_prefix("/ui/") {
            return abs.to_string();
        }
        let mut parts: Vec<&str> = from.split('/').collect();
        parts.pop();
        for seg in spec.split('/') {
            match seg {
                "." => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        parts.join("/")
    }
}
