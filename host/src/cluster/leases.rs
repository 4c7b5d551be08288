//! Leases: which host runs each environment, and which hosts are alive.
//!
//! A host runs an environment's provider instance only while it holds the
//! environment's key in the leases bucket. It takes the key with a create (which
//! fails while another host holds it) and keeps it with compare-and-set renewals
//! every third of the lease's life; the bucket drops a key `lease_ttl` after its last
//! write, so a dead host's leases lapse by themselves. The revision of the create is
//! the lease's epoch. A renewal that finds another revision means the lease was lost
//! (it lapsed and another host took it); a host that cannot renew for a whole
//! `lease_ttl` (NATS away, a partition) assumes the same. Either way the lifecycle
//! is told to stop the environment here.
//!
//! The lease also carries the environment's live status, so every host can show it.
//! A sweep every half lease finds environments that should run and that no host
//! holds (their host died) and offers them to the lifecycle, after a pause that
//! grows with this host's load: the least loaded host tends to claim first.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::agreement::Agreements;
use super::host_entry::HostEntry;
use super::records::key_of;
use super::{ClusterError, ClusterEvent, HostView};
use crate::store::{DesiredState, Store};
use crate::sync::MutexExt;

/// Extra time past `lease_ttl` before a lease not seen renewed is looked up again.
const GRACE: Duration = Duration::from_millis(500);
/// The longest pause of a loaded host before it claims orphans.
const MAX_CLAIM_PAUSE: Duration = Duration::from_secs(2);
/// The pause per environment this host runs already.
const CLAIM_PAUSE_PER_ENV: Duration = Duration::from_millis(20);
/// The largest lease or host value read from the bucket.
const MAX_VALUE_BYTES: usize = 16 << 10;

/// A lease's value in the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LeaseView {
    /// The environment.
    pub environment_id: String,
    /// The host holding it.
    pub host: String,
    /// Where that host is reached (`http(s)://`).
    pub url: String,
    /// The revision the lease was taken at; a later holder has a higher one.
    pub epoch: u64,
    /// The environment's live status on that host.
    pub status: String,
    /// Whether its runtime is connected there.
    pub runtime_connected: bool,
}

/// A host's value in the hosts bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HostValue {
    pub id: String,
    public_url: String,
    load: usize,
    seen_at: String,
    /// The writing process's random id ([`HostEntry`]), so it knows its own entry.
    /// Absent from an older host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    /// What it says of its `[templates]` ([`super::agreement::Published`]), unread:
    /// another host wrote it. Absent from an older host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    templates: Option<serde_json::Value>,
    /// What it says of its loaded providers ([`super::agreement::Published`]), unread.
    /// Absent from an older host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    providers: Option<serde_json::Value>,
    /// What it says of its `[tenancy]` limits ([`super::agreement::Published`]),
    /// unread. Absent from an older host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenancy: Option<serde_json::Value>,
    /// How many deleted environments' resources it still tries to remove, unread
    /// ([`count_of`]). Absent from an older host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_removals: Option<serde_json::Value>,
    /// How many runtimes of the environments it runs are connected to it, unread
    /// ([`count_of`]). Absent from an older host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    runtimes_connected: Option<serde_json::Value>,
}

impl HostValue {
    /// The entry under `key` in the hosts bucket, checked: another host wrote it, or
    /// anyone with access to the NATS account. Its public URL is shown to clients as
    /// where the host is reached, and its time as when it was last seen.
    fn read(key: &str, value: &[u8]) -> Result<Self, String> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("{} bytes is too large", value.len()));
        }
        let host: HostValue = serde_json::from_slice(value)
            .map_err(|e| crate::untrusted::shown(&e.to_string(), 200))?;
        if host.id != key || !crate::config::is_host_id(&host.id) {
            return Err("its id is not its key".into());
        }
        crate::config::PublicUrl::parse(&host.public_url)
            .map_err(|e| crate::untrusted::shown(&e, 200))?;
        let stamp = &host.seen_at;
        if stamp.len() > 64 || time::OffsetDateTime::parse(stamp, &Rfc3339).is_err() {
            return Err("seenAt is not an RFC 3339 time".into());
        }
        Ok(host)
    }

    /// What it says of its `[templates]`, unread.
    pub(super) fn templates(&self) -> Option<&serde_json::Value> {
        self.templates.as_ref()
    }

    /// What it says of its loaded providers, unread.
    pub(super) fn providers(&self) -> Option<&serde_json::Value> {
        self.providers.as_ref()
    }

    /// What it says of its `[tenancy]` limits, unread.
    pub(super) fn tenancy(&self) -> Option<&serde_json::Value> {
        self.tenancy.as_ref()
    }
}

