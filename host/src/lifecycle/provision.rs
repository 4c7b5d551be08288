//! Provisioning on connect: an app names a template and a thread (or workspace), and
//! gets the environment made for that key — its owner, the template and the scope
//! key — created on first connect, started if it is stopped (the same record, so the
//! same resource and workspace), and admitted at once. Frames the app sends before
//! the runtime is up wait in the runtime's window of the hub (`relay/hub.rs`).
//!
//! The key is recorded in the record (`provisionKey`), so the record is the only
//! source of the mapping: a host restart or a hand edit keeps it. Concurrent first
//! connects for one key are serialised by a lock per key, so exactly one environment
//! is made; the owner's quotas are checked under their admission lock as for a create.
//!
//! In a cluster the lock is this host's only; across hosts the environment's name,
//! derived from the key, is reserved cluster-wide before the record is stored, so two
//! hosts' first connects at once make one environment: the host that lost the name
//! waits for the other's record and uses it. A key whose environment runs on another
//! host is `Elsewhere`, and the app is bridged there (`api/ws.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::wake::{Wakes, wakes};
use super::{LifecycleError, Manager};
use crate::config::{Template, TemplateRestart, TemplateScope};
use crate::relay::{AppThread, Connection, Resume};
use crate::store::{DesiredState, ProvisionKey, Record, RestartPolicy, validate};
use crate::sync::MutexExt;
use crate::tenancy::Principal;
use crate::untrusted;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::OwnedMutexGuard;

/// What an app's connect asks to be provisioned.
#[derive(Debug, Clone)]
pub(crate) struct ProvisionTarget {
    /// The template's name.
    pub template: String,
    /// `?thread=`: the app's relay thread, and the key of a `thread` template.
    pub thread: Option<String>,
    /// A ticket named `thread`: the app's messages may name no other.
    pub pinned: bool,
    /// `?workspace=`: the key of a `workspace` template.
    pub workspace: Option<String>,
    /// `?start=true`: start the environment even if its user stopped it on purpose.
    pub start: bool,
}

/// An admitted app of a provisioned environment.
#[derive(Debug)]
pub(crate) struct Provisioned {
    /// Ready to be served on the app's socket.
    pub connection: Connection,
    /// The environment it got.
    pub environment_id: String,
    /// Whether this connect made it.
    pub created: bool,
    /// Whether this connect asked it, stopped, to run again (audited as a start).
    pub woke: bool,
}

/// How long a connect that lost its key's name to another host waits for that
/// host's record to reach this one (the watch brings it within milliseconds).
const MADE_ELSEWHERE: std::time::Duration = std::time::Duration::from_secs(3);
/// How often it looks.
const MADE_ELSEWHERE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// What [`Manager::create_provisioned`] did.
#[derive(Debug)]
enum Made {
    /// Made the record here (boxed: the other variant is small).
    Created(Box<Record>),
    /// Cluster mode: another host made the key's record a moment ago (this host
    /// lost the derived name to it, or found it once admitted); if it does not come
    /// here, the app is refused with this.
    Elsewhere(LifecycleError),
}

/// A provision key with its owner: what one environment is made per.
type OwnedKey = (String, ProvisionKey);

/// One lock per provision key (owner included), held from looking the key up to
/// recording a new environment for it; and the new environments being recorded per
/// owner and template, so `max_per_user` holds without one user's provisions waiting
/// on each other's durable writes.
#[derive(Debug, Default)]
pub(super) struct KeyLocks {
    locks: Mutex<HashMap<OwnedKey, Arc<tokio::sync::Mutex<()>>>>,
    pending: Arc<Mutex<HashMap<(String, String), Pending>>>,
}

/// The ids of new environments being recorded, for one owner and template.
type Pending = std::collections::HashSet<String>;

/// A new environment counted against its template's `max_per_user` until it is
/// recorded (or not); given back when dropped.
struct Reserved {
    pending: Arc<Mutex<HashMap<(String, String), Pending>>>,
    key: (String, String),
    id: String,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let mut pending = self.pending.locked();
        if let Some(ids) = pending.get_mut(&self.key) {
            ids.remove(&self.id);
            if ids.is_empty() {
                pending.remove(&self.key);
            }
        }
    }
}

