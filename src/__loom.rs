//! Entry points for the loom models in `loom-tests/` (built only with
//! `--cfg loom`). They drive the crate's real heap, page, segment and
//! abandon code; only thread identity (an explicit id instead of the
//! thread-local address) and the OS backend (`std::alloc::System` instead
//! of `mmap`) differ from a normal build.
//!
//! Blocks handed out here are at least 64 bytes: under loom a free block's
//! link is a `loom::cell::UnsafeCell`, larger than a pointer.

use crate::free::free_block;
use crate::heap::RawHeap;
use crate::once::{Once, RunOnce};
use crate::page::{Block, DelayedMode, Page};
use crate::process::{AbandonedSegments, PopFrom, Shared};
use crate::registry::HeapRegistry;
use crate::segment::Segment;
use crate::segment_cache::SegmentCache;
use crate::size_class::PageKind;

/// Process-wide state of one model run (the abandoned-segment list).
pub struct World {
    shared: Shared,
}

impl World {
    /// Fresh process state.
    pub fn new() -> World {
        World {
            shared: Shared::new(),
        }
    }

    /// Segments on the abandoned list.
    pub fn abandoned_segments(&self) -> usize {
        self.shared.abandoned.len()
    }

    /// What a new thread's first allocation does (`thread::init_current`):
    /// adopts a parked heap for the model thread `thread_id`, if one is
    /// parked.
    pub fn adopt_parked(&self, thread_id: usize) -> Option<AdoptedHeap> {
        let heap = crate::heap::adopt_parked(&self.shared, thread_id);
        (!heap.is_null()).then_some(AdoptedHeap { heap })
    }

    /// A forced eviction pass over the parked heaps (what `collect(true)`'s
    /// reaper does): each is torn down as its thread's exit would have.
    pub fn evict_parked(&self) {
        // SAFETY: the model thread is in no section of a parked heap.
        unsafe { crate::heap::evict_parked(&self.shared, true) }
    }

    /// Heaps parked now.
    pub fn parked_heaps(&self) -> usize {
        self.shared.parked.len()
    }
}

/// A parked heap adopted by the model thread that took it (its
/// `ModelHeap`, which owns the memory, outlives it).
pub struct AdoptedHeap {
    heap: *mut RawHeap,
}

impl AdoptedHeap {
    /// Allocates `size ≥ 64` bytes through the heap's slow path.
    pub fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: we adopted the heap: this model thread owns it.
        unsafe { (*self.heap).malloc_generic(size.max(64), false) }
    }

    /// Frees a block on the owner thread.
    ///
    /// # Safety
    /// `ptr` is a live block of this model.
    pub unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: forwarded; the id is ours since the adoption.
        unsafe { free_block(ptr, (*self.heap).thread_id()) }
    }

    /// Thread exit: abandons the heap.
    pub fn abandon(self) {
        // SAFETY: owner thread; the heap is not used again.
        unsafe { (*self.heap).abandon() }
    }
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Release whatever is still abandoned, so model iterations do not
        // accumulate memory.
        for kind in [
            PageKind::Small,
            PageKind::Medium,
            PageKind::Large,
            PageKind::Huge,
        ] {
            self.shared.abandoned.recycle(kind);
            loop {
                let segment = self.shared.abandoned.pop(kind, PopFrom::Anywhere);
                if segment.is_null() {
                    break;
                }
                // SAFETY: the model is over; the pop made the segment ours.
                unsafe { Segment::release(segment) };
            }
        }
    }
}

/// A heap owned by the model thread that created it.
pub struct ModelHeap {
    heap: Box<RawHeap>,
}

impl ModelHeap {
    /// A heap owned by the thread whose id is `thread_id` (nonzero, not 1,
    /// distinct per model thread).
    pub fn new(world: &World, thread_id: usize) -> ModelHeap {
        ModelHeap {
            heap: Box::new(RawHeap::new(thread_id, &raw const world.shared)),
        }
    }

