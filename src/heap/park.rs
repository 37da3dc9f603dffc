//! Parked heaps: a thread's default heap kept whole when the thread exits,
//! for the next thread to adopt (`docs/design.md` §4.9, loom model
//! `parked_heap_adopted_while_parker_frees`).
//!
//! Tearing a heap down at thread exit (`abandon`) and building the next
//! thread's heap from nothing (a registry entry, a segment from the cache
//! whose header is re-initialised, a fresh page per size class) costs a
//! short-lived thread more than its own work. So when a thread exits with a
//! small heap, the heap is *parked* instead: it stays registered, with its
//! segments, pages, queues and warm memory, in a small process-wide pool
//! ([`ParkedHeaps`], a fixed array of atomic slots: bounded, lock-free, no
//! allocation), and the next thread's first allocation *adopts* it: it
//! becomes the heap's owner and allocates at once from pages already set
//! up.
//!
//! A parked heap is an idle heap whose owner sleeps:
//!
//! * its segments' owner id is 0 (matches no thread), so every free into it
//!   is remote — also the exiting thread's own later frees (from other TLS
//!   destructors): page thread-free lists, or the heap's delayed list for a
//!   full page, exactly as for a live owner's heap;
//! * it stays in the registry: reapers give back its overdue slots and the
//!   memory inside remotely freed blocks (`reap`), and `stats()` counts its
//!   live blocks;
//! * one nobody adopts within the decay time is torn down by a reaper pass
//!   (`evict_parked`), as its thread's exit would have been (`abandon`);
//!   `collect(true)` tears down all of them;
//! * in a forked child the pool is emptied: its heaps are torn down with the
//!   heaps of the other vanished threads (`thread::after_fork_in_child`).
//!
//! Ownership moves only through the pool: the parker's Release CAS into a
//! slot pairs with the adopter's (or evictor's) Acquire swap out of it, so
//! everything the last owner wrote — its owner-only cells, which nobody's
//! lock protects (`lock_depth`, the pages' free lists) — is visible to the
//! next. The swap hands each parked heap to exactly one thread. First-class
//! heaps are never parked; neither are unregistered heaps (reapers could not
//! reach them), nor any heap when the decay time is 0. The purge thread
//! never adopts one.

use super::RawHeap;
use crate::options;
use crate::os;
use crate::process::Shared;
use crate::stats;
use crate::sync::{AtomicPtr, Ordering};
use core::ptr;

/// Slots of the pool: the most heaps parked at once.
#[cfg(not(loom))]
const PARK_SLOTS: usize = 8;
#[cfg(loom)]
const PARK_SLOTS: usize = 2;

/// A heap holding more segments than this is abandoned at thread exit
/// rather than parked (its memory would wait for an adopter).
const PARK_MAX_SEGMENTS: usize = 4;

/// Owner id of a parked heap and of its segments: matches no thread.
const PARKED_ID: usize = 0;

/// The pool of parked heaps (see the module documentation).
pub(crate) struct ParkedHeaps {
    slots: [AtomicPtr<RawHeap>; PARK_SLOTS],
}

