//! The manager-wide stream of environment changes behind `GET /ws/events`: every
//! status change, creation, record change (hand edits included) and deletion is
//! published once, as a ready-made JSON frame, into one bounded broadcast ring, and
//! each subscriber reads from it the frames its principal may see.
//!
//! Publishing never waits: the ring holds the last [`EVENTS_QUEUE`] changes whoever
//! reads them. A subscriber that falls further behind than that is not waited for and
//! costs nothing more: it skips to the newest change and is sent a fresh `snapshot`
//! (with `resync: true`) in place of what it missed.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::{EnvironmentView, Manager};
use crate::store::Record;
use crate::tenancy::Principal;

/// Changes the ring holds; a subscriber further behind is sent a snapshot instead.
const EVENTS_QUEUE: usize = 1024;

/// One published change, its frame built once for every subscriber.
#[derive(Debug)]
struct Change {
    id: String,
    name: String,
    owner: String,
    /// The owner before, when a hand edit moved the environment to another user: a
    /// subscriber who reached it only as that user's is told it is gone.
    moved_from: Option<String>,
    frame: String,
    /// The frame as a caller who is not an admin sees it, when it differs
    /// ([`EnvironmentView::seen_by`]).
    others_frame: Option<String>,
}

impl Change {
    /// What `who` is sent of this change, if anything.
    fn frame_for(&self, who: &Principal) -> Option<String> {
        if who.reaches(&self.owner, &self.id) {
            let frame = match &self.others_frame {
                Some(others) if !who.is_admin() => others,
                _ => &self.frame,
            };
            return Some(frame.clone());
        }
        let before = self.moved_from.as_deref()?;
        who.reaches(before, &self.id)
            .then(|| deleted_frame(&self.id, &self.name, before, "moved"))
    }
}

fn deleted_frame(id: &str, name: &str, owner: &str, reason: &str) -> String {
    json!({
        "type": "environmentDeleted",
        "environmentId": id,
        "name": name,
        "owner": owner,
        "reason": reason,
    })
    .to_string()
}

/// The sending side of the ring; cheap to clone into the driver.
#[derive(Debug, Clone)]
pub(super) struct Events(broadcast::Sender<Arc<Change>>);

impl Events {
    pub(super) fn new() -> Self {
        Self(broadcast::channel(EVENTS_QUEUE).0)
    }

    /// Whether anyone listens: with no subscriber a change's view is not even built.
    pub(super) fn wanted(&self) -> bool {
        self.0.receiver_count() > 0
    }

    /// The live status of `view` changed (or its runtime came or went).
    pub(super) fn status(&self, view: &EnvironmentView) {
        if !self.wanted() {
            return;
        }
        let frame = |v: &EnvironmentView| {
            json!({
                "type": "environmentStatus",
                "environmentId": v.id,
                "name": v.name,
                "provider": v.provider,
                "owner": v.owner,
                "status": v.status,
                "desiredState": v.desired_state,
                "runtime": {"connected": v.runtime.connected},
                "lastError": v.last_error,
            })
        };
        let others = frame(&view.clone().without_host_paths());
        self.publish(view, None, frame(view), Some(others));
    }

    /// `view` was just created.
    pub(super) fn created(&self, view: &EnvironmentView) {
        let frame = |v: &EnvironmentView| json!({"type": "environmentCreated", "environment": v});
        self.publish(
            view,
            None,
            frame(view),
            Some(frame(&view.clone().without_host_paths())),
        );
    }

    /// `view`'s record changed; `moved_from` is its owner before, if that changed.
    pub(super) fn changed(&self, view: &EnvironmentView, moved_from: Option<String>) {
        let frame = |v: &EnvironmentView| json!({"type": "environmentChanged", "environment": v});
        let moved_from = moved_from.filter(|o| *o != view.owner);
        let others = frame(&view.clone().without_host_paths());
        self.publish(view, moved_from, frame(view), Some(others));
    }

    /// `record`'s environment is gone.
    pub(super) fn deleted(&self, record: &Record) {
        let frame = deleted_frame(&record.id, &record.name, &record.owner, "deleted");
        self.send(Change {
            id: record.id.clone(),
            name: record.name.clone(),
            owner: record.owner.clone(),
            moved_from: None,
            frame,
            others_frame: None,
        });
    }

    fn publish(
        &self,
        view: &EnvironmentView,
        moved_from: Option<String>,
        frame: Value,
        others_frame: Option<Value>,
    ) {
        let others_frame = others_frame.filter(|o| *o != frame);
        self.send(Change {
            id: view.id.clone(),
            name: view.name.clone(),
            owner: view.owner.clone(),
            moved_from,
            frame: frame.to_string(),
            others_frame: others_frame.map(|o| o.to_string()),
        });
    }

    fn send(&self, change: Change) {
        // No subscriber is not an error: nobody is watching right now.
        let _ = self.0.send(Arc::new(change));
    }

    /// A subscriber `who`, whose snapshots (`resync`: after falling behind) `snapshot`
    /// makes, until `closing` fires.
    fn subscribe(
        &self,
        who: Principal,
        closing: CancellationToken,
        snapshot: impl Fn(bool) -> String + Send + Sync + 'static,
    ) -> EventStream {
        // Subscribed before the snapshot is taken, so no change falls between the two.
        let changes = self.0.subscribe();
        EventStream {
            first: Some(snapshot(false)),
            who,
            changes,
            closing,
            snapshot: Box::new(snapshot),
        }
    }
}

