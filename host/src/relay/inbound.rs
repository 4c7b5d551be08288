//! What the relay does with a frame a peer sent: acknowledgements and counting for
//! resumable peers, routing by `threadId`, and, for an app, handing the message types
//! its environment's provider answers up to whoever admitted the app.
//!
//! A runtime's frame goes to the apps of its `threadId` (every app without one). An
//! app's frame goes to the runtime untouched when it names its thread (or its app
//! joined none); otherwise it is parsed, given the app's thread, and sent on. Frames
//! the relay cannot take are answered on the app's own stream with an `error` frame.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::activity::{RUNTIME_BUSY, busy_flag};
use super::hub::{Hub, StreamKey};
use super::protocol::{self, ACK, Head};

/// The thread an app joined, and whether a ticket pinned it there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppThread {
    /// The thread (`None`: the app joined none).
    pub name: Option<String>,
    /// A ticket named the thread: the app's messages may name no other (a ticket
    /// handed to a browser for one thread must not speak on the others).
    pub pinned: bool,
}

impl AppThread {
    /// `name`, as the app asked for it.
    pub fn joined(name: Option<String>) -> Self {
        Self {
            name,
            pinned: false,
        }
    }

    /// `name`, decided by a ticket when it names one (`None`: the app's choice).
    pub fn ticketed(pinned: Option<String>, asked: Option<String>) -> Self {
        match pinned {
            Some(name) => Self {
                name: Some(name),
                pinned: true,
            },
            None => Self::joined(asked),
        }
    }
}

/// A message an app sent that its environment's provider answers rather than the
/// runtime: its `type`, the whole message (with the app's thread added), and where to
/// send the answer.
#[derive(Debug)]
pub struct ProviderRequest {
    /// The message's `type`.
    pub kind: String,
    /// The message as the app sent it, with `threadId` filled in from its thread.
    pub message: Map<String, Value>,
    /// The app's stream, for the answer.
    pub reply: Reply,
}

/// Takes the provider-handled messages of one app connection; the lifecycle
/// implements it, so the relay never decides what a provider does.
pub trait ProviderDesk: Send + Sync + fmt::Debug {
    /// Handles one request; the answer goes to [`ProviderRequest::reply`], later.
    fn request(&self, request: ProviderRequest);
}

/// The message types an app connection hands to its provider, and who takes them.
#[derive(Debug, Clone)]
pub struct ProviderRoute {
    /// Every `type` the provider answers, as the environment's owner keeps them current.
    pub types: Arc<ProviderTypes>,
    /// Who takes them.
    pub desk: Arc<dyn ProviderDesk>,
}

impl ProviderRoute {
    fn handles(&self, kind: &str) -> bool {
        self.types.contains(kind)
    }
}

/// The message types an environment's provider answers: those of the instance that
/// serves it, swapped when another instance starts, so a message goes where the
/// running version says rather than where the newest loaded file would.
#[derive(Debug, Default)]
pub struct ProviderTypes(RwLock<Arc<[String]>>);

impl ProviderTypes {
    /// Replaces the set.
    pub fn set(&self, types: Vec<String>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = types.into();
    }

    /// Whether `kind` is one of them.
    pub fn contains(&self, kind: &str) -> bool {
        let types = self.0.read().unwrap_or_else(PoisonError::into_inner);
        types.iter().any(|t| t == kind)
    }
}

/// One app's stream, to answer it on (kept in its window if it is away and resumable).
#[derive(Debug, Clone)]
pub struct Reply {
    hub: Arc<Hub>,
    key: StreamKey,
}

impl Reply {
    /// Queues `text` for this app only.
    pub fn send(&self, text: String) {
        self.hub.send_to_app(self.key, text);
    }

    /// The largest message the relay carries, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.hub.max_message_bytes()
    }
}

/// Why a `relayAck` without a count is refused.
const BAD_ACK: &str = "`relayAck` needs `received`, a non-negative integer";

/// A `relayAck` without a count a peer sent: not counted (the peer does not count its
/// acknowledgements, so counting one would put the host a frame ahead of it) and not
/// relayed (it is the relay's own frame).
fn malformed_ack(hub: &Hub) {
    tracing::debug!(env = %hub.env_id, "{BAD_ACK}: dropped");
}

/// An `error` frame for the app, echoing its `requestId` if it sent one.
fn error_frame(code: &str, message: &str, request_id: Option<&Value>) -> String {
    let mut frame = json!({"type": "error", "error": {"code": code, "message": message}});
    if let Some(id) = request_id {
        frame["requestId"] = id.clone();
    }
    frame.to_string()
}

