//! Digests of settings that the hosts of a cluster compare (`cluster/agreement.rs`):
//! one SHA-256 over a canonical JSON form, where neither the order a file is written
//! in nor the order a map keeps its keys in counts. The templates' canonical form is
//! theirs (`templates.rs`); the providers' is here ([`ServeConfig::providers_digest`]),
//! since it joins what the engine loaded with the grants and operator config of this
//! module, and so are the tenancy limits' ([`TenancyConfig::digest`]).
//!
//! Nothing a digest covers is secret: a secret's value would let anyone who can read
//! the digest test guesses at it, so only its key enters.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Grant, Quota, ServeConfig, TenancyConfig};

/// What [`ServeConfig::providers_digest`] hashes first: a later change of the canonical
/// form changes this, rather than letting two forms of one set of providers be taken
/// for a difference.
const PROVIDERS_DOMAIN: &[u8] = b"tether providers v1\n";

/// What [`TenancyConfig::digest`] hashes first, as [`PROVIDERS_DOMAIN`] for the
/// providers.
const TENANCY_DOMAIN: &[u8] = b"tether tenancy v1\n";

/// How a directory inside the host's data directory is written in a grant's canonical
/// form: each host has its own data directory, and a grant of "the data directory"
/// (the built-in `git-worktree`'s default) is the same grant on every host.
const DATA_DIR: &str = "<data-dir>";

/// SHA-256 (lower-case hex) of `domain` followed by `value` as JSON with the keys of
/// every object in it sorted.
pub(super) fn canonical_digest(domain: &[u8], value: &Value) -> String {
    let mut hash = Sha256::new();
    hash.update(domain);
    hash.update(sorted(value).to_string().as_bytes());
    hex::encode(hash.finalize())
}

/// `value` with the keys of every object in it sorted (`serde_json` keeps insertion
/// order here, which is the file's).
pub(super) fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let by_key: BTreeMap<&String, &Value> = map.iter().collect();
            Value::Object(
                (by_key.into_iter())
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// A host's loaded providers as the hosts of a cluster compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidersDigest {
    /// SHA-256 (lower-case hex) of every loaded provider: its name, its component's
    /// SHA-256, the grant in force for it and the keys (never the values) of its
    /// operator config.
    pub digest: String,
    /// Every loaded provider's name, sorted.
    pub names: Vec<String>,
}

impl ServeConfig {
    /// The digest of the providers `loaded` (each name with the SHA-256 of its
    /// component, as the engine computed it when it loaded the bytes) under these
    /// settings: equal for two hosts exactly when each provider is the same build
    /// with the same grant and the same operator config keys, whatever the order
    /// anything is written in.
    pub fn providers_digest<'a>(
        &self,
        loaded: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> ProvidersDigest {
        let by_name: BTreeMap<&str, &str> = loaded.into_iter().collect();
        let all: Map<String, Value> = (by_name.iter())
            .map(|(name, sha256)| {
                let mut one = Map::new();
                one.insert("component".into(), Value::from(*sha256));
                let grant = self.grant_for(name);
                one.insert("grant".into(), grant_canonical(&grant, &self.data_dir));
                let keys: Vec<&str> = (self.provider_config.get(*name))
                    .map(|c| c.keys().collect())
                    .unwrap_or_default();
                one.insert("configKeys".into(), set_of(keys));
                ((*name).to_owned(), Value::Object(one))
            })
            .collect();
        ProvidersDigest {
            digest: canonical_digest(PROVIDERS_DOMAIN, &Value::Object(all)),
            names: by_name.keys().map(|n| (*n).to_owned()).collect(),
        }
    }
}

impl TenancyConfig {
    /// SHA-256 (lower-case hex) of the limits in force: the defaults and every
    /// override, each with the limits it resolves to. Equal for two hosts exactly
    /// when every user may have as many environments, and as many running, on
    /// either, whatever the order the file is written in.
    pub fn digest(&self) -> String {
        // Destructured whole: a field added to `TenancyConfig` does not compile here
        // until it is either hashed or said not to change what a user may do.
        let Self {
            default,
            users,
            // How long this host's WebSocket tickets work: not a limit of a user's,
            // and a ticket is used on the host that issued it.
            ticket_ttl: _,
        } = self;
        let users: Map<String, Value> = (users.iter())
            .map(|(user, quota)| (user.clone(), quota_canonical(quota)))
            .collect();
        let mut all = Map::new();
        all.insert("default".into(), quota_canonical(default));
        all.insert("users".into(), Value::Object(users));
        canonical_digest(TENANCY_DOMAIN, &Value::Object(all))
    }
}

