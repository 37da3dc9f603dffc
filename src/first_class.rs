//! First-class heaps: [`Heap`], a heap of its own for a request, a
//! connection, a query or a compiler pass, dropped all at once with
//! [`Heap::destroy`].
//!
//! A `Heap` is the same structure as a thread's default heap (the same fast
//! paths, the same pages and segments), created on demand, registered like
//! the thread heaps (so its idle memory is reaped and `stats()` counts it),
//! and torn down on request. See `docs/design.md` §8.

use crate::free::free;
use crate::global::{allocate_in, reallocate_in};
use crate::heap;
use crate::thread;
use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

/// A first-class heap: allocate into it, free blocks one by one from any
/// thread, or drop everything at once with [`Heap::destroy`].
///
/// ```
/// use allocator_api2::vec::Vec;
/// use shardalloc::Heap;
///
/// let heap = Heap::new();
/// let mut names: Vec<String, &Heap> = Vec::new_in(&heap);
/// names.push("request 1".to_string());
/// assert_eq!(heap.stats().live_blocks, 1);
/// drop(names); // borrows end here…
/// heap.destroy(); // …so the heap can go, with whatever it still holds
/// ```
///
/// # Threads
///
/// A `Heap` belongs to the thread that created it: it is neither `Send` nor
/// `Sync`, so its fast paths run on that thread with no atomic operation
/// (its slow paths take the heap's own lock, which another thread holds
/// only for a short pass giving idle memory back), and a collection
/// allocating from it (which holds a `&Heap`) cannot leave the thread
/// either. Each form below compiles with a type that is `Send` and `Sync`
/// (the last example), so it can fail only on the bound it names (error
/// E0277, an unsatisfied trait bound; stable rustdoc does not check the
/// code, the compiling twin is what pins the reason):
///
/// ```compile_fail,E0277
/// // `Heap` is not `Send`: it cannot move to another thread.
/// let heap = shardalloc::Heap::new();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(heap));
/// });
/// ```
///
/// ```compile_fail,E0277
/// // `Heap` is not `Sync`: another thread cannot use it through a borrow
/// // (scoped, so the borrow outlives the thread and only `Sync` is missing).
/// let heap = shardalloc::Heap::new();
/// std::thread::scope(|s| {
///     s.spawn(|| drop(&heap));
/// });
/// ```
///
/// ```compile_fail,E0277
/// // So a collection in the heap (which holds a `&Heap`) stays on the
/// // thread too.
/// let heap = shardalloc::Heap::new();
/// let v = allocator_api2::vec::Vec::<u8, _>::new_in(&heap);
/// std::thread::scope(|s| {
///     s.spawn(move || drop(v));
/// });
/// ```
///
/// The same three forms with a `Send + Sync` stand-in compile:
///
/// ```
/// let heap = allocator_api2::alloc::Global;
/// std::thread::scope(|s| {
///     s.spawn(move || drop(heap));
/// });
/// let heap = allocator_api2::alloc::Global;
/// std::thread::scope(|s| {
///     s.spawn(|| drop(&heap));
/// });
/// let v = allocator_api2::vec::Vec::<u8, _>::new_in(&heap);
/// std::thread::scope(|s| {
///     s.spawn(move || drop(v));
/// });
/// ```
///
/// A *raw* block of a heap may be freed from any thread with
/// [`shardalloc::free`](crate::free()) (or `ShardAlloc::dealloc`) while the
/// heap exists: the free is the same lock-free remote free as for any block.
///
/// # Destroy, and the rule for frees racing it
///
/// [`Heap::destroy`] gives every page and segment of the heap back at once,
/// in time proportional to its pages, never its blocks. Every block of the
/// heap is gone with it; the borrow checker makes sure no collection that
/// allocates from the heap outlives it:
///
/// ```compile_fail
/// let heap = shardalloc::Heap::new();
/// let mut v = allocator_api2::vec::Vec::new_in(&heap);
/// v.push(1u64);
/// heap.destroy(); // error: `heap` is still borrowed by `v`
/// v.push(2);
/// ```
///
/// The rule for raw blocks freed from other threads: every free of a block
/// of the heap must *happen before* `destroy` (the program orders it, by a
/// join or a channel, as it would order any free before a reuse). Frees of
/// blocks of *other* heaps — the thread's default heap, or another
/// first-class heap of the same thread — may run concurrently with
/// `destroy`: heaps share no page and no segment.
///
/// # Dropping without `destroy`
///
/// Dropping a `Heap` keeps its live blocks valid: they are abandoned exactly
/// as at thread exit, and stay valid until freed, from any thread — so a
/// raw block may even be freed *while* the heap is dropped. Their segments
/// are adopted by the next thread that needs a fresh page of their kind (or
/// calls `collect(true)`), and go back to the OS once emptied. (The blocks
/// do not move into the thread's default heap directly: the abandon path is
/// the one already specified by the loom models, and adoption does the
/// rest; until then the owner's frees of such blocks take the remote path.)
pub struct Heap {
    raw: NonNull<heap::RawHeap>,
    /// Not `Send`, not `Sync`: see the type documentation.
    _owner_thread: PhantomData<*mut ()>,
}

