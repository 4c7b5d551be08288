//! Whether every host has the same `[templates]`. A template connect is looked up on
//! each host it passes through (the one it reaches, and the one it is bridged to), so
//! hosts whose templates differ make different environments, or none, depending on
//! where an app lands.
//!
//! Each host publishes in its entry of the hosts bucket what it has ([`Published`]:
//! the SHA-256 of its templates, how many there are and the first [`MAX_NAMES`]
//! names), again with every renewal, so a reload of `tether.toml` is published within
//! a third of a lease. Every host compares the other live hosts' with its own as
//! often: those that differ are named in `/healthz`, and logged once per change of
//! that set. Nothing is refused: this only tells.
//!
//! An entry was written by another host, or by anyone on the NATS account: what it
//! says is checked ([`Published::checked`]) before it is compared or shown. A
//! malformed one counts as unknown, as an older host's entry without it does (never
//! as a difference), and is logged once while it lasts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::leases::Leases;
use crate::config::{MAX_TEMPLATES, Template, templates_digest};
use crate::sync::MutexExt;

/// The most template names a host publishes (its digest covers every template).
pub(super) const MAX_NAMES: usize = 64;
/// The most differing hosts a health reason names.
const MAX_NAMED: usize = 16;

/// A host's templates, as its entry in the hosts bucket says them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Published {
    /// [`templates_digest`] of them: 64 lower-case hex digits.
    pub digest: String,
    /// How many there are.
    pub count: usize,
    /// Their names, sorted: the first [`MAX_NAMES`].
    pub names: Vec<String>,
}

/// Why what a host's entry says of its templates is not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Malformed {
    /// Not the shape of [`Published`].
    #[error("it is not an object with a digest, a count and names")]
    Shape,
    /// The digest is not a SHA-256 in hex.
    #[error("its digest is not 64 lower-case hex digits")]
    Digest,
    /// More templates than a host may have.
    #[error("its count is over {MAX_TEMPLATES}")]
    Count,
    /// The names are not what a host publishes.
    #[error("its names are not the count's first {MAX_NAMES} (or all) template names, sorted")]
    Names,
}

impl Published {
    /// What this host publishes for `templates`.
    pub(super) fn of(templates: &BTreeMap<String, Template>) -> Self {
        Self {
            digest: templates_digest(templates),
            count: templates.len(),
            names: templates.keys().take(MAX_NAMES).cloned().collect(),
        }
    }

    /// What another host's entry says (`said`), if it is what a host publishes.
    pub(super) fn checked(said: &Value) -> Result<Self, Malformed> {
        let published = Self::deserialize(said).map_err(|_| Malformed::Shape)?;
        if !is_digest(&published.digest) {
            return Err(Malformed::Digest);
        }
        if published.count > MAX_TEMPLATES {
            return Err(Malformed::Count);
        }
        let names = &published.names;
        let names_ok = names.len() == published.count.min(MAX_NAMES)
            && (names.iter()).all(|n| crate::names::validate("template", n).is_ok())
            && names.windows(2).all(|w| w[0] < w[1]);
        if !names_ok {
            return Err(Malformed::Names);
        }
        Ok(published)
    }
}

/// Whether `s` is a SHA-256 as [`templates_digest`] writes one.
fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// This host's templates, and how the other live hosts' compare with them.
#[derive(Debug)]
pub(super) struct Agreement {
    host_id: String,
    own: Mutex<Published>,
    /// The hosts whose templates differ from this host's, at the last comparison.
    differing: Mutex<BTreeSet<String>>,
    /// The hosts whose entry says something malformed, each logged once while it does.
    malformed: Mutex<BTreeSet<String>>,
}

impl Agreement {
    pub(super) fn new(host_id: String, templates: &BTreeMap<String, Template>) -> Self {
        Self {
            host_id,
            own: Mutex::new(Published::of(templates)),
            differing: Mutex::default(),
            malformed: Mutex::default(),
        }
    }

    /// This host's templates are `templates` now (`tether.toml` was reloaded); its
    /// entry says so from its next renewal.
    pub(super) fn set(&self, templates: &BTreeMap<String, Template>) {
        let now = Published::of(templates);
        let mut own = self.own.locked();
        if *own != now {
            tracing::info!(digest = %now.digest, count = now.count, "cluster: this host's [templates] changed; the other hosts see it with its next renewal");
            *own = now;
        }
    }

    /// What this host publishes.
    pub(super) fn own(&self) -> Published {
        self.own.locked().clone()
    }

