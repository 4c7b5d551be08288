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

/// The directory request that stands for the environment's project path.
pub const PROJECT_PATH_DIR: &str = "{projectPath}";

/// The argument pattern that matches one path inside the environment's directories.
pub const PATH_ARG: &str = "{path}";

/// A program with argument patterns: `*` matches one argument, `**` all the rest,
/// [`PATH_ARG`] one argument naming a path inside the environment's directories
/// (see [`PathScope`]) and `PREFIX{path}` such an argument after a fixed prefix
/// (`--output={path}`); anything else matches itself.
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

    /// Whether `program args...` matches this pattern, with `{path}` arguments
    /// checked against `paths`.
    pub fn matches(&self, program: &str, args: &[String], paths: &PathScope) -> bool {
        if self.program != "*" && self.program != program {
            return false;
        }
        let mut given = args.iter();
        for pattern in &self.args {
            if pattern == "**" {
                return true;
            }
            match given.next() {
                // `{path}`, or an option prefix then `{path}` (`--output={path}`).
                Some(arg) if pattern.ends_with(PATH_ARG) => {
                    let prefix = &pattern[..pattern.len() - PATH_ARG.len()];
                    match arg.strip_prefix(prefix) {
                        Some(path) if paths.contains(path) => {}
                        _ => return false,
                    }
                }
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
                // `{path}` only covers `{path}`; `*` covers anything but `**`.
                Some(a) if mine == "*" || mine == a => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }
}

/// Where the `{path}` arguments of one spawn may point: inside the environment's
/// directories (its workspace and the granted directories), relative paths taken
/// from the spawn's working directory.
#[derive(Debug, Clone, Default)]
pub struct PathScope {
    cwd: PathBuf,
    roots: Vec<PathBuf>,
}

impl PathScope {
    /// A scope over `roots` (canonicalised here; missing ones are dropped) for a
    /// process working in `cwd`.
    pub fn new(cwd: PathBuf, roots: &[PathBuf]) -> Self {
        let roots = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
        Self { cwd, roots }
    }

    /// Whether `arg` names a path inside the roots. It may not exist yet (a path
    /// to create), but it may not contain `..`, and its longest existing ancestor,
    /// with symlinks resolved, must lie inside a root.
    pub fn contains(&self, arg: &str) -> bool {
        let path = Path::new(arg);
        if arg.is_empty()
            || arg.contains('\0')
            || path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return false;
        }
        let full = self.cwd.join(path);
        let mut probe = full.as_path();
        loop {
            if let Ok(real) = probe.canonicalize() {
                return self.roots.iter().any(|root| real.starts_with(root));
            }
            match probe.parent() {
                Some(parent) => probe = parent,
                None => return false,
            }
        }
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
    /// `data_dir` is the host's data directory, the default project root.
    pub fn builtin_default(provider: &str, data_dir: &Path) -> Self {
        match provider {
            // `tether` resolves to this very binary, so `tether runtime` is the
            // reference runtime; nothing else may be spawned by default.
            "local-process" => Self {
                commands: vec![CommandPattern {
                    program: "tether".into(),
                    args: vec!["runtime".into()],
                }],
                env: runtime_env(),
                urls: Vec::new(),
                directories: Vec::new(),
            },
            // git on paths inside the environment's directories, in the shapes the
            // provider uses, and the reference runtime; projects under the data
            // directory (where `.codebolt/` lives) unless the operator says otherwise.
            "git-worktree" => Self {
                commands: git_worktree_commands(),
                env: runtime_env(),
                urls: Vec::new(),
                directories: vec![data_dir.to_owned()],
            },
            // The sandbox API's address is the operator's to name
            // (`[providers.http-sandbox] urls`): by default it reaches nothing and
            // spawns nothing.
            "http-sandbox" => Self::default(),
            _ => Self::default(),
        }
    }
}

/// Host variables the built-in providers pass through to the runtimes they start.
fn runtime_env() -> Vec<String> {
    ["PATH", "HOME", "LANG", "RUST_LOG"]
        .map(String::from)
        .to_vec()
}

/// The commands `git-worktree` needs (its request is the same list), in one place
/// so the default grant and the documentation cannot drift from each other.
pub fn git_worktree_commands() -> Vec<CommandPattern> {
    let git = |args: &[&str]| CommandPattern {
        program: "git".into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    };
    vec![
        git(&["rev-parse", "**"]),
        git(&["worktree", "add", "-b", "*", PATH_ARG, "*"]),
        git(&["worktree", "add", PATH_ARG, "*"]),
        git(&["worktree", "remove", "--force", PATH_ARG]),
        git(&["worktree", "prune"]),
        git(&["add", "--all", "--intent-to-add"]),
        git(&["diff", "--binary", "--find-renames", "--output={path}", "*"]),
        CommandPattern {
            program: "tether".into(),
            args: vec!["runtime".into()],
        },
    ]
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
            // `{projectPath}` is checked per environment, against its project path.
            directories: (self.requested.directories.iter())
                .filter(|d| *d != PROJECT_PATH_DIR && !self.directory_granted(d))
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
    use super::*;

    fn pat(program: &str, args: &[&str]) -> CommandPattern {
        CommandPattern::new(program.into(), args.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    fn none() -> PathScope {
        PathScope::default()
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
        assert!(p.matches("git", &args(&["worktree", "add", "x", "y"]), &none()));
        assert!(p.matches("git", &args(&["worktree", "list"]), &none()));
        assert!(!p.matches("git", &args(&["worktree"]), &none()));
        assert!(!p.matches("git", &args(&["status"]), &none()));
        assert!(!p.matches("sh", &args(&["worktree", "add"]), &none()));
        let exact = pat("tether", &["runtime"]);
        assert!(exact.matches("tether", &args(&["runtime"]), &none()));
        assert!(!exact.matches("tether", &args(&["runtime", "--evil"]), &none()));
        assert!(!exact.matches("tether", &args(&[]), &none()));
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

    #[test]
    fn path_arguments_must_stay_inside_the_environment_directories() {
        let root = tempfile::tempdir().unwrap();
        let project = root.path().join("project");
        std::fs::create_dir_all(project.join("sub")).unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, project.join("escape")).unwrap();
        let scope = PathScope::new(project.clone(), std::slice::from_ref(&project));

        // Existing or to be created, relative to the cwd or absolute: inside.
        assert!(scope.contains("sub"));
        assert!(scope.contains(".codebolt/worktree/new"));
        assert!(scope.contains(&project.join("sub/x").display().to_string()));
        // `..`, a symlink out, an absolute path elsewhere, empty: outside.
        assert!(!scope.contains("../outside"));
        assert!(!scope.contains("sub/../../outside"));
        assert!(!scope.contains("escape/file"));
        assert!(!scope.contains(&outside.display().to_string()));
        assert!(!scope.contains("/etc/passwd"));
        assert!(!scope.contains(""));

        let p = pat("git", &["worktree", "remove", "--force", PATH_ARG]);
        assert!(p.matches(
            "git",
            &args(&["worktree", "remove", "--force", "sub"]),
            &scope
        ));
        assert!(!p.matches(
            "git",
            &args(&["worktree", "remove", "--force", "/tmp"]),
            &scope
        ));
        let out = pat("git", &["diff", "--output={path}"]);
        assert!(out.matches("git", &args(&["diff", "--output=sub/x.patch"]), &scope));
        assert!(!out.matches("git", &args(&["diff", "--output=/etc/x"]), &scope));
        assert!(!out.matches("git", &args(&["diff", "sub/x.patch"]), &scope));
        // `*` covers `{path}`, not the other way round.
        assert!(pat("git", &["*"]).covers(&pat("git", &[PATH_ARG])));
        assert!(!pat("git", &[PATH_ARG]).covers(&pat("git", &["*"])));
    }
}
