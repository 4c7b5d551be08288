//! `wasi:http/outgoing-handler`: every outgoing request goes through the broker.
//!
//! wasmtime-wasi-http parses the guest's request; our hook then checks the
//! destination against the environment's [`NetPolicy`], takes a connection slot,
//! resolves the name (operator overrides first), re-checks every address and connects
//! to the checked address only, under the configured connect and first-byte
//! timeouts. A refusal never sends a packet. For `https` the checked connection then
//! runs the TLS handshake of [`TlsClient`] (certificate checked against the URL's host
//! name), also under the connect timeout; a failed handshake is the TLS error code of
//! `wasi:http` for the provider and a log line for the operator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::client::conn::http1;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::broker::Denied;
use crate::broker::net::{NetError, NetPolicy};
use crate::broker::tls::TlsClient;
use crate::engine::LogBudget;
use crate::engine::instance::HostState;

/// The `wasi:http` hooks of one instance: its environment's network policy, the
/// host's TLS client (`None`: `https` is refused, as for an instance serving no
/// environment), and the instance's log budget, which its refusals' log lines are
/// counted against (a guest looping on a refused request logs a burst, not a line
/// per call).
#[derive(Debug, Clone)]
pub(crate) struct NetHooks {
    policy: NetPolicy,
    tls: Option<TlsClient>,
    log_budget: Arc<LogBudget>,
}

impl NetHooks {
    /// Hooks enforcing `policy`, with `tls` for `https`, logging within `log_budget`.
    pub(crate) fn new(
        policy: NetPolicy,
        tls: Option<TlsClient>,
        log_budget: Arc<LogBudget>,
    ) -> Self {
        Self {
            policy,
            tls,
            log_budget,
        }
    }

    /// The instance's log budget.
    pub(crate) fn log_budget(&self) -> &Arc<LogBudget> {
        &self.log_budget
    }
}

/// The most of the host's memory one `wasi:http` resource of a guest may hold: the
/// header fields of one `fields` (as wasmtime-wasi-http counts them, names and values
/// with their in-memory overhead), or one chunk of an outgoing body (a body not yet
/// sent buffers two, and takes two handles: its request and itself). Handles are
/// capped (`limits.max_resources`), so this bounds what a guest can pile up in the
/// host outside its own memory. Real header blocks are a few KiB (servers refuse
/// more than 8–32 KiB), and a larger body is written in more chunks.
pub(crate) const HTTP_RESOURCE_BYTES: usize = 16 << 10;

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.net,
        }
    }
}

type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);
type ResponseFuture = Box<dyn Future<Output = Result<Sent, Error>> + Send>;

impl WasiHttpHooks for NetHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        // Response-processing errors surface through the body; nothing to report here.
        drop(fut);
        let hooks = self.clone();
        Box::new(async move { send(hooks, request, options).await })
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        HTTP_RESOURCE_BYTES
    }
}

fn refused(hooks: &NetHooks, dest: &str, denied: &Denied) -> Error {
    let policy = &hooks.policy;
    let reason = policy.explain(denied);
    if hooks.log_budget.take(Instant::now()).is_some() {
        tracing::warn!(env = %policy.env_id(), %dest, %reason, "outgoing HTTP denied");
    }
    match denied {
        Denied::SensitiveAddress(_) => Error::DestinationIpProhibited,
        Denied::ConnectionLimit(_) => Error::ConnectionLimitReached,
        _ => Error::HttpRequestDenied,
    }
}

/// The smaller of the operator's limit and the guest's own wish.
fn bounded(ours: Duration, theirs: Option<Duration>) -> Duration {
    theirs.map_or(ours, |t| t.min(ours))
}

