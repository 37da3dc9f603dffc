//! # libshardalloc: a C `malloc` drop-in
//!
//! The shardalloc core behind C's allocation functions, with glibc 2.36's
//! documented semantics, built as `libshardalloc.so` (for `LD_PRELOAD` or
//! linking) and `libshardalloc.a`:
//!
//! ```sh
//! cargo build --release -p shardalloc-capi
//! LD_PRELOAD=target/release/libshardalloc.so some-program
//! ```
//!
//! * this module: the standard entry points (`malloc`, `free`, `calloc`,
//!   `realloc`, `reallocarray`, `posix_memalign`, `aligned_alloc`,
//!   `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`) and glibc's
//!   `__libc_*` aliases;
//! * `glibc`: glibc's extension API (`malloc_trim`, `malloc_stats`,
//!   `malloc_info`, `mallinfo`, `mallinfo2`, `mallopt`);
//! * `prefixed`: the `shardalloc_*` API of `include/shardalloc.h`
//!   (options, statistics, first-class heaps).
//!
//! Rules for every function here: no allocation through anything but the
//! core, no locks, no panics (a panic in an `extern "C"` function would
//! abort). None of them needs the Rust runtime: the core keeps its state in
//! statics and in const-initialised thread-locals without destructors, so
//! the functions work from `ld.so`'s first call on, in other libraries'
//! constructors, and in pthread key destructors after the thread's heap is
//! gone (the core makes a fresh one). The README has the table of every
//! function and what it does here.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};
use libc::{EINVAL, ENOMEM};
use shardalloc_core::ShardAlloc;

pub mod glibc;
pub mod prefixed;
mod text;

/// Rust code of this library (none allocates today) uses the core directly.
#[global_allocator]
static GLOBAL: ShardAlloc = ShardAlloc;

/// Runs the core's once-per-process start-up (which registers its fork
/// handlers with `pthread_atfork`) when the library is loaded, before the
/// program's and most other libraries' constructors. Without it the first
/// allocation would do it, and if that first allocation comes from inside
/// glibc's `pthread_atfork` (whose handler list grows with `malloc` while
/// it holds its lock, e.g. after a constructor registered dozens of
/// handlers before anything allocated), the nested `pthread_atfork`
/// would wait for that lock forever.
///
/// Then, if `SHARDALLOC_PURGE_THREAD=1` asked for it, it starts the purge
/// thread: here, because `pthread_create` calls `malloc` and the allocator
/// never calls `malloc` from inside itself (design §10).
extern "C" fn start_up() {
    let block = malloc(1);
    // SAFETY: a block just returned by `malloc` (or null).
    unsafe { free(block) };
    shardalloc_core::start_purge_thread();
}

// SAFETY: `.init_array` holds pointers to functions the dynamic linker
// (or the C runtime, for the static library) calls once at load time with
// the C ABI; `start_up` is such a function, and needs nothing initialised
// but the core's statics. Priority 90 (sections sort by name): before the
// priorities programs may use (101 and up) and before Rust's own (99), so
// in a program linked with the static library it runs first too.
#[used]
#[unsafe(link_section = ".init_array.00090")]
static START_UP: extern "C" fn() = start_up;

/// The alignment of a plain `malloc` request: blocks of 16 B or more are
/// 16-byte aligned by their size class (glibc's `MALLOC_ALIGNMENT`); the
/// 8 B class, which only requests of 8 B or less get, is 8-byte aligned,
/// which is all such objects need.
const MALLOC_ALIGN: usize = 8;

/// glibc's `MALLOC_ALIGNMENT` on x86-64: the alignment `memalign` and
/// friends give at the least.
const MEMALIGN_MIN: usize = 16;

/// Sets the calling thread's `errno`.
#[inline]
fn set_errno(value: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's errno slot,
    // valid for the thread's life.
    unsafe { *libc::__errno_location() = value };
}

/// The calling thread's `errno`.
#[inline]
fn errno() -> c_int {
    // SAFETY: as in `set_errno`.
    unsafe { *libc::__errno_location() }
}

/// The OS page size (read once; glibc's `sysconf` answers it from the
/// dynamic linker's data, without allocating).
fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    // Relaxed: every thread computes the same value.
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: `sysconf` has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096);
    PAGE.store(page, Ordering::Relaxed);
    page
}

/// Allocates `size` bytes (0 counts as 1, so each call returns a distinct
/// block) aligned to `align` (a power of two); null with `errno = ENOMEM`
/// when out of memory or when the request cannot be represented.
#[inline]
fn allocate(size: usize, align: usize, zero: bool) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size.max(1), align) else {
        set_errno(ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: the layout's size is nonzero.
    let block = unsafe {
        if zero {
            ShardAlloc.alloc_zeroed(layout)
        } else {
            ShardAlloc.alloc(layout)
        }
    };
    if block.is_null() {
        set_errno(ENOMEM);
    }
    block.cast()
}

/// `malloc(3)`: `size` bytes; `malloc(0)` returns a unique pointer. Null
/// with `errno = ENOMEM` on failure.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    allocate(size, MALLOC_ALIGN, false)
}

/// `free(3)`: frees a block of this allocator from any thread; null is
/// ignored; `errno` is preserved.
///
/// # Safety
/// `ptr` is null or a live block returned by this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `__errno_location` returns the calling thread's errno slot,
    // valid for the thread's life; asked once for the save and the restore.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *slot };
    // SAFETY: a live block of ours (caller).
    unsafe { shardalloc_core::free(ptr.cast()) };
    // SAFETY: as above.
    unsafe { *slot = saved };
}

