//! A minimal `wasi:http` GET, called directly so the test exercises the host's
//! outgoing-handler hooks and nothing else.

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub(crate) mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "tether:hostile/http-client",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use bindings::wasi::http::outgoing_handler;
use bindings::wasi::http::types::{Fields, OutgoingRequest, Scheme};

/// GETs `url` (`http://host:port/path`), returning the status or the error code.
pub(crate) fn get(url: &str) -> Result<u16, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("not a URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "scheme rejected".to_owned())?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "authority rejected".to_owned())?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| "path rejected".to_owned())?;
    let pending = outgoing_handler::handle(request, None).map_err(|code| format!("{code:?}"))?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response.status()),
        Some(Ok(Err(code))) => Err(format!("{code:?}")),
        Some(Err(())) => Err("response already taken".to_owned()),
        None => Err("no response after waiting".to_owned()),
    }
}

/// Creates `count` header-field resources and keeps them all, to fill the host's
/// resource table; returns how many it got (it traps first if the table is capped).
pub(crate) fn hoard_handles(count: u64) -> usize {
    let mut held = Vec::new();
    for _ in 0..count {
        held.push(Fields::new());
    }
    held.len()
}