impl KeyLocks {
    async fn lock(&self, owner: &str, key: &ProvisionKey) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.locked();
            // Forget keys nobody is provisioning right now, so the map stays small.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            let entry = locks.entry((owner.to_owned(), key.clone()));
            entry.or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Reserves environment `id` of `template` for `owner`: `QuotaExceeded` if they
    /// have `limit` already, counting those being recorded. `recorded` counts their
    /// records but those with the ids it is given (being recorded, so counted once);
    /// it runs under the reservations' lock, as a reservation is given back after its
    /// record is in, so no environment is missed or counted twice.
    fn reserve(
        &self,
        (owner, template, id): (&str, &str, &str),
        recorded: impl FnOnce(&Pending) -> usize,
        limit: usize,
    ) -> Result<Reserved, LifecycleError> {
        let key = (owner.to_owned(), template.to_owned());
        let mut pending = self.pending.locked();
        let ids = pending.entry(key.clone()).or_default();
        let used = recorded(ids) + ids.len();
        if used >= limit {
            if ids.is_empty() {
                pending.remove(&key);
            }
            return Err(LifecycleError::QuotaExceeded {
                quota: "maxPerUser",
                owner: owner.to_owned(),
                limit,
                used,
            });
        }
        ids.insert(id.to_owned());
        Ok(Reserved {
            pending: self.pending.clone(),
            key,
            id: id.to_owned(),
        })
    }
}

/// The refusal of a template connect made with a token limited to named environments
/// whose key's environment is not one of them (or does not exist yet).
const LIMITED: &str =
    "this token is limited to named environments and reaches no other through a template";

impl Manager {
    /// Every template, as `GET /api/v1/templates` shows them (no secret values).
    pub(crate) fn templates(&self) -> Vec<crate::config::TemplateView> {
        let config = self.driver().shared.config.get();
        config.templates.values().map(Template::shown).collect()
    }

    /// `NoTemplate` unless a template is named `name`.
    pub(crate) fn check_template(&self, name: &str) -> Result<(), LifecycleError> {
        if self
            .driver()
            .shared
            .config
            .get()
            .templates
            .contains_key(name)
        {
            return Ok(());
        }
        Err(LifecycleError::NoTemplate(format!(
            "no template named {}",
            untrusted::named(name)
        )))
    }

    /// Finds or creates `who`'s environment for `target`, asks for it to run, and
    /// admits the app to it; its first frame is `provisioned`. An unknown template is
    /// `NoTemplate`; a missing thread or workspace the template is per is `Invalid`.
    pub(crate) async fn provision_app(
        &self,
        who: &Principal,
        target: ProvisionTarget,
        resume: Option<Resume>,
    ) -> Result<Provisioned, LifecycleError> {
        let config = self.driver().shared.config.get();
        self.check_template(&target.template)?;
        let Some(template) = config.templates.get(&target.template) else {
            return Err(LifecycleError::NoTemplate(target.template));
        };
        let key = key_of(template, &target)?;
        let owner = who.user().to_owned();
        let (record, created, woke) = {
            let _key = self.shared.provisions.lock(&owner, &key).await;
            let found = self.provisioned_for(&owner, &key);
            match found {
                Some(record) => {
                    let (record, woke) = self.existing(who, record, target.start).await?;
                    (record, false, woke)
                }
                None => match self.create_provisioned(who, template, key.clone()).await? {
                    Made::Created(record) => (*record, true, false),
                    // Another host made it a moment ago: this connect finds it there.
                    Made::Elsewhere(e) => match self.made_elsewhere(&owner, &key).await {
                        Some(record) => {
                            let (record, woke) = self.existing(who, record, target.start).await?;
                            (record, false, woke)
                        }
                        None => return Err(e),
                    },
                },
            }
        };
        let id = record.id.clone();
        let env = self.known_env(&id)?;
        let span = tracing::info_span!("provision", env = %id, template = %template.name);
        span.in_scope(|| tracing::info!(created, "app connecting through a template"));
        let first = json!({"type": "provisioned", "environmentId": id, "created": created});
        let thread = AppThread {
            name: target.thread,
            pinned: target.pinned,
        };
        let first = Some(first.to_string());
        let connection = self.admit_starting(who, record, env, thread, resume, first, span)?;
        Ok(Provisioned {
            connection,
            environment_id: id,
            created,
            woke,
        })
    }

