//! Cluster mode (`[cluster]` in `tether.toml`, or `--cluster` and `--host-id`, which
//! win): the NATS server whose JetStream holds the shared records and leases, this
//! host's id among its peers, and how long a lease lasts. Absent, the host runs alone.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// How long a lease lasts without renewal, unless set.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The longest a host id may be.
const MAX_HOST_ID: usize = 64;

/// `[cluster]` as read from disk.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCluster {
    url: Option<String>,
    host_id: Option<String>,
    token: Option<String>,
    credentials: Option<PathBuf>,
    lease_ttl_secs: Option<u64>,
    prefix: Option<String>,
    relay: Option<ClusterRelay>,
}

/// How an app connected to one host reaches its environment's runtime on another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRelay {
    /// Through NATS subjects: hosts need to reach only NATS, not each other.
    #[default]
    Nats,
    /// Straight to the other host's public URL over WebSocket: one hop less, and
    /// every host must reach every other's `--public-url`.
    Direct,
}

/// Cluster mode's settings; `None` in [`super::ServeConfig`] means no `[cluster]` table.
/// A table without `url` waits for `--cluster`; [`ClusterConfig::check_complete`] says
/// whether the settings are enough to run.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `nats://host:port` (or `tls://`): the NATS server, JetStream on; empty until
    /// `--cluster` gives it, when the file does not.
    pub url: String,
    /// This host's id: unique in the cluster, letters, digits, `-` and `_`.
    pub host_id: String,
    /// A NATS token, if the server wants one.
    pub token: Option<String>,
    /// A NATS credentials file (`.creds`), if the server wants one.
    pub credentials: Option<PathBuf>,
    /// How long an environment's lease lasts unless its owner renews it: a dead
    /// host's environments are taken over this long after its last renewal.
    pub lease_ttl: Duration,
    /// The start of the JetStream bucket names and NATS subjects, so several
    /// clusters can share one NATS server (default `tether`).
    pub prefix: String,
    /// How apps reach a runtime on another host.
    pub relay: ClusterRelay,
}

impl std::fmt::Debug for ClusterConfig {
    // The token is a secret: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &self.url)
            .field("host_id", &self.host_id)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("credentials", &self.credentials)
            .field("lease_ttl", &self.lease_ttl)
            .field("prefix", &self.prefix)
            .field("relay", &self.relay)
            .finish()
    }
}

/// `[cluster]` over the defaults: `None` when the table is absent or empty.
pub(super) fn cluster_config(file: FileCluster) -> Result<Option<ClusterConfig>, ConfigError> {
    let empty = file.url.is_none()
        && file.host_id.is_none()
        && file.token.is_none()
        && file.credentials.is_none()
        && file.lease_ttl_secs.is_none()
        && file.prefix.is_none()
        && file.relay.is_none();
    if empty {
        return Ok(None);
    }
    let lease_ttl = match file.lease_ttl_secs {
        None => DEFAULT_LEASE_TTL,
        Some(s @ 2..=3600) => Duration::from_secs(s),
        Some(s) => {
            return Err(ConfigError::Invalid(format!(
                "cluster.lease_ttl_secs {s}: must be between 2 and 3600"
            )));
        }
    };
    let prefix = file.prefix.unwrap_or_else(|| "tether".into());
    check_id("cluster.prefix", &prefix)?;
    let config = ClusterConfig {
        url: file
            .url
            .as_deref()
            .map(check_url)
            .transpose()?
            .unwrap_or_default(),
        host_id: String::new(),
        token: file.token,
        credentials: file.credentials,
        lease_ttl,
        prefix,
        relay: file.relay.unwrap_or_default(),
    };
    match file.host_id {
        Some(id) => config.with_flags(None, Some(id)).map(Some),
        None => Ok(Some(config)),
    }
}

