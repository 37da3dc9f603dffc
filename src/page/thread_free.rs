//! A page's `thread_free` word and the protocols on it: the list other
//! threads push the blocks they free onto (one CAS each, its length packed
//! in bits 48–63), the delayed-free mode in its low two bits that tells a
//! remote thread to go to the owning heap's delayed list instead
//! ([`DelayedMode`]), and the owner's side — collecting the list, moving
//! between modes, orphaning a huge page at thread exit — plus the reaper's
//! take and hand-back of the list (`docs/design.md` §4.1, §4.2, §4.5).

use super::{Block, Page};
use crate::fatal::fatal;
use crate::heap::RawHeap;
use crate::sync::{Ordering, spin_hint, yield_thread};
use core::ptr;

/// The delayed-free mode of a page, kept in the low two bits of its
/// `thread_free` word. The values matter: a zeroed word is `UseDelayed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum DelayedMode {
    /// The next remote free goes to the owning heap's delayed list (the page
    /// sits in the heap's full queue and the owner must be told).
    UseDelayed = 0,
    /// Transient: a remote thread is pushing onto the owning heap's delayed
    /// list right now; the heap must not go away until it is done.
    Freeing = 1,
    /// Remote frees go onto the page's own list: either the owner will find
    /// them when it scans the page's queue, or one block of the page is
    /// already on the heap's delayed list.
    NoDelayed = 2,
    /// Sticky: the page has no heap (abandoned, or its heap is being torn
    /// down); remote frees go onto the page list. Only reclaim clears it.
    Never = 3,
}

/// The `thread_free` word packs three things into one pointer-sized atomic,
/// so that every update is a single CAS:
///
/// ```text
///  63          48 47                             2 1    0
/// ┌──────────────┬────────────────────────────────┬──────┐
/// │ list length  │ head block address             │ mode │
/// └──────────────┴────────────────────────────────┴──────┘
/// ```
///
/// Keeping the length in the word lets the owner take the whole list without
/// walking it (a walk would touch, one cache miss at a time, every block the
/// other threads just wrote). Blocks are at least 8-aligned, so the two low
/// bits are free; segments are mapped below 2^48 (checked in `segment`), so
/// the top 16 bits are free, and a page holds at most 8192 blocks.
pub(super) const MODE_MASK: usize = 3;
/// Shift of the list length in a `thread_free` word.
pub(super) const COUNT_SHIFT: u32 = 48;
/// Addresses of blocks are below this (segments are mapped below it).
pub(crate) const ADDRESS_LIMIT: usize = 1 << COUNT_SHIFT;

const _: () = assert!(
    usize::BITS == 64,
    "the thread-free word packs a length above bit 48"
);

impl DelayedMode {
    #[inline(always)]
    pub(super) fn of(word: *mut Block) -> DelayedMode {
        match word.addr() & MODE_MASK {
            0 => DelayedMode::UseDelayed,
            1 => DelayedMode::Freeing,
            2 => DelayedMode::NoDelayed,
            _ => DelayedMode::Never,
        }
    }
}

/// The head block of a `thread_free` word.
#[inline(always)]
pub(super) fn list_of(word: *mut Block) -> *mut Block {
    word.map_addr(|a| a & (ADDRESS_LIMIT - 1) & !MODE_MASK)
}

/// The list length of a `thread_free` word.
#[inline(always)]
pub(super) fn count_of(word: *mut Block) -> u32 {
    (word.addr() >> COUNT_SHIFT) as u32
}

/// A `thread_free` word from a list head, its length and a mode.
#[inline(always)]
pub(super) fn pack(head: *mut Block, count: u32, mode: DelayedMode) -> *mut Block {
    head.map_addr(|a| {
        (a & (ADDRESS_LIMIT - 1) & !MODE_MASK) | ((count as usize) << COUNT_SHIFT) | mode as usize
    })
}

/// `word` with its mode replaced (list and length kept).
#[inline(always)]
pub(super) fn with_mode(word: *mut Block, mode: DelayedMode) -> *mut Block {
    word.map_addr(|a| (a & !MODE_MASK) | mode as usize)
}

/// An empty list in `mode`.
#[inline(always)]
pub(super) fn empty_list(mode: DelayedMode) -> *mut Block {
    pack(ptr::null_mut(), 0, mode)
}

