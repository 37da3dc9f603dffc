//! A heap: page queues per size class, the direct table for small sizes,
//! the delayed-free list, and the segments its pages live in.
//!
//! Every thread has a default heap (see `thread`); a first-class heap is the
//! same type. A heap belongs to one thread: only that thread allocates from
//! it or touches its non-atomic state. Other threads reach it in exactly one
//! way: pushing a block onto `thread_delayed_free` (the delayed route of a
//! remote free, see `page`).
//!
//! Segments belong to the heap whose pages they hold, so tearing a heap down
//! touches its pages and segments only, never its blocks.

use crate::abandon::Shared;
use crate::options;
use crate::os::{self, OS_PAGE_SIZE};
use crate::page::{Block, DelayedMode, IN_FULL, Page, empty_page};
use crate::registry::{NOTHING_DUE, Slot};
use crate::segment::{Links, SEGMENT_SIZE, Segment};
use crate::size_class::{
    BIN_COUNT, BIN_FULL, BIN_HUGE, BLOCK_SIZES, DIRECT_SLOTS, PageKind, QUEUE_COUNT,
    SMALL_BLOCK_MAX, SMALL_SIZE_MAX, WORD, bin_of, direct_slots_of, page_kind_of,
};
use crate::stats;
use crate::sync::{AtomicPtr, Ordering, OwnerCell, yield_thread};
use core::cell::Cell;
use core::ptr;

/// A doubly linked list of pages (the owner's, or a lock holder's for the
/// full queue and the reset queue).
pub(crate) struct PageQueue {
    first: OwnerCell<*mut Page>,
    last: OwnerCell<*mut Page>,
}

impl PageQueue {
    #[cfg(not(loom))]
    const fn new() -> PageQueue {
        PageQueue {
            first: OwnerCell::new(ptr::null_mut()),
            last: OwnerCell::new(ptr::null_mut()),
        }
    }

    #[cfg(loom)]
    fn new() -> PageQueue {
        PageQueue {
            first: OwnerCell::new(ptr::null_mut()),
            last: OwnerCell::new(ptr::null_mut()),
        }
    }

    /// A heap's queues, all empty.
    #[cfg(not(loom))]
    const fn array() -> [PageQueue; QUEUE_COUNT] {
        [const { PageQueue::new() }; QUEUE_COUNT]
    }

    /// A heap's queues, all empty.
    #[cfg(loom)]
    fn array() -> [PageQueue; QUEUE_COUNT] {
        core::array::from_fn(|_| PageQueue::new())
    }

    /// Links `page` at the front.
    ///
    /// # Safety
    /// `page` is an owned page on no queue.
    unsafe fn push_front(&self, page: *mut Page) {
        // SAFETY: owner-only links of owned pages (caller).
        unsafe {
            let first = self.first.get();
            (*page).prev.set(ptr::null_mut());
            (*page).next.set(first);
            if first.is_null() {
                self.last.set(page);
            } else {
                (*first).prev.set(page);
            }
        }
        self.first.set(page);
    }

    /// Links `page` at the back; returns whether it is now the first page.
    ///
    /// # Safety
    /// `page` is an owned page on no queue.
    unsafe fn push_back(&self, page: *mut Page) -> bool {
        // SAFETY: owner-only links of owned pages (caller).
        unsafe {
            let last = self.last.get();
            (*page).next.set(ptr::null_mut());
            (*page).prev.set(last);
            self.last.set(page);
            if last.is_null() {
                self.first.set(page);
                true
            } else {
                (*last).next.set(page);
                false
            }
        }
    }

    /// Unlinks `page`; returns whether it was the first page.
    ///
    /// # Safety
    /// `page` is an owned page on this queue.
    unsafe fn remove(&self, page: *mut Page) -> bool {
        // SAFETY: owner-only links of owned pages (caller).
        unsafe {
            let (prev, next) = ((*page).prev.get(), (*page).next.get());
            if prev.is_null() {
                self.first.set(next);
            } else {
                (*prev).next.set(next);
            }
            if next.is_null() {
                self.last.set(prev);
            } else {
                (*next).prev.set(prev);
            }
            (*page).prev.set(ptr::null_mut());
            (*page).next.set(ptr::null_mut());
            prev.is_null()
        }
    }
}

/// Which of a segment's two link pairs a [`SegmentList`] threads through.
#[derive(Clone, Copy)]
enum SegmentLinks {
    /// All segments of the heap.
    All,
    /// Segments with an unused page slot.
    FreeSlot,
}

/// A doubly linked list of segments (owner only).
pub(crate) struct SegmentList {
    first: OwnerCell<*mut Segment>,
}

impl SegmentList {
    #[cfg(not(loom))]
    const fn new() -> SegmentList {
        SegmentList {
            first: OwnerCell::new(ptr::null_mut()),
        }
    }

    #[cfg(loom)]
    fn new() -> SegmentList {
        SegmentList {
            first: OwnerCell::new(ptr::null_mut()),
        }
    }

    /// # Safety
    /// `segment` is live.
    unsafe fn links(segment: *mut Segment, which: SegmentLinks) -> *const Links {
        match which {
            // SAFETY: a field of a live segment (caller).
            SegmentLinks::All => unsafe { ptr::addr_of!((*segment).all) },
            // SAFETY: a field of a live segment (caller).
            SegmentLinks::FreeSlot => unsafe { ptr::addr_of!((*segment).with_free_slot) },
        }
    }

    /// # Safety
    /// `segment` is live, owned, and not on this list.
    unsafe fn push(&self, segment: *mut Segment, which: SegmentLinks) {
        // SAFETY: owner-only links of live segments (caller).
        unsafe {
            let links = Self::links(segment, which);
            let first = self.first.get();
            (*links).prev.set(ptr::null_mut());
            (*links).next.set(first);
            if !first.is_null() {
                (*Self::links(first, which)).prev.set(segment);
            }
            self.first.set(segment);
        }
    }

    /// # Safety
    /// `segment` is live, owned, and on this list.
    unsafe fn remove(&self, segment: *mut Segment, which: SegmentLinks) {
        // SAFETY: owner-only links of live segments (caller).
        unsafe {
            let links = Self::links(segment, which);
            let (prev, next) = ((*links).prev.get(), (*links).next.get());
            if prev.is_null() {
                self.first.set(next);
            } else {
                (*Self::links(prev, which)).next.set(next);
            }
            if !next.is_null() {
                (*Self::links(next, which)).prev.set(prev);
            }
            (*links).prev.set(ptr::null_mut());
            (*links).next.set(ptr::null_mut());
        }
    }
}

/// A heap. See the module documentation.
#[repr(C)]
pub(crate) struct Heap {
    /// For every request of up to `SMALL_SIZE_MAX` bytes, indexed by size in
    /// words: the first page of its size class, or the empty-page sentinel.
    /// First field, so the fast path indexes it straight off the heap pointer.
    direct: [Cell<*mut Page>; DIRECT_SLOTS],
    /// Page queues: one per size class, then huge pages, then full pages.
    queues: [PageQueue; QUEUE_COUNT],
    /// Blocks pushed by remote threads freeing into pages that asked to be
    /// noticed (`DelayedMode::UseDelayed`). The only field other threads touch.
    thread_delayed_free: AtomicPtr<Block>,
    /// Id of the owning thread, stamped into every segment of the heap.
    thread_id: Cell<usize>,
    /// Process-wide state (the abandoned-segment list).
    shared: Cell<*const Shared>,
    /// Every segment holding pages of this heap.
    segments: SegmentList,
    /// Small segments with an unused page slot.
    small_slots: SegmentList,
    /// Medium segments with an unused page slot.
    medium_slots: SegmentList,
    /// Large segments whose page is unused (emptied, waiting for its reset).
    large_slots: SegmentList,
    /// Slow-path calls so far: every [`COLLECT_INTERVAL`]th one runs a
    /// collect pass over all the heap's pages.
    slow_calls: Cell<usize>,
    /// Unused page slots whose memory waits for the reset delay, oldest first
    /// (linked through the pages' queue links).
    reset_queue: PageQueue,
    /// Bytes of page memory on `reset_queue` (huge spares excluded).
    pending_reset: Cell<usize>,
    /// Freed huge segments kept for reuse (they sit on `reset_queue`, and
    /// are unmapped when due), and their bytes.
    huge_spares: Cell<usize>,
    huge_spare_bytes: Cell<usize>,
    /// Lowest and highest bin holding a retired page.
    retired_min: Cell<usize>,
    retired_max: Cell<usize>,
    /// The heap's registry slot (its lock), or null for a heap outside the
    /// registry. See `registry`.
    slot: Cell<*const Slot>,
    /// How deep the owner is in nested sections holding the lock (the lock
    /// is re-entrant for the owner; reapers never touch this).
    lock_depth: Cell<u32>,
    /// The forking thread holds its own lock across `fork` (see
    /// `lock_for_fork`).
    locked_for_fork: Cell<bool>,
    /// A first-class heap (`shardalloc::Heap`): it never adopts abandoned
    /// segments, which `destroy` would otherwise free with it.
    first_class: Cell<bool>,
    /// For a first-class heap: the thread's default heap, which takes its
    /// segments when it is destroyed and gives empty ones back (null: none,
    /// e.g. after the thread's teardown).
    heir: Cell<*mut Heap>,
    /// The thread's list of its first-class heaps (see `thread`).
    pub(crate) next_first_class: Cell<*mut Heap>,
    pub(crate) prev_first_class: Cell<*mut Heap>,
    /// Bytes of page memory the heap holds in pages in use (and its peak);
    /// see `Segment::committed_len`.
    page_bytes: Cell<usize>,
    peak_page_bytes: Cell<usize>,
    /// At most this many `page_bytes`: a page or huge block beyond it is
    /// refused (the allocation returns null).
    limit: Cell<usize>,
}

// SAFETY: the `Cell` fields are touched by the owning thread (the heap is
// reached through that thread's thread-local pointer, or through pages of
// segments stamped with its id, which other threads treat as remote), and by
// another thread only while it holds the heap's registry lock (a reaper or
// `stats()`), which the owner also holds around every section touching that
// state (`registry`, design §4.5); `lock_depth` and `locked_for_fork` are
// the owner's alone. Other threads otherwise write only the atomic
// `thread_delayed_free`. The static empty heap is never written (every
// write path first replaces it with a real heap).
unsafe impl Sync for Heap {}

macro_rules! heap_value {
    ($thread_id:expr, $shared:expr) => {
        Heap {
            direct: [const { Cell::new(empty_page()) }; DIRECT_SLOTS],
            queues: PageQueue::array(),
            thread_delayed_free: AtomicPtr::new(ptr::null_mut()),
            thread_id: Cell::new($thread_id),
            shared: Cell::new($shared),
            segments: SegmentList::new(),
            small_slots: SegmentList::new(),
            medium_slots: SegmentList::new(),
            large_slots: SegmentList::new(),
            slow_calls: Cell::new(0),
            reset_queue: PageQueue::new(),
            pending_reset: Cell::new(0),
            huge_spares: Cell::new(0),
            huge_spare_bytes: Cell::new(0),
            retired_min: Cell::new(BIN_COUNT),
            retired_max: Cell::new(0),
            slot: Cell::new(ptr::null()),
            lock_depth: Cell::new(0),
            locked_for_fork: Cell::new(false),
            first_class: Cell::new(false),
            heir: Cell::new(ptr::null_mut()),
            next_first_class: Cell::new(ptr::null_mut()),
            prev_first_class: Cell::new(ptr::null_mut()),
            page_bytes: Cell::new(0),
            peak_page_bytes: Cell::new(0),
            limit: Cell::new(usize::MAX),
        }
    };
}

/// A section of the owner holding its heap's lock.
struct HeapGuard<'a> {
    heap: &'a Heap,
}

impl Drop for HeapGuard<'_> {
    fn drop(&mut self) {
        let depth = self.heap.lock_depth.get() - 1;
        self.heap.lock_depth.set(depth);
        if depth == 0
            && let Some(slot) = self.heap.slot()
        {
            slot.unlock();
        }
    }
}

/// Words of the on-stack bitmap `visit_blocks` marks free blocks in: enough
/// for the most blocks a page holds (a 64 KiB small page of 8-byte blocks).
const VISIT_BITMAP_WORDS: usize = 128;

/// Slow-path calls between two looks at whether a reaping pass is due
/// (each look reads the clock).
const REAP_CHECK_INTERVAL: usize = 64;

/// Slow-path calls between two collect passes over all of a heap's pages.
/// Pages of size classes the thread no longer allocates from (adopted from
/// an exited thread, say) are otherwise never looked at again, and the
/// blocks other threads free into them never come back.
const COLLECT_INTERVAL: usize = 1024;
const _: () = assert!(
    COLLECT_INTERVAL <= 1024,
    "the collect test runs 2048 slow paths"
);
const _: () = assert!(
    COLLECT_INTERVAL.is_multiple_of(REAP_CHECK_INTERVAL),
    "the heartbeat looks for a collect pass only on reap checks"
);

