//! `tether env attach ID --thread T`: an interactive session with an environment's
//! runtime over the app WebSocket, one JSON object a line each way.
//!
//! Each stdin line is sent as it is (it must be a JSON object); each message from the
//! host is printed on stdout as one JSON line, without the relay's `relaySeq`. The
//! connection is resumable (`docs/protocol.md`, "Resuming"): when it drops it is opened
//! again with the same session, what the host had not counted is sent again and what it
//! had not delivered is replayed, so nothing is lost or repeated. Once stdin ends the
//! session waits until the host has counted every line and every `requestId` sent has
//! an answer, then closes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rand::Rng;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::client::{NotTether, Refused, ServerArgs, admin_token};
use super::env::env_path;
use crate::relay::peer::{Incoming, PeerState};

/// How long reconnecting may fail in a row before the session gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// How long, once stdin has ended, answers still owed are waited for.
const DRAIN: Duration = Duration::from_secs(60);
/// Acknowledge what was received at least this often (the protocol asks for 10 s).
const ACK_EVERY: Duration = Duration::from_secs(10);
/// The longest stdin line sent; the host's own message limit is usually lower.
const MAX_LINE: usize = 1 << 20;
/// The host's `maxMessageBytes` until its greeting says otherwise (`[relay]
/// max_message_kib`'s default).
const HOST_DEFAULT_MAX: usize = 1 << 20;
/// Room for what the relay adds around a peer's message (`relaySeq`, a `relayRaw`
/// envelope) and for its own frames.
const ENVELOPE: usize = 64 << 10;
/// The most taken in one frame whatever the host says (tungstenite's own default).
const MAX_INBOUND: usize = 64 << 20;
/// How much of a greeting that is not `relayResumed` an error quotes.
const GREETING_QUOTED: usize = 200;

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// `tether env attach`.
#[derive(Debug, clap::Args)]
pub(crate) struct Attach {
    #[command(flatten)]
    server: ServerArgs,
    /// The environment's id.
    id: String,
    /// The thread to talk on (any text up to 256 bytes without control characters).
    #[arg(long)]
    thread: String,
    /// Start the environment if its user stopped it on purpose (needs `envs:write`).
    #[arg(long)]
    start: bool,
}

