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
    fn control_characters_are_printed_escaped() {
        assert_eq!(super::printable("plain ü"), "plain ü");
        assert_eq!(
            super::printable("a\u{1b}[2J\u{9b}31m\n\u{7}"),
            "a\\u{1b}[2J\\u{9b}31m\\n\\u{7}"
        );
    }
}