/// Retire countdown (in fresh-page searches) of an empty small page kept
/// for reuse, and of a larger one.
const RETIRE_CYCLES_SMALL: u8 = 16;
const RETIRE_CYCLES_LARGE: u8 = 4;

impl Heap {
    /// The read-only heap every thread starts with: all its direct-table
    /// slots point at the empty page, so the first allocation takes the slow
    /// path, which replaces it with a real heap. Its thread id (1) matches
    /// no segment.
    #[cfg(not(loom))]
    pub(crate) const fn empty() -> Heap {
        heap_value!(1, ptr::null())
    }

    /// A fresh heap for thread `thread_id`.
    pub(crate) fn new(thread_id: usize, shared: *const Shared) -> Heap {
        heap_value!(thread_id, shared)
    }

    /// Makes the heap reachable through its registry slot (which the caller
    /// claimed and still holds locked); unlocks it.
    ///
    /// # Safety
    /// `slot` came from `HeapRegistry::claim` for this heap, which stays at
    /// this address until it releases the slot (`abandon`).
    pub(crate) unsafe fn register(&self, slot: &Slot) {
        self.slot.set(ptr::from_ref(slot));
        slot.set_active(usize::try_from(os::now_ms()).unwrap_or(usize::MAX));
        slot.publish(self.as_ptr());
    }

    /// The heap's registry slot, if it has one.
    pub(crate) fn slot(&self) -> Option<&Slot> {
        // SAFETY: a registered heap's slot is static (or outlives the heap,
        // under loom).
        unsafe { self.slot.get().as_ref() }
    }

