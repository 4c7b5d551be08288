//! The relay: one hub per environment joining its runtime connection with any number
//! of app connections.
//!
//! Runtime → apps: a message with a `threadId` goes to that thread's apps, one without
//! goes to every app. App → runtime: the app's thread is added where the message has
//! none; while no runtime is connected, messages wait in a bounded queue and are
//! delivered in order when it connects. Every queue is bounded: an app that does not
//! keep up is disconnected with [`CLOSE_TOO_SLOW`] rather than stall the others.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Close code: this app fell too far behind.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code: a newer runtime connection replaced this one.
pub const CLOSE_REPLACED: u16 = 4009;
/// Close code: the environment was stopped or deleted.
pub const CLOSE_GONE: u16 = 4010;

/// Frames queued per connection before it counts as too slow.
const CONNECTION_QUEUE: usize = 1024;
/// App messages held while no runtime is connected.
const PENDING_LIMIT: usize = 1024;

/// Why the relay refused a message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// The runtime is away and the holding queue is full.
    #[error("the runtime is not connected and {0} messages are already waiting for it")]
    PendingFull(usize),
    /// The runtime is not reading fast enough.
    #[error("the runtime is not keeping up; message not delivered")]
    RuntimeBusy,
    /// The hub is closed (environment deleted).
    #[error("the environment is gone")]
    Closed,
}

/// How a connection ends, when the relay ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Text for the peer.
    pub reason: String,
}

/// The receiving end of one connection: frames to write, and why it was closed.
#[derive(Debug)]
pub struct Outbox {
    /// Connection id within its hub.
    pub id: u64,
    /// Text frames to write, in order.
    pub rx: mpsc::Receiver<String>,
    closed: Arc<OnceLock<CloseReason>>,
}

impl Outbox {
    /// Why the relay closed this connection, once `rx` has ended.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.get().cloned()
    }
}

#[derive(Debug)]
struct Peer {
    tx: mpsc::Sender<String>,
    closed: Arc<OnceLock<CloseReason>>,
}

impl Peer {
    fn new(id: u64) -> (Self, Outbox) {
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let closed = Arc::new(OnceLock::new());
        (
            Self {
                tx,
                closed: closed.clone(),
            },
            Outbox { id, rx, closed },
        )
    }

    fn close(&self, code: u16, reason: &str) {
        let _ = self.closed.set(CloseReason {
            code,
            reason: reason.to_owned(),
        });
    }
}

#[derive(Debug)]
struct App {
    thread: Option<String>,
    peer: Peer,
}

#[derive(Debug, Default)]
struct HubState {
    runtime: Option<(u64, Peer)>,
    apps: HashMap<u64, App>,
    pending: VecDeque<String>,
    closed: bool,
}

/// One environment's hub.
#[derive(Debug)]
pub struct Hub {
    env_id: String,
    state: Mutex<HubState>,
    next_id: AtomicU64,
}

impl Hub {
    fn new(env_id: String) -> Self {
        Self {
            env_id,
            state: Mutex::new(HubState::default()),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts a runtime connection, replacing (and closing) any earlier one, and
    /// hands it everything that waited for it.
    pub fn attach_runtime(&self) -> Result<Outbox, RelayError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (peer, outbox) = Peer::new(id);
        let mut s = self.lock();
        if s.closed {
            return Err(RelayError::Closed);
        }
        while let Some(msg) = s.pending.pop_front() {
            if peer.tx.try_send(msg).is_err() {
                break;
            }
        }
        if let Some((_, old)) = s.runtime.replace((id, peer)) {
            old.close(CLOSE_REPLACED, "replaced by a newer runtime connection");
        }
        tracing::info!(env = %self.env_id, conn = id, "runtime connected");
        Ok(outbox)
    }

    /// Forgets runtime connection `id`; false if a newer one had replaced it.
    pub fn detach_runtime(&self, id: u64) -> bool {
        let mut s = self.lock();
        if s.runtime.as_ref().is_some_and(|(cur, _)| *cur == id) {
            s.runtime = None;
            tracing::info!(env = %self.env_id, conn = id, "runtime disconnected");
            true
        } else {
            false
        }
    }

    /// Closes the runtime connection, if any.
    pub fn close_runtime(&self, code: u16, reason: &str) {
        if let Some((_, peer)) = self.lock().runtime.take() {
            peer.close(code, reason);
        }
    }

    /// Whether a runtime is connected.
    pub fn runtime_connected(&self) -> bool {
        self.lock().runtime.is_some()
    }

    /// Accepts an app connection on `thread`.
    pub fn attach_app(&self, thread: Option<String>) -> Result<Outbox, RelayError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (peer, outbox) = Peer::new(id);
        let mut s = self.lock();
        if s.closed {
            return Err(RelayError::Closed);
        }
        s.apps.insert(id, App { thread, peer });
        Ok(outbox)
    }