/// What a remote free of a block left to do (see [`Page::free_remote`]).
#[must_use]
pub(crate) enum RemoteFree {
    /// The block is on the page's `thread_free` list: nothing left to do.
    Pushed,
    /// The page asked to be noticed: the caller holds `Freeing` for the
    /// block, and must push it onto this heap's delayed list, then call
    /// [`Page::end_freeing`] with `pushed = true`.
    Delayed(*mut RawHeap),
}

impl Page {
    /// Takes the `thread_free` list for a while, without touching `used`
    /// (a reaper, holding the heap's lock, about to give back the memory
    /// inside the blocks): returns its head and length. The blocks are the
    /// caller's until it hands them back with [`Page::return_remote_chain`];
    /// meanwhile the owner simply sees fewer remote frees.
    pub(crate) fn take_remote_chain(&self) -> (*mut Block, u32) {
        // Relaxed: a cheap emptiness test; the CAS below acquires.
        let mut word = self.thread_free.load(Ordering::Relaxed);
        loop {
            if list_of(word).is_null() {
                return (ptr::null_mut(), 0);
            }
            // AcqRel, as in `take_thread_free`: Acquire pairs with the
            // Release pushes of `free_remote` (the links are visible); the
            // Release half keeps the word's release sequence unbroken.
            match self.thread_free.compare_exchange_weak(
                word,
                empty_list(DelayedMode::of(word)),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (list_of(word), count_of(word)),
                Err(current) => word = current,
            }
        }
    }