/// The largest count a host's entry may say it has of anything (pending removals:
/// its journal holds at most a thousand; connected runtimes: a host runs tens of
/// thousands at most); anything else there counts as unknown.
const MAX_COUNT: u64 = 1_000_000;

/// What a host's entry says of a count, if it is one.
fn count_of(said: Option<&serde_json::Value>) -> Option<usize> {
    let count = said?.as_u64().filter(|n| *n <= MAX_COUNT)?;
    usize::try_from(count).ok()
}

/// A lease this host holds.
#[derive(Debug, Clone)]
struct Held {
    revision: u64,
    value: LeaseView,
    renewed: Instant,
    /// Its status changed since the last write.
    dirty: bool,
}

/// What a renewal that found another revision finds there.
#[derive(Debug)]
enum Mine {
    /// This host's lease still, at this revision (an earlier renewal landed unanswered).
    Still(u64),
    /// Lapsed, or another host's now.
    Lost,
    /// Written under this host's name and epoch by someone else, at this revision.
    Rewritten(u64),
}

/// Another host's lease, as last seen.
#[derive(Debug, Clone)]
struct Seen {
    lease: LeaseView,
    at: Instant,
}

#[derive(Debug)]
pub(super) struct Leases {
    bucket: kv::Store,
    hosts: kv::Store,
    /// This host's own entry in `hosts`.
    entry: HostEntry,
    host_id: String,
    public_url: String,
    ttl: Duration,
    /// This host's templates, providers and tenancy limits, published with its
    /// entry, and the others' compared.
    agreements: Arc<Agreements>,
    /// This host's pending removals, as the lifecycle last said, published with its entry.
    pending_removals: AtomicUsize,
    /// How many runtimes of its environments are connected to this host.
    runtimes_connected: AtomicUsize,
    held: Mutex<HashMap<String, Held>>,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// Wakes the renewals early, to write a status change.
    wake: Notify,
    /// Held while a held lease is written (renewed or released): a release made
    /// while a renewal is in flight would otherwise expect the revision the renewal
    /// replaces, fail, and leave the lease to lapse a whole lease later.
    writing: tokio::sync::Mutex<()>,
    events: Mutex<Option<mpsc::UnboundedSender<ClusterEvent>>>,
    /// The keys of the hosts bucket whose entries were malformed when last listed
    /// (each is logged once while it stays so).
    malformed_hosts: Mutex<HashSet<String>>,
}

impl Leases {
    pub(super) fn new(
        bucket: kv::Store,
        hosts: kv::Store,
        host_id: String,
        public_url: String,
        ttl: Duration,
        agreements: Arc<Agreements>,
        instance_file: std::path::PathBuf,
    ) -> Self {
        Self {
            bucket,
            entry: HostEntry::new(hosts.clone(), host_id.clone(), instance_file),
            hosts,
            host_id,
            public_url,
            ttl,
            agreements,
            pending_removals: AtomicUsize::new(0),
            runtimes_connected: AtomicUsize::new(0),
            held: Mutex::new(HashMap::new()),
            seen: Arc::new(Mutex::new(HashMap::new())),
            wake: Notify::new(),
            writing: tokio::sync::Mutex::new(()),
            events: Mutex::new(None),
            malformed_hosts: Mutex::default(),
        }
    }

