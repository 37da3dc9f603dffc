//! Process-wide counters, kept without locks and read without allocating
//! (the report built from them is `report`).
//!
//! The OS seam counts its calls and the bytes it has mapped; heaps count the
//! memory they give back. These are statistics, not protocol state: `core`
//! atomics with `Relaxed` ordering (each counter is read on its own), even
//! under loom.

use core::sync::atomic::{AtomicUsize, Ordering};

/// A counter.
pub(crate) struct Counter(AtomicUsize);

impl Counter {
    pub(crate) const fn new() -> Counter {
        Counter(AtomicUsize::new(0))
    }

    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: usize) {
        // Relaxed: statistics only (module documentation).
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n`.
    #[inline]
    pub(crate) fn sub(&self, n: usize) {
        // Relaxed: statistics only (module documentation).
        self.0.fetch_sub(n, Ordering::Relaxed);
    }

    /// The current value.
    pub(crate) fn get(&self) -> usize {
        // Relaxed: statistics only (module documentation).
        self.0.load(Ordering::Relaxed)
    }
}

/// `mmap` calls.
pub(crate) static MMAP_CALLS: Counter = Counter::new();
/// `munmap` calls.
pub(crate) static MUNMAP_CALLS: Counter = Counter::new();
/// `madvise` calls.
pub(crate) static MADVISE_CALLS: Counter = Counter::new();
/// Bytes of address space mapped now.
pub(crate) static RESERVED: Counter = Counter::new();
/// Bytes given back with `madvise` so far.
pub(crate) static RESET_TOTAL: Counter = Counter::new();
/// Bytes of spare huge segments moved into new ones so far (no fault).
pub(crate) static MOVED_TOTAL: Counter = Counter::new();
/// Bytes of page memory not known to read as zero: pages in use, and empty
/// ones whose memory has not been given back yet (see `Segment`).
pub(crate) static COMMITTED: Counter = Counter::new();
/// Usable bytes of live huge blocks.
pub(crate) static HUGE_LIVE: Counter = Counter::new();
/// Bytes in live blocks of abandoned segments, as of their last look
/// (thread exit, or a reclaim pass that kept them abandoned).
pub(crate) static ABANDONED_LIVE: Counter = Counter::new();

/// Threads that allocate without a thread-exit hook (the process ran out of
/// pthread keys): their heaps are never torn down at exit.
pub(crate) static THREADS_WITHOUT_EXIT_HOOK: Counter = Counter::new();

/// Default heaps parked at their thread's exit so far (`heap/park.rs`).
pub(crate) static HEAPS_PARKED: Counter = Counter::new();
/// Parked heaps adopted by a new thread so far.
pub(crate) static HEAPS_ADOPTED: Counter = Counter::new();
/// Parked heaps nobody adopted within the decay time, torn down so far.
pub(crate) static HEAPS_EVICTED: Counter = Counter::new();
