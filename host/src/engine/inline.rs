//! The meter on guest code run in callers' tasks (see [`super::handle`]): how much of
//! the API's and the relay's runtime guests may take, across the whole host.
//!
//! A step as quick as [`FREE_STEP`] (an instantiation as quick as
//! [`FREE_START_UP`]) costs the caller less than handing the call to the guest
//! executor would (that hand-off is two thread wake-ups), so it is not metered.
//! Longer steps draw on one credit for all instances, [`BURST`] at most,
//! refilled at [`SHARE`] of the time that passes: a first step is taken in the
//! caller's task only while the credit is positive; what a long step spends is
//! charged afterwards, so the credit can go into debt, and the debt is repaid before
//! the next step: over any long stretch, long steps take at most that share. On top of
//! it, an instance whose first steps took longer than [`STEP_LIMIT`] [`STRIKES`] times
//! within [`STRIKE_WINDOW`] (it computes or spins until a tick) is sent to the guest
//! executor for good. One long step is not enough: a step is timed by the wall clock,
//! and on a busy machine the OS deschedules a thread for a few milliseconds now and
//! then, mid-step, whatever the guest does; that seldom happens to one instance three
//! times in a minute, while a guest that computes does it on every call it is given.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::MutexExt;

/// The most credit that builds up while guests are idle.
pub(crate) const BURST: Duration = Duration::from_millis(10);
/// Elapsed time is divided by this to refill the credit: guests may take 1 % of one
/// thread of the API's runtime in callers' tasks.
pub(crate) const SHARE: u32 = 100;
/// A first step this quick is not metered: about what relaying one frame costs.
pub(crate) const FREE_STEP: Duration = Duration::from_micros(20);
/// An instantiation this quick is not metered either: most of it is the host's own
/// work (wasmtime mapping the instance's memory and stack, building its tables), which
/// the guest executor would do at the same cost plus the hand-off; only the guest's
/// start-up functions are guest code, and a slow one still runs over it and is charged.
pub(crate) const FREE_START_UP: Duration = Duration::from_micros(250);
/// A first step longer than this is a strike against its instance.
pub(crate) const STEP_LIMIT: Duration = Duration::from_millis(1);
/// Strikes within [`STRIKE_WINDOW`] that send an instance to the guest executor for
/// good.
pub(crate) const STRIKES: u32 = 3;
/// How long strikes count against an instance.
pub(crate) const STRIKE_WINDOW: Duration = Duration::from_secs(60);

/// The host's credit of inline guest time.
#[derive(Debug)]
pub(crate) struct InlineBudget {
    meter: Mutex<Meter>,
}

#[derive(Debug)]
struct Meter {
    /// Nanoseconds left; negative: owed.
    left: i128,
    at: Instant,
}

impl Meter {
    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at) / SHARE;
        self.at = now;
        self.left = (self.left + earned.as_nanos() as i128).min(BURST.as_nanos() as i128);
    }
}

impl Default for InlineBudget {
    fn default() -> Self {
        Self {
            meter: Mutex::new(Meter {
                left: BURST.as_nanos() as i128,
                at: Instant::now(),
            }),
        }
    }
}

impl InlineBudget {
    /// Whether a first step may be taken in the caller's task now.
    pub(crate) fn available(&self, now: Instant) -> bool {
        let mut m = self.meter.locked();
        m.refill(now);
        m.left > 0
    }

    /// Charges a first step that took `spent`; false if it took longer than
    /// [`STEP_LIMIT`] (a strike against its instance, see [`Strikes`]).
    pub(crate) fn charge(&self, spent: Duration, now: Instant) -> bool {
        self.charge_over(spent, FREE_STEP, now)
    }

    /// [`Self::charge`] for an instantiation (see [`FREE_START_UP`]).
    pub(crate) fn charge_start_up(&self, spent: Duration, now: Instant) -> bool {
        self.charge_over(spent, FREE_START_UP, now)
    }

    fn charge_over(&self, spent: Duration, free: Duration, now: Instant) -> bool {
        if spent > free {
            let mut m = self.meter.locked();
            m.refill(now);
            m.left -= spent.as_nanos() as i128;
        }
        spent <= STEP_LIMIT
    }
}