    /// Whether `record` was provisioned from a template that is still defined and
    /// still runs on the record's provider: the operator's choice, which the owner's
    /// `[tenancy] providers` does not govern. A template removed, or moved to another
    /// provider, no longer vouches for the environments it made; otherwise a user
    /// would keep starting a provider the operator took away from them.
    pub(super) fn template_vouches(&self, record: &Record) -> bool {
        let Some(name) = record.template() else {
            return false;
        };
        let config = self.driver().shared.config.get();
        (config.templates.get(name)).is_some_and(|t| t.provider == record.provider)
    }

    /// `owner`'s environment for `key`, if this host knows of one.
    fn provisioned_for(&self, owner: &str, key: &ProvisionKey) -> Option<Record> {
        (self.shared.store).find(|r| r.owner == owner && r.provision_key.as_ref() == Some(key))
    }

    /// The record of an environment found for a key, asked to run if it is stopped
    /// (not if its user stopped it on purpose), and whether it was. `Elsewhere` when
    /// another host runs it: the app is bridged there (`api/ws.rs`), as by id, and
    /// that host's relay, which its runtime joins, serves it.
    async fn existing(
        &self,
        who: &Principal,
        record: Record,
        start: bool,
    ) -> Result<(Record, bool), LifecycleError> {
        // A token limited to other environments does not reach this one, running or
        // not; said as for a key without one, so the token learns nothing of which.
        if !who.reaches(&record.owner, &record.id) {
            return Err(LifecycleError::Invalid(LIMITED.into()));
        }
        self.known_env(&record.id)?;
        self.refuse_running_elsewhere(&record).await?;
        if wakes(&record, start, Wakes::NotStoppedOnPurpose)? {
            return Ok((self.wake(who, record).await?, true));
        }
        Ok((record, false))
    }

    /// Cluster mode, after this host lost the derived name of `owner`'s `key` to
    /// another record: the environment another host made for the key at the same
    /// moment, once the records' watch brings it here (at most [`MADE_ELSEWHERE`]).
    /// `None` when it does not come, or the name is an environment's made by hand.
    async fn made_elsewhere(&self, owner: &str, key: &ProvisionKey) -> Option<Record> {
        let name = derived_name(owner, key);
        let deadline = tokio::time::Instant::now() + MADE_ELSEWHERE;
        loop {
            if let Some(record) = self.provisioned_for(owner, key)
                && self.shared.envs.get(&record.id).is_some()
            {
                tracing::info!(env = %record.id, "another host made this key's environment at the same moment; using it");
                return Some(record);
            }
            let by_hand = (self.shared.store)
                .find(|r| r.name == name && r.provision_key.as_ref() != Some(key));
            if by_hand.is_some() || tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(MADE_ELSEWHERE_POLL).await;
        }
    }

