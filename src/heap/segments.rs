//! The heap's segments: the list of every segment holding its pages, the
//! lists of segments with an unused page slot per page kind, and getting,
//! emptying and giving back segments (through the segment cache, to the
//! thread's default heap, or to the OS).

use super::RawHeap;
use crate::decay;
use crate::heap::Shared;
use crate::options::{self, MAX_SEGMENT_CACHE};
use crate::os;
use crate::page::Page;
use crate::segment::{Links, Segment};
use crate::size_class::PageKind;
use crate::sync::OwnerCell;
use core::ptr;

/// Which of a segment's two link pairs a [`SegmentList`] threads through.
#[derive(Clone, Copy)]
pub(super) enum SegmentLinks {
    /// All segments of the heap.
    All,
    /// Segments with an unused page slot.
    FreeSlot,
}

/// A doubly linked list of segments (owner only).
pub(crate) struct SegmentList {
    pub(super) first: OwnerCell<*mut Segment>,
}

impl SegmentList {
    #[cfg(not(loom))]
    pub(super) const fn new() -> SegmentList {
        SegmentList {
            first: OwnerCell::new(ptr::null_mut()),
        }
    }

    #[cfg(loom)]
    pub(super) fn new() -> SegmentList {
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
    pub(super) unsafe fn push(&self, segment: *mut Segment, which: SegmentLinks) {
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
    pub(super) unsafe fn remove(&self, segment: *mut Segment, which: SegmentLinks) {
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

impl RawHeap {
    /// The list of our segments of `kind` with an unused page slot.
    pub(super) fn slot_list(&self, kind: PageKind) -> Option<&SegmentList> {
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
    pub(super) unsafe fn list_free_slot(&self, segment: *mut Segment) {
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
    pub(super) unsafe fn segment_free_if_empty(&self, segment: *mut Segment) {
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
    pub(super) unsafe fn new_segment(&self, kind: PageKind) -> Option<core::ptr::NonNull<Segment>> {
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
            let dense = self.is_dense_in(kind);
            return Segment::create(kind, self.thread_id(), self.as_ptr(), dense);
        }
        // SAFETY: `take` made us the cached segment's only owner.
        unsafe { Segment::reuse(cached, kind, self.thread_id(), self.as_ptr()) }
    }

    /// The heap already holds `options::dense_segments()` (by default 4:
    /// 16 MiB) small or medium segments of `kind`: it is about to fill
    /// another one, dense enough for transparent huge pages from the start
    /// (a small heap keeps 4 KiB pages: a huge page is resident whole as
    /// soon as any byte of it is touched). With the option at 0, every one.
    fn is_dense_in(&self, kind: PageKind) -> bool {
        if kind == PageKind::Large {
            // One page per segment, carved as blocks are needed: a huge
            // page would make its untouched tail resident.
            return false;
        }
        let dense_after = options::dense_segments();
        if dense_after == 0 {
            return true;
        }
        let mut count = 0;
        let mut segment = self.segments.first.get();
        while !segment.is_null() {
            // SAFETY: segments on the heap's list are live (owner thread).
            unsafe {
                if (*segment).kind == kind {
                    count += 1;
                    if count >= dense_after {
                        return true;
                    }
                }
                segment = (*segment).all.next.get();
            }
        }
        false
    }

    /// Takes a segment of ours off the heap's segment lists.
    ///
    /// # Safety
    /// Owner thread holding the lock; the segment is ours.
    pub(super) unsafe fn detach_segment(&self, segment: *mut Segment) {
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
    pub(super) unsafe fn segment_free(&self, segment: *mut Segment) {
        // SAFETY: owner thread (caller).
        unsafe {
            self.detach_segment(segment);
            for index in 0..(*segment).page_count {
                self.unschedule_reset(Segment::page(segment, index));
            }
            cache_or_release(self.shared.get(), segment);
        }
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
    pub(super) unsafe fn take_over_empty_segment(&self, segment: *mut Segment) {
        let _guard = self.lock();
        // SAFETY: exclusively ours (caller); the header fields are cells.
        let header = unsafe { &*segment };
        header.heap.set(self.as_ptr());
        header.in_free_slot_list.set(false);
        // SAFETY: ours, on no list (caller); owner thread holding the lock.
        unsafe {
            self.segments.push(segment, SegmentLinks::All);
            self.list_free_slot(segment);
        }
        let mut dirty = 0;
        for index in 0..header.page_count {
            // SAFETY: a slot of our segment, unused, on no queue.
            unsafe {
                let page = Segment::page(segment, index);
                if !(*page).memory_is_zero.get() {
                    self.enqueue_reset(page);
                    dirty += 1;
                }
            }
        }
        if dirty == 0 {
            // Nothing to wait for: the segment goes now.
            // SAFETY: ours, empty, nothing pending.
            unsafe { self.segment_free_if_empty(segment) };
        }
        // Only now, with every dirty slot counted as pending, may a reset
        // empty the segment and free it: the reset of its last pending slot
        // frees it (`reset_pending_page`), so the segment must not be
        // touched after this.
        // SAFETY: owner thread holding the lock.
        unsafe { self.enforce_warm_budget() };
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

    /// Counts a page that starts (`gained`) or stops being the heap's in
    /// `page_bytes`.
    ///
    /// # Safety
    /// `page` is a slot of the live `segment`, ours.
    pub(super) unsafe fn note_page_bytes(
        &self,
        segment: *mut Segment,
        page: *mut Page,
        gained: bool,
    ) {
        // SAFETY: forwarded from the caller.
        let bytes = unsafe { Segment::page_bytes(segment, page) };
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
    pub(super) fn within_limit(&self, bytes: usize) -> bool {
        self.page_bytes.get().saturating_add(bytes) <= self.limit.get()
    }
}

/// An empty segment that belongs to no heap goes into the segment cache
/// (with its memory, given back when its reset delay passes, if it still
/// has any: thread exit, `destroy`, an emptied abandoned segment), or back
/// to the OS when the cache is full or off.
///
/// A segment that keeps its memory (*warm*) may take any of the cache's
/// [`MAX_SEGMENT_CACHE`] slots, a reset one only the first
/// `options::segment_cache()`: warm memory is bounded by the warm budget
/// (over it, the segment is reset first) and by its reset when due (the
/// reaper's sweep then keeps it only within the option's slots). Unmapping
/// a warm segment because four others wait would throw away memory the
/// next thread faults in again (`mstress`: the exiting threads of a round
/// leave more than four empty segments, and the next round's threads
/// mapped fresh ones).
///
/// # Safety
/// The caller owns the segment: empty, on no list, no slot pending.
pub(super) unsafe fn cache_or_release(shared: *const Shared, segment: *mut Segment) {
    let limit = options::segment_cache();
    // SAFETY: exclusively ours (caller); `kind` never changes.
    if unsafe { (*segment).kind } != PageKind::Huge && limit > 0 {
        let mut slots = limit;
        // SAFETY: exclusively ours, empty, nothing pending (caller).
        unsafe {
            if !Segment::all_pages_zero(segment) {
                let delay = options::reset_delay_ms();
                if delay == 0 || decay::over_budget(options::pending_reset_limit()) {
                    Segment::reset_pages(segment);
                } else {
                    // The next heap may well reuse it soon; a reaper's sweep
                    // gives the memory back if not.
                    Segment::cache_dirty(segment, os::now_ms().saturating_add(delay));
                    slots = MAX_SEGMENT_CACHE;
                }
            }
        }
        // SAFETY: `shared` outlives every heap; the segment is ours, given
        // up on success.
        if unsafe { (*shared).segment_cache.put(segment, slots) } {
            return;
        }
    }
    // SAFETY: ours, empty, on no list (caller).
    unsafe { Segment::release(segment) };
}