    /// Like [`ModelHeap::new`], and registered in the world's heap registry
    /// (so other heaps' reapers can reach it).
    pub fn new_registered(world: &World, thread_id: usize) -> ModelHeap {
        let heap = ModelHeap::new(world, thread_id);
        let Some(slot) = world.shared.heaps.claim() else {
            panic!("the model registry is full");
        };
        // SAFETY: the slot is ours from `claim`; the boxed heap stays put
        // until `abandon` releases the slot (the model calls it before
        // dropping the heap).
        unsafe { heap.heap.register(slot) };
        heap
    }

    /// A first-class heap (`shardalloc::Heap`) of the thread `thread_id`,
    /// registered: it never adopts abandoned segments and can be destroyed.
    pub fn new_first_class(world: &World, thread_id: usize) -> ModelHeap {
        let heap = ModelHeap::new_registered(world, thread_id);
        heap.heap.set_first_class();
        heap
    }

    /// Like [`ModelHeap::new_first_class`], with `heir` (a heap of the same
    /// thread) taking its segments at `destroy` and giving empty ones back.
    /// The model keeps `heir` alive longer than this heap.
    pub fn new_first_class_with_heir(
        world: &World,
        thread_id: usize,
        heir: &ModelHeap,
    ) -> ModelHeap {
        let heap = ModelHeap::new_first_class(world, thread_id);
        // SAFETY: `heir` is a live heap of the same model thread, and the
        // model drops it only after this one.
        unsafe {
            heap.heap
                .set_heir(core::ptr::from_ref(&*heir.heap).cast_mut())
        };
        heap
    }

    /// `RawHeap::destroy`: releases every page and segment of the heap (the
    /// model may then drop it).
    pub fn destroy(&self) {
        // SAFETY: owner thread; the model uses none of the heap's blocks
        // afterwards, and frees them only before (ordered by join).
        unsafe { self.heap.destroy() }
    }

    /// The reaper pass of this heap's slow path over the other registered
    /// heaps (every waiting page slot with `force`).
    pub fn reap_others(&self, force: bool) {
        // SAFETY: owner thread (the model thread that created the heap).
        unsafe { self.heap.reap_idle_heaps(force) };
    }

    /// Allocates `size ≥ 64` bytes through the heap's slow path (the real
    /// page search, extension, full-queue and fresh-page code).
    pub fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: owner thread (the model thread that created the heap).
        unsafe { self.heap.malloc_generic(size.max(64), false) }
    }

    /// Frees a block on the owner thread.
    ///
    /// # Safety
    /// `ptr` is a live block of this model.
    pub unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: forwarded.
        unsafe { free_block(ptr, self.heap.thread_id()) }
    }

    /// Processes the delayed-free list once (the heartbeat's work), or
    /// until empty with `wait_all`.
    pub fn process_delayed(&self, wait_all: bool) {
        // SAFETY: owner thread.
        unsafe { self.heap.process_delayed(wait_all) }
    }

    /// Collects the free lists of the page holding `ptr` (what the owner
    /// does when it scans a queue).
    ///
    /// # Safety
    /// `ptr` is a block (live or freed) of a page of this heap.
    pub unsafe fn collect_page_of(&self, ptr: *mut u8) {
        // SAFETY: the page is ours (caller), we are its owner.
        unsafe { (*page_of(ptr)).collect() }
    }

    /// `RawHeap::collect`.
    pub fn collect(&self, force: bool) {
        // SAFETY: owner thread.
        unsafe { self.heap.collect(force) }
    }

    /// Thread exit, parking the heap for another model thread to adopt
    /// (`World::adopt_parked`); false if it was not parked. The model keeps
    /// this `ModelHeap` (the heap's memory) until the heap is torn down by
    /// its adopter or `World::evict_parked`, and frees on this thread with
    /// its id through `__loom::free` from here on.
    pub fn park(&self) -> bool {
        // SAFETY: owner thread; the heap is not used through this handle
        // again, except to be dropped once torn down.
        unsafe { self.heap.park() }
    }

    /// Thread exit: abandon the heap (the model may then drop it).
    pub fn abandon(&self) {
        // SAFETY: owner thread.
        unsafe { self.heap.abandon() }
    }

    /// Allocates a huge block (its own segment) of `size` bytes.
    pub fn alloc_huge(&self, size: usize) -> *mut u8 {
        // SAFETY: owner thread.
        unsafe { self.heap.malloc_huge(size, 16, false) }
    }

    /// Bytes of empty page slots waiting on the heap's reset queue.
    pub fn pending_reset(&self) -> usize {
        self.heap.pending_reset_bytes()
    }

    /// Segments the heap holds.
    pub fn segments(&self) -> usize {
        self.heap.segment_count()
    }

    /// Touches the heap's remotely written field non-atomically: loom
    /// reports a causality violation if any other thread's access to the
    /// heap is not ordered before this call. Call it after `abandon` to
    /// prove the heap is unreachable.
    pub fn claim_exclusive(&mut self) {
        self.heap.claim_exclusive();
    }
}

