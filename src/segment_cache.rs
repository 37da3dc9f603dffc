//! A small process-wide cache of empty segments, so a thread that frees its
//! last page and soon needs a new one (or another thread that does) skips
//! `munmap` + `mmap`. A cached segment has usually given its page memory
//! back to the OS and costs its header and 4 MiB of address space; one left
//! by a thread's exit or a heap's `destroy` keeps its memory until its reset
//! delay passes (a reaper's `sweep` gives it back), so the next thread or
//! heap reuses it without page faults.
//!
//! Lock-free and ABA-free: each slot holds at most one segment; `put` claims
//! an empty slot with a CAS, `take` empties a slot with a swap, so a segment
//! is owned by exactly one thread at a time. The loom model
//! `segment_cache_put_races_take` checks it.

use crate::options::MAX_SEGMENT_CACHE;
use crate::segment::Segment;
use crate::sync::{AtomicPtr, Ordering};
use core::ptr;

/// The cache: [`MAX_SEGMENT_CACHE`] slots, of which the first
/// `options::segment_cache()` are used.
pub(crate) struct SegmentCache {
    slots: [AtomicPtr<Segment>; MAX_SEGMENT_CACHE],
}

impl SegmentCache {
    /// An empty cache.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> SegmentCache {
        SegmentCache {
            slots: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_SEGMENT_CACHE],
        }
    }

    /// An empty cache.
    #[cfg(loom)]
    pub(crate) fn new() -> SegmentCache {
        SegmentCache {
            slots: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }
    }

    /// Offers an empty segment to the first `limit` slots; returns false (the
    /// caller keeps it) when they are all taken.
    ///
    /// # Safety
    /// The caller owns the segment (empty, on no list) and gives it up on
    /// success.
    pub(crate) unsafe fn put(&self, segment: *mut Segment, limit: usize) -> bool {
        for slot in self.slots.iter().take(limit) {
            // Release pairs with the Acquire swap in `take`: the taker sees
            // everything we wrote to the segment. Relaxed on failure: the
            // slot is simply taken.
            if slot
                .compare_exchange(
                    ptr::null_mut(),
                    segment,
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// Takes a cached segment (the caller owns it), or null.
    pub(crate) fn take(&self) -> *mut Segment {
        for slot in &self.slots {
            // Relaxed: a cheap emptiness test; the swap acquires.
            if !slot.load(Ordering::Relaxed).is_null() {
                // Acquire pairs with the Release CAS in `put`.
                let segment = slot.swap(ptr::null_mut(), Ordering::Acquire);
                if !segment.is_null() {
                    return segment;
                }
            }
        }
        ptr::null_mut()
    }

    /// Segments cached now (approximate while threads race).
    pub(crate) fn len(&self) -> usize {
        // Relaxed: statistics only.
        self.slots
            .iter()
            .filter(|slot| !slot.load(Ordering::Relaxed).is_null())
            .count()
    }

    /// Gives back the memory of cached segments whose reset is due by
    /// `now_ms` (see `Segment::cache_dirty`): each is taken out, reset, and
    /// put back into the first `limit` slots (or unmapped if they are all
    /// taken); one whose memory stays (not due yet) may go back into any
    /// slot, as `heap::segments::cache_or_release` put it; a pooled huge
    /// spare that is due is unmapped.
    pub(crate) fn sweep(&self, now_ms: u64, limit: usize) {
        for slot in &self.slots {
            // Relaxed: a cheap emptiness test; the swap acquires.
            if slot.load(Ordering::Relaxed).is_null() {
                continue;
            }
            // Acquire pairs with the Release CAS in `put`.
            let segment = slot.swap(ptr::null_mut(), Ordering::Acquire);
            if segment.is_null() {
                continue;
            }
            // SAFETY: the swap made us the segment's only owner.
            unsafe {
                let keep = Segment::reset_cached_if_due(segment, now_ms);
                // Still warm (not due): any slot, as it was put; reset (or
                // a huge spare): within `limit`, and none with the cache off.
                let slots = if limit > 0 && Segment::is_warm_cached(segment, now_ms) {
                    MAX_SEGMENT_CACHE
                } else {
                    limit
                };
                if !keep || !self.put(segment, slots) {
                    Segment::release(segment);
                }
            }
        }
    }

    /// Unmaps every cached segment.
    pub(crate) fn drain(&self) {
        loop {
            let segment = self.take();
            if segment.is_null() {
                return;
            }
            // SAFETY: `take` made us the segment's only owner; it is empty.
            unsafe { Segment::release(segment) };
        }
    }
}