    /// This host's entry as it is now.
    fn host_value(&self) -> Result<bytes::Bytes, ClusterError> {
        let value = HostValue {
            id: self.host_id.clone(),
            public_url: self.public_url.clone(),
            load: self.held.locked().len(),
            seen_at: crate::store::now(),
            instance: Some(self.entry.instance().to_owned()),
            templates: Some(json(&self.agreements.templates.own())?),
            providers: Some(json(&self.agreements.providers.own())?),
            tenancy: Some(json(&self.agreements.tenancy.own())?),
            pending_removals: Some(self.pending_removals().into()),
            runtimes_connected: Some(self.runtimes_connected().into()),
        };
        let bytes = serde_json::to_vec(&value).map_err(|e| ClusterError::Nats(e.to_string()))?;
        Ok(bytes.into())
    }

    /// Writes this host's entry in the hosts bucket for the first time;
    /// [`ClusterError::HostIdInUse`] when another live process has this host's id
    /// ([`HostEntry::join`]).
    pub(super) async fn join(&self) -> Result<(), ClusterError> {
        self.entry.join(self.ttl, || self.host_value()).await
    }

    /// Renews this host's entry in the hosts bucket.
    async fn announce_host(&self) -> Result<(), ClusterError> {
        self.entry.renew(self.host_value()?).await
    }

    /// The time now by the NATS server's clock ([`HostEntry::server_now`]).
    pub(super) fn server_now(&self) -> time::OffsetDateTime {
        self.entry.server_now()
    }

    /// Why `/healthz` should say this host's id is in use twice, while it seems so.
    pub(super) fn health(&self) -> Option<String> {
        self.entry.health()
    }

    /// Starts the renewals, the watch of every lease and the orphan sweep.
    pub(super) async fn start(
        self: &Arc<Self>,
        store: Arc<Store>,
        events: mpsc::UnboundedSender<ClusterEvent>,
        closing: CancellationToken,
    ) -> Result<(), ClusterError> {
        *self.events.locked() = Some(events);
        self.give_up_stale().await?;
        let watch = self
            .bucket
            .watch_all()
            .await
            .map_err(|e| ClusterError::Nats(format!("watching the leases: {e}")))?;
        let this = self.clone();
        super::until(
            &closing,
            async move { this.watch(watch).await },
            "cluster_leases_watch",
        );
        let this = self.clone();
        super::until(
            &closing,
            async move { this.renewals().await },
            "cluster_leases_renew",
        );
        let this = self.clone();
        super::until(
            &closing,
            async move { this.sweeps(store).await },
            "cluster_orphan_sweep",
        );
        Ok(())
    }

    /// Gives up the leases naming this host that its last run left (it died holding
    /// them; another process with this id was refused at start): nothing runs their
    /// instances now, so no host may show them running here, nor wait out their lapse
    /// to start them elsewhere. Those still to run are started afresh by the
    /// recovery, through a new claim (a new epoch). Before anything is claimed here.
    async fn give_up_stale(&self) -> Result<(), ClusterError> {
        let failed = |e: &dyn std::fmt::Display| {
            ClusterError::Nats(format!("reading the leases this host's last run left: {e}"))
        };
        let before = (self.bucket.status().await)
            .map_err(|e| failed(&e))?
            .info
            .state
            .last_sequence;
        let mut keys = self.bucket.keys().await.map_err(|e| failed(&e))?;
        let mut all = Vec::new();
        while let Some(key) = keys.next().await {
            all.push(key.map_err(|e| failed(&e))?);
        }
        let entries: Vec<_> = futures_util::stream::iter(all)
            .map(|key| async move { self.bucket.entry(key).await })
            .buffer_unordered(64)
            .collect()
            .await;
        for entry in entries {
            let Some(entry) = entry.map_err(|e| failed(&e))? else {
                continue;
            };
            if entry.operation != Operation::Put || entry.revision > before {
                continue;
            }
            let Some(lease) = decode(&entry) else {
                continue;
            };
            if lease.host != self.host_id || self.holds(&lease.environment_id) {
                continue;
            }
            let gone = (self.bucket)
                .delete_expect_revision(&entry.key, Some(entry.revision))
                .await;
            match gone {
                Ok(()) => {
                    tracing::info!(env = %lease.environment_id, epoch = lease.epoch, "cluster: gave up a lease this host's last run left; nothing runs it now")
                }
                Err(e) => {
                    tracing::debug!(env = %lease.environment_id, error = %e, "cluster: giving up a lease this host's last run left (it lapses by itself)")
                }
            }
        }
        Ok(())
    }

