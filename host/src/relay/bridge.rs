//! Cluster mode: an app connected to a host that does not run its environment is
//! bridged to the `/ws/app` route of the host that does, with the app's own
//! credentials and query: over a tunnel through NATS (`cluster/tunnel/`), or
//! straight to that host's public URL. Every guarantee (thread routing, order, resume,
//! limits, pings, close codes) is that host's relay's.
//!
//! Once both upgrades are done the bridge passes bytes, not frames, as a WebSocket
//! proxy does: the app's frames are masked as a client's must be, the other host's
//! are not, as a server's must not be, and neither side negotiated an extension, so
//! both byte streams are already what the other side expects. Nothing is parsed or
//! re-encoded on the way. The bridge follows only where the other host's frames
//! begin and end, so that when that host goes away without a close it can close the
//! app with [`CLOSE_HOST_GONE`] (the app reconnects, to any host) instead of cutting
//! a frame in half. An app that goes away is passed on as it went: a close frame as
//! a close frame, a dropped connection as a dropped connection (its session there
//! can then be resumed).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::header::{
    AUTHORIZATION, CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderValue, Request, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use super::conn::Held;
use super::socket::Upgrade;

/// Close code for an app whose bridged host went away without closing (RFC 6455's
/// "service restart"): connect again, to any host.
pub const CLOSE_HOST_GONE: u16 = 1012;

/// The header a bridge's upgrade carries, so the host it reaches never bridges the
/// app on to a third (or back): one hop at most, whatever the hosts' views of a lease.
pub const BRIDGED: &str = "tether-bridged";

/// How long reaching the other host's URL may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reaching the other host and its answer to the upgrade may take in all
/// (TCP, TLS, the request and a refusal's body).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(15);
/// The most of the other host's refusal passed on to the app.
const MAX_REFUSAL_BYTES: usize = 64 << 10;
/// Bytes read at once in each direction.
const BUF: usize = 32 << 10;

/// Why the other host did not take the bridged app.
#[derive(Debug)]
pub struct BridgeRefused {
    /// The HTTP status the other host answered (502 when it could not be reached).
    pub status: StatusCode,
    /// Its answer's body, or why it could not be reached.
    pub body: String,
}

/// How the bridge reaches the host running the environment.
pub enum Upstream {
    /// Dial this `ws(s)://other-host/ws/app/ID?QUERY` URL.
    Direct(String),
    /// Speak WebSocket over this stream, already open to that host's API (a cluster
    /// tunnel), asking for this path and query.
    Stream(crate::cluster::TunnelStream, String),
}

/// A byte stream the bridge can dial the other host over.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens a WebSocket to the host running the environment with the app's
/// `authorization` and `protocol`; once that host took it, answers the app's
/// upgrade and passes bytes both ways until either side is done. A side that takes
/// nothing for `stall` is let go of, as the relay lets go of a peer that stopped
/// reading, so a stalled app holds no bridge, tunnel or window. `held` is kept
/// until the bridge ends.
pub async fn bridge(
    app: Upgrade,
    upstream: Upstream,
    authorization: Option<HeaderValue>,
    protocol: &'static str,
    stall: Duration,
    held: Held,
) -> Result<Response, BridgeRefused> {
    let upgraded = async {
        let (io, host, path): (Box<dyn Io>, String, String) = match upstream {
            Upstream::Direct(url) => dial(&url).await?,
            Upstream::Stream(stream, path) => (Box::new(stream), "tunnel".to_owned(), path),
        };
        handshake(io, &host, &path, authorization, protocol).await
    };
    // A host that takes the connection and then never answers (hung, or not a host
    // at all) must not hold the app's upgrade, and its connection slot, for good.
    let other = tokio::time::timeout(UPGRADE_TIMEOUT, upgraded)
        .await
        .map_err(|_| {
            unreachable(format!(
                "the host running it did not answer the upgrade within {} s",
                UPGRADE_TIMEOUT.as_secs()
            ))
        })??;
    let answer = app.answer(Some(protocol));
    tokio::spawn(async move {
        match app.on_upgrade.await {
            Ok(upgraded) => splice(TokioIo::new(upgraded), other, stall).await,
            Err(e) => tracing::debug!(error = %e, "a bridged app's upgrade failed"),
        }
        drop(held);
    });
    Ok(answer)
}