impl ParkedHeaps {
    /// An empty pool.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> ParkedHeaps {
        ParkedHeaps {
            slots: [const { AtomicPtr::new(ptr::null_mut()) }; PARK_SLOTS],
        }
    }

    /// An empty pool.
    #[cfg(loom)]
    pub(crate) fn new() -> ParkedHeaps {
        ParkedHeaps {
            slots: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }
    }

    /// Whether a slot looks free (a hint: it may be taken before a `put`).
    fn has_room(&self) -> bool {
        // Relaxed: a hint; `put` decides with its CAS.
        self.slots
            .iter()
            .any(|slot| slot.load(Ordering::Relaxed).is_null())
    }

    /// Puts `heap` into a free slot; false if none is free.
    fn put(&self, heap: *mut RawHeap) -> bool {
        for slot in &self.slots {
            // Release pairs with the Acquire swap of `take_slot`: the taker
            // sees everything the parker wrote to the heap, its pages and
            // segments before this CAS.
            if slot
                .compare_exchange(ptr::null_mut(), heap, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// Takes the heap parked in slot `index` (null if none): exclusively,
    /// since the swap hands each value to one thread.
    fn take_slot(&self, index: usize) -> *mut RawHeap {
        let Some(slot) = self.slots.get(index) else {
            return ptr::null_mut();
        };
        // Relaxed: an emptiness test; the swap below acquires.
        if slot.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        // Acquire pairs with the Release CAS of `put` (see there).
        slot.swap(ptr::null_mut(), Ordering::Acquire)
    }

    /// Takes any parked heap (null if none).
    fn take(&self) -> *mut RawHeap {
        (0..PARK_SLOTS)
            .map(|index| self.take_slot(index))
            .find(|heap| !heap.is_null())
            .unwrap_or(ptr::null_mut())
    }

    /// Heaps parked now.
    pub(crate) fn len(&self) -> usize {
        // Relaxed: a statistic.
        self.slots
            .iter()
            .filter(|slot| !slot.load(Ordering::Relaxed).is_null())
            .count()
    }

    /// In a forked child, on its only thread: forgets the parked heaps. They
    /// are registered heaps of vanished threads, which the child handler
    /// tears down (or, if the prepare handler could not lock one, leaves as
    /// it is); none may be adopted.
    #[cfg(not(loom))]
    pub(crate) fn forget_after_fork(&self) {
        for slot in &self.slots {
            // Relaxed: the child has one thread.
            slot.store(ptr::null_mut(), Ordering::Relaxed);
        }
    }
}

impl RawHeap {
    /// Parks the heap at its thread's exit, if it is worth keeping (small,
    /// registered, the pool not full): afterwards the heap belongs to
    /// nobody until a thread adopts it. Returns false if it was not parked:
    /// the caller then tears it down (`abandon`).
    ///
    /// # Safety
    /// Owner thread; the thread's default heap, which the thread does not
    /// use again (a later allocation of the thread starts on the empty heap).
    pub(crate) unsafe fn park(&self) -> bool {
        // SAFETY: a heap's `shared` is null or outlives it.
        let Some(shared) = (unsafe { self.shared.get().as_ref() }) else {
            return false;
        };
        if !self.is_registered()
            || self.first_class.get()
            || options::reset_delay_ms() == 0
            || !shared.parked.has_room()
        {
            return false;
        }
        let owner = self.thread_id();
        {
            // The segment list may change under a reaper: walked locked.
            let _guard = self.lock();
            if self.segments_more_than(PARK_MAX_SEGMENTS) {
                return false;
            }
            // Huge blocks still out go to whoever frees them, as at exit,
            // and spare huge segments to the process's pool, where any
            // heap finds them (a parked heap's serve only its adopter).
            // SAFETY: owner thread holding the lock; the heap stays
            // consistent (this only takes pages off its huge queue and
            // spares off its reset queue).
            unsafe {
                self.orphan_huge_blocks();
                self.pool_huge_spares();
            }
            // SAFETY: owner thread holding the lock.
            unsafe { self.stamp_segments(PARKED_ID) };
            self.thread_id.set(PARKED_ID);
            self.parked_at_ms.set(os::now_ms());
        }
        if shared.parked.put(self.as_ptr()) {
            stats::HEAPS_PARKED.add(1);
            return true;
        }
        // The pool filled up meanwhile: the caller abandons the heap (which
        // stamps its segments 0 too).
        self.thread_id.set(owner);
        false
    }

    /// Stamps every segment of the heap with owner `thread_id`: from now on
    /// `free` on that thread takes the local path into them, and on any
    /// other the remote one.
    ///
    /// # Safety
    /// Owner thread holding the lock.
    unsafe fn stamp_segments(&self, thread_id: usize) {
        let mut segment = self.segments.first.get();
        while !segment.is_null() {
            // SAFETY: segments on our list are live while we hold the lock;
            // `thread_id` is atomic.
            unsafe {
                // Relaxed: `free` only compares it with its caller's own id,
                // and only this id's thread (us, or the adopter after its
                // Acquire) stores that id; a remote free reading a stale
                // value takes the remote path, right either way.
                (*segment).set_owner(thread_id);
                segment = (*segment).all.next.get();
            }
        }
    }

    /// Whether the heap holds more than `max` segments (owner thread
    /// holding the lock: the list may change under a reaper otherwise).
    fn segments_more_than(&self, max: usize) -> bool {
        let mut count = 0;
        let mut segment = self.segments.first.get();
        while !segment.is_null() {
            count += 1;
            if count > max {
                return true;
            }
            // SAFETY: segments on our list are live (owner holding the lock).
            segment = unsafe { (*segment).all.next.get() };
        }
        false
    }

    /// Makes the calling thread, whose id is `thread_id`, the owner of a
    /// heap it took out of the pool.
    ///
    /// # Safety
    /// The caller took the heap out of the pool (`take`, whose Acquire
    /// orders everything the parker did before this).
    unsafe fn become_owner(&self, thread_id: usize) {
        self.thread_id.set(thread_id);
        let _guard = self.lock();
        // SAFETY: owner thread (now) holding the lock.
        unsafe { self.stamp_segments(thread_id) };
        if let Some(entry) = self.entry() {
            entry.set_active(usize::try_from(os::now_ms()).unwrap_or(usize::MAX));
        }
    }
}

/// A parked heap adopted by the calling thread, whose id is `thread_id`
/// (null if none is parked): the thread's new default heap, already holding
/// pages.
pub(crate) fn adopt_parked(shared: &Shared, thread_id: usize) -> *mut RawHeap {
    let heap = shared.parked.take();
    if !heap.is_null() {
        // SAFETY: `take` made the parked heap ours alone, ordered after its
        // parker; parked heaps are registered, so their memory stays.
        unsafe { (*heap).become_owner(thread_id) };
        stats::HEAPS_ADOPTED.add(1);
    }
    heap
}

/// A reaper's look at the pool: tears down each heap parked for the decay
/// time or longer (every one with `force`), as its thread's exit would have
/// (`abandon`: its empty pages go back, its live blocks stay valid in
/// abandoned segments, its registry entry keeps its memory for the next
/// heap). Younger heaps go back into the pool.
///
/// # Safety
/// Called outside any section of the parked heaps (by a heap's reaper pass;
/// the caller may hold its own heap's lock, which a parked heap's teardown
/// never takes).
pub(crate) unsafe fn evict_parked(shared: &Shared, force: bool) {
    let delay = options::reset_delay_ms();
    let now = os::now_ms();
    for index in 0..PARK_SLOTS {
        let heap = shared.parked.take_slot(index);
        if heap.is_null() {
            continue;
        }
        // SAFETY: `take_slot` made the heap ours alone, ordered after its
        // parker (we act as its owner from here on).
        let parked_at = unsafe { (*heap).parked_at_ms.get() };
        if !force && parked_at.saturating_add(delay) > now && shared.parked.put(heap) {
            continue;
        }
        // SAFETY: ours alone (see above), a registered default heap, whose
        // memory its registry entry keeps after the teardown.
        unsafe { (*heap).abandon() };
        stats::HEAPS_EVICTED.add(1);
    }
}
