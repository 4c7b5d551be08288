//! The relay's own frames and fields, all plain JSON text (see `docs/protocol.md`).
//!
//! A peer opts into resumable delivery by connecting with `?session=<id>&resume=<n>`.
//! On such a connection every message the host sends carries `relaySeq`; the peer
//! acknowledges with `{"type": "relayAck", "received": <relaySeq>}`, and the host
//! acknowledges the peer's frames the same way, counting them (the peer's `n`th frame
//! of the session). On connecting the host says `relayResumed`; what it can no longer
//! replay it names in `relayLost`. Close codes the relay uses are defined here too.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::config::RelayConfig;

/// Most bytes a relay socket (host or reference runtime) reads at once. tungstenite
/// zero-fills this much of its read buffer before every read attempt (even one that
/// finds nothing), so its 128 KiB default cost more than all the relay's own work per
/// frame, and with a thousand connections the zeroing misses the cache too. One page
/// holds a typical frame; larger frames still arrive whole, over more reads.
pub const READ_CHUNK: usize = 4 << 10;

/// Close code: a message exceeded the configured maximum size.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: a text frame that is not UTF-8 (RFC 6455 §7.4.1).
pub(super) const CLOSE_NOT_UTF8: u16 = 1007;
/// Close code: a frame that breaks the WebSocket protocol (unmasked, reserved bits,
/// a bad continuation, …).
pub(super) const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: this peer fell a whole window behind.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code: a newer runtime connection replaced this one.
pub const CLOSE_REPLACED: u16 = 4009;
/// Close code: the environment was stopped or deleted.
pub const CLOSE_GONE: u16 = 4010;
/// Close code: the peer answered no ping within the idle timeout.
pub const CLOSE_UNRESPONSIVE: u16 = 4011;
/// Close code: the token that admitted this app was revoked or expired (or the
/// operator's token rotated), or the environment moved to another owner.
pub const CLOSE_REVOKED: u16 = 4003;
/// Close code: the environment already has its maximum number of connections.
pub const CLOSE_TOO_MANY: u16 = 4013;
/// Close code: the start of the environment an app was provisioned to failed (its
/// record is in `error` with `lastError`).
pub const CLOSE_START_FAILED: u16 = 4014;
/// Close code: the app connected through a template to an environment its user
/// stopped on purpose, without `start=true`.
pub const CLOSE_STOPPED: u16 = 4015;
/// Close code: the connection's user holds their `[tenancy] max_connections` on this
/// host already (app sockets and `/ws/events` alike).
pub const CLOSE_USER_LIMIT: u16 = 4016;

/// How a connection ends, when the relay ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Text for the peer.
    pub reason: String,
}

/// The close a peer gets for a frame that could not be read, or `None` when the
/// connection is simply gone: a message over `max_message_bytes` (1009), text that is
/// not UTF-8 (1007), a frame that breaks the protocol (1002, the reason saying how).
/// Said with a close code (RFC 6455 §7.1.7), not by dropping the connection: a peer
/// that only sees the connection drop takes it for a network cut and, resuming, sends
/// the same frame again, for ever.
pub fn read_error_close(e: &tungstenite::Error, max_message_bytes: usize) -> Option<CloseReason> {
    let (code, reason) = match e {
        tungstenite::Error::Capacity(_) => (
            CLOSE_TOO_BIG,
            format!("messages are limited to {max_message_bytes} bytes"),
        ),
        tungstenite::Error::Utf8(_) => (CLOSE_NOT_UTF8, "text frames must be UTF-8".to_owned()),
        tungstenite::Error::Protocol(e) => {
            (CLOSE_PROTOCOL, crate::untrusted::cut(&e.to_string(), 100))
        }
        _ => return None,
    };
    Some(CloseReason { code, reason })
}

/// Type of an acknowledgement frame, in either direction.
pub(super) const ACK: &str = "relayAck";
/// Longest session id accepted.
const MAX_SESSION_LEN: usize = 128;