/// Memory mappings of the OS test backend still live on this OS thread
/// (a loom model runs on one OS thread): compare before and after a model
/// run to prove every segment was released exactly once.
pub fn live_mappings() -> usize {
    crate::os::live_mappings()
}

/// The abandoned-segment lists on their own, with real (empty) small
/// segments.
pub struct AbandonedList {
    list: AbandonedSegments,
}

impl AbandonedList {
    /// Empty lists.
    pub fn new() -> AbandonedList {
        AbandonedList {
            list: AbandonedSegments::new(),
        }
    }

    /// Maps a fresh small segment and pushes it; returns its address.
    pub fn push_new(&self) -> usize {
        let segment = Segment::create(PageKind::Small, 0, core::ptr::null_mut(), false)
            .expect("test backend map")
            .as_ptr();
        // SAFETY: the fresh segment is ours and handed to the list.
        unsafe { self.list.push(segment) };
        segment.expose_provenance()
    }

    /// What a reclaim pass does with one segment it keeps: pops one from
    /// `incoming` (None if empty or the pop lock is busy), and gives it
    /// back (`keep`). Returns its address.
    pub fn pop_and_keep(&self) -> Option<usize> {
        let segment = self.list.pop(PageKind::Small, PopFrom::Incoming);
        if segment.is_null() {
            return None;
        }
        // SAFETY: the pop made the segment ours; given back.
        unsafe { self.list.keep(segment) };
        Some(segment.expose_provenance())
    }

    /// What an adopting thread does: pops a segment from either list and
    /// releases it (a popped segment may be unmapped at once). Returns its
    /// address.
    pub fn pop_and_release(&self) -> Option<usize> {
        let segment = self.list.pop(PageKind::Small, PopFrom::Anywhere);
        if segment.is_null() {
            return None;
        }
        let address = segment.expose_provenance();
        // SAFETY: the pop made the segment ours.
        unsafe { Segment::release(segment) };
        Some(address)
    }

    /// What `collect(true)` does: takes both lists whole (null if the pop
    /// lock stays busy), walks the chain, and keeps every segment (one
    /// chain back onto `visited`). Returns the addresses walked.
    pub fn take_all_and_keep(&self) -> Vec<usize> {
        let mut walked = Vec::new();
        let first = self.list.take_all(PageKind::Small);
        let (mut last, mut segment) = (first, first);
        while !segment.is_null() {
            walked.push(segment.expose_provenance());
            last = segment;
            // SAFETY: `take_all` made the chain ours.
            segment = unsafe { Segment::abandoned_next(segment) };
        }
        if !first.is_null() {
            // SAFETY: the chain we took, `last` its tail, given back.
            unsafe { self.list.keep_chain(PageKind::Small, first, last) };
        }
        walked
    }

    /// Moves the kept segments back onto `incoming`.
    pub fn recycle(&self) {
        self.list.recycle(PageKind::Small);
    }

    /// Pops every segment left (recycling first), releases them, and
    /// returns their addresses.
    pub fn drain(&self) -> Vec<usize> {
        self.recycle();
        let mut taken = Vec::new();
        while let Some(address) = self.pop_and_release() {
            taken.push(address);
        }
        taken
    }

    /// Segments on the lists.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether the lists are empty.
    pub fn is_empty(&self) -> bool {
        self.list.len() == 0
    }
}

