//! The heap registry: where other threads find a heap whose owner has gone
//! idle, so they can give its waiting memory back to the OS for it.
//!
//! Entries, one per live heap (thread heaps and first-class heaps), in
//! chunks that double in size: the first chunk (1024 entries) is part of
//! the static, the next ones (2048, 4096, … entries) are mapped from the OS
//! (`os::map`, never from the allocator itself) the first time a heap needs
//! them, and never unmapped. So a pointer to an entry stays valid for the
//! life of the process, and entry `i` is found by arithmetic (chunk
//! `⌊log₂(i / 1024 + 1)⌋`), in constant time. There is no limit short of
//! 2³² entries or the OS refusing memory.
//!
//! An entry's `state` word is at once its ownership and a small lock:
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
//! **Finding a free entry in constant time.** Released entries go onto a
//! lock-free stack (`free_top`, linked through each entry's `next_free`
//! index); `claim` pops one, or, when the stack is empty, takes the next
//! never-used entry (`next_unused`, bumped with a CAS after its chunk is
//! mapped). The stack's top word packs a 32-bit tag above one plus the
//! entry's index, and every push and pop bumps the tag, so a pop that read a stale
//! `next_free` (the classic ABA: the entry was popped, others popped and it
//! pushed back meanwhile) fails its CAS. Entries are never unmapped, so
//! reading a stale `next_free` is harmless. No lock: a thread that vanishes
//! in `fork` mid-claim leaves a consistent stack.
//!
//! **Visiting every heap in bounded slices.** [`HeapRegistry::entries`]
//! iterates over every entry ever used (for `stats()`, `collect(true)`,
//! `fork`); [`HeapRegistry::reap_batch`] over at most [`REAP_BATCH`] of
//! them, starting where the last batch stopped, so a reaping pass costs the
//! same with 10 or 10 000 heaps and every heap is still visited in turn.
//!
//! The protocols are specified by the loom models `reaper_races_owner_reuse`
//! (`loom-tests/tests/reaper.rs`) and `registry_claims_race_releases_and_growth`
//! (`loom-tests/tests/registry.rs`).

use crate::heap::RawHeap;
use crate::os;
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

/// Entries in the first chunk (part of the static); chunk `c` holds
/// `FIRST_CHUNK << c`.
#[cfg(not(loom))]
const FIRST_CHUNK: usize = 1024;
#[cfg(loom)]
const FIRST_CHUNK: usize = 2;

/// Chunks at most: `FIRST_CHUNK · (2^CHUNKS − 1)` entries, below 2³² (the
/// free stack's index field).
#[cfg(not(loom))]
const CHUNKS: usize = 22;
#[cfg(loom)]
const CHUNKS: usize = 3;

/// Entries at most.
const CAPACITY: usize = FIRST_CHUNK * ((1 << CHUNKS) - 1);

/// Entries a non-forced reaping pass looks at (see `reap_batch`).
#[cfg(not(loom))]
pub(crate) const REAP_BATCH: usize = 64;
#[cfg(loom)]
pub(crate) const REAP_BATCH: usize = 2;

/// The free stack's top word: the entry's index + 1 (0: empty) in the low
/// half, a tag bumped by every push and pop in the high half.
const TAG_SHIFT: u32 = usize::BITS / 2;
const INDEX_MASK: usize = (1 << TAG_SHIFT) - 1;
const _: () = assert!(CAPACITY < INDEX_MASK, "indexes fit below the tag");

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
    /// While the entry is on the free stack: the index + 1 of the entry
    /// below it (0: none).
    next_free: AtomicUsize,
    /// The entry's index in the registry (fixed).
    index: usize,
}

/// `fork_hold`: the entry is not held across a fork.
const NOT_HELD: usize = 0;
/// `fork_hold`: a heap of the forking thread, whose own lock it holds.
const HELD_BY_OWNER: usize = 1;
/// `fork_hold`: another thread's heap, locked by the forking thread.
const HELD_FOR_FORK: usize = 2;

