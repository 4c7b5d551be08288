//! The audit log's strings: [`Text`] is the only string an entry holds, and the only
//! way to make one redacts anything that looks like a credential, escapes control
//! characters (one entry, one line) and bounds the length — so an entry cannot carry
//! a secret or forge a line by construction, whoever builds it.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::untrusted;

/// Longest string kept in an entry (before escaping); the rest is cut with a marker.
pub const MAX_TEXT: usize = 1024;

/// What replaces a credential.
const REDACTED: &str = "[redacted]";

/// Prefixes after which the following word is a credential. Matched ignoring ASCII
/// case; the prefix itself is kept, so a reader still sees what kind it was.
/// `tether.bearer.` is the WebSocket subprotocol carrying a token; `ticket=` and
/// `token=` are query parameters; `tkt_` starts a WebSocket ticket.
const SECRET_PREFIXES: &[&str] = &[
    "tether.bearer.",
    "bearer ",
    "bearer\t",
    "tth_",
    "tkt_",
    "ticket=",
    "token=",
];

/// A cleaned string: credentials redacted, control characters escaped, bounded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(String);

impl Text {
    /// `s` cleaned for the audit log.
    pub fn new(s: &str) -> Self {
        Self(untrusted::shown(&redact(s), MAX_TEXT))
    }

    /// The cleaned string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl utoipa::PartialSchema for Text {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "Cleaned for the log: credentials redacted, control characters escaped, bounded in length.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Text {}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    /// Cleaned again on the way in: a hand-edited line cannot smuggle a secret or a
    /// newline into what `query` hands out either.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        // Room for the cut marker, so a line written cut reads back unchanged.
        Ok(Self(untrusted::shown(&redact(&s), MAX_TEXT + 64)))
    }
}

/// `s` with the word after every [`SECRET_PREFIXES`] match replaced by [`REDACTED`].
pub(super) fn redact(s: &str) -> Cow<'_, str> {
    let lower = s.to_ascii_lowercase();
    if !SECRET_PREFIXES.iter().any(|p| lower.contains(p)) {
        return Cow::Borrowed(s);
    }
    let (bytes, low) = (s.as_bytes(), lower.as_bytes());
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let hit = SECRET_PREFIXES
            .iter()
            .find(|p| low[i..].starts_with(p.as_bytes()));
        let Some(prefix) = hit else {
            out.push(bytes[i]);
            i += 1;
            continue;
        };
        let start = i + prefix.len();
        // `Bearer   x`: spaces after the scheme are not the secret.
        let start = start + bytes[start..].iter().take_while(|b| **b == b' ').count();
        let len = bytes[start..]
            .iter()
            .take_while(|b| !ends_secret(**b))
            .count();
        out.extend_from_slice(&bytes[i..start]);
        if len > 0 {
            out.extend_from_slice(REDACTED.as_bytes());
        }
        i = start + len;
    }
    // Cuts fall on ASCII bytes or the end, so this is whole UTF-8; lossy never bites.
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Bytes a credential does not contain; everything else (including non-ASCII, whose
/// bytes are all ≥ 0x80) counts as part of it, so a redaction errs on the long side.
fn ends_secret(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b',' | b';' | b'&' | b')' | b'>' | b'<')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_and_the_kind_kept() {
        let cases = [
            (
                "bad token tth_AbC123-_x9, try again",
                "bad token tth_[redacted], try again",
            ),
            (
                "Authorization: Bearer abc.DEF/+=",
                "Authorization: Bearer [redacted]",
            ),
            (
                "authorization: bearer   s3cr3t\tnext",
                "authorization: bearer   [redacted]\tnext",
            ),
            (
                "protocols tether.bearer.QWxhZGRpbg end",
                "protocols tether.bearer.[redacted] end",
            ),
            (
                "/ws/app/e1?ticket=tk_123&thread=t",
                "/ws/app/e1?ticket=[redacted]&thread=t",
            ),
            ("TTH_UPPER", "TTH_[redacted]"),
            ("nothing here", "nothing here"),
            ("bearer ", "bearer "),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn text_is_one_bounded_line_without_secrets() {
        let t = Text::new("line one\nforged {\"action\":\"x\"}\r tth_secret\x1b[2J");
        let s = t.as_str();
        assert!(
            !s.contains('\n') && !s.contains('\r') && !s.contains('\x1b'),
            "{s}"
        );
        assert!(!s.contains("tth_secret"), "{s}");
        let long = Text::new(&"é".repeat(4000));
        assert!(
            long.as_str().len() < MAX_TEXT + 40,
            "{}",
            long.as_str().len()
        );
        let back: Text = serde_json::from_str("\"x tth_abc\\n\"").unwrap();
        assert_eq!(back.as_str(), "x tth_[redacted]\\n");
    }
}
