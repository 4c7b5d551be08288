//! The capability broker: what a provider instance may spawn and where.
//!
//! A provider gets the intersection of what it asks for in `info()` and what the
//! operator grants it in `tether.toml` (or the built-in default grant). A spawn is
//! allowed only when it matches a requested pattern *and* a granted one. Every
//! denial is returned to the provider as an error and logged for the operator.

pub mod process;

use serde::Serialize;

/// A program with argument patterns: `*` matches one argument, `**` all the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandPattern {
    program: String,
    args: Vec<String>,
}

/// Why a pattern is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// The program name is empty.
    #[error("a command pattern needs a program")]
    EmptyProgram,
    /// `**` is only meaningful as the last argument pattern.
    #[error("`**` may only be the last argument pattern of {0}")]
    MisplacedRest(String),
}

impl CommandPattern {
    /// Validates and builds a pattern.
    pub fn new(program: String, args: Vec<String>) -> Result<Self, PatternError> {
        if program.is_empty() {
            return Err(PatternError::EmptyProgram);
        }
        if let Some(pos) = args.iter().position(|a| a == "**")
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

    /// Whether `program args...` matches this pattern.
    pub fn matches(&self, program: &str, args: &[String]) -> bool {
        if self.program != "*" && self.program != program {
            return false;
        }
        let mut given = args.iter();
        for pattern in &self.args {
            if pattern == "**" {
                return true;
            }
            match given.next() {
                Some(arg) if pattern == "*" || pattern == arg => {}
                _ => return false,
            }
        }
        given.next().is_none()
    }
}

/// What the operator grants one provider.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Grant {
    /// Commands it may spawn.
    pub commands: Vec<CommandPattern>,
    /// Host environment variables passed through to its children.
    pub env: Vec<String>,
}

impl Grant {
    /// The documented default grant of a built-in provider; nothing for anyone else.
    pub fn builtin_default(provider: &str) -> Self {
        match provider {
            // `tether` resolves to this very binary, so `tether runtime` is the
            // reference runtime; nothing else may be spawned by default.
            "local-process" => Self {
                commands: vec![CommandPattern {
                    program: "tether".into(),
                    args: vec!["runtime".into()],
                }],
                env: vec![
                    "PATH".into(),
                    "HOME".into(),
                    "LANG".into(),
                    "RUST_LOG".into(),
                ],
            },
            _ => Self::default(),
        }
    }
}

/// What a provider ends up with: its request intersected with the operator's grant.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    requested: Vec<CommandPattern>,
    granted: Grant,
}

/// A refused capability, with the reason for the provider and the operator.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The provider never asked for this command in its `info()`.
    #[error("`{0}` with these arguments is not among the commands this provider requested")]
    NotRequested(String),
    /// The operator did not grant this command.
    #[error("`{0}` with these arguments is not granted to this provider by the operator")]
    NotGranted(String),
    /// A path is outside the environment's directories.
    #[error("{0} is outside the environment's directories")]
    OutsidePath(String),
    /// Too many live processes.
    #[error("process limit reached ({0} live)")]
    ProcessLimit(usize),
}

impl Capabilities {
    /// Intersects a provider's request with a grant.
    pub fn new(requested: Vec<CommandPattern>, granted: Grant) -> Self {
        Self { requested, granted }
    }

    /// The operator's side.
    pub fn grant(&self) -> &Grant {
        &self.granted
    }

    /// Checks a spawn against both keys.
    pub fn check_spawn(&self, program: &str, args: &[String]) -> Result<(), Denied> {
        if !self.requested.iter().any(|p| p.matches(program, args)) {
            return Err(Denied::NotRequested(program.to_owned()));
        }
        if !self
            .granted
            .commands
            .iter()
            .any(|p| p.matches(program, args))
        {
            return Err(Denied::NotGranted(program.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(program: &str, args: &[&str]) -> CommandPattern {
        CommandPattern::new(program.into(), args.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn patterns_match_exact_one_and_rest() {
        let p = pat("git", &["worktree", "*", "**"]);
        assert!(p.matches("git", &args(&["worktree", "add", "x", "y"])));
        assert!(p.matches("git", &args(&["worktree", "list"])));
        assert!(!p.matches("git", &args(&["worktree"])));
        assert!(!p.matches("git", &args(&["status"])));
        assert!(!p.matches("sh", &args(&["worktree", "add"])));
        let exact = pat("tether", &["runtime"]);
        assert!(exact.matches("tether", &args(&["runtime"])));
        assert!(!exact.matches("tether", &args(&["runtime", "--evil"])));
        assert!(!exact.matches("tether", &args(&[])));
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

    #[test]
    fn spawn_needs_both_keys() {
        let caps = Capabilities::new(
            vec![pat("tether", &["runtime"]), pat("*", &["**"])],
            Grant::builtin_default("local-process"),
        );
        assert_eq!(caps.check_spawn("tether", &args(&["runtime"])), Ok(()));
        assert_eq!(
            caps.check_spawn("/bin/sh", &args(&["-c", "id"])),
            Err(Denied::NotGranted("/bin/sh".into()))
        );
        let narrow = Capabilities::new(
            vec![pat("git", &["status"])],
            Grant {
                commands: vec![pat("*", &["**"])],
                env: vec![],
            },
        );
        assert_eq!(
            narrow.check_spawn("curl", &args(&[])),
            Err(Denied::NotRequested("curl".into()))
        );
    }
}
