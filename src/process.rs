//! Process-wide state, shared by every heap: the list of abandoned segments
//! (segments of exited threads that still hold live blocks), the cache of
//! empty segments, and the registry of live heaps. Normal builds have one
//! static instance, [`SHARED`]; loom models build their own, so the types
//! hold no statics.
//!
//! The abandoned list is lock-free with take-all readers: a pusher links a
//! chain in with one CAS; a reclaiming thread takes the whole list with one
//! swap, so it owns every segment on it exclusively (nothing can be
//! unmapped under a reader, and no ABA can occur), and pushes back what it
//! keeps. The loom model `abandoned_list_push_races_take_all` checks it;
//! abandon and reclaim themselves are the heap's (`heap/abandon.rs`).

use crate::registry::HeapRegistry;
use crate::segment::Segment;
use crate::segment_cache::SegmentCache;
use crate::sync::{AtomicPtr, AtomicUsize, Ordering};
use core::ptr;

/// The process's shared state (see [`Shared`]).
#[cfg(not(loom))]
pub(crate) static SHARED: Shared = Shared::new();

/// Process-wide state shared by all heaps. Normal builds have one static
/// instance; loom models build their own, so the type holds no statics.
pub(crate) struct Shared {
    /// Segments of exited threads.
    pub(crate) abandoned: AbandonedSegments,
    /// Empty segments kept for reuse.
    pub(crate) segment_cache: SegmentCache,
    /// Every live heap, for reapers and statistics.
    pub(crate) heaps: HeapRegistry,
}

impl Shared {
    /// Fresh shared state.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Shared {
        Shared {
            abandoned: AbandonedSegments::new(),
            segment_cache: SegmentCache::new(),
            heaps: HeapRegistry::new(),
        }
    }

    /// Fresh shared state.
    #[cfg(loom)]
    pub(crate) fn new() -> Shared {
        Shared {
            abandoned: AbandonedSegments::new(),
            segment_cache: SegmentCache::new(),
            heaps: HeapRegistry::new(),
        }
    }
}

/// A lock-free list of abandoned segments: many pushers, take-all readers.
pub(crate) struct AbandonedSegments {
    head: AtomicPtr<Segment>,
    count: AtomicUsize,
}

impl AbandonedSegments {
    /// An empty list.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> AbandonedSegments {
        AbandonedSegments {
            head: AtomicPtr::new(ptr::null_mut()),
            count: AtomicUsize::new(0),
        }
    }

    /// An empty list.
    #[cfg(loom)]
    pub(crate) fn new() -> AbandonedSegments {
        AbandonedSegments {
            head: AtomicPtr::new(ptr::null_mut()),
            count: AtomicUsize::new(0),
        }
    }

    /// Publishes the chain `first ..= last` (linked through
    /// `abandoned_next`, `count` segments long).
    ///
    /// # Safety
    /// The caller owns every segment of the chain and gives them up; `last`
    /// is reachable from `first`.
    pub(crate) unsafe fn push_chain(&self, first: *mut Segment, last: *mut Segment, count: usize) {
        // Relaxed: counts are statistics, read for reporting only.
        self.count.fetch_add(count, Ordering::Relaxed);
        // Relaxed: starting guess for the CAS loop.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: we still own `last` until the CAS publishes it.
            unsafe { Segment::set_abandoned_next(last, head) };
            // Release pairs with the Acquire swap in `take_all`: the taker
            // sees every write we made to these segments and their pages.
            match self
                .head
                .compare_exchange_weak(head, first, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Publishes one segment.
    ///
    /// # Safety
    /// As [`AbandonedSegments::push_chain`].
    pub(crate) unsafe fn push(&self, segment: *mut Segment) {
        // SAFETY: forwarded.
        unsafe { self.push_chain(segment, segment, 1) }
    }

    /// Takes every segment on the list; the caller owns them exclusively and
    /// must push back (or release, or adopt) each one.
    pub(crate) fn take_all(&self) -> *mut Segment {
        // Relaxed: avoid the RMW (and its cache-line write) when empty.
        if self.head.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        // Acquire pairs with the Release CAS in `push_chain`.
        self.head.swap(ptr::null_mut(), Ordering::Acquire)
    }

    /// Records that `count` taken segments were not pushed back.
    pub(crate) fn note_removed(&self, count: usize) {
        // Relaxed: statistics only.
        self.count.fetch_sub(count, Ordering::Relaxed);
    }

    /// Segments currently on the list (approximate while threads race).
    #[cfg_attr(not(any(test, loom)), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        // Relaxed: statistics only.
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::PageKind;

    fn segment() -> *mut Segment {
        Segment::create(PageKind::Small, 9, ptr::null_mut(), false)
            .expect("segment")
            .as_ptr()
    }

    #[test]
    fn take_all_returns_every_pushed_segment_once() {
        let list = AbandonedSegments::new();
        assert!(list.take_all().is_null());
        let segments: Vec<*mut Segment> = (0..5).map(|_| segment()).collect();
        // SAFETY: the segments are ours and handed to the list.
        unsafe {
            list.push(segments[0]);
            Segment::set_abandoned_next(segments[1], segments[2]);
            list.push_chain(segments[1], segments[2], 2);
            list.push(segments[3]);
            list.push(segments[4]);
        }
        assert_eq!(list.len(), 5);
        let mut taken = Vec::new();
        let mut s = list.take_all();
        while !s.is_null() {
            taken.push(s);
            // SAFETY: taken segments are ours.
            s = unsafe { Segment::abandoned_next(s) };
        }
        list.note_removed(taken.len());
        assert!(
            list.take_all().is_null(),
            "the list is empty after take_all"
        );
        let mut sorted = taken.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        assert_eq!(list.len(), 0);
        for s in taken {
            // SAFETY: ours, empty, on no list.
            unsafe { Segment::release(s) };
        }
    }

    #[test]
    fn concurrent_pushes_and_takes_lose_nothing() {
        let list = AbandonedSegments::new();
        let per_thread = 50;
        let taken = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..per_thread {
                        // SAFETY: a fresh segment handed to the list.
                        unsafe { list.push(segment()) };
                    }
                });
            }
            scope.spawn(|| {
                for _ in 0..200 {
                    let mut s = list.take_all();
                    let mut chain = Vec::new();
                    while !s.is_null() {
                        chain.push(s.expose_provenance());
                        // SAFETY: taken segments are ours.
                        s = unsafe { Segment::abandoned_next(s) };
                    }
                    taken.lock().unwrap().extend(chain);
                    std::thread::yield_now();
                }
            });
        });
        let mut all = taken.into_inner().unwrap();
        let mut s = list.take_all();
        while !s.is_null() {
            all.push(s.expose_provenance());
            // SAFETY: taken segments are ours.
            s = unsafe { Segment::abandoned_next(s) };
        }
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "no segment taken twice");
        assert_eq!(count, 2 * per_thread, "no segment lost");
        for addr in all {
            // SAFETY: every segment was taken exactly once and is ours.
            unsafe { Segment::release(ptr::with_exposed_provenance_mut(addr)) };
        }
    }
}
