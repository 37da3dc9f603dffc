//! [`RawHeap`], the heap behind both a thread's default heap and the public
//! first-class `shardalloc::Heap` (the unsafe core behind the safe façade,
//! as hashbrown's `RawTable` behind `HashMap`): page queues per size class,
//! the direct table for small sizes, the delayed-free list, and the
//! segments its pages live in.
//!
//! Every thread has a default heap (see `thread`); a first-class heap is the
//! same type. A heap belongs to one thread: only that thread allocates from
//! it or touches its non-atomic state. Other threads reach it in exactly one
//! way: pushing a block onto `thread_delayed_free` (the delayed route of a
//! remote free, see `page`).
//!
//! Segments belong to the heap whose pages they hold, so tearing a heap down
//! touches its pages and segments only, never its blocks.
//!
//! One concept per child module, all of them `impl RawHeap` over the private
//! fields declared here:
//!
//! * this module — the structure, its lock, collect, destroy, introspection;
//! * `queue` — page queues, the direct table, a page's moves between queues;
//! * `alloc` — the generic allocation path, huge blocks, the heartbeat;
//! * `segments` — the heap's segment lists, getting and giving back segments;
//! * `reset` — the reset queue, huge spares, free-block interiors;
//! * `reap` — the reaper (another thread giving an idle heap's memory back);
//! * `abandon` — the abandoned-segment list, abandon at thread exit, reclaim
//!   and adopt;
//! * `park` — the pool of parked heaps: a thread's heap kept whole at its
//!   exit for the next thread to adopt;
//! * `free` — the free path.

mod abandon;
mod alloc;
mod delayed;
mod park;
mod queue;
mod reap;
mod reset;
mod segments;

use crate::options;
use crate::os;
use crate::page::{Block, Page, empty_page};
use crate::process::Shared;
use crate::registry::Entry;
use crate::segment::Segment;
use crate::size_class::{BIN_COUNT, DIRECT_ENTRIES, PageKind, QUEUE_COUNT};
use crate::sync::{AtomicPtr, Ordering, OwnerCell};
#[cfg(not(loom))]
pub(crate) use alloc::zero_block;
use core::cell::Cell;
use core::ptr;
#[cfg(loom)]
pub(crate) use park::evict_parked;
pub(crate) use park::{ParkedHeaps, adopt_parked};
pub(crate) use queue::PageQueue;
pub(crate) use reset::{keep_remote_huge, pool_orphaned_huge};
use segments::SegmentList;

