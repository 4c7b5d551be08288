//! What changed between two versions of `tether.toml`, by key: the reload log and
//! the config status name the keys (`providers.local-process.commands`,
//! `limits.memory_mib`) and never a value, so a changed API key is reported as
//! changed without being written anywhere.
//!
//! It also says which keys a running host cannot take without a restart.

use std::collections::BTreeMap;

/// Keys (dotted paths) added, removed or changed between two files.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConfigDiff {
    /// Keys set now that were not before.
    pub added: Vec<String>,
    /// Keys set before that are gone.
    pub removed: Vec<String>,
    /// Keys whose value changed.
    pub changed: Vec<String>,
}

impl ConfigDiff {
    /// Compares `old` with `new` down to leaf values; arrays count as one value
    /// (`commands` changed, not its third entry).
    pub fn between(old: &toml::Table, new: &toml::Table) -> Self {
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        flatten("", old, &mut a);
        flatten("", new, &mut b);
        let mut diff = Self::default();
        for (key, value) in &b {
            match a.get(key) {
                None => diff.added.push(key.clone()),
                Some(before) if before != value => diff.changed.push(key.clone()),
                Some(_) => {}
            }
        }
        diff.removed = (a.keys().filter(|k| !b.contains_key(*k)))
            .cloned()
            .collect();
        diff
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Every key touched, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut all: Vec<String> = (self.added.iter())
            .chain(&self.removed)
            .chain(&self.changed)
            .cloned()
            .collect();
        all.sort();
        all
    }

    /// The touched keys a running host does not apply (see [`needs_restart`]).
    pub fn needing_restart(&self) -> Vec<String> {
        (self.keys().into_iter())
            .filter(|k| needs_restart(k))
            .collect()
    }

    /// `added [a], removed [b], changed [c]`, for a log line.
    pub fn summary(&self) -> String {
        let part = |what: &str, keys: &[String]| {
            (!keys.is_empty()).then(|| format!("{what} [{}]", keys.join(", ")))
        };
        let parts: Vec<String> = [
            part("added", &self.added),
            part("removed", &self.removed),
            part("changed", &self.changed),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            "no changes".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Whether a change of `key` (a dotted path) takes a restart of the host: settings
/// baked into what is already running (the relay's connections, the audit log, the
/// compile cache, the authentication throttle, the guest executor's threads, whether
/// instances share memory images, ticket lifetimes, how the server is reached and the
/// roots of providers' TLS client, built once at start-up) and a built-in's
/// replacement (decided when providers are loaded).
/// The certificate *files* of `[server]` are re-read live on their own.
/// Everything else is read at the next start of an environment.
pub fn needs_restart(key: &str) -> bool {
    let section = key.split('.').next().unwrap_or(key);
    matches!(
        section,
        "relay" | "cache" | "audit" | "auth" | "server" | "cluster"
    ) || key == "limits.guest_threads"
        || key == "limits.share_memory_images"
        || key == "net.extra_ca_files"
        || key == "net.use_builtin_roots"
        || key == "tenancy.ticket_ttl_secs"
        || (section == "providers" && key.split('.').nth(2) == Some("replace_builtin"))
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) if !inner.is_empty() => flatten(&path, inner, out),
            other => {
                out.insert(path, other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn names_keys_never_values() {
        let old = table(
            "[limits]\nmemory_mib = 256\n[providers.p]\nconfig = { apiKey = \"old-secret\" }\n[relay]\nwindow_kib = 1\n",
        );
        let new = table(
            "[limits]\nmemory_mib = 512\nmax_processes = 2\n[providers.p]\nconfig = { apiKey = \"new-secret\" }\n",
        );
        let diff = ConfigDiff::between(&old, &new);
        assert_eq!(diff.added, ["limits.max_processes"]);
        assert_eq!(diff.removed, ["relay.window_kib"]);
        assert_eq!(
            diff.changed,
            ["limits.memory_mib", "providers.p.config.apiKey"]
        );
        let summary = diff.summary();
        assert!(!summary.contains("secret"), "{summary}");
        assert_eq!(diff.needing_restart(), ["relay.window_kib"]);
        assert!(ConfigDiff::between(&new, &new).is_empty());
    }

    #[test]
    fn what_needs_a_restart() {
        assert!(needs_restart("relay.max_connections"));
        assert!(needs_restart("limits.guest_threads"));
        assert!(needs_restart("limits.share_memory_images"));
        assert!(needs_restart("providers.git-worktree.replace_builtin.file"));
        assert!(!needs_restart("providers.git-worktree.commands"));
        assert!(!needs_restart("templates.chat.provider"));
        assert!(!needs_restart("tenancy.max_running"));
        assert!(!needs_restart("limits.memory_mib"));
        assert!(needs_restart("server.tls_cert"));
        assert!(needs_restart("net.extra_ca_files"));
        assert!(!needs_restart("net.hosts.git.internal"));
    }
}