/// What a resuming peer presents when it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The peer's session id, stable across its reconnects.
    pub session: String,
    /// The last `relaySeq` it received (0 for none).
    pub last: u64,
    /// Whose session it is (an app's user and thread; empty for a runtime, which has
    /// one): the same `session` presented by anyone else names another session, so
    /// no one takes over, or is replayed, what was held for someone else.
    pub holder: String,
}

impl Resume {
    /// Reads `session` and `resume` from a query: both or neither.
    pub fn from_query(session: Option<&str>, resume: Option<&str>) -> Result<Option<Self>, String> {
        let (session, resume) = match (session, resume) {
            (None, None) => return Ok(None),
            (Some(s), Some(r)) => (s, r),
            _ => return Err("`session` and `resume` go together".into()),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if session.is_empty() || session.len() > MAX_SESSION_LEN || !session.chars().all(valid) {
            return Err(format!(
                "`session` must be 1 to {MAX_SESSION_LEN} characters of A-Z a-z 0-9 - _ ."
            ));
        }
        let last = resume
            .parse()
            .map_err(|_| "`resume` must be a non-negative integer".to_owned())?;
        Ok(Some(Self {
            session: session.to_owned(),
            last,
            holder: String::new(),
        }))
    }

    /// The same resume, of `holder`'s session.
    pub fn held_by(self, holder: String) -> Self {
        Self { holder, ..self }
    }

    /// The key the session is kept under: its holder's, and its id.
    pub(super) fn key(&self) -> String {
        // A session id has no NUL, so the two parts never run into each other.
        format!("{}\0{}", self.holder, self.session)
    }
}

/// The fields the relay reads from a peer's frame; the rest is passed on untouched.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Head<'a> {
    /// The message `type`.
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    /// The thread the message belongs to.
    #[serde(rename = "threadId", borrow, default)]
    pub thread: Option<Cow<'a, str>>,
    /// For `relayAck`: the count acknowledged.
    #[serde(default)]
    pub received: Option<u64>,
    /// Whether the quick reader vouches that the text is one JSON object with no
    /// top-level `threadId` key at all (not even `null`), so a thread can be spliced in
    /// as text. `serde_json` never says so: it cannot tell a missing key from `null`.
    #[serde(skip)]
    pub no_thread_key: bool,
}

impl<'a> Head<'a> {
    /// Parses the head of `text`; `None` if it is not a JSON object. The quick reader
    /// answers for ordinary frames; `serde_json` for the rest.
    pub(super) fn parse(text: &'a str) -> Option<Self> {
        super::scan::head(text).or_else(|| serde_json::from_str(text).ok())
    }

    /// The acknowledged count, if this is an acknowledgement.
    #[cfg(test)]
    pub(super) fn ack(&self) -> Option<u64> {
        (self.kind.as_deref() == Some(ACK))
            .then_some(self.received)
            .flatten()
    }
}

/// Whether `text` is a JSON object of `type` `relayAck`, whatever else it holds (for a
/// frame [`Head::parse`] could not read).
pub(super) fn is_ack(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| v["type"] == ACK)
}

/// `text` (a JSON object) with `relaySeq` added as its first field; any other text is
/// carried whole in a `relayRaw` message, so a numbered frame is always an object.
/// The field is spliced into the text, which is otherwise passed on byte for byte.
pub(super) fn with_seq(seq: u64, text: &str) -> String {
    let Some(rest) = text
        .trim_start()
        .strip_prefix('{')
        .filter(|_| is_object(text))
    else {
        return json!({"relaySeq": seq, "type": "relayRaw", "text": text}).to_string();
    };
    if rest.trim_start().starts_with('}') {
        return format!("{{\"relaySeq\":{seq}}}");
    }
    // A frame that already carries `relaySeq` (a peer echoing a numbered frame back)
    // must not reach the other side with two: ours replaces a top-level one.
    if text.contains("\"relaySeq\"")
        && let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(text)
    {
        fields.shift_remove("relaySeq");
        fields.shift_insert(0, "relaySeq".into(), json!(seq));
        return Value::Object(fields).to_string();
    }
    let mut out = String::with_capacity(text.len() + 32);
    out.push_str("{\"relaySeq\":");
    out.push_str(&seq.to_string());
    out.push(',');
    out.push_str(rest);
    out
}