/// The receiving side of one connection. Dropping it detaches the connection from
/// its hub (a runtime's `on_detached` then runs if it was still the current one).
#[derive(Debug)]
pub(super) enum Inbound {
    Runtime(RuntimeInbound),
    App(AppInbound),
}

impl Inbound {
    /// Takes one text frame from the peer.
    pub(super) fn receive(&self, text: Utf8Bytes) {
        match self {
            Inbound::Runtime(runtime) => runtime.receive(text),
            Inbound::App(app) => app.receive(text),
        }
    }

    /// Takes a binary frame that is not UTF-8: relayed to no one, but counted, since
    /// the peer counted it as sent (an uncounted frame would shift the count a
    /// resuming peer goes by, and it would send a later frame twice); an app is told.
    pub(super) fn receive_binary(&self) {
        match self {
            Inbound::Runtime(runtime) => {
                runtime.hub.received(StreamKey::Runtime, runtime.conn);
            }
            Inbound::App(app) => {
                if app.hub.received(app.key, app.conn) {
                    let frame = error_frame(
                        "invalid_message",
                        "a binary frame must hold UTF-8 text (one JSON object)",
                        None,
                    );
                    app.hub.send_to_app(app.key, frame);
                }
            }
        }
    }
}

/// Runs once when a runtime connection leaves the hub while still its current one.
pub(super) type OnDetached = Box<dyn FnOnce() + Send + Sync>;

pub(super) struct RuntimeInbound {
    pub(super) hub: Arc<Hub>,
    pub(super) conn: u64,
    pub(super) on_detached: Option<OnDetached>,
}

impl fmt::Debug for RuntimeInbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeInbound")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl RuntimeInbound {
    /// An acknowledgement, a `runtimeBusy` (relay bookkeeping, never forwarded), or
    /// a message routed to apps by its `threadId`.
    fn receive(&self, text: Utf8Bytes) {
        let Some(head) = Head::parse(&text) else {
            if protocol::is_ack(&text) {
                return malformed_ack(&self.hub);
            }
            return self.receive_unread(text);
        };
        if head.kind.as_deref() == Some(ACK) {
            return match head.received {
                Some(seq) => self.hub.acknowledge(StreamKey::Runtime, self.conn, seq),
                None => malformed_ack(&self.hub),
            };
        }
        if head.kind.as_deref() == Some(RUNTIME_BUSY) {
            // Counted like any frame, so a resuming runtime does not send it twice;
            // a malformed one is ignored (the runtime has no app to be told).
            if self.hub.received(StreamKey::Runtime, self.conn)
                && let Some(busy) = busy_flag(&text)
            {
                self.hub.activity().set_busy(busy);
            }
            return;
        }
        self.hub.activity().touch();
        let thread = head.thread.map(|t| t.into_owned());
        self.hub.from_runtime(self.conn, text, thread.as_deref());
    }

    /// A frame whose head the relay cannot read (not JSON, not an object, or a `type`
    /// or `received` of another type than the protocol's). It still goes only where its
    /// `threadId` says: a string names the thread, none (or `null`) means every app; any
    /// other `threadId` names no thread, and the frame is dropped rather than shown to
    /// every thread.
    fn receive_unread(&self, text: Utf8Bytes) {
        let thread = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(fields)) => match fields.get("threadId") {
                None | Some(Value::Null) => None,
                Some(Value::String(thread)) => Some(thread.clone()),
                Some(_) => {
                    tracing::debug!(env = %self.hub.env_id, "runtime frame with a threadId that is not a string dropped");
                    return;
                }
            },
            _ => None,
        };
        self.hub.activity().touch();
        self.hub.from_runtime(self.conn, text, thread.as_deref());
    }
}

impl Drop for RuntimeInbound {
    fn drop(&mut self) {
        if self.hub.detach_runtime(self.conn)
            && let Some(on_detached) = self.on_detached.take()
        {
            on_detached();
        }
    }
}

#[derive(Debug)]
pub(super) struct AppInbound {
    pub(super) hub: Arc<Hub>,
    pub(super) key: StreamKey,
    pub(super) conn: u64,
    /// The thread the app joined.
    pub(super) thread: Option<String>,
    /// The same thread as a JSON string, made once to be spliced into its messages.
    pub(super) thread_json: Option<String>,
    /// A ticket pinned the thread: a message naming another is refused.
    pub(super) pinned: bool,
    pub(super) provider: ProviderRoute,
}

