//! The reaper: another thread's slow path gives back the memory an idle
//! heap keeps waiting — its overdue page slots, and the memory inside the
//! blocks other threads freed into its pages — holding that heap's registry
//! lock (see `registry` and `docs/design.md` §4.5).

use super::RawHeap;
use super::reset::{HUGE_POOL_SLOTS, reset_block_interior, reset_remote_huge, take_remote_huge};
use crate::decay;
use crate::options;
use crate::os;
use crate::page::{Block, DelayedMode, INTERIOR_RESET_MIN, Page};
use crate::registry::NOTHING_DUE;
use crate::segment::Segment;
use crate::size_class::PageKind;
use crate::sync::Ordering;
use core::ptr;

/// A heap whose owner has not passed a slow path for this share of the decay
/// time counts as idle (100 ms at the default 500 ms): reapers give back the
/// memory inside blocks other threads freed into its pages. Reclaim passes
/// over the abandoned segments run at the same period.
const IDLE_DIVISOR: u64 = 5;

/// The idle period for a decay time of `decay_ms` (at least one epoch).
pub(super) fn idle_ms(decay_ms: u64) -> usize {
    usize::try_from((decay_ms / IDLE_DIVISOR).max(decay::epoch_ms(decay_ms))).unwrap_or(usize::MAX)
}

impl RawHeap {
    /// The reaper: applies the decay curve for heaps of other threads whose
    /// decay step is overdue by a whole epoch (their owner has not passed
    /// through a slow path since), or gives back every waiting slot with
    /// `force`. At most one pass per epoch across the process unless
    /// `force`; heaps whose lock is busy are skipped. A pass also looks
    /// through the abandoned segments (`reclaim`, adopting nothing) once
    /// per idle period, and tears down parked heaps nobody adopted within
    /// the decay time (all of them with `force`).
    ///
    /// # Safety
    /// Owner thread.
    pub(crate) unsafe fn reap_idle_heaps(&self, force: bool) {
        let shared = self.shared.get();
        if shared.is_null() {
            return;
        }
        let decay_ms = options::reset_delay_ms();
        let epoch = usize::try_from(decay::epoch_ms(decay_ms)).unwrap_or(usize::MAX);
        let idle_period = idle_ms(decay_ms);
        let now = usize::try_from(os::now_ms()).unwrap_or(usize::MAX);
        // SAFETY: `shared` outlives every heap.
        let registry = unsafe { &(*shared).heaps };
        if !force && !registry.reap_is_due(now, epoch) {
            return;
        }
        // SAFETY: as above.
        let cache = unsafe { &(*shared).segment_cache };
        // Parked heaps nobody adopted within the decay time are torn down
        // (first: their empty segments go to the cache, swept next).
        // SAFETY: `shared` outlives every heap; we are in no section of a
        // parked heap.
        unsafe { super::park::evict_parked(&*shared, force) };
        let now_ms = if force { u64::MAX } else { os::now_ms() };
        cache.sweep(now_ms, options::segment_cache());
        // SAFETY: as above.
        unsafe { (*shared).huge_spares.sweep(now_ms, HUGE_POOL_SLOTS) };
        // Abandoned segments: the emptied ones go to the cache, and the
        // empty slots of the others give their memory back. A walk over all
        // of them, so only once per idle period.
        if !force && registry.reclaim_is_due(now, idle_period) {
            // SAFETY: owner thread (caller).
            let _ = unsafe { self.reclaim(None, false) };
        }
        // A slice of the registry per pass (every heap with `force`), so a
        // pass costs the same however many heaps live.
        let batch = if force {
            registry.entries()
        } else {
            registry.reap_batch()
        };
        for entry in batch {
            if ptr::eq(entry, self.entry.get()) {
                continue;
            }
            let due = entry.reset_due();
            let resets_due = due != NOTHING_DUE && (force || due.saturating_add(epoch) <= now);
            // An owner idle for a while: the memory inside the blocks other
            // threads freed into its pages goes back too.
            let idle = force || entry.active().saturating_add(idle_period) <= now;
            if !(resets_due || idle) {
                continue;
            }
            if !entry.try_lock() {
                continue;
            }
            let heap = entry.heap();
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
                    // Its spare huge segments serve any thread meanwhile.
                    (*heap).pool_huge_spares();
                }
            }
            entry.unlock();
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
        // SAFETY: segments on the heap's list and their entries stay as they
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

