//! Sampling of high-volume entries ([`super::AuditLog::note`]): per action and remote
//! address, at most `sampled_per_second` lines a second are written; the rest are
//! counted, and once their second is over one summary line says how many were
//! suppressed (as the first suppressed entry, with `suppressed: N`). Memory is bounded:
//! at most [`MAX_SOURCES`] sources are tracked at once, and entries from more sources
//! than that are counted together into one `audit.suppressed` line.
//!
//! Times are passed in, so tests drive the clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::entry::{Actor, Entry, Outcome, action};
use super::text::Text;

/// Sources (action and address) tracked at once.
pub(super) const MAX_SOURCES: usize = 4096;
/// The sampling window.
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Bucket {
    start: Instant,
    written: u32,
    suppressed: u64,
    /// The first suppressed entry, the summary's model.
    first: Option<Entry>,
}

/// Counts per source; one per log, behind the log's mutex.
#[derive(Debug)]
pub(super) struct Sampler {
    per_second: u32,
    buckets: HashMap<(Text, Option<IpAddr>), Bucket>,
    /// Entries dropped because too many sources were tracked, or the queue was full.
    overflow: u64,
}

impl Sampler {
    pub(super) fn new(per_second: u32) -> Self {
        Self {
            per_second: per_second.max(1),
            buckets: HashMap::new(),
            overflow: 0,
        }
    }

    /// Whether `entry` is written; a `false` is counted for a summary. Pushes onto
    /// `summaries` the summary of the source's previous second if it is due.
    pub(super) fn admit(
        &mut self,
        entry: &Entry,
        now: Instant,
        summaries: &mut Vec<Entry>,
    ) -> bool {
        let key = (entry.action.clone(), entry.remote);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_SOURCES {
            self.overflow += 1;
            return false;
        }
        let b = self.buckets.entry(key).or_insert(Bucket {
            start: now,
            written: 0,
            suppressed: 0,
            first: None,
        });
        if now.duration_since(b.start) >= WINDOW {
            summaries.extend(summary(b));
            *b = Bucket {
                start: now,
                written: 0,
                suppressed: 0,
                first: None,
            };
        }
        if b.written < self.per_second {
            b.written += 1;
            return true;
        }
        b.suppressed += 1;
        if b.first.is_none() {
            b.first = Some(entry.clone());
        }
        false
    }

    /// Counts an entry dropped for want of room.
    pub(super) fn dropped(&mut self) {
        self.overflow += 1;
    }

    /// Summaries of every source whose second is over (all of them when `all`), and
    /// forgets those sources.
    pub(super) fn due(&mut self, now: Instant, all: bool) -> Vec<Entry> {
        let mut out = Vec::new();
        self.buckets.retain(|_, b| {
            if !all && now.duration_since(b.start) < WINDOW {
                return true;
            }
            out.extend(summary(b));
            false
        });
        if self.overflow > 0 {
            let n = std::mem::take(&mut self.overflow);
            let mut e = Entry::new(Actor::System, action::AUDIT_SUPPRESSED, Outcome::Ok).reason(
                &format!("{n} high-volume entries not written: too many sources at once"),
            );
            e.suppressed = Some(n);
            out.push(e);
        }
        out
    }
}

/// The "N similar suppressed" line of a bucket, if it suppressed any.
fn summary(b: &mut Bucket) -> Option<Entry> {
    let mut e = b.first.take()?;
    let n = std::mem::take(&mut b.suppressed);
    e.time = super::entry::Timestamp::now();
    e.reason = Some(Text::new(&format!(
        "{n} similar entries suppressed (more than {} a second)",
        b.written
    )));
    e.suppressed = Some(n);
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> Entry {
        Entry::new(Actor::Anonymous, action::AUTH_REFUSED, Outcome::Refused)
            .remote(ip.parse().unwrap())
            .reason("invalid token")
    }

    #[test]
    fn a_flood_is_sampled_per_source_and_summarised_once_its_second_is_over() {
        let mut s = Sampler::new(3);
        let t0 = Instant::now();
        let mut sums = Vec::new();
        let a = refused("192.0.2.1");
        let written = (0..100).filter(|_| s.admit(&a, t0, &mut sums)).count();
        assert_eq!(written, 3);
        // Another address has its own budget.
        assert!(s.admit(&refused("192.0.2.2"), t0, &mut sums));
        assert!(sums.is_empty());
        assert!(s.due(t0 + Duration::from_millis(500), false).is_empty());
        let due = s.due(t0 + WINDOW, false);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].suppressed, Some(97));
        assert_eq!(due[0].remote, a.remote);
        assert!(
            due[0]
                .reason
                .as_ref()
                .unwrap()
                .as_str()
                .starts_with("97 similar")
        );
        assert!(s.buckets.is_empty());
        // A new second, and a summary on admission if the sweep has not run.
        let t1 = t0 + Duration::from_secs(5);
        for _ in 0..5 {
            s.admit(&a, t1, &mut sums);
        }
        assert!(s.admit(&a, t1 + WINDOW, &mut sums));
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[0].suppressed, Some(2));
    }

    #[test]
    fn too_many_sources_are_counted_together() {
        let mut s = Sampler::new(1);
        let t0 = Instant::now();
        let mut sums = Vec::new();
        for n in 0..MAX_SOURCES + 10 {
            let ip = std::net::Ipv4Addr::from(n as u32).to_string();
            s.admit(&refused(&ip), t0, &mut sums);
        }
        assert_eq!(s.buckets.len(), MAX_SOURCES);
        s.dropped();
        let due = s.due(t0, true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].action.as_str(), action::AUDIT_SUPPRESSED);
        assert_eq!(due[0].suppressed, Some(11));
    }
}