    /// What host `host`'s entry says of its templates (`said`): `None` when it says
    /// nothing (a host of an older version) or something malformed (logged once while
    /// it lasts).
    pub(super) fn read(&self, host: &str, said: Option<&Value>) -> Option<Published> {
        match said.map(Published::checked).transpose() {
            Ok(published) => {
                self.malformed.locked().remove(host);
                published
            }
            Err(why) => {
                if self.malformed.locked().insert(host.to_owned()) {
                    tracing::warn!(%host, %why, "cluster: ignoring what a host's entry says of its [templates]; they count as unknown");
                }
                None
            }
        }
    }

    /// Whether `other` (a host's templates, if known) are this host's; `None` when
    /// they are not known.
    pub(super) fn matches(&self, other: Option<&Published>) -> Option<bool> {
        other.map(|p| p.digest == self.own.locked().digest)
    }

    /// Compares the live hosts' templates (`hosts`: each id with what its entry says,
    /// read) with this host's, logging when the set of hosts that differ changes.
    pub(super) fn compare(&self, hosts: &[(String, Option<Published>)]) {
        let now: BTreeSet<String> = (hosts.iter())
            .filter(|(id, p)| *id != self.host_id && self.matches(p.as_ref()) == Some(false))
            .map(|(id, _)| id.clone())
            .collect();
        // A host gone (or fixed) is logged again if it comes back malformed.
        (self.malformed.locked()).retain(|h| hosts.iter().any(|(id, _)| id == h));
        let mut differing = self.differing.locked();
        if *differing == now {
            return;
        }
        if now.is_empty() {
            tracing::info!("cluster: every live host's [templates] are this host's again");
        } else {
            tracing::warn!(hosts = %named(&now), "cluster: [templates] differ between this host and other hosts: a template connect acts differently depending on the hosts it reaches; give every host the same");
        }
        *differing = now;
    }

    /// How many live hosts' templates differ from this host's, at the last comparison.
    pub(super) fn differing(&self) -> usize {
        self.differing.locked().len()
    }

    /// Why the hosts' templates need a person, if they do (for `/healthz`).
    pub(super) fn health(&self) -> Option<String> {
        let differing = self.differing.locked();
        (!differing.is_empty()).then(|| {
            format!(
                "cluster: [templates] differ between this host and {}: a template connect acts on the templates of each host it passes through; give every host the same [templates] (GET /api/v1/cluster shows each host's templatesDigest)",
                named(&differing)
            )
        })
    }

    /// Compares every `period`, until the task is dropped at shutdown.
    pub(super) async fn checks(&self, leases: &Leases, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match leases.live_hosts().await {
                Ok(hosts) => {
                    let read: Vec<(String, Option<Published>)> = (hosts.into_iter())
                        .map(|h| {
                            let published = self.read(&h.id, h.templates.as_ref());
                            (h.id, published)
                        })
                        .collect();
                    self.compare(&read);
                }
                // What was seen last stands until the hosts can be listed again.
                Err(e) => tracing::debug!(error = %e, "cluster: comparing the hosts' templates"),
            }
        }
    }
}

