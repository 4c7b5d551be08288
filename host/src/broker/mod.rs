//! The capability broker: what a provider instance may spawn, reach and open.
//!
//! A provider gets the intersection of what it asks for in `info()` and what the
//! operator grants it in `tether.toml` (or the built-in default grant; the grant and
//! its patterns are settings, defined in `config`, and acted on here). A spawn, a
//! connection or a directory is allowed only when it matches a requested pattern
//! *and* a granted one. Every denial is returned to the provider as an error and
//! logged for the operator with the environment id. [`process`] spawns, [`env`]
//! decides a child's variables and program path, [`guard`] keeps a child's whole
//! process tree stoppable, [`launch`] starts children (under guards started ahead of
//! time), [`net`] checks destinations and addresses, [`tls`] is the
//! TLS client of providers' `https` requests.

mod env;
mod guard;
pub mod launch;
pub(crate) mod net;
mod pattern;
pub mod process;
mod refusals;
pub mod tls;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::{CommandPattern, Grant, GrantOrigin, NetConfig, UrlPattern};
pub use pattern::PathScope;
pub use refusals::Refusals;

pub use guard::spawn_guard_program;

/// The directory request that stands for the environment's project path.
pub const PROJECT_PATH_DIR: &str = "{projectPath}";

/// What a provider asks for in its `info()`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Request {
    /// Commands with argument patterns (shared: every instance of a provider has the
    /// same, and instantiations copy a pointer, not the list).
    pub commands: Arc<[CommandPattern]>,
    /// Destinations (shared likewise).
    pub urls: Arc<[UrlPattern]>,
    /// Host directories.
    pub directories: Vec<String>,
}

/// The requested items the operator's grant does not fully cover.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, ToSchema)]
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
    /// Where refusals are noted for the environment's error.
    refusals: Refusals,
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
    /// The provider set a variable its grant does not name.
    #[error("variable {0} is not granted to this provider by the operator (`set_env`)")]
    EnvNotGranted(String),
    /// A wildcard would admit a loader or tool-configuration variable.
    #[error(
        "variable {0} configures the dynamic loader or a tool; only a `set_env` entry naming it exactly admits it"
    )]
    EnvToolVariable(String),
    /// Not a plain variable name.
    #[error("{0} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128 bytes)")]
    EnvName(String),
    /// Too many variables or too long a value.
    #[error("environment too large: {0}")]
    EnvTooLarge(String),
    /// Too many live processes.
    #[error("process limit reached ({0} live; limits.max_processes)")]
    ProcessLimit(usize),
    /// The provider never asked for this destination in its `info()`.
    #[error("{0} is not among the URLs this provider requested")]
    UrlNotRequested(String),
    /// The operator did not grant this destination.
    #[error("{0} is not granted to this provider by the operator")]
    UrlNotGranted(String),
    /// A granted name resolved to an address reserved to the host, the link or the cloud.
    #[error(
        "address {0} is loopback, link-local, metadata, broadcast, multicast or unspecified (or carries such an IPv4 address); only a grant naming it literally allows it"
    )]
    SensitiveAddress(IpAddr),
    /// Binding a fixed address, listening or accepting: providers are clients only.
    #[error("serving on {0} (bind, listen, accept) is never granted")]
    Serve(std::net::SocketAddr),
    /// Too many concurrent connections.
    #[error("connection limit reached ({0} open; net.max_connections)")]
    ConnectionLimit(usize),
}

impl Denied {
    /// The `tether.toml` entry that would allow what was refused, when a grant
    /// entry would (a command is explained with its arguments by
    /// [`Capabilities::explain_spawn`]).
    pub fn operator_fix(&self, origin: &GrantOrigin) -> Option<String> {
        match self {
            Self::EnvNotGranted(name) => Some(origin.fix("set_env", &toml_string(name))),
            Self::UrlNotGranted(dest) => Some(origin.fix("urls", &toml_string(dest))),
            _ => None,
        }
    }
}

