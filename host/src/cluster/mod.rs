//! Cluster mode: several `tether serve` hosts share one NATS server with JetStream.
//!
//! Key-value buckets hold what the hosts share (`PREFIX` is `cluster.prefix`,
//! `tether` by default):
//!
//! - `PREFIX-records`: every environment record, keyed by id ([`records`]). Each host
//!   keeps its own `.codebolt/environments.json` as a current copy; a change made on
//!   any host (through the API, by the host itself, or by hand in its file) is written
//!   to the bucket as a compare-and-set on the key's revision and merged field by
//!   field when another host changed the record first.
//! - `PREFIX-leases`: one key per running environment, held by the host that runs
//!   its provider instance ([`leases`]). A lease lives `lease_ttl` past its last
//!   renewal; its first revision is its epoch.
//! - `PREFIX-hosts`: one key per live host, renewed like a lease: the cluster view of
//!   `GET /api/v1/cluster`, and digests of each host's `[templates]`, of its
//!   providers and of its `[tenancy]` limits, which every host compares with its own
//!   ([`agreement`]).
//! - `PREFIX-names`: environment names, each held by the id of its record, so two
//!   hosts never create one name at once.
//! - `PREFIX-tokens`: user tokens (their records, never their secrets), so a token
//!   made or revoked on one host is made or revoked on all ([`tokens`]).
//! - `PREFIX-removals`: deleted records whose resource a host is still to remove,
//!   each naming that host, so another host does it if that one dies ([`removals`]).
//! - `PREFIX-admissions`: one key per user while a host checks and makes a change
//!   that counts against the user's limits, so two hosts never both admit the last
//!   change that fits ([`admissions`]).
//!
//! Apps connected to one host reach a runtime on another through tunnels over NATS
//! subjects ([`tunnel`]).
//!
//! The lifecycle asks this module before it runs an environment (claiming its lease)
//! and hears from it of remote record changes, lost leases and orphaned environments;
//! this module never calls up into the lifecycle.

mod admissions;
mod agreement;
mod buckets;
mod direct;
mod host_entry;
mod leases;
mod merge;
mod records;
mod remembered;
mod removals;
mod tokens;
mod tunnel;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use utoipa::ToSchema;

use crate::config::{ClusterConfig, ClusterRelay, ProvidersDigest, Template, TenancyConfig};
use crate::store::{Changes, Record, Store};
use crate::sync::MutexExt;

pub(crate) use admissions::Admission;
use direct::Lease as DirectLease;
pub(crate) use leases::LeaseView;
pub(crate) use removals::Abandoned;
pub(crate) use tunnel::{Accepted, TunnelStream};

/// The largest record the records bucket takes (the API's own bounds are far lower).
const MAX_RECORD_BYTES: i32 = 4 << 20;
/// How long connecting to NATS may take at start before the host refuses to run.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How old a name's hold must be before a hold without a record counts as stale.
const STALE_NAME: time::Duration = time::Duration::minutes(1);
/// How often a name whose reservation's answer was lost is tried for again.
const NAME_RETRY: Duration = Duration::from_secs(1);
/// How long shutdown waits for NATS to take the released leases.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// How many recent conflicts `GET /api/v1/cluster` shows.
const CONFLICTS_KEPT: usize = 50;
/// How long a create waits for its name to be reserved cluster-wide, and a start
/// for its lease: long enough for NATS restarting to be back.
const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// How long a request's answer waits for one piece of bookkeeping in NATS (a name
/// let go, a host's entry read, the hosts listed) before going on without.
const BOOKKEEPING_WAIT: Duration = Duration::from_secs(3);
/// How long an admitted change waits for this host's copy of the records to catch
/// up with the bucket, and then for its own record to reach the bucket.
const SYNC_WAIT: Duration = Duration::from_secs(3);

/// How long record changes may go unwritten to the bucket before `/healthz` says so:
/// longer than a retry or two, so a moment's trouble is not reported.
const UNSHARED_AFTER: Duration = Duration::from_secs(5);
/// The shortest lease: `lease_ttl_secs`'s bound, which a leases bucket made by hand
/// must keep too.
const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// The longest lease, likewise.
const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
/// How many invalid records `/healthz` names one by one (the rest are counted).
const INVALID_NAMED: usize = 8;

/// Changes of this host (of records, or of tokens) that their bucket did not take.
#[derive(Debug)]
struct Unshared {
    since: std::time::Instant,
    count: usize,
    error: String,
}

/// Why cluster mode could not start or act.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    /// NATS cannot be reached (or refused the credentials).
    #[error("cluster: cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The configured URL.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// NATS is there but JetStream is not enabled for this account.
    #[error(
        "cluster: NATS at {url} has no JetStream for this account ({reason}); start nats-server with -js (or `jetstream {{}}` in its config)"
    )]
    NoJetStream {
        /// The configured URL.
        url: String,
        /// What the server said.
        reason: String,
    },
    /// A bucket could not be made or opened.
    #[error("cluster: bucket {bucket}: {reason}")]
    Bucket {
        /// Its name.
        bucket: String,
        /// What the server said.
        reason: String,
    },
    /// A request to NATS failed.
    #[error("cluster: {0}")]
    Nats(String),
    /// Another host held what this host waited for, for too long.
    #[error("cluster: {0}")]
    Busy(String),
    /// Another live process announces itself under this host's id.
    #[error(
        "cluster: host id {0} is in use by another running host (its entry in the hosts bucket is being renewed); give every host its own --host-id"
    )]
    HostIdInUse(String),
}

/// What the lifecycle hears from the cluster.
#[derive(Debug)]
pub(crate) enum ClusterEvent {
    /// Other hosts changed records; they are applied to the local store already.
    Records(Changes),
    /// This host no longer holds the lease of these environments: stop them here.
    LeaseLost(String),
    /// No host holds the lease of this environment, which should be running.
    Orphaned(String),
    /// Another host's environment changed its live status.
    Status(String),
    /// A deleted environment's resource was left to a host that is gone: this host
    /// may claim the removal ([`Cluster::claim_removal`]).
    Abandoned(Box<Abandoned>),
}

