//! Whether every host has the same settings of a kind ([`Section`]): its
//! `[templates]` ([`TEMPLATES`]: a template connect is looked up on each host it
//! passes through, the one it reaches and the one it is bridged to) and its providers
//! ([`PROVIDERS`]: a host that takes another's environments over runs them with its
//! own providers, their components, grants and operator config) and its `[tenancy]`
//! limits ([`TENANCY`]: each host checks a user's change against its own). Where
//! hosts differ, an app, an environment or a user gets one behaviour or the other
//! depending on the host.
//!
//! Each host publishes in its entry of the hosts bucket what it has of each
//! ([`Published`]: a SHA-256 of the section, how many entries it has and the first
//! [`MAX_NAMES`] names), again with every renewal, so a reload is published within a
//! third of a lease. Every host compares the other live hosts' with its own as often:
//! those that differ are named in `/healthz`, and logged once per change of that set.
//! Nothing is refused: this only tells.
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

use super::leases::{HostValue, Leases};
use crate::config::{
    MAX_OVERRIDES, MAX_TEMPLATES, ProvidersDigest, Template, TenancyConfig, templates_digest,
};
use crate::sync::MutexExt;

/// The most names a host publishes of a section (its digest covers every entry).
pub(super) const MAX_NAMES: usize = 64;
/// The most differing hosts a health reason names.
const MAX_NAMED: usize = 16;
/// The most providers a host's entry may say it has: far more than any host loads,
/// so only a forged count is refused.
const MAX_PROVIDERS: usize = 100_000;

/// One kind of setting the hosts compare.
#[derive(Debug)]
pub(super) struct Section {
    /// How logs and `/healthz` name it.
    label: &'static str,
    /// What one of its names is, for [`crate::names::validate`].
    kind: &'static str,
    /// The most entries a host's entry may say it has.
    max_count: usize,
    /// What differing does, for the warning logged when the set of hosts changes.
    warning: &'static str,
    /// What differing does, for `/healthz`.
    consequence: &'static str,
    /// The field of `GET /api/v1/cluster` that shows each host's digest.
    view_field: &'static str,
    /// What a host's entry in the hosts bucket says of it, unread.
    said: fn(&HostValue) -> Option<&Value>,
}

/// `[templates]`: every template, secret values excepted (`config::templates_digest`).
pub(super) const TEMPLATES: Section = Section {
    label: "[templates]",
    kind: "template",
    max_count: MAX_TEMPLATES,
    warning: "a template connect acts differently depending on the hosts it reaches",
    consequence: "a template connect acts on the templates of each host it passes through",
    view_field: "templatesDigest",
    said: HostValue::templates,
};

/// The loaded providers: each one's component, grant and operator config keys
/// (`ServeConfig::providers_digest`).
pub(super) const PROVIDERS: Section = Section {
    label: "providers",
    kind: "provider",
    max_count: MAX_PROVIDERS,
    warning: "an environment taken over from another host runs with another build, grant or operator config of its provider",
    consequence: "an environment another host takes over runs with that host's provider (its component, grant and [providers.NAME] config)",
    view_field: "providersDigest",
    said: HostValue::providers,
};

/// `[tenancy]`: the default limits and every user's override
/// (`TenancyConfig::digest`); its names are the users with an override.
pub(super) const TENANCY: Section = Section {
    label: "[tenancy] limits",
    kind: "user",
    max_count: MAX_OVERRIDES,
    warning: "a user's limits depend on the host their request reaches",
    consequence: "a user's limits (max_environments, max_running) depend on the host their request reaches",
    view_field: "tenancyDigest",
    said: HostValue::tenancy,
};

/// A host's section, as its entry in the hosts bucket says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Published {
    /// SHA-256 of the section: 64 lower-case hex digits.
    pub digest: String,
    /// How many entries it has.
    pub count: usize,
    /// Their names, sorted: the first [`MAX_NAMES`].
    pub names: Vec<String>,
}