/// `s` as a TOML string (quoted, escaped).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The directories a start asked for that the grant does not cover, each with the
/// `tether.toml` entry that would allow it (for the start's log and error; they are
/// noted as refusals).
pub fn directory_fixes(caps: &Capabilities) -> Vec<String> {
    let denied = caps.denied_directories();
    let fixes: Vec<String> = match &caps.granted.origin {
        Some(origin) => denied
            .map(|d| {
                let shown = crate::untrusted::quoted(d);
                format!(
                    "directory {shown} is not granted to this provider by the operator: {}",
                    origin.fix("directories", &toml_string(&shown))
                )
            })
            .collect(),
        None => denied
            .map(|d| {
                let shown = crate::untrusted::quoted(d);
                format!("directory {shown} is not granted to this provider by the operator")
            })
            .collect(),
    };
    for fix in &fixes {
        caps.refusals.note(fix.clone());
    }
    fixes
}

impl Capabilities {
    /// A refused spawn of `program` with `args` as the provider and the operator
    /// read it: with the `tether.toml` entry that would allow it.
    pub fn explain_spawn(&self, denied: &Denied, program: &str, args: &[String]) -> String {
        let Some(origin) = &self.granted.origin else {
            return denied.to_string();
        };
        let fix = match denied {
            Denied::NotGranted(_) => {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| toml_string(&crate::untrusted::quoted(a)))
                    .collect();
                let entry = format!(
                    "{{ program = {}, args = [{}] }}",
                    toml_string(&crate::untrusted::quoted(program)),
                    args.join(", ")
                );
                Some(origin.fix("commands", &entry))
            }
            other => other.operator_fix(origin),
        };
        let reason = match fix {
            Some(fix) => format!("{denied}: {fix}"),
            None => denied.to_string(),
        };
        self.refusals.note(reason.clone());
        reason
    }

    /// Intersects a provider's request with a grant.
    pub fn new(requested: Request, granted: Grant) -> Self {
        Self {
            requested,
            granted,
            refusals: Refusals::default(),
        }
    }

    /// These capabilities, noting their refusals (spawns, destinations,
    /// directories) in `refusals`.
    pub fn with_refusals(mut self, refusals: Refusals) -> Self {
        self.refusals = refusals;
        self
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
            directories: self.denied_directories().cloned().collect(),
        }
    }

    /// Requested directories the grant does not cover (`denied().directories`, without
    /// working out the rest: every instantiation asks).
    fn denied_directories(&self) -> impl Iterator<Item = &String> {
        // `{projectPath}` is checked per environment, against its project path.
        (self.requested.directories.iter())
            .filter(|d| *d != PROJECT_PATH_DIR && !self.directory_granted(d))
    }

    fn directory_granted(&self, dir: &str) -> bool {
        let dir = Path::new(dir);
        let lexical = dir.is_absolute()
            && !dir
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            && self.granted.directories.iter().any(|g| dir.starts_with(g));
        // Where it really leads must be granted too: a symlink inside a granted
        // directory (which the provider's children or its guest may have made there)
        // would otherwise preopen, and root `{path}` arguments in, what it points at.
        // A missing directory is judged by its name; its preopen fails the start.
        lexical
            && dir.canonicalize().map_or(true, |real| {
                (self.granted.directories.iter())
                    .filter_map(|g| g.canonicalize().ok())
                    .any(|g| real.starts_with(g))
            })
    }

    /// Requested directories the grant allows: the ones to preopen.
    pub fn directories(&self) -> Vec<PathBuf> {
        (self.requested.directories.iter())
            .filter(|d| self.directory_granted(d))
            .map(PathBuf::from)
            .collect()
    }

    /// The network side of these capabilities for one environment.
    pub fn net_policy(&self, env_id: String, config: NetConfig) -> net::NetPolicy {
        net::NetPolicy::new(
            env_id,
            self.requested.urls.clone(),
            self.granted.urls.as_slice(),
            config,
        )
        .with_origin(self.granted.origin.clone())
        .with_refusals(self.refusals.clone())
    }

    /// The operator's side.
    pub fn grant(&self) -> &Grant {
        &self.granted
    }

    /// Checks a spawn against both keys.
    pub fn check_spawn(
        &self,
        program: &str,
        args: &[String],
        paths: &PathScope,
    ) -> Result<(), Denied> {
        if !(self.requested.commands.iter()).any(|p| p.matches(program, args, paths)) {
            return Err(Denied::NotRequested(crate::untrusted::quoted(program)));
        }
        if !(self.granted.commands.iter()).any(|p| p.matches(program, args, paths)) {
            return Err(Denied::NotGranted(crate::untrusted::quoted(program)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::pattern::test_support::{args, none, pat};
    use super::*;
    use crate::config::{ANY_REST, GIT_HARDENING, git_worktree_commands};

    fn commands(commands: Vec<CommandPattern>) -> Request {
        Request {
            commands: commands.into(),
            ..Request::default()
        }
    }

    #[test]
    fn denied_lists_what_the_grant_does_not_cover() {
        let caps = Capabilities::new(
            Request {
                commands: vec![pat("git", &["status"]), pat("*", &["**"])].into(),
                urls: vec![
                    UrlPattern::parse("https://api.example.com").unwrap(),
                    UrlPattern::parse("http://*:*").unwrap(),
                ]
                .into(),
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
    fn a_requested_directory_is_granted_only_where_it_really_leads() {
        let root = tempfile::tempdir().unwrap();
        let (granted, secret) = (root.path().join("granted"), root.path().join("secret"));
        std::fs::create_dir_all(granted.join("real")).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::os::unix::fs::symlink("../secret", granted.join("escape")).unwrap();
        std::os::unix::fs::symlink(&granted, root.path().join("alias")).unwrap();
        let shown = |p: PathBuf| p.display().to_string();
        let caps = Capabilities::new(
            Request {
                directories: vec![
                    shown(granted.join("real")),
                    shown(granted.join("escape")),
                    shown(root.path().join("alias/real")),
                    shown(granted.join("missing")),
                ],
                ..Request::default()
            },
            Grant {
                // The operator's own symlink leads where it leads: into itself.
                directories: vec![granted.clone(), root.path().join("alias")],
                ..Grant::default()
            },
        );
        assert_eq!(
            caps.directories(),
            vec![
                granted.join("real"),
                root.path().join("alias/real"),
                granted.join("missing"),
            ]
        );
        assert_eq!(
            caps.denied().directories,
            vec![shown(granted.join("escape"))]
        );
    }

    #[test]
    fn git_worktree_grant_requires_the_hardening_arguments() {
        let grant = Grant::builtin_default("git-worktree", Path::new("/data"));
        let caps = Capabilities::new(commands(git_worktree_commands()), grant);
        let hardened = |rest: &[&str]| {
            let mut a = args(&GIT_HARDENING);
            a.extend(args(rest));
            a
        };
        let prune = hardened(&["worktree", "prune"]);
        assert_eq!(caps.check_spawn("git", &prune, &none()), Ok(()));
        // The same call without the `-c` overrides is refused.
        assert_eq!(
            caps.check_spawn("git", &args(&["worktree", "prune"]), &none()),
            Err(Denied::NotRequested("git".into()))
        );
        let mut one_dropped = prune.clone();
        one_dropped.drain(0..2);
        assert!(caps.check_spawn("git", &one_dropped, &none()).is_err());
        assert!(caps.denied().commands.is_empty());
    }

    #[test]
    fn spawn_needs_both_keys() {
        let caps = Capabilities::new(
            commands(vec![pat("tether", &["runtime"]), pat("*", &[ANY_REST])]),
            Grant::builtin_default("local-process", Path::new("/data")),
        );
        assert_eq!(
            caps.check_spawn("tether", &args(&["runtime"]), &none()),
            Ok(())
        );
        assert_eq!(
            caps.check_spawn("/bin/sh", &args(&["-c", "id"]), &none()),
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
            narrow.check_spawn("curl", &args(&[]), &none()),
            Err(Denied::NotRequested("curl".into()))
        );
    }
}
