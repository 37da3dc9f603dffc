//! The heap's reset queue: unused page slots wait here for the reset delay
//! before their memory goes back to the OS (oldest first, at most the
//! pending limit), freed huge segments wait as spares for reuse, and
//! `collect(true)` gives back the OS pages inside large free blocks.

use super::RawHeap;
use super::segments::SegmentLinks;
use crate::decay;
use crate::options;
use crate::os;
use crate::os::OS_PAGE_SIZE;
use crate::page::{Block, INTERIOR_RESET_MARK, INTERIOR_RESET_MIN, MARK_OFFSET, Page};
use crate::registry::NOTHING_DUE;
use crate::segment::{HugeLayout, RESHAPE_HUGE_SPARES, SEGMENT_SIZE, Segment};
use crate::size_class::{BIN_COUNT, BIN_HUGE, PageKind};
use core::ptr;

/// The least net reuse from the reset queue in one epoch that a decay pass
/// credits (`reset_expired`): a rebuild's, not a few slots cycling.
const CREDIT_MIN: usize = 4 << 20;

/// The most spare huge segments gathered into one block's segment.
const GATHER_MAX: usize = 8;

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
            // Demand is net: a slot that comes back cancels a reuse.
            self.reused_since_decay
                .set(self.reused_since_decay.get().saturating_sub(bytes));
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

    /// Takes a slot that is about to be reused off the reset queue, if it
    /// is there, and counts its memory as demand for the next decay pass
    /// when it had waited at least an epoch. Slots queued since the last
    /// pass take their bytes off the demand again (`enqueue_reset`): only a
    /// net reuse counts, and the pass only credits a large one
    /// (`reset_expired`).
    ///
    /// # Safety
    /// As for [`RawHeap::unschedule_reset`].
    pub(super) unsafe fn reuse_pending(&self, page: *mut Page) {
        // SAFETY: a slot of ours (caller); the owner's (or lock holder's) cells.
        let emptied_at = unsafe { (*page).emptied_at.get() };
        // SAFETY: forwarded from the caller.
        let bytes = unsafe { self.unschedule_reset(page) };
        if bytes > 0
            && os::now_ms().saturating_sub(emptied_at) >= decay::epoch_ms(options::reset_delay_ms())
        {
            self.reused_since_decay
                .set(self.reused_since_decay.get().saturating_add(bytes));
        }
    }

    /// Takes a slot off the reset queue (it is being reused, or its segment
    /// goes away); returns the warm bytes that left the queue (0 if the
    /// slot was not on it).
    ///
    /// # Safety
    /// Owner thread; `page` is a slot of one of our segments.
    pub(super) unsafe fn unschedule_reset(&self, page: *mut Page) -> usize {
        // SAFETY: a slot of our live segment (caller), whose reset state
        // is the owner's (or a lock holder's).
        if !unsafe { (*page).replace_reset_pending(false) } {
            return 0;
        }
        // SAFETY: it was pending, so it is on our reset queue.
        let _ = unsafe { self.reset_queue.remove(page) };
        let segment_ptr = Segment::of(page.cast());
        // SAFETY: our live segment; its header fields are cells.
        let segment = unsafe { &*segment_ptr };
        segment.pending_pages.set(segment.pending_pages.get() - 1);
        let bytes = if segment.kind == PageKind::Huge {
            self.huge_spares.set(self.huge_spares.get() - 1);
            self.huge_spare_bytes
                .set(self.huge_spare_bytes.get() - segment.size);
            segment.size
        } else {
            // SAFETY: a slot of that segment.
            let bytes = unsafe { Segment::page_memory(segment_ptr, page) }.1;
            self.pending_reset
                .set(self.pending_reset.get().saturating_sub(bytes));
            bytes
        };
        decay::WARM.sub(bytes);
        self.publish_reset_due();
        bytes
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

    /// A huge block of `size` bytes at `align` made of spare memory: the
    /// smallest of our spares that fits (its tail split off), else one that
    /// fits among those the process's pool holds (taken as ours), else our
    /// spares gathered (`gather_huge_spares`); null if there are none.
    ///
    /// # Safety
    /// Owner thread holding the lock.
    pub(super) unsafe fn reuse_huge_spare(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        // SAFETY: owner thread holding the lock (caller).
        let mut best = unsafe { self.best_huge_spare(size, align) };
        // SAFETY: as above.
        if best.is_null() && unsafe { self.adopt_pooled_huge_spares() } {
            // SAFETY: as above.
            best = unsafe { self.best_huge_spare(size, align) };
        }
        if best.is_null() {
            // SAFETY: owner thread holding the lock (caller).
            return unsafe { self.gather_huge_spares(size, align, zero) };
        }
        let segment = Segment::of(best.cast());
        // SAFETY: a spare of ours, taken off the reset queue and handed out
        // as a huge block of at least `size` bytes at `align`; its page goes
        // on the huge queue.
        unsafe {
            self.reuse_pending(best);
            let (block, tail) = Segment::reuse_huge(segment, size, align, self.as_ptr(), BIN_HUGE);
            self.queue_push_back(BIN_HUGE, best);
            self.note_page_bytes(segment, best, true);
            self.keep_split_tail(tail);
            if zero {
                block.write_bytes(0, size);
            }
            block
        }
    }

    /// The page of our smallest spare huge segment that fits `size` at
    /// `align` (within the heap's limit), or null. Secure builds take the
    /// smallest of those where the block can end right before the spare's
    /// guard page first (`Segment::huge_keeps_guard`: no `mprotect`, where
    /// another spare would need one or two, and a `mincore`): on
    /// malloc-large t=1, 174 → 110 `mprotect` calls, 419 → 283 system calls
    /// in all (the plain build's 235), peak RSS 56 → 58 MiB.
    ///
    /// # Safety
    /// Owner thread holding the lock.
    unsafe fn best_huge_spare(&self, size: usize, align: usize) -> *mut Page {
        if self.huge_spares.get() == 0 {
            return ptr::null_mut();
        }
        let mut best: *mut Page = ptr::null_mut();
        let mut best_size = usize::MAX;
        #[cfg(all(feature = "secure", not(any(loom, miri))))]
        let (mut keeps, mut keeps_size) = (ptr::null_mut::<Page>(), usize::MAX);
        let mut page = self.reset_queue.first.get();
        while !page.is_null() {
            let segment = Segment::of(page.cast());
            // SAFETY: pages on the reset queue are slots of our live
            // segments (owner thread holding the lock, caller).
            let (kind, segment_size) = unsafe {
                let header = &*segment;
                // Reshaped, a spare's whole mapping is on offer.
                let capacity = if RESHAPE_HUGE_SPARES {
                    header.map_size
                } else {
                    header.size
                };
                (header.kind, capacity)
            };
            // Reshaped, the block counts its own footprint in the heap's
            // page bytes, which the caller checked against the limit; else
            // the whole spare's.
            let within_limit = || {
                // SAFETY: as above.
                RESHAPE_HUGE_SPARES
                    || self.within_limit(unsafe { Segment::page_bytes(segment, page) })
            };
            // Secure: `keeps_size` is at least `best_size` (its spares fit
            // too), so a spare under it may improve either choice.
            #[cfg(all(feature = "secure", not(any(loom, miri))))]
            let bound = keeps_size;
            #[cfg(not(all(feature = "secure", not(any(loom, miri)))))]
            let bound = best_size;
            let fits = kind == PageKind::Huge
                && segment_size < bound
                // SAFETY: as above.
                && unsafe { Segment::huge_fits(segment, size, align) }
                && within_limit();
            if fits && segment_size < best_size {
                best = page;
                best_size = segment_size;
            }
            // Secure: the smallest spare that keeps its guard page where it
            // is (`fits` holds only under `keeps_size`).
            #[cfg(all(feature = "secure", not(any(loom, miri))))]
            // SAFETY: a slot of our live huge segment (as above), its header
            // mapped while we hold the lock.
            if fits && unsafe { Segment::huge_keeps_guard(segment, size, align) } {
                keeps = page;
                keeps_size = segment_size;
            }
            // SAFETY: as above.
            page = unsafe { (*page).next.get() };
        }
        #[cfg(all(feature = "secure", not(any(loom, miri))))]
        if !keeps.is_null() {
            return keeps;
        }
        best
    }

    /// Takes the spare huge segments that other heaps left in the process's
    /// pool (exited threads, destroyed heaps), at most [`GATHER_MAX`], as
    /// our own spares. Returns whether it took any.
    ///
    /// # Safety
    /// Owner thread holding the lock.
    unsafe fn adopt_pooled_huge_spares(&self) -> bool {
        if !RESHAPE_HUGE_SPARES {
            return false;
        }
        let shared = self.shared.get();
        let mut adopted = false;
        for _ in 0..GATHER_MAX {
            // SAFETY: `shared` outlives every heap.
            let segment = unsafe { (*shared).huge_spares.take() };
            if segment.is_null() {
                break;
            }
            // SAFETY: `take` made the pooled spare ours alone: huge, its
            // page unused, on no list.
            unsafe {
                Segment::unpool_huge(segment, self.as_ptr(), self.thread_id());
                self.segments.push(segment, SegmentLinks::All);
                if !self.keep_huge_spare(segment, Segment::page(segment, 0)) {
                    self.segment_free(segment);
                }
            }
            adopted = true;
        }
        adopted
    }

    /// Hands every spare huge segment of ours to the process's pool (the
    /// heap is being torn down, or its owner has gone quiet): another heap's
    /// next huge block reuses its memory until the decay time passes (ours
    /// too: `adopt_pooled_huge_spares`). Without room in the pool, or with
    /// the process over its warm budget, a spare is unmapped.
    ///
    /// # Safety
    /// Owner thread, or a reaper, holding the lock.
    pub(super) unsafe fn pool_huge_spares(&self) {
        if self.huge_spares.get() == 0 {
            return;
        }
        let mut page = self.reset_queue.first.get();
        while !page.is_null() {
            let segment = Segment::of(page.cast());
            // SAFETY: queued pages are slots of our live segments (caller);
            // `next` is read before the slot leaves the queue.
            unsafe {
                let next = (*page).next.get();
                if (*segment).kind == PageKind::Huge {
                    self.unschedule_reset(page);
                    self.detach_segment(segment);
                    pool_or_release_huge(self.shared.get(), segment);
                }
                page = next;
            }
        }
    }

    /// No spare fits: builds the block's segment out of the largest spares
    /// (largest first, until they cover it; at most [`GATHER_MAX`]), whose
    /// pages move into it with their page tables (`Segment::gather_huge`),
    /// so that only what they lack is faulted in, rather than mapping the
    /// whole block fresh while the spares wait for the decay. Null when
    /// there is no spare to gather or the OS refuses.
    ///
    /// # Safety
    /// Owner thread holding the lock.
    unsafe fn gather_huge_spares(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        if !RESHAPE_HUGE_SPARES {
            return ptr::null_mut();
        }
        let Some(layout) = HugeLayout::of(size, align) else {
            return ptr::null_mut();
        };
        if layout.map_align != SEGMENT_SIZE {
            return ptr::null_mut();
        }
        let mut chosen = [ptr::null_mut::<Segment>(); GATHER_MAX];
        let mut count = 0;
        let mut gathered = 0usize;
        while count < GATHER_MAX && gathered < layout.map_size {
            let mut best: *mut Segment = ptr::null_mut();
            let mut best_size = 0;
            let mut page = self.reset_queue.first.get();
            while !page.is_null() {
                let segment = Segment::of(page.cast());
                // SAFETY: pages on the reset queue are slots of our live
                // segments (owner thread holding the lock, caller).
                let (kind, map_size, map_align) =
                    unsafe { ((*segment).kind, (*segment).map_size, (*segment).map_align) };
                if kind == PageKind::Huge
                    && map_align == SEGMENT_SIZE
                    && map_size > best_size
                    && !chosen[..count].contains(&segment)
                {
                    best = segment;
                    best_size = map_size;
                }
                // SAFETY: as above.
                page = unsafe { (*page).next.get() };
            }
            if best.is_null() {
                break;
            }
            chosen[count] = best;
            count += 1;
            gathered += best_size;
        }
        if count == 0 {
            return ptr::null_mut();
        }
        for &segment in &chosen[..count] {
            // SAFETY: our spares: off the reset queue and our lists, they
            // are exclusively ours (no other thread reaches a spare).
            unsafe {
                self.reuse_pending(Segment::page(segment, 0));
                self.detach_segment(segment);
            }
        }
        // SAFETY: the spares are ours alone (above), huge, unused, each
        // mapped at SEGMENT_SIZE; the mapping covers them and the block.
        let Some((segment, block, tail)) = (unsafe {
            Segment::gather_huge(
                &chosen[..count],
                layout.map_size.max(gathered),
                layout,
                self.thread_id(),
                self.as_ptr(),
                BIN_HUGE,
            )
        }) else {
            return ptr::null_mut();
        };
        // SAFETY: a new huge segment of ours, on no list; page 0 is its page;
        // its block is ours to zero.
        unsafe {
            let page = Segment::page(segment.as_ptr(), 0);
            self.segments.push(segment.as_ptr(), SegmentLinks::All);
            self.queue_push_back(BIN_HUGE, page);
            self.note_page_bytes(segment.as_ptr(), page, true);
            self.keep_split_tail(tail);
            if zero {
                block.write_bytes(0, size);
            }
        }
        block
    }

    /// A spare split off a huge segment (`Segment::split_huge_tail`), or
    /// null: it joins our segments and waits as a spare like any freed
    /// huge segment.
    ///
    /// # Safety
    /// Owner thread holding the lock; `tail` is null or a spare of ours on
    /// no list.
    unsafe fn keep_split_tail(&self, tail: *mut Segment) {
        if tail.is_null() {
            return;
        }
        // SAFETY: a spare of ours, its only page unused (caller).
        unsafe {
            self.segments.push(tail, SegmentLinks::All);
            if !self.keep_huge_spare(tail, Segment::page(tail, 0)) {
                self.segment_free(tail);
            }
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
        // A large net reuse from the queue since the last pass (at least a
        // quarter of what is queued, and CREDIT_MIN) is demand the heap has
        // just shown: that much of what the curve says is due stays. A heap
        // that rebuilds a structure while the last one is dropped keeps its
        // pages hot; a light activity that cycles through a few slots, or a
        // quiet heap, gets no credit. Slots whose time is up go regardless.
        let reused = self.reused_since_decay.replace(0);
        let credit = if reused >= CREDIT_MIN.max(self.pending_reset.get() / 4) {
            reused
        } else {
            0
        };
        if !force {
            let mut expired = 0usize;
            let mut page = self.reset_queue.first.get();
            // SAFETY: queued pages are slots of our live segments (caller).
            unsafe {
                while !page.is_null() {
                    let age = now.saturating_sub((*page).emptied_at.get());
                    if decay::due_share(age, decay_ms) == 0 {
                        // Younger slots (further back) are not due either.
                        break;
                    }
                    let bytes = Self::queued_bytes(page);
                    if age >= decay_ms {
                        expired = expired.saturating_add(bytes);
                    }
                    due = due.saturating_add(decay::due_bytes(bytes, age, decay_ms));
                    page = (*page).next.get();
                }
            }
            due = due.saturating_sub(credit).max(expired);
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

/// Slots of the process's pool of spare huge segments.
pub(super) const HUGE_POOL_SLOTS: usize = 8;

/// A spare huge segment that no heap keeps goes to the process's pool,
/// due for unmapping after the decay time, or is unmapped now (a decay
/// time of 0, the process over its warm budget, a full pool, or a build
/// that does not reshape spares).
///
/// # Safety
/// The caller owns the spare: huge, its page unused, on no list or queue.
pub(super) unsafe fn pool_or_release_huge(
    shared: *const crate::process::Shared,
    segment: *mut Segment,
) {
    let delay = options::reset_delay_ms();
    // SAFETY: ours (caller), pooled or released exactly once.
    unsafe {
        if RESHAPE_HUGE_SPARES && delay > 0 {
            Segment::pool_huge(segment, os::now_ms().saturating_add(delay));
            if !decay::over_budget(options::pending_reset_limit())
                && (*shared).huge_spares.put(segment, HUGE_POOL_SLOTS)
            {
                return;
            }
        }
        Segment::release(segment);
    }
}

/// A huge block freed by another thread after its owner exited (its page
/// orphaned, `DelayedMode::Never`): the freeing thread owns the segment now
/// and keeps it warm in the process's pool of huge spares for the decay
/// time, as an exiting thread's own spares are (design §6), where any
/// thread's next huge block finds it; over the warm budget, or with the pool
/// full, it is unmapped as before.
///
/// # Safety
/// The caller owns `segment`, a huge segment no other thread can reach any
/// more, whose only page `page` holds the block the caller just gave up.
pub(crate) unsafe fn pool_orphaned_huge(segment: *mut Segment, page: *mut Page) {
    // SAFETY: ours (caller); the page's block is given up, so the page
    // leaves use, and the segment becomes a spare like any other. (Loom
    // models hold their own `Shared` and reshape no spares: released.)
    unsafe {
        #[cfg(not(loom))]
        if RESHAPE_HUGE_SPARES {
            crate::stats::HUGE_LIVE.sub((*page).block_size.get());
            Segment::release_slot(segment, page);
            pool_or_release_huge(&raw const crate::process::SHARED, segment);
            return;
        }
        #[cfg(loom)]
        let _ = page;
        Segment::release(segment);
    }
}

/// A huge block that a thread other than its owner frees, while the owner
/// lives, keeps its memory on the owner's delayed list (the owner's next
/// huge block reuses it warm) and is counted in `decay::DELAYED_HUGE`, which
/// wakes the purge thread. If the owner goes quiet, a reaper frees the block
/// on its behalf and pools the segment for any thread
/// (`free_huge_for_quiet_owner`), or, when it cannot yet, gives the memory
/// back ([`reset_remote_huge`]); if not, the owner takes the block
/// ([`take_remote_huge`]). The interior mark (`reset_block_interior`) tells
/// a block whose memory went back from one that kept it. Called by the freeing thread before the push publishes
/// the block.
///
/// # Safety
/// The caller holds `Freeing` for `block`, the live block of a huge page,
/// of `size` bytes, which it is about to push onto the owner's delayed list.
pub(crate) unsafe fn keep_remote_huge(block: *mut Block, size: usize) {
    // SAFETY: the caller gives the block up, so its memory is ours to
    // write; a huge block spans far more than the first OS page, which holds
    // the mark's word. A stale mark (the block's memory went back once
    // before, as a spare) must not pass for this free's.
    unsafe { interior_mark(block).0.write(0) };
    decay::add_delayed_huge(size);
}

/// A reaper's share of [`keep_remote_huge`]: gives the block's memory back
/// (all but its first OS page), once.
///
/// # Safety
/// The caller holds the owner heap's lock and took `block` off its delayed
/// list: a huge block of `size` bytes that `keep_remote_huge` counted.
pub(super) unsafe fn reset_remote_huge(block: *mut Block, size: usize) {
    // SAFETY: the block is free and ours (taken off the list, under the
    // lock) until we hand it back, and a huge block spans at least two OS
    // pages.
    if unsafe { reset_block_interior(block, size) } {
        decay::DELAYED_HUGE.sub(size);
    }
}

/// The owner's share of [`keep_remote_huge`]: the block leaves the count
/// (unless a reaper gave its memory back, and uncounted it, already).
///
/// # Safety
/// Owner thread, or a reaper holding the owner's lock; `block` is a huge
/// block of `size` bytes that `keep_remote_huge` counted, taken off the
/// owner's delayed list to be freed.
pub(super) unsafe fn take_remote_huge(block: *mut Block, size: usize) {
    // SAFETY: the block is free and ours (caller), and its first OS page,
    // which holds the mark's word, lies inside it.
    let (mark, expected) = unsafe { interior_mark(block) };
    // SAFETY: as above.
    if unsafe { mark.read() } != expected {
        decay::DELAYED_HUGE.sub(size);
    }
}

/// The word of free `block` that marks its interior as given back, and the
/// value it holds then (the block's address under a constant, which a
/// program's data matches only by chance).
///
/// # Safety
/// `block` spans more than `MARK_OFFSET` plus a word (every block with an
/// interior, of at least two OS pages, does).
unsafe fn interior_mark(block: *mut Block) -> (*mut usize, usize) {
    let start = block.cast::<u8>();
    // SAFETY: inside the block (caller).
    let mark = unsafe { start.add(MARK_OFFSET) }.cast::<usize>();
    (mark, INTERIOR_RESET_MARK ^ start.addr())
}

/// Gives back the OS pages inside a free block of `size` bytes, all but its
/// first (which holds its link and the mark), unless the mark says it was
/// done already. Returns whether it did so now.
///
/// # Safety
/// The caller owns the free block (on no list anyone else can take it
/// from), of `size ≥ INTERIOR_RESET_MIN` bytes, and acts for the heap
/// owning its segment (owner, or holder of that heap's lock).
pub(super) unsafe fn reset_block_interior(block: *mut Block, size: usize) -> bool {
    let start = block.cast::<u8>();
    let first = (start.addr() + OS_PAGE_SIZE) & !(OS_PAGE_SIZE - 1);
    let end = (start.addr() + size) & !(OS_PAGE_SIZE - 1);
    // SAFETY: the mark's word lies in the block's first OS page, inside the
    // block (size ≥ two OS pages), which the caller owns; the pages reset
    // lie between that page and the block's end, inside its live segment,
    // whose header cells the caller may write (it acts for the owner).
    unsafe {
        let (mark, expected) = interior_mark(block);
        if mark.read() == expected || end <= first {
            return false;
        }
        Segment::withdraw_huge_advice(Segment::of(start), start.with_addr(first), end - first);
        os::reset(start.with_addr(first), end - first);
        mark.write(expected);
    }
    true
}