/// Why what a host's entry says of a section is not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Malformed {
    /// Not the shape of [`Published`].
    #[error("it is not an object with a digest, a count and names")]
    Shape,
    /// The digest is not a SHA-256 in hex.
    #[error("its digest is not 64 lower-case hex digits")]
    Digest,
    /// More entries than a host may have.
    #[error("its count is over what a host may have")]
    Count,
    /// The names are not what a host publishes.
    #[error("its names are not the count's first {MAX_NAMES} (or all) valid names, sorted")]
    Names,
}

/// Snapshot of one host's section as `GET /api/v1/cluster` shows it; all `None`
/// when unknown.
#[derive(Debug, Default)]
pub(super) struct Shown {
    pub digest: Option<String>,
    pub matches: Option<bool>,
    pub count: Option<usize>,
    pub names: Option<Vec<String>>,
}

impl Published {
    /// What a host publishes for a section whose digest is `digest` and whose
    /// entries are called `names` (sorted).
    pub(super) fn new(digest: String, names: impl ExactSizeIterator<Item = String>) -> Self {
        Self {
            digest,
            count: names.len(),
            names: names.take(MAX_NAMES).collect(),
        }
    }

    /// What this host publishes for its `templates`.
    pub(super) fn of_templates(templates: &BTreeMap<String, Template>) -> Self {
        Self::new(templates_digest(templates), templates.keys().cloned())
    }

    /// What this host publishes for its loaded `providers`.
    pub(super) fn of_providers(providers: &ProvidersDigest) -> Self {
        Self::new(providers.digest.clone(), providers.names.iter().cloned())
    }

    /// What this host publishes for its `[tenancy]`.
    pub(super) fn of_tenancy(tenancy: &TenancyConfig) -> Self {
        Self::new(tenancy.digest(), tenancy.users.keys().cloned())
    }

    /// What another host's entry says of `section` (`said`), if it is what a host
    /// publishes.
    pub(super) fn checked(section: &Section, said: &Value) -> Result<Self, Malformed> {
        let published = Self::deserialize(said).map_err(|_| Malformed::Shape)?;
        if !is_digest(&published.digest) {
            return Err(Malformed::Digest);
        }
        if published.count > section.max_count {
            return Err(Malformed::Count);
        }
        let names = &published.names;
        let names_ok = names.len() == published.count.min(MAX_NAMES)
            && (names.iter()).all(|n| crate::names::validate(section.kind, n).is_ok())
            && names.windows(2).all(|w| w[0] < w[1]);
        if !names_ok {
            return Err(Malformed::Names);
        }
        Ok(published)
    }
}

/// Whether `s` is a SHA-256 as the config's digests write one.
fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// This host's section, and how the other live hosts' compare with it.
#[derive(Debug)]
pub(super) struct Agreement {
    section: &'static Section,
    host_id: String,
    own: Mutex<Published>,
    /// The hosts whose section differs from this host's, at the last comparison.
    differing: Mutex<BTreeSet<String>>,
    /// The hosts whose entry says something malformed, each logged once while it does.
    malformed: Mutex<BTreeSet<String>>,
}

impl Agreement {
    pub(super) fn new(section: &'static Section, host_id: String, own: Published) -> Self {
        Self {
            section,
            host_id,
            own: Mutex::new(own),
            differing: Mutex::default(),
            malformed: Mutex::default(),
        }
    }

    /// This host's section is `now` (a reload, an install); its entry says so from
    /// its next renewal.
    pub(super) fn set(&self, now: Published) {
        let mut own = self.own.locked();
        if *own != now {
            tracing::info!(digest = %now.digest, count = now.count, "cluster: this host's {} changed; the other hosts see it with its next renewal", self.section.label);
            *own = now;
        }
    }

    /// What this host publishes.
    pub(super) fn own(&self) -> Published {
        self.own.locked().clone()
    }