    fn tell(&self, event: ClusterEvent) {
        if let Some(tx) = self.events.locked().as_ref() {
            let _ = tx.send(event);
        }
    }

    /// See [`super::Cluster::claim`].
    pub(super) async fn claim(&self, id: &str) -> Result<bool, ClusterError> {
        if self.holds(id) {
            return Ok(true);
        }
        let key = key_of(id);
        let mut value = LeaseView {
            environment_id: id.to_owned(),
            host: self.host_id.clone(),
            url: self.public_url.clone(),
            epoch: 0,
            status: "starting".into(),
            runtime_connected: false,
        };
        let taken = match self.bucket.create(&key, encode(&value)?).await {
            Ok(revision) => revision,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = (self.bucket.entry(key.clone()).await)
                    .map_err(|e| ClusterError::Nats(format!("reading lease {key}: {e}")))?;
                let Some(entry) = entry else {
                    return Ok(false);
                };
                match decode(&entry) {
                    // This host's own lease from before a restart: nobody took it,
                    // and the instance it covered died with the old process.
                    Some(lease) if lease.host == self.host_id && lease.environment_id == id => {
                        match self
                            .bucket
                            .update(&key, encode(&value)?, entry.revision)
                            .await
                        {
                            Ok(revision) => revision,
                            Err(_) => return Ok(false),
                        }
                    }
                    Some(lease) => {
                        self.saw(lease);
                        return Ok(false);
                    }
                    None => return Ok(false),
                }
            }
            Err(e) => return Err(ClusterError::Nats(format!("claiming lease {key}: {e}"))),
        };
        value.epoch = taken;
        // Written again with its epoch, which the create could not know.
        let revision = self
            .bucket
            .update(&key, encode(&value)?, taken)
            .await
            .unwrap_or(taken);
        tracing::info!(env = %id, epoch = taken, "cluster: lease taken");
        self.held.locked().insert(
            id.to_owned(),
            Held {
                revision,
                value,
                renewed: Instant::now(),
                dirty: false,
            },
        );
        self.seen.locked().remove(id);
        Ok(true)
    }

    /// Whether host `host` is alive: its entry in the hosts bucket, which lapses a
    /// lease after its last renewal, is there and is a host's. A value that is not
    /// (written by hand, or by someone else) keeps no dead host's work from being
    /// taken over. An error when NATS cannot say.
    pub(super) async fn host_alive(&self, host: &str) -> Result<bool, ClusterError> {
        if host == self.host_id {
            return Ok(true);
        }
        Ok(self.published_url(host).await?.is_some())
    }

    /// The public URL host `host` publishes in its entry in the hosts bucket, as
    /// that host wrote it; `None` when it has no entry or one that is not a host's.
    /// An error when NATS cannot say.
    pub(super) async fn published_url(&self, host: &str) -> Result<Option<String>, ClusterError> {
        let entry = (self.hosts.entry(host).await)
            .map_err(|e| ClusterError::Nats(format!("reading host {host}'s entry: {e}")))?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            return Ok(None);
        };
        Ok(HostValue::read(host, &entry.value)
            .ok()
            .map(|value| value.public_url))
    }

    pub(super) fn held_count(&self) -> usize {
        self.held.locked().len()
    }

    /// This host has `n` pending removals: its entry says so from its next renewal.
    pub(super) fn set_pending_removals(&self, n: usize) {
        self.pending_removals.store(n, Ordering::Relaxed);
    }

    fn pending_removals(&self) -> usize {
        self.pending_removals.load(Ordering::Relaxed)
    }

    /// `n` runtimes of this host's environments are connected to it: its entry says
    /// so from its next renewal.
    pub(super) fn set_runtimes_connected(&self, n: usize) {
        self.runtimes_connected.store(n, Ordering::Relaxed);
    }

    fn runtimes_connected(&self) -> usize {
        self.runtimes_connected.load(Ordering::Relaxed)
    }

    pub(super) fn holds(&self, id: &str) -> bool {
        self.held.locked().contains_key(id)
    }

    pub(super) fn elsewhere(&self, id: &str) -> Option<LeaseView> {
        if self.holds(id) {
            return None;
        }
        let seen = self.seen.locked();
        let s = seen.get(id)?;
        (s.at.elapsed() < self.ttl + GRACE).then(|| s.lease.clone())
    }

    pub(super) fn report_status(&self, id: &str, status: &str, connected: bool) {
        let mut held = self.held.locked();
        if let Some(h) = held.get_mut(id)
            && (h.value.status != status || h.value.runtime_connected != connected)
        {
            h.value.status = status.to_owned();
            h.value.runtime_connected = connected;
            h.dirty = true;
            drop(held);
            self.wake.notify_one();
        }
    }

    /// Gives up `id`'s lease, if this host holds it.
    pub(super) async fn release(&self, id: &str) {
        let _writing = self.writing.lock().await;
        let Some(held) = self.held.locked().remove(id) else {
            return;
        };
        let key = key_of(id);
        if let Err(e) = self
            .bucket
            .delete_expect_revision(&key, Some(held.revision))
            .await
        {
            tracing::debug!(env = %id, error = %e, "cluster: releasing a lease (it lapses by itself)");
        } else {
            tracing::info!(env = %id, "cluster: lease released");
        }
    }

    pub(super) async fn release_all(&self) {
        let ids: Vec<String> = self.held.locked().keys().cloned().collect();
        for id in ids {
            self.release(&id).await;
        }
        self.entry.leave().await;
    }

    /// Renews every held lease every third of its life (and at once when a status
    /// changed), and this host's entry with it.
    async fn renewals(&self) {
        let period = self.ttl / 3;
        let mut last_full = Instant::now();
        loop {
            let _ = tokio::time::timeout(period, self.wake.notified()).await;
            let full = last_full.elapsed() >= period;
            if full {
                last_full = Instant::now();
                if let Err(e) = self.announce_host().await {
                    tracing::warn!(error = %e, "cluster: renewing this host's entry failed");
                }
            }
            let due: Vec<String> = self
                .held
                .locked()
                .iter()
                .filter(|(_, h)| full || h.dirty)
                .map(|(id, _)| id.clone())
                .collect();
            for id in due {
                self.renew(&id).await;
            }
        }
    }

    /// Writes lease `id` again, as this host holds it now (nothing if it was
    /// released or lost since the round began).
    async fn renew(&self, id: &str) {
        let _writing = self.writing.lock().await;
        let Some(held) = self.held.locked().get(id).cloned() else {
            return;
        };
        let key = key_of(id);
        let bytes = match encode(&held.value) {
            Ok(bytes) => bytes,
            Err(_) => return,
        };
        match self.bucket.update(&key, bytes, held.revision).await {
            Ok(revision) => {
                if let Some(h) = self.held.locked().get_mut(id)
                    && h.revision == held.revision
                {
                    h.revision = revision;
                    h.renewed = Instant::now();
                    h.dirty = h.value != held.value;
                }
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match self.still_mine(&key, &held).await {
                    Ok(Mine::Still(revision)) => {
                        // An earlier renewal of this host landed though its answer
                        // was lost (NATS restarting, a timeout): the lease is still
                        // this host's, at its epoch. Renewed again at once on top.
                        if let Some(h) = self.held.locked().get_mut(id)
                            && h.revision == held.revision
                        {
                            h.revision = revision;
                            h.dirty = true;
                        }
                        tracing::info!(env = %id, "cluster: a lease renewal landed unanswered; the lease is still this host's");
                        self.wake.notify_one();
                    }
                    Ok(Mine::Lost) => {
                        tracing::warn!(env = %id, "cluster: lease lost (it lapsed, or another host holds it now)");
                        self.lose(id);
                    }
                    Ok(Mine::Rewritten(revision)) => {
                        // Given up at once (the writing lock is held): nobody runs
                        // it now, and nobody is to dial that URL.
                        self.lose(id);
                        if let Err(e) = self
                            .bucket
                            .delete_expect_revision(&key, Some(revision))
                            .await
                        {
                            tracing::debug!(env = %id, error = %e, "cluster: giving up a rewritten lease (it lapses by itself)");
                        }
                    }
                    Err(e) => self.renewal_failed(id, &held, &e.to_string()),
                }
            }
            Err(e) => self.renewal_failed(id, &held, &e.to_string()),
        }
    }

    /// Whether the bucket still has lease `key` as `held` says (this host, at its
    /// epoch: only this host writes that), and at which revision.
    async fn still_mine(&self, key: &str, held: &Held) -> Result<Mine, ClusterError> {
        let entry = (self.bucket.entry(key).await)
            .map_err(|e| ClusterError::Nats(format!("reading lease {key}: {e}")))?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            return Ok(Mine::Lost);
        };
        let Some(lease) = decode(&entry) else {
            return Ok(Mine::Lost);
        };
        let ours = lease.host == self.host_id
            && lease.epoch == held.value.epoch
            && lease.environment_id == held.value.environment_id;
        // Every renewal of this host's writes its own URL: another one there was
        // written by someone else under its name (other hosts would dial it with
        // apps' tokens), which is no lease of its own to keep.
        if ours && lease.url != held.value.url {
            tracing::warn!(env = %held.value.environment_id, "cluster: the lease was rewritten under this host's name by someone else (another URL); taking it for lost and giving it up");
            return Ok(Mine::Rewritten(entry.revision));
        }
        Ok(if ours {
            Mine::Still(entry.revision)
        } else {
            Mine::Lost
        })
    }

    /// A renewal of lease `id` that NATS did not take: lost once it was not renewed
    /// for a whole lease.
    fn renewal_failed(&self, id: &str, held: &Held, error: &str) {
        if held.renewed.elapsed() >= self.ttl {
            tracing::warn!(env = %id, %error, "cluster: lease not renewed for a whole lease; assuming it lost");
            self.lose(id);
        } else {
            tracing::warn!(env = %id, %error, "cluster: renewing a lease failed; trying again");
        }
    }

    /// Someone else changed the instance's fields of environment `id`, whose lease
    /// this host holds, in the records bucket (by hand, or a host's bug): this host no
    /// longer knows that what it runs is what the record says, so it takes the lease
    /// for lost at once (no runtime is let in from here on), stops the instance and
    /// gives the lease up, so that a fresh start (a new runtime token) follows.
    pub(super) fn contested(self: &Arc<Self>, id: &str) {
        let Some(held) = self.held.locked().remove(id) else {
            return;
        };
        self.tell(ClusterEvent::LeaseLost(id.to_owned()));
        let (this, key) = (self.clone(), key_of(id));
        tokio::spawn(async move {
            let _writing = this.writing.lock().await;
            let deleted = (this.bucket)
                .delete_expect_revision(&key, Some(held.revision))
                .await;
            if let Err(e) = deleted {
                tracing::debug!(%key, error = %e, "cluster: giving up a contested lease (it lapses by itself)");
            }
        });
    }

    fn lose(&self, id: &str) {
        if self.held.locked().remove(id).is_some() {
            self.tell(ClusterEvent::LeaseLost(id.to_owned()));
        }
    }

    /// Keeps every other host's lease in view.
    async fn watch(&self, mut watch: kv::Watch) {
        loop {
            match watch.next().await {
                Some(Ok(entry)) => self.on_entry(entry),
                other => {
                    if let Some(Err(e)) = other {
                        tracing::warn!(error = %e, "cluster: the leases watch failed; watching again");
                    }
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match self.bucket.watch_all().await {
                            Ok(w) => {
                                watch = w;
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "cluster: cannot watch the leases yet")
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_entry(&self, entry: kv::Entry) {
        match entry.operation {
            Operation::Put => {
                if let Some(lease) = decode(&entry)
                    && lease.host != self.host_id
                {
                    let id = lease.environment_id.clone();
                    let changed = self.saw(lease);
                    if self.held.locked().contains_key(&id) {
                        // Another host holds what this host thinks it holds.
                        self.lose(&id);
                    }
                    if changed {
                        self.tell(ClusterEvent::Status(id));
                    }
                }
            }
            Operation::Delete | Operation::Purge => {
                let mut seen = self.seen.locked();
                let gone = seen
                    .iter()
                    .find(|(id, _)| key_of(id) == entry.key)
                    .map(|(id, _)| id.clone());
                if let Some(id) = gone {
                    seen.remove(&id);
                    drop(seen);
                    self.tell(ClusterEvent::Status(id));
                }
            }
        }
    }

    /// Notes another host's lease; `true` when its status or holder changed.
    fn saw(&self, lease: LeaseView) -> bool {
        let mut seen = self.seen.locked();
        let before = seen.insert(
            lease.environment_id.clone(),
            Seen {
                lease: lease.clone(),
                at: Instant::now(),
            },
        );
        before.is_none_or(|b| {
            b.lease.status != lease.status
                || b.lease.host != lease.host
                || b.lease.runtime_connected != lease.runtime_connected
        })
    }

    /// Every half lease: environments that should run and that no live host holds.
    async fn sweeps(&self, store: Arc<Store>) {
        let mut tick = tokio::time::interval(self.ttl / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let wanted: Vec<String> =
                store.select(|r| (r.desired_state == DesiredState::Running).then(|| r.id.clone()));
            let mut orphans = Vec::new();
            for id in wanted {
                if self.holds(&id) || self.elsewhere(&id).is_some() {
                    continue;
                }
                match self.bucket.entry(key_of(&id)).await {
                    Ok(Some(entry)) if entry.operation == Operation::Put => {
                        if let Some(lease) = decode(&entry) {
                            self.saw(lease);
                        }
                    }
                    Ok(_) => orphans.push(id),
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: looking a lease up");
                        break;
                    }
                }
            }
            if orphans.is_empty() {
                continue;
            }
            let load = u32::try_from(self.held.locked().len()).unwrap_or(u32::MAX);
            tokio::time::sleep((CLAIM_PAUSE_PER_ENV * load).min(MAX_CLAIM_PAUSE)).await;
            for id in orphans {
                tracing::info!(env = %id, "cluster: no host holds this environment, which should be running");
                self.tell(ClusterEvent::Orphaned(id));
            }
        }
    }

    /// Every live host's entry: those whose value is a host's under its own id. A
    /// malformed one is logged (once while it stays so) and left out.
    pub(super) async fn live_hosts(&self) -> Result<Vec<HostValue>, ClusterError> {
        let mut keys = (self.hosts.keys().await)
            .map_err(|e| ClusterError::Nats(format!("listing hosts: {e}")))?;
        let mut out = Vec::new();
        let mut malformed = HashSet::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            let Ok(Some(entry)) = self.hosts.entry(key.clone()).await else {
                continue;
            };
            if entry.operation != Operation::Put {
                continue;
            }
            match HostValue::read(&key, &entry.value) {
                Ok(host) => out.push(host),
                Err(why) => {
                    if !self.malformed_hosts.locked().contains(&key) {
                        tracing::warn!(key = %key, %why, "cluster: ignoring a malformed entry in the hosts bucket");
                    }
                    malformed.insert(key);
                }
            }
        }
        *self.malformed_hosts.locked() = malformed;
        Ok(out)
    }

    /// Every live host with the environments it holds.
    pub(super) async fn hosts(&self) -> Result<Vec<HostView>, ClusterError> {
        let live = self.live_hosts().await?;
        let mut owned = super::by_host(
            &(self.seen.locked().iter())
                .filter(|(_, s)| s.at.elapsed() < self.ttl + GRACE)
                .map(|(id, s)| (id.clone(), s.lease.clone()))
                .collect(),
        );
        let mine: Vec<String> = {
            let mut ids: Vec<String> = self.held.locked().keys().cloned().collect();
            ids.sort();
            ids
        };
        owned.insert(self.host_id.clone(), mine);
        let mut out = Vec::new();
        for host in live {
            let environments = owned.remove(&host.id).unwrap_or_default();
            let this = host.id == self.host_id;
            let templates = self.agreements.templates.shown(&host);
            let providers = self.agreements.providers.shown(&host);
            let tenancy = self.agreements.tenancy.shown(&host);
            out.push(HostView {
                this,
                load: environments.len(),
                environments,
                id: host.id,
                public_url: host.public_url,
                last_seen: host.seen_at,
                templates_match: templates.matches,
                templates_digest: templates.digest,
                template_count: templates.count,
                template_names: templates.names,
                providers_match: providers.matches,
                providers_digest: providers.digest,
                provider_count: providers.count,
                provider_names: providers.names,
                tenancy_match: tenancy.matches,
                tenancy_digest: tenancy.digest,
                tenancy_user_count: tenancy.count,
                tenancy_users: tenancy.names,
                pending_removals: if this {
                    Some(self.pending_removals())
                } else {
                    count_of(host.pending_removals.as_ref())
                },
                runtimes_connected: if this {
                    Some(self.runtimes_connected())
                } else {
                    count_of(host.runtimes_connected.as_ref())
                },
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// `value` as JSON, for this host's entry.
fn json(value: &impl Serialize) -> Result<serde_json::Value, ClusterError> {
    serde_json::to_value(value).map_err(|e| ClusterError::Nats(e.to_string()))
}

fn encode(value: &LeaseView) -> Result<bytes::Bytes, ClusterError> {
    serde_json::to_vec(value)
        .map(Into::into)
        .map_err(|e| ClusterError::Nats(e.to_string()))
}

/// A lease from the bucket; `None` for anything malformed (logged).
fn decode(entry: &kv::Entry) -> Option<LeaseView> {
    if entry.value.len() > MAX_VALUE_BYTES {
        tracing::warn!(key = %entry.key, "cluster: ignoring an oversized lease");
        return None;
    }
    // Its URL is dialled with apps' tokens (a bridge): only a plain public URL.
    let plausible = |lease: &LeaseView| {
        key_of(&lease.environment_id) == entry.key
            && crate::config::PublicUrl::parse(&lease.url).is_ok()
            && crate::config::is_host_id(&lease.host)
    };
    match serde_json::from_slice::<LeaseView>(&entry.value) {
        Ok(lease) if plausible(&lease) => Some(lease),
        _ => {
            tracing::warn!(key = %entry.key, "cluster: ignoring a malformed lease");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::count_of;

    #[test]
    fn what_a_host_says_of_a_count_is_read_only_as_a_bounded_count() {
        assert_eq!(count_of(Some(&json!(3))), Some(3));
        assert_eq!(count_of(Some(&json!(0))), Some(0));
        for said in [
            json!(-1),
            json!(1.5),
            json!("3"),
            json!(null),
            json!([3]),
            json!(u64::MAX),
        ] {
            assert_eq!(count_of(Some(&said)), None, "{said}");
        }
        assert_eq!(count_of(None), None);
    }
}
