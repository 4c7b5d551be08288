//! The token registry: every user token by the SHA-256 of its secret (one hash and
//! one map lookup per request, whatever the number of tokens) beside the operator's
//! token; making, listing and revoking tokens, and rotating the operator's. Every
//! change is durable in `tokens.json` before it is answered or takes effect.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::principal::{ADMIN_TOKEN_ID, ADMIN_USER, Grant, Principal};
use super::record::{self, ID_PREFIX, SECRET_PREFIX, TokenRecord};
use super::scopes::Scopes;
use super::{TenancyError, file};
use crate::sync::{MutexExt, RwLockExt};

/// Why a presented token was refused (answered 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Not a token the host knows (never made, revoked, or an old operator token).
    #[error("invalid API token")]
    Unknown,
    /// A token past its expiry.
    #[error("the API token has expired")]
    Expired,
}

/// What `POST /api/v1/tokens` asks for, as read from the request (checked here).
/// Unknown fields are refused.
#[derive(Debug, Clone, Default, ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct NewToken {
    /// The user it acts for.
    pub user: String,
    /// Scope names (`envs:read`, `envs:write`, `envs:delete`, `relay`, `admin`), at
    /// most 16; when absent, every scope but `admin`.
    #[schema(max_items = 16)]
    pub scopes: Option<Vec<String>>,
    /// Environment ids of the user's it is limited to (at most 64); when absent, all
    /// of the user's, and it may create new ones.
    #[schema(max_items = 64)]
    pub environments: Option<Vec<String>>,
    /// Lifetime in seconds; when absent, it does not expire.
    #[schema(minimum = 0)]
    pub expires_in_secs: Option<u64>,
    /// A note for people.
    pub note: Option<String>,
}

/// A token as the API lists it: never its secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenView {
    /// Token id.
    pub id: String,
    /// The user it acts for.
    pub user: String,
    /// Its scopes.
    pub scopes: Scopes,
    /// The environments it is limited to (`null`: all of the user's).
    #[schema(required = true)]
    pub environments: Option<Vec<String>>,
    /// The maker's note.
    #[schema(required = true)]
    pub note: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Expiry, if any.
    #[schema(required = true)]
    pub expires_at: Option<String>,
    /// Whether it has expired.
    pub expired: bool,
}

/// A token just made: its view and, this once, its secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Issued {
    /// The secret, shown only in this answer.
    pub token: String,
    /// The token as listed.
    #[serde(flatten)]
    pub view: TokenView,
}

struct Entry {
    record: TokenRecord,
    grant: Arc<Grant>,
    /// SHA-256 of the secret (the map key), compared again in constant time.
    hash: [u8; 32],
}

impl Entry {
    fn view(&self) -> TokenView {
        let r = &self.record;
        TokenView {
            id: r.id.clone(),
            user: r.user.clone(),
            scopes: r.scopes,
            environments: r.environments.clone(),
            note: r.note.clone(),
            created_at: r.created_at.clone(),
            expires_at: r.expires_at.clone(),
            expired: expired(self.grant.expires_at),
        }
    }
}

struct Index {
    by_hash: HashMap<[u8; 32], Entry>,
    by_id: HashMap<String, [u8; 32]>,
    admin_hash: [u8; 32],
    admin: Arc<Grant>,
}

/// User tokens a host holds at most (expired ones count until revoked): each change
/// rewrites the whole file, and with this many of the largest records it still
/// stays under the size the host reads at start ([`file::MAX_FILE_BYTES`]).
pub(crate) const MAX_TOKENS: usize = 10_000;

/// A change to the user tokens made on this host, for a follower (cluster mode).
#[derive(Debug, Clone)]
pub(crate) enum TokenChange {
    /// A token was made.
    Created(TokenRecord),
    /// The token with this id was revoked.
    Revoked(String),
}