impl Default for AbandonedList {
    fn default() -> AbandonedList {
        AbandonedList::new()
    }
}

/// The heap registry on its own: entries claimed and released, with no
/// heap behind them (the lock never dereferences the heap pointer).
pub struct RegistryModel {
    registry: HeapRegistry,
}

impl RegistryModel {
    /// An empty registry (under loom its chunks hold 2, 4, 8 entries).
    pub fn new() -> RegistryModel {
        RegistryModel {
            registry: HeapRegistry::new(),
        }
    }

    /// `claim` + `publish`: the claimed entry's index, None if refused.
    pub fn claim(&self) -> Option<usize> {
        let entry = self.registry.claim()?;
        entry.publish(core::ptr::dangling_mut());
        Some(entry.index())
    }

    /// Locks the entry `index` (as its owner does before tearing its heap
    /// down) and releases it.
    pub fn release(&self, index: usize) {
        let entry = self
            .registry
            .entries()
            .find(|entry| entry.index() == index)
            .expect("a claimed entry");
        entry.lock();
        self.registry.release(entry);
    }

    /// Indexes on the free stack, top first (at most 64, so a corrupted,
    /// cyclic stack shows as repeats rather than a hang).
    pub fn free_stack(&self) -> Vec<usize> {
        self.registry.free_stack(64)
    }

    /// Entries ever used (what `entries()` iterates over).
    pub fn entries(&self) -> usize {
        self.registry.entries().count()
    }

    /// Entries holding a heap now.
    pub fn heaps(&self) -> usize {
        self.registry.heap_count()
    }
}

impl Default for RegistryModel {
    fn default() -> RegistryModel {
        RegistryModel::new()
    }
}

/// The segment cache on its own, with real (empty) segments.
pub struct SegmentCacheModel {
    cache: SegmentCache,
}

impl SegmentCacheModel {
    /// An empty cache.
    pub fn new() -> SegmentCacheModel {
        SegmentCacheModel {
            cache: SegmentCache::new(),
        }
    }

    /// Maps a fresh segment and offers it to the first `limit` slots;
    /// returns its address, or None if the cache was full (then it is
    /// released at once).
    pub fn put_new(&self, limit: usize) -> Option<usize> {
        let segment = Segment::create(PageKind::Large, 0, core::ptr::null_mut(), false)
            .expect("test backend map")
            .as_ptr();
        // SAFETY: a fresh empty segment, ours.
        unsafe {
            Segment::reset_pages(segment);
            if self.cache.put(segment, limit) {
                return Some(segment.expose_provenance());
            }
            Segment::release(segment);
        }
        None
    }

    /// Takes a cached segment, releases it, and returns its address.
    pub fn take(&self) -> Option<usize> {
        let segment = self.cache.take();
        if segment.is_null() {
            return None;
        }
        let address = segment.expose_provenance();
        // SAFETY: `take` made us the only owner of the empty segment.
        unsafe { Segment::release(segment) };
        Some(address)
    }
}

impl Default for SegmentCacheModel {
    fn default() -> SegmentCacheModel {
        SegmentCacheModel::new()
    }
}

/// The publish-once cell behind the thread-exit key.
pub struct PublishOnce {
    once: Once,
}

impl PublishOnce {
    /// An empty slot.
    pub fn new() -> PublishOnce {
        PublishOnce { once: Once::new() }
    }

    /// `Once::get_or_publish`.
    pub fn get_or_publish(
        &self,
        create: impl FnOnce() -> Option<usize>,
        discard: impl FnOnce(usize),
    ) -> Option<usize> {
        self.once.get_or_publish(create, discard)
    }
}

impl Default for PublishOnce {
    fn default() -> PublishOnce {
        PublishOnce::new()
    }
}

/// The run-once gate behind the process start-up work (options, fork
/// handlers).
pub struct RunOnceGate {
    once: RunOnce,
}

impl RunOnceGate {
    /// Work not run yet.
    pub fn new() -> RunOnceGate {
        RunOnceGate {
            once: RunOnce::new(),
        }
    }