/// One host as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HostView {
    /// Its `--host-id`.
    pub id: String,
    /// Where apps, the API and runtimes reach it.
    pub public_url: String,
    /// Whether it is this host (the one that answered).
    #[serde(rename = "self")]
    pub this: bool,
    /// How many environments it runs (holds the lease of).
    pub load: usize,
    /// The ids of the environments it runs.
    pub environments: Vec<String>,
    /// When it last said it is alive (RFC 3339).
    pub last_seen: String,
    /// SHA-256 (64 lower-case hex digits) of its `[templates]`: every field that
    /// changes what a template connect makes, secret values excepted. `null` when
    /// unknown: a host of an older version, or an entry that says something malformed.
    #[schema(required = true)]
    pub templates_digest: Option<String>,
    /// Whether its `[templates]` are the answering host's (the same digest); `null`
    /// when its digest is unknown. Hosts whose templates differ are named in the
    /// answering host's `/healthz`.
    #[schema(required = true)]
    pub templates_match: Option<bool>,
    /// How many templates it has; `null` when unknown.
    #[schema(required = true)]
    pub template_count: Option<usize>,
    /// Their names, sorted: the first 64; `null` when unknown.
    #[schema(required = true)]
    pub template_names: Option<Vec<String>>,
    /// SHA-256 (64 lower-case hex digits) of its loaded providers: each one's name,
    /// the SHA-256 of its component, the grant in force for it and the keys (never
    /// the values) of its operator config. `null` when unknown: a host of an older
    /// version, or an entry that says something malformed.
    #[schema(required = true)]
    pub providers_digest: Option<String>,
    /// Whether its providers are the answering host's (the same digest); `null` when
    /// its digest is unknown. Hosts whose providers differ are named in the answering
    /// host's `/healthz`.
    #[schema(required = true)]
    pub providers_match: Option<bool>,
    /// How many providers it has loaded; `null` when unknown.
    #[schema(required = true)]
    pub provider_count: Option<usize>,
    /// Their names, sorted: the first 64; `null` when unknown.
    #[schema(required = true)]
    pub provider_names: Option<Vec<String>>,
    /// SHA-256 (64 lower-case hex digits) of its `[tenancy]` limits: the defaults
    /// (`max_environments`, `max_running`) and every `[tenancy.users.NAME]` override,
    /// as each resolves. `null` when unknown: a host of an older version, or an entry
    /// that says something malformed.
    #[schema(required = true)]
    pub tenancy_digest: Option<String>,
    /// Whether its `[tenancy]` limits are the answering host's (the same digest);
    /// `null` when its digest is unknown. Hosts whose limits differ are named in the
    /// answering host's `/healthz`: a user's limits depend on the host their request
    /// reaches.
    #[schema(required = true)]
    pub tenancy_match: Option<bool>,
    /// How many users have an override of their own; `null` when unknown.
    #[schema(required = true)]
    pub tenancy_user_count: Option<usize>,
    /// Their names, sorted: the first 64; `null` when unknown.
    #[schema(required = true)]
    pub tenancy_users: Option<Vec<String>>,
    /// How many deleted environments' resources it still tries to remove (that host's
    /// `GET /api/v1/removals` lists them); `null` when unknown: a host of an older
    /// version, or an entry that says something else than a count.
    #[schema(required = true)]
    pub pending_removals: Option<usize>,
    /// How many runtimes of the environments it runs are connected to it (at most
    /// `load`; fewer while some start or reconnect), current within a third of a lease;
    /// `null` when unknown: a host of an older version, or an entry that says something
    /// else than a count.
    #[schema(required = true)]
    pub runtimes_connected: Option<usize>,
}

/// A change to one record field that lost to another host's change of the same field.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConflictView {
    /// The environment.
    pub environment_id: String,
    /// The record field both hosts changed.
    pub field: String,
    /// The value this host had written, which lost.
    #[schema(value_type = Object)]
    pub lost: serde_json::Value,
    /// The value in force.
    #[schema(value_type = Object)]
    pub kept: serde_json::Value,
    /// When (RFC 3339).
    pub at: String,
}

/// The cluster as one host sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterView {
    /// This host's id.
    pub host_id: String,
    /// Whether this host is connected to NATS right now.
    pub connected: bool,
    /// How long a lease lasts without renewal (seconds).
    pub lease_ttl_secs: u64,
    /// Every live host, this one included.
    pub hosts: Vec<HostView>,
    /// The latest field conflicts between hosts' concurrent changes, newest last.
    pub conflicts: Vec<ConflictView>,
}

/// A handle on cluster mode; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClusterConfig,
    client: async_nats::Client,
    records: kv::Store,
    /// Environment names, each held by the id of the record that has it.
    names: kv::Store,
    /// User tokens, by id.
    tokens: kv::Store,
    leases: Arc<leases::Leases>,
    /// This host's templates, providers and tenancy limits, and how the other
    /// hosts' compare.
    agreements: Arc<agreement::Agreements>,
    removals: Arc<removals::Removals>,
    admissions: admissions::Admissions,
    /// The newest revision of the records bucket applied to this host's store.
    applied: tokio::sync::watch::Sender<u64>,
    /// The store's edit count ([`Store::edited`]) whose changes are all in the
    /// records bucket.
    written: tokio::sync::watch::Sender<u64>,
    /// Tells the records' sync that someone waits for its next write.
    hurry: tokio::sync::Notify,
    tunnels: Arc<tunnel::Tunnels>,
    /// By what changed (`record`, `token`): since when this host's changes could not
    /// be written to their bucket, how many, and why the last one could not; absent
    /// while every one is written.
    unshared: Mutex<BTreeMap<&'static str, Unshared>>,
    /// The keys of the records bucket whose last value is not a valid record, with
    /// why (never the value's text): named in `/healthz` until repaired.
    invalid_records: Mutex<BTreeMap<String, String>>,
    /// The keys of the tokens bucket whose last value is not a valid token, with
    /// why: the token is refused, and named in `/healthz`, until repaired.
    invalid_tokens: Mutex<BTreeMap<String, String>>,
    /// The keys of the records bucket whose record is not applied here because
    /// another record has its name: named in `/healthz` while so.
    name_clashes: Mutex<BTreeMap<String, records::NameClash>>,
    /// By environment whose lease this host took: the records bucket's last
    /// revision then ([`Cluster::note_claim`]).
    claimed_after: Mutex<HashMap<String, u64>>,
    /// The buckets as this host opened them, looked up every lease.
    buckets: Arc<buckets::Buckets>,
    /// Leases whose URL a direct bridge refused to dial.
    direct: direct::Refusals,
    conflicts: Mutex<std::collections::VecDeque<ConflictView>>,
    /// Field conflicts since start (the list keeps only the latest).
    conflicts_seen: std::sync::atomic::AtomicU64,
    closing: CancellationToken,
}

