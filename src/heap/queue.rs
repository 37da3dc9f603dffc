//! The heap's page queues and its direct table: one queue of pages per size
//! class (the first page is where allocation pops from), the huge and full
//! queues, and the moves of a page between them as it fills, empties, is
//! retired for reuse or given back to its segment.

use super::RawHeap;
use crate::page::{DelayedMode, IN_FULL, Page, empty_page};
use crate::segment::Segment;
use crate::size_class::{
    BIN_COUNT, BIN_FULL, BLOCK_SIZES, PageKind, QUEUE_COUNT, SMALL_BLOCK_MAX, SMALL_SIZE_MAX, WORD,
    direct_entries_of,
};
use crate::stats;
use crate::sync::{Ordering, OwnerCell};
use core::ptr;

/// A doubly linked list of pages (the owner's, or a lock holder's for the
/// full queue and the reset queue).
pub(crate) struct PageQueue {
    pub(super) first: OwnerCell<*mut Page>,
    pub(super) last: OwnerCell<*mut Page>,
}

impl PageQueue {
    #[cfg(not(loom))]
    pub(super) const fn new() -> PageQueue {
        PageQueue {
            first: OwnerCell::new(ptr::null_mut()),
            last: OwnerCell::new(ptr::null_mut()),
        }
    }

    #[cfg(loom)]
    pub(super) fn new() -> PageQueue {
        PageQueue {
            first: OwnerCell::new(ptr::null_mut()),
            last: OwnerCell::new(ptr::null_mut()),
        }
    }

    /// A heap's queues, all empty.
    #[cfg(not(loom))]
    pub(super) const fn array() -> [PageQueue; QUEUE_COUNT] {
        [const { PageQueue::new() }; QUEUE_COUNT]
    }