    /// A new record for `key` from `template`, desired `running`, within `who`'s
    /// quotas and the template's per-user cap.
    async fn create_provisioned(
        &self,
        who: &Principal,
        template: &Template,
        key: ProvisionKey,
    ) -> Result<Made, LifecycleError> {
        if !who.may_create() {
            return Err(LifecycleError::Invalid(LIMITED.into()));
        }
        if !self.shared.providers.is_loaded(&template.provider) {
            return Err(LifecycleError::Conflict(format!(
                "template {} runs on provider {}, which is not loaded",
                template.name, template.provider
            )));
        }
        validate::check_config(&template.config).map_err(LifecycleError::Invalid)?;
        let owner = who.user().to_owned();
        let name = derived_name(&owner, &key);
        // The key's previous environment, deleted a moment ago, may still be removing
        // its workspace: the directory this one's name gets.
        self.shared.deleting.done(&name).await;
        // Always counted: every template has a `max_per_user`.
        let admitted = self.admit(&owner, true).await?;
        // Admitted, this host has every record the cluster admitted before: one of
        // them may be this key's, made by another host's connect meanwhile.
        if self.provisioned_for(&owner, &key).is_some() {
            return Ok(Made::Elsewhere(LifecycleError::Conflict(
                "another host made this key's environment a moment ago".into(),
            )));
        }
        let mut record = Record::new(
            uuid::Uuid::new_v4().to_string(),
            name,
            template.provider.clone(),
            template.config.clone(),
        );
        record.owner = owner.clone();
        record.restart_policy = match template.restart_policy {
            TemplateRestart::Never => RestartPolicy::Never,
            TemplateRestart::OnFailure => RestartPolicy::OnFailure,
            TemplateRestart::Always => RestartPolicy::Always,
        };
        record.desired_state = DesiredState::Running;
        record.provision_key = Some(key);
        record.idle_stop_secs = template.idle_stop_secs;
        let id = record.id.clone();
        (self.shared.quotas).check_new(&self.shared.store, &owner, true)?;
        let template_name = template.name.as_str();
        let recorded = |reserved: &Pending| {
            (self.shared.store).count(|r| {
                r.owner == owner && r.template() == Some(template_name) && !reserved.contains(&r.id)
            })
        };
        let _reserved = (self.shared.provisions).reserve(
            (&owner, template_name, &id),
            recorded,
            template.max_per_user,
        )?;
        match self.insert_record(record).await {
            Ok(()) => {}
            // In a cluster the name is reserved cluster-wide first: taken, it is most
            // likely another host's first connect for this key (the name is per key).
            Err(e @ LifecycleError::Conflict(_)) if self.cluster().is_some() => {
                return Ok(Made::Elsewhere(e));
            }
            Err(e) => return Err(e),
        }
        self.admitted(admitted).await;
        self.shared.envs.add(&id);
        tracing::info!(env = %id, template = %template.name, "environment provisioned");
        self.publish_created(&id);
        self.known_record(&id).map(|r| Made::Created(Box::new(r)))
    }
}

/// The key `target` names under `template`'s scope, checked like the record field.
fn key_of(template: &Template, target: &ProvisionTarget) -> Result<ProvisionKey, LifecycleError> {
    let (value, what) = match template.scope {
        TemplateScope::User => (Some(String::new()), ""),
        TemplateScope::Thread => (target.thread.clone(), "thread"),
        TemplateScope::Workspace => (target.workspace.clone(), "workspace"),
    };
    let value = value.ok_or_else(|| {
        LifecycleError::Invalid(format!(
            "template {} makes one environment per {what}: give ?{what}=",
            template.name
        ))
    })?;
    let key = ProvisionKey {
        template: template.name.clone(),
        scope: template.scope.as_str().to_owned(),
        key: value,
    };
    validate::check_provision_key(&key).map_err(LifecycleError::Invalid)?;
    // The thread is the app's relay thread whatever the scope: bounded the same way.
    if let Some(thread) = &target.thread {
        let as_key = ProvisionKey {
            scope: "thread".to_owned(),
            key: thread.clone(),
            ..key.clone()
        };
        validate::check_provision_key(&as_key)
            .map_err(|_| LifecycleError::Invalid(format!("thread: {}", bound_message())))?;
    }
    Ok(key)
}

fn bound_message() -> String {
    format!(
        "1-{} bytes without control characters",
        validate::MAX_PROVISION_KEY_BYTES
    )
}

/// How many hex digits of the hash a derived name ends with.
const DERIVED_HASH_DIGITS: usize = 24;
/// Longest template prefix of a derived name, in characters.
const DERIVED_PREFIX_CHARS: usize = 32;