fn unreachable(why: String) -> BridgeRefused {
    BridgeRefused {
        status: StatusCode::BAD_GATEWAY,
        body: why,
    }
}

/// Connects to the host behind `url` (`ws://` or `wss://`, the latter trusted as
/// the host's own clients trust a host: `client_tls`); the stream, the `Host` to
/// name and the path with its query.
async fn dial(url: &str) -> Result<(Box<dyn Io>, String, String), BridgeRefused> {
    let uri: Uri = url
        .parse()
        .map_err(|e| unreachable(format!("bad URL of the other host: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(unreachable(format!("not a ws(s) URL: {url}"))),
    };
    let (Some(authority), Some(path)) = (uri.authority(), uri.path_and_query()) else {
        return Err(unreachable(format!("not a ws(s) URL: {url}")));
    };
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((name, port)),
    )
    .await
    .map_err(|_| unreachable(format!("connecting to {authority} timed out")))?
    .map_err(|e| unreachable(format!("connecting to {authority}: {e}")))?;
    // Frames are small and interactive: no waiting for a full segment.
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if tls {
        let server = rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|e| unreachable(format!("{name}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(tls_config()?);
        let stream = (connector.connect(server, tcp).await)
            .map_err(|e| unreachable(format!("TLS with {authority}: {e}")))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    Ok((io, authority.to_string(), path.to_string()))
}

/// The TLS client settings for reaching other hosts, read once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, BridgeRefused> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| crate::client_tls::from_env().map_err(|e| e.to_string()))
        .clone()
        .map_err(unreachable)
}

/// Asks the other host over `io` to upgrade `path` to a WebSocket; the upgraded
/// connection, or that host's answer when it refused.
async fn handshake(
    io: Box<dyn Io>,
    host: &str,
    path: &str,
    authorization: Option<HeaderValue>,
    protocol: &'static str,
) -> Result<TokioIo<hyper::upgrade::Upgraded>, BridgeRefused> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| unreachable(format!("the host running it: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "a bridge's connection to the other host ended");
        }
    });
    let key = generate_key();
    let mut request = Request::get(path)
        .header(HOST, host)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_VERSION, "13")
        .header(SEC_WEBSOCKET_KEY, &key)
        .header(SEC_WEBSOCKET_PROTOCOL, protocol)
        .header(BRIDGED, "1");
    if let Some(authorization) = authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(format!("bad request to the other host: {e}")))?;
    let answer = (sender.send_request(request).await)
        .map_err(|e| unreachable(format!("the host running it: {e}")))?;
    let status = answer.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = Limited::new(answer.into_body(), MAX_REFUSAL_BYTES);
        let body = match body.collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(e) => format!("the host running it answered {status}: {e}"),
        };
        return Err(BridgeRefused { status, body });
    }
    let accepted = answer.headers().get(SEC_WEBSOCKET_ACCEPT);
    if accepted.map(HeaderValue::as_bytes) != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return Err(unreachable(
            "the host running it answered the upgrade wrongly".into(),
        ));
    }
    let upgraded = (hyper::upgrade::on(answer).await)
        .map_err(|e| unreachable(format!("the host running it: {e}")))?;
    Ok(TokioIo::new(upgraded))
}

