//! Whether the cluster's buckets are still the ones this host opened at start.
//!
//! A bucket deleted by hand while the hosts run, or every bucket gone at once because
//! NATS restarted without its JetStream storage (a container without a volume), is
//! not something a watch reports: the watch of a stream that is gone just stays
//! quiet, so the host would go on answering from a view that no longer follows the
//! cluster, and its writes would fail where nobody looks. So each bucket's stream is
//! looked up every lease, and one that is gone, or was made again since this host
//! opened it, is named in `/healthz` (and logged once) until the hosts are restarted:
//! a restarted host makes the buckets again and writes its records and tokens there.

use std::error::Error as _;

use async_nats::jetstream::kv;
use async_nats::jetstream::{self, ErrorCode};

use super::ClusterError;
use crate::sync::MutexExt;

/// One bucket as this host opened it.
#[derive(Debug)]
struct Opened {
    store: kv::Store,
    /// When its stream was made, as NATS said at start.
    created: time::OffsetDateTime,
}

/// The buckets this host opened, and what is wrong with them now.
#[derive(Debug)]
pub(super) struct Buckets {
    opened: Vec<Opened>,
    /// Why `/healthz` should name a bucket, one line per bucket, as last looked.
    trouble: std::sync::Mutex<Vec<String>>,
}

impl Buckets {
    /// `stores` as they are now, to be compared with later.
    pub(super) async fn new(stores: &[&kv::Store]) -> Result<Self, ClusterError> {
        let mut opened = Vec::with_capacity(stores.len());
        for store in stores {
            let info = (store.stream.get_info().await).map_err(|e| ClusterError::Bucket {
                bucket: store.name.clone(),
                reason: e.to_string(),
            })?;
            opened.push(Opened {
                store: (*store).clone(),
                created: info.created,
            });
        }
        Ok(Self {
            opened,
            trouble: std::sync::Mutex::default(),
        })
    }

    /// Looks each bucket up once. A bucket NATS cannot answer for (it is away) is
    /// left as it was last seen: `/healthz` says NATS is away already.
    pub(super) async fn check(&self) {
        let mut trouble = Vec::new();
        for opened in &self.opened {
            let name = &opened.store.name;
            match opened.store.stream.get_info().await {
                Ok(info) if info.created == opened.created => {}
                Ok(_) => trouble.push(format!(
                    "cluster: bucket {name} was deleted and made again while this host ran; this host no longer follows it: restart the hosts"
                )),
                Err(e) if stream_not_found(&e) => trouble.push(format!(
                    "cluster: bucket {name} is gone from NATS (deleted, or NATS restarted without its storage); this host's changes are not shared: restart the hosts to make it again"
                )),
                Err(e) => {
                    tracing::debug!(bucket = %name, error = %e, "cluster: looking a bucket up");
                    let before = self.trouble.locked();
                    trouble.extend(before.iter().filter(|t| t.contains(name.as_str())).cloned());
                }
            }
        }
        let mut kept = self.trouble.locked();
        for line in trouble.iter().filter(|t| !kept.contains(t)) {
            tracing::error!("{line}");
        }
        *kept = trouble;
    }

    /// Why `/healthz` should name the buckets, if it should.
    pub(super) fn health(&self) -> Vec<String> {
        self.trouble.locked().clone()
    }
}

/// Whether NATS answered that the stream does not exist.
fn stream_not_found(e: &jetstream::context::RequestError) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}