impl AppInbound {
    /// An acknowledgement, a message for the provider, or one relayed to the runtime.
    fn receive(&self, text: Utf8Bytes) {
        let hub = &self.hub;
        let head = Head::parse(&text);
        let ack = match &head {
            Some(h) => (h.kind.as_deref() == Some(ACK)).then_some(h.received),
            // Only a frame the quick reader and the head both failed on is looked at.
            None => protocol::is_ack(&text).then_some(None),
        };
        if let Some(received) = ack {
            match received {
                Some(seq) => hub.acknowledge(self.key, self.conn, seq),
                None => {
                    malformed_ack(hub);
                    let frame = error_frame("invalid_message", BAD_ACK, None);
                    hub.send_to_app(self.key, frame);
                }
            }
            return;
        }
        // Counted before anything else, so a resuming app never sends a frame twice.
        if !hub.received(self.key, self.conn) {
            return;
        }
        hub.activity().touch();
        // The common cases pass the text on without parsing it: untouched when it
        // already names its thread (or its app joined none), or with the app's thread
        // spliced in when the quick reader vouches there is no `threadId` key at all.
        if let Some(Head {
            kind: Some(kind),
            thread,
            no_thread_key,
            ..
        }) = &head
            && !self.provider.handles(kind)
        {
            let out = match (&self.thread_json, thread) {
                // A pinned app naming a thread is checked on the general path.
                (Some(_), Some(named))
                    if self.pinned && Some(&**named) != self.thread.as_deref() =>
                {
                    None
                }
                (None, _) | (Some(_), Some(_)) => Some(text.clone()),
                (Some(joined), None) if *no_thread_key => {
                    Some(Utf8Bytes::from(protocol::with_thread(&text, joined)))
                }
                (Some(_), None) => None,
            };
            if let Some(out) = out {
                if let Err(e) = hub.to_runtime(out) {
                    let request_id = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v.get("requestId").cloned());
                    let frame = error_frame("not_delivered", &e.to_string(), request_id.as_ref());
                    hub.send_to_app(self.key, frame);
                }
                return;
            }
        }
        self.receive_parsed(&text);
    }

    /// The general path: validates the message, adds the thread, and hands it to the
    /// provider or the runtime.
    fn receive_parsed(&self, text: &str) {
        let hub = &self.hub;
        let key = self.key;
        let mut msg = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                let frame = error_frame("invalid_message", "a message must be a JSON object", None);
                return hub.send_to_app(key, frame);
            }
            Err(e) => {
                let frame = error_frame("invalid_message", &format!("invalid JSON: {e}"), None);
                return hub.send_to_app(key, frame);
            }
        };
        let Some(kind) = msg.get("type").and_then(Value::as_str).map(str::to_owned) else {
            let frame = error_frame(
                "invalid_message",
                "a message needs a string `type`",
                msg.get("requestId"),
            );
            return hub.send_to_app(key, frame);
        };
        // The runtime's answer goes where its `threadId` says, and one that names no
        // thread (an object, a number …) is dropped (`RuntimeInbound::receive_unread`):
        // a request carrying such a `threadId` could never be answered.
        if msg
            .get("threadId")
            .is_some_and(|t| !(t.is_string() || t.is_null()))
        {
            let frame = error_frame(
                "invalid_message",
                "`threadId` must be a string (or null, or left out)",
                msg.get("requestId"),
            );
            return hub.send_to_app(key, frame);
        }
        if self.pinned
            && let Some(named) = msg.get("threadId")
            && named.as_str() != self.thread.as_deref()
        {
            let pinned = self.thread.as_deref().unwrap_or_default();
            let frame = error_frame(
                "invalid_message",
                &format!(
                    "this connection's ticket pins thread {}: a message may name no other `threadId` (leave it out)",
                    crate::untrusted::quoted(pinned)
                ),
                msg.get("requestId"),
            );
            return hub.send_to_app(key, frame);
        }
        if let Some(thread) = &self.thread
            && !msg.contains_key("threadId")
        {
            msg.insert("threadId".into(), Value::String(thread.clone()));
        }
        if self.provider.handles(&kind) {
            let reply = Reply {
                hub: hub.clone(),
                key,
            };
            self.provider.desk.request(ProviderRequest {
                kind,
                message: msg,
                reply,
            });
        } else if let Err(e) = hub.to_runtime(Value::Object(msg.clone()).to_string()) {
            let frame = error_frame("not_delivered", &e.to_string(), msg.get("requestId"));
            hub.send_to_app(key, frame);
        }
    }
}

impl Drop for AppInbound {
    fn drop(&mut self) {
        self.hub.detach_app(self.key, self.conn);
    }
}