/// A heap. See the module documentation.
#[repr(C)]
pub(crate) struct RawHeap {
    /// For every request of up to `SMALL_SIZE_MAX` bytes, indexed by size in
    /// words: the first page of its size class, or the empty-page sentinel.
    /// First field, so the fast path indexes it straight off the heap pointer.
    direct: [Cell<*mut Page>; DIRECT_ENTRIES],
    /// Page queues: one per size class, then huge pages, then full pages.
    queues: [PageQueue; QUEUE_COUNT],
    /// Blocks pushed by remote threads freeing into pages that asked to be
    /// noticed (`DelayedMode::UseDelayed`). The only field other threads touch.
    thread_delayed_free: AtomicPtr<Block>,
    /// Id of the owning thread, stamped into every segment of the heap (0
    /// while the heap is parked, see `park`). Changes owner only through
    /// the parked-heap pool, whose Release/Acquire orders it.
    thread_id: OwnerCell<usize>,
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
    /// Slow-path calls so far: every [`COLLECT_INTERVAL`](alloc::COLLECT_INTERVAL)th one runs a
    /// collect pass over all the heap's pages.
    slow_calls: Cell<usize>,
    /// Unused page slots whose memory waits for the reset delay, oldest first
    /// (linked through the pages' queue links).
    reset_queue: PageQueue,
    /// Bytes of page memory on `reset_queue` (huge spares excluded).
    pending_reset: Cell<usize>,
    /// Net bytes taken off `reset_queue` for reuse since the last decay
    /// pass: demand the pass may keep back (`reset_expired`).
    reused_since_decay: Cell<usize>,
    /// When the heap next applies the decay curve to its reset queue
    /// (`os::now_ms`; meaningful while the queue is not empty).
    next_decay_ms: Cell<u64>,
    /// Freed huge segments kept for reuse (they sit on `reset_queue`, and
    /// are unmapped when due), and their bytes.
    huge_spares: Cell<usize>,
    huge_spare_bytes: Cell<usize>,
    /// Lowest and highest bin holding a retired page.
    retired_min: Cell<usize>,
    retired_max: Cell<usize>,
    /// The heap's registry entry (its lock), or null for a heap outside the
    /// registry. See `registry`.
    entry: Cell<*const Entry>,
    /// How deep the owner is in nested sections holding the lock (the lock
    /// is re-entrant for the owner; reapers never touch this). Read before
    /// the lock is taken, so a new owner (an adopter of a parked heap, see
    /// `park`) needs the pool's Release/Acquire to see the last one's value.
    lock_depth: OwnerCell<u32>,
    /// The forking thread holds its own lock across `fork` (see
    /// `lock_for_fork`).
    locked_for_fork: Cell<bool>,
    /// A first-class heap (`shardalloc::Heap`): it never adopts abandoned
    /// segments, which `destroy` would otherwise free with it.
    first_class: Cell<bool>,
    /// For a first-class heap: the thread's default heap, which takes its
    /// segments when it is destroyed and gives empty ones back (null: none,
    /// e.g. after the thread's teardown).
    heir: Cell<*mut RawHeap>,
    /// The thread's list of its first-class heaps (see `thread`).
    pub(crate) next_first_class: Cell<*mut RawHeap>,
    pub(crate) prev_first_class: Cell<*mut RawHeap>,
    /// Bytes of page memory the heap holds in pages in use (and its peak);
    /// see `Segment::page_bytes`.
    page_bytes: Cell<usize>,
    peak_page_bytes: Cell<usize>,
    /// At most this many `page_bytes`: a page or huge block beyond it is
    /// refused (the allocation returns null).
    limit: Cell<usize>,
    /// When the heap was parked (`os::now_ms`; see `park`).
    parked_at_ms: OwnerCell<u64>,
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
unsafe impl Sync for RawHeap {}

macro_rules! heap_value {
    ($thread_id:expr, $shared:expr) => {
        RawHeap {
            direct: [const { Cell::new(empty_page()) }; DIRECT_ENTRIES],
            queues: PageQueue::array(),
            thread_delayed_free: AtomicPtr::new(ptr::null_mut()),
            thread_id: OwnerCell::new($thread_id),
            shared: Cell::new($shared),
            segments: SegmentList::new(),
            small_slots: SegmentList::new(),
            medium_slots: SegmentList::new(),
            large_slots: SegmentList::new(),
            slow_calls: Cell::new(0),
            reset_queue: PageQueue::new(),
            pending_reset: Cell::new(0),
            reused_since_decay: Cell::new(0),
            next_decay_ms: Cell::new(0),
            huge_spares: Cell::new(0),
            huge_spare_bytes: Cell::new(0),
            retired_min: Cell::new(BIN_COUNT),
            retired_max: Cell::new(0),
            entry: Cell::new(ptr::null()),
            lock_depth: OwnerCell::new(0),
            locked_for_fork: Cell::new(false),
            first_class: Cell::new(false),
            heir: Cell::new(ptr::null_mut()),
            next_first_class: Cell::new(ptr::null_mut()),
            prev_first_class: Cell::new(ptr::null_mut()),
            page_bytes: Cell::new(0),
            peak_page_bytes: Cell::new(0),
            limit: Cell::new(usize::MAX),
            parked_at_ms: OwnerCell::new(0),
        }
    };
}

/// A section of the owner holding its heap's lock.
pub(crate) struct HeapGuard<'a> {
    heap: &'a RawHeap,
}

