//! User tokens shared by the hosts of a cluster: `PREFIX-tokens` holds one key per
//! token id whose value is its record (the SHA-256 of the secret, never the secret);
//! a deleted key is a revoked token. A token made on any host is accepted by every
//! host, and one revoked on any host is refused everywhere, its connections closed.
//! Each host's `tokens.json` stays a current copy. The operator's (admin) token is
//! each host's own and is not shared.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Cluster, ClusterError};
use crate::tenancy::{TokenChange, TokenRecord, Tokens};

/// How soon writes that failed are tried again.
const RETRY: Duration = Duration::from_secs(1);
/// The largest token record taken from the bucket.
pub(super) const MAX_TOKEN_BYTES: usize = 16 << 10;

/// Takes in the tokens the cluster has, shares this host's, and keeps both in step
/// in the background.
pub(super) async fn start(cluster: Cluster, tokens: Arc<Tokens>) -> Result<(), ClusterError> {
    // Followed first, so no change made meanwhile is missed.
    let changes = tokens.follow();
    let bucket = cluster.tokens_bucket().clone();
    let nats = |what: &str, e: String| ClusterError::Nats(format!("{what}: {e}"));
    let watch =
        (bucket.watch_all().await).map_err(|e| nats("watching the tokens", e.to_string()))?;
    let mut keys = (bucket.keys().await).map_err(|e| nats("listing the tokens", e.to_string()))?;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| nats("listing the tokens", e.to_string()))?;
        if let Some(entry) = (bucket.entry(key.clone()).await)
            .map_err(|e| nats(&format!("reading token {key}"), e.to_string()))?
        {
            apply(&cluster, &tokens, entry).await;
        }
    }
    // This host's tokens the cluster does not know are shared; those it revoked while
    // this host was away are revoked here.
    let mut pending = VecDeque::new();
    for record in tokens.all_records() {
        match bucket.entry(record.id.clone()).await {
            Ok(None) => pending.push_back(TokenChange::Created(record)),
            Ok(Some(entry)) if entry.operation != Operation::Put => {
                let _ = tokens.forget(&record.id).await;
            }
            Ok(Some(_)) => {}
            Err(e) => return Err(nats(&format!("reading token {}", record.id), e.to_string())),
        }
    }
    let sync = Sync {
        cluster: cluster.clone(),
        bucket,
        tokens,
        pending,
    };
    super::until(
        cluster.closing(),
        sync.run(watch, changes),
        "cluster_tokens",
    );
    Ok(())
}

struct Sync {
    cluster: Cluster,
    bucket: kv::Store,
    tokens: Arc<Tokens>,
    /// This host's changes not written yet, oldest first.
    pending: VecDeque<TokenChange>,
}

impl Sync {
    async fn run(
        mut self,
        mut watch: kv::Watch,
        mut changes: mpsc::UnboundedReceiver<TokenChange>,
    ) {
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.write_pending().await;
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => apply(&self.cluster, &self.tokens, entry).await,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cluster: the tokens watch failed; watching again");
                        watch = self.rewatch().await;
                    }
                    None => {
                        tracing::warn!("cluster: the tokens watch ended; watching again");
                        watch = self.rewatch().await;
                    }
                },
                change = changes.recv() => match change {
                    Some(change) => {
                        self.pending.push_back(change);
                        self.write_pending().await;
                    }
                    None => return,
                },
                _ = retry.tick(), if !self.pending.is_empty() => self.write_pending().await,
            }
        }
    }

    /// Writes this host's changes in order, stopping at the first that fails.
    async fn write_pending(&mut self) {
        while let Some(change) = self.pending.front() {
            let written = match change {
                TokenChange::Created(record) => match serde_json::to_vec(record) {
                    Ok(bytes) => match self.bucket.create(&record.id, bytes.into()).await {
                        Ok(_) => Ok(()),
                        // Shared by this host before (a retry whose answer was lost).
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                },
                TokenChange::Revoked(id) => {
                    (self.bucket.delete(id).await).map_err(|e| e.to_string())
                }
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, "cluster: sharing a token change failed; trying again");
                // A revoke not shared leaves the token good on the other hosts:
                // `/healthz` says so once it has waited a while.
                (self.cluster).unshared("token", self.pending.len(), Some(e));
                return;
            }
            self.pending.pop_front();
        }
        self.cluster.unshared("token", 0, None);
    }

    async fn rewatch(&self) -> kv::Watch {
        loop {
            match self.bucket.watch_all().await {
                Ok(watch) => return watch,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot watch the tokens yet");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

/// Applies a bucket entry here: a token to accept, or one to refuse from now on.
/// An entry that is not a valid token (garbled, or forged) fails closed: the token
/// under its key is refused here, its connections closed, and `/healthz` names the
/// key until a valid entry (or a revoke) is written there.
async fn apply(cluster: &Cluster, tokens: &Tokens, entry: kv::Entry) {
    let key = crate::untrusted::logged(&entry.key);
    match entry.operation {
        Operation::Delete | Operation::Purge => {
            cluster.invalid_token(&entry.key, None);
            if let Err(e) = tokens.forget(&entry.key).await {
                tracing::error!(token = %key, error = %e, "cluster: a token revoked on another host could not be revoked here");
            }
        }
        Operation::Put => match parse(&entry) {
            Ok(record) => {
                // Tokens are never changed in place; one changed in the bucket (by
                // hand) is in force as the bucket has it on every host, not as each
                // host first took it in: this host's goes, its connections closed.
                if tokens.record(&record.id).is_some_and(|mine| mine != record) {
                    tracing::warn!(token = %record.id, "cluster: a token was changed in the bucket; the bucket's is in force here from now on");
                    if let Err(e) = tokens.forget(&record.id).await {
                        tracing::error!(token = %record.id, error = %e, "cluster: a token changed in the bucket could not be changed here");
                        return;
                    }
                }
                match tokens.adopt(record).await {
                    Ok(_) => cluster.invalid_token(&entry.key, None),
                    Err(e @ crate::tenancy::TenancyError::Invalid(_)) => {
                        tracing::error!(token = %key, error = %e, "cluster: an invalid token in the bucket; refused here until a valid one is written");
                        cluster.invalid_token(&entry.key, Some(e.to_string()));
                    }
                    Err(e) => {
                        tracing::error!(token = %key, error = %e, "cluster: a token from another host could not be taken in");
                    }
                }
            }
            Err(why) => {
                tracing::error!(token = %key, %why, "cluster: an invalid token in the bucket; refused here until a valid one is written");
                cluster.invalid_token(&entry.key, Some(why));
                if let Err(e) = tokens.forget(&entry.key).await {
                    tracing::error!(token = %key, error = %e, "cluster: a token made invalid in the bucket could not be refused here");
                }
            }
        },
    }
}

/// A token record from the bucket, bounded and checked like one read from the file
/// (`Tokens::adopt` checks its fields).
fn parse(entry: &kv::Entry) -> Result<TokenRecord, String> {
    if entry.value.len() > MAX_TOKEN_BYTES {
        return Err(format!("{} bytes is too large", entry.value.len()));
    }
    let record: TokenRecord = serde_json::from_slice(&entry.value)
        .map_err(|e| crate::untrusted::shown(&e.to_string(), 200))?;
    if record.id != entry.key {
        return Err("its id does not match its key".into());
    }
    Ok(record)
}