    /// Takes the heap's lock (see `registry`) for a section that touches
    /// page slots, segments or the reset queue; re-entrant, and a no-op for
    /// a heap outside the registry. Owner thread only.
    #[inline]
    fn lock(&self) -> HeapGuard<'_> {
        let depth = self.lock_depth.get();
        if depth == 0
            && let Some(slot) = self.slot()
        {
            slot.lock();
        }
        self.lock_depth.set(depth + 1);
        HeapGuard { heap: self }
    }

    /// Whether the heap is in the registry.
    pub(crate) fn is_registered(&self) -> bool {
        !self.slot.get().is_null()
    }

    /// Before `fork`, on the forking thread: holds the heap's lock so that
    /// no reaper is half-way through the heap when the child is made.
    /// Balanced by construction: the lock is taken only if the heap does not
    /// hold it for a fork already, and `unlock_after_fork` lets go of it
    /// only if it was taken here, so any number of calls of either leaves
    /// the lock as it was before the first.
    ///
    /// # Safety
    /// Owner thread, outside any heap operation.
    pub(crate) unsafe fn lock_for_fork(&self) {
        if !self.locked_for_fork.get() {
            core::mem::forget(self.lock());
            self.locked_for_fork.set(true);
        }
    }

    /// After `fork`, in the parent and in the child: ends `lock_for_fork`.
    ///
    /// # Safety
    /// Owner thread (in the child: the forking thread's heap).
    pub(crate) unsafe fn unlock_after_fork(&self) {
        if self.locked_for_fork.replace(false) {
            drop(HeapGuard { heap: self });
        }
    }

    /// In a forked child: tears down the heap of a parent thread that does
    /// not exist in the child, as that thread's exit would have (its live
    /// blocks stay valid, abandoned; its empty pages go back; its registry
    /// slot is released for the child's threads).
    ///
    /// # Safety
    /// Only in a forked child, on its only thread, holding the heap's lock
    /// (taken by `HeapRegistry::lock_all_for_fork` before the fork, so no
    /// slow path of the vanished owner was under way).
    pub(crate) unsafe fn abandon_after_fork(&self) {
        // The lock the child holds becomes the owner's: `abandon` takes it
        // re-entrantly and releases the slot at its end.
        self.lock_depth.set(1);
        self.locked_for_fork.set(false);
        // SAFETY: the only thread (caller) now acts as the owner; the heap's
        // state is consistent, since no slow path of it was under way.
        unsafe {
            self.forget_parent_threads();
            self.abandon();
        }
    }

    /// The owner thread's id.
    #[inline(always)]
    pub(crate) fn thread_id(&self) -> usize {
        self.thread_id.get()
    }

    /// The page to pop a block of `size ≤ SMALL_SIZE_MAX` bytes from (maybe
    /// the empty-page sentinel, whose `free` is null).
    #[inline(always)]
    pub(crate) fn direct_page(&self, size: usize) -> *mut Page {
        match self.direct.get(size.div_ceil(WORD)) {
            Some(slot) => slot.get(),
            None => empty_page(),
        }
    }

    /// The first page of size class `bin`'s queue (null if none): where the
    /// slow path's search would look first.
    #[inline(always)]
    pub(crate) fn first_page(&self, bin: usize) -> *mut Page {
        self.queues
            .get(bin)
            .map_or(ptr::null_mut(), |queue| queue.first.get())
    }

    #[inline]
    fn queue(&self, index: usize) -> &PageQueue {
        match self.queues.get(index) {
            Some(queue) => queue,
            None => crate::fatal::fatal("page queue index out of range"),
        }
    }

    fn as_ptr(&self) -> *mut Heap {
        ptr::from_ref(self).cast_mut()
    }

    /// Number of segments the heap holds (tests and loom models).
    #[cfg(any(test, loom))]
    pub(crate) fn segment_count(&self) -> usize {
        let mut count = 0;
        let mut segment = self.segments.first.get();
        while !segment.is_null() {
            count += 1;
            // SAFETY: segments on the heap's list are live.
            segment = unsafe { (*segment).all.next.get() };
        }
        count
    }

    /// Bytes of empty page slots waiting on the reset queue (loom models).
    #[cfg(loom)]
    pub(crate) fn pending_reset_bytes(&self) -> usize {
        let _guard = self.lock();
        self.pending_reset.get()
    }

    /// A non-atomic access to the one field other threads write: under loom
    /// it proves (or refutes) that every remote access to this heap happened
    /// before the call.
    #[cfg(loom)]
    pub(crate) fn claim_exclusive(&mut self) {
        self.thread_delayed_free.with_mut(|_| ());
    }

    // === page queues ===

    /// Points the direct-table slots of `index` at its queue's first page.
    fn update_direct(&self, index: usize) {
        if index >= BIN_COUNT || BLOCK_SIZES[index.min(BIN_COUNT - 1)] > SMALL_SIZE_MAX {
            return;
        }
        let first = self.queue(index).first.get();
        let page = if first.is_null() { empty_page() } else { first };
        let (low, high) = direct_slots_of(index);
        for slot in self.direct.get(low..=high).unwrap_or(&[]) {
            slot.set(page);
        }
    }

    /// # Safety
    /// `page` is an owned page on no queue.
    unsafe fn queue_push_front(&self, index: usize, page: *mut Page) {
        // SAFETY: forwarded from the caller.
        unsafe { self.queue(index).push_front(page) };
        self.update_direct(index);
    }

    /// # Safety
    /// `page` is an owned page on no queue.
    unsafe fn queue_push_back(&self, index: usize, page: *mut Page) {
        // SAFETY: forwarded from the caller.
        if unsafe { self.queue(index).push_back(page) } {
            self.update_direct(index);
        }
    }

    /// # Safety
    /// `page` is an owned page on queue `index`.
    unsafe fn queue_remove(&self, index: usize, page: *mut Page) {
        // SAFETY: forwarded from the caller.
        if unsafe { self.queue(index).remove(page) } {
            self.update_direct(index);
        }
    }

    /// The queue a page currently sits on.
    ///
    /// # Safety
    /// `page` is an owned page.
    unsafe fn queue_index_of(page: *mut Page) -> usize {
        // SAFETY: owned page (caller).
        unsafe {
            if (*page).is_in_full() {
                BIN_FULL
            } else {
                usize::from((*page).bin.get())
            }
        }
    }

    // === allocation ===

    /// Allocates a size-classed block of `size ≤ LARGE_BLOCK_MAX` bytes when
    /// the fast path missed. Returns null when out of memory.
    ///
    /// # Safety
    /// Called on the owner thread, on a real (non-empty) heap.
    #[inline(never)]
    pub(crate) unsafe fn malloc_generic(&self, size: usize, zero: bool) -> *mut u8 {
        // SAFETY: owner thread (caller) throughout.
        unsafe {
            self.heartbeat();
            let bin = bin_of(size);
            let page = self.find_page(bin);
            if page.is_null() {
                return ptr::null_mut();
            }
            let block = (*page).pop();
            if block.is_null() {
                crate::fatal::fatal("found page has no free block");
            }
            if zero {
                zero_block(page, block, size);
            }
            block.cast()
        }
    }

    /// Allocates a huge block (its own segment) of `size` bytes aligned to
    /// `align`. Fresh OS memory is already zero. Returns null when out of memory.
    ///
    /// # Safety
    /// Called on the owner thread, on a real (non-empty) heap.
    #[inline(never)]
    pub(crate) unsafe fn malloc_huge(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        let _guard = self.lock();
        // SAFETY: owner thread (caller) throughout.
        unsafe {
            self.heartbeat();
            let fits = Segment::huge_footprint(size, align).is_some_and(|b| self.within_limit(b));
            if !fits {
                return ptr::null_mut();
            }
            let spare = self.reuse_huge_spare(size, align, zero);
            if !spare.is_null() {
                return spare;
            }
            let Some((segment, block)) =
                Segment::create_huge(size, align, self.thread_id(), self.as_ptr(), BIN_HUGE)
            else {
                return ptr::null_mut();
            };
            let page = Segment::page(segment.as_ptr(), 0);
            self.segments.push(segment.as_ptr(), SegmentLinks::All);
            self.queue_push_back(BIN_HUGE, page);
            self.note_page_bytes(segment.as_ptr(), page, true);
            block
        }
    }

    /// Housekeeping on every slow path: blocks remote threads parked on the
    /// delayed list, page slots whose reset is due, and every so many calls
    /// a collect pass and a look at other heaps (the reaper). Inlined: on
    /// most slow paths there is nothing to do, which costs a few loads.
    ///
    /// # Safety
    /// Owner thread.
    #[inline(always)]
    unsafe fn heartbeat(&self) {
        let calls = self.slow_calls.get().wrapping_add(1);
        self.slow_calls.set(calls);
        // Relaxed: a cheap emptiness test; `process_delayed` acquires.
        let delayed = !self.thread_delayed_free.load(Ordering::Relaxed).is_null();
        let due = self.reset_due_hint();
        if delayed || due != NOTHING_DUE || calls.is_multiple_of(REAP_CHECK_INTERVAL) {
            // SAFETY: owner thread (caller).
            unsafe { self.heartbeat_work(calls, delayed, due) };
        }
    }

    /// The part of `heartbeat` that has something to do.
    ///
    /// # Safety
    /// Owner thread.
    #[cold]
    #[inline(never)]
    unsafe fn heartbeat_work(&self, calls: usize, delayed: bool, due: usize) {
        if delayed {
            // SAFETY: owner thread (caller).
            unsafe { self.process_delayed(false) };
        }
        if due != NOTHING_DUE && usize::try_from(os::now_ms()).unwrap_or(usize::MAX) >= due {
            let _guard = self.lock();
            // SAFETY: owner thread (caller), holding the lock.
            unsafe { self.reset_expired(false) };
        }
        if calls.is_multiple_of(REAP_CHECK_INTERVAL) {
            if let Some(slot) = self.slot() {
                slot.set_active(usize::try_from(os::now_ms()).unwrap_or(usize::MAX));
            }
            if calls.is_multiple_of(COLLECT_INTERVAL) {
                // SAFETY: owner thread (caller).
                unsafe { self.collect(false) };
            }
            // SAFETY: owner thread (caller).
            unsafe { self.reap_idle_heaps(false) };
        }
    }

    /// A page of `bin` with a free block, or null when out of memory.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn find_page(&self, bin: usize) -> *mut Page {
        // SAFETY: owner thread (caller) throughout.
        unsafe {
            let page = self.search_queue(bin);
            if !page.is_null() {
                return page;
            }
            let kind = page_kind_of(BLOCK_SIZES[bin]);
            if !self.first_class.get() && self.reclaim(Some(kind)) {
                let page = self.search_queue(bin);
                if !page.is_null() {
                    return page;
                }
            }
            self.collect_retired(false);
            self.page_fresh(bin)
        }
    }

    /// Walks queue `bin` for a page with a free block (collecting and
    /// extending on the way); pages found full move to the full queue.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn search_queue(&self, bin: usize) -> *mut Page {
        let queue = self.queue(bin);
        let mut page = queue.first.get();
        // SAFETY: pages on our queues are ours (owner thread, caller).
        unsafe {
            while !page.is_null() {
                let next = (*page).next.get();
                (*page).collect();
                if !(*page).has_free() {
                    (*page).extend();
                }
                if !(*page).has_free() {
                    // About to look full: ask to be told about remote frees,
                    // then collect once more for frees that raced the switch.
                    (*page).set_delayed_mode(DelayedMode::UseDelayed, false);
                    (*page).collect();
                    if (*page).has_free() {
                        let _ = (*page).try_set_delayed_mode(DelayedMode::NoDelayed, false);
                    }
                }
                if (*page).has_free() {
                    if page != queue.first.get() {
                        self.queue_remove(bin, page);
                        self.queue_push_front(bin, page);
                    }
                    return page;
                }
                // The full queue is shared with reapers (which free wholly
                // freed full pages of idle heaps): change it under the lock.
                let _guard = self.lock();
                self.queue_remove(bin, page);
                (*page).flags.set((*page).flags.get() | IN_FULL);
                self.queue_push_back(BIN_FULL, page);
                page = next;
            }
        }
        ptr::null_mut()
    }

    /// Takes a fresh page for `bin` from one of the heap's segments (or a new
    /// segment) and puts it at the front of its queue.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn page_fresh(&self, bin: usize) -> *mut Page {
        let _guard = self.lock();
        let block_size = BLOCK_SIZES[bin];
        let kind = page_kind_of(block_size);
        // SAFETY: owner thread (caller); the claimed slot is ours and unused.
        unsafe {
            if !self.within_limit(Segment::page_size(kind)) {
                // Empty pages kept for reuse may make room.
                self.collect_retired(true);
                if !self.within_limit(Segment::page_size(kind)) {
                    return ptr::null_mut();
                }
            }
            let page = self.claim_page(kind);
            if page.is_null() {
                return page;
            }
            let segment = Segment::of(page.cast());
            let (area, area_size) = Segment::page_area(segment, Segment::page_index(segment, page));
            Segment::note_page_committed(segment, page);
            (*page).init(self.as_ptr(), bin, block_size, area, area_size);
            self.note_page_bytes(segment, page, true);
            self.queue_push_front(bin, page);
            page
        }
    }

    /// An unused page slot of `kind`, from a segment with room or a new one.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn claim_page(&self, kind: PageKind) -> *mut Page {
        let slots = self.slot_list(kind);
        let mut segment = slots.map_or(ptr::null_mut(), |list| list.first.get());
        // SAFETY: owner thread (caller); segments on our lists are ours.
        unsafe {
            // Fill a segment already in use before starting an empty one:
            // empty segments can go back to the OS (or to a first-class
            // heap of this thread) only while they stay empty.
            let mut candidate = segment;
            while !candidate.is_null() {
                if (*candidate).used_pages.get() > 0 {
                    segment = candidate;
                    break;
                }
                candidate = (*candidate).with_free_slot.next.get();
            }
            if segment.is_null() {
                let Some(fresh) = self.new_segment(kind) else {
                    return ptr::null_mut();
                };
                segment = fresh.as_ptr();
                self.segments.push(segment, SegmentLinks::All);
                if let Some(list) = slots {
                    list.push(segment, SegmentLinks::FreeSlot);
                    (*segment).in_free_slot_list.set(true);
                }
            }
            let page = Segment::claim_slot(segment);
            // Reusing a slot whose memory waits for its reset: cancel it.
            self.unschedule_reset(page);
            if !Segment::has_free_slot(segment) && (*segment).in_free_slot_list.get() {
                if let Some(list) = slots {
                    list.remove(segment, SegmentLinks::FreeSlot);
                }
                (*segment).in_free_slot_list.set(false);
            }
            page
        }
    }

    // === freeing ===

    /// After a local free left `page` empty or took it out of the full
    /// state: retire or unfull it.
    ///
    /// A full page with blocks still in use may, once our free stored its
    /// `used`, be freed by a reaper holding every other one of its blocks
    /// (`reset_remote_frees`); then its flags read 0 or its heap null, or
    /// `page_after_free` finds it gone under the lock. A page our free left
    /// empty (`used` 0) or that is not full is touched by nobody else.
    ///
    /// # Safety
    /// `page` is a page of a heap owned by the calling thread.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn after_local_free(page: *mut Page) {
        // SAFETY: the page is ours (caller), so is its heap, set by us (see
        // above for a full page a reaper took).
        unsafe {
            // Emptied again while still retired (an alloc/free loop on the
            // only page of its class): it stays retired; hand the freed
            // blocks straight back to allocation, so the loop's next
            // allocation takes the fast path instead of collecting.
            // (`used` is atomic and only the owner writes it.)
            if (*page).used.get() == 0
                && (*page).flags.get() == 0
                && (*page).retire_expire.get() != 0
            {
                (*page).reuse_local_free();
                return;
            }
            // Relaxed: set by us; only a reaper that freed this (full) page
            // for us stores null, and then there is nothing left to do.
            let heap = (*page).heap.load(Ordering::Relaxed);
            if heap.is_null() {
                return;
            }
            (*heap).page_after_free(page);
        }
    }

    /// # Safety
    /// Owner thread; `page` is ours.
    unsafe fn page_after_free(&self, page: *mut Page) {
        let _guard = self.lock();
        // SAFETY: owner thread (caller), holding the lock.
        unsafe {
            // A reaper may have freed the page for us between the free that
            // brought us here and the lock (`reset_remote_frees`): then it is
            // no longer ours, and there is nothing left to do.
            // Relaxed: we hold the lock, which ordered the reaper's store.
            if !(*page).in_use.get() || (*page).heap.load(Ordering::Relaxed) != self.as_ptr() {
                return;
            }
            if (*page).used.get() == 0 {
                self.page_retire(page);
            } else if (*page).is_in_full() {
                self.page_unfull(page);
            }
        }
    }

    /// Frees `block` of `page` on the owner thread (delayed-list processing).
    ///
    /// # Safety
    /// Owner thread; `block` is a block of `page` that is ours to free.
    unsafe fn free_block_local(&self, page: *mut Page, block: *mut Block) {
        // SAFETY: owner thread (caller).
        unsafe {
            let used = (*page).push_local(block);
            if used == 0 || (*page).is_in_full() {
                self.page_after_free(page);
            }
        }
    }

    /// Moves a page out of the full queue back to its size-class queue.
    ///
    /// # Safety
    /// Owner thread; `page` is ours and in the full queue.
    unsafe fn page_unfull(&self, page: *mut Page) {
        // SAFETY: owner thread (caller).
        unsafe {
            self.queue_remove(BIN_FULL, page);
            (*page).flags.set((*page).flags.get() & !IN_FULL);
            // Best effort: if a remote thread is mid-way through the delayed
            // route it will leave the page in `NoDelayed` itself.
            let _ = (*page).try_set_delayed_mode(DelayedMode::NoDelayed, false);
            self.queue_push_back(usize::from((*page).bin.get()), page);
        }
    }

    /// A page whose last block was just freed: keep it a while if it is the
    /// only page of its size class (so a free/alloc cycle does not thrash),
    /// otherwise give it back to its segment.
    ///
    /// # Safety
    /// Owner thread; `page` is ours and has `used == 0`.
    unsafe fn page_retire(&self, page: *mut Page) {
        // SAFETY: owner thread (caller).
        unsafe {
            if (*page).is_in_full() {
                self.page_unfull(page);
            }
            let bin = usize::from((*page).bin.get());
            if bin < BIN_COUNT && (*page).prev.get().is_null() && (*page).next.get().is_null() {
                let small = (*page).block_size.get() <= SMALL_BLOCK_MAX;
                (*page).retire_expire.set(if small {
                    RETIRE_CYCLES_SMALL
                } else {
                    RETIRE_CYCLES_LARGE
                });
                self.retired_min.set(self.retired_min.get().min(bin));
                self.retired_max.set(self.retired_max.get().max(bin));
                return;
            }
            self.page_free(page);
        }
    }

    /// Counts down retired pages and frees those that expired (all of them
    /// when `force`).
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn collect_retired(&self, force: bool) {
        let (low, high) = (self.retired_min.get(), self.retired_max.get());
        self.retired_min.set(BIN_COUNT);
        self.retired_max.set(0);
        for bin in low..=high.min(BIN_COUNT - 1) {
            let mut page = self.queue(bin).first.get();
            // SAFETY: pages on our queues are ours (owner thread, caller).
            unsafe {
                while !page.is_null() {
                    let next = (*page).next.get();
                    let expire = (*page).retire_expire.get();
                    if expire != 0 {
                        if (*page).used.get() != 0 {
                            // In use again: no longer retired.
                            (*page).retire_expire.set(0);
                        } else if force || expire == 1 {
                            (*page).retire_expire.set(0);
                            self.page_free(page);
                        } else {
                            (*page).retire_expire.set(expire - 1);
                            self.retired_min.set(self.retired_min.get().min(bin));
                            self.retired_max.set(self.retired_max.get().max(bin));
                        }
                    }
                    page = next;
                }
            }
        }
    }

    /// Gives an empty page back to its segment, and the segment back to the
    /// OS when it has no page left.
    ///
    /// # Safety
    /// Owner thread; `page` is ours, on one of our queues, with no live block.
    unsafe fn page_free(&self, page: *mut Page) {
        let _guard = self.lock();
        // SAFETY: forwarded; we hold the lock.
        unsafe { self.page_free_locked(page, false) };
    }

    /// `page_free` by whoever holds the lock (the owner, or a reaper).
    /// With `defer`, the slot only joins the reset queue (no reset, and so
    /// no segment freed, now): a reaper walking the segments calls
    /// `enforce_pending_limit` and `reset_expired` when it is done.
    ///
    /// # Safety
    /// The caller holds the heap's lock; `page` is ours, on one of our
    /// queues, with no live block; with `defer`, not huge.
    unsafe fn page_free_locked(&self, page: *mut Page, defer: bool) {
        // SAFETY: lock held (caller); no block of the page is live, so no
        // other thread can reach the page.
        unsafe {
            self.queue_remove(Self::queue_index_of(page), page);
            // Relaxed: no other thread can read it (no live block).
            (*page).heap.store(ptr::null_mut(), Ordering::Relaxed);
            (*page).retire_expire.set(0);
            let segment = Segment::of(page.cast());
            self.note_page_bytes(segment, page, false);
            if (*segment).kind == PageKind::Huge {
                stats::HUGE_LIVE.sub((*page).block_size.get());
            }
            Segment::release_slot(segment, page);
            if (*segment).kind == PageKind::Huge {
                if !self.keep_huge_spare(segment, page) {
                    self.segment_free(segment);
                }
                return;
            }
            self.list_free_slot(segment);
            // The slot (and, if it was the last, the segment) stays ours
            // until its memory goes back: reused before then, it costs no
            // system call.
            if defer {
                self.enqueue_reset(page, options::reset_delay_ms());
            } else {
                self.schedule_reset(page);
            }
        }
    }

    /// The list of our segments of `kind` with an unused page slot.
    fn slot_list(&self, kind: PageKind) -> Option<&SegmentList> {
        match kind {
            PageKind::Small => Some(&self.small_slots),
            PageKind::Medium => Some(&self.medium_slots),
            PageKind::Large => Some(&self.large_slots),
            PageKind::Huge => None,
        }
    }

    /// Puts a segment with an unused page slot on its kind's slot list.
    ///
    /// # Safety
    /// Owner thread; the segment is ours.
    unsafe fn list_free_slot(&self, segment: *mut Segment) {
        // SAFETY: owner thread (caller).
        unsafe {
            if (*segment).in_free_slot_list.get() || !Segment::has_free_slot(segment) {
                return;
            }
            if let Some(slots) = self.slot_list((*segment).kind) {
                slots.push(segment, SegmentLinks::FreeSlot);
                (*segment).in_free_slot_list.set(true);
            }
        }
    }

    /// Gives up a segment that has no page in use and no page waiting for
    /// its reset.
    ///
    /// # Safety
    /// Owner thread; the segment is ours.
    unsafe fn segment_free_if_empty(&self, segment: *mut Segment) {
        // SAFETY: owner thread (caller).
        unsafe {
            if (*segment).used_pages.get() == 0 && (*segment).pending_pages.get() == 0 {
                self.segment_free(segment);
            }
        }
    }

    /// A segment of `kind` for this heap: a cached one if any, else fresh
    /// from the OS.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn new_segment(&self, kind: PageKind) -> Option<core::ptr::NonNull<Segment>> {
        // SAFETY: `shared` outlives every heap.
        let cache = unsafe { &(*self.shared.get()).segment_cache };
        let heir = self.heir.get();
        if !heir.is_null() {
            // SAFETY: the heir is this thread's live default heap (`heir`).
            let spare = unsafe { (*heir).give_empty_segment(kind) };
            if !spare.is_null() {
                // SAFETY: the heir gave the empty segment up to us.
                unsafe { (*spare).heap.set(self.as_ptr()) };
                return core::ptr::NonNull::new(spare);
            }
        }
        let cached = cache.take();
        if cached.is_null() {
            return Segment::create(kind, self.thread_id(), self.as_ptr());
        }
        // SAFETY: `take` made us the cached segment's only owner.
        unsafe { Segment::reuse(cached, kind, self.thread_id(), self.as_ptr()) }
    }

    /// Takes a segment of ours off the heap's segment lists.
    ///
    /// # Safety
    /// Owner thread holding the lock; the segment is ours.
    unsafe fn detach_segment(&self, segment: *mut Segment) {
        // SAFETY: owner thread (caller); the segment is on our lists.
        unsafe {
            self.segments.remove(segment, SegmentLinks::All);
            if (*segment).in_free_slot_list.get() {
                if let Some(slots) = self.slot_list((*segment).kind) {
                    slots.remove(segment, SegmentLinks::FreeSlot);
                }
                (*segment).in_free_slot_list.set(false);
            }
        }
    }

    /// Gives an empty segment of ours up: its page memory back to the OS and
    /// the segment into the cache, or the whole segment back to the OS.
    ///
    /// # Safety
    /// Owner thread; the segment is ours and has no page in use.
    unsafe fn segment_free(&self, segment: *mut Segment) {
        // SAFETY: owner thread (caller).
        unsafe {
            self.detach_segment(segment);
            for index in 0..(*segment).page_count {
                self.unschedule_reset(Segment::page(segment, index));
            }
            cache_or_release(self.shared.get(), segment);
        }
    }

    // === memory return ===

    /// An unused page slot's memory goes back to the OS after the reset
    /// delay (at once with a delay of 0, or when this heap already has more
    /// than the pending limit waiting).
    ///
    /// # Safety
    /// Owner thread; `page` is an unused slot of one of our segments, on no
    /// queue.
    unsafe fn schedule_reset(&self, page: *mut Page) {
        // SAFETY: owner thread (caller); the slot is ours and unused.
        unsafe {
            let segment = Segment::of(page.cast());
            if (*page).is_reset_pending() {
                return;
            }
            let delay = options::reset_delay_ms();
            if (*page).memory_is_zero.get() || delay == 0 {
                Segment::reset_page(segment, page);
                self.segment_free_if_empty(segment);
                return;
            }
            self.enqueue_reset(page, delay);
            self.enforce_pending_limit();
        }
    }

    /// Puts an unused, dirty slot on the reset queue, due in `delay` ms.
    ///
    /// # Safety
    /// Owner thread holding the lock; `page` is an unused slot of one of our
    /// segments, on no queue and not pending.
    unsafe fn enqueue_reset(&self, page: *mut Page, delay: u64) {
        // SAFETY: owner thread (caller); the slot is ours and unused.
        unsafe {
            let segment = Segment::of(page.cast());
            (*page).replace_reset_pending(true);
            (*segment)
                .pending_pages
                .set((*segment).pending_pages.get() + 1);
            (*page).reset_at.set(os::now_ms().saturating_add(delay));
            let _ = self.reset_queue.push_back(page);
            self.pending_reset
                .set(self.pending_reset.get() + Segment::page_memory(segment, page).1);
        }
    }

    /// Gives back the oldest pending slots while more than the pending limit
    /// waits, then publishes the new due time.
    ///
    /// # Safety
    /// Owner thread holding the lock.
    unsafe fn enforce_pending_limit(&self) {
        let limit = options::pending_reset_limit();
        while self.pending_reset.get() > limit {
            let oldest = self.reset_queue.first.get();
            if oldest.is_null() {
                break;
            }
            // SAFETY: owner thread (caller); a slot on our queue.
            unsafe { self.reset_pending_page(oldest) };
        }
        self.publish_reset_due();
    }

    /// Takes in an emptied segment of a destroyed first-class heap of this
    /// thread: its slots become ours, and their memory waits for the reset
    /// delay like any empty page's (so the next request's heap, or this
    /// heap, reuses it without page faults), beyond the pending limit it
    /// goes back at once.
    ///
    /// # Safety
    /// Owner thread (the segment's owner id is ours); the segment has no
    /// page in use, belongs to no heap and is on no list; the reset delay
    /// is nonzero.
    unsafe fn take_over_empty_segment(&self, segment: *mut Segment, delay: u64) {
        let _guard = self.lock();
        // SAFETY: owner thread (caller); the segment is exclusively ours.
        unsafe {
            (*segment).heap.set(self.as_ptr());
            (*segment).in_free_slot_list.set(false);
            self.segments.push(segment, SegmentLinks::All);
            self.list_free_slot(segment);
            for index in 0..(*segment).page_count {
                let page = Segment::page(segment, index);
                if !(*page).memory_is_zero.get() {
                    self.enqueue_reset(page, delay);
                }
            }
            // Only now, with every dirty slot counted as pending, may a reset
            // empty the segment and free it.
            self.enforce_pending_limit();
            self.segment_free_if_empty(segment);
        }
    }

    /// Hands an empty segment of `kind` (no page in use) over to a
    /// first-class heap of the same thread, if this heap has one; its
    /// pending slots stop waiting (their memory is reused as it is).
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn give_empty_segment(&self, kind: PageKind) -> *mut Segment {
        let Some(list) = self.slot_list(kind) else {
            return ptr::null_mut();
        };
        let _guard = self.lock();
        let mut segment = list.first.get();
        // SAFETY: owner thread (caller); segments on our lists are ours.
        unsafe {
            while !segment.is_null() && (*segment).used_pages.get() != 0 {
                segment = (*segment).with_free_slot.next.get();
            }
            if segment.is_null() {
                return segment;
            }
            for index in 0..(*segment).page_count {
                self.unschedule_reset(Segment::page(segment, index));
            }
            self.detach_segment(segment);
            (*segment).heap.set(ptr::null_mut());
        }
        segment
    }

    /// When the oldest slot on the reset queue is due ([`NOTHING_DUE`] if
    /// none): a hint, read without the lock (a reaper may change the queue
    /// of a registered heap, and keeps the slot's copy of the hint true).
    fn reset_due_hint(&self) -> usize {
        match self.slot() {
            Some(slot) => slot.reset_due(),
            None => {
                let first = self.reset_queue.first.get();
                if first.is_null() {
                    NOTHING_DUE
                } else {
                    // SAFETY: slots on the reset queue are live; no reaper
                    // reaches an unregistered heap.
                    usize::try_from(unsafe { (*first).reset_at.get() }).unwrap_or(NOTHING_DUE)
                }
            }
        }
    }

    /// Tells reapers when the oldest slot on the reset queue is due.
    fn publish_reset_due(&self) {
        let slot = self.slot.get();
        if slot.is_null() {
            return;
        }
        let first = self.reset_queue.first.get();
        let due = if first.is_null() {
            NOTHING_DUE
        } else {
            // SAFETY: slots on our reset queue are live (we hold the lock).
            usize::try_from(unsafe { (*first).reset_at.get() }).unwrap_or(NOTHING_DUE)
        };
        // SAFETY: a registered heap's slot outlives it (see `lock`).
        unsafe { (*slot).set_reset_due(due) };
    }

    /// Counts a page that starts (`gained`) or stops being the heap's in
    /// `page_bytes`.
    ///
    /// # Safety
    /// `page` is a slot of the live `segment`, ours.
    unsafe fn note_page_bytes(&self, segment: *mut Segment, page: *mut Page, gained: bool) {
        // SAFETY: forwarded from the caller.
        let bytes = unsafe { Segment::committed_len(segment, page) };
        if gained {
            let now = self.page_bytes.get() + bytes;
            self.page_bytes.set(now);
            self.peak_page_bytes
                .set(self.peak_page_bytes.get().max(now));
        } else {
            self.page_bytes
                .set(self.page_bytes.get().saturating_sub(bytes));
        }
    }

    /// Whether `bytes` more page memory stays within the heap's limit.
    fn within_limit(&self, bytes: usize) -> bool {
        self.page_bytes.get().saturating_add(bytes) <= self.limit.get()
    }

    /// The reaper: gives back, for heaps of other threads, the memory of
    /// empty page slots whose reset is overdue by a whole reset delay (their
    /// owner has not passed through a slow path since), or of every waiting
    /// slot with `force`. At most one pass per reset delay across the
    /// process unless `force`; heaps whose lock is busy are skipped. A
    /// pass also looks through the abandoned segments (`reclaim`, adopting
    /// nothing).
    ///
    /// # Safety
    /// Owner thread.
    pub(crate) unsafe fn reap_idle_heaps(&self, force: bool) {
        let shared = self.shared.get();
        if shared.is_null() {
            return;
        }
        let delay = usize::try_from(options::reset_delay_ms()).unwrap_or(usize::MAX);
        let now = usize::try_from(os::now_ms()).unwrap_or(usize::MAX);
        // SAFETY: `shared` outlives every heap.
        let registry = unsafe { &(*shared).heaps };
        if !force && !registry.reap_is_due(now, delay.max(1)) {
            return;
        }
        // SAFETY: as above.
        let cache = unsafe { &(*shared).segment_cache };
        cache.sweep(
            if force { u64::MAX } else { os::now_ms() },
            options::segment_cache(),
        );
        // Abandoned segments: the emptied ones go to the cache, and the
        // empty slots of the others give their memory back. A walk over all
        // of them, so only every ten reset delays.
        if !force && registry.reclaim_is_due(now, IDLE_FACTOR * delay.max(1)) {
            // SAFETY: owner thread (caller).
            let _ = unsafe { self.reclaim(None) };
        }
        for slot in registry.slots() {
            if ptr::eq(slot, self.slot.get()) {
                continue;
            }
            let due = slot.reset_due();
            let resets_due = due != NOTHING_DUE && (force || due.saturating_add(delay) <= now);
            // An owner idle for a while: the memory inside the blocks other
            // threads freed into its pages goes back too.
            let idle = force || slot.active().saturating_add(IDLE_FACTOR * delay.max(1)) <= now;
            if !(resets_due || idle) {
                continue;
            }
            if !slot.try_lock() {
                continue;
            }
            let heap = slot.heap();
            // SAFETY: we hold the heap's lock, so its reset queue, segments
            // and page slots are ours until we unlock; the fast paths of its
            // owner never touch unused slots. Remote chains are taken and
            // handed back atomically (`reset_remote_frees`).
            unsafe {
                if resets_due {
                    (*heap).reset_expired(force);
                }
                if idle {
                    (*heap).reset_remote_frees();
                }
            }
            slot.unlock();
        }
    }

    /// Bytes in live blocks of the heap's size-classed pages (huge blocks
    /// are counted process-wide, see `stats`). Blocks other threads freed
    /// and the owner has not collected yet still count.
    ///
    /// # Safety
    /// The caller holds the heap's lock.
    pub(crate) unsafe fn live_bytes(&self) -> usize {
        let mut live = 0;
        let mut segment = self.segments.first.get();
        // SAFETY: segments on the heap's list and their slots stay as they
        // are while we hold the lock; `used` may move under us (the owner's
        // fast paths), and is read atomically.
        unsafe {
            while !segment.is_null() {
                if (*segment).kind != PageKind::Huge {
                    live += Segment::live_bytes(segment);
                }
                segment = (*segment).all.next.get();
            }
        }
        live
    }

    /// [`Heap::live_bytes`] for the owner thread, which takes its own lock
    /// (re-entrantly: the owner may hold it already, in `visit_blocks`).
    ///
    /// # Safety
    /// Owner thread.
    pub(crate) unsafe fn live_bytes_as_owner(&self) -> usize {
        let _guard = self.lock();
        // SAFETY: we hold the lock.
        unsafe { self.live_bytes() }
    }

    /// Takes a slot off the reset queue (it is being reused, or its segment
    /// goes away).
    ///
    /// # Safety
    /// Owner thread; `page` is a slot of one of our segments.
    unsafe fn unschedule_reset(&self, page: *mut Page) {
        // SAFETY: owner thread (caller).
        unsafe {
            if !(*page).replace_reset_pending(false) {
                return;
            }
            let _ = self.reset_queue.remove(page);
            let segment = Segment::of(page.cast());
            (*segment)
                .pending_pages
                .set((*segment).pending_pages.get() - 1);
            if (*segment).kind == PageKind::Huge {
                self.huge_spares.set(self.huge_spares.get() - 1);
                self.huge_spare_bytes
                    .set(self.huge_spare_bytes.get() - (*segment).size);
            } else {
                let bytes = Segment::page_memory(segment, page).1;
                self.pending_reset
                    .set(self.pending_reset.get().saturating_sub(bytes));
            }
            self.publish_reset_due();
        }
    }

    /// Gives a pending slot's memory back now.
    ///
    /// # Safety
    /// Owner thread; `page` is on the reset queue.
    unsafe fn reset_pending_page(&self, page: *mut Page) {
        // SAFETY: owner thread (caller).
        unsafe {
            self.unschedule_reset(page);
            let segment = Segment::of(page.cast());
            if (*segment).kind == PageKind::Huge {
                // A huge spare's delay is over: unmap it.
                self.segment_free(segment);
                return;
            }
            Segment::reset_page(segment, page);
            self.segment_free_if_empty(segment);
        }
    }

    /// Keeps a freed huge segment (its page just released) for a later huge
    /// allocation, until the reset delay passes; false when it should go
    /// now (a delay of 0, or bigger than the spare limit).
    ///
    /// # Safety
    /// Owner thread holding the lock; the segment is ours, huge, on our
    /// segment list, its page unused.
    unsafe fn keep_huge_spare(&self, segment: *mut Segment, page: *mut Page) -> bool {
        let delay = options::reset_delay_ms();
        // Spares are whole blocks that a program replacing a buffer asks for
        // again at once; they get twice the small pages' allowance.
        let limit = options::pending_reset_limit().saturating_mul(2);
        // SAFETY: owner thread (caller); the segment is ours.
        unsafe {
            let size = (*segment).size;
            if delay == 0 || size > limit || (*segment).map_align != SEGMENT_SIZE {
                return false;
            }
            (*page).replace_reset_pending(true);
            (*segment).pending_pages.set(1);
            (*page).reset_at.set(os::now_ms().saturating_add(delay));
            let _ = self.reset_queue.push_back(page);
            self.huge_spares.set(self.huge_spares.get() + 1);
            self.huge_spare_bytes
                .set(self.huge_spare_bytes.get() + size);
            // Over the limit: unmap the oldest spares.
            let mut oldest = self.reset_queue.first.get();
            while self.huge_spare_bytes.get() > limit && !oldest.is_null() {
                let next = (*oldest).next.get();
                if (*Segment::of(oldest.cast())).kind == PageKind::Huge {
                    self.reset_pending_page(oldest);
                }
                oldest = next;
            }
            self.publish_reset_due();
        }
        true
    }

    /// A huge block from a spare segment that fits `size` at `align` (the
    /// smallest that does), or null. Spares much larger than the request
    /// give the tail's memory back.
    ///
    /// # Safety
    /// Owner thread holding the lock.
    unsafe fn reuse_huge_spare(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        if self.huge_spares.get() == 0 {
            return ptr::null_mut();
        }
        let mut best: *mut Page = ptr::null_mut();
        let mut best_size = usize::MAX;
        let mut page = self.reset_queue.first.get();
        // SAFETY: owner thread holding the lock (caller); pages on the reset
        // queue are slots of our live segments.
        unsafe {
            while !page.is_null() {
                let segment = Segment::of(page.cast());
                if (*segment).kind == PageKind::Huge
                    && (*segment).size < best_size
                    && Segment::huge_fits(segment, size, align)
                    && self.within_limit(Segment::committed_len(segment, page))
                {
                    best = page;
                    best_size = (*segment).size;
                }
                page = (*page).next.get();
            }
            if best.is_null() {
                return ptr::null_mut();
            }
            self.unschedule_reset(best);
            let segment = Segment::of(best.cast());
            let block = Segment::reuse_huge(segment, size, align, self.as_ptr(), BIN_HUGE);
            self.queue_push_back(BIN_HUGE, best);
            self.note_page_bytes(segment, best, true);
            if zero {
                block.write_bytes(0, size);
            }
            block
        }
    }

    /// Gives back the memory of pending slots whose delay has expired (all
    /// of them with `force`).
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn reset_expired(&self, force: bool) {
        let mut page = self.reset_queue.first.get();
        if page.is_null() {
            return;
        }
        let now = if force { u64::MAX } else { os::now_ms() };
        // SAFETY: owner thread (caller); queued pages are our slots.
        unsafe {
            while !page.is_null() && (*page).reset_at.get() <= now {
                let next = (*page).next.get();
                self.reset_pending_page(page);
                page = next;
            }
        }
    }

    // === delayed free ===

    /// Pushes a remotely freed block onto the heap's delayed list.
    ///
    /// # Safety
    /// `heap` is live (the caller holds a page of it in `Freeing`, or owns
    /// it); the caller owns `block` and gives it up.
    #[inline]
    pub(crate) unsafe fn push_delayed(heap: *mut Heap, block: *mut Block) {
        // SAFETY: a chain of one block (caller's contract).
        unsafe { Heap::push_delayed_chain(heap, block, block) }
    }

    /// Pushes a chain of blocks (`head` … `tail`, linked) onto the heap's
    /// delayed list: one remotely freed block (`push_delayed`), or the
    /// blocks a reaper took and hands back.
    ///
    /// # Safety
    /// As for [`Heap::push_delayed`], for every block of the chain.
    unsafe fn push_delayed_chain(heap: *mut Heap, head: *mut Block, tail: *mut Block) {
        // SAFETY: the delayed list is atomic; the heap is live (caller).
        let list = unsafe { &(*heap).thread_delayed_free };
        // Relaxed: starting guess for the CAS loop.
        let mut current = list.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is ours until the CAS publishes it.
            unsafe { Block::set_next(tail, current) };
            // Release pairs with the Acquire take in `process_delayed`.
            match list.compare_exchange_weak(current, head, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    /// Frees the blocks remote threads parked on the delayed list. With
    /// `wait_all`, repeats until every block is processed (a block whose page
    /// still has a remote thread in `Freeing` is put back and retried).
    ///
    /// # Safety
    /// Owner thread.
    pub(crate) unsafe fn process_delayed(&self, wait_all: bool) {
        loop {
            // Relaxed: emptiness test; the CAS below acquires.
            let mut head = self.thread_delayed_free.load(Ordering::Relaxed);
            while !head.is_null() {
                // AcqRel/Acquire pairs with the Release pushes of
                // `push_delayed` (every update is an RMW, so all links are
                // visible). A CAS, not a swap: the list is usually empty.
                match self.thread_delayed_free.compare_exchange_weak(
                    head,
                    ptr::null_mut(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(current) => head = current,
                }
            }
            if head.is_null() {
                return;
            }
            let mut all_done = true;
            let mut block = head;
            // SAFETY: taken blocks are ours; each belongs to a page of this
            // heap (a remote thread pushed it here because the page's heap
            // is us), which stays live while the block is unfreed.
            unsafe {
                while !block.is_null() {
                    let next = Block::next(block);
                    let segment = Segment::of(block.cast());
                    let page = Segment::page_of(segment, block.cast());
                    // First wait out a remote thread still in `Freeing` on this
                    // page: freeing the block could free the page under it.
                    if (*page).try_set_delayed_mode(DelayedMode::UseDelayed, false) {
                        (*page).collect_thread_free();
                        self.free_block_local(page, block);
                    } else {
                        Heap::push_delayed(self.as_ptr(), block);
                        all_done = false;
                    }
                    block = next;
                }
            }
            if all_done || !wait_all {
                return;
            }
            yield_thread();
        }
    }

    // === abandon and reclaim ===

    /// Tears the heap down at thread exit: frees what is free and abandons
    /// every segment that still holds live blocks. Afterwards no other thread
    /// can reach the heap, and the caller may unmap it.
    ///
    /// # Safety
    /// Owner thread; nothing allocates from the heap afterwards.
    pub(crate) unsafe fn abandon(&self) {
        let guard = self.lock();
        // SAFETY: owner thread (caller) throughout.
        unsafe {
            // 0. Huge blocks still out: hand each segment to whichever thread
            //    frees the block (it will unmap it), so dead threads leave no
            //    huge segment behind.
            //    The queue is detached first: pages whose free is already
            //    under way go back onto it, and must not be seen again here.
            let huge = self.queue(BIN_HUGE);
            let mut page = huge.first.get();
            huge.first.set(ptr::null_mut());
            huge.last.set(ptr::null_mut());
            while !page.is_null() {
                let next = (*page).next.get();
                (*page).next.set(ptr::null_mut());
                (*page).prev.set(ptr::null_mut());
                let segment = Segment::of(page.cast());
                self.segments.remove(segment, SegmentLinks::All);
                (*segment).heap.set(ptr::null_mut());
                // Relaxed: as in step 4 below.
                (*segment).thread_id.store(0, Ordering::Relaxed);
                if !(*page).try_orphan() {
                    // Its free is under way: keep it; steps 1–3 release it.
                    (*segment)
                        .thread_id
                        .store(self.thread_id(), Ordering::Relaxed);
                    (*segment).heap.set(self.as_ptr());
                    self.segments.push(segment, SegmentLinks::All);
                    self.queue_push_back(BIN_HUGE, page);
                }
                page = next;
            }
            // 1. From here on no remote free uses this heap (waits out any
            //    remote thread in `Freeing`).
            self.for_each_page(|page| (*page).set_delayed_mode(DelayedMode::Never, false));
            // 2. Blocks parked before that: free them all.
            self.process_delayed(true);
            // 3. Give back every page that is now empty (including retired ones).
            self.for_each_page(|page| {
                (*page).collect_thread_free();
                if (*page).used.get() == 0 {
                    self.page_free(page);
                }
            });
            // Nobody will pass through this heap's slow path again. Empty
            // segments go to the segment cache as they are (their memory
            // goes back after the reset delay unless another thread reuses
            // them first); the empty slots of the others go back now.
            // The others are about to be abandoned: their empty slots keep
            // their memory too, for the thread that adopts the segment (it
            // queues them for the reset delay) — or a reclaim pass gives it
            // back if the segment stays abandoned. Only huge spares remain
            // on the queue; they go now.
            let mut segment = self.segments.first.get();
            while !segment.is_null() {
                let next = (*segment).all.next.get();
                if (*segment).kind != PageKind::Huge {
                    if (*segment).used_pages.get() == 0 {
                        self.segment_free(segment);
                    } else {
                        for index in 0..(*segment).page_count {
                            self.unschedule_reset(Segment::page(segment, index));
                        }
                    }
                }
                segment = next;
            }
            self.reset_expired(true);
            // 4. Abandon the segments that still hold live blocks.
            let shared = self.shared.get();
            let mut segment = self.segments.first.get();
            while !segment.is_null() {
                let next = (*segment).all.next.get();
                for index in 0..(*segment).page_count {
                    let page = Segment::page(segment, index);
                    if (*page).in_use.get() {
                        // Relaxed: every remote free now sees `Never` and
                        // ignores this field; the reclaimer acquires it
                        // through the abandoned list.
                        (*page).heap.store(ptr::null_mut(), Ordering::Relaxed);
                        (*page).next.set(ptr::null_mut());
                        (*page).prev.set(ptr::null_mut());
                        (*page).flags.set(0);
                        (*page).retire_expire.set(0);
                    }
                }
                (*segment).heap.set(ptr::null_mut());
                (*segment).in_free_slot_list.set(false);
                (*segment).all.next.set(ptr::null_mut());
                (*segment).all.prev.set(ptr::null_mut());
                (*segment).with_free_slot.next.set(ptr::null_mut());
                (*segment).with_free_slot.prev.set(ptr::null_mut());
                // Relaxed: frees only compare it with their own (nonzero) id;
                // the hand-off to a reclaiming thread is ordered by the
                // list's Release push.
                (*segment).thread_id.store(0, Ordering::Relaxed);
                note_abandoned_live(segment);
                (*shared).abandoned.push(segment);
                segment = next;
            }
            self.forget_everything();
        }
        // 5. Leave the registry: from here on no reaper reaches the heap.
        core::mem::forget(guard);
        self.lock_depth.set(0);
        if let Some(slot) = self.slot() {
            self.slot.set(ptr::null());
            slot.release();
        }
    }

    /// `collect(true)`'s last step: in pages that still hold live blocks,
    /// gives back the OS pages inside free blocks of 8 KiB and more (all but
    /// each block's first OS page, which holds its free-list link). When a
    /// few survivors keep every page of a size class in use, this is what
    /// lowers RSS to near the live bytes.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn reset_free_block_interiors(&self) {
        // SAFETY: owner thread (caller): the free lists of our pages are
        // ours, and a free block's bytes past its link word hold nothing.
        unsafe {
            self.for_each_page(|page| {
                let size = (*page).block_size.get();
                if size < INTERIOR_RESET_MIN || (*page).bin.get() as usize >= BIN_COUNT {
                    return;
                }
                (*page).collect();
                for mut block in [(*page).free.get(), (*page).local_free.get()] {
                    while !block.is_null() {
                        reset_block_interior(block, size);
                        block = Block::next(block);
                    }
                }
                (*page).free_is_zero.set(false);
            });
        }
    }

    /// The reaper's work on an idle heap's remote frees. The blocks other
    /// threads freed into its pages (each page's `thread_free` list, and
    /// the heap's delayed list) are taken for a moment and filed by page.
    /// A full page whose every block in use is among them is freed on the
    /// owner's behalf (its slot then waits for the reset delay like any
    /// empty page); for the other pages the OS pages inside the blocks of
    /// 8 KiB and more go back, and the blocks are handed back where they
    /// came from, the owner's counts untouched. So a producer that sleeps
    /// while consumers free what it made does not keep that memory.
    ///
    /// Why freeing a full page is safe: every change to the full queue and
    /// every page-free decision of the owner is made under the lock we
    /// hold; the owner allocates only from pages that are not full; and
    /// `used` equal to the blocks we hold (read with Acquire, pairing with
    /// the owner's Release store of `used`) means no block of the page is
    /// live anywhere, so no thread can free into it — an owner whose last
    /// local free of it raced us finds it gone when it takes the lock
    /// (`page_after_free`).
    ///
    /// # Safety
    /// The caller holds the heap's lock (another thread, the reaper).
    pub(crate) unsafe fn reset_remote_frees(&self) {
        // SAFETY: we hold the lock: the segment list, the full queue and the
        // slots' `in_use`, `block_size` and `flags` stay as they are; the
        // chains we take are ours until we hand them back; a block's page
        // stays live while the block is on a list (its owner still counts
        // it as used).
        unsafe {
            // 1. The delayed list (blocks of full pages), filed by page;
            //    huge blocks (their body went back when freed) are kept
            //    aside and handed back as they are.
            // AcqRel as in `process_delayed`: the pushes' links are visible.
            let mut block = self
                .thread_delayed_free
                .swap(ptr::null_mut(), Ordering::AcqRel);
            let (mut huge_head, mut huge_tail) =
                (ptr::null_mut::<Block>(), ptr::null_mut::<Block>());
            while !block.is_null() {
                let next = Block::next(block);
                let segment = Segment::of(block.cast());
                if (*segment).kind == PageKind::Huge {
                    Block::set_next(block, huge_head);
                    if huge_head.is_null() {
                        huge_tail = block;
                    }
                    huge_head = block;
                } else {
                    let page = Segment::page_of(segment, block.cast());
                    Block::set_next(block, (*page).reaped_delayed.get());
                    (*page).reaped_delayed.set(block);
                    (*page)
                        .reaped_delayed_count
                        .set((*page).reaped_delayed_count.get() + 1);
                }
                block = next;
            }
            if !huge_head.is_null() {
                Heap::push_delayed_chain(self.as_ptr(), huge_head, huge_tail);
            }
            // 2. Each page's `thread_free` list, then the decision per page.
            let mut segment = self.segments.first.get();
            while !segment.is_null() {
                let next_segment = (*segment).all.next.get();
                if (*segment).kind != PageKind::Huge {
                    for index in 0..(*segment).page_count {
                        let page = Segment::page(segment, index);
                        if (*page).in_use.get() {
                            self.reap_page_remote_frees(page);
                        }
                    }
                }
                segment = next_segment;
            }
            // 3. Pages freed above wait for their reset like any empty page
            //    (now that no segment is being walked, one may go).
            self.enforce_pending_limit();
            self.reset_expired(false);
        }
    }

    /// Step 2 of `reset_remote_frees` for one page in use.
    ///
    /// # Safety
    /// As for `reset_remote_frees`; `page` is a page in use of ours, whose
    /// delayed blocks (if any) are filed in its scratch.
    unsafe fn reap_page_remote_frees(&self, page: *mut Page) {
        // SAFETY: as in `reset_remote_frees`.
        unsafe {
            let (remote, remote_count) = (*page).take_remote_chain();
            let delayed = (*page).reaped_delayed.replace(ptr::null_mut());
            let delayed_count = (*page).reaped_delayed_count.replace(0);
            let held = remote_count + delayed_count;
            if held == 0 {
                return;
            }
            if (*page).is_in_full() && (*page).used.get_acquire() == held {
                // Wholly freed: the blocks die with the page. (Its reset is
                // deferred: the caller is walking this page's segment.)
                self.page_free_locked(page, true);
                return;
            }
            let size = (*page).block_size.get();
            for (head, count, to_delayed) in [
                (remote, remote_count, false),
                (delayed, delayed_count, true),
            ] {
                if head.is_null() {
                    continue;
                }
                let mut tail = head;
                let mut block = head;
                while !block.is_null() {
                    if size >= INTERIOR_RESET_MIN {
                        reset_block_interior(block, size);
                    }
                    tail = block;
                    block = Block::next(block);
                }
                if to_delayed {
                    Heap::push_delayed_chain(self.as_ptr(), head, tail);
                } else {
                    (*page).return_remote_chain(head, tail, count);
                }
            }
        }
    }

    // === first-class heaps ===

    /// Makes this heap a first-class heap (it never adopts abandoned
    /// segments).
    pub(crate) fn set_first_class(&self) {
        self.first_class.set(true);
    }

    /// Sets (or, with null, clears) the default heap that takes this
    /// first-class heap's segments at `destroy` (see the field).
    ///
    /// # Safety
    /// `heir` is null or the live default heap of the owner thread, and is
    /// cleared before that heap is torn down.
    pub(crate) unsafe fn set_heir(&self, heir: *mut Heap) {
        self.heir.set(heir);
    }

    /// Caps the heap's page memory (`usize::MAX`: no cap).
    pub(crate) fn set_limit(&self, bytes: usize) {
        self.limit.set(bytes);
    }

    /// The cap set by `set_limit`.
    pub(crate) fn limit(&self) -> usize {
        self.limit.get()
    }

    /// Releases every page and segment of the heap at once, whatever blocks
    /// they hold: time in proportion to the segments and pages, never the
    /// blocks. Afterwards no thread can reach the heap.
    ///
    /// # Safety
    /// Owner thread; no block of the heap is used again, and every free of
    /// one by another thread has completed (happened before this call).
    pub(crate) unsafe fn destroy(&self) {
        let guard = self.lock();
        let heir = self.heir.get();
        let delay = options::reset_delay_ms();
        // SAFETY: owner thread, holding the lock (caller); no free of our
        // blocks is under way, so nothing else reaches our pages.
        unsafe {
            let mut segment = self.segments.first.get();
            while !segment.is_null() {
                let next = (*segment).all.next.get();
                if heir.is_null() || delay == 0 || (*segment).kind == PageKind::Huge {
                    self.segment_free(segment);
                } else {
                    self.empty_segment(segment);
                    (*heir).take_over_empty_segment(segment, delay);
                }
                segment = next;
            }
            self.forget_everything();
        }
        drop(guard);
        self.leave_registry();
    }

    /// Takes a segment of ours out of the heap with every page in it
    /// released, whatever blocks they hold (`destroy`).
    ///
    /// # Safety
    /// Owner thread holding the lock; no block of the segment is used again.
    unsafe fn empty_segment(&self, segment: *mut Segment) {
        // SAFETY: owner thread (caller); nothing reaches the pages.
        unsafe {
            self.detach_segment(segment);
            for index in 0..(*segment).page_count {
                let page = Segment::page(segment, index);
                self.unschedule_reset(page);
                if (*page).in_use.get() {
                    // Relaxed: no other thread reaches the page (the rule of
                    // `destroy`).
                    (*page).heap.store(ptr::null_mut(), Ordering::Relaxed);
                    (*page).next.set(ptr::null_mut());
                    (*page).prev.set(ptr::null_mut());
                    (*page).retire_expire.set(0);
                    // Its lists (`thread_free` included) are rebuilt by
                    // `Page::init` when the slot is used again.
                    Segment::release_slot(segment, page);
                }
            }
            (*segment).heap.set(ptr::null_mut());
        }
    }

    /// Empties every list of the heap (its pages and segments are gone, or
    /// handed on by `abandon`).
    fn forget_everything(&self) {
        self.segments.first.set(ptr::null_mut());
        self.small_slots.first.set(ptr::null_mut());
        self.medium_slots.first.set(ptr::null_mut());
        self.large_slots.first.set(ptr::null_mut());
        for index in 0..QUEUE_COUNT {
            self.queue(index).first.set(ptr::null_mut());
            self.queue(index).last.set(ptr::null_mut());
        }
        for slot in &self.direct {
            slot.set(empty_page());
        }
        self.reset_queue.first.set(ptr::null_mut());
        self.reset_queue.last.set(ptr::null_mut());
        self.pending_reset.set(0);
        self.page_bytes.set(0);
        // Relaxed: no other thread reaches the heap any more.
        self.thread_delayed_free
            .store(ptr::null_mut(), Ordering::Relaxed);
    }

    /// Gives the registry slot up (the heap is torn down; the caller does
    /// not hold the lock). From here on no reaper reaches the heap.
    fn leave_registry(&self) {
        if let Some(slot) = self.slot() {
            slot.lock();
            self.slot.set(ptr::null());
            slot.release();
        }
    }

    /// Pages in use, live blocks and their bytes (blocks other threads freed
    /// are taken back first, so the figures are exact).
    ///
    /// # Safety
    /// Owner thread.
    pub(crate) unsafe fn block_counts(&self) -> (usize, usize, usize) {
        let _guard = self.lock();
        // SAFETY: owner thread (caller).
        unsafe { self.process_delayed(false) };
        let (mut pages, mut blocks, mut bytes) = (0, 0, 0);
        // SAFETY: owner thread: our segments and their pages in use.
        unsafe {
            self.for_each_page_in_use(|page| {
                (*page).collect_thread_free();
                let used = (*page).used.get() as usize;
                pages += 1;
                blocks += used;
                bytes += used * (*page).block_size.get();
            });
        }
        (pages, blocks, bytes)
    }

    /// The heap's page memory now (see `note_page_bytes`).
    pub(crate) fn page_bytes(&self) -> usize {
        self.page_bytes.get()
    }

    /// The peak of the heap's page memory (see `note_page_bytes`).
    pub(crate) fn peak_page_bytes(&self) -> usize {
        self.peak_page_bytes.get()
    }

    /// Whether the address `addr` lies in a page in use of this heap.
    ///
    /// # Safety
    /// Owner thread.
    pub(crate) unsafe fn contains(&self, addr: usize) -> bool {
        let _guard = self.lock();
        let mut segment = self.segments.first.get();
        // SAFETY: owner thread: segments on our list are live. The address
        // is only compared with theirs until it is known to lie in one, and
        // then used with that segment's provenance.
        unsafe {
            while !segment.is_null() {
                let start = segment.addr();
                if (start..start + (*segment).size).contains(&addr) {
                    // A huge segment's one page spans all of it (its page
                    // shift only covers where its block can start).
                    let page = if (*segment).kind == PageKind::Huge {
                        Segment::page(segment, 0)
                    } else {
                        Segment::page_of(segment, segment.cast::<u8>().with_addr(addr))
                    };
                    return Segment::page_index(segment, page) < (*segment).page_count
                        && (*page).in_use.get()
                        && addr >= (*page).page_start.get().addr();
                }
                segment = (*segment).all.next.get();
            }
        }
        false
    }

    /// Calls `f(block, usable_size)` for every live block of the heap.
    ///
    /// # Safety
    /// Owner thread; `f` neither allocates from nor frees into this heap.
    pub(crate) unsafe fn visit_blocks(&self, mut f: impl FnMut(*mut u8, usize)) {
        let _guard = self.lock();
        // SAFETY: owner thread (caller).
        unsafe { self.process_delayed(false) };
        // SAFETY: owner thread: our pages in use; their free lists hold only
        // blocks of the page, each once.
        unsafe {
            self.for_each_page_in_use(|page| {
                (*page).collect_thread_free();
                let size = (*page).block_size.get();
                let start = (*page).page_start.get();
                let capacity = (*page).capacity.get() as usize;
                let mut free = [0u64; VISIT_BITMAP_WORDS];
                if capacity > VISIT_BITMAP_WORDS * 64 {
                    crate::fatal::fatal("visit_blocks: more blocks in a page than expected");
                }
                for mut block in [(*page).free.get(), (*page).local_free.get()] {
                    while !block.is_null() {
                        let index = (block.addr() - start.addr()) / size;
                        if let Some(word) = free.get_mut(index / 64) {
                            *word |= 1 << (index % 64);
                        }
                        block = Block::next(block);
                    }
                }
                for index in 0..capacity {
                    let is_free = free
                        .get(index / 64)
                        .is_some_and(|word| word & (1 << (index % 64)) != 0);
                    if !is_free {
                        f(start.add(index * size), size);
                    }
                }
            });
        }
    }

    /// Calls `f` on every page in use of every segment of the heap.
    ///
    /// # Safety
    /// Owner thread; `f` does not free pages or segments.
    unsafe fn for_each_page_in_use(&self, mut f: impl FnMut(*mut Page)) {
        let mut segment = self.segments.first.get();
        // SAFETY: owner thread (caller): segments on our list are live.
        unsafe {
            while !segment.is_null() {
                for index in 0..(*segment).page_count {
                    let page = Segment::page(segment, index);
                    if (*page).in_use.get() {
                        f(page);
                    }
                }
                segment = (*segment).all.next.get();
            }
        }
    }

    /// In a forked child: ends every `Freeing` that a thread of the parent
    /// (gone in the child) left on our pages, so the owner never waits for it.
    ///
    /// # Safety
    /// Only in a forked child, on the only thread, for its own heap.
    pub(crate) unsafe fn forget_parent_threads(&self) {
        // SAFETY: the only thread (caller); the pages are ours.
        unsafe { self.for_each_page(|page| (*page).end_orphaned_freeing()) };
    }

    /// Calls `f` on every page of every queue (`f` may free the page).
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn for_each_page(&self, mut f: impl FnMut(*mut Page)) {
        for index in 0..QUEUE_COUNT {
            let mut page = self.queue(index).first.get();
            while !page.is_null() {
                // SAFETY: pages on our queues are ours (caller).
                let next = unsafe { (*page).next.get() };
                f(page);
                page = next;
            }
        }
    }

    /// Looks through the abandoned segments: returns the empty ones to the
    /// OS and adopts one of `kind` (never a huge one: a huge page must stay
    /// in `UseDelayed`, so it is left abandoned until its block is freed).
    /// Returns whether one was adopted.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn reclaim(&self, kind: Option<PageKind>) -> bool {
        let _guard = self.lock();
        let kind = kind.filter(|&kind| kind != PageKind::Huge);
        // SAFETY: `shared` outlives every heap.
        let abandoned = unsafe { &(*self.shared.get()).abandoned };
        let mut segment = abandoned.take_all();
        if segment.is_null() {
            return false;
        }
        let mut adopted = false;
        let (mut keep_first, mut keep_last, mut kept, mut taken) =
            (ptr::null_mut::<Segment>(), ptr::null_mut::<Segment>(), 0, 0);
        // SAFETY: `take_all` gave us exclusive ownership of every segment on
        // the chain; remote frees into them only push onto page lists.
        unsafe {
            while !segment.is_null() {
                taken += 1;
                let next = Segment::abandoned_next(segment);
                Segment::set_abandoned_next(segment, ptr::null_mut());
                stats::ABANDONED_LIVE.sub((*segment).abandoned_live.replace(0));
                collect_abandoned(segment);
                if (*segment).used_pages.get() == 0 {
                    cache_or_release(self.shared.get(), segment);
                } else if !adopted && Some((*segment).kind) == kind {
                    self.adopt(segment);
                    adopted = true;
                } else {
                    // Nobody owns its emptied slots: their memory goes now.
                    reset_unused_slots(segment);
                    note_abandoned_live(segment);
                    if keep_first.is_null() {
                        keep_first = segment;
                    } else {
                        Segment::set_abandoned_next(keep_last, segment);
                    }
                    keep_last = segment;
                    kept += 1;
                }
                segment = next;
            }
            abandoned.note_removed(taken);
            if !keep_first.is_null() {
                abandoned.push_chain(keep_first, keep_last, kept);
            }
        }
        adopted
    }

    /// Makes an abandoned segment (already collected) ours.
    ///
    /// # Safety
    /// Owner thread; we took `segment` off the abandoned list.
    unsafe fn adopt(&self, segment: *mut Segment) {
        // SAFETY: exclusive ownership (caller).
        unsafe {
            // Relaxed: from now on frees on this thread are local; other
            // threads only compare it with their own ids.
            (*segment)
                .thread_id
                .store(self.thread_id(), Ordering::Relaxed);
            (*segment).heap.set(self.as_ptr());
            self.segments.push(segment, SegmentLinks::All);
            self.list_free_slot(segment);
            for index in 0..(*segment).page_count {
                let page = Segment::page(segment, index);
                if !(*page).in_use.get() {
                    // Emptied by the collect before adoption: its memory
                    // waits for the reset delay, on our queue now.
                    if !(*page).memory_is_zero.get() {
                        self.schedule_reset(page);
                    }
                    continue;
                }
                // Release pairs with the Acquire load of `heap` in the
                // delayed route of `free_remote`.
                (*page).heap.store(self.as_ptr(), Ordering::Release);
                // Leave `Never` only after the heap is published; no remote
                // thread can be `Freeing` on a `Never` page.
                (*page).set_delayed_mode(DelayedMode::NoDelayed, true);
                (*page).collect();
                self.queue_push_back(usize::from((*page).bin.get()), page);
                self.note_page_bytes(segment, page, true);
            }
        }
    }

    /// Returns what can be returned now: processes delayed frees, frees
    /// empty pages (retired ones too when `force`), and looks through the
    /// abandoned segments.
    ///
    /// # Safety
    /// Owner thread, real heap.
    pub(crate) unsafe fn collect(&self, force: bool) {
        let guard = self.lock();
        // SAFETY: owner thread (caller), holding the lock.
        unsafe {
            self.process_delayed(force);
            self.for_each_page(|page| {
                (*page).collect();
                if (*page).used.get() == 0 && (force || (*page).retire_expire.get() == 0) {
                    self.page_free(page);
                }
            });
            self.collect_retired(force);
            self.reset_expired(force);
            if force {
                self.reset_free_block_interiors();
                // Frees the abandoned segments that became empty, and the
                // cached ones.
                let _ = self.reclaim(None);
                (*self.shared.get()).segment_cache.drain();
            }
        }
        drop(guard);
        if force {
            // Also what other heaps keep waiting for their reset delay.
            // SAFETY: owner thread (caller).
            unsafe { self.reap_idle_heaps(true) };
        }
    }
}