/// `calloc(3)`: `count * size` zeroed bytes; null with `errno = ENOMEM` when
/// the product overflows or memory runs out.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => allocate(total, MALLOC_ALIGN, true),
        None => {
            set_errno(ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `realloc(3)` as glibc does it: a null `ptr` is `malloc(size)`; size 0
/// frees the block and returns null; otherwise the block is resized (in
/// place when it fits) or moved. On failure the block is left intact and
/// null is returned with `errno = ENOMEM`.
///
/// # Safety
/// `ptr` is null or a live block returned by this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: a live block (caller).
        unsafe { free(ptr) };
        return ptr::null_mut();
    }
    // SAFETY: a live block (caller).
    let usable = unsafe { shardalloc_core::usable_size(ptr.cast()) };
    let (Ok(old), Ok(_)) = (
        Layout::from_size_align(usable, MALLOC_ALIGN),
        Layout::from_size_align(size, MALLOC_ALIGN),
    ) else {
        set_errno(ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: `ptr` is a live block whose usable size is `old.size()` (the
    // whole block may be read, so copying that much is in bounds); `size` is
    // nonzero and, rounded up to the alignment, representable (checked
    // above). The core frees the old block only when the move succeeded.
    let block = unsafe { ShardAlloc.realloc(ptr.cast(), old, size) };
    if block.is_null() {
        set_errno(ENOMEM);
    }
    block.cast()
}

/// `reallocarray(3)`: `realloc(ptr, count * size)`, except that an
/// overflowing product fails with `errno = ENOMEM` and leaves the block
/// intact.
///
/// # Safety
/// As for [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: forwarded from the caller.
        Some(total) => unsafe { realloc(ptr, total) },
        None => {
            set_errno(ENOMEM);
            ptr::null_mut()
        }
    }
}

/// The alignment glibc 2.36's `memalign` uses for a requested `align`:
/// at least 16, rounded up to a power of two; `None` (EINVAL) above
/// `SIZE_MAX / 2 + 1`, where no power of two is left.
fn memalign_alignment(align: usize) -> Option<usize> {
    if align <= MEMALIGN_MIN {
        return Some(MEMALIGN_MIN);
    }
    align.checked_next_power_of_two()
}

/// `memalign(3)` as glibc 2.36 does it: `size` bytes aligned to `align`,
/// which is rounded up to a power of two (and to 16 at the least); null
/// with `errno = EINVAL` for an alignment above `SIZE_MAX / 2 + 1`, with
/// `errno = ENOMEM` when memory runs out.
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match memalign_alignment(align) {
        Some(align) => allocate(size, align, false),
        None => {
            set_errno(EINVAL);
            ptr::null_mut()
        }
    }
}

/// `aligned_alloc(3)`: in glibc 2.36 the same function as [`memalign`]
/// (2.38 started rejecting alignments that are not powers of two).
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    memalign(align, size)
}

/// `posix_memalign(3)`: stores a block of `size` bytes aligned to `align`
/// in `*out` and returns 0; returns `EINVAL` when `align` is not a power
/// of two multiple of `sizeof(void *)`, `ENOMEM` when memory runs out
/// (`*out` untouched in both cases). `errno` is not changed.
///
/// # Safety
/// `out` is valid for a pointer-sized write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return EINVAL;
    }
    let saved = errno();
    let block = allocate(size, align.max(MEMALIGN_MIN), false);
    set_errno(saved);
    if block.is_null() {
        return ENOMEM;
    }
    // SAFETY: `out` is valid for writes (caller).
    unsafe { out.write(block) };
    0
}

/// `valloc(3)`: `size` bytes aligned to the page size.
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    allocate(size, page_size(), false)
}

/// `pvalloc(3)`: `size` rounded up to a whole number of pages (one page at
/// the least), aligned to the page size; null with `errno = ENOMEM` when
/// the rounding overflows.
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_add(page - 1) {
        Some(end) => allocate(end & !(page - 1), page, false),
        None => {
            set_errno(ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `malloc_usable_size(3)`: the bytes of the block that may be used (at
/// least what was asked for); 0 for null.
///
/// # Safety
/// `ptr` is null or a live block returned by this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { shardalloc_core::usable_size(ptr.cast_const().cast()) }
}

// glibc's internal names for the same functions, which some programs and
// libraries call directly (and which glibc itself exports): replaced too,
// so a block never reaches the other allocator.

/// glibc's alias of [`malloc`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    malloc(size)
}

/// glibc's alias of [`free`].
///
/// # Safety
/// As for [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_free(ptr: *mut c_void) {
    // SAFETY: forwarded from the caller.
    unsafe { free(ptr) }
}

/// glibc's alias of [`calloc`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_calloc(count: usize, size: usize) -> *mut c_void {
    calloc(count, size)
}

/// glibc's alias of [`realloc`].
///
/// # Safety
/// As for [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded from the caller.
    unsafe { realloc(ptr, size) }
}

/// glibc's alias of [`memalign`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign(align, size)
}

/// glibc's alias of [`valloc`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    valloc(size)
}

/// glibc's alias of [`pvalloc`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    pvalloc(size)
}