/// Runs the session until stdin ends and everything sent is answered, or the host ends
/// it for good.
pub(crate) async fn run(args: Attach) -> anyhow::Result<()> {
    let target = Target::new(&args)?;
    let mut peer = PeerState::new(format!(
        "cli-{}-{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    ));
    let mut session = Session::default();
    let mut lines = stdin_lines();
    let mut ws = target.connect(&mut peer, &mut session).await?;
    eprintln!(
        "attached to {} on thread {}: one JSON object per line; ^D to end",
        args.id, args.thread
    );
    loop {
        match session.serve(&mut ws, &mut peer, &mut lines).await? {
            Ended::Done => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            Ended::Dropped(why) => {
                eprintln!("connection lost ({why}); resuming");
                ws = target.reconnect(&mut peer, &mut session).await?;
            }
        }
    }
}

/// Where to connect and with what.
struct Target {
    /// `--url`, as the user gave it, for messages.
    server: String,
    url: String,
    auth: HeaderValue,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    fn new(args: &Attach) -> anyhow::Result<Self> {
        let path = env_path(&args.id)?.replacen("/api/v1/environments", "/ws/app", 1);
        if args.thread.is_empty()
            || args.thread.len() > 256
            || args.thread.contains(char::is_control)
        {
            bail!("--thread must be 1 to 256 bytes without control characters");
        }
        let base = args.server.url.trim_end_matches('/');
        let (base, tls) = if let Some(rest) = base.strip_prefix("https://") {
            (
                format!("wss://{rest}"),
                Some(crate::client_tls::from_env()?),
            )
        } else if let Some(rest) = base.strip_prefix("http://") {
            (format!("ws://{rest}"), None)
        } else {
            bail!("--url must be an http:// or https:// URL");
        };
        let thread = utf8_percent_encode(&args.thread, NON_ALPHANUMERIC);
        let start = if args.start { "&start=true" } else { "" };
        let auth = HeaderValue::from_str(&format!("Bearer {}", admin_token(&args.server)?))
            .context("the token holds characters not allowed in an HTTP header")?;
        Ok(Self {
            server: args.server.url.clone(),
            url: format!("{base}{path}?thread={thread}{start}"),
            auth,
            tls,
        })
    }

    /// Opens the socket and completes the resume handshake: the host's `relayResumed`
    /// read, what it had not counted sent again.
    async fn connect(&self, peer: &mut PeerState, session: &mut Session) -> anyhow::Result<Ws> {
        let mut request = format!("{}&{}", self.url, peer.query()).into_client_request()?;
        request
            .headers_mut()
            .insert("Authorization", self.auth.clone());
        let connector = self.tls.clone().map(Connector::Rustls);
        let bound = inbound_limit(peer.max_message_bytes());
        let limits = WebSocketConfig::default()
            .max_message_size(Some(bound))
            .max_frame_size(Some(bound));
        // `true`: TCP_NODELAY, an interactive session must not wait on delayed ACKs.
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(limits),
            true,
            connector,
        );
        // A host that takes the connection and never answers the upgrade must not hold
        // the session (or a reconnect, whose give-up time it would never reach) forever.
        let connected = tokio::time::timeout(super::client::TIMEOUT, connecting).await;
        let Ok(connected) = connected else {
            bail!(
                "the host did not answer the WebSocket upgrade within {} s",
                super::client::TIMEOUT.as_secs()
            );
        };
        let mut ws = match connected {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(response)) => {
                let (head, body) = response.into_parts();
                // Only Tether's own refusal (JSON) ends the session; anything else (a
                // proxy's 502 page while the host restarts) is no answer from the host,
                // and a reconnect tries again. The body is what came with the head, so
                // it may be cut: the content type decides.
                if !super::client::is_a(&head.headers, super::client::JSON) {
                    return Err(NotTether::new(&self.server, &head).into());
                }
                let body = body.as_deref().unwrap_or_default();
                let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                return Err(Refused::from_answer(head.status, &answer).into());
            }
            Err(e) => return Err(e).context("opening the app WebSocket"),
        };
        // One deadline for the greeting, however many pings come before it.
        let deadline = Instant::now() + super::client::TIMEOUT;
        let greeting = loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => break text,
                Ok(Some(Ok(Message::Close(frame)))) => return Err(closed(frame).into()),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(e).context("reading the host's greeting"),
                Ok(None) => bail!("the host closed the connection before greeting"),
                Err(_) => bail!("the host did not greet the connection in time"),
            }
        };
        let reset = serde_json::from_str::<Value>(&greeting)
            .is_ok_and(|g| g["type"] == "relayResumed" && g["reset"] == true);
        let Incoming::Resumed(resend) = peer.on_frame(&greeting) else {
            // Quoted cut and escaped: the frame is the host's, up to the session's bound.
            bail!(
                "the host did not answer with relayResumed: {}",
                crate::untrusted::shown(&greeting, GREETING_QUOTED)
            );
        };
        if reset && session.connected {
            eprintln!("the host no longer knew this session: what was in flight is gone");
            session.pending.clear();
        }
        if session.connected {
            eprintln!("resumed; {} line(s) sent again", resend.len());
        }
        session.connected = true;
        for frame in resend {
            ws.feed(Message::text(frame)).await?;
        }
        ws.flush().await?;
        Ok(ws)
    }

    /// Connects again with backoff until it works, the host refuses for good, or
    /// [`RECONNECT_FOR`] has passed.
    async fn reconnect(&self, peer: &mut PeerState, session: &mut Session) -> anyhow::Result<Ws> {
        let give_up = Instant::now() + RECONNECT_FOR;
        let mut wait = Duration::from_millis(200);
        loop {
            tokio::time::sleep(wait).await;
            match self.connect(peer, session).await {
                Ok(ws) => return Ok(ws),
                // A close asking for another try (the host going away between the
                // upgrade and its greeting) is retried like a failed connection.
                Err(e)
                    if e.is::<Refused>()
                        || e.downcast_ref::<Closed>().is_some_and(|c| !c.resumable()) =>
                {
                    return Err(e);
                }
                Err(e) if Instant::now() >= give_up => {
                    return Err(e.context(format!(
                        "could not reconnect within {} s",
                        RECONNECT_FOR.as_secs()
                    )));
                }
                Err(e) => eprintln!("reconnecting: {e:#}"),
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// What the session owes and knows across connections.
#[derive(Default)]
struct Session {
    /// `requestId`s sent without an answer yet.
    pending: HashSet<String>,
    /// Whether a connection was ever made (the next one is a resume).
    connected: bool,
    /// Set once stdin has ended: the time to give up waiting for answers.
    drain_until: Option<Instant>,
}

/// How one connection ended.
enum Ended {
    /// Stdin ended and everything sent is counted and answered.
    Done,
    /// The connection dropped in a way a resume can mend.
    Dropped(String),
}

impl Session {
    /// Relays stdin and the host's messages over one connection.
    async fn serve(
        &mut self,
        ws: &mut Ws,
        peer: &mut PeerState,
        lines: &mut mpsc::Receiver<String>,
    ) -> anyhow::Result<Ended> {
        let mut ack = tokio::time::interval(ACK_EVERY);
        loop {
            if self.drain_until.is_some() && self.pending.is_empty() && peer.unacknowledged() == 0 {
                if let Some(ack) = peer.ack(true) {
                    let _ = ws.send(Message::text(ack)).await;
                }
                return Ok(Ended::Done);
            }
            let drain_until = self.drain_until;
            let drain = async move {
                match drain_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                line = lines.recv(), if self.drain_until.is_none() => match line {
                    Some(line) => {
                        let Some(text) = self.outgoing(&line, peer.max_message_bytes()) else {
                            continue;
                        };
                        if let Err(e) = ws.send(Message::text(peer.send(text))).await {
                            // Kept in the peer state: the resume sends it again.
                            return Ok(Ended::Dropped(e.to_string()));
                        }
                    }
                    None => self.drain_until = Some(Instant::now() + DRAIN),
                },
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            let why = closed(frame);
                            if why.resumable() {
                                return Ok(Ended::Dropped(why.to_string()));
                            }
                            return Err(why.into());
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(tungstenite::Error::Capacity(e))) => {
                            // Sent again on every resume: only a bound this connection
                            // was opened with before the host said its limit is worth
                            // a reconnect.
                            let bound = ws.get_config().max_message_size.unwrap_or(usize::MAX);
                            if inbound_limit(peer.max_message_bytes()) > bound {
                                return Ok(Ended::Dropped(e.to_string()));
                            }
                            bail!("the host sent a message larger than this session takes ({bound} bytes): {e}");
                        }
                        Some(Err(e)) => return Ok(Ended::Dropped(e.to_string())),
                        None => return Ok(Ended::Dropped("closed without a close frame".into())),
                    };
                    match peer.on_frame(&text) {
                        Incoming::Message(message) => self.show(message)?,
                        Incoming::Lost(from, to) => eprintln!(
                            "the host could not keep messages {from} to {to}: they are lost"
                        ),
                        Incoming::Resumed(_) | Incoming::Nothing => {}
                    }
                    if let Some(ack) = peer.ack(false)
                        && let Err(e) = ws.send(Message::text(ack)).await
                    {
                        return Ok(Ended::Dropped(e.to_string()));
                    }
                }
                _ = ack.tick() => {
                    if let Some(ack) = peer.ack(true)
                        && let Err(e) = ws.send(Message::text(ack)).await
                    {
                        return Ok(Ended::Dropped(e.to_string()));
                    }
                }
                () = drain => bail!(
                    "no answer to {} request(s) within {} s of the end of input",
                    self.pending.len(),
                    DRAIN.as_secs()
                ),
            }
        }
    }

    /// A stdin line as the frame to send, or `None` (said why on stderr) if it is not
    /// one JSON object or is larger than the host takes (`max`): the host would close
    /// the connection for it, and again on every resume.
    fn outgoing(&mut self, line: &str, max: Option<usize>) -> Option<String> {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(message)) => {
                let id = message.get("requestId").and_then(Value::as_str);
                let id = id.map(str::to_owned);
                let text = Value::Object(message).to_string();
                if let Some(max) = max.filter(|max| text.len() > *max) {
                    eprintln!(
                        "not sent: {} bytes, over the host's limit of {max}",
                        text.len()
                    );
                    return None;
                }
                if let Some(id) = id {
                    self.pending.insert(id);
                }
                Some(text)
            }
            Ok(_) => {
                eprintln!("not sent: a line must be one JSON object");
                None
            }
            Err(e) => {
                eprintln!("not sent, not JSON: {e}");
                None
            }
        }
    }

    /// Prints a message from the host as one line, and notes an answered request.
    fn show(&mut self, mut message: Value) -> anyhow::Result<()> {
        if let Some(fields) = message.as_object_mut() {
            fields.remove("relaySeq");
        }
        // `execOutput` is a chunk of an answer, not the answer.
        if message["type"] != "execOutput"
            && let Some(id) = message["requestId"].as_str()
        {
            self.pending.remove(id);
        }
        super::output::line(&super::output::printable_json(&message.to_string()))
    }
}

