//! The `shardalloc_*` API of `include/shardalloc.h`, for programs that link
//! the library: the allocation functions under their own names (usable
//! next to another `malloc`), `shardalloc_collect`, options, statistics, and
//! first-class heaps.

use crate::{allocate, set_errno};
use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_void};
use core::ptr;
use libc::{EINVAL, ENOMEM};
use shardalloc_core::options::{self, ResetMode};
use shardalloc_core::{Heap, ShardAlloc};

/// `malloc` under shardalloc's name.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_malloc(size: usize) -> *mut c_void {
    crate::malloc(size)
}

/// `free` under shardalloc's name.
///
/// # Safety
/// `ptr` is null or a live block of this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_free(ptr: *mut c_void) {
    // SAFETY: forwarded from the caller.
    unsafe { crate::free(ptr) }
}

/// `calloc` under shardalloc's name.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_calloc(count: usize, size: usize) -> *mut c_void {
    crate::calloc(count, size)
}

/// `realloc` under shardalloc's name (glibc's rules: size 0 frees).
///
/// # Safety
/// `ptr` is null or a live block of this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded from the caller.
    unsafe { crate::realloc(ptr, size) }
}

/// `size` bytes aligned to `align`, which must be a power of two (else null
/// with `errno = EINVAL`); null with `errno = ENOMEM` when out of memory.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(EINVAL);
        return ptr::null_mut();
    }
    allocate(size, align, false)
}

/// `malloc_usable_size` under shardalloc's name.
///
/// # Safety
/// `ptr` is null or a live block of this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_usable_size(ptr: *const c_void) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { shardalloc_core::usable_size(ptr.cast()) }
}

/// `shardalloc::collect(force != 0)`.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_collect(force: c_int) {
    shardalloc_core::collect(force != 0);
}

/// Sets the reset delay; 0 on success, `EINVAL` above 60 000 ms.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_set_reset_delay_ms(ms: u64) -> c_int {
    match options::set_reset_delay_ms(ms) {
        Ok(()) => 0,
        Err(_) => EINVAL,
    }
}

/// The reset delay in milliseconds.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_reset_delay_ms() -> u64 {
    options::reset_delay_ms()
}

/// Sets the reset mode: 0 `MADV_DONTNEED`, 1 `MADV_FREE`; 0 on success,
/// `EINVAL` for another value.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_set_reset_mode(mode: c_int) -> c_int {
    match mode {
        0 => options::set_reset_mode(ResetMode::DontNeed),
        1 => options::set_reset_mode(ResetMode::Free),
        _ => return EINVAL,
    }
    0
}

/// The reset mode: 0 `MADV_DONTNEED`, 1 `MADV_FREE`.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_reset_mode() -> c_int {
    c_int::from(options::reset_mode() == ResetMode::Free)
}

/// Sets the per-thread pending-reset limit in bytes.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_set_pending_reset_limit(bytes: usize) {
    options::set_pending_reset_limit(bytes);
}

/// The per-thread pending-reset limit in bytes.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_pending_reset_limit() -> usize {
    options::pending_reset_limit()
}

/// Sets the segment cache size; 0 on success, `EINVAL` above 16.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_set_segment_cache(segments: usize) -> c_int {
    match options::set_segment_cache(segments) {
        Ok(()) => 0,
        Err(_) => EINVAL,
    }
}

/// The segment cache size.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_segment_cache() -> usize {
    options::segment_cache()
}

/// Sets how many segments of a kind a heap fills with 4 KiB pages before
/// the next is backed by transparent huge pages (0: every one); 0 on
/// success, `EINVAL` above 64.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_set_dense_segments(segments: usize) -> c_int {
    match options::set_dense_segments(segments) {
        Ok(()) => 0,
        Err(_) => EINVAL,
    }
}

/// See [`shardalloc_set_dense_segments`].
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_dense_segments() -> usize {
    options::dense_segments()
}

/// Turns transparent huge pages for huge blocks on (nonzero) or off.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_set_huge_os_pages(enabled: c_int) {
    options::set_huge_os_pages(enabled != 0);
}

/// Whether huge blocks ask for transparent huge pages (1) or not (0).
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_huge_os_pages() -> c_int {
    c_int::from(options::huge_os_pages())
}

