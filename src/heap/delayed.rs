//! The owner's side of the delayed-free list: remote threads freeing into
//! a page that asked to be noticed (`DelayedMode::UseDelayed`, a full page)
//! push the block onto its heap's `thread_delayed_free` list (`crate::free`
//! does that through [`RawHeap::push_delayed`]); the owner takes the list on
//! its slow paths and frees each block locally. The protocol, and the loom
//! models that specify it, are in `docs/design.md` §4.2.

use super::RawHeap;
use crate::page::{Block, DelayedMode, Page};
use crate::segment::Segment;
use crate::size_class::PageKind;
use crate::sync::{Ordering, yield_thread};
use core::ptr;

impl RawHeap {
    /// Pushes a remotely freed block onto the heap's delayed list.
    ///
    /// # Safety
    /// `heap` is live (the caller holds a page of it in `Freeing`, or owns
    /// it); the caller owns `block` and gives it up.
    #[inline]
    pub(crate) unsafe fn push_delayed(heap: *mut RawHeap, block: *mut Block) {
        // SAFETY: a chain of one block (caller's contract).
        unsafe { RawHeap::push_delayed_chain(heap, block, block) }
    }

    /// Pushes a chain of blocks (`head` … `tail`, linked) onto the heap's
    /// delayed list: one remotely freed block (`push_delayed`), or the
    /// blocks a reaper took and hands back.
    ///
    /// # Safety
    /// As for [`RawHeap::push_delayed`], for every block of the chain.
    pub(crate) unsafe fn push_delayed_chain(
        heap: *mut RawHeap,
        head: *mut Block,
        tail: *mut Block,
    ) {
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
                    let next = Block::next_delayed(block);
                    let segment = Segment::of(block.cast());
                    let page = Segment::page_of(segment, block.cast());
                    // First wait out a remote thread still in `Freeing` on this
                    // page: freeing the block could free the page under it.
                    if (*page).try_set_delayed_mode(DelayedMode::UseDelayed, false) {
                        if (*segment).kind == PageKind::Huge {
                            super::reset::take_remote_huge(block, (*page).block_size.get());
                        }
                        (*page).collect_thread_free();
                        self.free_block_local(page, block);
                    } else {
                        RawHeap::push_delayed(self.as_ptr(), block);
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
}