/// Every token the host accepts.
pub(crate) struct Tokens {
    index: RwLock<Index>,
    /// Where this host's own changes go, once someone follows them.
    follower: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<TokenChange>>>,
    /// One change at a time, from the file write to the swap in memory.
    writer: tokio::sync::Mutex<()>,
    path: PathBuf,
    /// [`MAX_TOKENS`] (lower in tests).
    max_tokens: usize,
    /// Where the operator's token lives, when it came from a file (rotation writes
    /// it); `None` when `TETHER_API_TOKEN` set it.
    admin_file: Option<PathBuf>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// The tokens in `path` (none if it is missing; a broken file is an error) and
    /// the operator's token `admin_secret`, kept in `admin_file` if it came from one.
    pub(crate) fn open(
        path: PathBuf,
        admin_secret: &str,
        admin_file: Option<PathBuf>,
    ) -> Result<Self, TenancyError> {
        let mut by_hash = HashMap::new();
        let mut by_id = HashMap::new();
        for record in file::read(&path)? {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&record.sha256, &mut hash).map_err(|_| TenancyError::File {
                path: path.clone(),
                reason: format!("token {}: sha256 is not hexadecimal", record.id),
            })?;
            by_id.insert(record.id.clone(), hash);
            by_hash.insert(hash, entry(record, hash));
        }
        Ok(Self {
            index: RwLock::new(Index {
                by_hash,
                by_id,
                admin_hash: sha256(admin_secret),
                admin: admin_grant(),
            }),
            follower: std::sync::Mutex::new(None),
            writer: tokio::sync::Mutex::new(()),
            path,
            max_tokens: MAX_TOKENS,
            admin_file,
        })
    }

    /// This host's own token changes from now on, in order (cluster mode shares them).
    pub(crate) fn follow(&self) -> tokio::sync::mpsc::UnboundedReceiver<TokenChange> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.follower.locked() = Some(tx);
        rx
    }

    fn tell(&self, change: TokenChange) {
        if let Some(follower) = self.follower.locked().as_ref() {
            let _ = follower.send(change);
        }
    }

    /// Every user token's record (cluster mode: what this host has to share).
    pub(crate) fn all_records(&self) -> Vec<TokenRecord> {
        self.records()
    }

    /// Takes in a token made on another host (cluster mode), checked like one read
    /// from the file: it is accepted here from now on. `Ok(false)`: known already.
    pub(crate) async fn adopt(&self, record: TokenRecord) -> Result<bool, TenancyError> {
        let invalid = |why: String| TenancyError::Invalid(format!("token from the cluster: {why}"));
        record.check().map_err(invalid)?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&record.sha256, &mut hash)
            .map_err(|_| invalid("sha256 is not hexadecimal".into()))?;
        let _writing = self.writer.lock().await;
        {
            let index = self.index.read_locked();
            if index.by_id.contains_key(&record.id) {
                return Ok(false);
            }
            if index.by_hash.contains_key(&hash) {
                return Err(invalid(format!("{} has another token's sha256", record.id)));
            }
        }
        let mut records = self.records();
        // The same bound as a create here: past it the file would outgrow what the
        // host reads at start, and this host would not start again. Whoever made it
        // elsewhere is told by that host's own bound; here it is refused and logged.
        if records.len() >= self.max_tokens {
            return Err(TenancyError::Limit(format!(
                "token from the cluster: {} not taken in: this host holds {} user tokens, as many as it takes ({})",
                record.id,
                records.len(),
                self.max_tokens
            )));
        }
        records.push(record.clone());
        self.persist(records).await?;
        let mut index = self.index.write_locked();
        index.by_id.insert(record.id.clone(), hash);
        index.by_hash.insert(hash, entry(record, hash));
        Ok(true)
    }

    /// Token `id`'s record, if this host has it (cluster mode: compared with the
    /// bucket's).
    pub(crate) fn record(&self, id: &str) -> Option<TokenRecord> {
        let index = self.index.read_locked();
        let hash = index.by_id.get(id)?;
        index.by_hash.get(hash).map(|e| e.record.clone())
    }

    /// Revokes token `id` because another host did (cluster mode): refused here from
    /// now on, and the connections it opened here are closed. `Ok(false)`: unknown.
    pub(crate) async fn forget(&self, id: &str) -> Result<bool, TenancyError> {
        let _writing = self.writer.lock().await;
        if !self.index.read_locked().by_id.contains_key(id) {
            return Ok(false);
        }
        let records = (self.records().into_iter())
            .filter(|r| r.id != id)
            .collect();
        self.persist(records).await?;
        let mut index = self.index.write_locked();
        let entry = (index.by_id.remove(id)).and_then(|hash| index.by_hash.remove(&hash));
        drop(index);
        if let Some(entry) = entry {
            entry.grant.revoked.cancel();
            tracing::info!(token = %id, user = %entry.record.user, "token revoked on another host");
        }
        Ok(true)
    }

    /// How many user tokens there are.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.read_locked().by_hash.len()
    }

    /// The caller presenting `secret`. Constant time in the secret; one SHA-256 and
    /// one map lookup.
    pub(crate) fn authenticate(&self, secret: &str) -> Result<Principal, Refused> {
        let hash = sha256(secret);
        let index = self.index.read_locked();
        if let Some(entry) = index.by_hash.get(&hash)
            && bool::from(entry.hash.ct_eq(&hash))
        {
            if expired(entry.grant.expires_at) {
                return Err(Refused::Expired);
            }
            return Ok(Principal(entry.grant.clone()));
        }
        if bool::from(index.admin_hash.ct_eq(&hash)) {
            return Ok(Principal(index.admin.clone()));
        }
        Err(Refused::Unknown)
    }

    /// Makes a token; the secret is in the answer and nowhere else.
    pub(crate) async fn create(&self, new: NewToken) -> Result<Issued, TenancyError> {
        let invalid = TenancyError::Invalid;
        record::check_user(&new.user).map_err(invalid)?;
        let scopes = match &new.scopes {
            None => Scopes::USER_DEFAULT,
            Some(names) => {
                let scopes = Scopes::parse(names.iter().map(String::as_str))
                    .map_err(|e| invalid(e.to_string()))?;
                if scopes.is_empty() {
                    return Err(invalid(
                        "scopes must name at least one scope (leave it out for the user default)"
                            .into(),
                    ));
                }
                scopes
            }
        };
        if let Some(envs) = &new.environments {
            record::check_environments(envs).map_err(invalid)?;
        }
        if let Some(note) = &new.note {
            record::check_note(note).map_err(invalid)?;
        }
        let now = SystemTime::now();
        let expires_at = match new.expires_in_secs {
            Some(secs) => Some(now + record::check_expires_in(secs).map_err(invalid)?),
            None => None,
        };
        let secret = format!("{SECRET_PREFIX}{}", random_hex(32));
        let hash = sha256(&secret);
        let new_record = TokenRecord {
            id: format!("{ID_PREFIX}{}", random_hex(8)),
            user: new.user,
            scopes,
            environments: new.environments,
            note: new.note,
            created_at: record::stamp(now),
            expires_at: expires_at.map(record::stamp),
            sha256: hex::encode(hash),
        };
        let _writing = self.writer.lock().await;
        let mut records = self.records();
        if records.len() >= self.max_tokens {
            return Err(TenancyError::Limit(format!(
                "the host holds {} user tokens, as many as it takes ({}); revoke unused or expired ones first",
                records.len(),
                self.max_tokens
            )));
        }
        records.push(new_record.clone());
        self.persist(records).await?;
        let entry = entry(new_record.clone(), hash);
        let view = entry.view();
        let mut index = self.index.write_locked();
        index.by_id.insert(view.id.clone(), hash);
        index.by_hash.insert(hash, entry);
        drop(index);
        self.tell(TokenChange::Created(new_record));
        tracing::info!(token = %view.id, user = %view.user, "token created");
        Ok(Issued {
            token: secret,
            view,
        })
    }

    /// The tokens `who` may see: every one for `admin` (of `user` only, if given),
    /// else the caller's user's own; oldest first.
    pub(crate) fn list(&self, who: &Principal, user: Option<&str>) -> Vec<TokenView> {
        let index = self.index.read_locked();
        let mut views: Vec<TokenView> = (index.by_hash.values())
            .filter(|e| who.sees_token(&e.record.user, &e.record.id))
            .filter(|e| user.is_none_or(|u| e.record.user == u))
            .map(Entry::view)
            .collect();
        views.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        views
    }

    /// Revokes token `id` at once: it is refused from now on and every connection
    /// it opened is told. `who` may revoke any token as `admin`, else its user's own;
    /// anyone else's answers `NotFound`, like one that does not exist. A token that
    /// does not manage its user's tokens ([`Principal::manages_tokens`]) may revoke
    /// only itself: any other id is `Forbidden`, before it is looked up.
    pub(crate) async fn revoke(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<TokenView, TenancyError> {
        let not_found =
            || TenancyError::NotFound(format!("no token with id {}", crate::untrusted::named(id)));
        if !who.manages_tokens() && id != who.token_id() {
            return Err(TenancyError::Forbidden(
                "this token may revoke only itself: it lacks a user scope or is limited to named environments".into(),
            ));
        }
        let _writing = self.writer.lock().await;
        let hash = {
            let index = self.index.read_locked();
            let hash = *index.by_id.get(id).ok_or_else(not_found)?;
            let visible = (index.by_hash.get(&hash))
                .is_some_and(|e| who.sees_token(&e.record.user, &e.record.id));
            if !visible {
                return Err(not_found());
            }
            hash
        };
        let records = (self.records().into_iter())
            .filter(|r| r.id != id)
            .collect();
        self.persist(records).await?;
        let mut index = self.index.write_locked();
        index.by_id.remove(id);
        let entry = index.by_hash.remove(&hash).ok_or_else(not_found)?;
        drop(index);
        entry.grant.revoked.cancel();
        self.tell(TokenChange::Revoked(id.to_owned()));
        tracing::info!(token = %id, user = %entry.record.user, by = %who.token_id(), "token revoked");
        Ok(entry.view())
    }

    /// Replaces the operator's token with a new one, written to its file first; the
    /// old one is refused from then on and its connections are closed. Refused when
    /// `TETHER_API_TOKEN` set the token (a restart would bring the old one back).
    pub(crate) async fn rotate_admin(&self) -> Result<String, TenancyError> {
        let Some(admin_file) = &self.admin_file else {
            return Err(TenancyError::Conflict(
                "the admin token comes from TETHER_API_TOKEN; change the variable and restart the host to replace it".into(),
            ));
        };
        let _writing = self.writer.lock().await;
        let secret = format!("{SECRET_PREFIX}{}", random_hex(32));
        let (path, bytes) = (admin_file.clone(), secret.clone().into_bytes());
        blocking(move || file::write_private(&path, &bytes)).await?;
        let mut index = self.index.write_locked();
        index.admin_hash = sha256(&secret);
        let old = std::mem::replace(&mut index.admin, admin_grant());
        drop(index);
        old.revoked.cancel();
        tracing::info!("admin token rotated");
        Ok(secret)
    }

    fn records(&self) -> Vec<TokenRecord> {
        let index = self.index.read_locked();
        index.by_hash.values().map(|e| e.record.clone()).collect()
    }

    async fn persist(&self, mut records: Vec<TokenRecord>) -> Result<(), TenancyError> {
        records.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        let path = self.path.clone();
        blocking(move || file::write(&path, records)).await
    }
}

