//! The heap registry: where other threads find a heap whose owner has gone
//! idle, so they can give its waiting memory back to the OS for it.
//!
//! A fixed array of entries, one per live heap (thread heaps and
//! first-class heaps). An entry's `state` word is at once its ownership and a
//! small lock:
//!
//! ```text
//!            claim (CAS)             publish (store)
//!   FREE ─────────────────► LOCKED ─────────────────► OWNED
//!     ▲                        ▲ │                       │
//!     │    release (store)     │ │ unlock (store)        │ lock / try_lock (CAS)
//!     └────────────────────────┘ └──────────► OWNED ◄────┘
//! ```
//!
//! * The owner holds the lock for the whole of every heap slow path that
//!   touches page slots, segments or the reset queue (allocation slow path,
//!   a free that empties a page, collect, thread exit), waiting (spin, then
//!   yield) for a reaper that holds it. The fast paths never take it: they
//!   touch only pages in use, which nobody else touches.
//! * The forking thread holds every entry's lock across `fork`
//!   ([`HeapRegistry::lock_all_for_fork`]; `docs/design.md` §5).
//! * Another thread (the *reaper*) takes it with `try_lock`, never waiting,
//!   to give back the memory of page slots whose reset delay expired long
//!   ago (`RawHeap::reap_idle_heaps`), and to read the heap's live bytes for `stats()`.
//! * A heap's memory is never unmapped while its entry exists: the entry keeps
//!   it for the next heap, so a pointer read under the lock always points at
//!   a heap, and the hint `reset_due_ms`, read before locking, lives in the
//!   entry rather than in the heap.
//!
//! Heaps beyond the registry's capacity work normally but are not visible to
//! reapers or to the live-bytes statistic.
//!
//! The protocol is specified by the loom model `reaper_races_owner_reuse`
//! (`loom-tests/tests/reaper.rs`).

use crate::heap::RawHeap;
use crate::sync::{AtomicPtr, AtomicUsize, Ordering, spin_hint, yield_thread};
use core::ptr;

/// No heap uses the entry (it may keep the memory of a former one).
const FREE: usize = 0;
/// A heap uses the entry; nobody holds its lock.
const OWNED: usize = 1;
/// A heap uses the entry and a thread holds its lock.
const LOCKED: usize = 2;

/// Spins of a waiting `Entry::lock` before it starts yielding (a reaper's
/// pass over a heap is short; a preempted reaper is not).
const SPINS_BEFORE_YIELD: u32 = 100;

/// How many times the forking thread yields to a heap's holder before it
/// leaves that heap out of the fork (see `lock_all_for_fork`).
const FORK_LOCK_ROUNDS: usize = 256;

/// `reset_due_ms` of a heap with nothing waiting for its reset.
pub(crate) const NOTHING_DUE: usize = usize::MAX;

/// Slots in the registry.
#[cfg(not(loom))]
const CAPACITY: usize = 1024;
#[cfg(loom)]
const CAPACITY: usize = 4;

/// One heap's entry.
pub(crate) struct Entry {
    state: AtomicUsize,
    /// The heap (or the memory of the last heap that used the entry).
    heap: AtomicPtr<RawHeap>,
    /// When the heap's oldest empty page slot is due for its reset, in
    /// `os::now_ms` milliseconds; [`NOTHING_DUE`] if none waits. A hint,
    /// written by whoever holds the lock.
    reset_due_ms: AtomicUsize,
    /// When the owner last passed through a slow path (`os::now_ms`, coarse:
    /// written every so many slow paths). A hint for reapers.
    active_ms: AtomicUsize,
    /// Whose lock the entry is under across a `fork` (see
    /// `HeapRegistry::lock_all_for_fork`): [`NOT_HELD`], [`HELD_BY_OWNER`]
    /// or [`HELD_FOR_FORK`]. Only the thread holding the fork lock touches
    /// it.
    fork_hold: AtomicUsize,
}

/// `fork_hold`: the entry is not held across a fork.
const NOT_HELD: usize = 0;
/// `fork_hold`: a heap of the forking thread, whose own lock it holds.
const HELD_BY_OWNER: usize = 1;
/// `fork_hold`: another thread's heap, locked by the forking thread.
const HELD_FOR_FORK: usize = 2;

impl Entry {
    #[cfg(not(loom))]
    const fn new() -> Entry {
        Entry {
            state: AtomicUsize::new(FREE),
            heap: AtomicPtr::new(ptr::null_mut()),
            reset_due_ms: AtomicUsize::new(NOTHING_DUE),
            active_ms: AtomicUsize::new(0),
            fork_hold: AtomicUsize::new(NOT_HELD),
        }
    }

