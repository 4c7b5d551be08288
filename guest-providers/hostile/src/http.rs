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

/// Keeps up to `count` header-field resources, each given `per_fields` bytes of 4 KiB
/// values, and stops once `stop_at` bytes are held; returns how many resources it
/// kept and the bytes of header values the host took for them. A `fields` that
/// passes the host's limit traps the instance (wasmtime-wasi-http's way), so the
/// caller picks a size under the limit it expects.
pub(crate) fn hoard_headers(count: u64, per_fields: u64, stop_at: u64) -> (usize, u64) {
    let value = vec![b'h'; 4096];
    let (mut held, mut bytes) = (Vec::new(), 0u64);
    while (held.len() as u64) < count && bytes < stop_at {
        let fields = Fields::new();
        let mut given = 0;
        while given + 4096 <= per_fields && bytes < stop_at {
            if fields.append("x-hoard", &value).is_err() {
                break;
            }
            (given, bytes) = (given + 4096, bytes + 4096);
        }
        held.push(fields);
    }
    (held.len(), bytes)
}

/// Keeps up to `count` outgoing requests that are never sent, each with its body
/// written until the host takes no more, and stops once `stop_at` bytes are held;
/// returns how many requests it kept and the body bytes the host took for them.
pub(crate) fn hoard_bodies(count: u64, stop_at: u64) -> (usize, u64) {
    let chunk = vec![b'b'; 1 << 20];
    let (mut held, mut bytes) = (Vec::new(), 0u64);
    while (held.len() as u64) < count && bytes < stop_at {
        let request = OutgoingRequest::new(Fields::new());
        let Ok(body) = request.body() else { break };
        let Ok(stream) = body.write() else { break };
        while bytes < stop_at {
            let room = match stream.check_write() {
                Ok(0) | Err(_) => break,
                Ok(n) => (n as usize).min(chunk.len()),
            };
            if stream.write(&chunk[..room]).is_err() {
                break;
            }
            bytes += room as u64;
        }
        // Dropped in this order: a stream before its body, a body before its request.
        held.push((stream, body, request));
    }
    (held.len(), bytes)
}