impl Entry {
    #[cfg(not(loom))]
    const fn new(index: usize) -> Entry {
        Entry {
            state: AtomicUsize::new(FREE),
            heap: AtomicPtr::new(ptr::null_mut()),
            reset_due_ms: AtomicUsize::new(NOTHING_DUE),
            active_ms: AtomicUsize::new(0),
            fork_hold: AtomicUsize::new(NOT_HELD),
            next_free: AtomicUsize::new(0),
            index,
        }
    }

    #[cfg(loom)]
    fn new(index: usize) -> Entry {
        Entry {
            state: AtomicUsize::new(FREE),
            heap: AtomicPtr::new(ptr::null_mut()),
            reset_due_ms: AtomicUsize::new(NOTHING_DUE),
            active_ms: AtomicUsize::new(0),
            fork_hold: AtomicUsize::new(NOT_HELD),
            next_free: AtomicUsize::new(0),
            index,
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

    /// The entry's index in the registry.
    #[cfg_attr(not(any(test, loom)), allow(dead_code))]
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// See `set_reset_due`.
    pub(crate) fn reset_due(&self) -> usize {
        // Relaxed: a hint (see `set_reset_due`).
        self.reset_due_ms.load(Ordering::Relaxed)
    }
}

/// The first chunk, each entry knowing its index.
#[cfg(not(loom))]
const fn first_chunk() -> [Entry; FIRST_CHUNK] {
    let mut entries = [const { Entry::new(0) }; FIRST_CHUNK];
    let mut index = 0;
    while index < FIRST_CHUNK {
        entries[index].index = index;
        index += 1;
    }
    entries
}

/// The free stack's top word holding `index_plus_one`, its tag one on from
/// `top`'s: every push and pop changes the word, even when the same entry
/// comes back on top (see the module documentation, ABA).
fn retag(top: usize, index_plus_one: usize) -> usize {
    ((top >> TAG_SHIFT).wrapping_add(1) << TAG_SHIFT) | index_plus_one
}

/// The chunk holding entry `index`, and the entry's offset in it.
fn chunk_of(index: usize) -> (usize, usize) {
    let q = index / FIRST_CHUNK + 1;
    let chunk = (usize::BITS - 1 - q.leading_zeros()) as usize;
    (chunk, index - FIRST_CHUNK * ((1 << chunk) - 1))
}

/// Bytes of the mapping of chunk `chunk` (≥ 1).
fn chunk_bytes(chunk: usize) -> usize {
    (FIRST_CHUNK << chunk) * size_of::<Entry>()
}

/// The registry. See the module documentation.
pub(crate) struct HeapRegistry {
    first: [Entry; FIRST_CHUNK],
    /// Chunks 1.. (index 0 unused): null until mapped, then fixed.
    chunks: [AtomicPtr<Entry>; CHUNKS],
    /// Entries ever handed out (`0..next_unused`); all of them lie in
    /// published chunks. Reapers look no further.
    next_unused: AtomicUsize,
    /// Top of the stack of released entries (see the module documentation).
    free_top: AtomicUsize,
    /// Where the next `reap_batch` starts.
    reap_cursor: AtomicUsize,
    /// `os::now_ms` before which no slow path starts another reaping pass.
    next_reap_ms: AtomicUsize,
    /// `os::now_ms` before which no reaping pass looks through the
    /// abandoned segments again.
    next_reclaim_ms: AtomicUsize,
    /// Held (1) by a thread between the prepare and the after-fork handlers
    /// of its `fork`: forks are serialised, so one thread at a time marks
    /// entries in `fork_hold`.
    fork_lock: AtomicUsize,
}

/// Iterates over entries of a registry (see `entries`, `reap_batch`).
pub(crate) struct Entries<'a> {
    registry: &'a HeapRegistry,
    /// Next index to visit.
    next: usize,
    /// Indexes `0..end` exist; `next` wraps to 0 at `end`.
    end: usize,
    /// Entries still to visit.
    left: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        while self.left > 0 {
            self.left -= 1;
            let index = self.next;
            self.next = if index + 1 >= self.end { 0 } else { index + 1 };
            if let Some(entry) = self.registry.entry(index) {
                return Some(entry);
            }
        }
        None
    }
}

