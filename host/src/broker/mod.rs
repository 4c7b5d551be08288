//! The capability broker: what a provider instance may spawn, reach and open.
//!
//! A provider gets the intersection of what it asks for in `info()` and what the
//! operator grants it in `tether.toml` (or the built-in default grant). A spawn, a
//! connection or a directory is allowed only when it matches a requested pattern
//! *and* a granted one. Every denial is returned to the provider as an error and
//! logged for the operator with the environment id. [`process`] spawns, [`net`]
//! checks destinations and addresses.

pub mod net;
pub mod process;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use net::UrlPattern;

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

    /// Whether every command `other` matches is matched by `self` too.
    pub fn covers(&self, other: &CommandPattern) -> bool {
        if self.program != "*" && self.program != other.program {
            return false;
        }
        let mut theirs = other.args.iter();
        for mine in &self.args {
            if mine == "**" {
                return true;
            }
            match theirs.next() {
                Some(a) if a == "**" => return false,
                Some(a) if mine == "*" || mine == a => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }
}

/// What the operator grants one provider.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Grant {
    /// Commands it may spawn.
    pub commands: Vec<CommandPattern>,
    /// Host environment variables passed through to its children.
    pub env: Vec<String>,
    /// Destinations it may reach, as `scheme://host:port` patterns.
    pub urls: Vec<UrlPattern>,
    /// Host directories (absolute) it may have preopened, with everything below them.
    pub directories: Vec<PathBuf>,
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
                urls: Vec::new(),
                directories: Vec::new(),
            },
            // The sandbox API's address is the operator's to name
            // (`[providers.http-sandbox] urls`): by default it reaches nothing and
            // spawns nothing.
            "http-sandbox" => Self::default(),
            _ => Self::default(),
        }
    }
}

/// What a provider asks for in its `info()`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Request {
    /// Commands with argument patterns.
    pub commands: Vec<CommandPattern>,
    /// Destinations.
    pub urls: Vec<UrlPattern>,
    /// Host directories.
    pub directories: Vec<String>,
}

/// The requested items the operator's grant does not fully cover.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DeniedItems {
    /// Command patterns not covered by a granted one.
    pub commands: Vec<CommandPattern>,
    /// URL patterns not covered by a granted one.
    pub urls: Vec<String>,
    /// Directories outside every granted one.
    pub directories: Vec<String>,
}

/// What a provider ends up with: its request intersected with the operator's grant.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    requested: Request,
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
    #[error("process limit reached ({0} live; limits.max_processes)")]
    ProcessLimit(usize),
    /// The provider never asked for this destination in its `info()`.
    #[error("{0} is not among the URLs this provider requested")]
    UrlNotRequested(String),
    /// The operator did not grant this destination.
    #[error("{0} is not granted to this provider by the operator")]
    UrlNotGranted(String),
    /// A granted name resolved to an address reserved to the host or the cloud.
    #[error(
        "address {0} is loopback, link-local, metadata or unspecified; only a grant naming it literally allows it"
    )]
    SensitiveAddress(IpAddr),
    /// Binding a fixed address, listening or accepting: providers are clients only.
    #[error("serving on {0} (bind, listen, accept) is never granted")]
    Serve(std::net::SocketAddr),
    /// Too many concurrent connections.
    #[error("connection limit reached ({0} open; net.max_connections)")]
    ConnectionLimit(usize),
}

impl Capabilities {
    /// Intersects a provider's request with a grant.
    pub fn new(requested: Request, granted: Grant) -> Self {
        Self { requested, granted }
    }

    /// The provider's side.
    pub fn requested(&self) -> &Request {
        &self.requested
    }

    /// Requested items the grant does not fully cover (shown to the operator).
    pub fn denied(&self) -> DeniedItems {
        let g = &self.granted;
        DeniedItems {
            commands: (self.requested.commands.iter())
                .filter(|r| !g.commands.iter().any(|c| c.covers(r)))
                .cloned()
                .collect(),
            urls: (self.requested.urls.iter())
                .filter(|r| !g.urls.iter().any(|u| u.covers(r)))
                .map(ToString::to_string)
                .collect(),
            directories: (self.requested.directories.iter())
                .filter(|d| !self.directory_granted(d))
                .cloned()
                .collect(),
        }
    }

    fn directory_granted(&self, dir: &str) -> bool {
        let dir = Path::new(dir);
        dir.is_absolute()
            && !dir
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            && self.granted.directories.iter().any(|g| dir.starts_with(g))
    }

    /// Requested directories the grant allows: the ones to preopen.
    pub fn directories(&self) -> Vec<PathBuf> {
        (self.requested.directories.iter())
            .filter(|d| self.directory_granted(d))
            .map(PathBuf::from)
            .collect()
    }

    /// The network side of these capabilities for one environment.
    pub fn net_policy(&self, env_id: String, config: net::NetConfig) -> net::NetPolicy {
        net::NetPolicy::new(
            env_id,
            self.requested.urls.clone(),
            self.granted.urls.clone(),
            config,
        )
    }

    /// The operator's side.
    pub fn grant(&self) -> &Grant {
        &self.granted
    }

    /// Checks a spawn against both keys.
    pub fn check_spawn(&self, program: &str, args: &[String]) -> Result<(), Denied> {
        if !(self.requested.commands.iter()).any(|p| p.matches(program, args)) {
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

    fn commands(commands: Vec<CommandPattern>) -> Request {
        Request {
            commands,
            ..Request::default()
        }
    }

    #[test]
    fn denied_lists_what_the_grant_does_not_cover() {
        let caps = Capabilities::new(
            Request {
                commands: vec![pat("git", &["status"]), pat("*", &["**"])],
                urls: vec![
                    UrlPattern::parse("https://api.example.com").unwrap(),
                    UrlPattern::parse("http://*:*").unwrap(),
                ],
                directories: vec![
                    "/srv/repos/a".into(),
                    "/etc".into(),
                    "/srv/repos/../x".into(),
                ],
            },
            Grant {
                commands: vec![pat("git", &["*"])],
                urls: vec![UrlPattern::parse("https://*.example.com").unwrap()],
                directories: vec!["/srv/repos".into()],
                ..Grant::default()
            },
        );
        let denied = caps.denied();
        assert_eq!(denied.commands, vec![pat("*", &["**"])]);
        assert_eq!(denied.urls, vec!["http://*:*".to_string()]);
        assert_eq!(
            denied.directories,
            vec!["/etc".to_string(), "/srv/repos/../x".to_string()]
        );
        assert_eq!(caps.directories(), vec![PathBuf::from("/srv/repos/a")]);
        assert!(pat("git", &["**"]).covers(&pat("git", &["a", "**"])));
        assert!(!pat("git", &["*"]).covers(&pat("git", &["**"])));
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
            commands(vec![pat("tether", &["runtime"]), pat("*", &["**"])]),
            Grant::builtin_default("local-process"),
        );
        assert_eq!(caps.check_spawn("tether", &args(&["runtime"])), Ok(()));
        assert_eq!(
            caps.check_spawn("/bin/sh", &args(&["-c", "id"])),
            Err(Denied::NotGranted("/bin/sh".into()))
        );
        let narrow = Capabilities::new(
            commands(vec![pat("git", &["status"])]),
            Grant {
                commands: vec![pat("*", &["**"])],
                ..Grant::default()
            },
        );
        assert_eq!(
            narrow.check_spawn("curl", &args(&[])),
            Err(Denied::NotRequested("curl".into()))
        );
    }
}
