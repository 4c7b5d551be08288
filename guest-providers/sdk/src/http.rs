//! A small blocking HTTP client over `wasi:http/outgoing-handler`, for providers
//! whose resource lives behind an HTTP API.
//!
//! Every request goes through the host's broker: it is sent only when the URL is
//! both requested in the provider's `info()` and granted by the operator, and
//! refusals come back as `denied` errors that say which key to turn. `https` is the
//! host's TLS: the certificate is checked against the roots the operator chose, and a
//! refused certificate or a failed handshake is an error that says so.
//!
//! Bodies are bounded: [`MAX_RESPONSE_BYTES`] of a response are read at most.
//! The bindings are the `wasip2` crate's pregenerated ones, so the SDK needs no
//! WIT files beyond the provider world.

use serde_json::Value;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingResponse, Method as WasiMethod, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

use crate::ProviderError;

/// The most of a response body [`Request::send`] reads; a longer one is an error.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Largest chunk `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl Method {
    fn wasi(self) -> WasiMethod {
        match self {
            Self::Get => WasiMethod::Get,
            Self::Post => WasiMethod::Post,
            Self::Put => WasiMethod::Put,
            Self::Patch => WasiMethod::Patch,
            Self::Delete => WasiMethod::Delete,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// A request being built: method, URL, headers and an optional body.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    timeout_ms: Option<u64>,
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body bytes (at most [`MAX_RESPONSE_BYTES`]).
    pub body: Vec<u8>,
}

/// A GET of `url`.
pub fn get(url: impl Into<String>) -> Request {
    Request::new(Method::Get, url)
}

/// A POST to `url`.
pub fn post(url: impl Into<String>) -> Request {
    Request::new(Method::Post, url)
}

/// A DELETE of `url`.
pub fn delete(url: impl Into<String>) -> Request {
    Request::new(Method::Delete, url)
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// Sets a JSON body and its content type.
    pub fn json(mut self, value: &Value) -> Self {
        self.body = Some(value.to_string().into_bytes());
        self.header("content-type", "application/json")
    }

    /// Asks for connect and first-byte timeouts of `ms` milliseconds; the host
    /// applies the smaller of this and its own limits.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Sends the request and reads the whole response.
    ///
    /// Any status is a response (check [`Response::status`]); errors are for
    /// requests that got no response: refused by the host (`denied`), a malformed
    /// URL (`invalid-input`) or a network failure (`failed`).
    pub fn send(self) -> Result<Response, ProviderError> {
        let url = Url::parse(&self.url)?;
        let what = format!("{} {}", self.method.as_str(), self.url);
        let headers = Fields::from_list(&self.headers).map_err(|err| {
            ProviderError::invalid_input(format!("{what}: a header is invalid ({err:?})"))
        })?;
        let request = OutgoingRequest::new(headers);
        let refused = |part: &str| ProviderError::invalid_input(format!("{what}: bad {part}"));
        request
            .set_method(&self.method.wasi())
            .map_err(|()| refused("method"))?;
        request
            .set_scheme(Some(&url.scheme))
            .map_err(|()| refused("scheme"))?;
        request
            .set_authority(Some(&url.authority))
            .map_err(|()| refused("host"))?;
        request
            .set_path_with_query(Some(&url.path))
            .map_err(|()| refused("path"))?;
        let options = self.timeout_ms.map(|ms| {
            let options = RequestOptions::new();
            let nanos = ms.saturating_mul(1_000_000);
            // The host may refuse a value; it then applies its own limits.
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
            options
        });
        let body = request
            .body()
            .map_err(|()| ProviderError::failed(format!("{what}: no request body")))?;
        let pending = outgoing_handler::handle(request, options)
            .map_err(|code| error_for(&what, url.https, &code))?;
        // A request the host refuses (a denied destination, say) closes its body, so
        // writing it may fail first: the response says why, so it is asked before the
        // write's own error is reported.
        let written = write_body(&what, body, self.body.as_deref());
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(error_for(&what, url.https, &code)),
            Some(Err(())) | None => {
                return Err(written
                    .err()
                    .unwrap_or_else(|| ProviderError::failed(format!("{what}: no response"))));
            }
        };
        written?;
        read_response(&what, response)
    }
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as JSON (`null` for an empty body).
    pub fn json(&self) -> Result<Value, ProviderError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|err| {
            ProviderError::failed(format!(
                "the response (status {}) is not JSON: {err}",
                self.status
            ))
        })
    }

    /// The body as text, lossily decoded and cut to `max` characters, for messages.
    pub fn text_excerpt(&self, max: usize) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.chars().count() <= max {
            return text.to_owned();
        }
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// Writes the request body (if any) and finishes it.
fn write_body(what: &str, body: OutgoingBody, bytes: Option<&[u8]>) -> Result<(), ProviderError> {
    let failed = |detail: String| ProviderError::failed(format!("{what}: {detail}"));
    if let Some(bytes) = bytes {
        let stream = body
            .write()
            .map_err(|()| failed("request body unavailable".to_owned()))?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|err| failed(format!("writing the request body: {err:?}")))?;
        }
        // The stream is a child of the body: it has to go before `finish`.
        drop(stream);
    }
    OutgoingBody::finish(body, None).map_err(|code| failed(format!("{code:?}")))
}

