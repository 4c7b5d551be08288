//! The native stacks provider code runs on. wasmtime runs every async call on a
//! fiber with a stack of its own, and each store keeps the stack of its last call for
//! the next one. Left to wasmtime, an idle instance therefore holds every page its
//! calls ever touched (about 8 KiB each; at 10,000 environments, 80 MiB for stacks
//! nobody is running on), and every instance maps a fresh stack at start-up and
//! unmaps it at the end.
//!
//! The stacks made here have wasmtime's layout (a guard region below, zero-filled
//! anonymous memory) and two differences:
//! - a store's stack goes back to the kernel once its instance has made no call for
//!   [`IDLE`]: its pages are given back and it is made inaccessible like its guard
//!   region, so the kernel merges the two, and the inaccessible guard regions of the
//!   linear memories or parked stacks next to them, into one mapping: an idle
//!   instance's stack costs no memory and usually no mapping of its own (Linux caps
//!   a process's mappings, see `engine/mod.rs`); the next call makes it read-write
//!   again and faults in the few pages it uses;
//! - the stack of an ended instance is zeroed and kept (up to [`KEPT`]) for the next
//!   instance instead of unmapped, which spares a start two mapping calls.
//!
//! A stack is only ever zeroed or parked while no fiber can be on it: while its
//! instance is in a call ([`StackSlot::run`]) the sweeper leaves it alone, and one
//! handed back by wasmtime has no fiber left.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::Range;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::{StackCreator, StackMemory};

use crate::sync::MutexExt;

/// How long an instance makes no call before its stack's pages are given back.
#[cfg(not(test))]
pub(crate) const IDLE: Duration = Duration::from_secs(1);
/// Unit tests sweep by hand (`Stacks::sweep_ahead`); the sweeper thread must not zero
/// a stack under a test that has just stalled for a second.
#[cfg(test)]
pub(crate) const IDLE: Duration = Duration::from_secs(3600);
/// How often the sweeper looks for idle instances.
const SWEEP: Duration = Duration::from_millis(500);
/// Zeroed stacks kept for the next instances (a burst of starts after a burst of
/// ends reuses them; beyond this many they are unmapped).
const KEPT: usize = 64;
/// The huge page size of x86-64 and AArch64 with 4 KiB pages: what Linux aligns
/// anonymous mappings of a multiple of it to.
const HUGE_PAGE: usize = 2 << 20;

thread_local! {
    /// Set while a tracked store is polled on this thread: the stacks wasmtime asks
    /// for then are that store's.
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    /// The stack made during the tracked poll in progress, if one was.
    static MADE: RefCell<Option<Weak<Stack>>> = const { RefCell::new(None) };
}

/// The engine's fiber stacks: the [`StackCreator`] wasmtime is configured with.
pub(crate) struct Stacks {
    kept: Arc<Kept>,
    /// Every instance's slot, for the sweeper (dead ones are pruned as it goes).
    slots: Mutex<Vec<Weak<Mutex<SlotState>>>>,
}