impl Drop for HeapGuard<'_> {
    fn drop(&mut self) {
        let depth = self.heap.lock_depth.get() - 1;
        self.heap.lock_depth.set(depth);
        if depth == 0
            && let Some(entry) = self.heap.entry()
        {
            entry.unlock();
        }
    }
}

/// Words of the on-stack bitmap `visit_blocks` marks free blocks in: enough
/// for the most blocks a page holds (a 64 KiB small page of 8-byte blocks).
const VISIT_BITMAP_WORDS: usize = 128;

impl RawHeap {
    /// The read-only heap every thread starts with: all its direct-table
    /// slots point at the empty page, so the first allocation takes the slow
    /// path, which replaces it with a real heap. Its thread id (1) matches
    /// no segment.
    #[cfg(not(loom))]
    pub(crate) const fn empty() -> RawHeap {
        heap_value!(1, ptr::null())
    }

    /// A fresh heap for thread `thread_id`.
    pub(crate) fn new(thread_id: usize, shared: *const Shared) -> RawHeap {
        heap_value!(thread_id, shared)
    }

    /// Makes the heap reachable through its registry entry (which the caller
    /// claimed and still holds locked); unlocks it.
    ///
    /// # Safety
    /// `entry` came from `HeapRegistry::claim` for this heap, which stays at
    /// this address until it releases the entry (`abandon`).
    pub(crate) unsafe fn register(&self, entry: &Entry) {
        self.entry.set(ptr::from_ref(entry));
        entry.set_active(usize::try_from(os::now_ms()).unwrap_or(usize::MAX));
        entry.publish(self.as_ptr());
    }

    /// The heap's registry entry, if it has one.
    pub(crate) fn entry(&self) -> Option<&Entry> {
        // SAFETY: a registered heap's registry entry is static (or outlives the heap,
        // under loom).
        unsafe { self.entry.get().as_ref() }
    }

