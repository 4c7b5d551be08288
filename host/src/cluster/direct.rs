//! `relay = "direct"`: an app connected to a host that does not run its
//! environment is bridged, its token with it, straight to the URL in the running
//! host's lease. Anyone who can write the leases bucket (or rewrite a lease in the
//! moment before its holder's next renewal finds it) could put any URL there, so a
//! bridge dials it only when it is the URL the holder itself publishes in its entry
//! in the hosts bucket. A lease refused so is named in `/healthz` while this host
//! still sees it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::leases::LeaseView;
use crate::sync::MutexExt;

/// The most refused leases kept for `/healthz` (the rest are only logged).
const KEPT: usize = 64;

/// What a bridge is about to dial: an environment's lease as this host saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease<'a> {
    /// The environment.
    pub environment_id: &'a str,
    /// The host the lease names.
    pub host: &'a str,
    /// The URL the lease gives for it.
    pub url: &'a str,
}

/// The leases whose URL a bridge refused to dial, by environment.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    refused: Mutex<BTreeMap<String, Refused>>,
}

/// A lease whose URL was not dialled, and why.
#[derive(Debug)]
struct Refused {
    host: String,
    url: String,
    why: String,
}

/// Checks `lease`'s URL against `published`, what its holder's entry in the hosts
/// bucket says of its public URL (`None`: it has no valid entry): why not, if they
/// differ.
pub(super) fn compare(lease: &Lease<'_>, published: Option<&str>) -> Result<(), String> {
    match published {
        Some(url) if url == lease.url => Ok(()),
        Some(url) => Err(format!(
            "its lease names host {} at {}, but that host publishes {url}",
            lease.host,
            crate::untrusted::logged(lease.url)
        )),
        None => Err(format!(
            "its lease names host {} at {}, which has no valid entry in the hosts bucket",
            lease.host,
            crate::untrusted::logged(lease.url)
        )),
    }
}

impl Refusals {
    /// Notes what [`compare`] said of `lease`: a refusal to dial it is logged and
    /// kept for `/healthz`; a match clears what was kept.
    pub(super) fn note(&self, lease: &Lease<'_>, compared: &Result<(), String>) {
        let mut refused = self.refused.locked();
        let Err(why) = compared else {
            refused.remove(lease.environment_id);
            return;
        };
        tracing::error!(env = %lease.environment_id, %why, "cluster: not bridging an app to the URL in a lease (relay = \"direct\")");
        if refused.len() < KEPT || refused.contains_key(lease.environment_id) {
            let kept = Refused {
                host: lease.host.to_owned(),
                url: lease.url.to_owned(),
                why: why.clone(),
            };
            refused.insert(lease.environment_id.to_owned(), kept);
        }
    }

    /// Why `/healthz` should name a refused lease, for those `still(id)` says this
    /// host still sees as they were refused; the others are forgotten.
    pub(super) fn health(&self, still: impl Fn(&str) -> Option<LeaseView>) -> Vec<String> {
        let mut refused = self.refused.locked();
        refused.retain(|id, was| {
            still(id).is_some_and(|now| now.host == was.host && now.url == was.url)
        });
        refused
            .iter()
            .map(|(id, Refused { why, .. })| {
                format!(
                    "cluster: apps of environment {id} are not bridged to the host running it: {why} (relay = \"direct\"); the lease was written by someone other than its host, or that host's entry is gone"
                )
            })
            .collect()
    }
}