impl Stacks {
    /// The stacks, with a sweeper thread that lives as long as they do.
    pub(crate) fn new() -> Arc<Self> {
        let stacks = Arc::new(Self {
            kept: Arc::new(Kept::default()),
            slots: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&stacks);
        let spawned = std::thread::Builder::new()
            .name("tether-stacks".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(SWEEP);
                    let Some(stacks) = weak.upgrade() else { return };
                    stacks.sweep(Instant::now());
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the stack sweeper; idle instances keep their stacks' pages");
        }
        stacks
    }

    /// A slot for one instance's store: run everything that executes its guest code
    /// through [`StackSlot::run`].
    pub(crate) fn slot(&self) -> StackSlot {
        let state = Arc::new(Mutex::new(SlotState {
            stack: None,
            busy: 0,
            since: Instant::now(),
            resident: false,
        }));
        self.slots.locked().push(Arc::downgrade(&state));
        StackSlot { state }
    }

    /// Parks the stacks of instances idle since before `now - IDLE`: their pages go
    /// back to the kernel and the stack shares one mapping with its guard region.
    fn sweep(&self, now: Instant) {
        // Parking takes a system call per stack: not under the list's lock, which
        // every new instance takes.
        let slots: Vec<_> = {
            let mut slots = self.slots.locked();
            slots.retain(|slot| slot.strong_count() > 0);
            slots.iter().filter_map(Weak::upgrade).collect()
        };
        for slot in slots {
            let mut state = slot.locked();
            if state.busy == 0 && state.resident && now.duration_since(state.since) >= IDLE {
                if let Some(stack) = state.stack.as_ref().and_then(Weak::upgrade) {
                    // No call is in progress (and none can start while we hold the
                    // slot), so no fiber is on this stack.
                    stack.region.park();
                }
                state.resident = false;
            }
        }
    }

    /// Stacks kept for reuse now (for tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.kept.regions.locked().len()
    }

    /// Resident pages of the stacks slots know of, and how many slots have one (for
    /// tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> (usize, usize) {
        let slots = self.slots.locked();
        let stacks: Vec<_> = slots
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|s| s.locked().stack.as_ref().and_then(Weak::upgrade))
            .collect();
        let pages = stacks
            .iter()
            .map(|s| tests::resident(s.region.stack()))
            .sum();
        (pages, stacks.len())
    }

    /// Sweeps as if it were `ahead` later (for tests).
    #[cfg(test)]
    pub(crate) fn sweep_ahead(&self, ahead: Duration) {
        self.sweep(Instant::now() + ahead);
    }
}

// SAFETY: every stack handed out is a fresh or zeroed anonymous mapping of at least
// `size` bytes, page aligned, with an inaccessible guard region below it; it stays
// mapped until wasmtime drops the `StackMemory` (see `Region`).
unsafe impl StackCreator for Stacks {
    fn new_stack(
        &self,
        size: usize,
        _zeroed: bool,
    ) -> Result<Box<dyn StackMemory>, wasmtime::Error> {
        let region = match self.kept.take(size) {
            Some(region) => region,
            None => Region::map(size)?,
        };
        let stack = Arc::new(Stack {
            region,
            kept: self.kept.clone(),
        });
        if TRACKING.get() {
            MADE.with_borrow_mut(|made| *made = Some(Arc::downgrade(&stack)));
        }
        Ok(Box::new(StackHandle(stack)))
    }
}

/// Where one instance's store stands, for the sweeper.
struct SlotState {
    /// The stack the store's calls run on (the store owns it).
    stack: Option<Weak<Stack>>,
    /// Calls in progress (start-up and calls never overlap, but a cancelled call's
    /// future may still be dropping when the next begins).
    busy: u32,
    /// When the last call ended.
    since: Instant,
    /// Whether the stack may hold pages (a call ran on it since it was zeroed). Until
    /// one has, the stack may be parked and is opened before the next call.
    resident: bool,
}

/// One instance's entry with the sweeper.
pub(crate) struct StackSlot {
    state: Arc<Mutex<SlotState>>,
}

impl StackSlot {
    /// Runs `work` (a call into the guest or its start-up) with the stack in use: the
    /// sweeper leaves it alone until `work` completes or is dropped. An error, and
    /// `work` not run, when a parked stack cannot be made read-write again (the
    /// process is at the kernel's cap on mappings).
    pub(crate) async fn run<T, F>(&self, work: F) -> wasmtime::Result<T>
    where
        F: Future<Output = wasmtime::Result<T>>,
    {
        let _busy = Busy::new(&self.state)?;
        // Declared after `_busy`, so dropped first: the fiber is gone before the
        // stack counts as idle.
        let mut work = pin!(work);
        std::future::poll_fn(|cx| {
            let polled = {
                let _tracking = Tracking::begin();
                work.as_mut().poll(cx)
            };
            if let Some(made) = MADE.take() {
                self.state.locked().stack = Some(made);
            }
            polled
        })
        .await
    }
}

