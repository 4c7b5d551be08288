//! The refusals one instance met, kept for its environment's error: a provider
//! often reports a refused capability in its own words ("HTTP request denied",
//! "no such file or directory"), so when a start fails the lifecycle adds what the
//! broker refused and the `tether.toml` entry that would allow it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::sync::MutexExt;

/// The last refusals kept; a provider looping on a refusal repeats one line.
const KEPT: usize = 4;

/// A cloneable note of an instance's refusals, written by the broker and read by
/// whoever started the instance.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Mutex<VecDeque<String>>>);

impl Refusals {
    /// Notes `reason` (once: a repeat is ignored), forgetting the oldest beyond a few.
    pub fn note(&self, reason: String) {
        let mut kept = self.0.locked();
        if kept.contains(&reason) {
            return;
        }
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(reason);
    }

    /// The refusals noted so far, oldest first, leaving none.
    pub fn take(&self) -> Vec<String> {
        self.0.locked().drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_few_once_each() {
        let r = Refusals::default();
        for i in 0..6 {
            r.note(format!("r{i}"));
            r.note(format!("r{i}"));
        }
        assert_eq!(r.take(), ["r2", "r3", "r4", "r5"]);
        assert!(r.take().is_empty());
    }
}