impl Cluster {
    /// Connects to NATS, checks JetStream and opens (or makes) the buckets, and
    /// announces this host with its `templates`, `providers` and `tenancy` limits
    /// (its instance id kept in `state_dir`, `.codebolt/cluster`). Fails, saying why,
    /// when another running host has its id, or when NATS is
    /// unreachable or has no JetStream: a host in cluster mode never runs alone by
    /// mistake.
    pub(crate) async fn connect(
        config: ClusterConfig,
        public_url: String,
        templates: &BTreeMap<String, Template>,
        providers: &ProvidersDigest,
        tenancy: &TenancyConfig,
        state_dir: &std::path::Path,
    ) -> Result<Self, ClusterError> {
        let url = config.url.clone();
        let connect_error = |reason: String| ClusterError::Connect {
            url: url.clone(),
            reason,
        };
        let mut options = match &config.credentials {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| connect_error(format!("credentials {}: {e}", path.display())))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        let options = options
            .name(format!("tether {}", config.host_id))
            .connection_timeout(CONNECT_TIMEOUT)
            .max_reconnects(None);
        let client = tokio::time::timeout(CONNECT_TIMEOUT * 2, options.connect(url.as_str()))
            .await
            .map_err(|_| connect_error("timed out".into()))?
            .map_err(|e| connect_error(e.to_string()))?;
        let js = jetstream::new(client.clone());
        js.query_account()
            .await
            .map_err(|e| ClusterError::NoJetStream {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let prefix = &config.prefix.clone();
        let ttl = config.lease_ttl;
        let records = bucket(
            &js,
            prefix,
            "records",
            "environment records, by id",
            Age::Never,
            MAX_RECORD_BYTES,
        )
        .await?;
        let names = bucket(
            &js,
            prefix,
            "names",
            "environment names, each held by its record's id",
            Age::Never,
            1024,
        )
        .await?;
        let lease_bucket = bucket(
            &js,
            prefix,
            "leases",
            "which host runs each environment",
            Age::Lapses {
                made: ttl,
                least: MIN_LEASE_TTL,
                most: MAX_LEASE_TTL,
            },
            64 << 10,
        )
        .await?;
        // The bucket's age limit is the lease in force: made by the first host, it
        // holds for every host, whatever each one's own setting says.
        let mut config = config;
        let in_force = (lease_bucket.status().await)
            .map_err(|e| ClusterError::Nats(format!("reading the leases bucket: {e}")))?
            .max_age();
        if !in_force.is_zero() && in_force != config.lease_ttl {
            tracing::warn!(configured = ?config.lease_ttl, in_force = ?in_force, "cluster: the leases bucket was made with another lease_ttl_secs; using the bucket's (give every host the same)");
            config.lease_ttl = in_force;
        }
        // Made (if missing) with the lease in force: entries lapse with the leases.
        let hosts = bucket(
            &js,
            prefix,
            "hosts",
            "live hosts",
            Age::Lapses {
                made: config.lease_ttl,
                least: MIN_LEASE_TTL,
                most: MAX_LEASE_TTL,
            },
            64 << 10,
        )
        .await?;
        let token_bucket = bucket(
            &js,
            prefix,
            "tokens",
            "user tokens by id (SHA-256 of the secret, never the secret)",
            Age::Never,
            tokens::MAX_TOKEN_BYTES as i32,
        )
        .await?;
        let removal_bucket = bucket(
            &js,
            prefix,
            "removals",
            "deleted records whose resource a host is still to remove",
            Age::Never,
            MAX_RECORD_BYTES,
        )
        .await?;
        let admission_bucket = bucket(
            &js,
            prefix,
            "admissions",
            "users whose change a host is checking against their limits",
            Age::Lapses {
                made: admissions::HELD_AT_MOST,
                least: admissions::HELD_AT_MOST,
                most: admissions::HELD_AT_MOST * 6,
            },
            1024,
        )
        .await?;
        let buckets = Arc::new(
            buckets::Buckets::new(&[
                &records,
                &names,
                &lease_bucket,
                &hosts,
                &token_bucket,
                &removal_bucket,
                &admission_bucket,
            ])
            .await?,
        );
        // Host entries are renewed with the leases and must lapse with them: sooner, a
        // live host would seem dead between renewals (its removals taken over, its id
        // free for a second process); later, a dead one would seem alive.
        let entries_age = (hosts.status().await)
            .map_err(|e| ClusterError::Nats(format!("reading the hosts bucket: {e}")))?
            .max_age();
        if entries_age != config.lease_ttl {
            return Err(ClusterError::Bucket {
                reason: format!(
                    "its age limit ({} s) is not the leases bucket's ({} s), so hosts would lapse apart from their leases; delete it (nats kv del {}) and start the hosts again: they make it with the leases' one",
                    entries_age.as_secs_f64(),
                    config.lease_ttl.as_secs_f64(),
                    hosts.name
                ),
                bucket: hosts.name.clone(),
            });
        }
        let closing = CancellationToken::new();
        let agreements = Arc::new(agreement::Agreements::new(
            &config.host_id,
            templates,
            providers,
            tenancy,
        ));
        let leases = Arc::new(leases::Leases::new(
            lease_bucket,
            hosts,
            config.host_id.clone(),
            public_url.clone(),
            config.lease_ttl,
            agreements.clone(),
            state_dir.join("instance"),
        ));
        leases.join().await?;
        let tunnels = Arc::new(tunnel::Tunnels::new(
            client.clone(),
            config.prefix.clone(),
            config.host_id.clone(),
            config.lease_ttl,
        ));
        let removals_before = (removal_bucket.status().await)
            .map_err(|e| ClusterError::Nats(format!("reading the removals bucket: {e}")))?
            .info
            .state
            .last_sequence;
        let removals = Arc::new(removals::Removals::new(
            removal_bucket,
            config.host_id.clone(),
            removals_before,
        ));
        let admissions = admissions::Admissions::new(admission_bucket, config.host_id.clone());
        tracing::info!(host = %config.host_id, url = %config.url, lease_ttl = ?config.lease_ttl, "cluster: connected to NATS with JetStream");
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                records,
                names,
                tokens: token_bucket,
                leases,
                agreements,
                removals,
                admissions,
                applied: tokio::sync::watch::Sender::new(0),
                written: tokio::sync::watch::Sender::new(0),
                hurry: tokio::sync::Notify::new(),
                tunnels,
                buckets,
                direct: direct::Refusals::default(),
                unshared: Mutex::new(BTreeMap::new()),
                invalid_records: Mutex::new(BTreeMap::new()),
                invalid_tokens: Mutex::new(BTreeMap::new()),
                name_clashes: Mutex::new(BTreeMap::new()),
                claimed_after: Mutex::new(HashMap::new()),
                conflicts: Mutex::new(Default::default()),
                conflicts_seen: Default::default(),
                closing,
            }),
        })
    }

    /// This host's id.
    pub(crate) fn host_id(&self) -> &str {
        &self.inner.config.host_id
    }

    /// Starts the background work: the records' sync with `store`, the leases'
    /// renewals, the watch of other hosts' leases, the orphan sweep, the sweep of
    /// removals left to hosts that are gone and the comparison of the hosts'
    /// templates, providers and tenancy limits. What the lifecycle must act on arrives on the returned channel.
    pub(crate) async fn start(
        &self,
        store: Arc<Store>,
    ) -> Result<mpsc::UnboundedReceiver<ClusterEvent>, ClusterError> {
        let (tx, rx) = mpsc::unbounded_channel();
        records::start(self.clone(), store.clone(), tx.clone()).await?;
        self.inner
            .leases
            .start(store, tx.clone(), self.inner.closing.clone())
            .await?;
        let (removals, records, leases) = (
            self.inner.removals.clone(),
            self.inner.records.clone(),
            self.inner.leases.clone(),
        );
        let period = self.inner.config.lease_ttl;
        until(
            &self.inner.closing,
            async move { removals.sweeps(records, leases, tx, period).await },
            "removals",
        );
        let buckets = self.inner.buckets.clone();
        until(
            &self.inner.closing,
            async move {
                loop {
                    tokio::time::sleep(period).await;
                    buckets.check().await;
                }
            },
            "buckets",
        );
        // As often as the hosts renew their entries, so a change is seen within
        // about two renewals.
        let (agreements, leases) = (self.inner.agreements.clone(), self.inner.leases.clone());
        until(
            &self.inner.closing,
            async move { agreements.checks(&leases, period / 3).await },
            "agreement",
        );
        Ok(rx)
    }

    /// Shares user tokens with the other hosts: those the cluster has are accepted
    /// here, this host's are written to it, and changes flow both ways from now on.
    pub(crate) async fn share_tokens(
        &self,
        tokens: Arc<crate::tenancy::Tokens>,
    ) -> Result<(), ClusterError> {
        tokens::start(self.clone(), tokens).await
    }

    /// Serves the tunnels other hosts open to this one for their apps: each arrives
    /// on the returned channel, to be served like a connection to this host's API.
    pub(crate) async fn serve_tunnels(&self) -> Result<mpsc::Receiver<Accepted>, ClusterError> {
        self.inner.tunnels.listen(&self.inner.closing).await
    }

    /// How apps reach a runtime on another host.
    pub(crate) fn relay(&self) -> ClusterRelay {
        self.inner.config.relay
    }

    /// Opens a tunnel to host `host` for an app of `environment` at address `app`:
    /// a stream into that host's API (see [`tunnel`]).
    pub(crate) async fn tunnel(
        &self,
        host: &str,
        environment: &str,
        app: std::net::IpAddr,
    ) -> Result<TunnelStream, ClusterError> {
        (self.inner.tunnels)
            .dial(host, environment, app, &self.inner.closing)
            .await
    }

    /// The URL in `lease` (of an environment another host runs), when its host
    /// publishes that URL as its own in the hosts bucket: only then may a bridge dial
    /// it with an app's token (`relay = "direct"`) or a refusal tell a client to
    /// connect there. Anyone who can write the leases bucket could have put another
    /// URL in it. Otherwise why not; with `relay = "direct"` that is logged and named
    /// in `/healthz` while the lease stays so. NATS not answering is a refusal too.
    pub(crate) async fn confirmed_url(&self, lease: &LeaseView) -> Result<String, String> {
        let published = self
            .bookkeeping(
                "reading a host's entry",
                self.inner.leases.published_url(&lease.host),
            )
            .await
            .map_err(|e| e.to_string())
            .and_then(|read| read.map_err(|e| e.to_string()));
        let lease = DirectLease {
            environment_id: &lease.environment_id,
            host: &lease.host,
            url: &lease.url,
        };
        let compared = match published {
            Ok(published) => direct::compare(&lease, published.as_deref()),
            Err(e) => {
                tracing::warn!(env = %lease.environment_id, host = %lease.host, error = %e, "cluster: cannot check the URL in a lease against its host's entry");
                return Err(format!("cannot check host {}'s URL: {e}", lease.host));
            }
        };
        if self.relay() == ClusterRelay::Direct {
            self.inner.direct.note(&lease, &compared);
        } else if let Err(why) = &compared {
            tracing::warn!(env = %lease.environment_id, %why, "cluster: the URL in a lease is not its host's own; not giving it to clients");
        }
        compared.map(|()| lease.url.to_owned())
    }

    /// Claims environment `id` for this host: `true` when this host holds its lease
    /// (already, or now), `false` when another live host does.
    pub(crate) async fn claim(&self, id: &str) -> Result<bool, ClusterError> {
        // Bounded: a start's answer waits for it, and a NATS that went away has each
        // request of the client wait out its own timeout (a lease taken after all is
        // never renewed, and lapses).
        let held = self.holds(id);
        let claimed = match tokio::time::timeout(REQUEST_WAIT, self.inner.leases.claim(id)).await {
            Ok(claimed) => claimed?,
            Err(_) => {
                return Err(ClusterError::Nats(format!(
                    "claiming the lease of {id}: NATS did not answer within {} s",
                    REQUEST_WAIT.as_secs()
                )));
            }
        };
        if claimed && !held {
            self.note_claim(id).await;
        }
        Ok(claimed)
    }

    /// Notes the records bucket's last revision as this host takes environment `id`'s
    /// lease: record changes up to it were written before, by the lease's last holder
    /// among others; only later ones must be this host's own to change the instance's
    /// fields ([`Cluster::contested`]). When NATS cannot say, none is checked.
    async fn note_claim(&self, id: &str) {
        let status = tokio::time::timeout(REQUEST_WAIT, self.inner.records.status()).await;
        let after = match status {
            Ok(Ok(status)) => status.info.state.last_sequence,
            _ => {
                tracing::debug!(env = %id, "cluster: the records bucket's revision is unknown; instance fields changed under this lease are not checked");
                u64::MAX
            }
        };
        self.inner
            .claimed_after
            .locked()
            .insert(id.to_owned(), after);
    }

    /// Whether the records bucket's `revision` of environment `id` was written after
    /// this host took its lease, which it holds.
    fn under_lease(&self, id: &str, revision: u64) -> bool {
        self.holds(id)
            && (self.inner.claimed_after.locked().get(id)).is_some_and(|after| revision > *after)
    }

    /// Reserves environment name `name` for record `id` across the cluster: `false`
    /// when another record holds it. A hold older than [`STALE_NAME`] whose record
    /// the cluster does not have (a create or delete that died half-way) is taken over.
    pub(crate) async fn claim_name(&self, name: &str, id: &str) -> Result<bool, ClusterError> {
        // Bounded as a whole: the API's answer waits for it, and a NATS that went
        // away has each request of the client wait out its own timeout.
        match tokio::time::timeout(REQUEST_WAIT, self.claim_name_now(name, id)).await {
            Ok(claimed) => claimed,
            Err(_) => Err(ClusterError::Nats(format!(
                "reserving name {name:?}: NATS did not answer within {} s",
                REQUEST_WAIT.as_secs()
            ))),
        }
    }

    async fn claim_name_now(&self, name: &str, id: &str) -> Result<bool, ClusterError> {
        let names = &self.inner.names;
        let key = hex::encode(name);
        let nats = |e: String| ClusterError::Nats(format!("reserving name {name:?}: {e}"));
        match names.create(&key, id.to_owned().into()).await {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(nats(e.to_string())),
        }
        let Some(entry) = names
            .entry(key.clone())
            .await
            .map_err(|e| nats(e.to_string()))?
        else {
            return Ok(false);
        };
        let holder = String::from_utf8_lossy(&entry.value).into_owned();
        if holder == id {
            return Ok(true);
        }
        // Aged by the server's clock, which stamped the hold: by this host's, a hold
        // made a moment ago on another host would count as stale when this host's
        // clock is a minute ahead, and its name be taken twice.
        let age = self.inner.leases.server_now() - entry.created;
        if age < STALE_NAME {
            return Ok(false);
        }
        // A holder that is no record id (written by hand) has no record to look up.
        let record = match crate::names::validate("environment", &holder) {
            Ok(()) => (self.inner.records)
                .entry(records::key_of(&holder))
                .await
                .map_err(|e| nats(e.to_string()))?,
            Err(_) => None,
        };
        // Its record still holds the name unless it was renamed since (by hand, in a
        // file or in the bucket: the API renames nothing); one the bucket holds
        // invalid is left holding it.
        let holds = record
            .filter(|r| r.operation == kv::Operation::Put)
            .is_some_and(|r| records::parse(&r).ok().is_none_or(|r| r.name == name));
        if holds {
            return Ok(false);
        }
        Ok(names
            .update(&key, id.to_owned().into(), entry.revision)
            .await
            .is_ok())
    }

    /// Holds `owner`'s admission across the cluster (see [`admissions`]), then waits
    /// until this host's store has every record the bucket had by then, so a check
    /// of `owner`'s limits counts every change admitted before. Let go of it once
    /// the change is made here and [`Cluster::written`].
    pub(crate) async fn admit(&self, owner: &str) -> Result<Admission, ClusterError> {
        let admission = self.inner.admissions.enter(owner).await?;
        self.caught_up().await?;
        Ok(admission)
    }

    /// Waits until this host's store has every record change the bucket held when
    /// called; [`ClusterError::Busy`] after [`SYNC_WAIT`].
    async fn caught_up(&self) -> Result<(), ClusterError> {
        let caught_up = async {
            let info = (self.inner.records.stream.get_info().await)
                .map_err(|e| ClusterError::Nats(format!("reading the records bucket: {e}")))?;
            let last = info.state.last_sequence;
            let mut applied = self.inner.applied.subscribe();
            (applied.wait_for(|&seen| seen >= last).await)
                .map(|_| ())
                .map_err(|_| ClusterError::Nats("the records' sync has stopped".into()))
        };
        // Bounded as a whole: a request to a NATS that went away waits far longer.
        match tokio::time::timeout(SYNC_WAIT, caught_up).await {
            Ok(done) => done,
            Err(_) => Err(ClusterError::Busy(format!(
                "this host's copy of the records did not catch up with the cluster's within {} s",
                SYNC_WAIT.as_secs()
            ))),
        }
    }

    /// Waits until every change the store made up to edit `edit` ([`Store::edited`])
    /// is in the records bucket; `false` if that took longer than [`SYNC_WAIT`]
    /// (NATS away: the sync goes on trying by itself).
    pub(crate) async fn written(&self, edit: u64) -> bool {
        let mut written = self.inner.written.subscribe();
        if *written.borrow_and_update() >= edit {
            return true;
        }
        self.inner.hurry.notify_one();
        matches!(
            tokio::time::timeout(SYNC_WAIT, written.wait_for(|&w| w >= edit)).await,
            Ok(Ok(_))
        )
    }

    /// Lets go of name `name` if record `id` holds it.
    /// Not let go while NATS is away: a hold whose record the cluster does not have
    /// is taken over once it is [`STALE_NAME`] old.
    pub(crate) async fn release_name(&self, name: &str, id: &str) {
        if let Err(e) = self.let_go_of_name(name, id).await {
            tracing::warn!(error = %e, "cluster: a deleted environment's name stays reserved for a minute");
        }
    }

    /// Lets go of name `name` for record `id`, in the background, once NATS answers:
    /// a reservation whose answer never came (NATS restarting, a timeout) may have
    /// been made all the same, and would hold the name back from the create's retry
    /// until it is [`STALE_NAME`] old. Tries for that long at most.
    pub(crate) fn release_name_later(&self, name: &str, id: &str) {
        let (cluster, name, id) = (self.clone(), name.to_owned(), id.to_owned());
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + STALE_NAME.unsigned_abs();
            while tokio::time::Instant::now() < until {
                match cluster.let_go_of_name(&name, &id).await {
                    Ok(Some(_)) => return,
                    // Not there yet is no proof: NATS may store the reservation after
                    // answering this look (its reads are not ordered with its writes).
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: letting go of a name, again soon")
                    }
                }
                tokio::time::sleep(NAME_RETRY).await;
            }
        });
    }

    /// Lets go of name `name` if record `id` holds it: `Some(true)` let go,
    /// `Some(false)` another record holds it, `None` nobody does; an error when NATS
    /// did not say.
    async fn let_go_of_name(&self, name: &str, id: &str) -> Result<Option<bool>, ClusterError> {
        let names = &self.inner.names;
        let key = hex::encode(name);
        let nats = |e: String| ClusterError::Nats(format!("letting go of name {name:?}: {e}"));
        let release = async {
            let entry = names
                .entry(key.clone())
                .await
                .map_err(|e| nats(e.to_string()))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                return Ok(None);
            };
            if entry.value.as_ref() != id.as_bytes() {
                return Ok(Some(false));
            }
            match names
                .delete_expect_revision(&key, Some(entry.revision))
                .await
            {
                Ok(()) => Ok(Some(true)),
                // Changed meanwhile: no longer this record's to let go.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Some(false)),
                Err(e) => Err(nats(e.to_string())),
            }
        };
        self.bookkeeping("letting go of a name", release).await?
    }

    /// Notes, before `record` is deleted, that host `host` is to have its provider
    /// remove the resource; if that host dies first, another does it.
    pub(crate) async fn leave_removal(
        &self,
        record: &Record,
        host: &str,
    ) -> Result<(), ClusterError> {
        self.reachable("noting who removes a resource")?;
        self.inner.removals.leave(record, host).await
    }

    /// Takes over `removal` for this host: `false` when another host did first.
    pub(crate) async fn claim_removal(&self, removal: &Abandoned) -> bool {
        self.inner.removals.claim(removal).await
    }

    /// The provider removed deleted record `id`'s resource (or tried and said why not).
    pub(crate) async fn removal_done(&self, id: &str) {
        self.inner.removals.done(id).await;
    }

    /// Gives environment `id`'s lease up (it stopped here, or was deleted).
    pub(crate) async fn release(&self, id: &str) {
        self.inner.leases.release(id).await;
        self.inner.claimed_after.locked().remove(id);
    }

    /// Whether host `host` is alive (this one is); an error when NATS cannot say.
    pub(crate) async fn host_alive(&self, host: &str) -> Result<bool, ClusterError> {
        let alive = self.inner.leases.host_alive(host);
        self.bookkeeping(&format!("asking whether host {host} is alive"), alive)
            .await?
    }

    /// `Nats` at once while this host is not connected to NATS: a request sent now
    /// would wait out its timeout for nothing, and the API's answer with it. Only for
    /// what a request can go on without (a create or an admission waits its bound
    /// instead: NATS restarting is back within it, and the change is made).
    fn reachable(&self, doing: &str) -> Result<(), ClusterError> {
        if self.connected() {
            return Ok(());
        }
        Err(ClusterError::Nats(format!(
            "{doing}: this host is not connected to NATS right now"
        )))
    }

    /// `work`, unless NATS is away or it takes longer than [`BOOKKEEPING_WAIT`].
    async fn bookkeeping<T>(
        &self,
        doing: &str,
        work: impl Future<Output = T>,
    ) -> Result<T, ClusterError> {
        self.reachable(doing)?;
        tokio::time::timeout(BOOKKEEPING_WAIT, work)
            .await
            .map_err(|_| ClusterError::Nats(format!("{doing}: NATS did not answer in time")))
    }

    /// Someone else changed the instance's fields of environment `id`, which this
    /// host runs: see [`leases::Leases::contested`].
    fn contested(&self, id: &str) {
        self.inner.leases.contested(id);
    }

    /// Whether this host holds environment `id`'s lease.
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.inner.leases.holds(id)
    }

    /// The lease of environment `id` as last seen, if another host holds one.
    pub(crate) fn elsewhere(&self, id: &str) -> Option<LeaseView> {
        self.inner.leases.elsewhere(id)
    }

    /// Tells the cluster environment `id`'s live status (kept in its lease).
    pub(crate) fn report_status(&self, id: &str, status: &str, connected: bool) {
        self.inner.leases.report_status(id, status, connected);
    }

    /// How many environments this host runs (holds the lease of), for `/metrics`.
    pub(crate) fn leases_held(&self) -> usize {
        self.inner.leases.held_count()
    }

    /// Field conflicts between hosts' concurrent changes since start.
    pub(crate) fn conflicts_seen(&self) -> u64 {
        (self.inner.conflicts_seen).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `n` runtimes of this host's environments are connected to it: other hosts see
    /// it in this host's entry from its next renewal.
    pub(crate) fn set_runtimes_connected(&self, n: usize) {
        self.inner.leases.set_runtimes_connected(n);
    }

    /// This host has `n` pending removals (its journal's): other hosts see it in this
    /// host's entry from its next renewal.
    pub(crate) fn set_pending_removals(&self, n: usize) {
        self.inner.leases.set_pending_removals(n);
    }

    /// How many other live hosts' `[templates]` differ from this host's.
    pub(crate) fn templates_differing(&self) -> usize {
        self.inner.agreements.templates.differing()
    }

    /// This host's `[templates]` are `templates` now (`tether.toml` was reloaded):
    /// published with its next renewal, and compared with the other hosts' from then on.
    pub(crate) fn set_templates(&self, templates: &BTreeMap<String, Template>) {
        (self.inner.agreements.templates).set(agreement::Published::of_templates(templates));
    }

    /// How many other live hosts' providers differ from this host's.
    pub(crate) fn providers_differing(&self) -> usize {
        self.inner.agreements.providers.differing()
    }

    /// This host's loaded providers are `providers` now (a drop-in loaded, replaced or
    /// removed, one installed, `tether.toml` reloaded): published with its next
    /// renewal, and compared with the other hosts' from then on.
    pub(crate) fn set_providers(&self, providers: &ProvidersDigest) {
        (self.inner.agreements.providers).set(agreement::Published::of_providers(providers));
    }

    /// How many other live hosts' `[tenancy]` limits differ from this host's.
    pub(crate) fn tenancy_differing(&self) -> usize {
        self.inner.agreements.tenancy.differing()
    }

    /// This host's `[tenancy]` limits are `tenancy` now (`tether.toml` was reloaded):
    /// published with its next renewal, and compared with the other hosts' from then on.
    pub(crate) fn set_tenancy(&self, tenancy: &TenancyConfig) {
        (self.inner.agreements.tenancy).set(agreement::Published::of_tenancy(tenancy));
    }

    /// Whether this host is connected to NATS right now.
    pub(crate) fn connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Why the cluster needs a person, if it does (for `/healthz`): this host is cut
    /// off from NATS; other live hosts' `[templates]`, providers or `[tenancy]`
    /// limits differ from this host's.
    pub(crate) fn health(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let state = self.inner.client.connection_state();
        if state != async_nats::connection::State::Connected {
            reasons.push(format!(
                "cluster: not connected to NATS at {} ({state:?}); reconnecting, and this host's environments stop when their leases lapse",
                self.inner.config.url
            ));
        }
        for (what, unshared) in self.inner.unshared.locked().iter() {
            if unshared.since.elapsed() >= UNSHARED_AFTER {
                reasons.push(format!(
                    "cluster: {} {what} change(s) made on this host have not been written to NATS for {} s ({}); they are kept here and tried again every second",
                    unshared.count,
                    unshared.since.elapsed().as_secs(),
                    unshared.error
                ));
            }
        }
        let records = &self.inner.records.name;
        name_some(
            &mut reasons,
            &self.inner.invalid_records.locked(),
            |key, why| {
                format!(
                    "cluster: record {key} in bucket {records} is invalid ({why}); every host keeps its last good copy until a valid record is written there or the environment is changed through the API"
                )
            },
            |more| {
                format!("cluster: {more} more invalid record(s) in bucket {records} (see the log)")
            },
        );
        name_some(
            &mut reasons,
            &self.inner.name_clashes.locked(),
            |key, clash| {
                format!(
                    "cluster: record {key} in bucket {records} has name {}, which record {} has on this host; it is not applied here until that name is free here (one renamed or deleted)",
                    crate::untrusted::named(&clash.name),
                    crate::untrusted::logged(&clash.holder)
                )
            },
            |more| {
                format!(
                    "cluster: {more} more record(s) in bucket {records} not applied for a name another record has (see the log)"
                )
            },
        );
        let tokens = &self.inner.tokens.name;
        name_some(
            &mut reasons,
            &self.inner.invalid_tokens.locked(),
            |key, why| {
                format!(
                    "cluster: token {key} in bucket {tokens} is invalid ({why}); it is refused on every host until a valid token is written there or it is revoked"
                )
            },
            |more| {
                format!("cluster: {more} more invalid token(s) in bucket {tokens} (see the log)")
            },
        );
        reasons.extend(self.inner.buckets.health());
        reasons.extend(self.inner.leases.health());
        reasons.extend(
            self.inner
                .direct
                .health(|id| self.inner.leases.elsewhere(id)),
        );
        reasons.extend(self.inner.agreements.health());
        reasons
    }

    /// The cluster as this host sees it.
    pub(crate) async fn view(&self) -> Result<ClusterView, ClusterError> {
        let hosts = self
            .bookkeeping("listing hosts", self.inner.leases.hosts())
            .await??;
        Ok(ClusterView {
            host_id: self.inner.config.host_id.clone(),
            connected: self.connected(),
            lease_ttl_secs: self.inner.config.lease_ttl.as_secs(),
            hosts,
            conflicts: self.inner.conflicts.locked().iter().cloned().collect(),
        })
    }

    /// A sync has `count` changes of `what` (`record`, `token`) it could not write
    /// (the last for `error`, when one failed this time): kept for `/healthz`, from
    /// the first failure on, until none is left.
    fn unshared(&self, what: &'static str, count: usize, error: Option<String>) {
        let mut unshared = self.inner.unshared.locked();
        if count == 0 {
            unshared.remove(what);
            return;
        }
        let now = unshared.entry(what).or_insert_with(|| Unshared {
            since: std::time::Instant::now(),
            count,
            error: String::new(),
        });
        now.count = count;
        if let Some(error) = error {
            now.error = error;
        }
    }

    /// The records bucket's keys whose last value is not a valid record are
    /// `invalid` now (key: why), for `/healthz`.
    fn invalid_records(&self, invalid: &BTreeMap<String, String>) {
        *self.inner.invalid_records.locked() = invalid.clone();
    }

    /// The tokens bucket's key `key` holds an invalid token (`why`), or no longer
    /// (`None`), for `/healthz`.
    fn invalid_token(&self, key: &str, why: Option<String>) {
        let mut invalid = self.inner.invalid_tokens.locked();
        match why {
            Some(why) => {
                invalid.insert(crate::untrusted::logged(key), why);
            }
            None => {
                invalid.remove(&*crate::untrusted::logged(key));
            }
        }
    }

    /// The records bucket's key `key` holds a record not applied here for its name
    /// (`clash`), or no longer (`None`), for `/healthz`.
    fn name_clash(&self, key: &str, clash: Option<records::NameClash>) {
        let key = crate::untrusted::logged(key);
        let mut clashes = self.inner.name_clashes.locked();
        match clash {
            Some(clash) => {
                clashes.insert(key, clash);
            }
            None => {
                clashes.remove(&key);
            }
        }
    }

    /// Keeps a field conflict for `GET /api/v1/cluster` and logs it.
    fn conflict(&self, conflict: ConflictView) {
        tracing::warn!(env = %conflict.environment_id, field = %conflict.field, lost = %conflict.lost, kept = %conflict.kept, "cluster: two hosts changed one field at once; the later change is in force");
        (self.inner.conflicts_seen).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut kept = self.inner.conflicts.locked();
        if kept.len() == CONFLICTS_KEPT {
            kept.pop_front();
        }
        kept.push_back(conflict);
    }

    /// Stops the background work and gives up every lease this host holds, so
    /// other hosts may take its running environments at once.
    pub(crate) async fn shutdown(&self) {
        self.inner.closing.cancel();
        // NATS may be away: then the leases lapse by themselves instead.
        let release = async {
            self.inner.leases.release_all().await;
            if let Err(e) = self.inner.client.flush().await {
                tracing::debug!(error = %e, "cluster: flushing at shutdown");
            }
        };
        if tokio::time::timeout(SHUTDOWN_WAIT, release).await.is_err() {
            tracing::warn!(
                "cluster: NATS did not answer at shutdown; this host's leases lapse by themselves"
            );
        }
    }

    fn records_bucket(&self) -> &kv::Store {
        &self.inner.records
    }

    fn tokens_bucket(&self) -> &kv::Store {
        &self.inner.tokens
    }

    fn closing(&self) -> &CancellationToken {
        &self.inner.closing
    }
}

