//! Segments of exited threads, and their reclaim by live threads.
//!
//! When a thread exits with live blocks, its heap *abandons* the segments
//! that hold them: every page is switched to `DelayedMode::Never` (remote
//! frees go onto the page lists only, never near the dead heap), the owner
//! id is set to 0, and the segment is pushed onto the process-wide
//! `AbandonedSegments` list (`process`). Frees into an abandoned segment keep working
//! (they are "remote" for every thread).
//!
//! A live thread that needs a fresh page *reclaims*: it pops a segment of
//! the kind it needs off the abandoned lists (`AbandonedSegments`, one
//! queue per kind, `process`), collects its pages, returns it to the OS if
//! it became empty (and pops another, at most four), or adopts it. A
//! reaping pass (once per idle period) looks at a few segments of each kind,
//! round robin, to give back what they no longer use; `collect(true)` looks
//! at all of them. So no allocation walks the abandoned segments: its cost
//! does not depend on how many there are.
//!
//! Only the holder of the lists' pop lock takes segments off them, so a
//! segment whose link a popper reads cannot be unmapped under it, and no
//! ABA can occur (see `process`). The loom models
//! `abandoned_list_push_races_pop`, `abandoned_list_pops_race_pushes_and_keeps`
//! (the lists) and `abandon_and_reclaim_race_remote_frees`
//! (`loom-tests/tests/abandon.rs`) check it.
//!
//! In a forked child, the heaps of parent threads that do not exist there
//! are abandoned the same way (`abandon_after_fork`, design §5).

use super::RawHeap;
use super::segments::SegmentLinks;
use super::segments::cache_or_release;
use crate::decay;
use crate::options;
use crate::os;
use crate::page::DelayedMode;
use crate::process::PopFrom;
use crate::segment::Segment;
use crate::size_class::{BIN_HUGE, PageKind};
use crate::stats;
use crate::sync::Ordering;
use core::ptr;

/// Segments one reclaim on the allocation path pops at most before it
/// gives up: each one popped is adopted, or empty and given back, so the
/// work is paid for by what it removes, and bounded.
const RECLAIM_POPS: usize = 4;

/// Segments of each kind a (non-forced) reaping pass looks at.
const PASS_SEGMENTS: usize = 8;

impl RawHeap {
    /// Tears the heap down at thread exit: frees what is free and abandons
    /// every segment that still holds live blocks. Afterwards no other thread
    /// can reach the heap, and the caller may unmap it.
    ///
    /// # Safety
    /// Owner thread; nothing allocates from the heap afterwards.
    pub(crate) unsafe fn abandon(&self) {
        let guard = self.lock();
        // 0. Huge blocks still out go to whoever frees them.
        // SAFETY: owner thread (caller), holding the lock.
        unsafe { self.orphan_huge_blocks() };
        // 1. From here on no remote free uses this heap (waits out any
        //    remote thread in `Freeing`).
        // SAFETY: our pages (owner thread).
        unsafe { self.for_each_page(|page| (*page).set_delayed_mode(DelayedMode::Never, false)) };
        // 2. Blocks parked before that: free them all.
        // SAFETY: owner thread.
        unsafe { self.process_delayed(true) };
        // 3. Give back every page that is now empty (including retired ones).
        // SAFETY: owner thread; `for_each_page` allows `f` to free the page.
        unsafe {
            self.for_each_page(|page| {
                (*page).collect_thread_free();
                if (*page).used.get() == 0 {
                    self.page_free_for_abandon(page);
                }
            });
        }
        // SAFETY: owner thread, holding the lock.
        unsafe { self.release_empty_segments() };
        // 4. Abandon the segments that still hold live blocks.
        let mut segment = self.segments.first.get();
        while !segment.is_null() {
            // SAFETY: a live segment of ours; `next` is read before the
            // segment is handed to the abandoned list.
            let next = unsafe { (*segment).all.next.get() };
            // SAFETY: ours, on our list, and given up here.
            unsafe { self.abandon_segment(segment) };
            segment = next;
        }
        self.forget_everything();
        // 5. Leave the registry: from here on no reaper reaches the heap.
        core::mem::forget(guard);
        self.lock_depth.set(0);
        if let Some(entry) = self.entry() {
            self.entry.set(ptr::null());
            // SAFETY: we hold the entry's lock (`forget(guard)` above), the
            // heap is torn down.
            unsafe { self.release_entry(entry) };
        }
    }