/// A user's limits as JSON: `null` for no limit (and for every provider allowed).
fn quota_canonical(quota: &Quota) -> Value {
    // Destructured whole, as the tenancy config above.
    let Quota {
        max_environments,
        max_running,
        max_connections,
        providers,
    } = quota;
    let mut canonical = serde_json::json!({
        "maxEnvironments": max_environments,
        "maxRunning": max_running,
    });
    // Only when set: a host without a list hashes as a host of a version before
    // lists did, so a rolling upgrade does not see every host's limits differ. A set
    // (sorted, each once): the order a list is written in allows nothing more.
    if let (Some(providers), Some(map)) = (providers, canonical.as_object_mut()) {
        map.insert("providers".into(), serde_json::json!(providers.as_ref()));
    }
    // Only when set, likewise. Each host counts its own connections (`docs/cluster.md`,
    // "Quotas"), but two hosts with different limits still let a user do different things.
    if let (Some(max), Some(map)) = (max_connections, canonical.as_object_mut()) {
        map.insert("maxConnections".into(), serde_json::json!(max));
    }
    canonical
}

/// What `grant` lets a provider do, as JSON: every list a set (matching does not
/// depend on the order of a grant's entries, nor on an entry written twice), and a
/// directory inside `data_dir` by its place there.
fn grant_canonical(grant: &Grant, data_dir: &Path) -> Value {
    // Destructured whole: a field added to `Grant` does not compile here until it
    // is either hashed or said not to change what a provider may do.
    let Grant {
        commands,
        env,
        set_env,
        urls,
        directories,
        origin: _,
    } = grant;
    let commands =
        (commands.iter()).map(|c| serde_json::json!({"program": c.program(), "args": c.args()}));
    let directories = directories.iter().map(|d| match d.strip_prefix(data_dir) {
        Ok(inside) if inside.as_os_str().is_empty() => DATA_DIR.to_owned(),
        Ok(inside) => format!("{DATA_DIR}/{}", inside.display()),
        Err(_) => d.display().to_string(),
    });
    let mut out = Map::new();
    out.insert("commands".into(), set_of(commands.map(|c| c.to_string())));
    out.insert("env".into(), set_of(env));
    out.insert("setEnv".into(), set_of(set_env));
    out.insert("urls".into(), set_of(urls.iter().map(ToString::to_string)));
    out.insert("directories".into(), set_of(directories));
    Value::Object(out)
}

