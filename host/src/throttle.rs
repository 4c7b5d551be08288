//! Failed-authentication throttling per remote address (issue 12, item 6).
//!
//! Each address gets a fixed window (`[auth]`: a minute) from its first failure; after
//! `max_failures_per_minute` failures in it, [`Throttle::check`] refuses the address
//! until the window ends and says how long that is (the API answers 429 with
//! `Retry-After`). Other addresses are unaffected. A token is only compared (in
//! constant time, by `auth`) once `check` has let the request through, so a refused
//! attempt learns nothing and does not extend the window: a user behind the same NAT
//! as an attacker gets back in when the window ends.
//!
//! Failures are counted apart by who could have caused them ([`Page`]): requests
//! without `Origin` (the CLI, runtimes, an app's backend), the host's own pages, and
//! pages of other origins. Any site the operator visits can have the operator's
//! browser open sockets to the host with made-up tickets; counted with the rest of the
//! address, a few of those would lock out the operator's own CLI, dashboard and
//! runtimes on the same machine. A page can at worst lock out pages like itself.
//!
//! IPv6 addresses count by their /64 (one host usually holds a whole /64, so counting
//! single addresses would let it try 2^64 times), and IPv4-mapped IPv6 as the IPv4
//! address. Memory is bounded: at most `max_tracked_addresses` windows, the oldest
//! forgotten first. A flood from more addresses than that can make the host forget a
//! blocked one early — the price of the bound, and why the default is large.
//!
//! Every operation is O(1) (amortised) under a short-held `std` mutex, never across an
//! `.await`. The clock is injectable so tests move time instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;
use crate::sync::MutexExt;

/// Where the throttle reads the time.
pub(crate) type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

/// An address that failed too often; refuse it for `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed authentication attempts; retry after {}s", self.retry_after_secs())]
pub(crate) struct Throttled {
    /// Until the address's window ends.
    pub(crate) retry_after: Duration,
}

impl Throttled {
    /// Whole seconds for a `Retry-After` header, rounded up and at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// Where a failed authentication came from: an address, and which kind of caller
/// ([`Page`]). Each kind counts apart, so a web page cannot lock the address's tools
/// out; a client forging `Origin` gains two more windows of tries, no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source {
    /// The peer's address, as it connected (the audit log's `remote`).
    pub(crate) addr: IpAddr,
    /// Whether a web page sent the request, and whose.
    pub(crate) page: Page,
}

/// Whether a web page sent a request (a browser's `Origin`), and whether that page is
/// of the host it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Page {
    /// No `Origin`: the CLI, a runtime, an app's backend.
    None,
    /// A page whose origin is the host it calls: the dashboard, or a page whose own
    /// name was made to resolve to the host (DNS rebinding), which cannot be told apart.
    Own,
    /// A page of another host or port, an opaque `null` origin, or one unreadable.
    Other,
}

impl Source {
    /// What the throttle counts `self` by: the address's unit ([`key`]) and the side.
    fn counted(self) -> Self {
        Self {
            addr: key(self.addr),
            ..self
        }
    }
}

impl From<IpAddr> for Source {
    /// A request from `addr` that no web page sent.
    fn from(addr: IpAddr) -> Self {
        Self {
            addr,
            page: Page::None,
        }
    }
}

/// One address's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<Source, Window>,
    /// Addresses in the order their windows started (so oldest first). An entry whose
    /// start no longer matches the map's is stale (that window ended and a new one
    /// began); stale entries are always expired, so dropping expired entries from the
    /// front keeps this queue as long as the map.
    order: VecDeque<(Source, Instant)>,
}

/// Failed-authentication counts by address; share it behind an `Arc`.
pub(crate) struct Throttle {
    config: ThrottleConfig,
    clock: Clock,
    state: Mutex<State>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config)
            .field("tracked", &self.tracked())
            .finish()
    }
}

