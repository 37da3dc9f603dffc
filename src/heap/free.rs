use super::Heap;
use crate::os;
use crate::os::OS_PAGE_SIZE;
use crate::page::{Block, DelayedMode, Page};
use crate::segment::Segment;
use crate::size_class::PageKind;
use crate::sync::{Ordering, yield_thread};
use core::ptr;

impl Heap {
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
    pub(crate) unsafe fn after_local_free(page: *mut Page) {
        // SAFETY: the page is ours (caller), so is its heap, set by us (see
        // above for a full page a reaper took).
        unsafe {
            // Emptied again while still retired (an alloc/free loop on the
            // only page of its class): it stays retired; hand the freed
            // blocks straight back to allocation, so the loop's next
            // allocation takes the fast path instead of collecting.
            // (`used` is atomic and only the owner writes it.)
            if (*page).used.get() == 0
                && (*page).flags.get() == 0
                && (*page).retire_expire.get() != 0
            {
                (*page).reuse_local_free();
                return;
            }
            // Relaxed: set by us; only a reaper that freed this (full) page
            // for us stores null, and then there is nothing left to do.
            let heap = (*page).heap.load(Ordering::Relaxed);
            if heap.is_null() {
                return;
            }
            (*heap).page_after_free(page);
        }
    }

    /// Frees `block` of `page` on the owner thread (delayed-list processing).
    ///
    /// # Safety
    /// Owner thread; `block` is a block of `page` that is ours to free.
    unsafe fn free_block_local(&self, page: *mut Page, block: *mut Block) {
        // SAFETY: owner thread (caller).
        unsafe {
            let used = (*page).push_local(block);
            if used == 0 || (*page).is_in_full() {
                self.page_after_free(page);
            }
        }
    }

    /// Pushes a remotely freed block onto the heap's delayed list.
    ///
    /// # Safety
    /// `heap` is live (the caller holds a page of it in `Freeing`, or owns
    /// it); the caller owns `block` and gives it up.
    #[inline]
    pub(crate) unsafe fn push_delayed(heap: *mut Heap, block: *mut Block) {
        // SAFETY: a chain of one block (caller's contract).
        unsafe { Heap::push_delayed_chain(heap, block, block) }
    }

    /// Pushes a chain of blocks (`head` … `tail`, linked) onto the heap's
    /// delayed list: one remotely freed block (`push_delayed`), or the
    /// blocks a reaper took and hands back.
    ///
    /// # Safety
    /// As for [`Heap::push_delayed`], for every block of the chain.
    pub(super) unsafe fn push_delayed_chain(heap: *mut Heap, head: *mut Block, tail: *mut Block) {
        // SAFETY: the delayed list is atomic; the heap is live (caller).
        let list = unsafe { &(*heap).thread_delayed_free };
        // Relaxed: starting guess for the CAS loop.
        let mut current = list.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is ours until the CAS publishes it.
            unsafe { Block::set_next(tail, current) };
            // Release pairs with the Acquire take in `process_delayed`.
            match list.compare_exchange_weak(current, head, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    /// Frees the blocks remote threads parked on the delayed list. With
    /// `wait_all`, repeats until every block is processed (a block whose page
    /// still has a remote thread in `Freeing` is put back and retried).
    ///
    /// # Safety
    /// Owner thread.
    pub(crate) unsafe fn process_delayed(&self, wait_all: bool) {
        loop {
            // Relaxed: emptiness test; the CAS below acquires.
            let mut head = self.thread_delayed_free.load(Ordering::Relaxed);
            while !head.is_null() {
                // AcqRel/Acquire pairs with the Release pushes of
                // `push_delayed` (every update is an RMW, so all links are
                // visible). A CAS, not a swap: the list is usually empty.
                match self.thread_delayed_free.compare_exchange_weak(
                    head,
                    ptr::null_mut(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(current) => head = current,
                }
            }
            if head.is_null() {
                return;
            }
            let mut all_done = true;
            let mut block = head;
            // SAFETY: taken blocks are ours; each belongs to a page of this
            // heap (a remote thread pushed it here because the page's heap
            // is us), which stays live while the block is unfreed.
            unsafe {
                while !block.is_null() {
                    let next = Block::next(block);
                    let segment = Segment::of(block.cast());
                    let page = Segment::page_of(segment, block.cast());
                    // First wait out a remote thread still in `Freeing` on this
                    // page: freeing the block could free the page under it.
                    if (*page).try_set_delayed_mode(DelayedMode::UseDelayed, false) {
                        (*page).collect_thread_free();
                        self.free_block_local(page, block);
                    } else {
                        Heap::push_delayed(self.as_ptr(), block);
                        all_done = false;
                    }
                    block = next;
                }
            }
            if all_done || !wait_all {
                return;
            }
            yield_thread();
        }
    }
}

/// Frees a block on the thread whose id is `thread_id`: a local free when
/// that thread owns the block's segment, a remote free otherwise.
///
/// # Safety
/// `ptr` is a live block returned by this allocator; `thread_id` is the
/// calling thread's id.
#[inline(always)]
pub(crate) unsafe fn free_block(ptr: *mut u8, thread_id: usize) {
    let segment = Segment::of(ptr);
    // SAFETY: `ptr` is a live block (caller), so its segment and page are
    // live. The segment's owner id equals ours only if this thread owns it,
    // in which case the page's lists are ours to touch.
    unsafe {
        let page = Segment::page_of(segment, ptr);
        let block = ptr.cast::<Block>();
        // Relaxed: only equality with our own id matters, and only this
        // thread ever stores its own id into a segment.
        if (*segment).thread_id.load(Ordering::Relaxed) == thread_id {
            let used = (*page).push_local(block);
            if used == 0 || (*page).flags.get() != 0 {
                Heap::after_local_free(page);
            }
        } else {
            free_remote(segment, page, block);
        }
    }
}

/// # Safety
/// `block` is a live block of `page` in `segment`, given up by the caller.
#[inline(never)]
pub(super) unsafe fn free_remote(segment: *mut Segment, page: *mut Page, block: *mut Block) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if (*segment).kind != PageKind::Huge {
            (*page).free_remote(block);
            return;
        }
        // A huge block: give its memory back now (the first OS page keeps the
        // link word), then either tell the owner or, if the owner exited,
        // release the segment ourselves.
        if (*page).delayed_mode() != DelayedMode::Never {
            let usable = (*page).block_size.get();
            if usable > OS_PAGE_SIZE {
                os::reset(
                    block.cast::<u8>().add(OS_PAGE_SIZE),
                    (usable - OS_PAGE_SIZE) & !(OS_PAGE_SIZE - 1),
                );
            }
        }
        if (*page).free_huge_remote(block) {
            Segment::release(segment);
        }
    }
}
