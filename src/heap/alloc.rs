//! The heap's generic allocation path: what runs when the fast path finds
//! no free block — collecting a page's frees, extending it, taking the next
//! page of the size class, a fresh page from a segment — plus huge blocks
//! and the heartbeat (delayed frees, collect passes, reaping) that every so
//! many slow paths run.

use super::RawHeap;
use super::segments::SegmentLinks;
use crate::os;
use crate::page::{Block, DelayedMode, IN_FULL, Page};
use crate::registry::NOTHING_DUE;
use crate::segment::Segment;
use crate::size_class::{BIN_FULL, BIN_HUGE, BLOCK_SIZES, PageKind, bin_of, page_kind_of};
use crate::sync::Ordering;
use core::ptr;

/// Slow-path calls between two looks at whether a reaping pass is due
/// (each look reads the clock).
pub(super) const REAP_CHECK_INTERVAL: usize = 64;

/// Slow-path calls between two collect passes over all of a heap's pages.
/// Pages of size classes the thread no longer allocates from (adopted from
/// an exited thread, say) are otherwise never looked at again, and the
/// blocks other threads free into them never come back.
pub(super) const COLLECT_INTERVAL: usize = 1024;

const _: () = assert!(
    COLLECT_INTERVAL <= 1024,
    "the collect test runs 2048 slow paths"
);

const _: () = assert!(
    COLLECT_INTERVAL.is_multiple_of(REAP_CHECK_INTERVAL),
    "the heartbeat looks for a collect pass only on reap checks"
);

impl RawHeap {
    /// Allocates a size-classed block of `size ≤ LARGE_BLOCK_MAX` bytes when
    /// the fast path missed. Returns null when out of memory.
    ///
    /// # Safety
    /// Called on the owner thread, on a real (non-empty) heap.
    #[inline(never)]
    pub(crate) unsafe fn malloc_generic(&self, size: usize, zero: bool) -> *mut u8 {
        // SAFETY: owner thread (caller).
        unsafe { self.heartbeat() };
        // SAFETY: owner thread (caller).
        let page = unsafe { self.find_page(bin_of(size)) };
        if page.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: a page of ours with a free block (`find_page`).
        let block = unsafe { (*page).pop() };
        if block.is_null() {
            crate::fatal::fatal("found page has no free block");
        }
        if zero {
            // SAFETY: just popped from `page`, at least `size` bytes.
            unsafe { zero_block(page, block, size) };
        }
        block.cast()
    }