impl Throttle {
    /// A throttle on the real clock.
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        Self::with_clock(config, Box::new(Instant::now))
    }

    /// A throttle reading the time from `clock` (tests).
    pub(crate) fn with_clock(config: ThrottleConfig, clock: Clock) -> Self {
        Self {
            config,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// Before verifying a token from `remote`: `Err` while callers of its kind at its
    /// address ([`Page`]) are refused.
    pub(crate) fn check(&self, remote: impl Into<Source>) -> Result<(), Throttled> {
        let now = (self.clock)();
        let key = remote.into().counted();
        let mut s = self.state.locked();
        s.expire(now, self.config.window);
        match s.windows.get(&key) {
            Some(w) if w.failures >= self.config.max_failures => Err(Throttled {
                retry_after: (w.start + self.config.window).saturating_duration_since(now),
            }),
            _ => Ok(()),
        }
    }

    /// After a bad or missing token from `remote`: counts it, and says whether the
    /// address is refused from now on.
    pub(crate) fn failed(&self, remote: impl Into<Source>) -> Result<(), Throttled> {
        let now = (self.clock)();
        let key = remote.into().counted();
        let window = self.config.window;
        let mut s = self.state.locked();
        s.expire(now, window);
        let w = match s.windows.get_mut(&key) {
            Some(w) => {
                w.failures = w.failures.saturating_add(1);
                *w
            }
            None => {
                if s.windows.len() >= self.config.max_addresses {
                    s.evict_oldest();
                }
                let w = Window {
                    start: now,
                    failures: 1,
                };
                s.windows.insert(key, w);
                s.order.push_back((key, now));
                w
            }
        };
        if w.failures >= self.config.max_failures {
            Err(Throttled {
                retry_after: (w.start + window).saturating_duration_since(now),
            })
        } else {
            Ok(())
        }
    }

    /// Live windows, an address's and its other-origin pages' apart (for `/metrics`
    /// and tests).
    pub(crate) fn tracked(&self) -> usize {
        self.state.locked().windows.len()
    }
}

impl State {
    /// Forgets windows that have ended; amortised O(1), each entry is popped once.
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(ip, start)) = self.order.front() {
            if start + window > now {
                break;
            }
            self.order.pop_front();
            if self.windows.get(&ip).is_some_and(|w| w.start == start) {
                self.windows.remove(&ip);
            }
        }
    }

    /// Forgets the window that started first.
    fn evict_oldest(&mut self) {
        while let Some((ip, start)) = self.order.pop_front() {
            if self.windows.get(&ip).is_some_and(|w| w.start == start) {
                self.windows.remove(&ip);
                tracing::debug!("failed-auth throttle full; forgot the oldest address");
                return;
            }
        }
    }
}