/// Pushes a reason for each of `entries` by key, the first [`INVALID_NAMED`] of them
/// (`one`), and one counting the rest (`more`): a bucket full of bad entries does not
/// make `/healthz` as long.
fn name_some<V>(
    reasons: &mut Vec<String>,
    entries: &BTreeMap<String, V>,
    one: impl Fn(&str, &V) -> String,
    more: impl Fn(usize) -> String,
) {
    reasons.extend((entries.iter().take(INVALID_NAMED)).map(|(key, v)| one(key, v)));
    if entries.len() > INVALID_NAMED {
        reasons.push(more(entries.len() - INVALID_NAMED));
    }
}

/// The age limit a bucket must have, whoever made it: the code relies on its keys
/// lapsing, or on their never lapsing.
#[derive(Debug, Clone, Copy)]
enum Age {
    /// None: its keys stand until deleted (a record, a name, a token, a removal).
    Never,
    /// Its keys lapse this long after their last write (made with `made` when
    /// missing), an age between `least` and `most`.
    Lapses {
        made: Duration,
        least: Duration,
        most: Duration,
    },
}

/// Opens bucket `PREFIX-name` (one value per key, on disk; keys dropped as `age`
/// says), making it if it is missing.
async fn bucket(
    js: &jetstream::Context,
    prefix: &str,
    name: &str,
    what: &str,
    age: Age,
    max_value_size: i32,
) -> Result<kv::Store, ClusterError> {
    let name = format!("{prefix}-{name}");
    let config = kv::Config {
        bucket: name.clone(),
        description: format!("tether: {what}"),
        history: 1,
        max_age: match age {
            Age::Never => Duration::ZERO,
            Age::Lapses { made, .. } => made,
        },
        max_value_size,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let store = match js.create_key_value(config).await {
        Ok(store) => store,
        // Made by another host already, perhaps with other settings: use it as it is.
        Err(created) => js
            .get_key_value(&name)
            .await
            .map_err(|e| ClusterError::Bucket {
                bucket: name.clone(),
                reason: format!("{created}; {e}"),
            })?,
    };
    let status = (store.status().await).map_err(|e| ClusterError::Bucket {
        bucket: name.clone(),
        reason: e.to_string(),
    })?;
    match age_refused(status.max_age(), age, &name) {
        Some(reason) => Err(ClusterError::Bucket {
            bucket: name,
            reason,
        }),
        None => Ok(store),
    }
}

/// Why a bucket with age limit `found` cannot be used where `age` is needed (made
/// by hand, or by another tool), if it cannot.
fn age_refused(found: Duration, age: Age, name: &str) -> Option<String> {
    let secs = found.as_secs_f64();
    match age {
        // Its keys would vanish while they still count: records (every host would
        // delete the environment), names, tokens, removals not yet done.
        Age::Never if !found.is_zero() => Some(format!(
            "it has an age limit ({secs} s; made by hand?), so what it holds would vanish that long after it was written; remove the limit from its stream (KV_{name}) and start the hosts again"
        )),
        Age::Never => None,
        // Made by hand without one, its keys would never lapse: a dead host's leases,
        // its entry and the admission keys it held would stand for good.
        Age::Lapses { .. } if found.is_zero() => Some(format!(
            "it has no age limit (made by hand?), so what a dead host held there would never lapse; delete it (nats kv del {name}) and start the hosts again: they make it with one"
        )),
        // Too short, a key lapses while its holder relies on it; too long, a dead
        // holder's key stands that long.
        Age::Lapses { least, most, .. } if found < least || found > most => Some(format!(
            "its age limit ({secs} s; made by hand?) is not between {} and {} s, so what a host holds there would lapse too soon or a dead host's stand too long; delete it (nats kv del {name}) and start the hosts again: they make it with one",
            least.as_secs(),
            most.as_secs()
        )),
        Age::Lapses { .. } => None,
    }
}

/// Runs `work` in the background, in span `name`, until `closing` fires.
pub(super) fn until(
    closing: &CancellationToken,
    work: impl Future<Output = ()> + Send + 'static,
    name: &'static str,
) {
    let closing = closing.clone();
    tokio::spawn(
        async move {
            // Closing first: once it fires, the work takes no further step (a
            // renewal must not write this host's entry again after shutdown removed it).
            tokio::select! {
                biased;
                _ = closing.cancelled() => {}
                _ = work => {}
            }
        }
        .instrument(tracing::info_span!("cluster", task = name)),
    );
}

/// Host ids of the hosts holding leases, with the ids each holds (for the view).
fn by_host(leases: &HashMap<String, LeaseView>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (id, lease) in leases {
        out.entry(lease.host.clone()).or_default().push(id.clone());
    }
    for ids in out.values_mut() {
        ids.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_s_age_limit_is_refused_where_its_keys_would_lapse_wrongly() {
        let secs = Duration::from_secs;
        let lapses = Age::Lapses {
            made: secs(10),
            least: secs(10),
            most: secs(60),
        };
        assert_eq!(age_refused(Duration::ZERO, Age::Never, "t-records"), None);
        let why = age_refused(secs(3600), Age::Never, "t-records").expect("refused");
        assert!(why.starts_with("it has an age limit (3600 s"), "{why}");
        for fine in [10, 30, 60] {
            assert_eq!(age_refused(secs(fine), lapses, "t-admissions"), None);
        }
        let why = age_refused(Duration::ZERO, lapses, "t-admissions").expect("refused");
        assert!(why.starts_with("it has no age limit"), "{why}");
        for wrong in [1, 86_400] {
            let why = age_refused(secs(wrong), lapses, "t-admissions").expect("refused");
            assert!(why.contains("is not between 10 and 60 s"), "{why}");
        }
    }
}