/// A first-class heap could not be created: the OS refused memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapError;

impl fmt::Display for HeapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of memory creating a shardalloc heap")
    }
}

impl std::error::Error for HeapError {}

/// Figures of one [`Heap`] (see [`Heap::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeapStats {
    /// Blocks allocated and not freed (blocks freed by other threads are
    /// taken back first, so this is exact).
    pub live_blocks: usize,
    /// Their usable bytes.
    pub live_bytes: usize,
    /// Pages in use (a huge block has a page of its own).
    pub pages: usize,
    /// Bytes of those pages: what the heap holds, and what its limit caps.
    pub page_bytes: usize,
    /// The most `page_bytes` the heap has held: an upper bound of its peak
    /// live bytes, tracked without touching the allocation fast path.
    pub peak_page_bytes: usize,
    /// The limit set with [`Heap::set_limit`].
    pub limit: Option<usize>,
}

impl Heap {
    /// A new, empty heap owned by the calling thread.
    ///
    /// Aborts through [`std::alloc::handle_alloc_error`] if the OS refuses
    /// the few KiB a heap needs, like the standard collections; see
    /// [`Heap::try_new`].
    pub fn new() -> Heap {
        match Heap::try_new() {
            Ok(heap) => heap,
            Err(HeapError) => std::alloc::handle_alloc_error(Layout::new::<heap::RawHeap>()),
        }
    }

    /// A new, empty heap owned by the calling thread, or an error if the OS
    /// refuses memory.
    pub fn try_new() -> Result<Heap, HeapError> {
        let raw = NonNull::new(thread::new_first_class_heap()).ok_or(HeapError)?;
        Ok(Heap {
            raw,
            _owner_thread: PhantomData,
        })
    }

    /// Caps the heap's page memory ([`HeapStats::page_bytes`]) at `bytes`
    /// (`None`: no cap). An allocation that would need a page or a huge
    /// block beyond the cap fails cleanly — null from [`Heap::alloc`],
    /// `AllocError` through the `Allocator` interface — and nothing else
    /// changes. Pages are 64 KiB to 4 MiB, so the cap has that granularity;
    /// lowering it below what the heap holds frees nothing, it only refuses
    /// growth.
    pub fn set_limit(&self, bytes: Option<usize>) {
        // SAFETY: our heap, on its owner thread (`Heap` is not `Send`).
        unsafe { self.raw.as_ref() }.set_limit(bytes.unwrap_or(usize::MAX));
    }