    /// Puts a chain taken by [`Page::take_remote_chain`] back in front of
    /// whatever was pushed since, in whatever mode the page is now.
    ///
    /// # Safety
    /// `head`…`tail` is a chain of `count` blocks taken from this page's
    /// `thread_free` and still owned by the caller.
    pub(crate) unsafe fn return_remote_chain(
        &self,
        head: *mut Block,
        tail: *mut Block,
        count: u32,
    ) {
        // Relaxed: only the starting guess for the CAS loop.
        let mut word = self.thread_free.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is ours until the CAS publishes it.
            unsafe { Block::set_next(tail, list_of(word)) };
            let desired = pack(head, count_of(word) + count, DelayedMode::of(word));
            // Release pairs with the AcqRel take of the owner (the links we
            // wrote must be visible to it), as a remote free's push does.
            match self.thread_free.compare_exchange_weak(
                word,
                desired,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(current) => word = current,
            }
        }
    }

    /// Takes the whole `thread_free` list onto `local_free` and lowers `used`
    /// by its length.
    ///
    /// # Safety
    /// Owner only (or the exclusive holder of an abandoned page).
    pub(crate) unsafe fn collect_thread_free(&self) {
        let taken = self.take_thread_free();
        if !taken.is_null() {
            // SAFETY: owner only (caller); the taken blocks are ours.
            unsafe { self.splice_local(taken) };
        }
    }

    /// Takes the whole `thread_free` list (keeping the mode bits), lowers
    /// `used` by its length, and returns its head (null if it was empty).
    /// Owner only (or the exclusive holder of an abandoned page).
    pub(super) fn take_thread_free(&self) -> *mut Block {
        // Relaxed: a cheap emptiness test; the CAS below acquires.
        let mut word = self.thread_free.load(Ordering::Relaxed);
        loop {
            if list_of(word).is_null() {
                return ptr::null_mut();
            }
            // AcqRel: the Acquire half pairs with the Release CAS of every
            // push in `free_remote` (all updates of this word are RMWs, so
            // the release sequence carries each pushed block's link); the
            // Release half keeps the mode bits' release sequence unbroken.
            // Acquire on failure: the new value may carry new pushes.
            match self.thread_free.compare_exchange_weak(
                word,
                empty_list(DelayedMode::of(word)),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
        let count = count_of(word);
        let used = self.used.get();
        if count > used || count > self.capacity.get() {
            fatal("thread-free list longer than the blocks in use (double free?)");
        }
        self.used.set(used - count);
        list_of(word)
    }

    /// Puts a list of free blocks of this page in front of `local_free`.
    ///
    /// # Safety
    /// Owner only; the blocks are free blocks of this page that we own.
    pub(super) unsafe fn splice_local(&self, list: *mut Block) {
        let local = self.local_free.get();
        if !local.is_null() {
            // SAFETY: the list's blocks are ours (caller); its length is
            // bounded by the page's capacity (checked when it was taken).
            unsafe {
                let mut tail = list;
                loop {
                    let next = Block::next(tail);
                    if next.is_null() {
                        break;
                    }
                    tail = next;
                }
                Block::set_next(tail, local);
            }
        }
        self.local_free.set(list);
    }

    /// Frees `block` from a thread that does not own the page: one CAS push
    /// onto `thread_free`; or, when the page asks for it (`UseDelayed`), the
    /// first step of the delayed route: the page moves to `Freeing` and the
    /// caller gets the heap to tell ([`RemoteFree::Delayed`]).
    ///
    /// # Safety
    /// `block` is a live block of this page that the caller owns and gives
    /// up; on [`RemoteFree::Delayed`] the caller must finish the route (see
    /// there).
    pub(crate) unsafe fn free_remote(&self, block: *mut Block) -> RemoteFree {
        // Relaxed: only the starting guess for the CAS loop.
        let mut word = self.thread_free.load(Ordering::Relaxed);
        let delayed = loop {
            let mode = DelayedMode::of(word);
            let (desired, delayed) = if mode == DelayedMode::UseDelayed {
                // Claim the right to use the heap; the block is not linked.
                (with_mode(word, DelayedMode::Freeing), true)
            } else {
                #[cfg(not(feature = "secure"))]
                // SAFETY: we own the block until the CAS publishes it.
                unsafe {
                    Block::set_next(block, list_of(word))
                };
                // Secure: encoded with this page's key (no page lookup).
                #[cfg(feature = "secure")]
                // SAFETY: as above; the block is a block of this page.
                unsafe {
                    Block::set_next_in(self, block, list_of(word))
                };
                (pack(block, count_of(word) + 1, mode), false)
            };
            // Release pairs with the AcqRel CAS in `collect_thread_free`
            // (the block's link must be visible to the collector) and with
            // the Acquire load in `try_set_delayed_mode`.
            match self.thread_free.compare_exchange_weak(
                word,
                desired,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break delayed,
                Err(current) => word = current,
            }
        };
        if delayed {
            // SAFETY: we hold `Freeing` for this block (the CAS above).
            unsafe { self.delayed_heap(block) }
        } else {
            RemoteFree::Pushed
        }
    }

    /// The heap a caller holding `Freeing` for `block` must push it to; with
    /// no heap (which the protocol rules out, but a block is never lost),
    /// the block goes onto the page list and the route ends here.
    ///
    /// # Safety
    /// The caller holds `Freeing` on this page for `block`, which it gives up.
    pub(super) unsafe fn delayed_heap(&self, block: *mut Block) -> RemoteFree {
        // We hold `Freeing`: the owner waits for us before it retargets or
        // tears down the heap (`try_set_delayed_mode`), so the heap stays
        // valid until `end_freeing`.
        // Acquire pairs with the Release stores of `heap` (`init`, reclaim).
        let heap = self.heap.load(Ordering::Acquire);
        if heap.is_null() {
            // SAFETY: forwarded from the caller.
            unsafe { self.end_freeing(block, false) };
            return RemoteFree::Pushed;
        }
        RemoteFree::Delayed(heap)
    }

    /// The last step of the delayed route: leaves `Freeing`. `pushed` says
    /// whether the caller pushed `block` onto the heap's delayed list; if
    /// not, the block is linked into the page list instead.
    ///
    /// # Safety
    /// The caller holds `Freeing` on this page for `block`, which it gives
    /// up (to the heap's delayed list already, if `pushed`).
    pub(crate) unsafe fn end_freeing(&self, block: *mut Block, pushed: bool) {
        // Relaxed: starting guess only.
        let mut word = self.thread_free.load(Ordering::Relaxed);
        loop {
            let desired = if pushed {
                with_mode(word, DelayedMode::NoDelayed)
            } else {
                // SAFETY: still ours until the CAS succeeds.
                unsafe { Block::set_next(block, list_of(word)) };
                pack(block, count_of(word) + 1, DelayedMode::NoDelayed)
            };
            // Release pairs with the Acquire load in `try_set_delayed_mode`:
            // an owner that sees `Freeing` gone also sees our heap push.
            match self.thread_free.compare_exchange_weak(
                word,
                desired,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
    }

    /// Frees the block of a huge page from a thread that does not own it.
    /// Returns `None` when the page was orphaned (its owner exited, see
    /// [`Page::try_orphan`]): the caller is then the segment's last user and
    /// must release it. Otherwise the owner must be told through its delayed
    /// list, and releases the segment itself: the caller finishes the
    /// delayed route as for [`Page::free_remote`].
    ///
    /// # Safety
    /// `block` is the live block of this huge page, given up by the caller.
    pub(crate) unsafe fn free_huge_remote(&self, block: *mut Block) -> Option<RemoteFree> {
        // Acquire pairs with the AcqRel CAS of `try_orphan`.
        let mut word = self.thread_free.load(Ordering::Acquire);
        loop {
            if DelayedMode::of(word) == DelayedMode::Never {
                return None;
            }
            // A live huge page is in `UseDelayed` (its one block is still
            // out): claim the delayed route. Release pairs with the Acquire
            // load in `try_set_delayed_mode`; Acquire on failure for the
            // `Never` test above.
            match self.thread_free.compare_exchange_weak(
                word,
                with_mode(word, DelayedMode::Freeing),
                Ordering::Release,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
        // SAFETY: we hold `Freeing` for the block.
        Some(unsafe { self.delayed_heap(block) })
    }

    /// At thread exit, hands a huge page whose block is still out over to
    /// whichever thread frees it: `UseDelayed` (no free yet) → `Never`. On
    /// success the owner must never touch the page or its segment again; on
    /// failure a remote free is already under way and will reach the owner
    /// through its delayed list.
    ///
    /// # Safety
    /// Owner only; the page is a huge page, already taken off every list of
    /// its heap.
    pub(crate) unsafe fn try_orphan(&self) -> bool {
        let idle = empty_list(DelayedMode::UseDelayed);
        // AcqRel: Release pairs with the Acquire load in `free_huge_remote`
        // (the freeing thread unmaps the segment after our last write);
        // Acquire keeps us ordered after any earlier remote CAS we lose to.
        self.thread_free
            .compare_exchange(
                idle,
                empty_list(DelayedMode::Never),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// In a forked child, ends a `Freeing` left by a thread that does not
    /// exist any more (it was between its two CASes at fork time), so the
    /// owner never waits for it. The block it was freeing is leaked.
    ///
    /// # Safety
    /// Only in a forked child, on the only thread, for a page of its heap.
    pub(crate) unsafe fn end_orphaned_freeing(&self) {
        // Relaxed: no other thread exists.
        let word = self.thread_free.load(Ordering::Relaxed);
        if DelayedMode::of(word) == DelayedMode::Freeing {
            // Relaxed: no other thread exists.
            self.thread_free
                .store(with_mode(word, DelayedMode::NoDelayed), Ordering::Relaxed);
        }
    }

    /// The page's current delayed-free mode.
    #[cfg_attr(not(any(test, loom)), allow(dead_code))]
    pub(crate) fn delayed_mode(&self) -> DelayedMode {
        // Acquire pairs with the Release CASes of remote frees.
        DelayedMode::of(self.thread_free.load(Ordering::Acquire))
    }

    /// Moves the page to `mode`, waiting (a few spins) for a remote thread in
    /// `Freeing` to finish; `Never` is left alone unless `override_never`.
    /// Returns false if a remote thread was still `Freeing` after the spins.
    ///
    /// # Safety
    /// Owner only (or the exclusive holder of an abandoned page).
    pub(crate) unsafe fn try_set_delayed_mode(
        &self,
        mode: DelayedMode,
        override_never: bool,
    ) -> bool {
        let mut spins = 0;
        loop {
            // Acquire pairs with the remote's Release CAS that leaves
            // `Freeing`: we must see its heap push once we see it done. The
            // loop can exit without a CAS, so the load itself acquires.
            let word = self.thread_free.load(Ordering::Acquire);
            let current = DelayedMode::of(word);
            if current == DelayedMode::Freeing {
                if spins >= 4 {
                    return false;
                }
                spins += 1;
                spin_hint();
                continue;
            }
            if current == mode || (current == DelayedMode::Never && !override_never) {
                return true;
            }
            // Release: keeps every earlier push's release sequence intact for
            // the collector (it is an RMW, so the sequence continues anyway).
            if self
                .thread_free
                .compare_exchange_weak(
                    word,
                    with_mode(word, mode),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return true;
            }
        }
    }

    /// [`Page::try_set_delayed_mode`] that waits as long as needed.
    ///
    /// # Safety
    /// As [`Page::try_set_delayed_mode`].
    pub(crate) unsafe fn set_delayed_mode(&self, mode: DelayedMode, override_never: bool) {
        // SAFETY: forwarded from the caller.
        while !unsafe { self.try_set_delayed_mode(mode, override_never) } {
            yield_thread();
        }
    }
}