    /// Gives the heap's registry entry back to the registry it came from
    /// (`shared`'s: a heap is registered only in its own process state).
    ///
    /// # Safety
    /// The caller holds the entry's lock and the heap is torn down.
    pub(super) unsafe fn release_entry(&self, entry: &crate::registry::Entry) {
        // SAFETY: a registered heap's `shared` is non-null and outlives it.
        unsafe { (*self.shared.get()).heaps.release(entry) };
    }

    /// Step 0 of `abandon`: huge blocks still out. Each segment is handed
    /// to whichever thread frees the block (it will unmap it), so dead
    /// threads leave no huge segment behind. The queue is detached first:
    /// pages whose free is already under way go back onto it (steps 1–3 of
    /// `abandon` release them), and must not be seen again here.
    ///
    /// # Safety
    /// Owner thread, holding the lock, tearing the heap down.
    pub(super) unsafe fn orphan_huge_blocks(&self) {
        let huge = self.queue(BIN_HUGE);
        let mut page_ptr = huge.first.get();
        huge.first.set(ptr::null_mut());
        huge.last.set(ptr::null_mut());
        while !page_ptr.is_null() {
            // SAFETY: pages on our huge queue are live and ours (caller).
            let page = unsafe { &*page_ptr };
            let next = page.next.get();
            page.next.set(ptr::null_mut());
            page.prev.set(ptr::null_mut());
            let segment_ptr = Segment::of(page_ptr.cast());
            // SAFETY: the page's segment is on our list (caller).
            unsafe { self.segments.remove(segment_ptr, SegmentLinks::All) };
            // SAFETY: a live segment of ours; its header fields are cells
            // and atomics.
            let segment = unsafe { &*segment_ptr };
            segment.heap.set(ptr::null_mut());
            // Relaxed: as in `abandon_segment`.
            segment.set_owner(0);
            // SAFETY: owner, the page is off every list of ours.
            if !unsafe { page.try_orphan() } {
                // Its free is under way: keep it.
                segment.set_owner(self.thread_id());
                segment.heap.set(self.as_ptr());
                // SAFETY: ours, on no list.
                unsafe {
                    self.segments.push(segment_ptr, SegmentLinks::All);
                    self.queue_push_back(BIN_HUGE, page_ptr);
                }
            }
            page_ptr = next;
        }
    }

    /// Between steps 3 and 4 of `abandon`: nobody will pass through this
    /// heap's slow path again. Empty segments go to the segment cache as
    /// they are (their memory goes back after the reset delay unless
    /// another thread reuses them first). The others are about to be
    /// abandoned: their empty slots keep their memory too, for the thread
    /// that adopts the segment (it queues them for the reset delay), or a
    /// reclaim pass gives it back if the segment stays abandoned. Only huge
    /// spares remain on the reset queue; they go to the process's pool
    /// (`pool_huge_spares`), or are unmapped.
    ///
    /// # Safety
    /// Owner thread, holding the lock, tearing the heap down.
    unsafe fn release_empty_segments(&self) {
        let mut segment_ptr = self.segments.first.get();
        while !segment_ptr.is_null() {
            // SAFETY: segments on our list are live and ours (caller).
            let segment = unsafe { &*segment_ptr };
            let next = segment.all.next.get();
            if segment.kind != PageKind::Huge {
                if segment.used_pages.get() == 0 {
                    // SAFETY: ours and empty; `next` was read first.
                    unsafe { self.segment_free(segment_ptr) };
                } else {
                    for index in 0..segment.page_count {
                        // SAFETY: a slot of our segment.
                        unsafe { self.unschedule_reset(Segment::page(segment_ptr, index)) };
                    }
                }
            }
            segment_ptr = next;
        }
        // SAFETY: owner thread, holding the lock.
        unsafe {
            self.pool_huge_spares();
            self.reset_expired(true);
        }
    }