/// An empty segment that belongs to no heap goes into the segment cache
/// (with its memory, given back when its reset delay passes, if it still
/// has any: thread exit, `destroy`, an emptied abandoned segment), or back
/// to the OS when the cache is full or off.
///
/// # Safety
/// The caller owns the segment: empty, on no list, no slot pending.
unsafe fn cache_or_release(shared: *const Shared, segment: *mut Segment) {
    // SAFETY: exclusive ownership (caller); `shared` outlives every heap.
    unsafe {
        let limit = options::segment_cache();
        if (*segment).kind != PageKind::Huge && limit > 0 {
            if !Segment::all_pages_zero(segment) {
                let delay = options::reset_delay_ms();
                if delay == 0 {
                    Segment::reset_pages(segment);
                } else {
                    // The next heap may well reuse it soon; a reaper's sweep
                    // gives the memory back if not.
                    Segment::cache_dirty(segment, os::now_ms().saturating_add(delay));
                }
            }
            if (*shared).segment_cache.put(segment, limit) {
                return;
            }
        }
        Segment::release(segment);
    }
}

/// A heap whose owner has not passed a slow path for this many reset delays
/// counts as idle: reapers give back the memory inside blocks other threads
/// freed into its pages.
const IDLE_FACTOR: usize = 10;