    /// [`RawHeap::live_bytes`] for the owner thread, which takes its own lock
    /// (re-entrantly: the owner may hold it already, in `visit_blocks`).
    ///
    /// # Safety
    /// Owner thread.
    pub(crate) unsafe fn live_bytes_as_owner(&self) -> usize {
        let _guard = self.lock();
        // SAFETY: we hold the lock.
        unsafe { self.live_bytes() }
    }

    /// The reaper's work on an idle heap's remote frees. The blocks other
    /// threads freed into its pages (each page's `thread_free` list, and
    /// the heap's delayed list) are taken for a moment and filed by page.
    /// A full page whose every block in use is among them is freed on the
    /// owner's behalf (its entry then waits for the reset delay like any
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
        // SAFETY: we hold the lock (caller).
        unsafe { self.file_delayed_by_page() };
        // 2. Each page's `thread_free` list, then the decision per page.
        let mut segment_ptr = self.segments.first.get();
        while !segment_ptr.is_null() {
            // SAFETY: segments on our list stay live while we hold the lock;
            // their header fields are cells.
            let segment = unsafe { &*segment_ptr };
            let next_segment = segment.all.next.get();
            if segment.kind != PageKind::Huge {
                for index in 0..segment.page_count {
                    // SAFETY: a page descriptor of a live segment.
                    let page = unsafe { Segment::page(segment_ptr, index) };
                    // SAFETY: as above; `in_use` is a cell only lock holders
                    // change.
                    if unsafe { (*page).in_use.get() } {
                        // SAFETY: a page in use of ours, under the lock, its
                        // delayed blocks filed by `file_delayed_by_page`.
                        unsafe { self.reap_page_remote_frees(page) };
                    }
                    // SAFETY: as above (the page may have been freed just
                    // now: `in_use` says).
                    // A retired page moves its `local_free` without the
                    // lock (`page::OwnerList`): skipped.
                    if unsafe {
                        (*page).in_use.get()
                            && (*page).has_interiors()
                            && (*page).retire_expire.get() == 0
                    } {
                        // SAFETY: a page in use of ours, under the lock.
                        unsafe { reset_local_free_interiors(&*page) };
                    }
                }
            }
            segment_ptr = next_segment;
        }
        // 3. Pages freed above wait for their reset like any empty page
        //    (now that no segment is being walked, one may go).
        // SAFETY: we hold the lock.
        unsafe {
            self.enforce_warm_budget();
            self.reset_expired(false);
        }
    }

    /// Step 1 of `reset_remote_frees`: takes the delayed list (blocks of
    /// full pages) and files its blocks by page, in each page's scratch
    /// (`reaped_delayed`); huge blocks are freed for the quiet owner
    /// (`free_huge_for_quiet_owner`), or else handed back with their memory
    /// given back (`reset_remote_huge`).
    ///
    /// # Safety
    /// The caller holds the heap's lock.
    unsafe fn file_delayed_by_page(&self) {
        // AcqRel as in `process_delayed`: the pushes' links are visible.
        let mut block = self
            .thread_delayed_free
            .swap(ptr::null_mut(), Ordering::AcqRel);
        let (mut huge_head, mut huge_tail) = (ptr::null_mut::<Block>(), ptr::null_mut::<Block>());
        while !block.is_null() {
            // SAFETY: the taken chain is ours; each block's page and segment
            // stay live while the block is on a list (its owner still counts
            // it as used).
            let next = unsafe { Block::next_delayed(block) };
            let segment = Segment::of(block.cast());
            // SAFETY: as above; `kind` never changes.
            if unsafe { (*segment).kind } == PageKind::Huge {
                // SAFETY: we hold the lock and took the block off the list.
                if unsafe { self.free_huge_for_quiet_owner(block, segment) } {
                    block = next;
                    continue;
                }
                // SAFETY: our block, the live one of its segment's only page,
                // whose size does not change while the block is out.
                unsafe {
                    reset_remote_huge(block, (*Segment::page(segment, 0)).block_size.get());
                    Block::set_next(block, huge_head);
                }
                if huge_head.is_null() {
                    huge_tail = block;
                }
                huge_head = block;
            } else {
                // SAFETY: as above; the scratch cells are the lock holder's.
                let page = unsafe { &*Segment::page_of(segment, block.cast()) };
                // SAFETY: our block.
                unsafe { Block::set_next(block, page.reaped_delayed.get()) };
                page.reaped_delayed.set(block);
                page.reaped_delayed_count
                    .set(page.reaped_delayed_count.get() + 1);
            }
            block = next;
        }
        if !huge_head.is_null() {
            // SAFETY: a chain of our blocks, handed back to this live heap.
            unsafe { RawHeap::push_delayed_chain(self.as_ptr(), huge_head, huge_tail) };
        }
    }

    /// A huge block another thread freed while its owner, now quiet, lived
    /// (`keep_remote_huge`): freed here on the owner's behalf, as the owner's
    /// own pass over its delayed list would (`process_delayed`), so that its
    /// segment becomes a spare; the reaper then hands the quiet heap's spares
    /// to the process's pool (`pool_huge_spares`), where any thread's next
    /// huge block reuses the memory warm within the decay time. False, with
    /// nothing done, while the freeing thread is still in its `Freeing` step
    /// on the page (the block is then handed back with its memory given
    /// back, `reset_remote_huge`, as before).
    ///
    /// # Safety
    /// The caller holds the heap's lock and took `block`, a huge block of
    /// this heap in `segment`, off the heap's delayed list.
    unsafe fn free_huge_for_quiet_owner(&self, block: *mut Block, segment: *mut Segment) -> bool {
        // SAFETY: the block's segment stays live while the block is unfreed,
        // and its only page is the block's (caller). The owner reaches the
        // page only through the block, which is off every list it can see,
        // and through sections under the lock we hold: the owner's own
        // delayed-list steps are ours to take.
        unsafe {
            let page = Segment::page(segment, 0);
            if !(*page).try_set_delayed_mode(DelayedMode::UseDelayed, false) {
                return false;
            }
            take_remote_huge(block, (*page).block_size.get());
            (*page).collect_thread_free();
            // A huge page holds one block: it is empty now.
            if (*page).push_local(block) == 0 {
                self.page_free_locked(page, false);
            }
        }
        true
    }

    /// Step 2 of `reset_remote_frees` for one page in use.
    ///
    /// # Safety
    /// As for `reset_remote_frees`; `page_ptr` is a page in use of ours,
    /// whose delayed blocks (if any) are filed in its scratch.
    unsafe fn reap_page_remote_frees(&self, page_ptr: *mut Page) {
        // SAFETY: a live page of ours (caller); its fields are cells and
        // atomics, and the scratch cells are the lock holder's.
        let page = unsafe { &*page_ptr };
        let (remote, remote_count) = page.take_remote_chain();
        let delayed = page.reaped_delayed.replace(ptr::null_mut());
        let delayed_count = page.reaped_delayed_count.replace(0);
        let held = remote_count + delayed_count;
        if held == 0 {
            return;
        }
        if page.is_in_full() && page.used.get_acquire() == held {
            // Wholly freed: the blocks die with the page. (Its reset is
            // deferred: the caller is walking this page's segment.)
            // SAFETY: we hold the lock, and no block of the page is live.
            unsafe { self.page_free_locked(page_ptr, true) };
            return;
        }
        let size = page.block_size.get();
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
                    // SAFETY: a free block we hold, of `size` bytes.
                    unsafe { reset_block_interior(block, size) };
                }
                tail = block;
                // SAFETY: a block of the chain we hold.
                block = unsafe { Block::next(block) };
            }
            if to_delayed {
                // SAFETY: the chain we took, handed back to this live heap.
                unsafe { RawHeap::push_delayed_chain(self.as_ptr(), head, tail) };
            } else {
                // SAFETY: the chain `take_remote_chain` gave us, `count`
                // blocks long, handed back to its page.
                unsafe { page.return_remote_chain(head, tail, count) };
            }
        }
    }
}

/// Gives back the OS pages inside the blocks the owner freed into `page`
/// (its `local_free`), all but each block's first: an idle owner's own
/// frees no longer keep their memory (design §6). Safe without the owner's
/// cooperation because the owner only prepends to `local_free` without the
/// lock, and takes blocks off it only under the lock we hold
/// (`page::OwnerList`): the chain read here stays free and untouched by
/// the owner until we unlock. The `Acquire` read of the head pairs with the
/// owner's `Release` store of it, so the links are there.
///
/// # Safety
/// The caller holds the lock of the heap owning `page`, a page in use whose
/// blocks are at least `INTERIOR_RESET_MIN` bytes.
unsafe fn reset_local_free_interiors(page: &Page) {
    let size = page.block_size.get();
    let mut block = page.local_free.get_acquire();
    while !block.is_null() {
        // SAFETY: a free block on the page's `local_free`, which nobody
        // takes from while we hold the lock (caller); `size` ≥
        // INTERIOR_RESET_MIN (caller).
        unsafe {
            reset_block_interior(block, size);
            block = Block::next(block);
        }
    }
}