    /// What host `host`'s entry says of the section (`said`): `None` when it says
    /// nothing (a host of an older version) or something malformed (logged once while
    /// it lasts).
    pub(super) fn read(&self, host: &str, said: Option<&Value>) -> Option<Published> {
        match said
            .map(|s| Published::checked(self.section, s))
            .transpose()
        {
            Ok(published) => {
                self.malformed.locked().remove(host);
                published
            }
            Err(why) => {
                if self.malformed.locked().insert(host.to_owned()) {
                    tracing::warn!(%host, %why, "cluster: ignoring what a host's entry says of its {}; they count as unknown", self.section.label);
                }
                None
            }
        }
    }

    /// Whether `other` (a host's section, if known) is this host's; `None` when it is
    /// not known.
    pub(super) fn matches(&self, other: Option<&Published>) -> Option<bool> {
        other.map(|p| p.digest == self.own.locked().digest)
    }

    /// How `GET /api/v1/cluster` shows `host`'s section: this host's own when it is
    /// this host (the one in force, which its entry has from its next renewal).
    pub(super) fn shown(&self, host: &HostValue) -> Shown {
        let published = if host.id == self.host_id {
            Some(self.own())
        } else {
            self.read(&host.id, (self.section.said)(host))
        };
        let Some(published) = published else {
            return Shown::default();
        };
        Shown {
            matches: self.matches(Some(&published)),
            digest: Some(published.digest),
            count: Some(published.count),
            names: Some(published.names),
        }
    }

    /// Compares the live hosts' sections (`hosts`: each id with what its entry says,
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
        let label = self.section.label;
        if now.is_empty() {
            tracing::info!("cluster: every live host's {label} are this host's again");
        } else {
            tracing::warn!(hosts = %named(&now), "cluster: {label} differ between this host and other hosts: {}; give every host the same", self.section.warning);
        }
        *differing = now;
    }

    /// Reads what each of the live `hosts` says of the section and compares it.
    fn check(&self, hosts: &[HostValue]) {
        let read: Vec<(String, Option<Published>)> = (hosts.iter())
            .map(|h| (h.id.clone(), self.read(&h.id, (self.section.said)(h))))
            .collect();
        self.compare(&read);
    }

    /// How many live hosts' section differs from this host's, at the last comparison.
    pub(super) fn differing(&self) -> usize {
        self.differing.locked().len()
    }

    /// Why the hosts' sections need a person, if they do (for `/healthz`).
    pub(super) fn health(&self) -> Option<String> {
        let differing = self.differing.locked();
        let Section {
            label,
            consequence,
            view_field,
            ..
        } = self.section;
        (!differing.is_empty()).then(|| {
            format!(
                "cluster: {label} differ between this host and {}: {consequence}; give every host the same {label} (GET /api/v1/cluster shows each host's {view_field})",
                named(&differing)
            )
        })
    }
}

/// Every section the hosts compare.
#[derive(Debug)]
pub(super) struct Agreements {
    /// `[templates]`.
    pub templates: Agreement,
    /// The loaded providers.
    pub providers: Agreement,
    /// `[tenancy]`.
    pub tenancy: Agreement,
}

impl Agreements {
    /// This host's (`host_id`) sections as it has them at start, none compared yet.
    pub(super) fn new(
        host_id: &str,
        templates: &BTreeMap<String, Template>,
        providers: &ProvidersDigest,
        tenancy: &TenancyConfig,
    ) -> Self {
        let agreement = |section, own| Agreement::new(section, host_id.to_owned(), own);
        Self {
            templates: agreement(&TEMPLATES, Published::of_templates(templates)),
            providers: agreement(&PROVIDERS, Published::of_providers(providers)),
            tenancy: agreement(&TENANCY, Published::of_tenancy(tenancy)),
        }
    }

    fn all(&self) -> [&Agreement; 3] {
        [&self.templates, &self.providers, &self.tenancy]
    }

    /// Why the hosts need a person, if they do (for `/healthz`): one reason per
    /// section that differs.
    pub(super) fn health(&self) -> Vec<String> {
        self.all().iter().filter_map(|a| a.health()).collect()
    }