/// `struct shardalloc_stats` of the header: `shardalloc::Stats` with
/// `resident` as `SIZE_MAX` when unknown.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CStats {
    /// Bytes in live blocks.
    pub live: usize,
    /// Block memory that may be resident.
    pub committed: usize,
    /// Address space mapped now.
    pub reserved: usize,
    /// Bytes given back with `madvise` so far.
    pub reset: usize,
    /// Segments of exited threads waiting to be reclaimed.
    pub abandoned_segments: usize,
    /// Empty segments kept for reuse.
    pub cached_segments: usize,
    /// `mmap` calls so far.
    pub mmap_calls: usize,
    /// `munmap` calls so far.
    pub munmap_calls: usize,
    /// `madvise` calls so far.
    pub madvise_calls: usize,
    /// Resident memory of the process, `SIZE_MAX` if unknown.
    pub resident: usize,
    /// Threads whose heap has no exit hook.
    pub threads_without_exit_hook: usize,
    /// Registered heaps.
    pub heaps: usize,
}

/// Fills `*out` with the process-wide figures (no allocation).
///
/// # Safety
/// `out` is valid for writing a `struct shardalloc_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_get_stats(out: *mut CStats) {
    let s = shardalloc_core::stats();
    let c = CStats {
        live: s.live,
        committed: s.committed,
        reserved: s.reserved,
        reset: s.reset,
        abandoned_segments: s.abandoned_segments,
        cached_segments: s.cached_segments,
        mmap_calls: s.mmap_calls,
        munmap_calls: s.munmap_calls,
        madvise_calls: s.madvise_calls,
        resident: s.resident.unwrap_or(usize::MAX),
        threads_without_exit_hook: s.threads_without_exit_hook,
        heaps: s.heaps,
    };
    // SAFETY: `out` is valid for writes (caller).
    unsafe { out.write(c) };
}

/// `shardalloc::print_stats()`: the figures on standard error.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_print_stats() {
    shardalloc_core::print_stats();
}

// First-class heaps. A `shardalloc_heap_t *` is a `Heap` in a block of the
// creating thread's default heap. `Heap` is neither `Send` nor `Sync`: the
// handle belongs to the thread that made it (every `shardalloc_heap_*`
// call on it must be made there), while its blocks may be freed from any
// thread with `free` / `shardalloc_free` as long as the heap exists.

/// Creates a heap owned by the calling thread; null (`errno = ENOMEM`) when
/// the OS refuses memory.
#[unsafe(no_mangle)]
pub extern "C" fn shardalloc_heap_new() -> *mut Heap {
    let Ok(heap) = Heap::try_new() else {
        set_errno(ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: a nonzero layout.
    let handle = unsafe { ShardAlloc.alloc(Layout::new::<Heap>()) }.cast::<Heap>();
    if handle.is_null() {
        heap.destroy();
        set_errno(ENOMEM);
        return ptr::null_mut();
    }
    // SAFETY: a fresh block, large and aligned enough for a `Heap`.
    unsafe { handle.write(heap) };
    handle
}

/// The `Heap` of a handle.
///
/// # Safety
/// `heap` came from [`shardalloc_heap_new`] on the calling thread and was
/// not destroyed or deleted.
unsafe fn heap_ref<'a>(heap: *mut Heap) -> &'a Heap {
    // SAFETY: a live handle (caller).
    unsafe { &*heap }
}

/// Allocates `size` bytes (16-byte aligned from 16 B) from `heap`; null
/// with `errno = ENOMEM` when out of memory.
///
/// # Safety
/// `heap` is a live handle of the calling thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_heap_malloc(heap: *mut Heap, size: usize) -> *mut c_void {
    // SAFETY: forwarded from the caller.
    unsafe { heap_alloc(heap, size, crate::MALLOC_ALIGN, false) }
}

/// Allocates `size` bytes aligned to `align` (a power of two, else
/// `EINVAL`) from `heap`.
///
/// # Safety
/// `heap` is a live handle of the calling thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_heap_malloc_aligned(
    heap: *mut Heap,
    size: usize,
    align: usize,
) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: forwarded from the caller.
    unsafe { heap_alloc(heap, size, align, false) }
}