/// A free block's second word (past the link; past the link's tracked cell
/// under loom) holds this, mixed with the block's address, once the OS
/// pages inside the block were given back: a later reaper pass skips it.
const INTERIOR_RESET_MARK: usize = 0x5EED_F4EE_B10C_0000;

/// Where a free block keeps `INTERIOR_RESET_MARK`.
const MARK_OFFSET: usize = size_of::<Block>().next_multiple_of(size_of::<usize>());

/// Gives back the OS pages inside a free block of `size` bytes, all but its
/// first (which holds its link and the mark), unless the mark says it was
/// done already.
///
/// # Safety
/// The caller owns the free block (on no list anyone else can take it
/// from), of `size ≥ INTERIOR_RESET_MIN` bytes.
unsafe fn reset_block_interior(block: *mut Block, size: usize) {
    let start = block.cast::<u8>();
    let first = (start.addr() + OS_PAGE_SIZE) & !(OS_PAGE_SIZE - 1);
    let end = (start.addr() + size) & !(OS_PAGE_SIZE - 1);
    // SAFETY: the mark's word lies in the block's first OS page, inside the
    // block (size ≥ two OS pages), which the caller owns.
    unsafe {
        let mark = start.add(MARK_OFFSET).cast::<usize>();
        let expected = INTERIOR_RESET_MARK ^ start.addr();
        if mark.read() == expected || end <= first {
            return;
        }
        os::reset(start.with_addr(first), end - first);
        mark.write(expected);
    }
}

