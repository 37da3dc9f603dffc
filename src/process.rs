//! Process-wide state, shared by every heap: the lists of abandoned segments
//! (segments of exited threads that still hold live blocks), the cache of
//! empty segments, and the registry of live heaps. Normal builds have one
//! static instance, [`SHARED`]; loom models build their own, so the types
//! hold no statics.
//!
//! **The abandoned segments** wait in one queue per kind of segment (small,
//! medium, large, huge), so a thread that needs a page of one kind finds a
//! segment of that kind in constant time. Each queue is two lists:
//!
//! * `incoming`, a lock-free stack: any thread pushes a segment with one
//!   CAS (thread exit, and a pass that could not take the pop lock);
//! * `visited`, the segments a reclaim pass looked at and kept, so that the
//!   next passes look at the others first; when `incoming` is empty a pass
//!   moves `visited` back onto it in one CAS (a round robin).
//!
//! Popping from a lock-free stack is where the classic hazards live: the
//! popper reads the top segment's `next` link, and meanwhile another popper
//! may take that segment and unmap it (use after unmap), or take it and a
//! second one and push the first back (ABA: the CAS then succeeds with a
//! stale `next`). One small lock, `popping`, rules both out: only its
//! holder pops, or touches a `visited` list, so the segment whose `next` it
//! reads stays on the list, mapped, until its own CAS takes it. The lock is
//! held for a few pointer moves, never across the work on a segment, and
//! nobody waits for it long: a reclaim that finds it busy spins a little and
//! gives up (the allocation maps a fresh page instead), and a pass that
//! cannot take it to keep a segment pushes the segment onto `incoming`
//! lock-free. Pushes never wait. The loom models
//! `abandoned_list_push_races_pop`, `abandoned_list_pops_race_pushes_and_keeps`
//! and `abandoned_list_take_all_races_push_and_pop` check it; abandon and
//! reclaim themselves are the heap's (`heap/abandon.rs`).

use crate::heap::ParkedHeaps;
use crate::registry::HeapRegistry;
use crate::segment::Segment;
use crate::segment_cache::SegmentCache;
use crate::size_class::PageKind;
use crate::sync::{AtomicPtr, AtomicUsize, Ordering, spin_hint, yield_thread};
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
    /// Spare huge segments that exited threads and destroyed heaps left,
    /// warm for any heap's next huge block until their decay time passes
    /// (the same slots and protocol as the segment cache).
    pub(crate) huge_spares: SegmentCache,
    /// Every live heap, for reapers and statistics.
    pub(crate) heaps: HeapRegistry,
    /// Heaps of exited threads kept whole for the next threads (`heap/park.rs`).
    pub(crate) parked: ParkedHeaps,
}

impl Shared {
    /// Fresh shared state.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Shared {
        Shared {
            abandoned: AbandonedSegments::new(),
            segment_cache: SegmentCache::new(),
            huge_spares: SegmentCache::new(),
            heaps: HeapRegistry::new(),
            parked: ParkedHeaps::new(),
        }
    }

    /// Fresh shared state.
    #[cfg(loom)]
    pub(crate) fn new() -> Shared {
        Shared {
            abandoned: AbandonedSegments::new(),
            segment_cache: SegmentCache::new(),
            huge_spares: SegmentCache::new(),
            heaps: HeapRegistry::new(),
            parked: ParkedHeaps::new(),
        }
    }
}

/// Kinds of segment: one queue each.
const KINDS: usize = 4;

/// Tries of the pop lock before a pop, a keep or a recycle gives up (its
/// holder moves a few pointers; one preempted mid-way is not worth waiting
/// for).
#[cfg(not(loom))]
const POP_LOCK_SPINS: usize = 64;
#[cfg(loom)]
const POP_LOCK_SPINS: usize = 2;

/// Yields of the forking thread to a holder of the pop lock (see
/// `lock_for_fork`).
const FORK_LOCK_ROUNDS: usize = 256;

/// The queue of a kind of segment.
fn kind_index(kind: PageKind) -> usize {
    match kind {
        PageKind::Small => 0,
        PageKind::Medium => 1,
        PageKind::Large => 2,
        PageKind::Huge => 3,
    }
}

/// The abandoned segments of one kind (see the module documentation).
struct KindQueue {
    /// Lock-free stack: any thread pushes; only the pop lock's holder pops.
    incoming: AtomicPtr<Segment>,
    /// Segments a pass kept, newest first; only the pop lock's holder
    /// touches it and `visited_tail` (Relaxed: ordered by the lock).
    visited: AtomicPtr<Segment>,
    visited_tail: AtomicPtr<Segment>,
    /// Segments on both lists (a hint: raised before a push, lowered after
    /// a pop).
    len: AtomicUsize,
}

