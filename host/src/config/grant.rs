//! What the operator grants one provider ([`Grant`]): the built-in default grants,
//! and the rules a grant's variable entries must follow. The broker intersects a
//! grant with the provider's request and checks every spawn and connection
//! against it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use utoipa::ToSchema;

use super::pattern::{CommandPattern, PATH_ARG, UrlPattern};

/// What the operator grants one provider.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Grant {
    /// Commands it may spawn.
    pub commands: Vec<CommandPattern>,
    /// Host environment variables passed through to its children.
    pub env: Vec<String>,
    /// Variables the provider may set for its children: exact names, or `PREFIX*`
    /// (which never admits a loader or tool variable: SECURITY.md, "Variables of a
    /// spawned process").
    #[serde(rename = "setEnv")]
    pub set_env: Vec<String>,
    /// Destinations it may reach, as `scheme://host:port` patterns.
    #[schema(value_type = Vec<String>)]
    pub urls: Vec<UrlPattern>,
    /// Host directories (absolute) it may have preopened, with everything below them.
    #[schema(value_type = Vec<String>)]
    pub directories: Vec<PathBuf>,
    /// Where an operator widens this grant, for refusals that say how.
    #[serde(skip)]
    #[schema(required = true)]
    pub origin: Option<GrantOrigin>,
}

/// The table of `tether.toml` a grant is set in: what a refusal tells the operator
/// to edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantOrigin {
    /// The provider, as named in `[providers.NAME]`.
    pub provider: String,
    /// The config file in force (or where one would be read).
    pub file: PathBuf,
}

impl GrantOrigin {
    /// `add ENTRY to KEY in [providers.NAME] of FILE`, FILE by its name only: a
    /// refusal reaches the environment's `lastError`, which its owner reads, and where
    /// the operator keeps the file is the operator's (`GET /api/v1/config/status` and
    /// the log at start say it).
    pub fn fix(&self, key: &str, entry: &str) -> String {
        let file = self.file.file_name().unwrap_or(self.file.as_os_str());
        format!(
            "add {entry} to {key} in [providers.{}] of {}",
            toml_key(&self.provider),
            file.to_string_lossy()
        )
    }
}

/// `name` as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && (name.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_owned()
    } else {
        toml::Value::String(name.to_owned()).to_string()
    }
}

impl Grant {
    /// This grant, saying where the operator sets it.
    pub fn from_origin(mut self, origin: GrantOrigin) -> Self {
        self.origin = Some(origin);
        self
    }

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
                set_env: runtime_set_env(),
                urls: Vec::new(),
                directories: Vec::new(),
                origin: None,
            },
            // git on paths inside the environment's directories, in the shapes the
            // provider uses, and the reference runtime; projects under the data
            // directory (where `.codebolt/` lives) unless the operator says otherwise.
            "git-worktree" => Self {
                commands: git_worktree_commands(),
                env: runtime_env(),
                set_env: runtime_set_env(),
                urls: Vec::new(),
                directories: vec![data_dir.to_owned()],
                origin: None,
            },
            // The sandbox API's address is the operator's to name
            // (`[providers.http-sandbox] urls`): by default it reaches nothing and
            // spawns nothing.
            "http-sandbox" => Self::default(),
            _ => Self::default(),
        }
    }
}

/// Host variables the built-in providers pass through to the runtimes they start;
/// `TETHER_CA_FILE` so a runtime on this machine trusts the CA the host's own
/// certificate comes from when it dials `wss://`.
fn runtime_env() -> Vec<String> {
    ["PATH", "HOME", "LANG", "RUST_LOG", "TETHER_CA_FILE"]
        .map(String::from)
        .to_vec()
}

/// Variables the built-in providers set for the runtimes they start (the SDK's
/// `RESERVED_ENV`).
fn runtime_set_env() -> Vec<String> {
    [
        "TETHER_RUNTIME_URL",
        "TETHER_RUNTIME_TOKEN",
        "TETHER_ENVIRONMENT_ID",
    ]
    .map(String::from)
    .to_vec()
}

/// The arguments every git call of `git-worktree` starts with: `-c` settings,
/// which win over the repository's own configuration, so a `.git/config` or hook
/// written by someone else cannot make git run a command. The default grant
/// requires them literally (see SECURITY.md for what they cannot switch off).
pub const GIT_HARDENING: [&str; 16] = [
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.pager=cat",
    "-c",
    "protocol.allow=never",
    "-c",
    "submodule.recurse=false",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "core.sshCommand=false",
];

/// The commands `git-worktree` needs (its request is the same list), in one place
/// so the default grant and the documentation cannot drift from each other.
pub fn git_worktree_commands() -> Vec<CommandPattern> {
    let git = |args: &[&str]| CommandPattern {
        program: "git".into(),
        args: (GIT_HARDENING.iter().chain(args))
            .map(|a| (*a).to_owned())
            .collect(),
    };
    vec![
        git(&["rev-parse", "--show-toplevel"]),
        git(&["rev-parse", "--verify", "*"]),
        git(&["rev-parse", "--abbrev-ref", "HEAD"]),
        git(&["rev-parse", "--verify", "--quiet", "*"]),
        git(&["worktree", "add", "-b", "*", PATH_ARG, "*"]),
        git(&["worktree", "add", PATH_ARG, "*"]),
        git(&["worktree", "remove", "--force", PATH_ARG]),
        git(&["worktree", "prune"]),
        git(&["add", "--all", "--intent-to-add"]),
        git(&[
            "diff",
            "--no-ext-diff",
            "--no-textconv",
            "--binary",
            "--find-renames",
            "--output={path}",
            "*",
        ]),
        CommandPattern {
            program: "tether".into(),
            args: vec!["runtime".into()],
        },
    ]
}

/// Longest variable name a grant may name or a provider may set, in bytes.
const MAX_ENV_NAME: usize = 128;

/// Whether `name` is a plain variable name: `[A-Za-z_][A-Za-z0-9_]*`, bounded. One
/// rule for the names a grant lists and the names a provider sets at spawn time.
pub(crate) fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_ENV_NAME
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks one `set_env` entry of the operator's grant: a variable name, or a
/// non-empty prefix followed by `*`.
pub(super) fn check_set_env_entry(entry: &str) -> Result<(), String> {
    let name = entry.strip_suffix('*').unwrap_or(entry);
    if name.is_empty() {
        return Err("set_env entry `*` would admit every variable; name a prefix (`APP_*`)".into());
    }
    if valid_env_name(name) {
        Ok(())
    } else {
        Err(format!(
            "set_env entry {entry:?} is not a variable name or `PREFIX*`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_env_entries_are_names_or_prefixes() {
        assert!(check_set_env_entry("TETHER_RUNTIME_URL").is_ok());
        assert!(check_set_env_entry("APP_*").is_ok());
        assert!(check_set_env_entry("*").is_err());
        assert!(check_set_env_entry("A*B").is_err());
        assert!(check_set_env_entry("A=B").is_err());
        assert!(check_set_env_entry("").is_err());
    }
}
