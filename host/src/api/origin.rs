//! Whether a request comes from a web page of another origin than the host's. The
//! host honours no credential a browser sends on its own (no cookie, no basic auth),
//! so such a page can only make its visitor's browser present made-up tokens and
//! tickets; the throttle counts those apart ([`crate::throttle::Source`]), so that any
//! site the operator visits cannot lock the operator's own address out.

use axum::extract::FromRequestParts;
use axum::http::header::{HOST, ORIGIN};
use axum::http::request::Parts;

use super::audited::remote_of;
use crate::throttle::Source;

/// Whether `parts` carries an `Origin` (browsers send one on every WebSocket handshake
/// and cross-origin request) that is not the host it calls: another host or port
/// than its `Host`, an opaque `null`, or anything unreadable. No `Origin` (the CLI, a
/// runtime, an app's backend) and the host's own pages (the dashboard) are not.
pub(crate) fn other_origin(parts: &Parts) -> bool {
    let Some(origin) = parts.headers.get(ORIGIN) else {
        return false;
    };
    let host = (parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let called = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority);
    match (called, host) {
        (Some(called), Some(host)) => !called.eq_ignore_ascii_case(host.trim()),
        _ => true,
    }
}

/// Where a request came from, as the failed-authentication throttle counts it.
pub(crate) fn source_of(parts: &Parts) -> Source {
    Source {
        addr: remote_of(parts),
        other_origin: other_origin(parts),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(source_of(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(host: Option<&str>, origin: Option<&str>) -> Parts {
        let mut req = Request::get("/ws/events");
        if let Some(host) = host {
            req = req.header(HOST, host);
        }
        if let Some(origin) = origin {
            req = req.header(ORIGIN, origin);
        }
        req.body(()).expect("request").into_parts().0
    }

    #[test]
    fn only_an_origin_naming_another_host_is_another_origin() {
        let host = Some("127.0.0.1:2719");
        assert!(!other_origin(&parts(host, None)));
        assert!(!other_origin(&parts(host, Some("http://127.0.0.1:2719"))));
        assert!(!other_origin(&parts(
            Some("Tether.Example"),
            Some("https://tether.example")
        )));
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:2720",
            "http://127.0.0.1",
            "null",
            "127.0.0.1:2719",
        ] {
            assert!(other_origin(&parts(host, Some(origin))), "{origin}");
        }
        // No `Host` to compare with: a browser's `Origin` is not taken as the host's.
        assert!(other_origin(&parts(None, Some("http://127.0.0.1:2719"))));
    }
}
