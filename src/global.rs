//! `ShardAlloc`, the global allocator, and the public free functions. This
//! module only routes: size and alignment pick the fast path, the heap's
//! slow path or a huge segment; a pointer's segment picks the local or the
//! remote free.

use crate::free::{free, free_current, usable_size};
use crate::heap::{RawHeap, zero_block};
use crate::os::{self, OS_PAGE_SIZE};
use crate::page::Block;
use crate::segment::Segment;
use crate::size_class::{MIN_ALIGN, PageKind, SMALL_SIZE_MAX, bin_of, fitting_size};
use crate::thread;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

/// The shardalloc global allocator.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;
/// ```
///
/// The fast paths (an allocation served from the page the heap allocates
/// from, a free by the block's owner thread) and every free by another
/// thread are lock-free. A slow path (a fresh page, a page that empties)
/// takes the thread's own heap lock, which another thread holds only for a
/// bounded pass giving an idle heap's memory back (`docs/design.md` §4.5):
/// the owner then waits, spinning briefly and then yielding. `alloc`
/// returns null (never panics or aborts) when memory runs out or the
/// request is absurd. `dealloc` ignores the layout's size: the block's page
/// knows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardAlloc;

// SAFETY: `alloc` returns blocks of at least `layout.size()` bytes aligned to
// `layout.align()` (size classes are chosen by `fitting_size`, which the
// `size_class` tests check for every size and alignment; larger alignments
// get their own segment placed at the alignment), or null. Blocks are never
// handed out twice while live: each sits on exactly one free list until
// popped. `dealloc`/`realloc` accept exactly the pointers `alloc` returned.
// Nothing here unwinds: internal failures abort through `fatal`.
unsafe impl GlobalAlloc for ShardAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        allocate(layout.size(), layout.align(), false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        allocate(layout.size(), layout.align(), true)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a live block of ours (never null, by
        // `GlobalAlloc`'s contract, so no test for it).
        unsafe { free_current(ptr) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a live block of ours allocated with `layout`.
        unsafe { reallocate(ptr, layout, new_size) }
    }
}

/// Allocates `size` bytes aligned to `align` (a power of two) from the
/// calling thread's heap; null when out of memory.
#[inline(always)]
fn allocate(size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: the thread's own heap (or the static empty heap).
    unsafe { allocate_in(thread::current_heap(), size, align, zero) }
}

/// Allocates `size` bytes aligned to `align` (a power of two) from `heap`;
/// null when out of memory.
///
/// # Safety
/// `heap` is a heap of the calling thread, or the static empty heap (which
/// stands for the thread's default heap, made on the slow path).
#[inline(always)]
pub(crate) unsafe fn allocate_in(
    heap: *mut RawHeap,
    size: usize,
    align: usize,
    zero: bool,
) -> *mut u8 {
    // Secure: no 8 B blocks, so every block has room for its freed canary.
    #[cfg(feature = "secure")]
    let size = size.max(MIN_ALIGN);
    if size <= SMALL_SIZE_MAX && align <= MIN_ALIGN {
        // Blocks ≥ 16 B are 16-aligned; the 8 B class only 8-aligned.
        let size = size.max(align);
        // SAFETY: `heap` is the thread's heap or the static empty heap, and
        // the direct table of either holds real pages or the empty-page
        // sentinel. Only `free` is read before we know the page is real
        // (the sentinel's `free` is null); a real page is ours alone.
        unsafe {
            let page = (*heap).direct_page(size);
            let block = (*page).free.get();
            if !block.is_null() {
                #[cfg(not(feature = "secure"))]
                (*page).free.set(Block::next(block));
                #[cfg(feature = "secure")]
                (*page).free.set(Block::next_in(&*page, block));
                (*page).used.set((*page).used.get() + 1);
                #[cfg(feature = "secure")]
                crate::secure::clear_canary(block);
                if zero {
                    zero_block(page, block, size);
                }
                return block.cast();
            }
        }
    }
    allocate_slow(heap, size, align, zero)
}

#[cold]
#[inline(never)]
fn allocate_slow(heap: *mut RawHeap, size: usize, align: usize, zero: bool) -> *mut u8 {
    if heap == thread::empty_heap() {
        return first_allocation(size, align, zero);
    }
    // SAFETY: a real heap of the calling thread.
    unsafe {
        match fitting_size(size, align) {
            Some(fit) => {
                // Above the direct table (which `allocate` already tried
                // for the rest): the size class's first page, which the page
                // search keeps at the front, usually has a block.
                let page = if size > SMALL_SIZE_MAX || align > MIN_ALIGN {
                    (*heap).first_page(bin_of(fit))
                } else {
                    ptr::null_mut()
                };
                if !page.is_null() {
                    let block = (*page).pop();
                    if !block.is_null() {
                        if zero {
                            zero_block(page, block, fit);
                        }
                        return block.cast();
                    }
                }
                (*heap).malloc_generic(fit, zero)
            }
            None => (*heap).malloc_huge(size, align, zero),
        }
    }
}

/// The calling thread's first allocation from its default heap (or its
/// first after the heap's teardown): makes the heap, then tries its fast
/// path, since the heap may be a parked one (`heap/park.rs`) whose pages
/// already hold free blocks, before the generic path. Apart from
/// [`allocate_slow`] so that its common path keeps its short prologue.
#[cold]
#[inline(never)]
fn first_allocation(size: usize, align: usize, zero: bool) -> *mut u8 {
    let heap = thread::init_current();
    if heap.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: the calling thread's own heap, just made or adopted; not the
    // empty heap, so a miss goes to `allocate_slow`'s generic path and
    // comes back here no more.
    unsafe { allocate_in(heap, size, align, zero) }
}

/// # Safety
/// `ptr` is a live block allocated with `layout`; `new_size > 0`.
unsafe fn reallocate(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    // SAFETY: forwarded; the thread's own heap (or the static empty heap).
    unsafe { reallocate_in(thread::current_heap(), ptr, layout, new_size) }
}

/// Resizes a block; a block that has to move moves into `heap`.
///
/// # Safety
/// `ptr` is a live block allocated with `layout`; `new_size > 0`; `heap` as
/// for [`allocate_in`].
pub(crate) unsafe fn reallocate_in(
    heap: *mut RawHeap,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
) -> *mut u8 {
    // SAFETY: a live block (caller).
    let usable = unsafe { usable_size(ptr) };
    if new_size <= usable {
        let segment = Segment::of(ptr);
        // SAFETY: a live block's segment.
        if unsafe { (*segment).kind } == PageKind::Huge {
            // Shrink (or regrow) in place; a shrink hands the tail's memory
            // back to the OS, so nothing is gained by moving.
            if new_size < layout.size() {
                let keep = (new_size + OS_PAGE_SIZE - 1) & !(OS_PAGE_SIZE - 1);
                let tail = usable.saturating_sub(keep) & !(OS_PAGE_SIZE - 1);
                if tail > 0 {
                    // SAFETY: the tail is inside the block and no longer used.
                    unsafe { os::reset(ptr.add(keep), tail) };
                }
            }
            return ptr;
        }
        // A size-classed block (already aligned to `layout.align()`): stay
        // when growing within it, or when shrinking keeps at least half of
        // it. A deeper shrink moves to the smaller class, the only way to
        // give the rest of the block back.
        if new_size >= layout.size() || new_size >= usable / 2 {
            return ptr;
        }
    }
    // Move: the new block honours the alignment for the new size.
    // SAFETY: forwarded from the caller.
    let new = unsafe { allocate_in(heap, new_size, layout.align(), false) };
    if !new.is_null() {
        // SAFETY: both blocks are live, distinct, and at least this long.
        unsafe {
            ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            free(ptr);
        }
    }
    new
}

/// Returns to the OS what can be given back now.
///
/// Always: blocks other threads freed into the calling thread's pages are
/// taken back, and its empty pages go back (after the reset delay). With
/// `force`, also at once: the calling thread's retired pages (empty pages
/// kept for reuse) and pending page memory, abandoned segments whose blocks
/// were all freed, the segment cache, and the pending page memory of every
/// other thread's heap whose lock is free (`docs/design.md`, §6).
pub fn collect(force: bool) {
    let mut heap = thread::current_heap();
    if heap == thread::empty_heap() {
        if !force {
            return;
        }
        heap = thread::init_current();
        if heap.is_null() {
            return;
        }
    }
    // SAFETY: the calling thread's own real heap.
    unsafe { (*heap).collect(force) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_size_of_null_is_zero() {
        // SAFETY: null is allowed.
        assert_eq!(unsafe { usable_size(ptr::null()) }, 0);
    }

    #[test]
    fn small_requests_use_the_class_size() {
        for (size, align, usable) in [
            (1, 1, if cfg!(feature = "secure") { 16 } else { 8 }),
            (8, 16, 16),
            (17, 8, 32),
            (100, 64, 128),
            (1025, 8, 1280),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero layouts; each block is freed once.
            unsafe {
                let p = ShardAlloc.alloc(layout);
                assert_eq!(p.addr() % align, 0);
                assert_eq!(usable_size(p), usable, "size {size} align {align}");
                ShardAlloc.dealloc(p, layout);
            }
        }
    }

    #[test]
    fn realloc_policy() {
        let layout = Layout::from_size_align(600, 8).unwrap();
        // SAFETY: every pointer is live when used and freed once.
        unsafe {
            let p = ShardAlloc.alloc(layout);
            p.write_bytes(3, 600);
            assert_eq!(
                ShardAlloc.realloc(p, layout, 640),
                p,
                "grows within its 640 B class"
            );
            let q = ShardAlloc.realloc(p, Layout::from_size_align(640, 8).unwrap(), 100);
            assert_ne!(q, p, "a deep shrink moves to the smaller class");
            assert!((0..100).all(|i| q.add(i).read() == 3));
            ShardAlloc.dealloc(q, Layout::from_size_align(100, 8).unwrap());

            let big = Layout::from_size_align(8 << 20, 8).unwrap();
            let h = ShardAlloc.alloc(big);
            h.write_bytes(7, 8 << 20);
            assert_eq!(
                ShardAlloc.realloc(h, big, 2 << 20),
                h,
                "huge blocks shrink in place"
            );
            assert!((0..(2 << 20)).step_by(4096).all(|i| h.add(i).read() == 7));
            ShardAlloc.dealloc(h, Layout::from_size_align(2 << 20, 8).unwrap());
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_after_reuse() {
        let layout = Layout::from_size_align(256, 16).unwrap();
        // SAFETY: every pointer is live when used and freed once.
        unsafe {
            let dirty: Vec<*mut u8> = (0..64).map(|_| ShardAlloc.alloc(layout)).collect();
            for &p in &dirty {
                p.write_bytes(0xFF, 256);
                ShardAlloc.dealloc(p, layout);
            }
            for _ in 0..64 {
                let p = ShardAlloc.alloc_zeroed(layout);
                assert!((0..256).all(|i| p.add(i).read() == 0));
                ShardAlloc.dealloc(p, layout);
            }
        }
    }
}