impl KindQueue {
    #[cfg(not(loom))]
    const fn new() -> KindQueue {
        KindQueue {
            incoming: AtomicPtr::new(ptr::null_mut()),
            visited: AtomicPtr::new(ptr::null_mut()),
            visited_tail: AtomicPtr::new(ptr::null_mut()),
            len: AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    fn new() -> KindQueue {
        KindQueue {
            incoming: AtomicPtr::new(ptr::null_mut()),
            visited: AtomicPtr::new(ptr::null_mut()),
            visited_tail: AtomicPtr::new(ptr::null_mut()),
            len: AtomicUsize::new(0),
        }
    }
}

/// Where a pop looks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PopFrom {
    /// `incoming` only (a pass, which must not see what it kept).
    Incoming,
    /// `incoming`, then `visited` (a thread that wants a segment).
    Anywhere,
}

/// The abandoned segments: a queue per kind (see the module documentation).
pub(crate) struct AbandonedSegments {
    queues: [KindQueue; KINDS],
    /// The pop lock: 1 while a thread pops or touches a `visited` list.
    popping: AtomicUsize,
    /// Whether the forking thread holds `popping` across a `fork` (only it
    /// touches this).
    held_for_fork: AtomicUsize,
}

impl AbandonedSegments {
    /// Empty lists.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> AbandonedSegments {
        AbandonedSegments {
            queues: [const { KindQueue::new() }; KINDS],
            popping: AtomicUsize::new(0),
            held_for_fork: AtomicUsize::new(0),
        }
    }

    /// Empty lists.
    #[cfg(loom)]
    pub(crate) fn new() -> AbandonedSegments {
        AbandonedSegments {
            queues: core::array::from_fn(|_| KindQueue::new()),
            popping: AtomicUsize::new(0),
            held_for_fork: AtomicUsize::new(0),
        }
    }

    fn queue(&self, kind: PageKind) -> &KindQueue {
        &self.queues[kind_index(kind)]
    }