    /// Allocates a block for `layout`; null when out of memory or beyond the
    /// heap's limit. A zero-size layout gets a real (minimum-size) block.
    #[inline]
    pub fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our heap, on its owner thread.
        unsafe {
            allocate_in(
                self.raw.as_ptr(),
                layout.size().max(1),
                layout.align(),
                false,
            )
        }
    }

    /// Like [`Heap::alloc`], with the first `layout.size()` bytes zeroed
    /// (the rest of the block, up to [`usable_size`](crate::usable_size),
    /// may hold a former block's bytes).
    #[inline]
    pub fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our heap, on its owner thread.
        unsafe {
            allocate_in(
                self.raw.as_ptr(),
                layout.size().max(1),
                layout.align(),
                true,
            )
        }
    }

    /// Frees a block; null is accepted and ignored. (Any thread may free a
    /// block of any heap with [`shardalloc::free`](crate::free()); this is the
    /// same call.)
    ///
    /// # Safety
    /// `ptr` is null or a live block from this allocator.
    #[inline]
    pub unsafe fn dealloc(&self, ptr: *mut u8) {
        // SAFETY: forwarded from the caller.
        unsafe { free(ptr) }
    }

    /// Resizes a block allocated with `layout` to `new_size` bytes, in place
    /// when it fits; a block that moves, moves into this heap. Null (the old
    /// block untouched) when out of memory or beyond the limit.
    ///
    /// # Safety
    /// `ptr` is a live block from this allocator allocated with `layout`;
    /// `new_size` is nonzero and, rounded up to `layout.align()`, at most
    /// `isize::MAX`.
    pub unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller; our heap, on its owner thread.
        unsafe { reallocate_in(self.raw.as_ptr(), ptr, layout, new_size) }
    }

    /// Releases all of the heap's memory at once, every block in it
    /// included (see the type documentation for the rule on frees from
    /// other threads). Time is proportional to the heap's pages.
    pub fn destroy(self) {
        let raw = self.raw.as_ptr();
        core::mem::forget(self);
        // SAFETY: our heap, on its owner thread, consumed: no borrow of it
        // (and so no collection allocating from it) is left.
        unsafe { thread::drop_first_class_heap(raw, true) };
    }

    /// The heap's figures. Takes back blocks other threads freed into it
    /// first, so the counts are exact.
    pub fn stats(&self) -> HeapStats {
        // SAFETY: our heap, on its owner thread.
        let heap = unsafe { self.raw.as_ref() };
        // SAFETY: as above.
        let (pages, live_blocks, live_bytes) = unsafe { heap.block_counts() };
        let limit = heap.limit();
        HeapStats {
            live_blocks,
            live_bytes,
            pages,
            page_bytes: heap.page_bytes(),
            peak_page_bytes: heap.peak_page_bytes(),
            limit: (limit != usize::MAX).then_some(limit),
        }
    }

    /// Whether `ptr` points into one of the heap's pages in use (a block of
    /// this heap, live or free, or a byte inside one). Any pointer may be
    /// asked about; O(segments of the heap).
    pub fn contains(&self, ptr: *const u8) -> bool {
        // SAFETY: our heap, on its owner thread.
        unsafe { self.raw.as_ref().contains(ptr.addr()) }
    }

    /// Calls `f(block, usable_size)` for every live block of the heap.
    ///
    /// Takes `&mut self`: nothing can allocate from or free into the heap
    /// while the visit runs (a collection allocating from it holds a
    /// `&Heap`, so it must be gone, or the visit must happen where no such
    /// borrow is alive). `f` may read the blocks, and may call
    /// [`shardalloc::stats`](crate::stats()) (which counts this heap too).
    ///
    /// Frees by *other* threads are not held off: a block whose free by
    /// another thread is under way while the visit runs may still be
    /// reported (it is live until its free lands on the page's list), and
    /// reading it then races with that free as any read of a block being
    /// freed does. Order such frees before the visit to see an exact set.
    pub fn visit_blocks(&mut self, mut f: impl FnMut(NonNull<u8>, usize)) {
        // SAFETY: our heap, on its owner thread; `&mut self` keeps every
        // allocation and local free of the heap out until we return.
        unsafe {
            self.raw.as_ref().visit_blocks(|block, size| {
                if let Some(block) = NonNull::new(block) {
                    f(block, size);
                }
            });
        }
    }
}

impl Default for Heap {
    fn default() -> Heap {
        Heap::new()
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        // SAFETY: our heap, on its owner thread, never used again; its live
        // blocks stay valid (abandoned, see the type documentation).
        unsafe { thread::drop_first_class_heap(self.raw.as_ptr(), false) };
    }
}

impl fmt::Debug for Heap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heap")
            .field("address", &self.raw)
            .finish_non_exhaustive()
    }
}

/// A dangling, aligned pointer for zero-size allocations.
fn dangling(layout: Layout) -> NonNull<u8> {
    // A nonzero power of two: never null.
    NonNull::new(ptr::without_provenance_mut(layout.align())).unwrap_or(NonNull::dangling())
}

#[cfg(feature = "allocator-api2")]
mod allocator_api {
    use super::{Heap, dangling};
    use crate::free::{free, usable_size};
    use crate::global::{allocate_in, reallocate_in};
    use allocator_api2::alloc::{AllocError, Allocator};
    use core::alloc::Layout;
    use core::ptr::{self, NonNull};

    /// The block as the slice `Allocator` returns: its usable size.
    fn block(ptr: *mut u8) -> Result<NonNull<[u8]>, AllocError> {
        let ptr = NonNull::new(ptr).ok_or(AllocError)?;
        // SAFETY: a live block just returned by the allocator.
        let len = unsafe { usable_size(ptr.as_ptr()) };
        Ok(NonNull::slice_from_raw_parts(ptr, len))
    }