    #[cfg(loom)]
    fn new() -> Entry {
        Entry {
            state: AtomicUsize::new(FREE),
            heap: AtomicPtr::new(ptr::null_mut()),
            reset_due_ms: AtomicUsize::new(NOTHING_DUE),
            active_ms: AtomicUsize::new(0),
            fork_hold: AtomicUsize::new(NOT_HELD),
        }
    }

    /// The memory a former heap of this entry left behind (null if none).
    /// Only while the caller holds the entry from `claim`.
    pub(crate) fn spare_memory(&self) -> *mut RawHeap {
        // Relaxed: written by the previous holder before its Release
        // `release`, which our Acquire `claim` paired with.
        self.heap.load(Ordering::Relaxed)
    }

    /// Ends a `claim`: `heap` (initialised) is now reachable through the
    /// entry, unlocked.
    pub(crate) fn publish(&self, heap: *mut RawHeap) {
        // Relaxed: made visible by the Release store below.
        self.heap.store(heap, Ordering::Relaxed);
        // Relaxed: only the lock holder writes it.
        self.reset_due_ms.store(NOTHING_DUE, Ordering::Relaxed);
        // Release pairs with the Acquire CAS of `lock`/`try_lock`: whoever
        // locks next sees the initialised heap.
        self.state.store(OWNED, Ordering::Release);
    }

    /// Takes the lock, waiting for a reaper that holds it (the owner's
    /// path; reapers hold it for a bounded amount of work). Spins a little,
    /// then yields: a holder preempted mid-pass gets the processor back
    /// instead of the owner spinning out its time slice.
    pub(crate) fn lock(&self) {
        let mut spins = 0u32;
        while !self.try_lock() {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                spin_hint();
            } else {
                #[cfg(test)]
                tests::LOCK_YIELDS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                yield_thread();
            }
        }
    }

    /// Takes the lock if the entry holds a heap and nobody holds the lock.
    pub(crate) fn try_lock(&self) -> bool {
        // Acquire pairs with the Release of `unlock`/`publish`: the previous
        // holder's writes to the heap are visible to us.
        self.state
            .compare_exchange(OWNED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Like `try_lock`, but waits (yielding) up to `rounds` times for a
    /// holder to finish. For readers that must not block forever (a entry
    /// left locked by a thread that vanished in `fork`).
    pub(crate) fn lock_bounded(&self, rounds: usize) -> bool {
        for _ in 0..rounds {
            if self.try_lock() {
                return true;
            }
            // Relaxed: only a hint that waiting is pointless.
            if self.state.load(Ordering::Relaxed) == FREE {
                return false;
            }
            yield_thread();
        }
        false
    }

    /// Lets go of the lock.
    pub(crate) fn unlock(&self) {
        // Release pairs with the Acquire of the next `lock`/`try_lock`.
        self.state.store(OWNED, Ordering::Release);
    }

    /// Gives the entry up (the caller holds the lock, the heap is torn down);
    /// the heap's memory stays with the entry for the next heap.
    pub(crate) fn release(&self) {
        // Relaxed: only the lock holder writes it.
        self.reset_due_ms.store(NOTHING_DUE, Ordering::Relaxed);
        // Release pairs with the Acquire of the next `claim`.
        self.state.store(FREE, Ordering::Release);
    }

    /// The heap; meaningful only while the caller holds the lock.
    pub(crate) fn heap(&self) -> *mut RawHeap {
        // Relaxed: written before the Release `publish`, which the caller's
        // Acquire lock paired with.
        self.heap.load(Ordering::Relaxed)
    }

    /// Records when the heap's oldest waiting page slot is due (the lock
    /// holder, whenever the head of the heap's reset queue changes).
    pub(crate) fn set_reset_due(&self, due_ms: usize) {
        // Relaxed: a hint; the reaper re-checks under the lock.
        self.reset_due_ms.store(due_ms, Ordering::Relaxed);
    }

    /// Records that the owner is active at `now_ms` (the owner, on its slow
    /// paths; no lock needed).
    pub(crate) fn set_active(&self, now_ms: usize) {
        // Relaxed: a hint; nothing is published through it.
        self.active_ms.store(now_ms, Ordering::Relaxed);
    }

    /// See `set_active`.
    pub(crate) fn active(&self) -> usize {
        // Relaxed: a hint (see `set_active`).
        self.active_ms.load(Ordering::Relaxed)
    }

    /// See `set_reset_due`.
    pub(crate) fn reset_due(&self) -> usize {
        // Relaxed: a hint (see `set_reset_due`).
        self.reset_due_ms.load(Ordering::Relaxed)
    }
}

/// The registry. See the module documentation.
pub(crate) struct HeapRegistry {
    entries: [Entry; CAPACITY],
    /// One past the highest entry ever claimed: reapers look no further.
    high_water: AtomicUsize,
    /// `os::now_ms` before which no slow path starts another reaping pass.
    next_reap_ms: AtomicUsize,
    /// `os::now_ms` before which no reaping pass looks through the
    /// abandoned segments again (a walk over all of them).
    next_reclaim_ms: AtomicUsize,
    /// Held (1) by a thread between the prepare and the after-fork handlers
    /// of its `fork`: forks are serialised, so one thread at a time marks
    /// entries in `fork_hold`.
    fork_lock: AtomicUsize,
}

impl HeapRegistry {
    /// An empty registry.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> HeapRegistry {
        HeapRegistry {
            entries: [const { Entry::new() }; CAPACITY],
            high_water: AtomicUsize::new(0),
            next_reap_ms: AtomicUsize::new(0),
            next_reclaim_ms: AtomicUsize::new(0),
            fork_lock: AtomicUsize::new(0),
        }
    }

    /// An empty registry.
    #[cfg(loom)]
    pub(crate) fn new() -> HeapRegistry {
        HeapRegistry {
            entries: core::array::from_fn(|_| Entry::new()),
            high_water: AtomicUsize::new(0),
            next_reap_ms: AtomicUsize::new(0),
            next_reclaim_ms: AtomicUsize::new(0),
            fork_lock: AtomicUsize::new(0),
        }
    }

    /// Claims a free entry, locked; `None` when all are taken.
    pub(crate) fn claim(&self) -> Option<&Entry> {
        for (index, entry) in self.entries.iter().enumerate() {
            // Acquire pairs with the Release of `release`: the former
            // heap's teardown is complete before we reuse its memory.
            if entry
                .state
                .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // Relaxed: a bound for scans, which then lock each entry.
                self.high_water.fetch_max(index + 1, Ordering::Relaxed);
                return Some(entry);
            }
        }
        None
    }

    /// The entries ever claimed.
    pub(crate) fn entries(&self) -> &[Entry] {
        // Relaxed: see `claim`.
        let high = self.high_water.load(Ordering::Relaxed).min(CAPACITY);
        self.entries.get(..high).unwrap_or(&[])
    }

    /// Slots holding a heap now (each read on its own: approximate while
    /// heaps come and go).
    pub(crate) fn heap_count(&self) -> usize {
        self.entries()
            .iter()
            // Relaxed: a statistic.
            .filter(|entry| entry.state.load(Ordering::Relaxed) != FREE)
            .count()
    }

    /// Whether a reaping pass should start now (at most one per `period_ms`
    /// across the process).
    pub(crate) fn reap_is_due(&self, now_ms: usize, period_ms: usize) -> bool {
        due_once(&self.next_reap_ms, now_ms, period_ms)
    }

    /// Whether a reaping pass should also look through the abandoned
    /// segments now (at most one per `period_ms` across the process).
    pub(crate) fn reclaim_is_due(&self, now_ms: usize, period_ms: usize) -> bool {
        due_once(&self.next_reclaim_ms, now_ms, period_ms)
    }
}