    /// Step 4 of `abandon`, for one segment with live blocks: detaches its
    /// pages and the segment from the heap and pushes it onto the
    /// process's abandoned list.
    ///
    /// # Safety
    /// Owner thread; `segment_ptr` is ours, and given up.
    unsafe fn abandon_segment(&self, segment_ptr: *mut Segment) {
        // SAFETY: a live segment of ours (caller); header fields are cells
        // and atomics.
        let segment = unsafe { &*segment_ptr };
        for index in 0..segment.page_count {
            // SAFETY: a page descriptor of our segment.
            let page = unsafe { &*Segment::page(segment_ptr, index) };
            if page.in_use.get() {
                // Relaxed: every remote free now sees `Never` and ignores
                // this field; the reclaimer acquires it through the
                // abandoned list.
                page.heap.store(ptr::null_mut(), Ordering::Relaxed);
                page.next.set(ptr::null_mut());
                page.prev.set(ptr::null_mut());
                page.flags.set(0);
                page.retire_expire.set(0);
            }
        }
        segment.heap.set(ptr::null_mut());
        segment.in_free_slot_list.set(false);
        segment.all.next.set(ptr::null_mut());
        segment.all.prev.set(ptr::null_mut());
        segment.with_free_slot.next.set(ptr::null_mut());
        segment.with_free_slot.prev.set(ptr::null_mut());
        // Relaxed: frees only compare it with their own (nonzero) id; the
        // hand-off to a reclaiming thread is ordered by the list's Release
        // push.
        segment.set_owner(0);
        // Its empty slots stay warm for the thread that adopts it, within
        // the process's warm budget.
        // SAFETY: ours, off every list of the heap; `shared` outlives every
        // heap.
        unsafe {
            if decay::over_budget(options::pending_reset_limit()) {
                reset_unused_slots(segment_ptr, u64::MAX, 0);
            }
            Segment::count_warm(segment_ptr);
            note_abandoned_live(segment_ptr);
            (*self.shared.get()).abandoned.push(segment_ptr);
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

    /// Looks through the abandoned segments. With `kind` (the allocation
    /// slow path): pops segments of that kind, at most [`RECLAIM_POPS`],
    /// until one still holds live blocks, and adopts it (never a huge one:
    /// a huge page must stay in `UseDelayed`, so it is left abandoned until
    /// its block is freed); the empty ones go back to the OS (through the
    /// segment cache). A thread that starts soon after another exited adopts
    /// warm slots instead of faulting fresh ones. Constant time, whatever the
    /// number of abandoned segments. Without `kind` (a reaping pass, or
    /// `collect(true)` with `force`): [`RawHeap::reclaim_pass`]. Returns
    /// whether a segment was adopted.
    ///
    /// # Safety
    /// Owner thread.
    pub(super) unsafe fn reclaim(&self, kind: Option<PageKind>, force: bool) -> bool {
        let Some(kind) = kind else {
            // SAFETY: owner thread (caller).
            unsafe { self.reclaim_pass(force) };
            return false;
        };
        if kind == PageKind::Huge {
            return false;
        }
        // SAFETY: `shared` outlives every heap.
        let abandoned = unsafe { &(*self.shared.get()).abandoned };
        if abandoned.len_of(kind) == 0 {
            return false;
        }
        let _guard = self.lock();
        for _ in 0..RECLAIM_POPS {
            let segment = abandoned.pop(kind, PopFrom::Anywhere);
            if segment.is_null() {
                return false;
            }
            // SAFETY: `pop` made the segment exclusively ours; remote frees
            // into it only push onto page lists.
            unsafe { take_popped(segment) };
            // SAFETY: as above; the header fields are cells.
            if unsafe { (*segment).used_pages.get() } == 0 {
                // SAFETY: ours, empty, on no list; `shared` outlives heaps.
                unsafe { cache_or_release(self.shared.get(), segment) };
            } else {
                // SAFETY: owner thread (caller); ours, collected.
                unsafe { self.adopt(segment) };
                return true;
            }
        }
        false
    }

    /// A reaping pass over the abandoned segments: collects each one's
    /// pages, returns the segments that became empty to the OS (through the
    /// segment cache), and gives back the memory of the unused slots of the
    /// others once they have been unused for the decay time (all of it with
    /// `force`). At most [`PASS_SEGMENTS`] segments of each kind per pass,
    /// taking up where the last pass stopped (the `visited` round robin of
    /// `AbandonedSegments`), so no single allocation pays for all of them;
    /// with `force` (`collect(true)`), every segment, taken whole
    /// (`reclaim_all`).
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn reclaim_pass(&self, force: bool) {
        // SAFETY: `shared` outlives every heap.
        let abandoned = unsafe { &(*self.shared.get()).abandoned };
        if abandoned.len() == 0 {
            return;
        }
        // Held so that no pass is under way across a `fork` (which holds
        // every heap's lock).
        let _guard = self.lock();
        let now = if force { u64::MAX } else { os::now_ms() };
        let delay = options::reset_delay_ms();
        for kind in [
            PageKind::Small,
            PageKind::Medium,
            PageKind::Large,
            PageKind::Huge,
        ] {
            if abandoned.len_of(kind) == 0 {
                continue;
            }
            if force {
                // SAFETY: owner thread (caller).
                unsafe { self.reclaim_all(kind, now, delay) };
                continue;
            }
            // A new round of the round robin once every segment was seen.
            if abandoned.incoming_is_empty(kind) {
                abandoned.recycle(kind);
            }
            for _ in 0..PASS_SEGMENTS {
                let segment = abandoned.pop(kind, PopFrom::Incoming);
                if segment.is_null() {
                    break;
                }
                // SAFETY: `pop` made the segment exclusively ours; remote
                // frees into it only push onto page lists.
                if unsafe { self.reclaim_look(segment, now, delay) } {
                    // SAFETY: ours, kept abandoned, given up.
                    unsafe { abandoned.keep(segment) };
                }
            }
        }
    }

    /// `reclaim_pass` with `force`, for one kind: takes every segment of
    /// `kind` at once and looks at each.
    ///
    /// # Safety
    /// Owner thread.
    unsafe fn reclaim_all(&self, kind: PageKind, now: u64, delay: u64) {
        // SAFETY: `shared` outlives every heap.
        let abandoned = unsafe { &(*self.shared.get()).abandoned };
        let mut segment = abandoned.take_all(kind);
        let (mut first, mut last) = (ptr::null_mut::<Segment>(), ptr::null_mut::<Segment>());
        let mut removed = 0;
        while !segment.is_null() {
            // SAFETY: `take_all` made every segment of the chain ours.
            let next = unsafe { Segment::abandoned_next(segment) };
            // SAFETY: as above.
            if unsafe { self.reclaim_look(segment, now, delay) } {
                if first.is_null() {
                    first = segment;
                } else {
                    // SAFETY: `last` is ours too, kept on the new chain.
                    unsafe { Segment::set_abandoned_next(last, segment) };
                }
                last = segment;
            } else {
                removed += 1;
            }
            segment = next;
        }
        abandoned.note_removed(kind, removed);
        if !first.is_null() {
            // SAFETY: the chain we kept, linked above, given up.
            unsafe { abandoned.keep_chain(kind, first, last) };
        }
    }

    /// A reclaim pass's look at one abandoned segment: collects its pages;
    /// an empty segment goes back to the OS (through the segment cache),
    /// the unused slots of another give their memory back once they have
    /// waited the decay time (`now` `u64::MAX`: at once). Returns whether
    /// the segment stays abandoned (the caller gives it back).
    ///
    /// # Safety
    /// The caller owns the abandoned segment exclusively (popped or took
    /// it).
    unsafe fn reclaim_look(&self, segment: *mut Segment, now: u64, delay: u64) -> bool {
        // SAFETY: ours (caller); remote frees into it only push onto page
        // lists.
        unsafe { take_popped(segment) };
        // SAFETY: as above; the header fields are cells.
        if unsafe { (*segment).used_pages.get() } == 0 {
            // SAFETY: ours, empty, on no list; `shared` outlives heaps.
            unsafe { cache_or_release(self.shared.get(), segment) };
            return false;
        }
        // Nobody owns its emptied slots: their memory goes once they have
        // waited the decay time (at once if the process is over its warm
        // budget).
        let over = decay::over_budget(options::pending_reset_limit());
        // SAFETY: ours (caller).
        unsafe {
            reset_unused_slots(segment, if over { u64::MAX } else { now }, delay);
            Segment::count_warm(segment);
            note_abandoned_live(segment);
        }
        true
    }

    /// Makes an abandoned segment (already collected) ours.
    ///
    /// # Safety
    /// Owner thread; we took `segment` off the abandoned list.
    unsafe fn adopt(&self, segment_ptr: *mut Segment) {
        // SAFETY: exclusively ours (caller); the header fields are cells and
        // atomics.
        let segment = unsafe { &*segment_ptr };
        // Relaxed: from now on frees on this thread are local; other threads
        // only compare it with their own ids.
        segment.set_owner(self.thread_id());
        segment.heap.set(self.as_ptr());
        // SAFETY: ours, on no list of ours yet.
        unsafe {
            self.segments.push(segment_ptr, SegmentLinks::All);
            self.list_free_slot(segment_ptr);
        }
        for index in 0..segment.page_count {
            // SAFETY: a page descriptor of our segment.
            let page_ptr = unsafe { Segment::page(segment_ptr, index) };
            // SAFETY: as above; its fields are cells and atomics.
            let page = unsafe { &*page_ptr };
            if !page.in_use.get() {
                // Emptied by the collect before adoption: its memory waits
                // for the reset delay, on our queue now.
                if !page.memory_is_zero.get() {
                    // SAFETY: an unused slot of ours, on no queue.
                    unsafe { self.schedule_reset(page_ptr) };
                }
                continue;
            }
            // Release pairs with the Acquire load of `heap` in the delayed
            // route of `free_remote`.
            page.heap.store(self.as_ptr(), Ordering::Release);
            // Leave `Never` only after the heap is published; no remote
            // thread can be `Freeing` on a `Never` page.
            // SAFETY: ours now (owner), on no queue until pushed below.
            unsafe {
                page.set_delayed_mode(DelayedMode::NoDelayed, true);
                page.collect();
                self.queue_push_back(usize::from(page.bin.get()), page_ptr);
                self.note_page_bytes(segment_ptr, page_ptr, true);
            }
        }
    }
}

/// Counts the live blocks of a segment about to sit on the abandoned list
/// in `stats::ABANDONED_LIVE` (huge blocks are counted on their own).
///
/// # Safety
/// The caller exclusively owns the segment.
pub(super) unsafe fn note_abandoned_live(segment: *mut Segment) {
    // SAFETY: exclusive ownership (caller).
    unsafe {
        if (*segment).kind != PageKind::Huge {
            let live = Segment::live_bytes(segment);
            (*segment).abandoned_live.set(live);
            stats::ABANDONED_LIVE.add(live);
        }
    }
}

/// Takes a segment just popped off the abandoned lists: its live bytes
/// leave `stats::ABANDONED_LIVE` and its warm slots the warm count (both
/// counted again if it is kept), and its pages are collected.
///
/// # Safety
/// The caller exclusively owns the segment (popped it).
unsafe fn take_popped(segment: *mut Segment) {
    // SAFETY: exclusively ours (caller); the header fields are cells.
    stats::ABANDONED_LIVE.sub(unsafe { (*segment).abandoned_live.replace(0) });
    // SAFETY: as above.
    unsafe { Segment::uncount_warm(segment) };
    // SAFETY: as above.
    unsafe { collect_abandoned(segment) };
}

/// Collects every page of an abandoned segment and gives back the slots of
/// pages that became empty.
///
/// # Safety
/// The caller exclusively owns the abandoned segment.
pub(super) unsafe fn collect_abandoned(segment: *mut Segment) {
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
                    // queue), caches it, or resets the slot once it has
                    // waited a reset delay (`reset_unused_slots` stamps it).
                    Segment::release_slot(segment, page);
                    (*page).emptied_at.set(0);
                }
            }
        }
    }
}

