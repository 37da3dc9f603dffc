//! The heap's reset queue: unused page slots wait here for the reset delay
//! before their memory goes back to the OS (oldest first, at most the
//! pending limit), freed huge segments wait as spares for reuse, and
//! `collect(true)` gives back the OS pages inside large free blocks.

use super::RawHeap;
use crate::options;
use crate::os;
use crate::os::OS_PAGE_SIZE;
use crate::page::{Block, Page};
use crate::registry::NOTHING_DUE;
use crate::segment::{SEGMENT_SIZE, Segment};
use crate::size_class::{BIN_COUNT, BIN_HUGE, PageKind};
use core::ptr;

impl RawHeap {
    /// An unused page slot's memory goes back to the OS after the reset
    /// delay (at once with a delay of 0, or when this heap already has more
    /// than the pending limit waiting).
    ///
    /// # Safety
    /// Owner thread; `page` is an unused slot of one of our segments, on no
    /// queue.
    pub(super) unsafe fn schedule_reset(&self, page: *mut Page) {
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
    pub(super) unsafe fn enqueue_reset(&self, page: *mut Page, delay: u64) {
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
    pub(super) unsafe fn enforce_pending_limit(&self) {
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

    /// When the oldest slot on the reset queue is due ([`NOTHING_DUE`] if
    /// none): a hint, read without the lock (a reaper may change the queue
    /// of a registered heap, and keeps the slot's copy of the hint true).
    pub(super) fn reset_due_hint(&self) -> usize {
        match self.entry() {
            Some(entry) => entry.reset_due(),
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
        let entry = self.entry.get();
        if entry.is_null() {
            return;
        }
        let first = self.reset_queue.first.get();
        let due = if first.is_null() {
            NOTHING_DUE
        } else {
            // SAFETY: slots on our reset queue are live (we hold the lock).
            usize::try_from(unsafe { (*first).reset_at.get() }).unwrap_or(NOTHING_DUE)
        };
        // SAFETY: a registered heap's registry entry outlives it (see `lock`).
        unsafe { (*entry).set_reset_due(due) };
    }

    /// Takes a slot off the reset queue (it is being reused, or its segment
    /// goes away).
    ///
    /// # Safety
    /// Owner thread; `page` is a slot of one of our segments.
    pub(super) unsafe fn unschedule_reset(&self, page: *mut Page) {
        // SAFETY: a slot of our live segment (caller), whose reset state
        // is the owner's (or a lock holder's).
        if !unsafe { (*page).replace_reset_pending(false) } {
            return;
        }
        // SAFETY: it was pending, so it is on our reset queue.
        let _ = unsafe { self.reset_queue.remove(page) };
        let segment_ptr = Segment::of(page.cast());
        // SAFETY: our live segment; its header fields are cells.
        let segment = unsafe { &*segment_ptr };
        segment.pending_pages.set(segment.pending_pages.get() - 1);
        if segment.kind == PageKind::Huge {
            self.huge_spares.set(self.huge_spares.get() - 1);
            self.huge_spare_bytes
                .set(self.huge_spare_bytes.get() - segment.size);
        } else {
            // SAFETY: a slot of that segment.
            let bytes = unsafe { Segment::page_memory(segment_ptr, page) }.1;
            self.pending_reset
                .set(self.pending_reset.get().saturating_sub(bytes));
        }
        self.publish_reset_due();
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
    pub(super) unsafe fn keep_huge_spare(&self, segment: *mut Segment, page: *mut Page) -> bool {
        let delay = options::reset_delay_ms();
        // Spares are whole blocks that a program replacing a buffer asks for
        // again at once; they get twice the small pages' allowance.
        let limit = options::pending_reset_limit().saturating_mul(2);
        // SAFETY: our live segment and its unused page (caller); their
        // fields are cells the lock holder writes.
        let (header, slot) = unsafe { (&*segment, &*page) };
        let size = header.size;
        if delay == 0 || size > limit || header.map_align != SEGMENT_SIZE {
            return false;
        }
        // SAFETY: the owner's (lock holder's) reset state of our slot.
        unsafe { slot.replace_reset_pending(true) };
        header.pending_pages.set(1);
        slot.reset_at.set(os::now_ms().saturating_add(delay));
        // SAFETY: an unused slot on no queue.
        let _ = unsafe { self.reset_queue.push_back(page) };
        self.huge_spares.set(self.huge_spares.get() + 1);
        self.huge_spare_bytes
            .set(self.huge_spare_bytes.get() + size);
        // Over the limit: unmap the oldest spares.
        let mut oldest = self.reset_queue.first.get();
        while self.huge_spare_bytes.get() > limit && !oldest.is_null() {
            // SAFETY: slots on our reset queue are slots of live segments
            // of ours; `next` is read before the slot may go.
            unsafe {
                let next = (*oldest).next.get();
                if (*Segment::of(oldest.cast())).kind == PageKind::Huge {
                    self.reset_pending_page(oldest);
                }
                oldest = next;
            }
        }
        self.publish_reset_due();
        true
    }

    /// A huge block from a spare segment that fits `size` at `align` (the
    /// smallest that does), or null. Spares much larger than the request
    /// give the tail's memory back.
    ///
    /// # Safety
    /// Owner thread holding the lock.
    pub(super) unsafe fn reuse_huge_spare(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        if self.huge_spares.get() == 0 {
            return ptr::null_mut();
        }
        let mut best: *mut Page = ptr::null_mut();
        let mut best_size = usize::MAX;
        let mut page = self.reset_queue.first.get();
        while !page.is_null() {
            let segment = Segment::of(page.cast());
            // SAFETY: pages on the reset queue are slots of our live
            // segments (owner thread holding the lock, caller).
            let (kind, segment_size) = unsafe { ((*segment).kind, (*segment).size) };
            if kind == PageKind::Huge
                && segment_size < best_size
                // SAFETY: as above.
                && unsafe { Segment::huge_fits(segment, size, align) }
                // SAFETY: as above.
                && self.within_limit(unsafe { Segment::committed_len(segment, page) })
            {
                best = page;
                best_size = segment_size;
            }
            // SAFETY: as above.
            page = unsafe { (*page).next.get() };
        }
        if best.is_null() {
            return ptr::null_mut();
        }
        let segment = Segment::of(best.cast());
        // SAFETY: a spare of ours, taken off the reset queue and handed out
        // as a huge block of at least `size` bytes at `align`; its page goes
        // on the huge queue.
        unsafe {
            self.unschedule_reset(best);
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
    pub(super) unsafe fn reset_expired(&self, force: bool) {
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

    /// `collect(true)`'s last step: in pages that still hold live blocks,
    /// gives back the OS pages inside free blocks of 8 KiB and more (all but
    /// each block's first OS page, which holds its free-list link). When a
    /// few survivors keep every page of a size class in use, this is what
    /// lowers RSS to near the live bytes.
    ///
    /// # Safety
    /// Owner thread.
    pub(super) unsafe fn reset_free_block_interiors(&self) {
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
}

/// A free block's second word (past the link; past the link's tracked cell
/// under loom) holds this, mixed with the block's address, once the OS
/// pages inside the block were given back: a later reaper pass skips it.
pub(super) const INTERIOR_RESET_MARK: usize = 0x5EED_F4EE_B10C_0000;

/// Where a free block keeps `INTERIOR_RESET_MARK`.
pub(super) const MARK_OFFSET: usize = size_of::<Block>().next_multiple_of(size_of::<usize>())
    + if cfg!(feature = "secure") {
        size_of::<usize>()
    } else {
        0
    }; // secure: past the canary

/// Gives back the OS pages inside a free block of `size` bytes, all but its
/// first (which holds its link and the mark), unless the mark says it was
/// done already.
///
/// # Safety
/// The caller owns the free block (on no list anyone else can take it
/// from), of `size ≥ INTERIOR_RESET_MIN` bytes.
pub(super) unsafe fn reset_block_interior(block: *mut Block, size: usize) {
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
pub(super) const INTERIOR_RESET_MIN: usize = 2 * OS_PAGE_SIZE;