    /// Takes the heap's lock (see `registry`) for a section that touches
    /// page slots, segments or the reset queue; re-entrant, and a no-op for
    /// a heap outside the registry. Owner thread only.
    #[inline]
    pub(crate) fn lock(&self) -> HeapGuard<'_> {
        let depth = self.lock_depth.get();
        if depth == 0
            && let Some(entry) = self.entry()
        {
            entry.lock();
        }
        self.lock_depth.set(depth + 1);
        HeapGuard { heap: self }
    }

    /// Whether the heap is in the registry.
    pub(crate) fn is_registered(&self) -> bool {
        !self.entry.get().is_null()
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

    /// The owner thread's id.
    #[inline(always)]
    pub(crate) fn thread_id(&self) -> usize {
        self.thread_id.get()
    }

    fn as_ptr(&self) -> *mut RawHeap {
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
    pub(crate) unsafe fn set_heir(&self, heir: *mut RawHeap) {
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
            // Spare huge segments go to the process's pool.
            self.pool_huge_spares();
            let mut segment = self.segments.first.get();
            while !segment.is_null() {
                let next = (*segment).all.next.get();
                if heir.is_null() || delay == 0 || (*segment).kind == PageKind::Huge {
                    self.segment_free(segment);
                } else {
                    self.empty_segment(segment);
                    (*heir).take_over_empty_segment(segment);
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
    unsafe fn empty_segment(&self, segment_ptr: *mut Segment) {
        // SAFETY: owner thread holding the lock (caller), a segment of ours.
        unsafe { self.detach_segment(segment_ptr) };
        // SAFETY: still live and ours; its header fields are cells.
        let segment = unsafe { &*segment_ptr };
        for index in 0..segment.page_count {
            // SAFETY: a page descriptor of our segment; nothing else reaches
            // the pages (the rule of `destroy`).
            let page_ptr = unsafe { Segment::page(segment_ptr, index) };
            // SAFETY: as above.
            unsafe { self.unschedule_reset(page_ptr) };
            // SAFETY: as above; its fields are cells and atomics.
            let page = unsafe { &*page_ptr };
            if page.in_use.get() {
                // Relaxed: no other thread reaches the page (the rule of
                // `destroy`).
                page.heap.store(ptr::null_mut(), Ordering::Relaxed);
                page.next.set(ptr::null_mut());
                page.prev.set(ptr::null_mut());
                page.retire_expire.set(0);
                // Its lists (`thread_free` included) are rebuilt by
                // `Page::init` when the slot is used again.
                // SAFETY: a slot of our segment, whose blocks are dead.
                unsafe { Segment::release_slot(segment_ptr, page_ptr) };
            }
        }
        segment.heap.set(ptr::null_mut());
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
        for entry in &self.direct {
            entry.set(empty_page());
        }
        self.reset_queue.first.set(ptr::null_mut());
        self.reset_queue.last.set(ptr::null_mut());
        self.pending_reset.set(0);
        self.page_bytes.set(0);
        // Relaxed: no other thread reaches the heap any more.
        self.thread_delayed_free
            .store(ptr::null_mut(), Ordering::Relaxed);
    }

    /// Gives the registry entry up (the heap is torn down; the caller does
    /// not hold the lock). From here on no reaper reaches the heap.
    fn leave_registry(&self) {
        if let Some(entry) = self.entry() {
            entry.lock();
            self.entry.set(ptr::null());
            // SAFETY: we hold the lock; the heap is torn down (caller).
            unsafe { self.release_entry(entry) };
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
        let count = |page: &Page| {
            // SAFETY: a page in use of ours; its remote frees are the
            // owner's to take.
            unsafe { page.collect_thread_free() };
            let used = page.used.get() as usize;
            pages += 1;
            blocks += used;
            bytes += used * page.block_size.get();
        };
        // SAFETY: owner thread (caller).
        unsafe { self.for_each_page_in_use(count) };
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
        let mut segment_ptr = self.segments.first.get();
        while !segment_ptr.is_null() {
            // SAFETY: owner thread holding the lock: segments on our list
            // are live; their header fields are cells.
            let segment = unsafe { &*segment_ptr };
            let start = segment_ptr.addr();
            if (start..start + segment.size).contains(&addr) {
                // A huge segment's one page spans all of it (its page shift
                // only covers where its block can start). The address is
                // used with the segment's provenance, and only once it is
                // known to lie in it.
                // SAFETY: as above; the page descriptor is in the header.
                let page_ptr = unsafe {
                    if segment.kind == PageKind::Huge {
                        Segment::page(segment_ptr, 0)
                    } else {
                        Segment::page_of(segment_ptr, segment_ptr.cast::<u8>().with_addr(addr))
                    }
                };
                // SAFETY: as above.
                let index = unsafe { Segment::page_index(segment_ptr, page_ptr) };
                if index >= segment.page_count {
                    return false;
                }
                // SAFETY: a page descriptor of our segment.
                let page = unsafe { &*page_ptr };
                return page.in_use.get() && addr >= page.page_start.get().addr();
            }
            segment_ptr = segment.all.next.get();
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
        let visit = |page: &Page| {
            // SAFETY: a page in use of ours; its remote frees are the
            // owner's to take.
            unsafe { page.collect_thread_free() };
            let size = page.block_size.get();
            let start = page.page_start.get();
            let capacity = page.capacity.get() as usize;
            let mut free = [0u64; VISIT_BITMAP_WORDS];
            if capacity > VISIT_BITMAP_WORDS * 64 {
                crate::fatal::fatal("visit_blocks: more blocks in a page than expected");
            }
            for mut block in [page.free.get(), page.local_free.get()] {
                while !block.is_null() {
                    let index = (block.addr() - start.addr()) / size;
                    if let Some(word) = free.get_mut(index / 64) {
                        *word |= 1 << (index % 64);
                    }
                    // SAFETY: the page's free lists are the owner's and
                    // hold only blocks of the page, each once.
                    block = unsafe { Block::next(block) };
                }
            }
            for index in 0..capacity {
                let is_free = free
                    .get(index / 64)
                    .is_some_and(|word| word & (1 << (index % 64)) != 0);
                if !is_free {
                    // SAFETY: block `index` lies inside the page's area
                    // (`index < capacity`).
                    f(unsafe { start.add(index * size) }, size);
                }
            }
        };
        // SAFETY: owner thread (caller).
        unsafe { self.for_each_page_in_use(visit) };
    }

    /// Calls `f` on every page in use of every segment of the heap.
    ///
    /// # Safety
    /// Owner thread; `f` does not free pages or segments.
    unsafe fn for_each_page_in_use(&self, mut f: impl FnMut(&Page)) {
        let mut segment_ptr = self.segments.first.get();
        while !segment_ptr.is_null() {
            // SAFETY: owner thread (caller): segments on our list are live,
            // and `f` frees none; their header fields are cells.
            let segment = unsafe { &*segment_ptr };
            for index in 0..segment.page_count {
                // SAFETY: a page descriptor of our live segment.
                let page = unsafe { &*Segment::page(segment_ptr, index) };
                if page.in_use.get() {
                    f(page);
                }
            }
            segment_ptr = segment.all.next.get();
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

    /// Returns what can be returned now: processes delayed frees, frees
    /// empty pages (retired ones too when `force`), and looks through the
    /// abandoned segments.
    ///
    /// # Safety
    /// Owner thread, real heap.
    pub(crate) unsafe fn collect(&self, force: bool) {
        if force {
            // Parked heaps first: their segments go to the cache and the
            // abandoned lists, which the rest of this collect empties.
            // SAFETY: `shared` is null or outlives every heap.
            if let Some(shared) = unsafe { self.shared.get().as_ref() } {
                // SAFETY: we are in no section of a parked heap.
                unsafe { park::evict_parked(shared, true) };
            }
        }
        let guard = self.lock();
        // SAFETY: owner thread (caller), holding the lock.
        unsafe { self.process_delayed(force) };
        let collect_page = |page: *mut Page| {
            // SAFETY: a page on our queues (owner thread, holding the lock);
            // `for_each_page` lets us free it.
            unsafe {
                (*page).collect();
                if (*page).used.get() == 0 && (force || (*page).retire_expire.get() == 0) {
                    self.page_free(page);
                }
            }
        };
        // SAFETY: owner thread (caller), holding the lock.
        unsafe {
            self.for_each_page(collect_page);
            self.collect_retired(force);
            self.reset_expired(force);
        }
        if force {
            // SAFETY: owner thread, holding the lock.
            unsafe {
                self.reset_free_block_interiors();
                // Frees the abandoned segments that became empty, and the
                // cached ones.
                let _ = self.reclaim(None, true);
            }
            // SAFETY: `shared` outlives every heap.
            unsafe {
                (*self.shared.get()).segment_cache.drain();
                (*self.shared.get()).huge_spares.drain();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::free::free_block;
    use crate::os::OS_PAGE_SIZE;
    use crate::page::DelayedMode;
    use crate::process::Shared;
    use crate::size_class::{
        BIN_FULL, BLOCK_SIZES, LARGE_BLOCK_MAX, SHARED_PAGE_BLOCK_MAX, bin_of,
    };

    const OWNER: usize = 0x1000;
    const OTHER: usize = 0x2000;
    const THIRD: usize = 0x3000;

    #[test]
    fn blocks_of_every_class_round_trip_and_memory_goes_back() {
        let shared = Shared::new();
        let heap = RawHeap::new(OWNER, &raw const shared);
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
    unsafe fn fill_one_page(heap: &RawHeap) -> Vec<*mut u8> {
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
        let heap = RawHeap::new(OWNER, &raw const shared);
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
        let heap = RawHeap::new(OWNER, &raw const shared);
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
        let dying = RawHeap::new(OWNER, &raw const shared);
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
            let heir = RawHeap::new(OTHER, &raw const shared);
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

    /// Empties `pages` pages of 8 KiB blocks and collects until their slots
    /// wait on the reset queue, stamped as emptied half a decay time ago;
    /// returns the queued bytes.
    ///
    /// # Safety
    /// Owner thread of `heap`, whose queue is empty.
    unsafe fn queue_half_aged_slots(heap: &RawHeap, pages: usize) -> usize {
        // SAFETY: owner thread (caller).
        unsafe {
            let size = 8 * 1024;
            let blocks: Vec<*mut u8> = (0..pages * 8)
                .map(|_| heap.malloc_generic(size, false))
                .collect();
            for &b in &blocks {
                b.write_bytes(1, size);
            }
            for b in blocks {
                free_block(b, OWNER);
            }
            for _ in 0..32 {
                heap.collect(false);
            }
            let queued = heap.pending_reset.get();
            let half = options::reset_delay_ms() / 2;
            let now = os::now_ms();
            let mut page = heap.reset_queue.first.get();
            while !page.is_null() {
                (*page).emptied_at.set(now - half);
                page = (*page).next.get();
            }
            heap.next_decay_ms.set(0);
            queued
        }
    }

    #[test]
    fn memory_reused_from_the_reset_queue_is_kept_from_the_next_decay_pass() {
        if options::reset_delay_ms() < 64 {
            return;
        }
        // The warm budget is process-wide: other tests' frees must not push
        // ours out before the pass. (Their memory goes back all the same,
        // with the decay or their `collect(true)`.)
        let floor = options::pending_reset_limit();
        options::set_pending_reset_limit(usize::MAX / 2);
        for credit in [false, true] {
            let shared = Shared::new();
            let heap = RawHeap::new(OWNER, &raw const shared);
            // SAFETY: this thread plays the owner of `heap`.
            unsafe {
                // More than CREDIT_MIN queued: a rebuild's scale.
                let queued = queue_half_aged_slots(&heap, 96);
                assert!(queued >= 5 << 20, "{queued} bytes queued");
                if credit {
                    // As if the heap had just reused that much from the
                    // queue (net); a small reuse earns nothing.
                    heap.reused_since_decay.set(queued);
                } else {
                    heap.reused_since_decay.set(64 * 1024);
                }
                heap.reset_expired(false);
                let left = heap.pending_reset.get();
                if credit {
                    assert_eq!(left, queued, "reused memory was still given back");
                } else {
                    // Half the decay time: half is due, and the slots
                    // share a 2 MiB half with nothing in use, which goes
                    // back whole.
                    assert!(left < queued, "nothing of {queued} given back");
                }
                assert_eq!(
                    heap.reused_since_decay.get(),
                    0,
                    "the credit lasts one pass"
                );
                heap.collect(true);
            }
        }
        options::set_pending_reset_limit(floor);
    }

    #[test]
    fn thread_exit_orphans_live_huge_blocks_and_keeps_freed_ones() {
        let shared = Shared::new();
        let heap = RawHeap::new(OWNER, &raw const shared);
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
        let dying = RawHeap::new(OWNER, &raw const shared);
        // SAFETY: this thread plays both owners in turn; `THIRD` frees blocks
        // it was given.
        unsafe {
            let blocks: Vec<*mut u8> = (0..100).map(|_| dying.malloc_generic(48, false)).collect();
            dying.abandon();
            let heir = RawHeap::new(OTHER, &raw const shared);
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
        let dying = RawHeap::new(OWNER, &raw const shared);
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
            let other = RawHeap::new(OTHER, &raw const shared);
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
        let heap = RawHeap::new(OWNER, &raw const shared);
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
        let dying = RawHeap::new(OWNER, &raw const shared);
        // SAFETY: this thread plays both owners in turn, as above.
        unsafe {
            let survivor = dying.malloc_generic(5000, false);
            survivor.write_bytes(0x5A, 5000);
            dying.abandon();
            assert_eq!(shared.abandoned.len(), 1);
            let first_class = RawHeap::new(OTHER, &raw const shared);
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