/// The unit an address is counted by: IPv4 as is, IPv4-mapped IPv6 as IPv4, other
/// IPv6 by its /64.
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::*;

    /// A clock the test moves by hand.
    fn manual() -> (Arc<Mutex<Instant>>, Clock) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        (now, Box::new(move || *read.locked()))
    }

    fn advance(clock: &Mutex<Instant>, by: Duration) {
        *clock.locked() += by;
    }

    fn config(max_failures: u32, max_addresses: usize) -> ThrottleConfig {
        ThrottleConfig {
            max_failures,
            window: Duration::from_secs(60),
            max_addresses,
        }
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn refuses_after_the_limit_until_the_window_ends_without_touching_others() {
        let (now, clock) = manual();
        let t = Throttle::with_clock(config(3, 100), clock);
        let bad = v4(0x0a00_0001);
        let other = v4(0x0a00_0002);
        for _ in 0..2 {
            t.check(bad).unwrap();
            t.failed(bad).unwrap();
        }
        advance(&now, Duration::from_secs(10));
        t.check(bad).unwrap();
        let refused = t.failed(bad).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(50));
        // Refused attempts do not extend the window.
        for _ in 0..100 {
            assert!(t.check(bad).is_err());
        }
        advance(&now, Duration::from_millis(49_500));
        let still = t.check(bad).unwrap_err();
        assert_eq!(still.retry_after_secs(), 1);
        assert!(still.to_string().contains("retry after 1s"), "{still}");
        // Another address is unaffected throughout.
        t.check(other).unwrap();
        t.failed(other).unwrap();
        advance(&now, Duration::from_millis(500));
        t.check(bad).unwrap();
        t.failed(bad).unwrap();
    }

    #[test]
    fn the_default_allows_twenty_failures_a_minute() {
        let t = Throttle::new(ThrottleConfig::default());
        for _ in 0..19 {
            t.failed(v4(7)).unwrap();
        }
        let refused = t.failed(v4(7)).unwrap_err();
        assert!(refused.retry_after_secs() >= 59, "{refused:?}");
        assert!(t.check(v4(7)).is_err() && t.check(v4(8)).is_ok());
    }

    #[test]
    fn each_kind_of_caller_locks_out_only_its_own_kind_at_the_address() {
        let (_now, clock) = manual();
        let t = Throttle::with_clock(config(2, 100), clock);
        let page = |addr, page| Source { addr, page };
        t.failed(page(v4(1), Page::Other)).unwrap();
        assert!(t.failed(page(v4(1), Page::Other)).is_err());
        assert!(t.check(page(v4(1), Page::Other)).is_err());
        // The same address's own callers (CLI, runtimes, the host's dashboard) go on.
        t.check(v4(1)).unwrap();
        t.check(page(v4(1), Page::Own)).unwrap();
        // A page of the host's own origin (or one rebinding its name to the host)
        // locks out such pages, never the address's tools.
        t.failed(page(v4(1), Page::Own)).unwrap();
        assert!(t.failed(page(v4(1), Page::Own)).is_err());
        t.check(v4(1)).unwrap();
        // And the side tools fail on is theirs alone: a forger gains a window, no more.
        t.failed(v4(1)).unwrap();
        assert!(t.failed(v4(1)).is_err());
        assert!(t.check(v4(1)).is_err());
        // Counted by the address's unit, like everything else.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        t.failed(page(a, Page::Other)).unwrap();
        assert!(t.failed(page(b, Page::Other)).is_err());
        t.check(a).unwrap();
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let (_now, clock) = manual();
        let t = Throttle::with_clock(config(2, 100), clock);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        t.failed(a).unwrap();
        assert!(t.failed(b).is_err());
        t.check("2001:db8:1:3::1".parse::<IpAddr>().unwrap())
            .unwrap();
        t.failed("::ffff:192.0.2.1".parse::<IpAddr>().unwrap())
            .unwrap();
        assert!(t.failed("192.0.2.1".parse::<IpAddr>().unwrap()).is_err());
    }

    #[test]
    fn a_flood_from_many_addresses_stays_bounded_and_expires() {
        let (now, clock) = manual();
        let t = Throttle::with_clock(config(5, 1000), clock);
        let blocked = v4(1);
        for _ in 0..5 {
            let _ = t.failed(blocked);
        }
        assert!(t.check(blocked).is_err());
        // Fewer addresses than the cap: the blocked one stays blocked.
        for n in 0..999 {
            t.failed(v4(1_000_000 + n)).unwrap();
        }
        assert_eq!(t.tracked(), 1000);
        assert!(t.check(blocked).is_err());
        // A hundred thousand more: memory stays at the cap, oldest forgotten first.
        for n in 0..100_000 {
            advance(&now, Duration::from_micros(1));
            t.failed(v4(2_000_000 + n)).unwrap();
            assert!(t.tracked() <= 1000);
        }
        let s = t.state.locked();
        assert_eq!((s.windows.len(), s.order.len()), (1000, 1000));
        drop(s);
        t.check(blocked).unwrap();
        // Every window ends a minute after it began.
        advance(&now, Duration::from_secs(61));
        t.check(v4(2_000_000 + 99_999)).unwrap();
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn a_new_window_after_expiry_leaves_no_stale_entries() {
        let (now, clock) = manual();
        let t = Throttle::with_clock(config(3, 10), clock);
        for round in 0..50 {
            for n in 0..5 {
                let _ = t.failed(v4(n));
            }
            advance(
                &now,
                Duration::from_secs(if round % 2 == 0 { 61 } else { 30 }),
            );
        }
        let s = t.state.locked();
        assert!(s.order.len() <= s.windows.len() + 5, "{}", s.order.len());
        assert!(s.windows.len() <= 10);
    }
}