/// Whether `name` has the shape of a [`derived_name`]: 1 to 32 characters, `-`, and 24
/// lowercase hex digits. Such names are kept for provisioning: the hash is over public
/// things (owner, template, a thread such as `main`), and names are one namespace
/// across users, so a user who could create one could block another user's template
/// connects for good (each answered 409). Any template's shape, so a template the
/// operator adds later is covered too.
pub(super) fn looks_derived(name: &str) -> bool {
    let Some((prefix, hash)) = name.rsplit_once('-') else {
        return false;
    };
    let prefix_chars = prefix.chars().count();
    hash.len() == DERIVED_HASH_DIGITS
        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && (1..=DERIVED_PREFIX_CHARS).contains(&prefix_chars)
}

/// The environment name for `owner`'s `key`: the template's name (cut) and a hash of
/// the whole key, so it is the same on every connect and host, always passes the name
/// rule (it names the workspace directory), and says nothing of the thread.
fn derived_name(owner: &str, key: &ProvisionKey) -> String {
    let mut hash = Sha256::new();
    for part in [owner, &key.template, &key.scope, &key.key] {
        // Length-prefixed, so no two keys hash the same parts.
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hex::encode(hash.finalize());
    let prefix: String = key.template.chars().take(DERIVED_PREFIX_CHARS).collect();
    let short: String = digest.chars().take(DERIVED_HASH_DIGITS).collect();
    format!("{prefix}-{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_an_environment_once_and_give_it_back() {
        let locks = KeyLocks::default();
        // Records "a" and "b" of alice's: "b" is in the store and still reserved.
        let store = ["a", "b"];
        let recorded =
            |reserved: &Pending| store.iter().filter(|id| !reserved.contains(**id)).count();
        let b = locks.reserve(("alice", "chat", "b"), |_| 1, 3).unwrap();
        let c = locks.reserve(("alice", "chat", "c"), recorded, 3).unwrap();
        let refused = locks.reserve(("alice", "chat", "d"), recorded, 3);
        assert!(matches!(
            refused,
            Err(LifecycleError::QuotaExceeded { used: 3, .. })
        ));
        // Another user's, or another template's, are their own.
        assert!(locks.reserve(("bob", "chat", "e"), |_| 0, 3).is_ok());
        assert!(locks.reserve(("alice", "desk", "f"), |_| 0, 3).is_ok());
        drop((b, c));
        assert!(locks.pending.locked().is_empty(), "given back");
    }

    fn key(template: &str, k: &str) -> ProvisionKey {
        ProvisionKey {
            template: template.into(),
            scope: "thread".into(),
            key: k.into(),
        }
    }

    #[test]
    fn derived_names_and_only_they_look_derived() {
        let long = "t".repeat(64);
        for (template, k) in [("chat", "t1"), (long.as_str(), "../x"), ("a", "")] {
            let name = derived_name("alice", &key(template, k));
            assert!(looks_derived(&name), "{name}");
        }
        for name in [
            "chat".to_owned(),
            format!("chat-{}", "A".repeat(24)),
            format!("chat-{}", "a".repeat(23)),
            format!("-{}", "a".repeat(24)),
            format!("{}-{}", "t".repeat(33), "a".repeat(24)),
        ] {
            assert!(!looks_derived(&name), "{name}");
        }
    }

    #[test]
    fn names_are_deterministic_safe_and_per_key() {
        let long = "t".repeat(64);
        let a = derived_name("alice", &key(&long, "../../etc/passwd\u{1b}"));
        assert_eq!(
            a,
            derived_name("alice", &key(&long, "../../etc/passwd\u{1b}"))
        );
        assert!(crate::names::validate("environment", &a).is_ok(), "{a}");
        let names = [
            derived_name("alice", &key("chat", "t1")),
            derived_name("bob", &key("chat", "t1")),
            derived_name("alice", &key("chat", "t2")),
            derived_name("alice", &key("chat2", "t1")),
            derived_name("alice", &key("chat", "1t")),
        ];
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
    }
}