async fn blocking(
    f: impl FnOnce() -> Result<(), TenancyError> + Send + 'static,
) -> Result<(), TenancyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TenancyError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

fn entry(record: TokenRecord, hash: [u8; 32]) -> Entry {
    let grant = Arc::new(Grant {
        token_id: record.id.clone(),
        user: record.user.clone(),
        scopes: record.scopes,
        environments: record.environments.clone(),
        expires_at: record.expiry(),
        revoked: CancellationToken::new(),
    });
    Entry {
        record,
        grant,
        hash,
    }
}

fn admin_grant() -> Arc<Grant> {
    Arc::new(Grant {
        token_id: ADMIN_TOKEN_ID.into(),
        user: ADMIN_USER.into(),
        scopes: Scopes::ADMIN,
        environments: None,
        expires_at: None,
        revoked: CancellationToken::new(),
    })
}

pub(super) fn expired(at: Option<SystemTime>) -> bool {
    at.is_some_and(|at| at <= SystemTime::now())
}

pub(super) fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub(super) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::scopes::Scope;

    const ADMIN: &str = "admin-secret-0123456789";

    fn open(dir: &std::path::Path) -> Tokens {
        Tokens::open(file::tokens_path(dir), ADMIN, Some(dir.join("api-token"))).unwrap()
    }

    fn new(user: &str) -> NewToken {
        NewToken {
            user: user.into(),
            ..NewToken::default()
        }
    }

    /// Tokens were made without bound, each change rewriting the whole file, until
    /// the file passed the size the host reads at start and the host would not start
    /// again. Past the bound a create is refused, saying why, and nothing is written.
    #[tokio::test]
    async fn the_host_makes_at_most_its_bound_of_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let mut tokens = open(dir.path());
        tokens.max_tokens = 3;
        let mut made = Vec::new();
        for _ in 0..3 {
            made.push(tokens.create(new("alice")).await.unwrap());
        }
        let written = std::fs::read(file::tokens_path(dir.path())).unwrap();
        let refused = tokens.create(new("bob")).await.unwrap_err();
        assert!(matches!(refused, TenancyError::Limit(_)), "{refused:?}");
        assert!(refused.to_string().contains("3 user tokens"), "{refused}");
        assert_eq!(
            std::fs::read(file::tokens_path(dir.path())).unwrap(),
            written
        );
        let admin = tokens.authenticate(ADMIN).unwrap();
        tokens.revoke(&admin, &made[0].view.id).await.unwrap();
        tokens.create(new("bob")).await.unwrap();
    }

    /// A token made on another host (cluster mode) counted against nothing here: hosts
    /// creating at their bound together, or whoever may write the tokens bucket, grew
    /// every host's file past what it reads at start. Adopting is bounded as creating
    /// is, and a refused one leaves the file as it was.
    #[tokio::test]
    async fn tokens_from_the_cluster_are_taken_in_only_up_to_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut tokens = open(dir.path());
        tokens.max_tokens = 2;
        let elsewhere = tempfile::tempdir().unwrap();
        let other = open(elsewhere.path());
        let mut made = Vec::new();
        for _ in 0..3 {
            made.push(other.create(new("alice")).await.unwrap());
        }
        let records: Vec<TokenRecord> = made
            .iter()
            .map(|m| other.record(&m.view.id).unwrap())
            .collect();
        assert!(tokens.adopt(records[0].clone()).await.unwrap());
        assert!(tokens.adopt(records[1].clone()).await.unwrap());
        let written = std::fs::read(file::tokens_path(dir.path())).unwrap();
        let refused = tokens.adopt(records[2].clone()).await.unwrap_err();
        assert!(matches!(refused, TenancyError::Limit(_)), "{refused:?}");
        assert!(refused.to_string().contains("2 user tokens"), "{refused}");
        assert!(tokens.authenticate(&made[2].token).is_err());
        assert!(tokens.authenticate(&made[1].token).is_ok());
        assert_eq!(
            std::fs::read(file::tokens_path(dir.path())).unwrap(),
            written
        );
    }

    /// The bound keeps the file readable at start: [`MAX_TOKENS`] of the largest
    /// records a create takes fit in [`file::MAX_FILE_BYTES`].
    #[test]
    fn the_bound_of_the_largest_tokens_fits_the_file_the_host_reads() {
        let largest = TokenRecord {
            id: format!("{ID_PREFIX}{}", "f".repeat(16)),
            user: "u".repeat(crate::names::MAX_NAME_LEN),
            scopes: Scopes::parse(Scope::ALL.map(Scope::name)).unwrap(),
            environments: Some(vec![
                "e".repeat(crate::names::MAX_NAME_LEN);
                record::MAX_TOKEN_ENVIRONMENTS
            ]),
            // Each quote is written escaped: twice its length.
            note: Some("\"".repeat(record::MAX_NOTE_BYTES)),
            created_at: "2026-01-01T00:00:00.000000000Z".into(),
            expires_at: Some("2036-01-01T00:00:00.000000000Z".into()),
            sha256: "0".repeat(64),
        };
        largest.check().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let size = |n: usize| {
            file::write(&path, vec![largest.clone(); n]).unwrap();
            std::fs::metadata(&path).unwrap().len()
        };
        let (one, two) = (size(1), size(2));
        let most = one + (two - one) * (MAX_TOKENS as u64 - 1);
        assert!(
            most < file::MAX_FILE_BYTES,
            "{MAX_TOKENS} tokens of {} bytes take {most} bytes",
            two - one
        );
    }

    #[tokio::test]
    async fn made_tokens_authenticate_survive_a_restart_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = open(dir.path());
        let admin = tokens.authenticate(ADMIN).unwrap();
        assert!(admin.is_admin());
        assert_eq!(admin.user(), ADMIN_USER);
        let issued = tokens.create(new("alice")).await.unwrap();
        assert!(issued.token.starts_with("tth_") && issued.token.len() == 4 + 64);
        let alice = tokens.authenticate(&issued.token).unwrap();
        assert_eq!(
            (alice.user(), alice.token_id()),
            ("alice", issued.view.id.as_str())
        );
        assert_eq!(alice.scopes(), Scopes::USER_DEFAULT);
        // Only the hash is on disk.
        let text = std::fs::read_to_string(file::tokens_path(dir.path())).unwrap();
        assert!(!text.contains(&issued.token));
        assert!(text.contains(&hex::encode(sha256(&issued.token))));

        let reopened = open(dir.path());
        assert!(reopened.authenticate(&issued.token).is_ok());
        assert_eq!(
            reopened.authenticate("tth_nope").err(),
            Some(Refused::Unknown)
        );

        let bob = reopened.create(new("bob")).await.unwrap();
        let bob_p = reopened.authenticate(&bob.token).unwrap();
        // Bob cannot see or revoke Alice's token.
        assert_eq!(reopened.list(&bob_p, None).len(), 1);
        assert!(matches!(
            reopened.revoke(&bob_p, &issued.view.id).await,
            Err(TenancyError::NotFound(_))
        ));
        let alice = reopened.authenticate(&issued.token).unwrap();
        reopened.revoke(&admin, &issued.view.id).await.unwrap();
        // Revoked: refused, and whoever holds its principal hears of it.
        assert!(reopened.authenticate(&issued.token).is_err());
        assert_eq!(alice.ended().await, "the token was revoked");
        assert_eq!(open(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn requests_are_checked_and_expired_tokens_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = open(dir.path());
        let bad = [
            NewToken {
                scopes: Some(vec!["envs:root".into()]),
                ..new("alice")
            },
            NewToken {
                scopes: Some(vec![]),
                ..new("alice")
            },
            new("../alice"),
            NewToken {
                expires_in_secs: Some(0),
                ..new("alice")
            },
            NewToken {
                note: Some("x".repeat(1000)),
                ..new("alice")
            },
            NewToken {
                environments: Some(vec!["a/b".into()]),
                ..new("alice")
            },
        ];
        for req in bad {
            assert!(
                matches!(
                    tokens.create(req.clone()).await,
                    Err(TenancyError::Invalid(_))
                ),
                "{req:?}"
            );
        }
        assert_eq!(tokens.len(), 0);
        let read = tokens
            .create(NewToken {
                scopes: Some(vec!["envs:read".into()]),
                expires_in_secs: Some(1),
                ..new("alice")
            })
            .await
            .unwrap();
        let p = tokens.authenticate(&read.token).unwrap();
        assert!(p.require(Scope::EnvsWrite).is_err());
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(
            tokens.authenticate(&read.token).err(),
            Some(Refused::Expired)
        );
    }

    #[tokio::test]
    async fn the_admin_token_rotates_unless_set_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = open(dir.path());
        let old = tokens.authenticate(ADMIN).unwrap();
        let secret = tokens.rotate_admin().await.unwrap();
        assert!(tokens.authenticate(ADMIN).is_err());
        assert!(tokens.authenticate(&secret).unwrap().is_admin());
        assert_eq!(old.ended().await, "the token was revoked");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("api-token")).unwrap(),
            secret
        );
        let from_env = Tokens::open(file::tokens_path(dir.path()), ADMIN, None).unwrap();
        assert!(matches!(
            from_env.rotate_admin().await,
            Err(TenancyError::Conflict(_))
        ));
    }
}