    /// `RunOnce::call`.
    pub fn call(&self, thread_id: usize, work: impl FnOnce()) {
        self.once.call(thread_id, work);
    }
}

impl Default for RunOnceGate {
    fn default() -> RunOnceGate {
        RunOnceGate::new()
    }
}

/// Frees `ptr` from the model thread whose id is `thread_id`.
///
/// # Safety
/// `ptr` is a live block of this model that the caller gives up.
pub unsafe fn free(ptr: *mut u8, thread_id: usize) {
    // SAFETY: forwarded.
    unsafe { free_block(ptr, thread_id) }
}

/// The page holding `ptr`.
///
/// # Safety
/// `ptr` is a block of this model.
unsafe fn page_of(ptr: *mut u8) -> *mut Page {
    // SAFETY: forwarded.
    unsafe { Segment::page_of(Segment::of(ptr), ptr) }
}

/// What the owner sees of the page holding `ptr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageView {
    /// Blocks handed out (including remotely freed, uncollected ones).
    pub used: u32,
    /// Delayed-free mode: 0 use-delayed, 1 freeing, 2 no-delayed, 3 never.
    pub mode: usize,
    /// The page sits in its heap's full queue.
    pub in_full: bool,
}

/// The address of the page descriptor of the page holding `ptr` (to tell
/// whether two blocks share a page, or a slot was reused).
///
/// # Safety
/// `ptr` is a block of a live segment of this model.
pub unsafe fn page_address(ptr: *mut u8) -> usize {
    let segment = Segment::of(ptr);
    // SAFETY: the segment is live (caller); `page_of` reads its header.
    unsafe { Segment::page_of(segment, ptr) }.addr()
}

/// Reads the page holding `ptr`.
///
/// # Safety
/// `ptr` is a block of a page owned by the calling model thread.
pub unsafe fn page_view(ptr: *mut u8) -> PageView {
    // SAFETY: owner thread (caller).
    unsafe {
        let page = page_of(ptr);
        PageView {
            used: (*page).used.get(),
            mode: (*page).delayed_mode() as usize,
            in_full: (*page).is_in_full(),
        }
    }
}

/// Counts how many times `ptr` appears on the owner-side free lists
/// (`free` and `local_free`) of its page.
///
/// # Safety
/// `ptr` is a block of a page owned by the calling model thread, collected
/// (its `thread_free` taken) by the caller.
pub unsafe fn times_on_free_lists(ptr: *mut u8) -> usize {
    // SAFETY: owner thread (caller); the lists are owner-only.
    unsafe {
        let page = page_of(ptr);
        let mut count = 0;
        for head in [(*page).free.get(), (*page).local_free.get()] {
            let mut block = head;
            while !block.is_null() {
                if block.cast::<u8>() == ptr {
                    count += 1;
                }
                block = Block::next(block);
            }
        }
        count
    }
}

/// `DelayedMode::UseDelayed` as a number, for `PageView::mode`.
pub const MODE_USE_DELAYED: usize = DelayedMode::UseDelayed as usize;
/// `DelayedMode::NoDelayed` as a number.
pub const MODE_NO_DELAYED: usize = DelayedMode::NoDelayed as usize;
/// `DelayedMode::Never` as a number.
pub const MODE_NEVER: usize = DelayedMode::Never as usize;

/// The purge thread's sleep (`sync::Sleeper`): a sleeper that waits for
/// work and producers that publish work and wake it.
pub struct ModelSleeper(crate::sync::Sleeper);

impl ModelSleeper {
    /// A sleeper nobody waits on.
    #[allow(clippy::new_without_default)]
    pub fn new() -> ModelSleeper {
        ModelSleeper(crate::sync::Sleeper::new())
    }

    /// Sleeps while `no_work()` holds (see `Sleeper::sleep_while`).
    pub fn sleep_while(&self, no_work: impl Fn() -> bool) {
        self.0.sleep_while(no_work);
    }

    /// Wakes the sleeper if it sleeps (see `Sleeper::wake`).
    pub fn wake(&self) {
        self.0.wake();
    }
}