/// `text` with `"threadId":<thread>` spliced in as its first field, where `thread` is
/// already a JSON string (quotes and escapes included). Only for a text the quick
/// reader vouched for ([`Head::no_thread_key`]) that has at least one field: the rest
/// of it passes byte for byte, with no parse and no re-serialisation.
pub(super) fn with_thread(text: &str, thread: &str) -> String {
    let rest = text.trim_start().strip_prefix('{').unwrap_or(text);
    if rest.trim_start().starts_with('}') {
        return format!("{{\"threadId\":{thread}}}");
    }
    let mut out = String::with_capacity(text.len() + thread.len() + 16);
    out.push_str("{\"threadId\":");
    out.push_str(thread);
    out.push(',');
    out.push_str(rest);
    out
}

/// Whether `text` is one valid JSON object (and nothing else): a text that merely
/// starts with `{` must not be spliced into, or the peer could not read its number.
fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && (super::scan::head(text).is_some()
            || serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
}

/// `{"type": "relayAck", "received": n}`.
pub(super) fn ack_frame(received: u64) -> String {
    format!("{{\"type\":\"{ACK}\",\"received\":{received}}}")
}

/// The first frame of a resumable connection. `maxMessageBytes` is the largest frame
/// the host takes from the peer: a peer that sent a larger one would be closed with
/// 1009 and, resuming, send it again, for ever. `windowMessages` and `windowBytes`
/// bound what the host holds for the peer unacknowledged: a peer that acknowledges
/// less often than every half window is cut off (an app, 4008) or refused more (a
/// runtime: apps get `not_delivered`), and it cannot know the operator's setting.
pub(super) fn resumed_frame(
    session: &str,
    received: u64,
    next: u64,
    reset: bool,
    config: &RelayConfig,
) -> String {
    json!({
        "type": "relayResumed",
        "session": session,
        "received": received,
        "next": next,
        "reset": reset,
        "maxMessageBytes": config.max_message_bytes,
        "windowMessages": config.window_messages,
        "windowBytes": config.window_bytes,
    })
    .to_string()
}

