//! The parsed forms of the patterns a grant (and a provider's request) is written in:
//! [`CommandPattern`] and [`UrlPattern`], validated once when read. What they match
//! is the broker's business (`broker/pattern.rs`, `broker/net.rs`), which adds the
//! matching methods to these types.

use std::fmt;

use serde::{Serialize, Serializer};
use utoipa::ToSchema;

/// The argument pattern that matches one path inside the environment's directories.
pub const PATH_ARG: &str = "{path}";

/// The argument pattern that matches any one argument, options included.
pub const ANY_ARG: &str = "{any}";

/// The argument pattern that matches all the remaining arguments, options included.
pub const ANY_REST: &str = "{any...}";

/// A program with argument patterns: `*` matches one argument that is not an
/// option (does not begin with `-`), `**` all the remaining arguments if none is
/// an option, `{any}` any one argument and `{any...}` all the rest, options
/// included; `{path}` one argument naming a path inside the environment's
/// directories (never one beginning with `-`) and
/// `PREFIX{path}` such an argument after a fixed prefix (`--output={path}`);
/// anything else matches itself. So a pattern admits an option only where it
/// spells it out, or says `{any}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CommandPattern {
    /// The program, by name or path.
    pub(super) program: String,
    /// Argument patterns, in order.
    pub(super) args: Vec<String>,
}

/// Why a pattern is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// The program name is empty.
    #[error("a command pattern needs a program")]
    EmptyProgram,
    /// `**` and `{any...}` are only meaningful as the last argument pattern.
    #[error("`**` and `{{any...}}` may only be the last argument pattern of {0}")]
    MisplacedRest(String),
}

/// Whether one argument pattern stands for all the remaining arguments.
pub(crate) fn is_rest(pattern: &str) -> bool {
    pattern == "**" || pattern == ANY_REST
}

impl CommandPattern {
    /// Validates and builds a pattern.
    pub fn new(program: String, args: Vec<String>) -> Result<Self, PatternError> {
        if program.is_empty() {
            return Err(PatternError::EmptyProgram);
        }
        if let Some(pos) = args.iter().position(|a| is_rest(a))
            && pos + 1 != args.len()
        {
            return Err(PatternError::MisplacedRest(program));
        }
        Ok(Self { program, args })
    }

    /// The program this pattern names (`*` for any, in a provider's request).
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Its argument patterns.
    pub(crate) fn args(&self) -> &[String] {
        &self.args
    }
}

/// A destination pattern: `scheme://host:port`, where `host` may be `*` or
/// `*.suffix` and `port` may be `*` (absent: the scheme's default port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPattern {
    scheme: String,
    host: String,
    port: Option<u16>,
}

/// Why a URL pattern is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid URL pattern {pattern:?}: {reason}")]
pub struct UrlPatternError {
    pattern: String,
    reason: &'static str,
}

impl UrlPattern {
    /// Parses `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<Self, UrlPatternError> {
        let err = |reason| UrlPatternError {
            pattern: text.to_owned(),
            reason,
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| err("needs scheme://"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty() {
            return Err(err("empty scheme"));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') {
            return Err(err("only scheme://host:port is allowed, no path or user"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, tail) = v6.split_once(']').ok_or_else(|| err("unclosed ["))?;
            (host.to_owned(), tail.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        let port = match port {
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| err("bad port"))?),
            None => Some(default_port(&scheme).ok_or_else(|| err("needs a port"))?),
        };
        Ok(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The scheme it names (`*` for any).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host it names: a name or address (lower case), `*` or `*.suffix`.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The port it names; `None` for any.
    pub(crate) fn port(&self) -> Option<u16> {
        self.port
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl fmt::Display for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "{}://{host}:{p}", self.scheme),
            None => write!(f, "{}://{host}:*", self.scheme),
        }
    }
}

impl Serialize for UrlPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rest_must_be_last() {
        assert_eq!(
            CommandPattern::new("x".into(), args(&["**", "a"])),
            Err(PatternError::MisplacedRest("x".into()))
        );
        assert_eq!(
            CommandPattern::new(String::new(), vec![]),
            Err(PatternError::EmptyProgram)
        );
    }
}
