//! The heap's reset queue: unused page slots wait here for the reset delay
//! before their memory goes back to the OS (oldest first, at most the
//! pending limit), freed huge segments wait as spares for reuse, and
//! `collect(true)` gives back the OS pages inside large free blocks.

use super::RawHeap;
use crate::decay;
use crate::options;
use crate::os;
use crate::os::OS_PAGE_SIZE;
use crate::page::{Block, Page};
use crate::registry::NOTHING_DUE;
use crate::segment::{SEGMENT_SIZE, Segment};
use crate::size_class::{BIN_COUNT, BIN_HUGE, PageKind};
use core::ptr;

impl RawHeap {
    /// An unused page slot's memory goes back to the OS along the decay
    /// curve (`decay`): at once with a decay time of 0, or when the process
    /// keeps more warm memory than its budget allows.
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
            if (*page).memory_is_zero.get() || options::reset_delay_ms() == 0 {
                Segment::reset_page(segment, page);
                self.segment_free_if_empty(segment);
                return;
            }
            self.enqueue_reset(page);
            self.enforce_warm_budget();
        }
    }

    /// Puts an unused, dirty slot at the young end of the reset queue,
    /// stamped with the time it emptied.
    ///
    /// # Safety
    /// Owner thread holding the lock; `page` is an unused slot of one of our
    /// segments, on no queue and not pending.
    pub(super) unsafe fn enqueue_reset(&self, page: *mut Page) {
        // SAFETY: owner thread (caller); the slot is ours and unused.
        unsafe {
            let segment = Segment::of(page.cast());
            (*page).replace_reset_pending(true);
            (*segment)
                .pending_pages
                .set((*segment).pending_pages.get() + 1);
            let now = os::now_ms();
            (*page).emptied_at.set(now);
            let _ = self.reset_queue.push_back(page);
            let bytes = Segment::page_memory(segment, page).1;
            self.pending_reset.set(self.pending_reset.get() + bytes);
            decay::add_warm(bytes);
            if self.reset_queue.first.get() == page {
                self.next_decay_ms
                    .set(now.saturating_add(decay::epoch_ms(options::reset_delay_ms())));
                self.publish_reset_due();
            }
        }
    }

    /// Gives back the oldest pending slots (and spares) while the process
    /// keeps more warm memory than its budget (`decay::over_budget`).
    ///
    /// # Safety
    /// Owner thread holding the lock.
    pub(super) unsafe fn enforce_warm_budget(&self) {
        let floor = options::pending_reset_limit();
        while decay::over_budget(floor) {
            let oldest = self.reset_queue.first.get();
            if oldest.is_null() {
                break;
            }
            // SAFETY: owner thread (caller); a slot on our queue.
            unsafe { self.reset_pending_page(oldest) };
        }
        self.publish_reset_due();
    }

    /// When the heap next applies the decay curve ([`NOTHING_DUE`] if its
    /// reset queue is empty): a hint, read without the lock (a reaper may
    /// change the queue of a registered heap, and keeps the entry's copy of
    /// the hint true).
    pub(super) fn reset_due_hint(&self) -> usize {
        match self.entry() {
            Some(entry) => entry.reset_due(),
            None => self.decay_due(),
        }
    }

    /// The next decay step's time, or [`NOTHING_DUE`] with nothing waiting.
    fn decay_due(&self) -> usize {
        if self.reset_queue.first.get().is_null() {
            NOTHING_DUE
        } else {
            usize::try_from(self.next_decay_ms.get()).unwrap_or(NOTHING_DUE)
        }
    }

    /// Tells reapers when the heap next applies the decay curve.
    fn publish_reset_due(&self) {
        let entry = self.entry.get();
        if entry.is_null() {
            return;
        }
        // SAFETY: a registered heap's registry entry outlives it (see `lock`).
        unsafe { (*entry).set_reset_due(self.decay_due()) };
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
            decay::WARM.sub(segment.size);
        } else {
            // SAFETY: a slot of that segment.
            let bytes = unsafe { Segment::page_memory(segment_ptr, page) }.1;
            self.pending_reset
                .set(self.pending_reset.get().saturating_sub(bytes));
            decay::WARM.sub(bytes);
        }
        self.publish_reset_due();
    }

    /// Gives a pending slot's memory back now; returns the warm bytes that
    /// left the queue. When every other slot of its 2 MiB half is unused
    /// too, their pending memory goes with it in one call (a huge page goes
    /// back whole rather than split).
    ///
    /// # Safety
    /// Owner thread; `page` is on the reset queue.
    unsafe fn reset_pending_page(&self, page: *mut Page) -> usize {
        // SAFETY: owner thread (caller).
        unsafe {
            let bytes = Self::queued_bytes(page);
            self.unschedule_reset(page);
            let segment = Segment::of(page.cast());
            if (*segment).kind == PageKind::Huge {
                // A huge spare's time is up: unmap it.
                self.segment_free(segment);
                return bytes;
            }
            let mut given = bytes;
            match Segment::half_of(segment, page).filter(|half| {
                half.clone()
                    .all(|index| !(*Segment::page(segment, index)).in_use.get())
            }) {
                Some(half) => {
                    for index in half.clone() {
                        let other = Segment::page(segment, index);
                        if (*other).is_reset_pending() {
                            given += Self::queued_bytes(other);
                            self.unschedule_reset(other);
                        }
                    }
                    Segment::reset_slots(segment, half);
                }
                None => Segment::reset_page(segment, page),
            }
            self.segment_free_if_empty(segment);
            given
        }
    }

    /// Keeps a freed huge segment (its page just released) for a later huge
    /// allocation, warm memory on the reset queue like any empty slot (it is
    /// unmapped when the decay curve or the warm budget reaches it); false
    /// when it should go now (a decay time of 0, or an over-aligned mapping).
    ///
    /// # Safety
    /// Owner thread holding the lock; the segment is ours, huge, on our
    /// segment list, its page unused.
    pub(super) unsafe fn keep_huge_spare(&self, segment: *mut Segment, page: *mut Page) -> bool {
        // SAFETY: our live segment and its unused page (caller); their
        // fields are cells the lock holder writes.
        let (header, slot) = unsafe { (&*segment, &*page) };
        let size = header.size;
        if options::reset_delay_ms() == 0 || header.map_align != SEGMENT_SIZE {
            return false;
        }
        // SAFETY: the owner's (lock holder's) reset state of our slot.
        unsafe { slot.replace_reset_pending(true) };
        header.pending_pages.set(1);
        let now = os::now_ms();
        slot.emptied_at.set(now);
        // SAFETY: an unused slot on no queue.
        let _ = unsafe { self.reset_queue.push_back(page) };
        self.huge_spares.set(self.huge_spares.get() + 1);
        self.huge_spare_bytes
            .set(self.huge_spare_bytes.get() + size);
        decay::add_warm(size);
        if self.reset_queue.first.get() == page {
            self.next_decay_ms
                .set(now.saturating_add(decay::epoch_ms(options::reset_delay_ms())));
        }
        // SAFETY: owner thread holding the lock (caller).
        unsafe { self.enforce_warm_budget() };
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

    /// Applies the decay curve: gives back the oldest pending slots (and
    /// spares) until the bytes given back cover the share of the queue that
    /// is due (`decay::due_bytes` of each slot's age), or everything with
    /// `force`. Reused slots left the queue, so they never count.
    ///
    /// # Safety
    /// Owner thread, or a reaper holding the lock.
    pub(super) unsafe fn reset_expired(&self, force: bool) {
        let decay_ms = options::reset_delay_ms();
        let now = os::now_ms();
        if !force && now < self.next_decay_ms.get() {
            // Once per epoch: a pass costs a walk of the queue.
            return;
        }
        let mut due = if force { usize::MAX } else { 0 };
        if !force {
            let mut page = self.reset_queue.first.get();
            // SAFETY: queued pages are slots of our live segments (caller).
            unsafe {
                while !page.is_null() {
                    let age = now.saturating_sub((*page).emptied_at.get());
                    if decay::due_share(age, decay_ms) == 0 {
                        // Younger slots (further back) are not due either.
                        break;
                    }
                    due = due.saturating_add(decay::due_bytes(
                        Self::queued_bytes(page),
                        age,
                        decay_ms,
                    ));
                    page = (*page).next.get();
                }
            }
        }
        // Oldest first, while the next slot fits in what is due (so a pass
        // gives back no more than the curve asks; what is due but not given
        // back stays on the queue and counts again, more, at the next pass).
        // A slot whose time is up goes whatever it costs. Before that, a
        // slot whose giving back would split a huge page (others of its
        // 2 MiB half are in use) waits: whole halves go first. `kept` is
        // the last slot left on the queue; a reset never takes it off (its
        // half has a slot in use, and its segment a pending slot: neither
        // changes while we hold the lock), so the walk resumes after it.
        let mut given = 0usize;
        let mut kept: *mut Page = ptr::null_mut();
        let mut page = self.reset_queue.first.get();
        while !page.is_null() && given < due {
            // SAFETY: a slot on our queue (caller), of a live segment.
            unsafe {
                let age = now.saturating_sub((*page).emptied_at.get());
                let must_go = force || age >= decay_ms;
                let splits = Segment::would_split_huge_page(Segment::of(page.cast()), page);
                if !must_go && !splits && given.saturating_add(Self::queued_bytes(page)) > due {
                    // The oldest whole unit left is more than is due now.
                    break;
                }
                if must_go || !splits {
                    given = given.saturating_add(self.reset_pending_page(page));
                    page = if kept.is_null() {
                        self.reset_queue.first.get()
                    } else {
                        (*kept).next.get()
                    };
                } else {
                    kept = page;
                    page = (*page).next.get();
                }
            }
        }
        self.next_decay_ms
            .set(now.saturating_add(decay::epoch_ms(decay_ms)));
        self.publish_reset_due();
    }

    /// The warm bytes a slot on the reset queue stands for: a huge spare's
    /// whole segment, or a slot's page memory.
    ///
    /// # Safety
    /// `page` is on the reset queue of a heap the caller may act for.
    unsafe fn queued_bytes(page: *mut Page) -> usize {
        let segment = Segment::of(page.cast());
        // SAFETY: a queued slot of a live segment (caller).
        unsafe {
            if (*segment).kind == PageKind::Huge {
                (*segment).size
            } else {
                Segment::page_memory(segment, page).1
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