/// Gives back the memory of the unused slots of a segment that stays
/// abandoned once they have been unused for the decay time `delay` at
/// `now_ms` (`u64::MAX`: all of them); a slot seen unused for the first time
/// (`emptied_at` 0, as `collect_abandoned` leaves it) is stamped now; a slot
/// a heap's reset queue held keeps the time it emptied there.
///
/// # Safety
/// The caller exclusively owns the abandoned segment.
pub(super) unsafe fn reset_unused_slots(segment: *mut Segment, now_ms: u64, delay: u64) {
    // SAFETY: exclusively ours (caller); the header fields are cells.
    let page_count = unsafe { (*segment).page_count };
    for index in 0..page_count {
        // SAFETY: a page descriptor of our segment; unused slots hold no
        // block.
        unsafe {
            let page = Segment::page(segment, index);
            if (*page).in_use.get() || (*page).memory_is_zero.get() {
                continue;
            }
            let emptied = (*page).emptied_at.get();
            if emptied == 0 && now_ms != u64::MAX {
                (*page).emptied_at.set(now_ms.max(1));
            } else if emptied.saturating_add(delay) <= now_ms {
                Segment::reset_page(segment, page);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::free::free_block;
    use crate::process::Shared;

    const OWNER: usize = 0x5100;
    const OTHER: usize = 0x5200;
    const THIRD: usize = 0x5300;
    /// A large block: a large segment of its own.
    const LARGE: usize = 600 << 10;

    /// `n` large segments abandoned by a heap that exits, each holding one
    /// block (returned, for the caller to free).
    ///
    /// # Safety
    /// `shared` outlives the segments' use.
    unsafe fn abandon_large(shared: &Shared, n: usize) -> Vec<*mut u8> {
        let dying = RawHeap::new(OWNER, &raw const *shared);
        // SAFETY: owner thread (this one, as `OWNER`).
        unsafe {
            let blocks = (0..n).map(|_| dying.malloc_generic(LARGE, false)).collect();
            dying.abandon();
            blocks
        }
    }

    /// Issue 12 point 7: a reclaim for a page of one kind pops only
    /// segments of that kind, however many of another kind wait.
    #[test]
    fn a_reclaim_for_small_pages_leaves_large_segments_alone() {
        let shared = Shared::new();
        // SAFETY: test-owned heaps and blocks; ids stand for threads.
        unsafe {
            let blocks = abandon_large(&shared, 40);
            assert_eq!(shared.abandoned.len_of(PageKind::Large), 40);
            let other = RawHeap::new(OTHER, &raw const shared);
            assert!(!other.reclaim(Some(PageKind::Small), false));
            assert_eq!(shared.abandoned.len_of(PageKind::Large), 40, "none popped");
            assert!(other.reclaim(Some(PageKind::Large), false), "one adopted");
            assert_eq!(shared.abandoned.len_of(PageKind::Large), 39);
            for p in blocks {
                free_block(p, THIRD);
            }
            other.collect(true);
            assert_eq!(shared.abandoned.len(), 0);
            other.abandon();
        }
    }

    /// A reaping pass looks at `PASS_SEGMENTS` segments of a kind, and the
    /// next passes at the others (round robin): 30 abandoned segments whose
    /// blocks were all freed go back 8 per pass, every one of them in four
    /// passes.
    #[test]
    fn reclaim_passes_are_bounded_and_come_round_to_every_segment() {
        let shared = Shared::new();
        // SAFETY: as above.
        unsafe {
            let blocks = abandon_large(&shared, 30);
            for p in blocks {
                free_block(p, THIRD);
            }
            let other = RawHeap::new(OTHER, &raw const shared);
            let mut left = vec![30];
            for _ in 0..4 {
                other.reclaim(None, false);
                left.push(shared.abandoned.len_of(PageKind::Large));
            }
            assert_eq!(left, [30, 22, 14, 6, 0]);
            other.abandon();
        }
    }

    /// Kept segments come round again: segments that stay abandoned (live
    /// blocks) are looked at 8 per pass, and once each has been seen the
    /// next pass starts over (a segment emptied meanwhile is then found).
    #[test]
    fn a_pass_finds_a_segment_emptied_after_it_was_kept() {
        let shared = Shared::new();
        // SAFETY: as above.
        unsafe {
            let blocks = abandon_large(&shared, 20);
            let other = RawHeap::new(OTHER, &raw const shared);
            for _ in 0..3 {
                other.reclaim(None, false);
            }
            assert_eq!(shared.abandoned.len_of(PageKind::Large), 20, "all kept");
            for &p in &blocks {
                free_block(p, THIRD);
            }
            for _ in 0..3 {
                other.reclaim(None, false);
            }
            assert_eq!(
                shared.abandoned.len_of(PageKind::Large),
                0,
                "every segment came round and went back"
            );
            other.abandon();
        }
    }
}
