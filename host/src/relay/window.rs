//! The replay window of one connection identity: every message the host has numbered
//! for that peer and not yet seen acknowledged, bounded in messages and bytes.
//!
//! Sequence numbers start at 1 and never repeat within a window's life. Everything at
//! or below `acked` is finished: acknowledged by the peer, or evicted (lost) when the
//! window overflowed, in which case `lost_through` remembers how far loss reached so a
//! resuming peer can be told exactly what it missed.

use std::collections::VecDeque;

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A message the window refused because it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// Numbered, unacknowledged messages for one peer.
#[derive(Debug)]
pub(crate) struct Window {
    frames: VecDeque<(u64, Utf8Bytes)>,
    bytes: usize,
    next: u64,
    acked: u64,
    lost_through: u64,
    max_frames: usize,
    max_bytes: usize,
}

impl Window {
    /// An empty window holding at most `max_frames` messages and `max_bytes` bytes.
    pub(crate) fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            next: 1,
            acked: 0,
            lost_through: 0,
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Whether one more message of `len` bytes fits without evicting anything.
    fn fits(&self, len: usize) -> bool {
        self.frames.is_empty()
            || (self.frames.len() < self.max_frames && self.bytes + len <= self.max_bytes)
    }

    /// Numbers and keeps `text`, or refuses it when the window is full.
    pub(crate) fn push(&mut self, text: Utf8Bytes) -> Result<u64, Full> {
        if !self.fits(text.len()) {
            return Err(Full);
        }
        Ok(self.push_unchecked(text))
    }

    /// Numbers and keeps `text`, evicting the oldest messages to make room; returns
    /// its number and whether anything was evicted (lost).
    pub(crate) fn push_evicting(&mut self, text: Utf8Bytes) -> (u64, bool) {
        let mut evicted = false;
        while !self.fits(text.len()) {
            if let Some((seq, old)) = self.frames.pop_front() {
                self.bytes -= old.len();
                self.acked = seq;
                self.lost_through = seq;
                evicted = true;
            }
        }
        (self.push_unchecked(text), evicted)
    }

    fn push_unchecked(&mut self, text: Utf8Bytes) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.bytes += text.len();
        self.frames.push_back((seq, text));
        seq
    }

    /// Forgets every message numbered `seq` or lower (the peer has them).
    pub(crate) fn ack(&mut self, seq: u64) {
        let seq = seq.min(self.last());
        while self.frames.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, text)) = self.frames.pop_front() {
                self.bytes -= text.len();
            }
        }
        self.acked = self.acked.max(seq);
    }

    /// Appends up to `max` messages numbered after `seq` to `out`, in order, and returns
    /// the number of the first one (the rest follow it one by one). The texts are shared,
    /// not copied.
    pub(crate) fn after(&self, seq: u64, max: usize, out: &mut Vec<Utf8Bytes>) -> u64 {
        let first = self.frames.front().map_or(self.next, |(s, _)| *s);
        let from = seq.saturating_add(1).max(first);
        let skip = usize::try_from(from - first)
            .unwrap_or(usize::MAX)
            .min(self.frames.len());
        out.extend(self.frames.range(skip..).take(max).map(|(_, t)| t.clone()));
        from
    }

    /// The number of the newest message (0 before the first).
    pub(crate) fn last(&self) -> u64 {
        self.next - 1
    }

    /// Everything at or below this is acknowledged or lost.
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// The messages a peer that last received `seq` can no longer get, if any.
    pub(crate) fn lost_after(&self, seq: u64) -> Option<(u64, u64)> {
        (seq < self.lost_through).then_some((seq + 1, self.lost_through))
    }

    /// Messages held.
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(w: &Window, after: u64) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let first = w.after(after, usize::MAX, &mut out);
        (first..).zip(out.iter().map(|t| t.to_string())).collect()
    }

    #[test]
    fn numbers_replays_and_forgets_acknowledged() {
        let mut w = Window::new(10, 1000);
        for t in ["a", "b", "c"] {
            w.push(t.into()).unwrap();
        }
        assert_eq!(texts(&w, 1), vec![(2, "b".into()), (3, "c".into())]);
        w.ack(2);
        assert_eq!(w.len(), 1);
        assert_eq!(texts(&w, 0), vec![(3, "c".into())]);
        assert_eq!(w.lost_after(0), None);
    }

    #[test]
    fn after_takes_at_most_max_from_where_the_window_starts() {
        let mut w = Window::new(10, 1000);
        for t in ["a", "b", "c", "d"] {
            w.push(t.into()).unwrap();
        }
        w.ack(1);
        let mut out = Vec::new();
        assert_eq!(w.after(0, 2, &mut out), 2);
        assert_eq!(out, vec!["b", "c"]);
        out.clear();
        assert_eq!(w.after(4, 2, &mut out), 5);
        assert!(out.is_empty());
        assert_eq!(w.after(9, 2, &mut out), 10);
        assert!(out.is_empty());
    }

    #[test]
    fn push_refuses_past_either_bound() {
        let mut w = Window::new(2, 1000);
        w.push("a".into()).unwrap();
        w.push("b".into()).unwrap();
        assert_eq!(w.push("c".into()), Err(Full));
        let mut w = Window::new(10, 4);
        w.push("abc".into()).unwrap();
        assert_eq!(w.push("de".into()), Err(Full));
    }

    #[test]
    fn eviction_records_what_was_lost() {
        let mut w = Window::new(2, 1000);
        for t in ["a", "b", "c", "d"] {
            w.push_evicting(t.into());
        }
        assert_eq!(texts(&w, 0), vec![(3, "c".into()), (4, "d".into())]);
        assert_eq!(w.lost_after(0), Some((1, 2)));
        assert_eq!(w.lost_after(1), Some((2, 2)));
        assert_eq!(w.lost_after(2), None);
        assert_eq!(w.acked(), 2);
    }
}