/// Blocks at least this large have whole OS pages past their first one,
/// which `collect(true)` gives back while the block sits free.
const INTERIOR_RESET_MIN: usize = 2 * OS_PAGE_SIZE;

/// Counts the live blocks of a segment about to sit on the abandoned list
/// in `stats::ABANDONED_LIVE` (huge blocks are counted on their own).
///
/// # Safety
/// The caller exclusively owns the segment.
unsafe fn note_abandoned_live(segment: *mut Segment) {
    // SAFETY: exclusive ownership (caller).
    unsafe {
        if (*segment).kind != PageKind::Huge {
            let live = Segment::live_bytes(segment);
            (*segment).abandoned_live.set(live);
            stats::ABANDONED_LIVE.add(live);
        }
    }
}

/// Collects every page of an abandoned segment and gives back the slots of
/// pages that became empty.
///
/// # Safety
/// The caller exclusively owns the abandoned segment.
unsafe fn collect_abandoned(segment: *mut Segment) {
    // SAFETY: exclusive ownership (caller); remote frees only push onto the
    // page lists, which `collect_thread_free` takes atomically.
    unsafe {
        for index in 0..(*segment).page_count {
            let page = Segment::page(segment, index);
            if (*page).in_use.get() {
                (*page).collect_thread_free();
                if (*page).used.get() == 0 {
                    // Its memory stays for now: the caller adopts the
                    // segment (the slot then waits on the adopter's reset
                    // queue), caches it, or resets the slot.
                    Segment::release_slot(segment, page);
                }
            }
        }
    }
}