/// `host b`, or `hosts b, c` (the first [`MAX_NAMED`], then how many more).
fn named(hosts: &BTreeSet<String>) -> String {
    let shown: Vec<&str> = hosts.iter().take(MAX_NAMED).map(String::as_str).collect();
    let more = hosts.len() - shown.len();
    match (hosts.len(), more) {
        (1, _) => format!("host {}", shown.join("")),
        (_, 0) => format!("hosts {}", shown.join(", ")),
        _ => format!("hosts {} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn said(digest: &str, count: usize, names: &[&str]) -> Value {
        json!({"digest": digest, "count": count, "names": names})
    }

    /// The templates of a `tether.toml` holding `text`.
    fn templates(text: &str) -> BTreeMap<String, Template> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.toml");
        std::fs::write(&path, text).unwrap();
        let listen = "127.0.0.1:0".parse().unwrap();
        let config = crate::config::ServeConfig::load(listen, dir.path().to_owned(), &path);
        config.unwrap().templates
    }

    #[test]
    fn what_this_host_publishes_passes_its_own_check() {
        let none = Published::of(&BTreeMap::new());
        assert_eq!((none.count, none.names.len()), (0, 0));
        let json = serde_json::to_value(&none).unwrap();
        assert_eq!(Published::checked(&json), Ok(none));
        // Past MAX_NAMES, the first names only; the count says how many there are.
        let text: String = (0..MAX_NAMES + 6)
            .map(|i| format!("[templates.t{i:03}]\nprovider = \"p\"\nscope = \"user\"\n"))
            .collect();
        let published = Published::of(&templates(&text));
        assert_eq!(published.count, MAX_NAMES + 6);
        assert_eq!(published.names.len(), MAX_NAMES);
        assert_eq!(published.names[0], "t000");
        let json = serde_json::to_value(&published).unwrap();
        assert_eq!(Published::checked(&json), Ok(published));
    }

    #[test]
    fn a_malformed_entry_is_refused_whole() {
        assert!(Published::checked(&said(A, 2, &["a", "b"])).is_ok());
        let upper = A.to_uppercase();
        let long = format!("{A}a");
        let many: Vec<String> = (0..=MAX_NAMES).map(|i| format!("t{i:03}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        for (bad, why) in [
            (json!("just a string"), Malformed::Shape),
            (json!({"digest": A, "count": 1}), Malformed::Shape),
            (
                json!({"digest": 7, "count": 0, "names": []}),
                Malformed::Shape,
            ),
            (
                json!({"digest": A, "count": -1, "names": []}),
                Malformed::Shape,
            ),
            (said(&upper, 0, &[]), Malformed::Digest),
            (said(&A[1..], 0, &[]), Malformed::Digest),
            (said(&long, 0, &[]), Malformed::Digest),
            (said(&A.replace('a', "g"), 0, &[]), Malformed::Digest),
            (said("", 0, &[]), Malformed::Digest),
            (
                said(A, MAX_TEMPLATES + 1, &many[..MAX_NAMES]),
                Malformed::Count,
            ),
            (said(A, 2, &["a"]), Malformed::Names),
            (said(A, 1, &["a", "b"]), Malformed::Names),
            (said(A, 2, &["b", "a"]), Malformed::Names),
            (said(A, 2, &["a", "a"]), Malformed::Names),
            (said(A, 1, &["../x"]), Malformed::Names),
            (said(A, 1, &["a\nforged log line"]), Malformed::Names),
            (said(A, MAX_NAMES + 1, &many), Malformed::Names),
        ] {
            assert_eq!(Published::checked(&bad), Err(why), "{bad}");
        }
        // Unknown fields are a later version's: what this one knows is still read.
        let mut later = said(A, 1, &["a"]);
        later["more"] = json!(true);
        assert!(Published::checked(&later).is_ok());
    }

    #[test]
    fn hosts_whose_templates_differ_are_named_and_unknown_ones_are_not() {
        let agreement = Agreement::new("a".into(), &BTreeMap::new());
        let own = agreement.own();
        let other = Published::checked(&said(A, 1, &["chat"])).unwrap();
        assert_ne!(other.digest, own.digest);
        assert_eq!(agreement.matches(Some(&own)), Some(true));
        assert_eq!(agreement.matches(Some(&other)), Some(false));
        assert_eq!(agreement.matches(None), None);
        // An older host's entry says nothing; a malformed one counts the same, and
        // is noted (logged) once while it lasts.
        let malformed = agreement.read("d", Some(&said("not hex", 0, &[])));
        assert_eq!(malformed, None);
        assert!(agreement.malformed.locked().contains("d"));
        assert_eq!(agreement.read("e", None), None);
        assert_eq!(
            agreement.read("b", Some(&said(A, 1, &["chat"]))),
            Some(other.clone())
        );
        agreement.compare(&[
            ("a".into(), Some(other.clone())),
            ("b".into(), Some(other.clone())),
            ("c".into(), Some(own.clone())),
            ("d".into(), malformed),
            ("e".into(), None),
        ]);
        let why = agreement.health().unwrap();
        assert!(why.starts_with("cluster: [templates] differ"), "{why}");
        assert!(why.contains("this host and host b: "), "{why}");
        agreement.compare(&[
            ("b".into(), Some(other.clone())),
            ("c".into(), Some(other.clone())),
        ]);
        let why = agreement.health().unwrap();
        assert!(why.contains("this host and hosts b, c: "), "{why}");
        // d is gone: noted again if it comes back malformed.
        assert!(agreement.malformed.locked().is_empty());
        // This host's templates change (a reload): compared with its new ones.
        agreement.set(&templates(
            "[templates.chat]\nprovider = \"p\"\nscope = \"user\"\n",
        ));
        let now = agreement.own();
        assert_eq!(agreement.matches(Some(&now)), Some(true));
        assert_eq!(agreement.matches(Some(&own)), Some(false));
        agreement.compare(&[("b".into(), Some(now)), ("c".into(), None)]);
        assert_eq!(agreement.health(), None);
    }

    #[test]
    fn a_long_list_of_hosts_is_cut() {
        let one: BTreeSet<String> = ["b".to_owned()].into();
        assert_eq!(named(&one), "host b");
        let two: BTreeSet<String> = ["b".to_owned(), "c".to_owned()].into();
        assert_eq!(named(&two), "hosts b, c");
        let many: BTreeSet<String> = (0..MAX_NAMED + 3).map(|i| format!("h{i:02}")).collect();
        let shown = named(&many);
        assert!(shown.ends_with("h15 and 3 more"), "{shown}");
    }
}