    /// Compares every `period` (the hosts listed once for every section), until the
    /// task is dropped at shutdown.
    pub(super) async fn checks(&self, leases: &Leases, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match leases.live_hosts().await {
                Ok(hosts) => self.all().iter().for_each(|a| a.check(&hosts)),
                // What was seen last stands until the hosts can be listed again.
                Err(e) => tracing::debug!(error = %e, "cluster: comparing the hosts' settings"),
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
        let none = Published::of_templates(&BTreeMap::new());
        assert_eq!((none.count, none.names.len()), (0, 0));
        let json = serde_json::to_value(&none).unwrap();
        assert_eq!(Published::checked(&TEMPLATES, &json), Ok(none));
        // Past MAX_NAMES, the first names only; the count says how many there are.
        let text: String = (0..MAX_NAMES + 6)
            .map(|i| format!("[templates.t{i:03}]\nprovider = \"p\"\nscope = \"user\"\n"))
            .collect();
        let published = Published::of_templates(&templates(&text));
        assert_eq!(published.count, MAX_NAMES + 6);
        assert_eq!(published.names.len(), MAX_NAMES);
        assert_eq!(published.names[0], "t000");
        let json = serde_json::to_value(&published).unwrap();
        assert_eq!(Published::checked(&TEMPLATES, &json), Ok(published));
    }

    #[test]
    fn a_malformed_entry_is_refused_whole() {
        assert!(Published::checked(&TEMPLATES, &said(A, 2, &["a", "b"])).is_ok());
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
            assert_eq!(Published::checked(&TEMPLATES, &bad), Err(why), "{bad}");
        }
        // Unknown fields are a later version's: what this one knows is still read.
        let mut later = said(A, 1, &["a"]);
        later["more"] = json!(true);
        assert!(Published::checked(&TEMPLATES, &later).is_ok());
    }

    #[test]
    fn hosts_whose_templates_differ_are_named_and_unknown_ones_are_not() {
        let agreement = Agreement::new(
            &TEMPLATES,
            "a".into(),
            Published::of_templates(&BTreeMap::new()),
        );
        let own = agreement.own();
        let other = Published::checked(&TEMPLATES, &said(A, 1, &["chat"])).unwrap();
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
        agreement.set(Published::of_templates(&templates(
            "[templates.chat]\nprovider = \"p\"\nscope = \"user\"\n",
        )));
        let now = agreement.own();
        assert_eq!(agreement.matches(Some(&now)), Some(true));
        assert_eq!(agreement.matches(Some(&own)), Some(false));
        agreement.compare(&[("b".into(), Some(now)), ("c".into(), None)]);
        assert_eq!(agreement.health(), None);
    }