/// Names messages `from..=to` the host could not keep for this peer.
pub(super) fn lost_frame(from: u64, to: u64) -> String {
    json!({"type": "relayLost", "from": from, "to": to, "count": to - from + 1}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message carried by a `relayRaw` frame, or the frame itself.
    fn unwrap_raw(msg: Value) -> Value {
        if msg["type"] == "relayRaw" {
            msg["text"].clone()
        } else {
            msg
        }
    }

    #[test]
    fn seq_is_spliced_into_objects_and_wraps_the_rest() {
        let v: Value = serde_json::from_str(&with_seq(7, r#" {"type":"x","a":1}"#)).unwrap();
        assert_eq!(v, json!({"relaySeq": 7, "type": "x", "a": 1}));
        let v: Value = serde_json::from_str(&with_seq(8, "{ }")).unwrap();
        assert_eq!(v, json!({"relaySeq": 8}));
        // An echoed numbered frame keeps one `relaySeq`: ours, first.
        let echoed = with_seq(9, r#"{"relaySeq":3,"type":"x","p":{"relaySeq":1}}"#);
        assert_eq!(echoed.matches("\"relaySeq\"").count(), 2, "{echoed}");
        assert!(
            echoed.starts_with(r#"{"relaySeq":9,"type":"x""#),
            "{echoed}"
        );
        let v: Value = serde_json::from_str(&with_seq(9, "not json")).unwrap();
        assert_eq!(unwrap_raw(v), json!("not json"));
    }

    #[test]
    fn seq_splice_keeps_every_object_intact_and_comes_first() {
        for text in [
            r#"{"a":"quote \" brace } bracket ] backslash \\","b":"\u00e9"}"#,
            r#"{"outer":{"inner":[1,{"deep":{"relaySeq":"not ours"}}],"e":{}},"n":null}"#,
            "\n\t { \"a\" : 1 ,\r\n \"b\" : [ true , false ] } \n",
            "{\n}",
            r#"{"k\u0065y":"escaped key"}"#,
        ] {
            let spliced = with_seq(42, text);
            let got: Value = serde_json::from_str(&spliced).unwrap();
            let mut want: Value = serde_json::from_str(text).unwrap();
            let fields = got.as_object().unwrap();
            assert_eq!(fields.keys().next().map(String::as_str), Some("relaySeq"));
            assert_eq!(fields["relaySeq"], 42);
            want.as_object_mut()
                .unwrap()
                .shift_insert(0, "relaySeq".into(), json!(42));
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn seq_splice_wraps_anything_that_is_not_one_object() {
        for text in [
            "[1,2]",
            "\"a string\"",
            "42",
            "",
            "{broken}",
            r#"{"a":1} {"b":2}"#,
            r#"{"a":1"#,
            r#"  {"a":"}"#,
        ] {
            let got: Value = serde_json::from_str(&with_seq(3, text)).unwrap();
            assert_eq!(got["relaySeq"], 3);
            assert_eq!(got["type"], "relayRaw");
            assert_eq!(unwrap_raw(got), json!(text), "{text:?}");
        }
    }

    #[test]
    fn thread_is_spliced_only_where_no_key_is() {
        let joined = Value::from("t \"q\"").to_string();
        for text in [
            r#" {"type":"x","p":{"threadId":"inner"}}"#,
            r#"{"type":"x"}"#,
            "{ }",
        ] {
            let head = Head::parse(text).unwrap();
            assert!(head.no_thread_key, "{text:?}");
            let got: Value = serde_json::from_str(&with_thread(text, &joined)).unwrap();
            let mut want: Value = serde_json::from_str(text).unwrap();
            want["threadId"] = json!("t \"q\"");
            assert_eq!(got, want, "{text:?}");
        }
        // A `null` thread is a key all the same; `serde_json` never vouches.
        for text in [
            r#"{"type":"x","threadId":null}"#,
            r#"{"type":"x","threadId":"t"}"#,
        ] {
            assert!(!Head::parse(text).unwrap().no_thread_key, "{text:?}");
        }
        let escaped = r#"{"type":"x","thre\u0061dId":null}"#;
        assert!(!Head::parse(escaped).unwrap().no_thread_key);
    }

    #[test]
    fn resume_needs_both_fields_and_a_sane_session() {
        assert_eq!(Resume::from_query(None, None), Ok(None));
        assert!(Resume::from_query(Some("s"), None).is_err());
        assert!(Resume::from_query(Some("a b"), Some("1")).is_err());
        assert!(Resume::from_query(Some("s"), Some("-1")).is_err());
        assert_eq!(
            Resume::from_query(Some("s-1"), Some("5")),
            Ok(Some(Resume {
                session: "s-1".into(),
                last: 5,
                holder: String::new(),
            }))
        );
    }

    #[test]
    fn head_reads_acks_and_threads() {
        let h = Head::parse(r#"{"type":"relayAck","received":3}"#).unwrap();
        assert_eq!(h.ack(), Some(3));
        let h = Head::parse(r#"{"type":"x","threadId":"t","payload":[1,2]}"#).unwrap();
        assert_eq!((h.ack(), h.thread.as_deref()), (None, Some("t")));
        assert!(Head::parse("[1]").is_none());
    }
}