/// Passes bytes between the app and the other host until one side is done, then
/// ends the other side alike (see the module's doc).
async fn splice<A, O>(mut app: A, mut other: O, stall: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    O: AsyncRead + AsyncWrite + Unpin,
{
    let mut upward = vec![0u8; BUF];
    let mut downward = vec![0u8; BUF];
    let mut frames = Frames::default();
    let wrote = |written: Result<std::io::Result<()>, _>| matches!(written, Ok(Ok(())));
    loop {
        tokio::select! {
            read = app.read(&mut upward) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        // The app went away: so does its connection there.
                        let _ = tokio::time::timeout(stall, other.shutdown()).await;
                        return;
                    }
                    Ok(n) => n,
                };
                if !wrote(tokio::time::timeout(stall, other.write_all(&upward[..n])).await) {
                    if frames.can_close() {
                        let _ = tokio::time::timeout(stall, app.write_all(&host_gone())).await;
                    }
                    return;
                }
            }
            read = other.read(&mut downward) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        if frames.can_close() {
                            let _ = tokio::time::timeout(stall, app.write_all(&host_gone())).await;
                        }
                        let _ = tokio::time::timeout(stall, app.shutdown()).await;
                        return;
                    }
                    Ok(n) => n,
                };
                frames.feed(&downward[..n]);
                if !wrote(tokio::time::timeout(stall, app.write_all(&downward[..n])).await) {
                    let _ = tokio::time::timeout(stall, other.shutdown()).await;
                    return;
                }
            }
        }
    }
}

/// The close frame that tells the app its bridged host went away (a server's frame:
/// unmasked).
fn host_gone() -> Vec<u8> {
    let reason = b"the host running the environment went away; connect again";
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x80 | 0x8); // FIN, close
    frame.push((2 + reason.len()) as u8);
    frame.extend_from_slice(&CLOSE_HOST_GONE.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// Where the frames of one direction begin and end, from their headers alone
/// (RFC 6455 §5.2): the payload is counted past, never read.
#[derive(Debug, Default)]
struct Frames {
    /// The header read so far of the frame that begins next.
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    left: u64,
    /// Whether a close frame has passed.
    closed: bool,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len() as u64);
                self.left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let extended = match self.head[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let masked = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + extended + masked {
                continue;
            }
            self.left = match extended {
                2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                8 => {
                    let mut length = [0u8; 8];
                    length.copy_from_slice(&self.head[2..10]);
                    u64::from_be_bytes(length)
                }
                _ => u64::from(self.head[1] & 0x7f),
            };
            self.closed |= self.head[0] & 0x0f == 0x8;
            self.have = 0;
        }
    }

    /// Whether a close frame may be written now: between frames, and none sent yet.
    fn can_close(&self) -> bool {
        self.have == 0 && self.left == 0 && !self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked) with `opcode` and `len` payload bytes.
    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match len {
            0..=125 => f.push(len as u8),
            126..=0xffff => {
                f.push(126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(0x8, len));
        f
    }

    #[test]
    fn frames_end_where_their_headers_say_whatever_the_reads() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(0x1, len));
        }
        // Fed in pieces of every size: between frames only at the end.
        for piece in [1, 2, 3, 7, 13, 4096, stream.len()] {
            let mut frames = Frames::default();
            for chunk in stream.chunks(piece) {
                frames.feed(chunk);
            }
            assert!(frames.can_close(), "piece {piece}");
            assert!(!frames.closed);
        }
        let mut frames = Frames::default();
        let one = frame(0x2, 300);
        frames.feed(&one[..1]);
        assert!(!frames.can_close(), "inside a header");
        frames.feed(&one[1..10]);
        assert!(!frames.can_close(), "inside a payload");
        frames.feed(&one[10..]);
        assert!(frames.can_close());
    }

    #[test]
    fn a_close_that_passed_is_never_followed_by_another() {
        let mut frames = Frames::default();
        frames.feed(&frame(0x8, 2));
        assert!(!frames.can_close());
        // The frame the bridge writes itself is a valid close frame.
        let mut check = Frames::default();
        check.feed(&host_gone());
        assert!(check.closed && check.have == 0 && check.left == 0);
    }

    #[test]
    fn a_masked_frame_counts_its_mask() {
        let mut frames = Frames::default();
        let mut f = vec![0x81, 0x80 | 3, 1, 2, 3, 4];
        f.extend_from_slice(b"abc");
        frames.feed(&f[..6]);
        assert!(!frames.can_close());
        frames.feed(&f[6..]);
        assert!(frames.can_close());
    }
}