/// `count * size` zeroed bytes from `heap`; null with `errno = ENOMEM` on
/// overflow or when out of memory.
///
/// # Safety
/// `heap` is a live handle of the calling thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_heap_calloc(
    heap: *mut Heap,
    count: usize,
    size: usize,
) -> *mut c_void {
    let Some(total) = count.checked_mul(size) else {
        set_errno(ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: forwarded from the caller.
    unsafe { heap_alloc(heap, total, crate::MALLOC_ALIGN, true) }
}

/// # Safety
/// `heap` is a live handle of the calling thread; `align` a power of two.
unsafe fn heap_alloc(heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size.max(1), align) else {
        set_errno(ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: a live handle of the calling thread (caller).
    let heap = unsafe { heap_ref(heap) };
    let block = if zero {
        heap.alloc_zeroed(layout)
    } else {
        heap.alloc(layout)
    };
    if block.is_null() {
        set_errno(ENOMEM);
    }
    block.cast()
}

/// Resizes a block of `heap` (a block that moves, moves into `heap`): null
/// `ptr` allocates, size 0 frees and returns null, failure leaves the block
/// intact and returns null with `errno = ENOMEM`.
///
/// # Safety
/// `heap` is a live handle of the calling thread; `ptr` is null or a live
/// block of this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_heap_realloc(
    heap: *mut Heap,
    ptr: *mut c_void,
    size: usize,
) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: forwarded from the caller.
        return unsafe { shardalloc_heap_malloc(heap, size) };
    }
    if size == 0 {
        // SAFETY: a live block (caller).
        unsafe { crate::free(ptr) };
        return ptr::null_mut();
    }
    // SAFETY: a live block (caller).
    let usable = unsafe { shardalloc_core::usable_size(ptr.cast()) };
    let (Ok(old), Ok(_)) = (
        Layout::from_size_align(usable, crate::MALLOC_ALIGN),
        Layout::from_size_align(size, crate::MALLOC_ALIGN),
    ) else {
        set_errno(ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: a live handle of the calling thread (caller); `ptr` is a live
    // block whose usable size is `old.size()`, and `size` is nonzero and
    // representable (checked above).
    let block = unsafe { heap_ref(heap).realloc(ptr.cast(), old, size) };
    if block.is_null() {
        set_errno(ENOMEM);
    }
    block.cast()
}

/// Frees a block (of `heap` or of any other heap; null is ignored).
///
/// # Safety
/// `ptr` is null or a live block of this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_heap_free(heap: *mut Heap, ptr: *mut c_void) {
    let _ = heap;
    // SAFETY: forwarded from the caller.
    unsafe { crate::free(ptr) }
}

/// Whether `ptr` points into one of `heap`'s pages in use (1) or not (0).
///
/// # Safety
/// `heap` is a live handle of the calling thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_heap_contains(heap: *mut Heap, ptr: *const c_void) -> c_int {
    // SAFETY: forwarded from the caller.
    c_int::from(unsafe { heap_ref(heap) }.contains(ptr.cast()))
}

/// Takes the `Heap` out of its handle and frees the handle.
///
/// # Safety
/// `heap` is a live handle of the calling thread; it is dead afterwards.
unsafe fn take(heap: *mut Heap) -> Heap {
    // SAFETY: a live handle (caller), read once and then freed.
    unsafe {
        let owned = heap.read();
        shardalloc_core::free(heap.cast());
        owned
    }
}

/// Releases the heap and every block still in it at once. Frees of its
/// blocks by other threads must happen before this call.
///
/// # Safety
/// `heap` is a live handle of the calling thread; it and every block of the
/// heap are dead afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_heap_destroy(heap: *mut Heap) {
    if heap.is_null() {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { take(heap) }.destroy();
}

/// Deletes the heap but keeps its live blocks valid: they stay usable and
/// are freed later with `free` from any thread (their memory is adopted by
/// the threads that allocate next).
///
/// # Safety
/// `heap` is a live handle of the calling thread; it is dead afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardalloc_heap_delete(heap: *mut Heap) {
    if heap.is_null() {
        return;
    }
    // SAFETY: forwarded from the caller.
    drop(unsafe { take(heap) });
}
