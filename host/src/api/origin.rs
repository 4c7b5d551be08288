//! Whether a request comes from a web page, and whether of the host's own origin. The
//! host honours no credential a browser sends on its own (no cookie, no basic auth),
//! so a page can only make its visitor's browser present made-up tokens and tickets;
//! the throttle counts those apart by [`Page`], so that no site the operator visits
//! can lock the operator's tools (the CLI, local runtimes) out of their own address.

use axum::extract::FromRequestParts;
use axum::http::header::{HOST, ORIGIN};
use axum::http::request::Parts;

use super::audited::remote_of;
use crate::throttle::{Page, Source};

/// Which page, if any, sent `parts`: none without an `Origin` (the CLI, a runtime, an
/// app's backend); [`Page::Own`] when it names the host it calls (its `Host`);
/// otherwise (another host or port, an opaque `null`, anything unreadable, or no
/// `Host` to compare with) [`Page::Other`]. Browsers send `Origin` on every WebSocket
/// handshake and cross-origin request.
pub(crate) fn page_of(parts: &Parts) -> Page {
    let Some(origin) = parts.headers.get(ORIGIN) else {
        return Page::None;
    };
    let host = (parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let called = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority);
    match (called, host) {
        (Some(called), Some(host)) if called.eq_ignore_ascii_case(host.trim()) => Page::Own,
        _ => Page::Other,
    }
}

/// Where a request came from, as the failed-authentication throttle counts it.
pub(crate) fn source_of(parts: &Parts) -> Source {
    Source {
        addr: remote_of(parts),
        page: page_of(parts),
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
    fn an_origin_is_the_hosts_own_only_when_it_names_the_host_called() {
        let host = Some("127.0.0.1:2719");
        assert_eq!(page_of(&parts(host, None)), Page::None);
        assert_eq!(
            page_of(&parts(host, Some("http://127.0.0.1:2719"))),
            Page::Own
        );
        assert_eq!(
            page_of(&parts(
                Some("Tether.Example"),
                Some("https://tether.example")
            )),
            Page::Own
        );
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:2720",
            "http://127.0.0.1",
            "null",
            "127.0.0.1:2719",
        ] {
            assert_eq!(page_of(&parts(host, Some(origin))), Page::Other, "{origin}");
        }
        // No `Host` to compare with: a browser's `Origin` is not taken as the host's.
        assert_eq!(
            page_of(&parts(None, Some("http://127.0.0.1:2719"))),
            Page::Other
        );
    }
}