    fn providers(names: &[&str], digest: &str) -> ProvidersDigest {
        ProvidersDigest {
            digest: digest.to_owned(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn a_providers_entry_is_checked_as_provider_names_and_its_own_bound() {
        let own = Published::of_providers(&providers(&["git-worktree", "handoff"], A));
        assert_eq!(own.count, 2);
        let json = serde_json::to_value(&own).unwrap();
        assert_eq!(Published::checked(&PROVIDERS, &json), Ok(own));
        // Provider names may hold a dot; template names are held to the same rule.
        assert!(Published::checked(&PROVIDERS, &said(A, 1, &["x.y"])).is_ok());
        // More providers than templates may be loaded; a forged count is not taken.
        let names: Vec<String> = (0..MAX_NAMES).map(|i| format!("p{i:03}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let many = said(A, MAX_TEMPLATES + 1, &names);
        assert!(Published::checked(&PROVIDERS, &many).is_ok());
        assert_eq!(Published::checked(&TEMPLATES, &many), Err(Malformed::Count));
        let forged = said(A, MAX_PROVIDERS + 1, &names);
        assert_eq!(
            Published::checked(&PROVIDERS, &forged),
            Err(Malformed::Count)
        );
        for (bad, why) in [
            (said("", 0, &[]), Malformed::Digest),
            (said(A, 2, &["b", "a"]), Malformed::Names),
            (said(A, 2, &["a", "a"]), Malformed::Names),
            (said(A, 1, &["-x"]), Malformed::Names),
            (said(A, 1, &["a/../b"]), Malformed::Names),
            (said(A, 3, &["a", "b"]), Malformed::Names),
            (
                json!({"digest": A, "count": 1, "names": "a"}),
                Malformed::Shape,
            ),
        ] {
            assert_eq!(Published::checked(&PROVIDERS, &bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn a_tenancy_entry_names_users_and_differs_with_a_limit() {
        let mut tenancy = TenancyConfig::default();
        let none = Published::of_tenancy(&tenancy);
        assert_eq!((none.count, none.names.len()), (0, 0));
        let quota = crate::config::Quota {
            max_environments: Some(3),
            max_running: None,
            max_connections: None,
            providers: None,
        };
        tenancy.users.insert("bob".into(), quota.clone());
        tenancy.users.insert("alice".into(), quota);
        let own = Published::of_tenancy(&tenancy);
        assert_eq!(own.names, ["alice", "bob"]);
        assert_ne!(own.digest, none.digest);
        let json = serde_json::to_value(&own).unwrap();
        assert_eq!(Published::checked(&TENANCY, &json), Ok(own));
        // As many overrides as a host may have, and not one more.
        let names: Vec<String> = (0..MAX_NAMES).map(|i| format!("u{i:03}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(Published::checked(&TENANCY, &said(A, MAX_OVERRIDES, &names)).is_ok());
        let forged = said(A, MAX_OVERRIDES + 1, &names);
        assert_eq!(Published::checked(&TENANCY, &forged), Err(Malformed::Count));
        let bad = said(A, 1, &["bob smith"]);
        assert_eq!(Published::checked(&TENANCY, &bad), Err(Malformed::Names));
        // A limit changed (a reload): the digest is another, the names the same.
        let agreement = Agreement::new(&TENANCY, "a".into(), Published::of_tenancy(&tenancy));
        tenancy.default.max_running = Some(1);
        let changed = Published::of_tenancy(&tenancy);
        assert_eq!(agreement.matches(Some(&changed)), Some(false));
        agreement.compare(&[("b".into(), Some(changed))]);
        let why = agreement.health().unwrap();
        assert!(
            why.starts_with(
                "cluster: [tenancy] limits differ between this host and host b: a user's limits"
            ),
            "{why}"
        );
        assert!(why.contains("tenancyDigest"), "{why}");
    }

    #[test]
    fn the_sections_are_compared_and_reported_apart() {
        let agreements = Agreements::new(
            "a",
            &BTreeMap::new(),
            &providers(&["handoff"], A),
            &TenancyConfig::default(),
        );
        let other = Published::of_providers(&providers(&["handoff"], &A.replace('a', "b")));
        let same = agreements.providers.own();
        agreements.providers.compare(&[
            ("a".into(), Some(same.clone())),
            ("b".into(), Some(other.clone())),
            ("c".into(), Some(same.clone())),
            ("d".into(), None),
        ]);
        assert_eq!(agreements.providers.differing(), 1);
        assert_eq!(agreements.templates.differing(), 0);
        assert_eq!(agreements.tenancy.differing(), 0);
        let reasons = agreements.health();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with("cluster: providers differ between this host and host b: "),
            "{reasons:?}"
        );
        assert!(reasons[0].contains("providersDigest"), "{reasons:?}");
        // b is fixed: the reason goes; this host's own change makes b the same again
        // the other way.
        agreements
            .providers
            .compare(&[("b".into(), Some(same.clone()))]);
        assert!(agreements.health().is_empty());
        agreements.providers.set(other.clone());
        agreements
            .providers
            .compare(&[("b".into(), Some(other)), ("c".into(), Some(same))]);
        let reasons = agreements.health();
        assert!(reasons[0].contains("this host and host c: "), "{reasons:?}");
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