/// A tracked poll on this thread; ends (even by a panic) when dropped, so a stack
/// made by another store's later poll is never taken for this one's.
struct Tracking;

impl Tracking {
    fn begin() -> Self {
        MADE.take();
        TRACKING.set(true);
        Tracking
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        TRACKING.set(false);
    }
}

/// A call in progress on a slot.
struct Busy<'a>(&'a Mutex<SlotState>);

impl<'a> Busy<'a> {
    fn new(state: &'a Mutex<SlotState>) -> wasmtime::Result<Self> {
        // Waits out a sweep parking this stack right now (a few microseconds).
        let mut s = state.locked();
        if !s.resident
            && let Some(stack) = s.stack.as_ref().and_then(Weak::upgrade)
        {
            stack.region.unpark()?;
        }
        s.busy += 1;
        s.resident = true;
        drop(s);
        Ok(Self(state))
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut s = self.0.locked();
        s.busy = s.busy.saturating_sub(1);
        s.since = Instant::now();
    }
}

/// A stack: its mapping, given back to `kept` when wasmtime is done with it.
struct Stack {
    region: Region,
    kept: Arc<Kept>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let region = std::mem::replace(&mut self.region, Region::empty());
        self.kept.give_back(region);
    }
}

/// What wasmtime holds of a stack.
struct StackHandle(Arc<Stack>);

// SAFETY: the range is the mapping above its guard region, read-write, page aligned,
// and mapped for as long as this handle lives (it holds the `Stack`).
unsafe impl StackMemory for StackHandle {
    fn top(&self) -> *mut u8 {
        self.0.region.stack().end as *mut u8
    }

    fn range(&self) -> Range<usize> {
        self.0.region.stack()
    }

    fn guard_range(&self) -> Range<*mut u8> {
        let base = self.0.region.base;
        base as *mut u8..(base + self.0.region.guard) as *mut u8
    }
}

/// Zeroed stacks waiting for the next instances.
#[derive(Default)]
struct Kept {
    regions: Mutex<Vec<Region>>,
}

impl Kept {
    fn take(&self, size: usize) -> Option<Region> {
        let mut regions = self.regions.locked();
        let at = regions.iter().position(|r| r.len - r.guard >= size)?;
        Some(regions.swap_remove(at))
    }

    fn give_back(&self, region: Region) {
        if region.len == 0 {
            return;
        }
        // A parked stack is handed out again only once it is read-write.
        if region.unpark().is_err() {
            return; // `region` drops here, unmapping it.
        }
        region.zero();
        let mut regions = self.regions.locked();
        if regions.len() < KEPT {
            regions.push(region);
        }
        // Otherwise `region` drops here, unmapping it.
    }
}

/// An anonymous mapping: a guard region (a page at least), then the stack. Unmapped
/// on drop.
struct Region {
    base: usize,
    /// The whole mapping, guard region included.
    len: usize,
    /// The guard region's length.
    guard: usize,
    /// Whether the stack part is parked: inaccessible, like the guard region.
    parked: AtomicBool,
}

impl Region {
    /// No mapping: what a dropped [`Stack`] leaves in place of the region it gave back.
    fn empty() -> Region {
        Region {
            base: 0,
            len: 0,
            guard: 0,
            parked: AtomicBool::new(false),
        }
    }

