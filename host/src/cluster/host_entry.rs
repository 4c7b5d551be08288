//! This host's entry in `PREFIX-hosts`, kept as its own: written with a create at
//! start and renewed by compare-and-set, never overwritten blindly. Every host id
//! names one running process: the leases, the tunnels (`PREFIX.tunnel.HOST`) and the
//! removals left to a host all go by it, so a second process under one id would take
//! the first one's leases as its own from before a restart and answer its tunnels.
//!
//! Each process writes a random instance id of its own in the entry, and keeps it in
//! its data directory (`.codebolt/cluster/instance`). At start an entry already
//! there is either a previous run of this host that died without letting go (its
//! entry lapses `lease_ttl` after its last renewal) or another live process with this
//! id, which renews it every third of a lease. One whose instance id is the one this
//! data directory kept is its previous run's: taken over at once. Any other is
//! watched for up to two renewals: renewed, the host refuses to start; still there
//! unrenewed, it takes it over. The instance id also tells a process its own renewal
//! whose answer NATS lost from another process's.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;

use super::ClusterError;
use crate::sync::MutexExt;

/// How often the entry is looked at while the host waits to know who holds it.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// This host's entry in the hosts bucket.
#[derive(Debug)]
pub(super) struct HostEntry {
    bucket: kv::Store,
    host_id: String,
    /// Random per process: written in the entry, so this process knows its own.
    instance: String,
    /// Where the instance id is kept for the next run, and the previous run's, if any.
    kept_at: PathBuf,
    previous: Option<String>,
    /// The revision this host last wrote; 0 before it joined.
    revision: AtomicU64,
    /// Why another process seems to write under this host's id, while it does.
    clash: Mutex<Option<String>>,
    /// How far the NATS server's clock is from this host's.
    clock: ServerClock,
}

/// How far the NATS server's clock is from this host's, measured on this host's
/// writes: NATS stamps each entry with its own time.
#[derive(Debug, Default)]
struct ServerClock {
    /// The server's time less this host's; none measured yet counts as zero.
    offset: Mutex<time::Duration>,
}

impl ServerClock {
    /// A write sent at `sent` and answered at `answered` (this host's clock) was
    /// stamped `created` by the server: taken as stamped half-way.
    fn note(
        &self,
        sent: time::OffsetDateTime,
        answered: time::OffsetDateTime,
        created: time::OffsetDateTime,
    ) {
        let midway = sent + (answered - sent) / 2;
        *self.offset.locked() = created - midway;
    }

    fn now(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc() + *self.offset.locked()
    }
}

impl HostEntry {
    /// This host's entry in `bucket`, its instance id kept in `kept_at`.
    pub(super) fn new(bucket: kv::Store, host_id: String, kept_at: PathBuf) -> Self {
        let previous = kept_instance(&kept_at);
        Self {
            bucket,
            host_id,
            kept_at,
            previous,
            instance: format!("{:032x}", rand::random::<u128>()),
            revision: AtomicU64::new(0),
            clash: Mutex::new(None),
            clock: ServerClock::default(),
        }
    }

    /// The instance id this process writes in its entry.
    pub(super) fn instance(&self) -> &str {
        &self.instance
    }

