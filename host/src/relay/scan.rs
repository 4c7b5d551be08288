//! A quick reader of a frame's [`Head`]: the top-level `type`, `threadId` and
//! `received` of a JSON object, found without building the object and while checking
//! that the whole text is valid JSON.
//!
//! Every frame the relay passes on is read this way, so its cost is per message: most
//! of a frame is payload strings, which are skipped with `memchr` rather than byte by
//! byte. It answers only when it is sure its answer is the one `serde_json` would give
//! ([`Head::parse`] falls back to `serde_json` otherwise): on anything unusual (an
//! escaped key or field value, a number where `received` needs a plain integer, a
//! repeated field, deep nesting, invalid JSON) it declines.

use std::borrow::Cow;

use super::protocol::Head;

/// Deeper nesting than this is left to `serde_json` (whose own limit is 128).
const MAX_DEPTH: u32 = 64;

/// The head of `text` if it is a JSON object whose routing fields are plain, or `None`
/// when the answer needs the full parser (or the text is not valid JSON at all).
pub(super) fn head(text: &str) -> Option<Head<'_>> {
    let mut c = Cursor {
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut head = Head::default();
    let (mut kind, mut thread, mut received) = (false, false, false);
    c.space();
    c.eat(b'{')?;
    c.space();
    if !c.eat_if(b'}') {
        loop {
            c.eat(b'"')?;
            let (start, end, escaped) = c.string()?;
            c.space();
            c.eat(b':')?;
            c.space();
            // An escaped key could spell a field's name; `serde_json` decodes it.
            if escaped {
                return None;
            }
            match &text[start..end] {
                "type" => head.kind = c.field_str(text, &mut kind)?,
                "threadId" => head.thread = c.field_str(text, &mut thread)?,
                "received" => head.received = c.field_u64(&mut received)?,
                _ => c.value()?,
            }
            c.space();
            if c.eat_if(b'}') {
                break;
            }
            c.eat(b',')?;
            c.space();
        }
    }
    c.space();
    head.no_thread_key = !thread;
    (c.at == c.bytes.len()).then_some(head)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Skips JSON whitespace.
    fn space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// Consumes `byte`, or fails.
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.eat_if(byte).then_some(())
    }

    /// Consumes `byte` if it is next.
    fn eat_if(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        self.at += usize::from(next);
        next
    }

    /// Skips a string whose opening quote was consumed; returns where its contents
    /// start and end and whether they hold escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.at;
        let mut escaped = false;
        loop {
            let rest = &self.bytes[self.at..];
            let stop = memchr::memchr2(b'"', b'\\', rest)?;
            // Raw control characters are not allowed inside a JSON string.
            if has_control(&rest[..stop]) {
                return None;
            }
            self.at += stop + 1;
            if rest[stop] == b'"' {
                return Some((start, self.at - 1, escaped));
            }
            escaped = true;
            match self.peek()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                b'u' => {
                    let hex = self.bytes.get(self.at + 1..self.at + 5)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.at += 5;
                }
                _ => return None,
            }
        }
    }

    /// A routing field that must be a string: its text, or `None` for `null`. Fails
    /// on a repeated field, an escaped string or any other value.
    fn field_str<'t>(&mut self, text: &'t str, seen: &mut bool) -> Option<Option<Cow<'t, str>>> {
        if std::mem::replace(seen, true) {
            return None;
        }
        if self.eat_if(b'"') {
            let (start, end, escaped) = self.string()?;
            return (!escaped).then_some(Some(Cow::Borrowed(&text[start..end])));
        }
        self.literal(b"null")?;
        Some(None)
    }

    /// `received`: a plain non-negative integer that fits, or `null`.
    fn field_u64(&mut self, seen: &mut bool) -> Option<Option<u64>> {
        if std::mem::replace(seen, true) {
            return None;
        }
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Some(None);
        }
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        let digits = &self.bytes[start..self.at];
        // A fraction, an exponent or a sign makes it something `u64` is not; a leading
        // zero makes it invalid. Either way the full parser decides.
        if matches!(self.peek(), Some(b'.' | b'e' | b'E' | b'-' | b'+'))
            || digits.is_empty()
            || (digits.len() > 1 && digits[0] == b'0')
        {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok().map(Some)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        self.eat_if(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat_if(b'.') {
            self.digits1()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.digits1()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn digits1(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// An object key, its opening quote next, up to and including the colon.
    fn key(&mut self) -> Option<()> {
        self.eat(b'"')?;
        self.string()?;
        self.space();
        self.eat(b':')
    }

    /// Skips one value of any kind, checking it, without recursion: `open` holds one
    /// bit per enclosing container, set for an object.
    fn value(&mut self) -> Option<()> {
        let mut open: u64 = 0;
        let mut depth = 0;
        loop {
            // A value is expected here.
            self.space();
            match self.peek()? {
                c @ (b'{' | b'[') => {
                    self.at += 1;
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    let object = c == b'{';
                    open = (open << 1) | u64::from(object);
                    depth += 1;
                    self.space();
                    if !self.eat_if(if object { b'}' } else { b']' }) {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                    open >>= 1;
                    depth -= 1;
                }
                b'"' => {
                    self.at += 1;
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value ended: close what ends with it, or go on to the next member.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.space();
                let object = open & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        if object {
                            self.space();
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                self.at += 1;
                open >>= 1;
                depth -= 1;
            }
        }
    }
}

/// Whether `bytes` holds a byte below 0x20; written as a reduction so it vectorises.
fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().fold(u8::MAX, |low, &b| low.min(b)) < 0x20
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `serde_json` alone makes of `text`.
    fn full(text: &str) -> Option<(Option<String>, Option<String>, Option<u64>)> {
        serde_json::from_str::<Head<'_>>(text).ok().map(fields)
    }

    fn fields(h: Head<'_>) -> (Option<String>, Option<String>, Option<u64>) {
        (
            h.kind.map(Cow::into_owned),
            h.thread.map(Cow::into_owned),
            h.received,
        )
    }

    /// The quick reader either declines or agrees with `serde_json`, and `Head::parse`
    /// always agrees.
    fn agrees(text: &str) -> bool {
        let quick = head(text).map(fields);
        let parsed = Head::parse(text).map(fields);
        assert_eq!(parsed, full(text), "Head::parse differs on {text:?}");
        if quick.is_some() {
            assert_eq!(quick, full(text), "quick reader differs on {text:?}");
        }
        quick.is_some()
    }

    #[test]
    fn reads_top_level_fields_only() {
        let text = r#"{"type":"x","payload":{"threadId":"inner","type":"no"},"threadId":"t1"}"#;
        let h = head(text).unwrap();
        assert_eq!(h.kind.as_deref(), Some("x"));
        assert_eq!(h.thread.as_deref(), Some("t1"));
        assert!(agrees(text));
        let h = head(r#"{"type":"relayAck","received":42}"#).unwrap();
        assert_eq!(h.ack(), Some(42));
    }

    #[test]
    fn skips_escapes_nesting_and_whitespace() {
        for text in [
            r#"{"type":"x","p":"a \"quoted\" \\ back\/slash \u00e9 \n tab\t","threadId":"t"}"#,
            " \n\t{ \"type\" : \"x\" , \"a\" : [ 1 , -2.5e+3 , true , false , null , { } , [ ] ] } \r\n",
            r#"{"a":[[[[{"b":[{"c":"\"}"}]}]]]],"type":"deep"}"#,
            r#"{"n":[0,-0,0.5,1E9,12e-3],"threadId":null}"#,
            "{}",
            r#"{"p":"ünïcödé ✓ 🎉","type":"u"}"#,
        ] {
            assert!(agrees(text), "declined {text:?}");
        }
    }

    #[test]
    fn declines_what_the_full_parser_must_decide() {
        for text in [
            // Escaped routing field or key.
            r#"{"type":"a\u0062c"}"#,
            r#"{"thre\u0061dId":"t"}"#,
            // Not a plain u64.
            r#"{"received":1.0}"#,
            r#"{"received":-0}"#,
            r#"{"received":18446744073709551616}"#,
            // Repeated or wrongly typed routing field.
            r#"{"type":"a","type":"b"}"#,
            r#"{"threadId":7}"#,
            // Not an object.
            "[1]",
            "[]",
            "\"text\"",
            "not json",
            "",
        ] {
            assert!(!agrees(text), "accepted {text:?}");
        }
    }

    #[test]
    fn rejects_invalid_json() {
        for text in [
            r#"{"type":"x""#,
            r#"{"type":"x",}"#,
            r#"{"type":"x"} trailing"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":[}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12g4"}"#,
            "{\"a\":\"raw\u{1}control\"}",
            "{\"a\":\"unterminated}",
            r#"{"a" 1}"#,
            r#"{a:1}"#,
        ] {
            assert!(head(text).is_none(), "accepted invalid {text:?}");
            assert!(Head::parse(text).is_none(), "parsed invalid {text:?}");
        }
    }

    #[test]
    fn deep_nesting_is_left_to_the_full_parser() {
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(100), "]".repeat(100));
        assert!(head(&deep).is_none());
        assert!(Head::parse(&deep).is_some());
        let ok = format!(r#"{{"a":{}1{}}}"#, "[".repeat(60), "]".repeat(60));
        assert!(agrees(&ok));
    }

    #[test]
    fn agrees_with_serde_on_every_cut_of_a_frame() {
        // Every prefix of a frame is (mostly) invalid JSON: none may be accepted unless
        // `serde_json` accepts it too.
        let frame = r#" {"type":"t","threadId":"th","received":5,"p":[1,{"q":"a\"b\\c\u0041"},-1.5e2,null],"z":true} "#;
        for end in 0..=frame.len() {
            agrees(&frame[..end]);
        }
        assert!(agrees(frame));
        // So is nearly every one-byte change of it.
        for at in 0..frame.len() {
            for byte in "\"\\{}[],:0-e. n\u{1}".chars() {
                let mut changed = frame.to_owned();
                changed.replace_range(at..=at, byte.encode_utf8(&mut [0; 4]));
                agrees(&changed);
            }
        }
    }
}