    /// Maps a stack of at least `size` bytes with a guard region below it.
    fn map(size: usize) -> Result<Region, wasmtime::Error> {
        let page = page_size();
        let stack = size.div_ceil(page).max(1) * page;
        // A whole number of huge pages: Linux places such anonymous mappings (linear
        // memories' reservations among them) at huge-page boundaries, so a stack of
        // any other length would leave a gap beside the next memory and could not
        // merge with it. The slack goes to the guard region.
        let len = (stack + page).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        // Mapped inaccessible and without a reservation of swap, as wasmtime maps the
        // reservations and guard regions of linear memories, then opened above the
        // guard region. So the guard region, a parked stack and the memories'
        // inaccessible regions next to them are alike down to their accounting, and
        // the kernel merges them into one mapping.
        // SAFETY: a new private anonymous mapping, touching no existing memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(mapping_failed());
        }
        // From here on `region` unmaps it if anything fails.
        let region = Region {
            base: base as usize,
            len,
            guard: len - stack,
            parked: AtomicBool::new(true),
        };
        region.unpark()?;
        Ok(region)
    }

    /// The stack's part of the mapping.
    fn stack(&self) -> Range<usize> {
        self.base + self.guard..self.base + self.len
    }

    /// Gives the stack's pages back to the kernel and makes it inaccessible, like its
    /// guard region, so the kernel merges the two (and the inaccessible regions next
    /// to them) into one mapping. If the kernel refuses the second step, the stack
    /// stays read-write, its pages given back. Only called when no fiber is on the
    /// stack.
    fn park(&self) {
        if self.len == 0 || self.parked.load(Ordering::Acquire) {
            return;
        }
        self.zero();
        // Nothing is using the stack (see the callers). Unlike a fresh mapping laid
        // over it, an `mprotect` that fails leaves the mapping as it was.
        if let Err(error) = self.protect_stack(libc::PROT_NONE) {
            tracing::warn!(%error, "could not park an idle fiber stack");
            return;
        }
        self.parked.store(true, Ordering::Release);
    }

    /// Makes a parked stack read-write again (zero-filled); nothing if it is not
    /// parked.
    fn unpark(&self) -> wasmtime::Result<()> {
        if !self.parked.load(Ordering::Acquire) {
            return Ok(());
        }
        self.protect_stack(libc::PROT_READ | libc::PROT_WRITE)
            .map_err(|e| {
                wasmtime::Error::msg(format!(
                    "opening a fiber stack: {e} (the process may be at vm.max_map_count)"
                ))
            })?;
        self.parked.store(false, Ordering::Release);
        Ok(())
    }

    /// Sets the protection of the stack part (not the guard region) to `prot`.
    fn protect_stack(&self, prot: libc::c_int) -> std::io::Result<()> {
        let stack = self.stack();
        // SAFETY: the range is this mapping's own stack part; only its protection
        // changes, and the callers make sure no fiber is on it when it closes.
        let done = unsafe { libc::mprotect(stack.start as *mut libc::c_void, stack.len(), prot) };
        if done == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Gives the stack's pages back to the kernel; they read as zeros when next
    /// touched. Only called when no fiber is on the stack.
    fn zero(&self) {
        if self.len == 0 {
            return;
        }
        let stack = self.stack();
        // SAFETY: the range is this mapping's own private anonymous memory, which
        // nothing is using (see the callers).
        let done = unsafe {
            libc::madvise(
                stack.start as *mut libc::c_void,
                stack.len(),
                libc::MADV_DONTNEED,
            )
        };
        if done != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "could not give a fiber stack's pages back");
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: the mapping is ours and nothing refers to it any more.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

/// The error of the mapping call that just failed.
fn mapping_failed() -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "mapping a fiber stack: {}",
        std::io::Error::last_os_error()
    ))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `range` resident now (from `mincore`).
    pub(super) fn resident(range: Range<usize>) -> usize {
        let page = page_size();
        let mut vec = vec![0u8; range.len().div_ceil(page)];
        // SAFETY: the range is a live mapping of the test's; `vec` has a byte per page.
        let ok = unsafe {
            libc::mincore(
                range.start as *mut libc::c_void,
                range.len(),
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(ok, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    /// How many of this process's mappings cover `stack` and its guard region (from
    /// `/proc/self/maps`).
    fn mappings(stack: &dyn StackMemory) -> usize {
        let whole = stack.guard_range().start as usize..stack.range().end;
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        maps.lines()
            .filter_map(|line| {
                let (a, b) = line.split_whitespace().next()?.split_once('-')?;
                Some(usize::from_str_radix(a, 16).ok()?..usize::from_str_radix(b, 16).ok()?)
            })
            .filter(|m| m.start < whole.end && whole.start < m.end)
            .count()
    }

    fn touch(range: &Range<usize>, pages: usize) {
        let page = page_size();
        for i in 1..=pages {
            // SAFETY: inside the stack's read-write range.
            unsafe { std::ptr::write_volatile((range.end - i * page) as *mut u8, 7) };
        }
    }

    #[tokio::test]
    async fn an_idle_instances_stack_is_given_back_and_a_busy_ones_is_not() {
        let stacks = Stacks::new();
        let slot = stacks.slot();
        // wasmtime asks for the stack inside the store's poll, as a call does.
        let memory = slot
            .run(async { stacks.new_stack(64 << 10, false) })
            .await
            .expect("stack");
        let range = memory.range();
        assert_eq!(range.len(), 64 << 10);
        assert_eq!(range.start % page_size(), 0);
        assert_eq!(memory.guard_range().end as usize, range.start);
        // Guard region and stack fill whole huge pages, as memory reservations do.
        let whole = memory.guard_range().start as usize..range.end;
        assert_eq!(whole.len() % HUGE_PAGE, 0);
        assert!(whole.len() - range.len() >= page_size());
        touch(&range, 3);
        assert_eq!(resident(range.clone()), 3);

        // Not idle long enough yet.
        stacks.sweep(Instant::now());
        assert_eq!(resident(range.clone()), 3);

        // A call in progress keeps its pages however long it takes.
        let later = Instant::now() + IDLE * 2;
        slot.run(async {
            stacks.sweep(later);
            assert_eq!(resident(range.clone()), 3, "zeroed under a running call");
            Ok(())
        })
        .await
        .expect("run");
        assert_eq!(mappings(&*memory), 2, "a used stack and its guard region");

        // Idle past IDLE: given back, parked (one mapping with its guard region), and
        // read-write zeros again for the next call.
        stacks.sweep(Instant::now() + IDLE * 2);
        assert_eq!(resident(range.clone()), 0);
        assert_eq!(mappings(&*memory), 1, "parked with its guard region");
        let byte = slot
            .run(async {
                // SAFETY: inside the stack's range, read-write while a call runs.
                Ok(unsafe { std::ptr::read_volatile((range.end - 1) as *const u8) })
            })
            .await
            .expect("run");
        assert_eq!(byte, 0);
        assert_eq!(mappings(&*memory), 2, "open again for the call");

        // Ended instances' stacks are kept zeroed for the next, a parked one too.
        touch(&range, 2);
        stacks.sweep(Instant::now() + IDLE * 2);
        assert_eq!(mappings(&*memory), 1);
        drop(memory);
        assert_eq!(stacks.kept(), 1);
        let again = stacks.new_stack(64 << 10, false).expect("stack");
        assert_eq!(again.range(), range, "the kept stack is reused");
        assert_eq!(resident(again.range()), 0, "and handed out zeroed");
        assert_eq!(mappings(&*again), 2, "and read-write");
        touch(&again.range(), 1);
        assert_eq!(stacks.kept(), 0);
    }

    #[test]
    fn stacks_made_outside_a_tracked_poll_belong_to_no_slot() {
        let stacks = Stacks::new();
        let slot = stacks.slot();
        let _untracked = stacks.new_stack(16 << 10, false).expect("stack");
        assert!(slot.state.locked().stack.is_none());
        drop(slot);
        stacks.sweep(Instant::now());
        assert!(stacks.slots.locked().is_empty(), "dead slots are pruned");
    }
}