    /// Forgets app connection `id`.
    pub fn detach_app(&self, id: u64) {
        self.lock().apps.remove(&id);
    }

    /// The thread app connection `id` joined.
    pub fn app_thread(&self, id: u64) -> Option<String> {
        self.lock().apps.get(&id).and_then(|a| a.thread.clone())
    }

    /// Sends one frame to app `id` only (replies to its own requests).
    pub fn send_to_app(&self, id: u64, text: String) {
        let mut s = self.lock();
        deliver(&mut s.apps, id, text);
    }

    /// Routes a message from app `id` to the runtime, adding the app's thread.
    pub fn from_app(&self, id: u64, mut msg: Map<String, Value>) -> Result<(), RelayError> {
        let mut s = self.lock();
        if !msg.contains_key("threadId")
            && let Some(thread) = s.apps.get(&id).and_then(|a| a.thread.clone())
        {
            msg.insert("threadId".into(), Value::String(thread));
        }
        to_runtime(&mut s, Value::Object(msg).to_string())
    }

    /// Sends a message to the runtime (or queues it while the runtime is away).
    pub fn to_runtime(&self, text: String) -> Result<(), RelayError> {
        to_runtime(&mut self.lock(), text)
    }

    /// Routes a message from the runtime to its apps by `threadId`.
    pub fn from_runtime(&self, text: String, thread: Option<&str>) {
        let mut s = self.lock();
        let targets: Vec<u64> = s
            .apps
            .iter()
            .filter(|(_, a)| thread.is_none() || a.thread.as_deref() == thread)
            .map(|(id, _)| *id)
            .collect();
        fan_out(&mut s.apps, &targets, text);
    }

    /// Sends a host event to every app.
    pub fn broadcast(&self, text: String) {
        let mut s = self.lock();
        let targets: Vec<u64> = s.apps.keys().copied().collect();
        fan_out(&mut s.apps, &targets, text);
    }

    /// Closes every connection and refuses new ones.
    pub fn close(&self, reason: &str) {
        let mut s = self.lock();
        s.closed = true;
        if let Some((_, peer)) = s.runtime.take() {
            peer.close(CLOSE_GONE, reason);
        }
        for (_, app) in s.apps.drain() {
            app.peer.close(CLOSE_GONE, reason);
        }
        s.pending.clear();
    }
}

fn to_runtime(s: &mut HubState, text: String) -> Result<(), RelayError> {
    if s.closed {
        return Err(RelayError::Closed);
    }
    match &s.runtime {
        Some((_, peer)) => peer.tx.try_send(text).map_err(|_| RelayError::RuntimeBusy),
        None if s.pending.len() >= PENDING_LIMIT => Err(RelayError::PendingFull(PENDING_LIMIT)),
        None => {
            s.pending.push_back(text);
            Ok(())
        }
    }
}

fn fan_out(apps: &mut HashMap<u64, App>, targets: &[u64], text: String) {
    for id in targets {
        deliver(apps, *id, text.clone());
    }
}