/// Gives back the memory of every unused slot of a segment that stays
/// abandoned.
///
/// # Safety
/// The caller exclusively owns the abandoned segment.
unsafe fn reset_unused_slots(segment: *mut Segment) {
    // SAFETY: exclusive ownership (caller); unused slots hold no block.
    unsafe {
        for index in 0..(*segment).page_count {
            let page = Segment::page(segment, index);
            if !(*page).in_use.get() {
                Segment::reset_page(segment, page);
            }
        }
    }
}

/// Zeroes a block about to be handed out by `alloc_zeroed`: only its link
/// word when the page's free blocks are known to be zero.
///
/// # Safety
/// `block` was just popped from `page` and spans at least `size` bytes.
#[inline(always)]
pub(crate) unsafe fn zero_block(page: *mut Page, block: *mut Block, size: usize) {
    // SAFETY: the block is ours and at least `size` (≥ one word) long.
    unsafe {
        if (*page).free_is_zero.get() {
            block.cast::<usize>().write(0);
        } else {
            block.cast::<u8>().write_bytes(0, size);
        }
    }
}

/// Frees a block on the thread whose id is `thread_id`: a local free when
/// that thread owns the block's segment, a remote free otherwise.
///
/// # Safety
/// `ptr` is a live block returned by this allocator; `thread_id` is the
/// calling thread's id.
#[inline(always)]
pub(crate) unsafe fn free_block(ptr: *mut u8, thread_id: usize) {
    let segment = Segment::of(ptr);
    // SAFETY: `ptr` is a live block (caller), so its segment and page are
    // live. The segment's owner id equals ours only if this thread owns it,
    // in which case the page's lists are ours to touch.
    unsafe {
        let page = Segment::page_of(segment, ptr);
        let block = ptr.cast::<Block>();
        // Relaxed: only equality with our own id matters, and only this
        // thread ever stores its own id into a segment.
        if (*segment).thread_id.load(Ordering::Relaxed) == thread_id {
            let used = (*page).push_local(block);
            if used == 0 || (*page).flags.get() != 0 {
                Heap::after_local_free(page);
            }
        } else {
            free_remote(segment, page, block);
        }
    }
}