    /// Writes the entry for the first time, as `value` (made by `value` again for
    /// each try). [`ClusterError::HostIdInUse`] when another live process renews an
    /// entry under this host's id: it is watched for up to two renewals
    /// (`2 × lease_ttl / 3`) first.
    pub(super) async fn join(
        &self,
        lease_ttl: Duration,
        value: impl Fn() -> Result<Bytes, ClusterError>,
    ) -> Result<(), ClusterError> {
        let nats = |e: String| ClusterError::Nats(format!("announcing this host: {e}"));
        // Bounded: each round ends in a write that landed, a live other process, or
        // a race with one (which the next round sees renewing).
        for _ in 0..3 {
            let found =
                (self.bucket.entry(&self.host_id).await).map_err(|e| nats(e.to_string()))?;
            let Some(found) = found.filter(|e| e.operation == Operation::Put) else {
                let value = value()?;
                let sent = time::OffsetDateTime::now_utc();
                match self.bucket.create(&self.host_id, value).await {
                    Ok(revision) => {
                        self.joined(revision, sent).await;
                        return Ok(());
                    }
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(nats(e.to_string())),
                }
            };
            // This data directory's previous run: nobody to wait for.
            let previous = self
                .previous
                .as_deref()
                .is_some_and(|p| self.is_instance(&found.value, p));
            // Renewed meanwhile: another process lives under this id.
            let wait = if previous {
                Duration::ZERO
            } else {
                lease_ttl * 2 / 3
            };
            let deadline = tokio::time::Instant::now() + wait;
            let mut lapsed = false;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(LOOK_EVERY).await;
                let now =
                    (self.bucket.entry(&self.host_id).await).map_err(|e| nats(e.to_string()))?;
                match now {
                    Some(now) if now.revision == found.revision => {}
                    Some(now) if now.operation == Operation::Put => {
                        return Err(ClusterError::HostIdInUse(self.host_id.clone()));
                    }
                    _ => {
                        lapsed = true;
                        break;
                    }
                }
            }
            if lapsed {
                continue;
            }
            // Not renewed for two renewals: a previous run of this host that died.
            let sent = time::OffsetDateTime::now_utc();
            match self
                .bucket
                .update(&self.host_id, value()?, found.revision)
                .await
            {
                Ok(revision) => {
                    tracing::info!(
                        "cluster: this host's entry from a previous run was not renewed; taking it over"
                    );
                    self.joined(revision, sent).await;
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(nats(e.to_string())),
            }
        }
        Err(ClusterError::HostIdInUse(self.host_id.clone()))
    }

    async fn joined(&self, revision: u64, sent: time::OffsetDateTime) {
        self.revision.store(revision, Ordering::Release);
        // Kept for the next run, so it knows this run's entry at once; replaced whole,
        // so a link or a named pipe left in its place is replaced, never written through.
        let (path, instance) = (self.kept_at.clone(), self.instance.clone());
        let kept = tokio::task::spawn_blocking(move || {
            crate::atomic::replace_file(&path, instance.as_bytes())
        });
        let kept = kept.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = kept {
            tracing::warn!(error = %e, path = %self.kept_at.display(), "cluster: cannot keep this host's instance id; a restart after a crash waits two renewals for its entry");
        }
        self.clock_from(revision, sent).await;
    }