    /// Links the chain `first ..= last` (linked through `abandoned_next`)
    /// onto `incoming` of `queue`.
    ///
    /// # Safety
    /// The caller owns every segment of the chain and gives them up (or,
    /// holding the pop lock, moves a `visited` chain); `last` is reachable
    /// from `first`.
    unsafe fn link_chain(queue: &KindQueue, first: *mut Segment, last: *mut Segment) {
        // Relaxed: starting guess for the CAS loop.
        let mut head = queue.incoming.load(Ordering::Relaxed);
        loop {
            // SAFETY: we still own `last` until the CAS publishes it.
            unsafe { Segment::set_abandoned_next(last, head) };
            // Release pairs with the Acquire load and CAS in `pop_incoming`:
            // the popper sees every write we made to these segments and
            // their pages.
            match queue.incoming.compare_exchange_weak(
                head,
                first,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Publishes one segment (never waits).
    ///
    /// # Safety
    /// The caller owns the segment and gives it up.
    pub(crate) unsafe fn push(&self, segment: *mut Segment) {
        // SAFETY: ours (caller); `kind` never changes.
        let queue = self.queue(unsafe { (*segment).kind });
        // Relaxed: a hint (see `len`).
        queue.len.fetch_add(1, Ordering::Relaxed);
        // SAFETY: ours, given up (caller).
        unsafe { Self::link_chain(queue, segment, segment) }
    }

    /// Takes the pop lock, trying `tries` times (spinning, then yielding
    /// with `yielding`).
    fn lock(&self, tries: usize, yielding: bool) -> bool {
        for _ in 0..tries {
            // Acquire pairs with the Release of `unlock`: the previous
            // holder's pops and `visited` links are visible.
            if self
                .popping
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
            if yielding {
                yield_thread();
            } else {
                spin_hint();
            }
        }
        false
    }

    fn unlock(&self) {
        // Release pairs with the Acquire of the next `lock`.
        self.popping.store(0, Ordering::Release);
    }

    /// Pops the top of `incoming`. The caller holds the pop lock.
    fn pop_incoming(&self, queue: &KindQueue) -> *mut Segment {
        // Acquire pairs with the Release CAS of `push_chain`: the top
        // segment's link and contents are visible.
        let mut top = queue.incoming.load(Ordering::Acquire);
        while !top.is_null() {
            // SAFETY: `top` is on the list, and only we (holding the pop
            // lock) take segments off it, so it is mapped and its link is
            // the one its pusher wrote.
            let next = unsafe { Segment::abandoned_next(top) };
            // Acquire on both outcomes: a retry reads the new top's link
            // (pairs with `push_chain`'s Release).
            match queue.incoming.compare_exchange_weak(
                top,
                next,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return top,
                Err(current) => top = current,
            }
        }
        ptr::null_mut()
    }

    /// Pops the newest segment of `visited`. The caller holds the pop lock.
    fn pop_visited(queue: &KindQueue) -> *mut Segment {
        // Relaxed (all `visited` accesses): ordered by the pop lock.
        let top = queue.visited.load(Ordering::Relaxed);
        if !top.is_null() {
            // SAFETY: on the `visited` list, which only the lock holder
            // touches.
            let next = unsafe { Segment::abandoned_next(top) };
            queue.visited.store(next, Ordering::Relaxed);
            if next.is_null() {
                queue.visited_tail.store(ptr::null_mut(), Ordering::Relaxed);
            }
        }
        top
    }

    /// Takes one segment of `kind`, which the caller then owns exclusively;
    /// null if there is none, or the pop lock stayed busy.
    pub(crate) fn pop(&self, kind: PageKind, from: PopFrom) -> *mut Segment {
        let queue = self.queue(kind);
        // Relaxed: a hint; an empty queue costs one load.
        if queue.len.load(Ordering::Relaxed) == 0 || !self.lock(POP_LOCK_SPINS, false) {
            return ptr::null_mut();
        }
        let mut segment = self.pop_incoming(queue);
        if segment.is_null() && from == PopFrom::Anywhere {
            segment = Self::pop_visited(queue);
        }
        self.unlock();
        if !segment.is_null() {
            // Relaxed: a hint.
            queue.len.fetch_sub(1, Ordering::Relaxed);
        }
        segment
    }

    /// Gives back a segment a pass popped and keeps abandoned: onto
    /// `visited`, or onto `incoming` if the pop lock is busy (never waits).
    ///
    /// # Safety
    /// The caller owns the segment (popped it) and gives it up.
    pub(crate) unsafe fn keep(&self, segment: *mut Segment) {
        // SAFETY: ours (caller); `kind` never changes.
        let kind = unsafe { (*segment).kind };
        if !self.lock(POP_LOCK_SPINS, false) {
            // SAFETY: ours, given up.
            unsafe { self.push(segment) };
            return;
        }
        let queue = self.queue(kind);
        // Relaxed: a hint.
        queue.len.fetch_add(1, Ordering::Relaxed);
        // Relaxed (all `visited` accesses): ordered by the pop lock.
        let top = queue.visited.load(Ordering::Relaxed);
        // SAFETY: ours until linked in below.
        unsafe { Segment::set_abandoned_next(segment, top) };
        if top.is_null() {
            queue.visited_tail.store(segment, Ordering::Relaxed);
        }
        queue.visited.store(segment, Ordering::Relaxed);
        self.unlock();
    }

    /// Moves the `visited` segments of `kind` back onto `incoming`, so
    /// passes look at them again (a pass calls it when `incoming` is
    /// empty; `collect(true)` before it looks at everything). Does nothing
    /// if the pop lock stays busy.
    pub(crate) fn recycle(&self, kind: PageKind) {
        let queue = self.queue(kind);
        // Relaxed: only a shortcut (the list is re-read under the lock).
        if queue.visited.load(Ordering::Relaxed).is_null() || !self.lock(POP_LOCK_SPINS, false) {
            return;
        }
        // Relaxed: ordered by the pop lock.
        let first = queue.visited.swap(ptr::null_mut(), Ordering::Relaxed);
        let last = queue.visited_tail.swap(ptr::null_mut(), Ordering::Relaxed);
        if !first.is_null() {
            // SAFETY: the `visited` chain, which we hold under the lock,
            // `last` its tail; it stays counted in `len`.
            unsafe { Self::link_chain(queue, first, last) };
        }
        self.unlock();
    }

    /// Takes every segment of `kind` (both lists) for a pass that looks
    /// at all of them (`collect(true)`): the caller owns the returned chain
    /// exclusively (linked through `abandoned_next`), and gives each segment
    /// back with [`AbandonedSegments::keep_chain`] or accounts for it with
    /// [`AbandonedSegments::note_removed`]. Waits for the pop lock (yielding,
    /// bounded: null if it stays busy). One lock and one swap for the whole
    /// list, where popping one by one would cost a few atomic operations
    /// per segment.
    pub(crate) fn take_all(&self, kind: PageKind) -> *mut Segment {
        let queue = self.queue(kind);
        // Relaxed: a hint.
        if queue.len.load(Ordering::Relaxed) == 0 || !self.lock(FORK_LOCK_ROUNDS, true) {
            return ptr::null_mut();
        }
        // Acquire pairs with the Release CAS of `link_chain`, as in
        // `pop_incoming`.
        let incoming = queue.incoming.swap(ptr::null_mut(), Ordering::Acquire);
        // Relaxed (`visited`): ordered by the pop lock.
        let visited = queue.visited.swap(ptr::null_mut(), Ordering::Relaxed);
        let tail = queue.visited_tail.swap(ptr::null_mut(), Ordering::Relaxed);
        let chain = if visited.is_null() {
            incoming
        } else {
            // SAFETY: `tail` ends the `visited` chain, ours under the lock.
            unsafe { Segment::set_abandoned_next(tail, incoming) };
            visited
        };
        self.unlock();
        chain
    }

    /// Gives back the chain `first ..= last` of segments of `kind` that a
    /// [`AbandonedSegments::take_all`] took and keeps abandoned: onto
    /// `visited`, or `incoming` if the pop lock stays busy.
    ///
    /// # Safety
    /// The caller took the chain with `take_all` and gives it up; `last`
    /// is reachable from `first`.
    pub(crate) unsafe fn keep_chain(
        &self,
        kind: PageKind,
        first: *mut Segment,
        last: *mut Segment,
    ) {
        let queue = self.queue(kind);
        if !self.lock(POP_LOCK_SPINS, false) {
            // SAFETY: ours, given up (caller).
            unsafe { Self::link_chain(queue, first, last) };
            return;
        }
        // Relaxed (`visited`): ordered by the pop lock.
        let top = queue.visited.load(Ordering::Relaxed);
        // SAFETY: ours until linked in.
        unsafe { Segment::set_abandoned_next(last, top) };
        if top.is_null() {
            queue.visited_tail.store(last, Ordering::Relaxed);
        }
        queue.visited.store(first, Ordering::Relaxed);
        self.unlock();
    }

    /// Records that `count` segments of `kind` a `take_all` took were not
    /// given back.
    pub(crate) fn note_removed(&self, kind: PageKind, count: usize) {
        // Relaxed: a hint.
        self.queue(kind).len.fetch_sub(count, Ordering::Relaxed);
    }

    /// Whether `incoming` of `kind` is empty (a hint).
    pub(crate) fn incoming_is_empty(&self, kind: PageKind) -> bool {
        // Relaxed: a hint.
        self.queue(kind).incoming.load(Ordering::Relaxed).is_null()
    }

    /// Segments of `kind` on the lists (approximate while threads race).
    pub(crate) fn len_of(&self, kind: PageKind) -> usize {
        // Relaxed: a hint.
        self.queue(kind).len.load(Ordering::Relaxed)
    }

    /// Segments on the lists (approximate while threads race).
    pub(crate) fn len(&self) -> usize {
        self.queues
            .iter()
            // Relaxed: statistics only.
            .map(|queue| queue.len.load(Ordering::Relaxed))
            .sum()
    }

    /// Before `fork` (after every heap's lock is held): holds the pop lock,
    /// so the child inherits no pop half-way. A holder that stays busy for
    /// [`FORK_LOCK_ROUNDS`] yields (the forking thread itself, interrupted
    /// by the signal handler that forks) is not waited for.
    pub(crate) fn lock_for_fork(&self) {
        let held = self.lock(FORK_LOCK_ROUNDS, true);
        // Relaxed: only the forking thread touches it.
        self.held_for_fork
            .store(usize::from(held), Ordering::Relaxed);
    }

    /// After `fork`, in the parent and in the child: ends `lock_for_fork`.
    pub(crate) fn unlock_after_fork(&self) {
        // Relaxed: see `lock_for_fork`.
        if self.held_for_fork.swap(0, Ordering::Relaxed) == 1 {
            self.unlock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(kind: PageKind) -> *mut Segment {
        Segment::create(kind, 9, ptr::null_mut(), false)
            .expect("segment")
            .as_ptr()
    }

    /// Pops every segment of `kind` (recycling `visited` first).
    fn drain(list: &AbandonedSegments, kind: PageKind) -> Vec<*mut Segment> {
        let mut taken = Vec::new();
        loop {
            let s = list.pop(kind, PopFrom::Anywhere);
            if s.is_null() {
                return taken;
            }
            taken.push(s);
        }
    }

    #[test]
    fn a_pop_finds_the_kind_it_asks_for_whatever_else_waits() {
        let list = AbandonedSegments::new();
        let large: Vec<*mut Segment> = (0..50).map(|_| segment(PageKind::Large)).collect();
        let small = segment(PageKind::Small);
        // SAFETY: fresh segments, handed to the list.
        unsafe {
            list.push(small);
            for &s in &large {
                list.push(s);
            }
        }
        assert_eq!(list.len(), 51);
        assert_eq!(list.len_of(PageKind::Small), 1);
        assert!(list.pop(PageKind::Medium, PopFrom::Anywhere).is_null());
        assert_eq!(list.pop(PageKind::Small, PopFrom::Anywhere), small);
        assert!(list.pop(PageKind::Small, PopFrom::Anywhere).is_null());
        let mut taken = drain(&list, PageKind::Large);
        assert_eq!(list.len(), 0);
        taken.sort();
        let mut expected = large.clone();
        expected.sort();
        assert_eq!(taken, expected, "every segment popped exactly once");
        for s in taken.into_iter().chain([small]) {
            // SAFETY: ours, empty, on no list.
            unsafe { Segment::release(s) };
        }
    }

    /// A pass's round robin: kept segments go to `visited`, out of reach
    /// of `PopFrom::Incoming` until recycled, but a thread that wants a
    /// segment still finds them.
    #[test]
    fn kept_segments_wait_on_visited_until_recycled() {
        let list = AbandonedSegments::new();
        let segments: Vec<*mut Segment> = (0..3).map(|_| segment(PageKind::Small)).collect();
        // SAFETY: fresh segments, handed to the list.
        unsafe {
            for &s in &segments {
                list.push(s);
            }
        }
        let first = list.pop(PageKind::Small, PopFrom::Incoming);
        // SAFETY: popped, ours, given back.
        unsafe { list.keep(first) };
        assert_eq!(list.len_of(PageKind::Small), 3);
        let mut seen = vec![first];
        for _ in 0..2 {
            let s = list.pop(PageKind::Small, PopFrom::Incoming);
            assert!(!s.is_null() && !seen.contains(&s), "the others first");
            seen.push(s);
            // SAFETY: as above.
            unsafe { list.keep(s) };
        }
        assert!(list.pop(PageKind::Small, PopFrom::Incoming).is_null());
        assert!(list.incoming_is_empty(PageKind::Small));
        list.recycle(PageKind::Small);
        assert!(!list.incoming_is_empty(PageKind::Small));
        let mut again = drain(&list, PageKind::Small);
        again.sort();
        seen.sort();
        assert_eq!(again, seen);
        assert_eq!(list.len(), 0);
        for s in again {
            // SAFETY: ours, empty, on no list.
            unsafe { Segment::release(s) };
        }
    }

    #[test]
    fn concurrent_pushes_pops_and_keeps_lose_nothing() {
        let list = AbandonedSegments::new();
        let per_thread = 50;
        let taken = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..per_thread {
                        // SAFETY: a fresh segment handed to the list.
                        unsafe { list.push(segment(PageKind::Small)) };
                    }
                });
            }
            scope.spawn(|| {
                for round in 0..400 {
                    let s = list.pop(PageKind::Small, PopFrom::Incoming);
                    if s.is_null() {
                        list.recycle(PageKind::Small);
                    } else if round % 2 == 0 {
                        // SAFETY: popped, ours, given back.
                        unsafe { list.keep(s) };
                    } else {
                        taken.lock().unwrap().push(s.expose_provenance());
                    }
                    std::thread::yield_now();
                }
            });
        });
        let mut all = taken.into_inner().unwrap();
        all.extend(
            drain(&list, PageKind::Small)
                .into_iter()
                .map(|s| s.expose_provenance()),
        );
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "no segment taken twice");
        assert_eq!(count, 2 * per_thread, "no segment lost");
        assert_eq!(list.len(), 0);
        for addr in all {
            // SAFETY: every segment was taken exactly once and is ours.
            unsafe { Segment::release(ptr::with_exposed_provenance_mut(addr)) };
        }
    }
}
