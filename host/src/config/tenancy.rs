//! `[tenancy]` in `tether.toml`: how many environments each user may have, and have
//! running, which providers they may create them with, and how many long-lived
//! connections (app sockets, events streams, followed logs) they may hold, with per-user overrides
//! (`[tenancy.users.NAME]`). The lifecycle enforces them; this only reads and checks
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// One user's limits; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quota {
    /// Environments the user may own.
    pub max_environments: Option<usize>,
    /// Environments the user may have with desired state `running`.
    pub max_running: Option<usize>,
    /// Long-lived connections the user may hold on this host at once: app sockets,
    /// `/ws/events` streams and followed logs (`tenancy/connections.rs`).
    pub max_connections: Option<usize>,
    /// The providers the user may create and start environments with (`None`: every loaded
    /// one). Shared, so looking a user's limits up copies no list.
    pub providers: Option<Arc<BTreeSet<String>>>,
}

impl Quota {
    /// Whether the user may create an environment with `provider`.
    pub fn allows_provider(&self, provider: &str) -> bool {
        self.providers.as_ref().is_none_or(|p| p.contains(provider))
    }
}

/// Every user's limits: the defaults and the overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenancyConfig {
    /// Limits of every user without an override (the `admin` user included).
    pub default: Quota,
    /// Limits of named users; a field left out of an override takes the default.
    pub users: BTreeMap<String, Quota>,
    /// How long a WebSocket ticket works (1–60 s).
    pub ticket_ttl: Duration,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        Self {
            default: Quota::default(),
            users: BTreeMap::new(),
            ticket_ttl: Duration::from_secs(30),
        }
    }
}

impl TenancyConfig {
    /// The limits of `user`.
    pub fn quota_of(&self, user: &str) -> Quota {
        self.users.get(user).unwrap_or(&self.default).clone()
    }
}

/// `[tenancy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTenancy {
    max_environments: Option<usize>,
    max_running: Option<usize>,
    max_connections: Option<usize>,
    providers: Option<Vec<String>>,
    ticket_ttl_secs: Option<u64>,
    #[serde(default)]
    users: BTreeMap<String, FileQuota>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuota {
    max_environments: Option<usize>,
    max_running: Option<usize>,
    max_connections: Option<usize>,
    providers: Option<Vec<String>>,
}

/// Most users with their own limits (each is a line in the file; this bounds lookups
/// and memory, not anyone's use).
pub const MAX_OVERRIDES: usize = 100_000;

/// `[tenancy]` over no limits.
pub(super) fn tenancy_config(file: FileTenancy) -> Result<TenancyConfig, ConfigError> {
    let default = Quota {
        max_environments: file.max_environments,
        max_running: file.max_running,
        max_connections: file.max_connections,
        providers: providers_of("tenancy.providers", file.providers)?,
    };
    if file.users.len() > MAX_OVERRIDES {
        return Err(ConfigError::Invalid(format!(
            "tenancy.users has {} entries; at most {MAX_OVERRIDES}",
            file.users.len()
        )));
    }
    let mut users = BTreeMap::new();
    for (user, q) in file.users {
        crate::names::validate("user", &user)
            .map_err(|e| ConfigError::Invalid(format!("tenancy.users: {e}")))?;
        let key = format!("tenancy.users.{user}.providers");
        let quota = Quota {
            max_environments: q.max_environments.or(default.max_environments),
            max_running: q.max_running.or(default.max_running),
            max_connections: q.max_connections.or(default.max_connections),
            providers: providers_of(&key, q.providers)?.or_else(|| default.providers.clone()),
        };
        users.insert(user, quota);
    }
    let mut ticket_ttl = TenancyConfig::default().ticket_ttl;
    if let Some(secs) = file.ticket_ttl_secs {
        if !(1..=60).contains(&secs) {
            return Err(ConfigError::Invalid(format!(
                "tenancy.ticket_ttl_secs must be 1-60, not {secs}"
            )));
        }
        ticket_ttl = Duration::from_secs(secs);
    }
    Ok(TenancyConfig {
        default,
        users,
        ticket_ttl,
    })
}

/// A `providers` list as written: each a provider name (by the name rule; it need not
/// be loaded yet, a drop-in may come later).
fn providers_of(
    key: &str,
    list: Option<Vec<String>>,
) -> Result<Option<Arc<BTreeSet<String>>>, ConfigError> {
    let Some(list) = list else {
        return Ok(None);
    };
    for name in &list {
        crate::names::validate("provider", name)
            .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))?;
    }
    Ok(Some(Arc::new(list.into_iter().collect())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_fall_back_to_the_defaults_field_by_field() {
        let file: FileTenancy = toml::from_str(
            "max_environments = 10\nmax_running = 2\n[users.bob]\nmax_running = 5\n",
        )
        .unwrap_or_default();
        let c = tenancy_config(file).unwrap_or_default();
        assert_eq!(
            c.quota_of("bob"),
            Quota {
                max_environments: Some(10),
                max_running: Some(5),
                max_connections: None,
                providers: None,
            }
        );
        assert_eq!(c.quota_of("alice"), c.default);
        let bad: FileTenancy =
            toml::from_str("[users.\"../x\"]\nmax_running = 1\n").unwrap_or_default();
        assert!(tenancy_config(bad).is_err());
    }

    #[test]
    fn max_connections_is_a_limit_like_the_others() {
        let file: FileTenancy = toml::from_str(
            "max_connections = 20\n[users.bob]\nmax_connections = 0\n[users.carol]\nmax_running = 1\n",
        )
        .unwrap_or_default();
        let c = tenancy_config(file).unwrap_or_default();
        assert_eq!(c.quota_of("admin").max_connections, Some(20));
        // 0 is a limit (none at all), as for the other limits.
        assert_eq!(c.quota_of("bob").max_connections, Some(0));
        assert_eq!(c.quota_of("carol").max_connections, Some(20));
        assert_eq!(TenancyConfig::default().quota_of("x").max_connections, None);
        assert!(toml::from_str::<FileTenancy>("max_connections = -1\n").is_err());
    }

    #[test]
    fn a_users_providers_replace_the_default_list_and_an_absent_list_allows_all() {
        let file: FileTenancy = toml::from_str(
            "providers = [\"http-sandbox\"]\n[users.bob]\nproviders = [\"local-process\"]\n\
             [users.carol]\nmax_running = 1\n",
        )
        .unwrap_or_default();
        let c = tenancy_config(file).unwrap_or_default();
        assert!(c.quota_of("alice").allows_provider("http-sandbox"));
        assert!(!c.quota_of("alice").allows_provider("local-process"));
        assert!(c.quota_of("bob").allows_provider("local-process"));
        assert!(!c.quota_of("bob").allows_provider("http-sandbox"));
        assert!(!c.quota_of("carol").allows_provider("local-process"));
        assert!(
            TenancyConfig::default()
                .quota_of("x")
                .allows_provider("local-process")
        );
        let bad: FileTenancy = toml::from_str("providers = [\"../x\"]\n").unwrap_or_default();
        assert!(tenancy_config(bad).is_err());
    }
}