fn deliver(apps: &mut HashMap<u64, App>, id: u64, text: String) {
    let Some(app) = apps.get(&id) else { return };
    if app.peer.tx.try_send(text).is_err() {
        // Full (too slow) or closed: either way this connection is done; dropping
        // its sender ends its writer, which closes with the recorded reason.
        app.peer.close(CLOSE_TOO_SLOW, "too far behind");
        apps.remove(&id);
    }
}

/// Every hub, by environment id.
#[derive(Debug, Default)]
pub struct Relay {
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
}

impl Relay {
    /// The hub of `env_id`, created on first use.
    pub fn hub(&self, env_id: &str) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.entry(env_id.to_owned())
            .or_insert_with(|| Arc::new(Hub::new(env_id.to_owned())))
            .clone()
    }

    /// Closes and forgets the hub of `env_id`.
    pub fn remove(&self, env_id: &str, reason: &str) {
        let hub = self
            .hubs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(env_id);
        if let Some(hub) = hub {
            hub.close(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test input is an object"),
        }
    }

    #[test]
    fn routes_by_thread_and_broadcasts_without_one() {
        let hub = Hub::new("e".into());
        let mut t1 = hub.attach_app(Some("t1".into())).unwrap();
        let mut t2 = hub.attach_app(Some("t2".into())).unwrap();
        hub.from_runtime("for-t1".into(), Some("t1"));
        hub.from_runtime("for-all".into(), None);
        assert_eq!(t1.rx.try_recv().unwrap(), "for-t1");
        assert_eq!(t1.rx.try_recv().unwrap(), "for-all");
        assert_eq!(t2.rx.try_recv().unwrap(), "for-all");
        assert!(t2.rx.try_recv().is_err());
    }

    #[test]
    fn app_messages_wait_for_the_runtime_and_get_the_thread() {
        let hub = Hub::new("e".into());
        let app = hub.attach_app(Some("t1".into())).unwrap();
        hub.from_app(app.id, obj(json!({"type": "echo", "n": 1})))
            .unwrap();
        hub.from_app(
            app.id,
            obj(json!({"type": "echo", "n": 2, "threadId": "x"})),
        )
        .unwrap();
        let mut rt = hub.attach_runtime().unwrap();
        let first: Value = serde_json::from_str(&rt.rx.try_recv().unwrap()).unwrap();
        let second: Value = serde_json::from_str(&rt.rx.try_recv().unwrap()).unwrap();
        assert_eq!(
            (first["n"].clone(), first["threadId"].clone()),
            (json!(1), json!("t1"))
        );
        assert_eq!(
            (second["n"].clone(), second["threadId"].clone()),
            (json!(2), json!("x"))
        );
    }

    #[test]
    fn pending_queue_is_bounded() {
        let hub = Hub::new("e".into());
        for _ in 0..PENDING_LIMIT {
            hub.to_runtime("m".into()).unwrap();
        }
        assert_eq!(
            hub.to_runtime("m".into()),
            Err(RelayError::PendingFull(PENDING_LIMIT))
        );
    }

    #[test]
    fn a_slow_app_is_dropped_and_others_keep_receiving() {
        let hub = Hub::new("e".into());
        let slow = hub.attach_app(None).unwrap();
        let mut fast = hub.attach_app(None).unwrap();
        for i in 0..=CONNECTION_QUEUE {
            hub.broadcast(i.to_string());
            assert_eq!(fast.rx.try_recv().unwrap(), i.to_string());
        }
        assert_eq!(slow.close_reason().map(|r| r.code), Some(CLOSE_TOO_SLOW));
        hub.broadcast("after".into());
        assert_eq!(fast.rx.try_recv().unwrap(), "after");
    }

    #[test]
    fn a_new_runtime_replaces_the_old_one() {
        let hub = Hub::new("e".into());
        let old = hub.attach_runtime().unwrap();
        let new = hub.attach_runtime().unwrap();
        assert_eq!(old.close_reason().map(|r| r.code), Some(CLOSE_REPLACED));
        assert!(!hub.detach_runtime(old.id));
        assert!(hub.runtime_connected());
        assert!(hub.detach_runtime(new.id));
        assert!(!hub.runtime_connected());
    }
}