/// `items` sorted, each once, as a JSON array of strings.
fn set_of<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
    let set: std::collections::BTreeSet<String> =
        items.into_iter().map(|s| s.as_ref().to_owned()).collect();
    Value::from_iter(set)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    /// Settings read from a `tether.toml` holding `text`, in data directory `data`
    /// (made under a temporary directory that lives as long as the settings are used).
    fn config_in(dir: &Path, data: &str, text: &str) -> ServeConfig {
        let data = dir.join(data);
        std::fs::create_dir_all(&data).unwrap();
        let path = data.join("tether.toml");
        std::fs::write(&path, text).unwrap();
        ServeConfig::load("127.0.0.1:0".parse().unwrap(), data, &path).unwrap()
    }

    fn digest_of(text: &str, loaded: &[(&str, &str)]) -> ProvidersDigest {
        let dir = tempfile::tempdir().unwrap();
        config_in(dir.path(), "a", text).providers_digest(loaded.iter().copied())
    }

    const GRANTS: &str = "[providers.p]\n\
        commands = [{ program = \"git\", args = [\"status\"] }, { program = \"tether\", args = [\"runtime\"] }]\n\
        env = [\"PATH\", \"HOME\"]\nset_env = [\"APP_*\", \"X\"]\n\
        urls = [\"https://api.example.com\", \"http://127.0.0.1:9\"]\n\
        directories = [\"/srv/one\", \"/srv/two\"]\n\
        config = { apiKey = \"s3cret\", model = \"m\" }\n";

    #[test]
    fn the_order_anything_is_written_in_does_not_count() {
        let one = digest_of(GRANTS, &[("p", A), ("local-process", B)]);
        assert_eq!(one.digest.len(), 64);
        assert!(
            (one.digest.bytes()).all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{one:?}"
        );
        assert_eq!(one.names, ["local-process", "p"]);
        let reordered = "[providers.p]\n\
            config = { model = \"m\", apiKey = \"s3cret\" }\n\
            directories = [\"/srv/two\", \"/srv/one\", \"/srv/one\"]\n\
            urls = [\"http://127.0.0.1:9\", \"https://api.example.com:443\"]\n\
            set_env = [\"X\", \"APP_*\"]\nenv = [\"HOME\", \"PATH\"]\n\
            commands = [{ program = \"tether\", args = [\"runtime\"] }, { args = [\"status\"], program = \"git\" }]\n";
        assert_eq!(digest_of(reordered, &[("local-process", B), ("p", A)]), one);
    }

    #[test]
    fn a_grant_a_config_key_or_the_component_changes_it_and_a_secret_value_does_not() {
        let base = digest_of(GRANTS, &[("p", A)]).digest;
        let variants = [
            (GRANTS.replace("\"status\"", "\"log\""), A),
            (
                GRANTS.replace("program = \"git\"", "program = \"/usr/bin/git\""),
                A,
            ),
            (GRANTS.replace("\"HOME\"", "\"USER\""), A),
            (GRANTS.replace("\"APP_*\", ", ""), A),
            (GRANTS.replace("127.0.0.1:9", "127.0.0.1:10"), A),
            (GRANTS.replace("\"/srv/two\"", "\"/srv/three\""), A),
            (GRANTS.replace("model = \"m\"", "region = \"m\""), A),
            (
                GRANTS.replace("config = { apiKey = \"s3cret\", model = \"m\" }\n", ""),
                A,
            ),
            // No grant keys at all: the built-in default (nothing, for `p`).
            (
                "[providers.p]\nconfig = { apiKey = \"s3cret\", model = \"m\" }\n".into(),
                A,
            ),
            (GRANTS.to_owned(), B),
        ];
        let mut seen = BTreeSet::from([base.clone()]);
        for (text, sha) in &variants {
            let digest = digest_of(text, &[("p", sha)]).digest;
            assert!(seen.insert(digest), "{text} with {sha}");
        }
        // A provider more, or one missing.
        assert!(seen.insert(digest_of(GRANTS, &[("p", A), ("q", A)]).digest));
        assert!(seen.insert(digest_of(GRANTS, &[]).digest));
        // The operator config's values may be secrets: they never enter it.
        let other_value = GRANTS
            .replace("s3cret", "another")
            .replace("\"m\"", "\"n\"");
        assert_eq!(digest_of(&other_value, &[("p", A)]).digest, base);
    }

    #[test]
    fn a_grant_of_a_directory_in_the_data_directory_is_the_same_on_every_host() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = [("git-worktree", A)];
        // The built-in default grants the data directory, each host its own.
        let a = config_in(dir.path(), "a", "").providers_digest(loaded);
        let b = config_in(dir.path(), "b", "").providers_digest(loaded);
        assert_eq!(a, b);
        let inside = |data: &str| {
            let path = dir.path().join(data).canonicalize().unwrap();
            let text = format!(
                "[providers.git-worktree]\ndirectories = [\"{}/projects\"]\n",
                path.display()
            );
            config_in(dir.path(), data, &text).providers_digest(loaded)
        };
        assert_eq!(inside("a"), inside("b"));
        assert_ne!(inside("a"), a);
        // The same place outside both is the same grant; another is not.
        let outside = |data: &str, path: &str| {
            let text = format!("[providers.git-worktree]\ndirectories = [\"{path}\"]\n");
            config_in(dir.path(), data, &text).providers_digest(loaded)
        };
        assert_eq!(outside("a", "/srv/x"), outside("b", "/srv/x"));
        assert_ne!(outside("a", "/srv/x"), outside("b", "/srv/y"));
    }

    /// The digest of the `[tenancy]` of a `tether.toml` holding `text`.
    fn tenancy_of(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        config_in(dir.path(), "a", text).tenancy.digest()
    }

    const TENANCY: &str = "[tenancy]\nmax_environments = 10\nmax_running = 2\n\
        [tenancy.users.bob]\nmax_running = 5\n\
        [tenancy.users.carol]\nmax_environments = 20\nmax_running = 4\n";

    #[test]
    fn limits_without_a_providers_list_hash_as_before_lists() {
        // What a host of the version before `providers` publishes for TENANCY.
        let before = serde_json::json!({
            "default": {"maxEnvironments": 10, "maxRunning": 2},
            "users": {
                "bob": {"maxEnvironments": 10, "maxRunning": 5},
                "carol": {"maxEnvironments": 20, "maxRunning": 4},
            },
        });
        assert_eq!(
            tenancy_of(TENANCY),
            canonical_digest(TENANCY_DOMAIN, &before)
        );
    }

    #[test]
    fn the_order_of_the_tenancy_limits_does_not_count() {
        let one = tenancy_of(TENANCY);
        assert_eq!(one.len(), 64);
        let reordered = "[tenancy.users.carol]\nmax_running = 4\nmax_environments = 20\n\
            [tenancy.users.bob]\nmax_running = 5\n\
            [tenancy]\nmax_running = 2\nmax_environments = 10\n";
        assert_eq!(tenancy_of(reordered), one);
        // How long a WebSocket ticket works is not a limit.
        let tickets = TENANCY.replace(
            "max_running = 2\n",
            "max_running = 2\nticket_ttl_secs = 9\n",
        );
        assert_eq!(tenancy_of(&tickets), one);
        // A providers list is a set.
        let listed = |list: &str| {
            tenancy_of(&TENANCY.replace(
                "max_running = 2\n",
                &format!("max_running = 2\nproviders = {list}\n"),
            ))
        };
        assert_eq!(listed(r#"["b", "a"]"#), listed(r#"["a", "b", "a"]"#));
        // Nor is a host's other settings.
        assert_eq!(
            tenancy_of(&format!("[cluster]\nlease_ttl_secs = 6\n{TENANCY}")),
            one
        );
    }

    #[test]
    fn a_default_an_override_or_an_override_more_or_less_changes_the_tenancy_digest() {
        let variants = [
            TENANCY.replace("max_environments = 10", "max_environments = 11"),
            TENANCY.replace("max_environments = 10\n", ""),
            TENANCY.replace("max_running = 2", "max_running = 3"),
            TENANCY.replace("max_running = 5", "max_running = 6"),
            TENANCY.replace(
                "max_running = 2\n",
                "max_running = 2\nproviders = [\"a\"]\n",
            ),
            TENANCY.replace("max_running = 2\n", "max_running = 2\nproviders = []\n"),
            TENANCY.replace(
                "max_running = 5\n",
                "max_running = 5\nproviders = [\"a\"]\n",
            ),
            TENANCY.replace("max_environments = 20", "max_environments = 21"),
            TENANCY.replace(
                "max_running = 2\n",
                "max_running = 2\nmax_connections = 4\n",
            ),
            TENANCY.replace(
                "max_running = 5\n",
                "max_running = 5\nmax_connections = 4\n",
            ),
            // carol's limits given to another user.
            TENANCY.replace("[tenancy.users.carol]", "[tenancy.users.dave]"),
            TENANCY.replace(
                "[tenancy.users.carol]\nmax_environments = 20\nmax_running = 4\n",
                "",
            ),
            format!("{TENANCY}[tenancy.users.erin]\n"),
            String::new(),
        ];
        let mut seen = BTreeSet::from([tenancy_of(TENANCY)]);
        for text in &variants {
            assert!(seen.insert(tenancy_of(text)), "{text}");
        }
        // What the limits in force are counts, not how they are written: a field an
        // override leaves out is the default's.
        let explicit = TENANCY.replace(
            "[tenancy.users.bob]\nmax_running = 5\n",
            "[tenancy.users.bob]\nmax_environments = 10\nmax_running = 5\n",
        );
        assert_eq!(tenancy_of(&explicit), tenancy_of(TENANCY));
    }
}