/// One subscriber's view of the stream: a snapshot first, then the changes it may see.
pub(crate) struct EventStream {
    who: Principal,
    changes: broadcast::Receiver<Arc<Change>>,
    closing: CancellationToken,
    first: Option<String>,
    snapshot: Box<dyn Fn(bool) -> String + Send + Sync>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("user", &self.who.user())
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next frame for this subscriber (the snapshot first), or `None` once the
    /// host shuts down. Cancel-safe: a frame is never lost to a cancelled call.
    pub(crate) async fn next(&mut self) -> Option<String> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            let received = tokio::select! {
                _ = self.closing.cancelled() => return None,
                received = self.changes.recv() => received,
            };
            match received {
                Ok(change) => {
                    if let Some(frame) = change.frame_for(&self.who) {
                        return Some(frame);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(user = %self.who.user(), missed, "events subscriber fell behind; sending a snapshot");
                    // From the newest change on, so nothing older than the snapshot
                    // follows it.
                    self.changes = self.changes.resubscribe();
                    return Some((self.snapshot)(true));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Every environment `who` reaches, as one `snapshot` frame.
fn snapshot(manager: &Manager, who: &Principal, resync: bool) -> String {
    let environments: Vec<_> = (manager.list(who, None).into_iter())
        .map(|v| v.seen_by(who))
        .collect();
    json!({"type": "snapshot", "resync": resync, "environments": environments}).to_string()
}

impl Manager {
    /// The change stream as `who` may see it: a snapshot of every environment it
    /// reaches, then each change to one of them. The caller checks the scope.
    pub(crate) fn watch_environments(&self, who: &Principal) -> EventStream {
        let (manager, viewer) = (self.clone(), who.clone());
        let closing = self.shared.closing.clone();
        self.events()
            .subscribe(who.clone(), closing, move |resync| {
                snapshot(&manager, &viewer, resync)
            })
    }

    /// How often a quiet socket is pinged, and how long a peer may be silent before
    /// it counts as gone (`[relay] ping_interval_secs`, `idle_timeout_secs`): the
    /// events stream keeps the relay's liveness.
    pub(crate) fn liveness(&self) -> (std::time::Duration, std::time::Duration) {
        let relay = self.shared.envs.relay_config();
        (relay.ping_interval, relay.idle_timeout)
    }

    pub(super) fn events(&self) -> &Events {
        &self.shared.driver.shared.events
    }

    /// Publishes `id`'s record as changed (`moved_from`: its owner before, if it
    /// moved), when anyone listens.
    pub(super) fn publish_changed(&self, id: &str, moved_from: Option<String>) {
        if self.events().wanted()
            && let Ok(view) = self.view(id)
        {
            self.events().changed(&view, moved_from);
        }
    }

    /// Publishes `id` as just created, when anyone listens.
    pub(super) fn publish_created(&self, id: &str) {
        if self.events().wanted()
            && let Ok(view) = self.view(id)
        {
            self.events().created(&view);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::{NewToken, Tokens, tokens_path};

    async fn principal(tokens: &Tokens, user: &str) -> Principal {
        let issued = (tokens.create(NewToken {
            user: user.into(),
            ..NewToken::default()
        }))
        .await
        .expect("token");
        tokens.authenticate(&issued.token).expect("authenticates")
    }

    fn record(id: &str, owner: &str) -> Record {
        let mut record = Record::new(id.into(), id.into(), "p".into(), Default::default());
        record.owner = owner.into();
        record
    }

    fn parsed(frame: &str) -> Value {
        serde_json::from_str(frame).expect("JSON frame")
    }

    #[tokio::test]
    async fn a_subscriber_sees_its_own_and_is_told_when_one_moves_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::open(tokens_path(dir.path()), "admin-secret", None).expect("tokens");
        let alice = principal(&tokens, "alice").await;
        let events = Events::new();
        let mut stream = events.subscribe(alice, CancellationToken::new(), |_| "snap".into());
        assert_eq!(stream.next().await.as_deref(), Some("snap"));
        events.deleted(&record("bobs", "bob"));
        events.send(Change {
            id: "e1".into(),
            name: "e1".into(),
            owner: "bob".into(),
            moved_from: Some("alice".into()),
            frame: "to bob".into(),
            others_frame: None,
        });
        events.deleted(&record("mine", "alice"));
        // Bob's deletion is not hers; her environment moving to Bob is, to her, gone.
        let moved = parsed(&stream.next().await.expect("a frame"));
        assert_eq!(moved["type"], "environmentDeleted");
        assert_eq!(
            (&moved["environmentId"], &moved["reason"]),
            (&"e1".into(), &"moved".into())
        );
        let deleted = parsed(&stream.next().await.expect("a frame"));
        assert_eq!(
            (&deleted["environmentId"], &deleted["reason"]),
            (&"mine".into(), &"deleted".into())
        );
    }

    #[tokio::test]
    async fn a_subscriber_behind_the_ring_gets_a_snapshot_then_only_newer_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::open(tokens_path(dir.path()), "admin-secret", None).expect("tokens");
        let alice = principal(&tokens, "alice").await;
        let events = Events::new();
        let closing = CancellationToken::new();
        let mut stream =
            events.subscribe(alice, closing.clone(), |resync| format!("snap {resync}"));
        assert_eq!(stream.next().await.as_deref(), Some("snap false"));
        for i in 0..EVENTS_QUEUE + 10 {
            events.deleted(&record(&format!("old{i}"), "alice"));
        }
        // The ring kept only the newest; the subscriber skips to a fresh snapshot.
        assert_eq!(stream.next().await.as_deref(), Some("snap true"));
        events.deleted(&record("new", "alice"));
        let next = parsed(&stream.next().await.expect("a frame"));
        assert_eq!(
            next["environmentId"], "new",
            "nothing older follows the snapshot"
        );
        closing.cancel();
        assert_eq!(stream.next().await, None);
    }
}