async fn send(
    hooks: NetHooks,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<Sent, Error> {
    let (policy, tls) = (&hooks.policy, hooks.tls.clone());
    let uri = request.uri().clone();
    let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    // For log lines only: the host part is the provider's and may be long.
    let dest = crate::untrusted::quoted(&format!("{scheme}://{host}:{port}"));
    policy
        .check_destination(&scheme, &host, port)
        .map_err(|d| refused(&hooks, &dest, &d))?;
    let tls = match (scheme.as_str(), tls) {
        ("http", _) => None,
        ("https", Some(tls)) => Some(tls),
        _ => {
            if hooks.log_budget.take(Instant::now()).is_some() {
                tracing::warn!(env = %policy.env_id(), %dest, "outgoing HTTP refused: scheme not supported here");
            }
            return Err(Error::HttpProtocolError);
        }
    };
    // The slot is taken before the name is looked up: a lookup runs on the blocking
    // pool the whole host shares, and one that times out here keeps its thread, so
    // the guest's lookups in flight are capped with its connections.
    let permit = policy
        .connection_slot()
        .map_err(|d| refused(&hooks, &dest, &d))?;
    let addrs = match policy.resolve(&scheme, &host, port).await {
        Ok(addrs) => addrs,
        Err(NetError::Denied(d)) => return Err(refused(&hooks, &dest, &d)),
        Err(NetError::Resolve(name, why)) => {
            tracing::warn!(env = %policy.env_id(), %dest, %why, "outgoing HTTP: name did not resolve");
            return Err(Error::DnsError {
                rcode: Some(format!("{name}: {why}")),
                info_code: None,
            });
        }
    };
    let config = policy.config();
    let connect_timeout = bounded(
        config.connect_timeout,
        options.and_then(|o| o.connect_timeout),
    );
    let first_byte = bounded(
        config.first_byte_timeout,
        options.and_then(|o| o.first_byte_timeout),
    );
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(&addrs[..]))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    // Request and response are written whole; Nagle would only hold back the request
    // behind the TLS handshake's last flight.
    let _ = stream.set_nodelay(true);
    let timeouts = (connect_timeout, first_byte);
    let Some(tls) = tls else {
        return exchange(TokioIo::new(stream), permit, request, timeouts).await;
    };
    let stream = tokio::time::timeout(connect_timeout, tls.connect(&host, stream))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(|e| {
            tracing::warn!(env = %policy.env_id(), %dest, error = %e, "outgoing HTTPS: TLS handshake failed");
            e.code()
        })?;
    exchange(TokioIo::new(stream), permit, request, timeouts).await
}

/// Sends `request` over an established connection (plain or TLS) and returns the
/// response head; the connection holds `permit` for as long as it lives.
async fn exchange<T>(
    io: T,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut request: http::Request<WasiBody>,
    (connect_timeout, first_byte): (Duration, Duration),
) -> Result<Sent, Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let uri = request.uri().clone();
    let (mut sender, conn) = tokio::time::timeout(connect_timeout, http1::handshake(io))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    // The connection task holds the slot for as long as the connection lives.
    let driver = tokio::spawn(async move {
        let result = conn.await;
        drop(permit);
        result
    });
    // On the wire the request line carries only the path; the Host header is set.
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
    let io = async move {
        match driver.await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::ConnectionTerminated),
        }
    };
    Ok((response, Box::new(io)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NetConfig, UrlPattern};

    #[tokio::test]
    async fn a_loop_of_refused_requests_is_logged_within_the_instance_s_budget() {
        let hooks = NetHooks::new(NetPolicy::deny_all(), None, Arc::default());
        for _ in 0..10_000 {
            let request = http::Request::get("http://denied.test/")
                .body(
                    http_body_util::Empty::new()
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                )
                .unwrap();
            assert!(send(hooks.clone(), request, None).await.is_err());
        }
        assert_eq!(
            hooks.log_budget().take(Instant::now()),
            None,
            "the budget was not spent"
        );
    }

    #[tokio::test]
    async fn a_request_takes_its_slot_before_the_name_is_looked_up() {
        let granted: Vec<UrlPattern> = vec![UrlPattern::parse("http://loop.test:*").unwrap()];
        let config = NetConfig {
            hosts: [("loop.test".to_string(), [127, 0, 0, 1].into())].into(),
            max_connections: 1,
            ..NetConfig::default()
        };
        let policy = NetPolicy::new("env".into(), granted.clone(), granted, config);
        let _held = policy.connection_slot().unwrap();
        let request = http::Request::get("http://loop.test:8080/")
            .body(
                http_body_util::Empty::new()
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
            .unwrap();
        // With no slot free the request ends there: the name (here an operator's
        // override pointing inward, so a lookup would end in a refusal of its own) is
        // never resolved.
        let hooks = NetHooks::new(policy, None, Arc::default());
        let refused = send(hooks, request, None).await.err();
        assert!(
            matches!(refused, Some(Error::ConnectionLimitReached)),
            "{refused:?}"
        );
    }
}
