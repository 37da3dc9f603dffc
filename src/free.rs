//! The free path: [`free`] and [`usable_size`], and the routing of a block
//! to its page — a local free when the calling thread owns the block's
//! segment (push onto the page's `local_free`, and, when that empties the
//! page or takes it out of the full state, the heap's page bookkeeping), a
//! remote free otherwise (one CAS onto the page's `thread_free`, or the
//! delayed route to the owning heap's delayed list for a page that asked
//! to be noticed), and huge blocks, which go to their owner with their
//! memory (or, when their owner has exited, to the pool of huge spares).
//!
//! The owner's side of the delayed list (taking it, freeing each block) is
//! the heap's (`heap/delayed.rs`), since the heap's own slow paths run it.

use crate::heap::RawHeap;
use crate::page::{Block, Page, RemoteFree};
use crate::segment::Segment;
use crate::size_class::PageKind;
use crate::sync::Ordering;

/// Frees a block of any heap (a first-class [`Heap`](crate::Heap) or a
/// thread's default heap), from any thread. Null is accepted and ignored,
/// as C's `free` does.
///
/// # Safety
/// `ptr` is null or a live block returned by this allocator (by
/// [`ShardAlloc`](crate::ShardAlloc) or a [`Heap`](crate::Heap) that still exists).
#[cfg(not(loom))]
#[inline(always)]
pub unsafe fn free(ptr: *mut u8) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` is a live block of ours (caller), not null (tested).
    unsafe { free_current(ptr) }
}

/// The usable size of a block: at least the size it was allocated with (the
/// rest of its size class, or of its huge segment). 0 for null.
///
/// # Safety
/// `ptr` is null or a live block returned by [`ShardAlloc`](crate::ShardAlloc) (not a pointer
/// into the middle of one).
#[cfg_attr(loom, allow(dead_code))]
pub unsafe fn usable_size(ptr: *const u8) -> usize {
    if ptr.is_null() {
        return 0;
    }
    #[cfg(feature = "secure")]
    // SAFETY: any address may be checked.
    unsafe {
        crate::secure::check_pointer(ptr)
    };
    // SAFETY: a live block (caller): its segment and page are live, and the
    // block size never changes while a block of the page is live.
    unsafe {
        let segment = Segment::of(ptr);
        let page = Segment::page_of(segment, ptr);
        (*page).block_size.get()
    }
}

/// Frees a block on the calling thread: [`free_block`] with the calling
/// thread's id. Secure builds first try the thread's owner cache
/// (`secure::owner_cache`): a block of the segment the thread last
/// freed into as its owner goes straight to the local free, its segment
/// vouched for (the block itself is checked there as always).
///
/// # Safety
/// `ptr` is a live block returned by this allocator.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) unsafe fn free_current(ptr: *mut u8) {
    #[cfg(feature = "secure")]
    {
        let segment = Segment::of(ptr);
        if crate::secure::owner_cache::hit(segment.addr()) {
            // SAFETY: the cache vouches that `segment` is mapped, ours and
            // the calling thread's (it was, and no segment changed hands or
            // left the map since); `free_local` checks the block.
            unsafe { free_local(Segment::page_of(segment, ptr), ptr.cast()) };
            return;
        }
        // SAFETY: `ptr` is a live block of ours (caller); the id is the
        // calling thread's, which `remember` requires.
        unsafe { free_checked(ptr, crate::thread::current_thread_id(), true) }
    }
    #[cfg(not(feature = "secure"))]
    // SAFETY: `ptr` is a live block of ours (caller); the id is the
    // calling thread's.
    unsafe {
        free_block(ptr, crate::thread::current_thread_id())
    }
}

/// Frees a block on the thread whose id is `thread_id`: a local free when
/// that thread owns the block's segment, a remote free otherwise.
///
/// # Safety
/// `ptr` is a live block returned by this allocator; `thread_id` is the
/// calling thread's id.
#[inline(always)]
#[cfg_attr(all(feature = "secure", not(any(test, loom))), allow(dead_code))]
pub(crate) unsafe fn free_block(ptr: *mut u8, thread_id: usize) {
    #[cfg(feature = "secure")]
    // SAFETY: `ptr` is a live block of ours and `thread_id` the calling
    // thread's (caller); without `remember` no cache entry is written.
    unsafe {
        free_checked(ptr, thread_id, false)
    };
    #[cfg(not(feature = "secure"))]
    // SAFETY: `ptr` is a live block (caller), so its segment and page are
    // live. The segment's owner id equals ours only if this thread owns it,
    // in which case the page's lists are ours to touch.
    unsafe {
        let segment = Segment::of(ptr);
        let page = Segment::page_of(segment, ptr);
        let block = ptr.cast::<Block>();
        // Relaxed: only equality with our own id matters, and only this
        // thread ever stores its own id into a segment.
        if (*segment).thread_id.load(Ordering::Relaxed) == thread_id {
            free_local(page, block);
        } else {
            free_remote(segment, page, block);
        }
    }
}

/// The owner's free of `block`, a pointer into `page`, a page of the calling
/// thread: checked (secure: a block of the page below its extension, not
/// carrying its freed canary; else reported, and the process aborts), then
/// pushed onto the page's `local_free`.
///
/// # Safety
/// `page` is a live page of a segment the calling thread owns, and `block`
/// points into it.
#[inline(always)]
unsafe fn free_local(page: *mut Page, block: *mut Block) {
    // SAFETY: the page is ours (caller), so are its lists.
    unsafe {
        #[cfg(not(feature = "secure"))]
        let used = (*page).push_local(block);
        // Secure: the key is loaded once for the canary and the link.
        #[cfg(feature = "secure")]
        let used = {
            let key = (*page).key.get();
            if !crate::secure::mark_freed_local(page, block, key) {
                // Reported (and aborted: `secure::reject_free`).
                return;
            }
            (*page).push_local_keyed(block, key)
        };
        if used == 0 || (*page).flags.get() != 0 {
            after_local_free(page);
        }
    }
}

/// Secure builds' [`free_block`]: nothing about `ptr` is trusted until the
/// segment map vouches for its segment (whose header the owner test reads
/// next) and the page's block boundaries for the block, tested on each path
/// with the bound it needs (else `invalid free` or `double free` aborts).
/// With `remember` (the id is the calling thread's own), a local free of a
/// block of a small, medium or large segment records the segment in the
/// thread's owner cache, and a free by another thread records it as the
/// segment the map last vouched for, which the next such free into it
/// takes without asking the map again (the owner test stays).
///
/// # Safety
/// As for [`free_block`].
#[cfg(feature = "secure")]
#[inline(always)]
unsafe fn free_checked(ptr: *mut u8, thread_id: usize, remember: bool) {
    use crate::secure::owner_cache;
    // Read before the checks: a change racing them leaves the entry stale.
    let generation = owner_cache::generation();
    let segment = Segment::of(ptr);
    let page = if remember && owner_cache::vouched(segment.addr(), generation) {
        // SAFETY: the cache vouches that the segment is mapped and ours (the
        // map did, and no segment left it since); the page index needs no
        // test (`secure::check_free`).
        unsafe { Segment::page_of(segment, ptr) }
    } else {
        // SAFETY: any address may be checked.
        let Some((_, page)) = (unsafe { crate::secure::check_free(ptr) }) else {
            // Reported (and aborted: `secure::reject_free`).
            return;
        };
        page
    };
    // SAFETY: the map vouches for the segment, so its header is ours to
    // read; the segment's owner id equals ours only if this thread owns it,
    // in which case the page's lists are ours to touch.
    unsafe {
        let block = ptr.cast::<Block>();
        // Relaxed: only equality with our own id matters, and only this
        // thread ever stores its own id into a segment.
        if (*segment).thread_id.load(Ordering::Relaxed) == thread_id {
            if remember && (*segment).kind != PageKind::Huge {
                owner_cache::remember(segment.addr(), generation);
            }
            free_local(page, block);
        } else {
            if !crate::secure::mark_freed_remote(page, block) {
                // Reported (and aborted: `secure::reject_free`).
                return;
            }
            if remember {
                owner_cache::remember_vouched(segment.addr(), generation);
            }
            free_remote(segment, page, block);
        }
    }
}

/// # Safety
/// `block` is a live block of `page` in `segment`, given up by the caller.
#[inline(never)]
unsafe fn free_remote(segment: *mut Segment, page: *mut Page, block: *mut Block) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if (*segment).kind != PageKind::Huge {
            finish_remote_free(page, block, (*page).free_remote(block));
            return;
        }
        // A huge block: to the owner with its memory, for the owner's next
        // huge block to reuse warm (a reaper gives it back if the owner goes
        // quiet: `heap::keep_remote_huge`); or, if the owner exited, kept by
        // us as a pooled spare (warm for the decay time).
        match (*page).free_huge_remote(block) {
            Some(outcome @ RemoteFree::Delayed(_)) => {
                crate::heap::keep_remote_huge(block, (*page).block_size.get());
                finish_remote_free(page, block, outcome);
                // Memory only a reaper may give back, if the owner stays
                // quiet: the purge thread must exist. (No lock held here.)
                #[cfg(not(any(loom, miri)))]
                crate::purge_thread::start_if_needed();
            }
            Some(outcome) => finish_remote_free(page, block, outcome),
            // The owner exited (`Never`): the segment is ours alone, and
            // its page's block the one we give up.
            None => crate::heap::pool_orphaned_huge(segment, page),
        }
    }
}

/// The rest of a remote free: on the delayed route, the push onto the
/// owning heap's delayed list, then the page leaves `Freeing`.
///
/// # Safety
/// `outcome` is what `Page::free_remote` or `Page::free_huge_remote` just
/// returned for `block` of `page`.
#[inline]
unsafe fn finish_remote_free(page: *mut Page, block: *mut Block, outcome: RemoteFree) {
    if let RemoteFree::Delayed(heap) = outcome {
        // SAFETY: we hold `Freeing` on the page, so its heap is live until
        // `end_freeing` (the owner waits for us before it tears down or
        // retargets the heap); the block is ours to give up.
        unsafe {
            RawHeap::push_delayed(heap, block);
            (*page).end_freeing(block, true);
        }
    }
}

/// After a local free left `page` empty or took it out of the full
/// state: retire or unfull it.
///
/// A full page with blocks still in use may, once our free stored its
/// `used`, be freed by a reaper holding every other one of its blocks
/// (`reset_remote_frees`); then its flags read 0 or its heap null, or
/// `page_after_free` finds it gone under the lock. A page our free left
/// empty (`used` 0) or that is not full is touched by nobody else.
///
/// # Safety
/// `page` is a page of a heap owned by the calling thread.
#[cold]
#[inline(never)]
unsafe fn after_local_free(page: *mut Page) {
    // SAFETY: the page is ours (caller), so is its heap, set by us (see
    // above for a full page a reaper took).
    unsafe {
        // Emptied again while still retired (an alloc/free loop on the
        // only page of its class): it stays retired; hand the freed
        // blocks straight back to allocation, so the loop's next
        // allocation takes the fast path instead of collecting.
        // (`used` is atomic and only the owner writes it.)
        if (*page).used.get() == 0 && (*page).flags.get() == 0 && (*page).retire_expire.get() != 0 {
            // (No lock even for a page with interiors: reapers skip
            // retired pages, see `page::OwnerList`.)
            (*page).reuse_local_free();
            return;
        }
        retire_or_unfull(page);
    }
}

/// The rest of `after_local_free`: the page emptied (retire it) or left
/// the full state.
///
/// # Safety
/// As for `after_local_free`.
#[cold]
#[inline(never)]
unsafe fn retire_or_unfull(page: *mut Page) {
    // SAFETY: as in `after_local_free`.
    unsafe {
        // Relaxed: set by us; only a reaper that freed this (full) page
        // for us stores null, and then there is nothing left to do.
        let heap = (*page).heap.load(Ordering::Relaxed);
        if heap.is_null() {
            return;
        }
        (*heap).page_after_free(page);
    }
    // The page may have become warm memory, and this free may be the
    // program's last call for a while: the purge thread must exist. (Here
    // the heap is consistent and its lock free, so the `malloc` calls of
    // `pthread_create` may come back in.)
    #[cfg(not(any(loom, miri)))]
    crate::purge_thread::start_if_needed();
}
