//! What CLI verbs print on stdout, written so a closed pipe ends the command
//! quietly (`tether provider inspect x.wasm | head -1`) instead of panicking the
//! way `println!` does.
//!
//! Only stdout writes are affected: `SIGPIPE` stays ignored, as Rust sets it, so a
//! peer closing a socket of `tether serve` or `tether runtime` is an error to handle,
//! never a signal that kills the process.

use std::io::Write;

/// Stdout was closed by its reader: the command stops, and counts as a success.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub(crate) struct StdoutClosed;

/// Writes `text` and a newline to stdout; a closed pipe is [`StdoutClosed`].
pub(crate) fn line(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{text}").and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// `text` from the server (a provider's `lastError`, a log message, a refusal) as it
/// may be printed for a person: every control character, ESC and the C1 controls
/// included, escaped (`\u{1b}`), so what a provider or a hand edit wrote cannot move
/// the cursor, clear the screen or set the title of the operator's terminal.
pub(crate) fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// JSON text from or for the server (`--json`, `attach`'s lines) as it may be printed:
/// every control character but a newline written as a `\u` escape. JSON leaves DEL and
/// the C1 controls (`\u{9b}`, the one-byte CSI) raw, and a server that is not Tether
/// may send anything, ESC included; escaped, the text is still the same JSON, while a
/// provider's or a peer's string can no longer drive the terminal. The newlines of
/// pretty-printed JSON are kept (inside JSON strings there are none raw).
pub(crate) fn printable_json(text: &str) -> String {
    let escaped = |c: char| c.is_control() && c != '\n';
    if !text.chars().any(escaped) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escaped(c) {
            // Every control character is below U+00A0: four hex digits always do.
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Prints `value` as pretty JSON for scripts, through [`printable_json`].
pub(crate) fn json(value: &serde_json::Value) -> anyhow::Result<()> {
    line(&printable_json(&serde_json::to_string_pretty(value)?))
}

/// Writes `tether: ERROR` to stderr, ignoring a stderr nobody reads.
pub(crate) fn error(err: &anyhow::Error) {
    let _ = writeln!(std::io::stderr().lock(), "tether: {}", chain(err));
}

/// `err` and its causes joined by `: `, leaving out a cause its message already ends
/// with: many errors quote their source in their own text (`listening on ADDR:
/// {source}`) and `{:#}` would print it twice.
fn chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let said = cause.to_string();
        if !text.is_empty() && text.ends_with(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_quoted_in_its_errors_message_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("listening on here: {source}")]
        struct Listen {
            source: std::io::Error,
        }
        let refused = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let said = refused.to_string();
        let err = anyhow::Error::new(Listen { source: refused }).context("serving");
        assert_eq!(
            super::chain(&err),
            format!("serving: listening on here: {said}")
        );
    }

    #[test]
    fn json_is_printed_with_its_control_characters_escaped_and_still_the_same() {
        let value = serde_json::json!({"a": "x\u{1b}]52;c;aGk=\u{7}\u{9b}2J\u{7f}\n"});
        let pretty = serde_json::to_string_pretty(&value).expect("json");
        let shown = super::printable_json(&pretty);
        assert!(
            !shown.contains(|c: char| c.is_control() && c != '\n'),
            "{shown}"
        );
        assert!(shown.contains(r"\u009b2J\u007f"), "{shown}");
        assert_eq!(shown.lines().count(), 3, "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).expect("still JSON");
        assert_eq!(back, value);
        // A line that is not JSON (from a server that is not Tether) is shown escaped too.
        assert_eq!(super::printable_json("a\u{1b}[2J\rb"), r"a\u001b[2J\u000db");
    }

    #[test]
    fn control_characters_are_printed_escaped() {
        assert_eq!(super::printable("plain ü"), "plain ü");
        assert_eq!(
            super::printable("a\u{1b}[2J\u{9b}31m\n\u{7}"),
            "a\\u{1b}[2J\\u{9b}31m\\n\\u{7}"
        );
    }
}
