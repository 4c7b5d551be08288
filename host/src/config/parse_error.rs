//! Why `tether.toml` did not parse, said without quoting the file. The TOML crate's
//! own message shows the offending line, and serde's quote the offending value; the
//! file holds API keys (`[providers.NAME] config`), and a reload's error goes to the
//! log, `GET /api/v1/config/status` and the unauthenticated `/healthz`. So the error
//! keeps the line, the column and the message with any value replaced by its kind.

/// Where and why `tether.toml` did not parse, quoting none of its values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// The line of the error, from 1.
    pub line: usize,
    /// The column (in characters) on that line, from 1.
    pub column: usize,
    /// What is wrong, with values left out.
    pub message: String,
}

impl ParseError {
    /// `error`, raised parsing `text`, without any of `text`'s values.
    pub(super) fn new(error: &toml::de::Error, text: &str) -> Self {
        let at = error.span().map_or(0, |span| span.start).min(text.len());
        let mut at_char = at;
        while !text.is_char_boundary(at_char) {
            at_char -= 1;
        }
        let before = &text[..at_char];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Self {
            line,
            column,
            message: without_values(error.message().trim_end()),
        }
    }
}

/// serde's "invalid type: string \"sk-…\", expected u64" as "invalid type: string,
/// expected u64"; likewise "invalid value: …" and "unknown variant `…`".
fn without_values(message: &str) -> String {
    for lead in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(lead)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            let kind = found.split([' ', '`', '"']).next().unwrap_or_default();
            return format!("{lead}{kind}, expected {expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((_, expected)) = rest.split_once("`, expected ")
    {
        return format!("unknown variant, expected {expected}");
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> ParseError {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Shape {
            n: Option<u64>,
            scope: Option<Scope>,
        }
        #[derive(Debug, serde::Deserialize)]
        enum Scope {
            #[serde(rename = "user")]
            User,
        }
        let e = toml::from_str::<Shape>(text).expect_err("an error");
        ParseError::new(&e, text)
    }

    #[test]
    fn no_value_of_the_file_is_quoted_and_the_place_is_kept() {
        let syntax = error("# ok\nn = sk-SECRET-1\n");
        assert_eq!((syntax.line, syntax.column), (2, 5), "{syntax:?}");
        let wrong_type = error("n = \"sk-SECRET-2\"\n");
        assert_eq!(
            wrong_type.message, "invalid type: string, expected u64",
            "{wrong_type:?}"
        );
        let variant = error("\n\nscope = \"sk-SECRET-3\"\n");
        assert_eq!(variant.line, 3, "{variant:?}");
        assert!(variant.message.starts_with("unknown variant, expected"));
        let unterminated = error("n = 1\nx = \"sk-SECRET-4 é\n");
        for e in [syntax, wrong_type, variant, unterminated] {
            let shown = e.to_string();
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.starts_with("line "), "{shown}");
        }
    }
}
