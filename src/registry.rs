//! The heap registry: where other threads find a heap whose owner has gone
//! idle, so they can give its waiting memory back to the OS for it.
//!
//! A fixed array of slots, one per live heap (thread heaps and, later,
//! first-class heaps). A slot's `state` word is at once its ownership and a
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
//!   a free that empties a page, collect, thread exit). The fast paths never
//!   take it: they touch only pages in use, which nobody else touches.
//! * Another thread (the *reaper*) takes it with `try_lock`, never waiting,
//!   to give back the memory of page slots whose reset delay expired long
//!   ago (`Heap::reap`), and to read the heap's live bytes for `stats()`.
//! * A heap's memory is never unmapped while its slot exists: the slot keeps
//!   it for the next heap, so a pointer read under the lock always points at
//!   a heap, and the hint `reset_due_ms`, read before locking, lives in the
//!   slot rather than in the heap.
//!
//! Heaps beyond the registry's capacity work normally but are not visible to
//! reapers or to the live-bytes statistic.
//!
//! The protocol is specified by the loom model `reaper_races_owner_reuse`
//! (`loom-tests/tests/reaper.rs`).

use crate::heap::Heap;
use crate::sync::{AtomicPtr, AtomicUsize, Ordering, spin_hint, yield_thread};
use core::ptr;

/// No heap uses the slot (it may keep the memory of a former one).
const FREE: usize = 0;
/// A heap uses the slot; nobody holds its lock.
const OWNED: usize = 1;
/// A heap uses the slot and a thread holds its lock.
const LOCKED: usize = 2;

/// `reset_due_ms` of a heap with nothing waiting for its reset.
pub(crate) const NOTHING_DUE: usize = usize::MAX;

/// Slots in the registry.
#[cfg(not(loom))]
const CAPACITY: usize = 1024;
#[cfg(loom)]
const CAPACITY: usize = 4;

/// One heap's entry.
pub(crate) struct Slot {
    state: AtomicUsize,
    /// The heap (or the memory of the last heap that used the slot).
    heap: AtomicPtr<Heap>,
    /// When the heap's oldest empty page slot is due for its reset, in
    /// `os::now_ms` milliseconds; [`NOTHING_DUE`] if none waits. A hint,
    /// written by whoever holds the lock.
    reset_due_ms: AtomicUsize,
    /// When the owner last passed through a slow path (`os::now_ms`, coarse:
    /// written every so many slow paths). A hint for reapers.
    active_ms: AtomicUsize,
}

impl Slot {
    #[cfg(not(loom))]
    const fn new() -> Slot {
        Slot {
            state: AtomicUsize::new(FREE),
            heap: AtomicPtr::new(ptr::null_mut()),
            reset_due_ms: AtomicUsize::new(NOTHING_DUE),
            active_ms: AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    fn new() -> Slot {
        Slot {
            state: AtomicUsize::new(FREE),
            heap: AtomicPtr::new(ptr::null_mut()),
            reset_due_ms: AtomicUsize::new(NOTHING_DUE),
            active_ms: AtomicUsize::new(0),
        }
    }

    /// The memory a former heap of this slot left behind (null if none).
    /// Only while the caller holds the slot from `claim`.
    pub(crate) fn spare_memory(&self) -> *mut Heap {
        // Relaxed: written by the previous holder before its Release
        // `release`, which our Acquire `claim` paired with.
        self.heap.load(Ordering::Relaxed)
    }

    /// Ends a `claim`: `heap` (initialised) is now reachable through the
    /// slot, unlocked.
    pub(crate) fn publish(&self, heap: *mut Heap) {
        // Relaxed: made visible by the Release store below.
        self.heap.store(heap, Ordering::Relaxed);
        // Relaxed: only the lock holder writes it.
        self.reset_due_ms.store(NOTHING_DUE, Ordering::Relaxed);
        // Release pairs with the Acquire CAS of `lock`/`try_lock`: whoever
        // locks next sees the initialised heap.
        self.state.store(OWNED, Ordering::Release);
    }

    /// Takes the lock, waiting for a reaper that holds it (the owner's
    /// path; reapers hold it for a bounded amount of work).
    pub(crate) fn lock(&self) {
        while !self.try_lock() {
            spin_hint();
        }
    }

    /// Takes the lock if the slot holds a heap and nobody holds the lock.
    pub(crate) fn try_lock(&self) -> bool {
        // Acquire pairs with the Release of `unlock`/`publish`: the previous
        // holder's writes to the heap are visible to us.
        self.state
            .compare_exchange(OWNED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Like `try_lock`, but waits (yielding) up to `rounds` times for a
    /// holder to finish. For readers that must not block forever (a slot
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

    /// Gives the slot up (the caller holds the lock, the heap is torn down);
    /// the heap's memory stays with the slot for the next heap.
    pub(crate) fn release(&self) {
        // Relaxed: only the lock holder writes it.
        self.reset_due_ms.store(NOTHING_DUE, Ordering::Relaxed);
        // Release pairs with the Acquire of the next `claim`.
        self.state.store(FREE, Ordering::Release);
    }

    /// The heap; meaningful only while the caller holds the lock.
    pub(crate) fn heap(&self) -> *mut Heap {
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
    slots: [Slot; CAPACITY],
    /// One past the highest slot ever claimed: reapers look no further.
    high_water: AtomicUsize,
    /// `os::now_ms` before which no slow path starts another reaping pass.
    next_reap_ms: AtomicUsize,
    /// `os::now_ms` before which no reaping pass looks through the
    /// abandoned segments again (a walk over all of them).
    next_reclaim_ms: AtomicUsize,
}

impl HeapRegistry {
    /// An empty registry.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> HeapRegistry {
        HeapRegistry {
            slots: [const { Slot::new() }; CAPACITY],
            high_water: AtomicUsize::new(0),
            next_reap_ms: AtomicUsize::new(0),
            next_reclaim_ms: AtomicUsize::new(0),
        }
    }

    /// An empty registry.
    #[cfg(loom)]
    pub(crate) fn new() -> HeapRegistry {
        HeapRegistry {
            slots: core::array::from_fn(|_| Slot::new()),
            high_water: AtomicUsize::new(0),
            next_reap_ms: AtomicUsize::new(0),
            next_reclaim_ms: AtomicUsize::new(0),
        }
    }

    /// Claims a free slot, locked; `None` when all are taken.
    pub(crate) fn claim(&self) -> Option<&Slot> {
        for (index, slot) in self.slots.iter().enumerate() {
            // Acquire pairs with the Release of `release`: the former
            // heap's teardown is complete before we reuse its memory.
            if slot
                .state
                .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // Relaxed: a bound for scans, which then lock each slot.
                self.high_water.fetch_max(index + 1, Ordering::Relaxed);
                return Some(slot);
            }
        }
        None
    }

    /// The slots ever claimed.
    pub(crate) fn slots(&self) -> &[Slot] {
        // Relaxed: see `claim`.
        let high = self.high_water.load(Ordering::Relaxed).min(CAPACITY);
        self.slots.get(..high).unwrap_or(&[])
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