    /// Renews the entry as `value` by compare-and-set. Made again when it lapsed (this
    /// host was cut off for a whole lease); left alone, and the clash logged and
    /// kept for `/healthz`, when another process wrote it.
    pub(super) async fn renew(&self, value: Bytes) -> Result<(), ClusterError> {
        let nats = |e: String| ClusterError::Nats(format!("renewing this host's entry: {e}"));
        let revision = self.revision.load(Ordering::Acquire);
        let sent = time::OffsetDateTime::now_utc();
        match self
            .bucket
            .update(&self.host_id, value.clone(), revision)
            .await
        {
            Ok(revision) => {
                self.renewed(revision, sent).await;
                return Ok(());
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(nats(e.to_string())),
        }
        let sent = time::OffsetDateTime::now_utc();
        match self.bucket.create(&self.host_id, value).await {
            Ok(revision) => {
                self.renewed(revision, sent).await;
                return Ok(());
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(nats(e.to_string())),
        }
        let found = (self.bucket.entry(&self.host_id).await).map_err(|e| nats(e.to_string()))?;
        let Some(found) = found else {
            return Ok(()); // Gone in between: made at the next renewal.
        };
        if self.is_mine(&found.value) {
            // This host's own write, whose answer NATS lost.
            self.revision.store(found.revision, Ordering::Release);
            return Ok(());
        }
        let why = format!(
            "cluster: another process writes this host's entry in the hosts bucket: host id {} is in use twice; stop one and give every host its own --host-id",
            self.host_id
        );
        if self.clash.locked().replace(why.clone()).is_none() {
            tracing::error!("{why}");
        }
        Ok(())
    }

    /// Reads back revision `revision` of the entry, written from `sent` on, for the
    /// time NATS gave it: what [`Self::server_now`] is reckoned from.
    async fn clock_from(&self, revision: u64, sent: time::OffsetDateTime) {
        let answered = time::OffsetDateTime::now_utc();
        match self.bucket.entry(&self.host_id).await {
            Ok(Some(entry)) if entry.revision == revision => {
                self.clock.note(sent, answered, entry.created);
            }
            Ok(_) => {} // Rewritten meanwhile: the next renewal measures again.
            Err(e) => tracing::debug!(error = %e, "cluster: reading this host's entry back"),
        }
    }

    /// The time now by the NATS server's clock, as far as this host can tell: the
    /// ages of entries (which NATS stamps) are measured on it, so hosts whose clocks
    /// are off take neither a fresh entry for old nor an old one for fresh.
    pub(super) fn server_now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    async fn renewed(&self, revision: u64, sent: time::OffsetDateTime) {
        self.revision.store(revision, Ordering::Release);
        self.clock_from(revision, sent).await;
        if self.clash.locked().take().is_some() {
            tracing::info!("cluster: this host's entry is its own again");
        }
    }

    /// Whether `value` is an entry this process wrote.
    fn is_mine(&self, value: &[u8]) -> bool {
        self.is_instance(value, &self.instance)
    }

    /// Whether `value` is an entry written by instance `instance`.
    fn is_instance(&self, value: &[u8], instance: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Instance {
            #[serde(default)]
            instance: Option<String>,
        }
        serde_json::from_slice::<Instance>(value)
            .is_ok_and(|v| v.instance.as_deref() == Some(instance))
    }

    /// Why `/healthz` should say the host id is in use twice, while it seems so.
    pub(super) fn health(&self) -> Option<String> {
        self.clash.locked().clone()
    }

    /// Deletes the entry if it is still this host's (at shutdown).
    pub(super) async fn leave(&self) {
        let revision = self.revision.load(Ordering::Acquire);
        if let Err(e) = (self.bucket)
            .delete_expect_revision(&self.host_id, Some(revision))
            .await
        {
            tracing::debug!(error = %e, "cluster: removing this host's entry");
        }
    }
}

/// The instance id the last run kept at `path`: 32 hexadecimal digits, or none. A file
/// of anything else (a named pipe, a huge file) is neither waited on nor read past that.
fn kept_instance(path: &std::path::Path) -> Option<String> {
    crate::untrusted::open_regular(path)
        .and_then(|f| crate::untrusted::read_at_most(f, 32))
        .ok()
        .flatten()
        .filter(|b| b.len() == 32 && b.iter().all(u8::is_ascii_hexdigit))
        .and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::{ServerClock, kept_instance};

    #[test]
    fn the_kept_instance_is_32_hex_digits_from_a_file_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("instance");
        assert_eq!(kept_instance(&path), None, "no file");
        let id = "0123456789abcdef0123456789abcdef";
        std::fs::write(&path, id).expect("write");
        assert_eq!(kept_instance(&path).as_deref(), Some(id));
        std::fs::write(&path, format!("{id}0")).expect("write");
        assert_eq!(kept_instance(&path), None, "too long");
        std::fs::write(&path, "zz23456789abcdef0123456789abcdef").expect("write");
        assert_eq!(kept_instance(&path), None, "not hexadecimal");
        // A named pipe with no writer is refused at once, not waited on.
        std::fs::remove_file(&path).expect("remove");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert_eq!(kept_instance(&path), None, "a named pipe");
    }

    #[test]
    fn the_server_s_clock_is_reckoned_from_the_stamp_of_a_write() {
        let clock = ServerClock::default();
        let here = time::OffsetDateTime::now_utc();
        assert!((clock.now() - here).abs() < time::Duration::seconds(5));
        // The server is ten minutes ahead; the write took 20 ms there and back.
        let sent = here;
        let answered = here + time::Duration::milliseconds(20);
        let created = here + time::Duration::minutes(10) + time::Duration::milliseconds(10);
        clock.note(sent, answered, created);
        let skew = clock.now() - time::OffsetDateTime::now_utc();
        assert!(
            (skew - time::Duration::minutes(10)).abs() < time::Duration::seconds(1),
            "{skew}"
        );
        // And behind.
        clock.note(sent, answered, here - time::Duration::minutes(3));
        let skew = clock.now() - time::OffsetDateTime::now_utc();
        assert!(
            (skew + time::Duration::minutes(3)).abs() < time::Duration::seconds(1),
            "{skew}"
        );
    }
}