/// The long first steps of one instance (see the top of this file).
#[derive(Debug, Default)]
pub(crate) struct Strikes {
    /// When the current window began, and the strikes in it.
    window: Mutex<Option<(Instant, u32)>>,
}

impl Strikes {
    /// Counts a long step taken at `now`; true once the instance is to leave callers'
    /// tasks for good.
    pub(crate) fn strike(&self, now: Instant) -> bool {
        let mut window = self.window.locked();
        let (began, strikes) = match *window {
            Some((began, n)) if now.saturating_duration_since(began) < STRIKE_WINDOW => {
                (began, n + 1)
            }
            _ => (now, 1),
        };
        *window = Some((began, strikes));
        strikes >= STRIKES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps of `step` every `every`, for `secs` of simulated time: how many were
    /// allowed in callers' tasks.
    fn run(step: Duration, every: Duration, secs: u64) -> (u64, u64) {
        let budget = InlineBudget::default();
        let start = budget.meter.locked().at;
        let (mut inline, mut total) = (0, 0);
        let mut now = start;
        while now < start + Duration::from_secs(secs) {
            total += 1;
            if budget.available(now) {
                inline += 1;
                budget.charge(step, now + step);
            }
            now += every;
        }
        (inline, total)
    }

    #[test]
    fn quick_steps_all_run_inline() {
        // 2 µs back to back: quick steps are not metered.
        let (inline, total) = run(Duration::from_micros(2), Duration::from_micros(2), 2);
        assert_eq!(inline, total);
        // 100 µs every 100 ms: 0.1 % of the time, within the 1 % share.
        let (inline, total) = run(Duration::from_micros(100), Duration::from_millis(100), 60);
        assert_eq!(inline, total);
    }

    #[test]
    fn guests_never_take_more_than_their_share_over_time() {
        // 50 µs every 100 µs would be 50 %; the meter holds it to about 1 % (plus the burst).
        let secs = 60;
        let (inline, _) = run(Duration::from_micros(50), Duration::from_micros(100), secs);
        let taken = Duration::from_micros(50) * inline as u32;
        let allowed = Duration::from_secs(secs) / SHARE + BURST + Duration::from_micros(50);
        assert!(taken <= allowed, "{taken:?} > {allowed:?}");
        assert!(
            taken >= allowed / 2,
            "the share is used, not wasted: {taken:?}"
        );
    }

    #[test]
    fn quick_instantiations_are_not_metered_and_slow_ones_are() {
        let budget = InlineBudget::default();
        let at = budget.meter.locked().at;
        // A hundred thousand back to back at 200 µs: 20 s of host work, never metered.
        for _ in 0..100_000 {
            assert!(budget.charge_start_up(Duration::from_micros(200), at));
        }
        assert!(budget.available(at));
        // Slower ones are charged in full: twelve of 900 µs use up the 10 ms credit
        // (as fifty of 200 µs would, as calls' steps).
        for _ in 0..12 {
            assert!(budget.charge_start_up(Duration::from_micros(900), at));
        }
        assert!(!budget.available(at));
    }

    #[test]
    fn an_instance_leaves_for_good_after_three_long_steps_within_a_minute() {
        let strikes = Strikes::default();
        let at = Instant::now();
        assert!(!strikes.strike(at));
        assert!(!strikes.strike(at + Duration::from_secs(30)));
        // Two a minute apart, as a descheduled thread might: the count starts over.
        assert!(!strikes.strike(at + STRIKE_WINDOW + Duration::from_secs(1)));
        assert!(!strikes.strike(at + STRIKE_WINDOW + Duration::from_secs(2)));
        assert!(strikes.strike(at + STRIKE_WINDOW + Duration::from_secs(3)));
    }

    #[test]
    fn a_long_step_is_told_to_leave_and_its_debt_is_repaid_first() {
        let budget = InlineBudget::default();
        let at = budget.meter.locked().at;
        assert!(!budget.charge(Duration::from_millis(20), at));
        // 10 ms of debt takes 1 s of elapsed time to repay.
        assert!(!budget.available(at + Duration::from_millis(900)));
        assert!(budget.available(at + Duration::from_millis(1_100)));
    }
}