/// # Safety
/// `block` is a live block of `page` in `segment`, given up by the caller.
#[inline(never)]
unsafe fn free_remote(segment: *mut Segment, page: *mut Page, block: *mut Block) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if (*segment).kind != PageKind::Huge {
            (*page).free_remote(block);
            return;
        }
        // A huge block: give its memory back now (the first OS page keeps the
        // link word), then either tell the owner or, if the owner exited,
        // release the segment ourselves.
        if (*page).delayed_mode() != DelayedMode::Never {
            let usable = (*page).block_size.get();
            if usable > OS_PAGE_SIZE {
                os::reset(
                    block.cast::<u8>().add(OS_PAGE_SIZE),
                    (usable - OS_PAGE_SIZE) & !(OS_PAGE_SIZE - 1),
                );
            }
        }
        if (*page).free_huge_remote(block) {
            Segment::release(segment);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::{LARGE_BLOCK_MAX, SHARED_PAGE_BLOCK_MAX};

    const OWNER: usize = 0x1000;
    const OTHER: usize = 0x2000;
    const THIRD: usize = 0x3000;

    #[test]
    fn blocks_of_every_class_round_trip_and_memory_goes_back() {
        let shared = Shared::new();
        let heap = Heap::new(OWNER, &raw const shared);
        let mut blocks = Vec::new();
        // SAFETY: this test thread plays the owner of `heap`.
        unsafe {
            for (bin, &size) in BLOCK_SIZES.iter().enumerate() {
                for _ in 0..3 {
                    let p = heap.malloc_generic(size, false);
                    assert!(!p.is_null());
                    p.write_bytes(bin as u8, size);
                    blocks.push((p, size, bin as u8));
                }
            }
            let huge = heap.malloc_huge(3 * LARGE_BLOCK_MAX, 16, false);
            huge.write_bytes(0xEE, 3 * LARGE_BLOCK_MAX);
            assert!(heap.segment_count() > 3);
            for &(p, size, fill) in &blocks {
                assert!(
                    (0..size).step_by(61).all(|i| p.add(i).read() == fill),
                    "bin {fill} overwritten"
                );
            }
            for (p, _, _) in blocks {
                free_block(p, OWNER);
            }
            free_block(huge, OWNER);
            heap.collect(true);
            assert_eq!(heap.segment_count(), 0, "every segment went back to the OS");
        }
    }

    /// Fills one page of 256 KiB blocks (the largest that share a page):
    /// returns its blocks; the next allocation of the class parks it.
    ///
    /// # Safety
    /// Owner thread of `heap`.
    unsafe fn fill_one_page(heap: &Heap) -> Vec<*mut u8> {
        // SAFETY: owner thread (caller).
        unsafe {
            let first = heap.malloc_generic(SHARED_PAGE_BLOCK_MAX, false);
            let page = Segment::page_of(Segment::of(first), first);
            let reserved = (*page).reserved.get() as usize;
            assert!(reserved > 2, "a shared large page holds several blocks");
            let mut blocks = vec![first];
            blocks.extend((1..reserved).map(|_| heap.malloc_generic(SHARED_PAGE_BLOCK_MAX, false)));
            assert!(
                blocks
                    .iter()
                    .all(|&b| Segment::page_of(Segment::of(b), b) == page)
            );
            blocks
        }
    }

    #[test]
    fn exhausted_pages_move_to_the_full_queue_and_back() {
        let shared = Shared::new();
        let heap = Heap::new(OWNER, &raw const shared);
        // SAFETY: owner thread of `heap`.
        unsafe {
            let first = fill_one_page(&heap);
            let page = Segment::page_of(Segment::of(first[0]), first[0]);
            assert!(!(*page).is_in_full());
            let next = heap.malloc_generic(SHARED_PAGE_BLOCK_MAX, false);
            assert!((*page).is_in_full(), "the search parked the exhausted page");
            assert_eq!((*page).delayed_mode(), DelayedMode::UseDelayed);
            assert_eq!(heap.queue(BIN_FULL).first.get(), page);
            free_block(first[1], OWNER);
            assert!(!(*page).is_in_full(), "a local free brings it back");
            assert_eq!((*page).delayed_mode(), DelayedMode::NoDelayed);
            for &p in first.iter().chain([&next]) {
                if p != first[1] {
                    free_block(p, OWNER);
                }
            }
            heap.collect(true);
            assert_eq!(heap.segment_count(), 0);
        }
    }

    #[test]
    fn remote_free_into_a_full_page_is_noticed_through_the_delayed_list() {
        let shared = Shared::new();
        let heap = Heap::new(OWNER, &raw const shared);
        // SAFETY: owner thread of `heap`; `OTHER` frees only blocks it was given.
        unsafe {
            let first = fill_one_page(&heap);
            let next = heap.malloc_generic(SHARED_PAGE_BLOCK_MAX, false);
            let page = Segment::page_of(Segment::of(first[0]), first[0]);
            assert!((*page).is_in_full());
            let count = first.len() as u32;
            let addrs: Vec<usize> = first.iter().map(|p| p.expose_provenance()).collect();
            std::thread::spawn(move || {
                for a in addrs {
                    free_block(ptr::with_exposed_provenance_mut(a), OTHER);
                }
            })
            .join()
            .unwrap();
            assert!(
                !heap.thread_delayed_free.load(Ordering::Relaxed).is_null(),
                "one block went to the heap"
            );
            assert_eq!((*page).used.get(), count, "not collected yet");
            heap.process_delayed(true);
            // Processing the parked block collected the others and emptied
            // the page: it left the full queue and went back to its segment.
            assert_eq!(heap.queue(BIN_FULL).first.get(), ptr::null_mut());
            heap.collect(true);
            assert_eq!(
                heap.segment_count(),
                1,
                "only the segment of `next` is left"
            );
            free_block(next, OWNER);
            heap.collect(true);
            assert_eq!(heap.segment_count(), 0);
        }
    }

    #[test]
    fn abandoned_segments_are_reclaimed_and_their_blocks_stay_valid() {
        let shared = Shared::new();
        let dying = Heap::new(OWNER, &raw const shared);
        // SAFETY: this thread plays the owners of both heaps in turn; after
        // `abandon`, blocks of the dead heap are freed as remote frees.
        unsafe {
            let blocks: Vec<*mut u8> = (0..2000)
                .map(|i| dying.malloc_generic(16 + i % 200, false))
                .collect();
            for (i, &p) in blocks.iter().enumerate() {
                p.write_bytes(i as u8, 16);
            }
            // Half freed by the owner before it dies.
            for &p in blocks.iter().step_by(2) {
                free_block(p, OWNER);
            }
            let segments = dying.segment_count();
            dying.abandon();
            assert_eq!(dying.segment_count(), 0);
            assert_eq!(shared.abandoned.len(), segments);
            for (i, &p) in blocks.iter().enumerate().skip(1).step_by(2) {
                assert!(
                    (0..16).all(|k| p.add(k).read() == i as u8),
                    "block {i} survived abandonment"
                );
            }
            // A third thread frees some blocks into the abandoned segment.
            for &p in blocks.iter().skip(1).step_by(4) {
                free_block(p, THIRD);
            }
            let heir = Heap::new(OTHER, &raw const shared);
            let q = heir.malloc_generic(32, false);
            assert!(!q.is_null());
            assert_eq!(
                Segment::of(q),
                Segment::of(blocks[1]),
                "the heir adopted the abandoned small segment"
            );
            assert_eq!(shared.abandoned.len(), 0);
            // The rest are now local frees of the heir.
            for &p in blocks.iter().skip(3).step_by(4) {
                free_block(p, OTHER);
            }
            free_block(q, OTHER);
            heir.collect(true);
            assert_eq!(
                heir.segment_count(),
                0,
                "every reclaimed page emptied and went back"
            );
        }
    }

    #[test]
    fn thread_exit_orphans_live_huge_blocks_and_keeps_freed_ones() {
        let shared = Shared::new();
        let heap = Heap::new(OWNER, &raw const shared);
        // SAFETY: this thread plays the owner; `OTHER` frees blocks it was given.
        unsafe {
            let huge: Vec<*mut u8> = (0..4)
                .map(|_| heap.malloc_huge(2 << 20, 16, false))
                .collect();
            // Two are freed by another thread: their frees wait on the heap's
            // delayed list, so the owner cannot orphan them.
            free_block(huge[0], OTHER);
            free_block(huge[2], OTHER);
            assert_eq!(heap.segment_count(), 4);
            heap.abandon();
            assert_eq!(heap.segment_count(), 0);
            assert_eq!(
                shared.abandoned.len(),
                0,
                "huge segments are never abandoned"
            );
            // The two live ones were orphaned: whoever frees them unmaps them.
            for &p in &[huge[1], huge[3]] {
                p.write_bytes(1, 2 << 20);
                free_block(p, THIRD);
            }
        }
    }

    #[test]
    fn adopted_pages_of_classes_the_heir_never_uses_are_collected() {
        let shared = Shared::new();
        let dying = Heap::new(OWNER, &raw const shared);
        // SAFETY: this thread plays both owners in turn; `THIRD` frees blocks
        // it was given.
        unsafe {
            let blocks: Vec<*mut u8> = (0..100).map(|_| dying.malloc_generic(48, false)).collect();
            dying.abandon();
            let heir = Heap::new(OTHER, &raw const shared);
            let own = heir.malloc_generic(4096, false);
            assert_eq!(
                Segment::of(own),
                Segment::of(blocks[0]),
                "the heir adopted the segment"
            );
            for &p in &blocks {
                free_block(p, THIRD);
            }
            let bin = bin_of(48);
            assert!(!heir.queue(bin).first.get().is_null());
            // The heir never allocates 48 B again; its other slow paths must
            // still notice the page emptied.
            for _ in 0..2048 {
                let p = heir.malloc_generic(4096, false);
                free_block(p, OTHER);
            }
            assert!(
                heir.queue(bin).first.get().is_null(),
                "the emptied adopted page was freed"
            );
            free_block(own, OTHER);
            heir.collect(true);
            assert_eq!(heir.segment_count(), 0);
        }
    }

    #[test]
    fn empty_abandoned_segments_go_back_to_the_os_on_collect() {
        let shared = Shared::new();
        let dying = Heap::new(OWNER, &raw const shared);
        // SAFETY: as above.
        unsafe {
            let blocks: Vec<*mut u8> = (0..100)
                .map(|_| dying.malloc_generic(5000, false))
                .collect();
            dying.abandon();
            assert_eq!(shared.abandoned.len(), 1);
            for p in blocks {
                free_block(p, THIRD);
            }
            let other = Heap::new(OTHER, &raw const shared);
            let _ = other.malloc_generic(16, false);
            other.collect(true);
            assert_eq!(
                shared.abandoned.len(),
                0,
                "the emptied abandoned segment was released"
            );
        }
    }

    #[test]
    fn collect_true_gives_back_the_interiors_of_free_blocks_in_pages_in_use() {
        let shared = Shared::new();
        let heap = Heap::new(OWNER, &raw const shared);
        // SAFETY: this thread owns the heap; blocks are freed once, and
        // a freed block's bytes are read only to check the reset.
        unsafe {
            let size = 48 << 10;
            let blocks: Vec<*mut u8> = (0..40).map(|_| heap.malloc_generic(size, false)).collect();
            for &p in &blocks {
                p.write_bytes(0xAB, size);
            }
            // Every other block freed: every page keeps live blocks.
            for &p in blocks.iter().step_by(2) {
                free_block(p, OWNER);
            }
            heap.collect(true);
            for (i, &p) in blocks.iter().enumerate() {
                let second_os_page = p.add(OS_PAGE_SIZE);
                if i % 2 == 0 {
                    assert_eq!(
                        second_os_page.read(),
                        0,
                        "free block {i}'s interior was reset"
                    );
                } else {
                    assert!(
                        (0..size).all(|k| p.add(k).read() == 0xAB),
                        "live block {i} intact"
                    );
                }
            }
            // The free lists survived: the freed blocks come back, usable.
            let again: Vec<*mut u8> = (0..20).map(|_| heap.malloc_generic(size, false)).collect();
            for &p in &again {
                assert!(!p.is_null());
                p.write_bytes(0xCD, size);
            }
            for p in again
                .into_iter()
                .chain(blocks.into_iter().skip(1).step_by(2))
            {
                free_block(p, OWNER);
            }
            heap.collect(true);
            assert_eq!(heap.segment_count(), 0, "everything went back");
        }
    }

    #[test]
    fn first_class_heaps_never_adopt_abandoned_segments_and_destroy_releases_all() {
        let shared = Shared::new();
        let dying = Heap::new(OWNER, &raw const shared);
        // SAFETY: this thread plays both owners in turn, as above.
        unsafe {
            let survivor = dying.malloc_generic(5000, false);
            survivor.write_bytes(0x5A, 5000);
            dying.abandon();
            assert_eq!(shared.abandoned.len(), 1);
            let first_class = Heap::new(OTHER, &raw const shared);
            first_class.set_first_class();
            // Enough blocks of the survivor's kind to need fresh pages: a
            // default heap would adopt the abandoned segment here.
            let blocks: Vec<*mut u8> = (0..200)
                .map(|_| first_class.malloc_generic(5000, false))
                .collect();
            let huge = first_class.malloc_huge(8 << 20, 16, false);
            assert!(blocks.iter().all(|p| !p.is_null()) && !huge.is_null());
            assert_eq!(shared.abandoned.len(), 1, "the abandoned segment stays put");
            let (pages, live, bytes) = first_class.block_counts();
            assert_eq!(live, 201);
            assert!(pages >= 2 && bytes >= 200 * 5000 + (8 << 20));
            assert!(first_class.contains(blocks[7].addr()) && first_class.contains(huge.addr()));
            assert!(!first_class.contains(survivor.addr()));
            first_class.destroy();
            assert_eq!(first_class.segment_count(), 0);
            assert_eq!(first_class.page_bytes(), 0);
            // The abandoned block was never touched.
            assert!((0..5000).all(|k| survivor.add(k).read() == 0x5A));
            free_block(survivor, THIRD);
        }
    }
}
