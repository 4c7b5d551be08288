//! The peer's half of the resume protocol, for clients of the relay (the reference
//! runtime, tests, the benchmark): remembers the last `relaySeq` received, numbers and
//! keeps the frames it sent until the host acknowledges them, and says what to send
//! again after a reconnect. It does no I/O.

use std::collections::VecDeque;

use serde_json::Value;

use super::protocol;

/// Acknowledge the host's messages at least this often; sooner when the host's
/// window (its `relayResumed` says) is smaller than twice this.
const ACK_EVERY: u64 = 32;

/// What an incoming frame turned out to be.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A message for the peer (with `relaySeq` still in it on a resumable connection).
    Message(Value),
    /// The host greeted a (re)connection: send these frames again, in order, first.
    Resumed(Vec<String>),
    /// The host could no longer replay messages `from..=to`.
    Lost(u64, u64),
    /// A relay frame with nothing for the peer to do (an acknowledgement, a duplicate).
    Nothing,
}

/// Resume state of one peer session.
#[derive(Debug)]
pub struct PeerState {
    session: String,
    last_seq: u64,
    acked_to_host: u64,
    sent: u64,
    unacked: VecDeque<(u64, String)>,
    max_message_bytes: Option<usize>,
    /// Acknowledge after this many messages: half the host's window, at most [`ACK_EVERY`].
    ack_every: u64,
    /// Acknowledge after this many bytes of messages: half the host's window in bytes.
    ack_bytes: Option<u64>,
    /// Bytes of the messages received since the last acknowledgement.
    bytes_due: u64,
}

impl PeerState {
    /// A new session named `session` (letters, digits, `-`, `_`, `.`).
    pub fn new(session: impl Into<String>) -> Self {
        Self {
            session: session.into(),
            last_seq: 0,
            acked_to_host: 0,
            sent: 0,
            unacked: VecDeque::new(),
            max_message_bytes: None,
            ack_every: ACK_EVERY,
            ack_bytes: None,
            bytes_due: 0,
        }
    }

    /// The query fields to connect (or reconnect) with: `session=…&resume=…`.
    pub fn query(&self) -> String {
        format!("session={}&resume={}", self.session, self.last_seq)
    }

    /// Records an outgoing frame (kept until acknowledged) and returns it to write.
    pub fn send(&mut self, text: String) -> String {
        self.sent += 1;
        self.unacked.push_back((self.sent, text.clone()));
        text
    }

    /// Frames sent and not yet acknowledged by the host.
    pub fn unacknowledged(&self) -> usize {
        self.unacked.len()
    }

    /// The last `relaySeq` received.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The largest frame the host takes from this peer, as its last `relayResumed`
    /// said (`None` before one, or from a host that does not say).
    pub fn max_message_bytes(&self) -> Option<usize> {
        self.max_message_bytes
    }

    fn host_received(&mut self, received: u64) {
        while self.unacked.front().is_some_and(|(n, _)| *n <= received) {
            self.unacked.pop_front();
        }
    }