impl ClusterConfig {
    /// Cluster mode from flags alone (`--cluster URL`), with the defaults.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            url: check_url(url)?,
            host_id: String::new(),
            token: None,
            credentials: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            prefix: "tether".into(),
            relay: ClusterRelay::default(),
        })
    }

    /// Lays `--cluster` and `--host-id` over `self`, and checks that a host id is
    /// set, since every host of a cluster must have its own.
    pub fn with_flags(
        mut self,
        url: Option<&str>,
        host_id: Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(url) = url {
            self.url = check_url(url)?;
        }
        if let Some(id) = host_id {
            check_id("host id", &id)?;
            self.host_id = id;
        }
        Ok(self)
    }

    /// `Invalid` unless the NATS URL and a host id are set.
    pub fn check_complete(&self) -> Result<(), ConfigError> {
        if self.url.is_empty() {
            return Err(ConfigError::Invalid(
                "[cluster] has no url: give the NATS server as --cluster URL or cluster.url (e.g. nats://127.0.0.1:4222)".into(),
            ));
        }
        if self.host_id.is_empty() {
            return Err(ConfigError::Invalid(
                "cluster mode needs this host's id: --host-id ID or cluster.host_id".into(),
            ));
        }
        Ok(())
    }
}

fn check_url(url: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("cluster url {url:?}: {why}"));
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("nats" | "tls")) {
        return Err(bad("must start with nats:// or tls://"));
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(bad(
            "must be a host and a port; give credentials as cluster.token or cluster.credentials",
        ));
    }
    Ok(url.to_owned())
}

/// Whether `id` may be a host id (or bucket prefix), which becomes part of NATS
/// subjects and key names: 1 to 64 letters, digits, `-` and `_`.
pub fn is_host_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_HOST_ID
        && (id.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// [`is_host_id`], or `Invalid` naming `what`.
fn check_id(what: &str, id: &str) -> Result<(), ConfigError> {
    if is_host_id(id) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{what} {:?}: 1 to {MAX_HOST_ID} letters, digits, '-' or '_'",
            crate::untrusted::logged(id)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(toml_text: &str) -> Result<Option<ClusterConfig>, ConfigError> {
        let f: FileCluster =
            toml::from_str(toml_text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cluster_config(f)
    }

    #[test]
    fn no_table_is_single_host_mode_and_one_without_a_url_waits_for_the_flag() {
        assert!(matches!(file(""), Ok(None)));
        let Ok(Some(c)) = file("host_id = \"a\"\nlease_ttl_secs = 3") else {
            panic!()
        };
        assert!(c.check_complete().is_err());
        let c = c.with_flags(Some("nats://127.0.0.1:4222"), None);
        assert!(
            c.is_ok_and(|c| c.check_complete().is_ok() && c.lease_ttl == Duration::from_secs(3))
        );
    }

    #[test]
    fn urls_ids_and_lease_lengths_are_checked() {
        let ok =
            file("url = \"nats://127.0.0.1:4222\"\nhost_id = \"host-a_1\"\nlease_ttl_secs = 5");
        let Ok(Some(c)) = ok else { panic!("{ok:?}") };
        assert_eq!(c.host_id, "host-a_1");
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert!(file("url = \"http://x:1\"").is_err());
        assert!(file("url = \"nats://user:pw@x:1\"").is_err());
        assert!(file("url = \"nats://x:1\"\nhost_id = \"a.b\"").is_err());
        assert!(file("url = \"nats://x:1\"\nhost_id = \"../a\"").is_err());
        assert!(file("url = \"nats://x:1\"\nlease_ttl_secs = 1").is_err());
        assert!(file("url = \"nats://x:1\"\nprefix = \"a>b\"").is_err());
        assert!(file("url = \"nats://x:1\"\nrelay = \"carrier-pigeon\"").is_err());
        let Ok(Some(c)) = file("url = \"nats://x:1\"\nrelay = \"direct\"") else {
            panic!()
        };
        assert_eq!(c.relay, ClusterRelay::Direct);
        let Ok(Some(c)) = file("url = \"nats://x:1\"") else {
            panic!()
        };
        assert!(c.check_complete().is_err());
        assert!(
            c.with_flags(None, Some("b".into()))
                .is_ok_and(|c| c.check_complete().is_ok())
        );
    }

    #[test]
    fn the_token_is_never_in_debug_output() {
        let Ok(Some(c)) = file("url = \"nats://x:1\"\ntoken = \"s3cret\"") else {
            panic!()
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