    /// Allocates a huge block (its own segment) of `size` bytes aligned to
    /// `align`. Fresh OS memory is already zero. Returns null when out of memory.
    ///
    /// # Safety
    /// Called on the owner thread, on a real (non-empty) heap.
    #[inline(never)]
    pub(crate) unsafe fn malloc_huge(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        let _guard = self.lock();
        // SAFETY: owner thread (caller).
        unsafe { self.heartbeat() };
        let fits = Segment::huge_footprint(size, align).is_some_and(|b| self.within_limit(b));
        if !fits {
            return ptr::null_mut();
        }
        // SAFETY: owner thread holding the lock (caller, above).
        let spare = unsafe { self.reuse_huge_spare(size, align, zero) };
        if !spare.is_null() {
            return spare;
        }
        let Some((segment, block)) =
            Segment::create_huge(size, align, self.thread_id(), self.as_ptr(), BIN_HUGE)
        else {
            return ptr::null_mut();
        };
        // SAFETY: a fresh huge segment of ours, on no list; page 0 is its
        // page.
        unsafe {
            let page = Segment::page(segment.as_ptr(), 0);
            self.segments.push(segment.as_ptr(), SegmentLinks::All);
            self.queue_push_back(BIN_HUGE, page);
            self.note_page_bytes(segment.as_ptr(), page, true);
        }
        block
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
            if let Some(entry) = self.entry() {
                entry.set_active(usize::try_from(os::now_ms()).unwrap_or(usize::MAX));
            }
            if calls.is_multiple_of(COLLECT_INTERVAL) {
                // SAFETY: owner thread (caller).
                unsafe { self.collect(false) };
            }
            // SAFETY: owner thread (caller).
            unsafe { self.reap_idle_heaps(false) };
        }
        // Outside the lock, before this slow path changed anything: the
        // `malloc` calls of `pthread_create` may come back here.
        #[cfg(not(any(loom, miri)))]
        if self.lock_depth.get() == 0 {
            crate::purge_thread::start_if_needed();
        }
    }

    /// A page of `bin` with a free block, or null when out of memory.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn find_page(&self, bin: usize) -> *mut Page {
        // SAFETY: owner thread (caller).
        let page = unsafe { self.search_queue(bin) };
        if !page.is_null() {
            return page;
        }
        let kind = page_kind_of(BLOCK_SIZES[bin]);
        // SAFETY: owner thread (caller).
        if !self.first_class.get() && unsafe { self.reclaim(Some(kind), false) } {
            // SAFETY: as above.
            let page = unsafe { self.search_queue(bin) };
            if !page.is_null() {
                return page;
            }
        }
        // SAFETY: owner thread (caller).
        unsafe {
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
        let mut page_ptr = queue.first.get();
        while !page_ptr.is_null() {
            // SAFETY: pages on our queues are live and ours (owner thread,
            // caller); their list and count fields are cells.
            let page = unsafe { &*page_ptr };
            let next = page.next.get();
            // A page whose `local_free` a reaper may read is collected under
            // the lock (`page::OwnerList`).
            let _guard = page.has_interiors().then(|| self.lock());
            // SAFETY: as above; the page's lists are the owner's to collect
            // and extend.
            unsafe {
                page.collect();
                if !page.has_free() {
                    page.extend();
                }
                if !page.has_free() {
                    // About to look full: ask to be told about remote frees,
                    // then collect once more for frees that raced the switch.
                    page.set_delayed_mode(DelayedMode::UseDelayed, false);
                    page.collect();
                    if page.has_free() {
                        let _ = page.try_set_delayed_mode(DelayedMode::NoDelayed, false);
                    }
                }
            }
            if page.has_free() {
                if page_ptr != queue.first.get() {
                    // SAFETY: ours, on queue `bin`.
                    unsafe {
                        self.queue_remove(bin, page_ptr);
                        self.queue_push_front(bin, page_ptr);
                    }
                }
                return page_ptr;
            }
            // The full queue is shared with reapers (which free wholly
            // freed full pages of idle heaps): change it under the lock.
            let _guard = self.lock();
            // SAFETY: ours, on queue `bin`, moved to the full queue.
            unsafe { self.queue_remove(bin, page_ptr) };
            page.flags.set(page.flags.get() | IN_FULL);
            // SAFETY: ours, on no queue now.
            unsafe { self.queue_push_back(BIN_FULL, page_ptr) };
            page_ptr = next;
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
        if !self.within_limit(Segment::page_size(kind)) {
            // Empty pages kept for reuse may make room.
            // SAFETY: owner thread (caller).
            unsafe { self.collect_retired(true) };
            if !self.within_limit(Segment::page_size(kind)) {
                return ptr::null_mut();
            }
        }
        // SAFETY: owner thread (caller), holding the lock.
        let page = unsafe { self.claim_page(kind) };
        if page.is_null() {
            return page;
        }
        let segment = Segment::of(page.cast());
        // SAFETY: the claimed slot is ours and unused, in a live segment of
        // ours; `init` makes it a page of `bin` on no queue, which the
        // queue push then takes.
        unsafe {
            let (area, area_size) = Segment::page_area(segment, Segment::page_index(segment, page));
            Segment::note_page_committed(segment, page);
            (*page).init(self.as_ptr(), bin, block_size, area, area_size);
            self.note_page_bytes(segment, page, true);
            self.queue_push_front(bin, page);
        }
        page
    }

    /// An unused page slot of `kind`, from a segment with room or a new one.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn claim_page(&self, kind: PageKind) -> *mut Page {
        let slots = self.slot_list(kind);
        let mut segment = slots.map_or(ptr::null_mut(), |list| list.first.get());
        // Fill a segment already in use before starting an empty one: empty
        // segments can go back to the OS (or to a first-class heap of this
        // thread) only while they stay empty.
        let mut candidate = segment;
        while !candidate.is_null() {
            // SAFETY: segments on our lists are live and ours (owner thread,
            // caller); their header fields are cells.
            let header = unsafe { &*candidate };
            if header.used_pages.get() > 0 {
                segment = candidate;
                break;
            }
            candidate = header.with_free_slot.next.get();
        }
        if segment.is_null() {
            // SAFETY: owner thread (caller).
            let Some(fresh) = (unsafe { self.new_segment(kind) }) else {
                return ptr::null_mut();
            };
            segment = fresh.as_ptr();
            // SAFETY: a segment of ours on no list.
            unsafe { self.segments.push(segment, SegmentLinks::All) };
            if let Some(list) = slots {
                // SAFETY: as above, on no slot list.
                unsafe { list.push(segment, SegmentLinks::FreeSlot) };
                // SAFETY: as above; a cell.
                unsafe { (*segment).in_free_slot_list.set(true) };
            }
        }
        // SAFETY: a live segment of ours with a free slot (it is on a slot
        // list, or fresh).
        let page = unsafe { Segment::claim_slot(segment) };
        // Reusing a slot whose memory waits for its reset: cancel it.
        // SAFETY: a slot of our segment.
        unsafe { self.reuse_pending(page) };
        // SAFETY: a live segment of ours; its header fields are cells.
        let (header, full) = unsafe { (&*segment, !Segment::has_free_slot(segment)) };
        if full && header.in_free_slot_list.get() {
            if let Some(list) = slots {
                // SAFETY: on this slot list (`in_free_slot_list`).
                unsafe { list.remove(segment, SegmentLinks::FreeSlot) };
            }
            header.in_free_slot_list.set(false);
        }
        page
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