/// Reads the status and the whole (bounded) body.
fn read_response(what: &str, response: IncomingResponse) -> Result<Response, ProviderError> {
    let failed = |detail: String| ProviderError::failed(format!("{what}: {detail}"));
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| failed("response body unavailable".to_owned()))?;
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| failed("response body unavailable".to_owned()))?;
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(failed(format!(
                            "the response body is over {MAX_RESPONSE_BYTES} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(err)) => {
                    return Err(failed(format!(
                        "reading the response: {}",
                        err.to_debug_string()
                    )));
                }
            }
        }
    }
    Ok(Response { status, body })
}

/// A provider error for a request that got no response.
fn error_for(what: &str, https: bool, code: &ErrorCode) -> ProviderError {
    match code {
        ErrorCode::HttpRequestDenied => ProviderError::denied(format!(
            "{what}: the host refused this destination: it is not among the URLs this \
             provider requested, or the operator has not granted it (urls in \
             [providers.<name>] of tether.toml)"
        )),
        ErrorCode::DestinationIpProhibited => ProviderError::denied(format!(
            "{what}: the host refused the address this name resolves to (loopback, \
             link-local and metadata addresses need a grant naming them literally)"
        )),
        ErrorCode::ConnectionLimitReached => ProviderError::denied(format!(
            "{what}: the host's connection limit is reached (net.max_connections)"
        )),
        ErrorCode::TlsCertificateError => ProviderError::failed(format!(
            "{what}: the server's TLS certificate was refused (unknown CA, another name, \
             or expired); a private CA must be added by the operator ([net] extra_ca_files \
             in tether.toml)"
        )),
        ErrorCode::TlsAlertReceived(alert) => ProviderError::failed(format!(
            "{what}: the TLS handshake failed: the server sent alert {}",
            alert.alert_message.as_deref().unwrap_or("(no description)")
        )),
        ErrorCode::TlsProtocolError => {
            ProviderError::failed(format!("{what}: the TLS handshake failed"))
        }
        ErrorCode::HttpProtocolError if https => ProviderError::failed(format!(
            "{what}: the host refused https (a host build without TLS); see SECURITY.md"
        )),
        ErrorCode::ConnectionRefused => {
            ProviderError::failed(format!("{what}: connection refused"))
        }
        ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout => {
            ProviderError::failed(format!("{what}: timed out"))
        }
        ErrorCode::DnsError(payload) => ProviderError::failed(format!(
            "{what}: the name did not resolve ({})",
            payload.rcode.as_deref().unwrap_or("no detail")
        )),
        other => ProviderError::failed(format!("{what}: {other:?}")),
    }
}

/// The parts of an absolute `http(s)://host[:port][/path][?query]` URL that
/// `wasi:http` wants.
struct Url {
    scheme: Scheme,
    https: bool,
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Self, ProviderError> {
        let bad = |why: &str| ProviderError::invalid_input(format!("URL {url:?}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("needs http://"))?;
        let (scheme, https) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (Scheme::Http, false),
            "https" => (Scheme::Https, true),
            _ => return Err(bad("only http and https are supported")),
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if path
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(bad("spaces and control characters must be percent-encoded"));
        }
        Ok(Self {
            scheme,
            https,
            authority: authority.to_owned(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_what_wasi_http_wants() {
        let url = Url::parse("http://127.0.0.1:8080/v1/sandboxes?x=1").ok();
        let url = url.as_ref();
        assert_eq!(url.map(|u| u.authority.as_str()), Some("127.0.0.1:8080"));
        assert_eq!(url.map(|u| u.path.as_str()), Some("/v1/sandboxes?x=1"));
        assert_eq!(url.map(|u| u.https), Some(false));
        let bare = Url::parse("https://api.example.com").ok();
        assert_eq!(bare.as_ref().map(|u| u.path.as_str()), Some("/"));
        assert_eq!(bare.as_ref().map(|u| u.https), Some(true));
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://").is_err());
        assert!(Url::parse("http://u:p@host/").is_err());
        assert!(Url::parse("http://host/a b").is_err());
    }
}