    /// A heap's queues, all empty.
    #[cfg(loom)]
    pub(super) fn array() -> [PageQueue; QUEUE_COUNT] {
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
    pub(super) unsafe fn push_back(&self, page: *mut Page) -> bool {
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
    pub(super) unsafe fn remove(&self, page: *mut Page) -> bool {
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

/// Retire countdown (in fresh-page searches) of an empty small page kept
/// for reuse, and of a larger one.
pub(super) const RETIRE_CYCLES_SMALL: u8 = 16;

pub(super) const RETIRE_CYCLES_LARGE: u8 = 4;

impl RawHeap {
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
    pub(super) fn queue(&self, index: usize) -> &PageQueue {
        match self.queues.get(index) {
            Some(queue) => queue,
            None => crate::fatal::fatal("page queue index out of range"),
        }
    }

    /// Points the direct-table entries of `index` at its queue's first page.
    fn update_direct(&self, index: usize) {
        if index >= BIN_COUNT || BLOCK_SIZES[index.min(BIN_COUNT - 1)] > SMALL_SIZE_MAX {
            return;
        }
        let first = self.queue(index).first.get();
        let page = if first.is_null() { empty_page() } else { first };
        let (low, high) = direct_entries_of(index);
        for slot in self.direct.get(low..=high).unwrap_or(&[]) {
            slot.set(page);
        }
    }

    /// # Safety
    /// `page` is an owned page on no queue.
    pub(super) unsafe fn queue_push_front(&self, index: usize, page: *mut Page) {
        // SAFETY: forwarded from the caller.
        unsafe { self.queue(index).push_front(page) };
        self.update_direct(index);
    }

    /// # Safety
    /// `page` is an owned page on no queue.
    pub(super) unsafe fn queue_push_back(&self, index: usize, page: *mut Page) {
        // SAFETY: forwarded from the caller.
        if unsafe { self.queue(index).push_back(page) } {
            self.update_direct(index);
        }
    }

    /// # Safety
    /// `page` is an owned page on queue `index`.
    pub(super) unsafe fn queue_remove(&self, index: usize, page: *mut Page) {
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

    /// # Safety
    /// Owner thread; `page` is ours.
    pub(crate) unsafe fn page_after_free(&self, page: *mut Page) {
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
    unsafe fn page_retire(&self, page_ptr: *mut Page) {
        // SAFETY: a live page of ours (caller); its fields are cells.
        let page = unsafe { &*page_ptr };
        if page.is_in_full() {
            // SAFETY: ours, in the full queue.
            unsafe { self.page_unfull(page_ptr) };
        }
        let bin = usize::from(page.bin.get());
        if bin < BIN_COUNT && page.prev.get().is_null() && page.next.get().is_null() {
            let small = page.block_size.get() <= SMALL_BLOCK_MAX;
            page.retire_expire.set(if small {
                RETIRE_CYCLES_SMALL
            } else {
                RETIRE_CYCLES_LARGE
            });
            self.retired_min.set(self.retired_min.get().min(bin));
            self.retired_max.set(self.retired_max.get().max(bin));
            return;
        }
        // SAFETY: ours, on a queue, with no live block (`used == 0`).
        unsafe { self.page_free(page_ptr) };
    }

    /// Counts down retired pages and frees those that expired (all of them
    /// when `force`).
    ///
    /// # Safety
    /// Owner thread.
    pub(super) unsafe fn collect_retired(&self, force: bool) {
        let (low, high) = (self.retired_min.get(), self.retired_max.get());
        self.retired_min.set(BIN_COUNT);
        self.retired_max.set(0);
        for bin in low..=high.min(BIN_COUNT - 1) {
            let mut page_ptr = self.queue(bin).first.get();
            while !page_ptr.is_null() {
                // SAFETY: pages on our queues are live and ours (owner
                // thread, caller); their fields are cells.
                let page = unsafe { &*page_ptr };
                let next = page.next.get();
                let expire = page.retire_expire.get();
                if expire != 0 {
                    if page.used.get() != 0 {
                        // In use again: no longer retired.
                        page.retire_expire.set(0);
                    } else if force || expire == 1 {
                        page.retire_expire.set(0);
                        // SAFETY: ours, on a queue, with no live block;
                        // `next` was read first.
                        unsafe { self.page_free(page_ptr) };
                    } else {
                        page.retire_expire.set(expire - 1);
                        self.retired_min.set(self.retired_min.get().min(bin));
                        self.retired_max.set(self.retired_max.get().max(bin));
                    }
                }
                page_ptr = next;
            }
        }
    }

    /// Gives an empty page back to its segment, and the segment back to the
    /// OS when it has no page left.
    ///
    /// # Safety
    /// Owner thread; `page` is ours, on one of our queues, with no live block.
    pub(super) unsafe fn page_free(&self, page: *mut Page) {
        let _guard = self.lock();
        // SAFETY: forwarded; we hold the lock.
        unsafe { self.page_free_locked(page, false) };
    }

    /// `page_free` for a heap being torn down (`abandon`): the slot goes back
    /// to its segment but no reset is queued (`abandon` would take it off
    /// the queue again at once; what happens to the memory is decided per
    /// segment: cached, or abandoned warm).
    ///
    /// # Safety
    /// The owner, holding the lock, tearing the heap down; `page` is ours,
    /// on one of our queues, with no live block.
    pub(super) unsafe fn page_free_for_abandon(&self, page_ptr: *mut Page) {
        let segment = Segment::of(page_ptr.cast());
        // SAFETY: the page's segment is live and ours; `kind` never changes.
        if unsafe { (*segment).kind } == PageKind::Huge {
            // SAFETY: forwarded.
            unsafe { self.page_free_locked(page_ptr, false) };
            return;
        }
        // SAFETY: a live page of ours, no live block (caller).
        let page = unsafe { &*page_ptr };
        // SAFETY: as above; the page is on the queue its state names.
        unsafe { self.queue_remove(Self::queue_index_of(page_ptr), page_ptr) };
        // Relaxed: no other thread can read it (no live block).
        page.heap.store(ptr::null_mut(), Ordering::Relaxed);
        page.retire_expire.set(0);
        // SAFETY: a page of our segment leaving use; then its slot, unused.
        unsafe {
            self.note_page_bytes(segment, page_ptr, false);
            Segment::release_slot(segment, page_ptr);
            self.list_free_slot(segment);
        }
    }

    /// `page_free` by whoever holds the lock (the owner, or a reaper).
    /// With `defer`, the slot only joins the reset queue (no reset, and so
    /// no segment freed, now): a reaper walking the segments calls
    /// `enforce_warm_budget` and `reset_expired` when it is done.
    ///
    /// # Safety
    /// The caller holds the heap's lock; `page` is ours, on one of our
    /// queues, with no live block; with `defer`, not huge.
    pub(super) unsafe fn page_free_locked(&self, page_ptr: *mut Page, defer: bool) {
        // SAFETY: a live page of ours (caller); lock held, and no block of
        // the page is live, so no other thread can reach the page.
        let page = unsafe { &*page_ptr };
        // SAFETY: as above; the page is on the queue its state names.
        unsafe { self.queue_remove(Self::queue_index_of(page_ptr), page_ptr) };
        // Relaxed: no other thread can read it (no live block).
        page.heap.store(ptr::null_mut(), Ordering::Relaxed);
        page.retire_expire.set(0);
        let segment = Segment::of(page_ptr.cast());
        // SAFETY: the page's segment is live and ours; `kind` never changes.
        let huge = unsafe { (*segment).kind } == PageKind::Huge;
        // SAFETY: a page of our segment, leaving use.
        unsafe { self.note_page_bytes(segment, page_ptr, false) };
        if huge {
            stats::HUGE_LIVE.sub(page.block_size.get());
        }
        // SAFETY: the slot is ours and now unused.
        unsafe { Segment::release_slot(segment, page_ptr) };
        if huge {
            // SAFETY: lock held; ours, huge, on our segment list.
            if !unsafe { self.keep_huge_spare(segment, page_ptr) } {
                // SAFETY: as above; its only page is unused.
                unsafe { self.segment_free(segment) };
            }
            return;
        }
        // The slot (and, if it was the last, the segment) stays ours until
        // its memory goes back: reused before then, it costs no system call.
        // SAFETY: lock held; an unused slot of our segment, on no queue.
        unsafe {
            self.list_free_slot(segment);
            if defer {
                self.enqueue_reset(page_ptr);
            } else {
                self.schedule_reset(page_ptr);
            }
        }
    }
}