/// The largest frame taken from a host whose `maxMessageBytes` is `host_max`: a
/// runtime's message that size, in the `relayRaw` envelope a text that is not JSON
/// arrives in (escaping a control character takes 6 bytes), with room for the rest.
/// Anything larger is no frame the host sends; nothing over [`MAX_INBOUND`] is taken.
fn inbound_limit(host_max: Option<usize>) -> usize {
    host_max
        .unwrap_or(HOST_DEFAULT_MAX)
        .saturating_mul(6)
        .saturating_add(ENVELOPE)
        .min(MAX_INBOUND)
}

/// Stdin's lines, read on a task of their own so a reconnect never loses one.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.len() > MAX_LINE {
                eprintln!("not sent: a line over {MAX_LINE} bytes");
                continue;
            }
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The host closed the connection, with the code it gave (`docs/protocol.md`, "Close
/// codes").
#[derive(Debug, thiserror::Error)]
#[error("the host closed the connection: {code} {reason}")]
pub(crate) struct Closed {
    code: u16,
    reason: String,
}

fn closed(frame: Option<CloseFrame>) -> Closed {
    match frame {
        // The host's text (at most 123 bytes), printed as the command's error: escaped.
        Some(frame) => Closed {
            code: frame.code.into(),
            reason: super::output::printable(&frame.reason),
        },
        None => Closed {
            code: CloseCode::Status.into(),
            reason: "(no code)".to_owned(),
        },
    }
}

impl Closed {
    /// Whether reconnecting with the session continues it: the host going away (a
    /// restart), a peer that fell behind or went quiet. Everything else — revoked,
    /// stopped, deleted, replaced, full, a failed start — ends the session.
    fn resumable(&self) -> bool {
        matches!(
            self.code,
            1001 | 1005 | 1006 | 1011 | 1012 | 1013 | 4008 | 4011
        )
    }

    /// The exit code: 4 for a token that stopped working, 5 for an environment that was
    /// stopped or deleted, 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self.code {
            4003 => 4,
            4010 | 4015 => 5,
            _ => 1,
        }
    }
}
