//! What a provider keeps in its environment's record — its resource id and small
//! key/values — shared between the instance's `tether:provider/state` calls (the
//! writer) and the lifecycle task that persists it (the reader).
//!
//! Changes coalesce instead of queueing: a provider that sets its resource id 500,000
//! times leaves one pending value, and the reader persists the latest key/values in
//! one write, so what the host holds is bounded by the state limits whatever the rate,
//! and the guest never waits for the disk.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sync::MutexExt;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    values: BTreeMap<String, String>,
    values_changed: bool,
    resource_id: Option<String>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.locked()
    }
}

/// The instance's side; dropping it (with the instance) ends the reader once it has
/// taken the last changes.
#[derive(Debug)]
pub struct StateWriter {
    shared: Arc<Shared>,
}

/// The persisting side.
#[derive(Debug)]
pub struct StateReader {
    shared: Arc<Shared>,
}

/// Changes not yet persisted: the latest of each, `None` where nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChanges {
    /// The latest resource id set.
    pub resource_id: Option<String>,
    /// All key/values, if any changed.
    pub values: Option<BTreeMap<String, String>>,
}

/// A writer and reader over the persisted key/values `values`.
pub(crate) fn channel(values: BTreeMap<String, String>) -> (StateWriter, StateReader) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            values,
            ..Inner::default()
        }),
        changed: Notify::new(),
    });
    (
        StateWriter {
            shared: shared.clone(),
        },
        StateReader { shared },
    )
}

impl StateWriter {
    /// A writer whose changes nobody persists (an instance serving no environment).
    pub fn detached() -> Self {
        Self {
            shared: Arc::default(),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.shared.lock().values.get(key).cloned()
    }

    /// Sets `key` unless that would make more than `max_entries` keys; `false` then.
    pub fn set(&self, key: String, value: String, max_entries: usize) -> bool {
        let mut inner = self.shared.lock();
        if !inner.values.contains_key(&key) && inner.values.len() >= max_entries {
            return false;
        }
        inner.values.insert(key, value);
        inner.values_changed = true;
        drop(inner);
        self.shared.changed.notify_one();
        true
    }

    /// Removes `key`.
    pub fn remove(&self, key: &str) {
        let mut inner = self.shared.lock();
        if inner.values.remove(key).is_some() {
            inner.values_changed = true;
            drop(inner);
            self.shared.changed.notify_one();
        }
    }

    /// Records the latest resource id.
    pub fn set_resource_id(&self, id: String) {
        self.shared.lock().resource_id = Some(id);
        self.shared.changed.notify_one();
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_one();
    }
}

impl StateReader {
    /// Waits for changes and takes them; `None` once the writer is gone and every
    /// change has been taken.
    pub async fn next(&self) -> Option<StateChanges> {
        loop {
            {
                let mut inner = self.shared.lock();
                if inner.values_changed || inner.resource_id.is_some() {
                    let values =
                        std::mem::take(&mut inner.values_changed).then(|| inner.values.clone());
                    return Some(StateChanges {
                        resource_id: inner.resource_id.take(),
                        values,
                    });
                }
                if inner.closed {
                    return None;
                }
            }
            // A notification sent between the check and here is kept as a permit.
            self.shared.changed.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_coalesces_to_the_latest_values_and_the_reader_ends_with_the_writer() {
        let (writer, reader) = channel(BTreeMap::from([("a".into(), "0".into())]));
        for i in 0..100_000 {
            writer.set_resource_id(format!("r{i}"));
        }
        assert!(writer.set("b".into(), "1".into(), 2));
        assert!(
            !writer.set("c".into(), "1".into(), 2),
            "over the entry limit"
        );
        writer.remove("a");
        assert_eq!(writer.get("b").as_deref(), Some("1"));
        let changes = reader.next().await.expect("changes");
        assert_eq!(changes.resource_id.as_deref(), Some("r99999"));
        assert_eq!(
            changes.values,
            Some(BTreeMap::from([("b".into(), "1".into())]))
        );
        writer.set_resource_id("last".into());
        drop(writer);
        let last = reader.next().await.expect("the last change is not lost");
        assert_eq!(last.resource_id.as_deref(), Some("last"));
        assert_eq!(last.values, None);
        assert_eq!(reader.next().await, None);
    }
}