impl HeapRegistry {
    /// An empty registry.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> HeapRegistry {
        HeapRegistry {
            first: first_chunk(),
            chunks: [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS],
            next_unused: AtomicUsize::new(0),
            free_top: AtomicUsize::new(0),
            reap_cursor: AtomicUsize::new(0),
            next_reap_ms: AtomicUsize::new(0),
            next_reclaim_ms: AtomicUsize::new(0),
            fork_lock: AtomicUsize::new(0),
        }
    }

    /// An empty registry.
    #[cfg(loom)]
    pub(crate) fn new() -> HeapRegistry {
        HeapRegistry {
            first: core::array::from_fn(Entry::new),
            chunks: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            next_unused: AtomicUsize::new(0),
            free_top: AtomicUsize::new(0),
            reap_cursor: AtomicUsize::new(0),
            next_reap_ms: AtomicUsize::new(0),
            next_reclaim_ms: AtomicUsize::new(0),
            fork_lock: AtomicUsize::new(0),
        }
    }

    /// Entry `index`, if its chunk is mapped.
    fn entry(&self, index: usize) -> Option<&Entry> {
        if index < FIRST_CHUNK {
            return self.first.get(index);
        }
        let (chunk, offset) = chunk_of(index);
        // Acquire pairs with the Release CAS in `map_chunk`: the entries'
        // initialisation is visible.
        let base = self.chunks.get(chunk)?.load(Ordering::Acquire);
        if base.is_null() {
            return None;
        }
        // SAFETY: a published chunk holds `FIRST_CHUNK << chunk` initialised
        // entries, `offset` is below that (`chunk_of`), and chunks are never
        // unmapped while the registry exists.
        Some(unsafe { &*base.add(offset) })
    }

    /// Maps and publishes chunk `chunk` (≥ 1) unless someone did; false if
    /// the OS refuses memory.
    fn map_chunk(&self, chunk: usize) -> bool {
        let Some(slot) = self.chunks.get(chunk) else {
            return false;
        };
        // Relaxed: only a shortcut; the CAS below decides.
        if !slot.load(Ordering::Relaxed).is_null() {
            return true;
        }
        let bytes = chunk_bytes(chunk);
        let Some(memory) = os::map(bytes, os::OS_PAGE_SIZE, 0) else {
            return false;
        };
        let base = memory.cast::<Entry>().as_ptr();
        let first_index = FIRST_CHUNK * ((1 << chunk) - 1);
        for offset in 0..(FIRST_CHUNK << chunk) {
            // SAFETY: fresh memory of `bytes` bytes, page-aligned, ours
            // until published.
            unsafe { base.add(offset).write(Entry::new(first_index + offset)) };
        }
        // Release pairs with the Acquire load in `entry`; Acquire on failure
        // is not needed (we only unmap our own copy).
        if slot
            .compare_exchange(ptr::null_mut(), base, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // SAFETY: our own mapping, never published.
            unsafe { os::unmap(memory, bytes, os::OS_PAGE_SIZE) };
        }
        true
    }

    /// Claims a free entry, locked; `None` when the OS refuses memory for a
    /// new chunk (or after 2³² entries). O(1) amortised: pops the free
    /// stack, or takes the next never-used entry.
    pub(crate) fn claim(&self) -> Option<&Entry> {
        loop {
            if let Some(entry) = self.pop_free() {
                // Acquire pairs with the Release of `release`: the former
                // heap's teardown is complete before we reuse its memory.
                if entry
                    .state
                    .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(entry);
                }
                // Not reachable while the stack is sound; an entry in use
                // is simply not taken.
                continue;
            }
            // Relaxed: the CAS below decides; the chunk is checked first.
            let index = self.next_unused.load(Ordering::Relaxed);
            if index >= CAPACITY {
                return None;
            }
            if index >= FIRST_CHUNK && !self.map_chunk(chunk_of(index).0) {
                return None;
            }
            // Release pairs with the Acquire load in `entries`: whoever sees
            // the new bound sees the chunk published (our `map_chunk`, or
            // the Acquire load in it that found it).
            if self
                .next_unused
                .compare_exchange(index, index + 1, Ordering::Release, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let entry = self.entry(index)?;
            // Acquire: nobody used the entry before (pairs with nothing;
            // kept uniform with the reuse path).
            if entry
                .state
                .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(entry);
            }
        }
    }

    /// Gives the entry up (the caller holds the lock, the heap is torn
    /// down); the heap's memory stays with the entry for the next heap,
    /// which the next `claim` finds at the top of the free stack.
    pub(crate) fn release(&self, entry: &Entry) {
        // Relaxed: only the lock holder writes it.
        entry.reset_due_ms.store(NOTHING_DUE, Ordering::Relaxed);
        // Release pairs with the Acquire of the next `claim`.
        entry.state.store(FREE, Ordering::Release);
        self.push_free(entry);
    }

    /// Pushes a released entry onto the free stack.
    fn push_free(&self, entry: &Entry) {
        // Relaxed: a starting guess for the CAS.
        let mut top = self.free_top.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release CAS below.
            entry.next_free.store(top & INDEX_MASK, Ordering::Relaxed);
            let new = retag(top, entry.index + 1);
            // Release pairs with the Acquire load and CAS in `pop_free`: the
            // popper reads our `next_free` (and, through `state`, the
            // release of the entry).
            match self.free_top.compare_exchange_weak(
                top,
                new,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(current) => top = current,
            }
        }
    }

    /// Pops the free stack.
    fn pop_free(&self) -> Option<&Entry> {
        // Acquire pairs with the Release CAS of `push_free`: the top entry's
        // `next_free` is visible.
        let mut top = self.free_top.load(Ordering::Acquire);
        loop {
            let index = (top & INDEX_MASK).checked_sub(1)?;
            let entry = self.entry(index)?;
            // Relaxed: ordered by the Acquire that read `top`; possibly
            // stale if the entry was popped meanwhile, and then the tag
            // makes the CAS fail.
            let below = entry.next_free.load(Ordering::Relaxed);
            let new = retag(top, below);
            // Acquire on both outcomes: a retry reads the next top's
            // `next_free` (pairs with `push_free`'s Release).
            match self.free_top.compare_exchange_weak(
                top,
                new,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(entry),
                Err(current) => top = current,
            }
        }
    }

    /// The indexes on the free stack, top first, at most `limit` (for
    /// tests and loom models; only meaningful while nobody claims or
    /// releases).
    #[cfg(any(test, loom))]
    pub(crate) fn free_stack(&self, limit: usize) -> std::vec::Vec<usize> {
        let mut indexes = std::vec::Vec::new();
        // Acquire: as in `pop_free`.
        let mut next = self.free_top.load(Ordering::Acquire) & INDEX_MASK;
        while let Some(index) = next.checked_sub(1) {
            if indexes.len() == limit {
                break;
            }
            indexes.push(index);
            // Relaxed: as in `pop_free`.
            next = self
                .entry(index)
                .map_or(0, |entry| entry.next_free.load(Ordering::Relaxed));
        }
        indexes
    }

    /// Every entry ever claimed, in index order.
    pub(crate) fn entries(&self) -> Entries<'_> {
        // Acquire pairs with the Release CAS in `claim`: every chunk below
        // the bound is published.
        let end = self.next_unused.load(Ordering::Acquire);
        Entries {
            registry: self,
            next: 0,
            end,
            left: end,
        }
    }

    /// At most [`REAP_BATCH`] entries, starting where the previous batch
    /// stopped and wrapping around: a reaping pass over them costs the same
    /// however many heaps exist, and every heap comes round in turn.
    pub(crate) fn reap_batch(&self) -> Entries<'_> {
        let mut all = self.entries();
        if all.end > REAP_BATCH {
            // Relaxed: a position, not a protocol; racing passes may overlap.
            let start = self.reap_cursor.fetch_add(REAP_BATCH, Ordering::Relaxed) % all.end;
            all.next = start;
            all.left = REAP_BATCH;
        }
        all
    }

    /// Slots holding a heap now (each read on its own: approximate while
    /// heaps come and go).
    pub(crate) fn heap_count(&self) -> usize {
        self.entries()
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

impl Drop for HeapRegistry {
    /// Unmaps the chunks (the process's registry is a static and never
    /// dropped; loom models and unit tests drop theirs).
    fn drop(&mut self) {
        for (chunk, slot) in self.chunks.iter().enumerate().skip(1) {
            // Relaxed: `&mut self`, nobody else holds the registry.
            let base = slot.load(Ordering::Relaxed);
            if let Some(memory) = ptr::NonNull::new(base.cast::<u8>()) {
                // SAFETY: a chunk mapped by `map_chunk` with these very
                // arguments; nothing refers to its entries any more.
                unsafe { os::unmap(memory, chunk_bytes(chunk), os::OS_PAGE_SIZE) };
            }
        }
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

    /// Issue 12 point 7: no fixed limit. Thousands of entries beyond the
    /// first chunk are claimed (mapping chunks 1 and 2), each once;
    /// `entries()` visits all of them; released entries are reused before
    /// any new one; `reap_batch` visits every entry in turn, a bounded
    /// slice at a time.
    #[test]
    fn the_registry_grows_past_its_first_chunk_and_reuses_entries() {
        let registry = HeapRegistry::new();
        let n = FIRST_CHUNK * 3 + 17;
        let mut held: Vec<&Entry> = (0..n)
            .map(|_| {
                let entry = registry.claim().expect("an entry");
                entry.publish(ptr::dangling_mut());
                entry
            })
            .collect();
        let mut indexes: Vec<usize> = held.iter().map(|e| e.index()).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes, (0..n).collect::<Vec<_>>(), "each entry once");
        assert_eq!(registry.entries().count(), n);
        assert_eq!(registry.heap_count(), n);
        for (index, entry) in registry.entries().enumerate() {
            assert_eq!(entry.index(), index, "in index order");
        }
        // A slice per batch, every entry in turn.
        let mut seen = vec![0usize; n];
        for _ in 0..n.div_ceil(REAP_BATCH) {
            let batch: Vec<usize> = registry.reap_batch().map(Entry::index).collect();
            assert_eq!(batch.len(), REAP_BATCH);
            for index in batch {
                seen[index] += 1;
            }
        }
        assert!(seen.iter().all(|&times| times >= 1), "every entry visited");
        // Release half; the next claims reuse them, newest first.
        let released: Vec<&Entry> = held.drain(..n / 2).collect();
        for &entry in &released {
            entry.lock();
            registry.release(entry);
        }
        assert_eq!(registry.heap_count(), n - n / 2);
        assert_eq!(registry.free_stack(usize::MAX).len(), n / 2);
        for _ in 0..n / 2 {
            let entry = registry.claim().expect("a reused entry");
            assert!(entry.index() < n, "no new entry while some are free");
        }
        assert_eq!(registry.entries().count(), n);
        let fresh = registry.claim().expect("a new entry");
        assert_eq!(fresh.index(), n);
    }

    /// Threads claim and release concurrently (thread starts and exits):
    /// no entry is ever held by two of them.
    #[test]
    fn concurrent_claims_never_share_an_entry() {
        let registry = HeapRegistry::new();
        let owners: Vec<StdAtomicUsize> = (0..FIRST_CHUNK * 4)
            .map(|_| StdAtomicUsize::new(0))
            .collect();
        std::thread::scope(|scope| {
            for thread in 1..=4usize {
                let (registry, owners) = (&registry, &owners);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for round in 0..2000 {
                        if round % 3 == 2 || mine.len() > 300 {
                            let entry: &Entry = mine.pop().expect("held");
                            owners[entry.index()].store(0, Ordering::Relaxed);
                            entry.lock();
                            registry.release(entry);
                        } else {
                            let entry = registry.claim().expect("an entry");
                            let was = owners[entry.index()].swap(thread, Ordering::Relaxed);
                            assert_eq!(was, 0, "entry {} held twice", entry.index());
                            entry.publish(ptr::dangling_mut());
                            mine.push(entry);
                        }
                    }
                });
            }
        });
    }
}