impl HeapRegistry {
    /// Before `fork`, on the forking thread: serialises forks, then holds
    /// the lock of every registered heap, so the child inherits no heap
    /// half-way through a slow path or a reaper's pass, and no abandoned
    /// segment taken by a reclaim in progress. `own_slots` has already
    /// locked the forking thread's own heaps (their locks are re-entrant for
    /// it); it calls its argument on each of their entries. A heap whose lock
    /// stays busy for [`FORK_LOCK_ROUNDS`] yields (its holder is stopped,
    /// say by a signal handler waiting for the fork) is left out: the child
    /// cannot tear it down, and it stays there as it is.
    ///
    /// Every call is followed by [`HeapRegistry::unlock_all_after_fork`] in
    /// the parent and [`HeapRegistry::take_heaps_after_fork`] in the child.
    pub(crate) fn lock_all_for_fork(&self, own_slots: impl FnOnce(&mut dyn FnMut(&Entry))) {
        let mut spins = 0u32;
        // Acquire pairs with the Release store in `end_fork`: the previous
        // fork's marks are all cleared.
        while self
            .fork_lock
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                spin_hint();
            } else {
                yield_thread();
            }
        }
        // Relaxed (every `fork_hold` access): only the fork lock's holder
        // touches the marks.
        own_slots(&mut |entry| entry.fork_hold.store(HELD_BY_OWNER, Ordering::Relaxed));
        for entry in self.entries() {
            if entry.fork_hold.load(Ordering::Relaxed) == NOT_HELD
                && entry.lock_bounded(FORK_LOCK_ROUNDS)
            {
                entry.fork_hold.store(HELD_FOR_FORK, Ordering::Relaxed);
            }
        }
    }

    /// After `fork`, in the parent: lets go of every lock
    /// [`HeapRegistry::lock_all_for_fork`] took (the caller lets go of its
    /// own heaps' locks) and of the fork lock.
    pub(crate) fn unlock_all_after_fork(&self) {
        for entry in self.entries() {
            // Relaxed: see `lock_all_for_fork`.
            if entry.fork_hold.swap(NOT_HELD, Ordering::Relaxed) == HELD_FOR_FORK {
                entry.unlock();
            }
        }
        self.end_fork();
    }

    /// After `fork`, in the child (one thread): calls `tear_down` on the
    /// heap of every entry [`HeapRegistry::lock_all_for_fork`] locked: heaps
    /// of threads that do not exist in the child. `tear_down` holds the
    /// heap's lock and must release the entry. Then lets go of the fork lock.
    pub(crate) fn take_heaps_after_fork(&self, mut tear_down: impl FnMut(*mut RawHeap)) {
        for entry in self.entries() {
            // Relaxed: see `lock_all_for_fork`.
            if entry.fork_hold.swap(NOT_HELD, Ordering::Relaxed) == HELD_FOR_FORK {
                tear_down(entry.heap());
            }
        }
        self.end_fork();
    }

    fn end_fork(&self) {
        // Release pairs with the Acquire CAS of the next fork.
        self.fork_lock.store(0, Ordering::Release);
    }
}