    /// Interprets one text frame from the host.
    pub fn on_frame(&mut self, text: &str) -> Incoming {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return Incoming::Message(Value::String(text.to_owned()));
        };
        match msg["type"].as_str() {
            Some(protocol::ACK) => {
                self.host_received(msg["received"].as_u64().unwrap_or(0));
                return Incoming::Nothing;
            }
            Some("relayResumed") => {
                let received = msg["received"].as_u64().unwrap_or(0);
                self.host_received(received);
                self.max_message_bytes = msg["maxMessageBytes"]
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok());
                // Half the window, so an acknowledgement is always on its way before the
                // host's window fills (a host that does not say keeps the default).
                if let Some(window) = msg["windowMessages"].as_u64() {
                    self.ack_every = (window / 2).clamp(1, ACK_EVERY);
                }
                self.ack_bytes = msg["windowBytes"].as_u64().map(|b| (b / 2).max(1));
                self.last_seq = msg["next"].as_u64().unwrap_or(1).saturating_sub(1);
                self.acked_to_host = self.acked_to_host.min(self.last_seq);
                // The host counts from `received` on: renumber what is resent.
                self.sent = received;
                let resend: Vec<String> = self.unacked.drain(..).map(|(_, t)| t).collect();
                for text in &resend {
                    self.send(text.clone());
                }
                return Incoming::Resumed(resend);
            }
            Some("relayLost") => {
                let (from, to) = (msg["from"].as_u64(), msg["to"].as_u64());
                if let (Some(from), Some(to)) = (from, to) {
                    self.last_seq = self.last_seq.max(to);
                    return Incoming::Lost(from, to);
                }
            }
            _ => {}
        }
        if let Some(seq) = msg["relaySeq"].as_u64() {
            if seq <= self.last_seq {
                return Incoming::Nothing;
            }
            self.last_seq = seq;
            self.bytes_due += text.len() as u64;
        }
        Incoming::Message(msg)
    }

    /// Whether enough arrived since the last acknowledgement that one is due now.
    pub fn ack_due(&self) -> bool {
        let due = self.last_seq.saturating_sub(self.acked_to_host);
        let full = self.ack_bytes.is_some_and(|half| self.bytes_due >= half);
        due > 0 && (due >= self.ack_every || full)
    }

    /// A `relayAck` to send if enough arrived since the last one (or `force`d and any).
    pub fn ack(&mut self, force: bool) -> Option<String> {
        let due = self.last_seq.saturating_sub(self.acked_to_host);
        if self.ack_due() || (force && due > 0) {
            self.acked_to_host = self.last_seq;
            self.bytes_due = 0;
            Some(protocol::ack_frame(self.last_seq))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_what_the_host_did_not_count_and_skips_duplicates() {
        let mut p = PeerState::new("s");
        for i in 1..=3 {
            p.send(format!("m{i}"));
        }
        assert_eq!(p.on_frame(&protocol::ack_frame(1)), Incoming::Nothing);
        assert_eq!(p.unacknowledged(), 2);
        let config = crate::config::RelayConfig {
            max_message_bytes: 4096,
            ..Default::default()
        };
        let resumed = protocol::resumed_frame("s", 2, 1, false, &config);
        assert_eq!(p.on_frame(&resumed), Incoming::Resumed(vec!["m3".into()]));
        assert_eq!(p.max_message_bytes(), Some(4096));
        assert!(matches!(
            p.on_frame(r#"{"relaySeq":1,"a":1}"#),
            Incoming::Message(_)
        ));
        assert_eq!(p.on_frame(r#"{"relaySeq":1,"a":1}"#), Incoming::Nothing);
        assert_eq!(p.query(), "session=s&resume=1");
        assert_eq!(p.ack(true), Some(protocol::ack_frame(1)));
        assert_eq!(p.ack(true), None);
    }

    #[test]
    fn acknowledges_every_half_window_of_a_small_host_window() {
        let mut p = PeerState::new("s");
        let config = crate::config::RelayConfig {
            window_messages: 8,
            window_bytes: 1 << 20,
            ..Default::default()
        };
        p.on_frame(&protocol::resumed_frame("s", 0, 1, false, &config));
        for seq in 1..=3 {
            p.on_frame(&format!(r#"{{"relaySeq":{seq}}}"#));
            assert_eq!(p.ack(false), None);
        }
        p.on_frame(r#"{"relaySeq":4}"#);
        assert_eq!(p.ack(false), Some(protocol::ack_frame(4)));
        // And by bytes: half of a 64-byte window is due after 32 bytes of messages.
        let config = crate::config::RelayConfig {
            window_bytes: 64,
            ..Default::default()
        };
        p.on_frame(&protocol::resumed_frame("s", 0, 5, false, &config));
        let big = format!(r#"{{"relaySeq":5,"pad":"{}"}}"#, "x".repeat(40));
        p.on_frame(&big);
        assert_eq!(p.ack(false), Some(protocol::ack_frame(5)));
    }
}