    /// Moves a block into a new one of `new` (a different alignment, or a
    /// reallocation that must not stay in place).
    ///
    /// # Safety
    /// As for `Allocator::grow`/`shrink`, with `old.size() > 0`.
    unsafe fn move_block(
        heap: &Heap,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let moved = heap.allocate(new)?;
        // SAFETY: both live, distinct, at least this long.
        unsafe {
            ptr::copy_nonoverlapping(
                ptr.as_ptr(),
                moved.cast::<u8>().as_ptr(),
                old.size().min(new.size()),
            );
            free(ptr.as_ptr());
        }
        Ok(moved)
    }

    // SAFETY: blocks are at least `layout.size()` bytes (the reported length
    // is the block's usable size), aligned to `layout.align()`, and stay
    // valid until deallocated or the heap is destroyed — which needs the
    // heap by value, so no `&Heap` (and no collection holding one) is alive
    // then. `&Heap` is neither `Send` nor `Sync`, so every call runs on the
    // heap's owner thread. Copies of `&Heap` are the same allocator.
    // Zero-size requests get a dangling aligned pointer and are never
    // passed on.
    unsafe impl Allocator for &Heap {
        #[inline]
        fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
            if layout.size() == 0 {
                return Ok(NonNull::slice_from_raw_parts(dangling(layout), 0));
            }
            // SAFETY: our heap, on its owner thread.
            block(unsafe { allocate_in(self.raw.as_ptr(), layout.size(), layout.align(), false) })
        }

        #[inline]
        fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
            if layout.size() == 0 {
                return Ok(NonNull::slice_from_raw_parts(dangling(layout), 0));
            }
            // SAFETY: our heap, on its owner thread.
            let ptr =
                unsafe { allocate_in(self.raw.as_ptr(), layout.size(), layout.align(), true) };
            // Only the requested bytes are zeroed (the rest of the block may
            // hold a former block's bytes), so only they are reported: the
            // trait promises that the whole returned slice reads as zero.
            let ptr = NonNull::new(ptr).ok_or(AllocError)?;
            Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
        }

        #[inline]
        unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
            if layout.size() != 0 {
                // SAFETY: a live block of ours (the trait's contract).
                unsafe { free(ptr.as_ptr()) }
            }
        }

        unsafe fn grow(
            &self,
            ptr: NonNull<u8>,
            old: Layout,
            new: Layout,
        ) -> Result<NonNull<[u8]>, AllocError> {
            if old.size() == 0 {
                return self.allocate(new);
            }
            if new.align() > old.align() {
                // SAFETY: the trait's contract; old.size() > 0.
                return unsafe { move_block(self, ptr, old, new) };
            }
            // SAFETY: a live block of `old`; new.size() ≥ old.size() > 0.
            block(unsafe { reallocate_in(self.raw.as_ptr(), ptr.as_ptr(), old, new.size()) })
        }

        unsafe fn grow_zeroed(
            &self,
            ptr: NonNull<u8>,
            old: Layout,
            new: Layout,
        ) -> Result<NonNull<[u8]>, AllocError> {
            // SAFETY: forwarded (the trait's contract).
            let grown = unsafe { self.grow(ptr, old, new) }?.cast::<u8>();
            // SAFETY: the block is at least new.size() long; the bytes past
            // old.size() are ours to zero.
            unsafe {
                grown
                    .as_ptr()
                    .add(old.size())
                    .write_bytes(0, new.size() - old.size());
            }
            // As in `allocate_zeroed`: the slice reported is the part known
            // to be zero past `old.size()`, not the whole usable block.
            Ok(NonNull::slice_from_raw_parts(grown, new.size()))
        }

        unsafe fn shrink(
            &self,
            ptr: NonNull<u8>,
            old: Layout,
            new: Layout,
        ) -> Result<NonNull<[u8]>, AllocError> {
            if new.size() == 0 {
                // SAFETY: the trait's contract.
                unsafe { self.deallocate(ptr, old) };
                return Ok(NonNull::slice_from_raw_parts(dangling(new), 0));
            }
            if new.align() > old.align() {
                // SAFETY: the trait's contract; old.size() ≥ new.size() > 0.
                return unsafe { move_block(self, ptr, old, new) };
            }
            // SAFETY: a live block of `old`; new.size() > 0.
            block(unsafe { reallocate_in(self.raw.as_ptr(), ptr.as_ptr(), old, new.size()) })
        }
    }
}