/// Whether `now_ms` has reached the time in `next`, which then moves
/// `period_ms` on: true for one caller per period.
fn due_once(next: &AtomicUsize, now_ms: usize, period_ms: usize) -> bool {
    // Relaxed: a rate limit, not a protocol; losing a race skips a pass.
    let at = next.load(Ordering::Relaxed);
    now_ms >= at
        && next
            .compare_exchange(
                at,
                now_ms.saturating_add(period_ms),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize as StdAtomicUsize};
    use std::time::{Duration, Instant};

    /// Yields made by `Entry::lock` waiting for a holder (all threads).
    pub(super) static LOCK_YIELDS: StdAtomicUsize = StdAtomicUsize::new(0);

    fn owned_slot() -> &'static Entry {
        let registry: &'static HeapRegistry = Box::leak(Box::new(HeapRegistry::new()));
        let entry = registry.claim().expect("a free entry");
        // A stand-in heap pointer: the lock never dereferences it.
        entry.publish(ptr::dangling_mut());
        entry
    }

    /// Review defect 5: the owner waiting for a reaper that holds its lock
    /// must yield (a preempted holder then gets the processor back), not
    /// spin out its time slice. The holder lets go only once the waiter
    /// has yielded: with a pure spin it never would, and the test fails on
    /// its deadline instead of hanging.
    #[test]
    fn an_owner_waiting_for_its_lock_yields_to_the_holder() {
        let entry = owned_slot();
        assert!(entry.try_lock(), "the reaper takes the lock");
        let acquired = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let before = LOCK_YIELDS.load(Ordering::Relaxed);
            scope.spawn(|| {
                entry.lock();
                acquired.store(true, Ordering::Relaxed);
                entry.unlock();
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while LOCK_YIELDS.load(Ordering::Relaxed) == before {
                if Instant::now() > deadline {
                    entry.unlock();
                    panic!("the waiting owner never yielded");
                }
                std::thread::yield_now();
            }
            assert!(!acquired.load(Ordering::Relaxed), "the lock was held");
            entry.unlock();
        });
        assert!(acquired.load(Ordering::Relaxed));
    }

    /// Review defect 1's root: every fork-time lock is let go after the
    /// fork, whatever the registry held; a second fork can take them again.
    #[test]
    fn fork_locks_are_balanced() {
        let registry: &'static HeapRegistry = Box::leak(Box::new(HeapRegistry::new()));
        let own = registry.claim().expect("entry");
        own.publish(ptr::dangling_mut());
        let other = registry.claim().expect("entry");
        other.publish(ptr::dangling_mut());
        for _ in 0..3 {
            assert!(own.try_lock(), "the forking thread's own lock");
            registry.lock_all_for_fork(|mark| mark(own));
            assert!(!other.try_lock(), "held across the fork");
            registry.unlock_all_after_fork();
            own.unlock();
            assert!(other.try_lock(), "let go after the fork");
            other.unlock();
        }
    }
}
