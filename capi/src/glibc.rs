//! glibc's extension API (`malloc.h`), mapped onto shardalloc: `malloc_trim`,
//! `malloc_stats`, `malloc_info`, `mallinfo2`, `mallinfo` and `mallopt`.
//! The figures come from `shardalloc::stats()`; nothing here allocates.
//!
//! glibc's words and shardalloc's figures: "system bytes" / `arena` is
//! `committed` (block memory that may be resident), "in use" / `uordblks` is
//! `live` (bytes in live blocks), `fordblks` is the difference, and the
//! address space (`aspace`) is `reserved`. glibc's per-bin and mmap counts
//! have no counterpart and read 0.

use crate::text::Text;
use core::ffi::{c_int, c_void};
use shardalloc_core::Stats;

/// `malloc_trim(3)`: gives back to the OS everything that can go now
/// (`shardalloc::collect(true)`: the calling thread's empty and retired
/// pages, abandoned segments whose blocks were all freed, the segment cache,
/// and the waiting empty pages of every other thread). `pad` is ignored.
/// Returns 1 when memory went back to the OS, 0 otherwise.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    let _ = pad;
    let before = shardalloc_core::stats();
    shardalloc_core::collect(true);
    let after = shardalloc_core::stats();
    c_int::from(after.reset > before.reset || after.munmap_calls > before.munmap_calls)
}

/// The free bytes of the committed memory.
fn free_bytes(s: &Stats) -> usize {
    s.committed.saturating_sub(s.live)
}

/// `malloc_stats(3)`: a summary on standard error in glibc's shape (one
/// "arena": the whole process).
#[unsafe(no_mangle)]
pub extern "C" fn malloc_stats() {
    let s = shardalloc_core::stats();
    let mut text = Text::new();
    text.push("Arena 0:\nsystem bytes     = ")
        .number(s.committed, 10)
        .push("\nin use bytes     = ")
        .number(s.live, 10)
        .push("\nTotal (incl. mmap):\nsystem bytes     = ")
        .number(s.committed, 10)
        .push("\nin use bytes     = ")
        .number(s.live, 10)
        .push("\nmax mmap regions = ")
        .number(0, 10)
        .push("\nmax mmap bytes   = ")
        .number(0, 10)
        .push("\n");
    // Like glibc, which flushes stderr first: stdio's pending error output
    // (stderr is unbuffered by default, so usually none) stays in order.
    text.write_to_fd(libc::STDERR_FILENO);
}

/// `malloc_info(3)`: the figures as XML in glibc's shape to `stream`;
/// `options` must be 0 (else -1 with `errno = EINVAL`, as glibc). Returns 0.
///
/// # Safety
/// `stream` is an open `FILE *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 {
        crate::set_errno(libc::EINVAL);
        return -1;
    }
    let s = shardalloc_core::stats();
    let mut text = Text::new();
    text.push("<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n</sizes>\n");
    for footer in [false, true] {
        text.push("<total type=\"fast\" count=\"0\" size=\"0\"/>\n")
            .push("<total type=\"rest\" count=\"0\" size=\"")
            .number(free_bytes(&s), 0)
            .push("\"/>\n");
        if footer {
            text.push("<total type=\"mmap\" count=\"0\" size=\"0\"/>\n");
        }
        for (kind, value) in [
            ("<system type=\"current\" size=\"", s.committed),
            ("<system type=\"max\" size=\"", s.committed),
            ("<aspace type=\"total\" size=\"", s.reserved),
            ("<aspace type=\"mprotect\" size=\"", s.reserved),
        ] {
            text.push(kind).number(value, 0).push("\"/>\n");
        }
        if !footer {
            text.push("</heap>\n");
        }
    }
    text.push("</malloc>\n");
    let bytes = text.as_bytes();
    // SAFETY: `stream` is an open FILE (caller); `bytes` is valid for its
    // length. stdio may allocate a buffer for the stream: that is a call
    // into this library from outside the allocator, which is fine.
    unsafe { libc::fwrite(bytes.as_ptr().cast::<c_void>(), 1, bytes.len(), stream) };
    0
}

/// glibc's `struct mallinfo2` (all `size_t`, in this order).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo2 {
    /// Non-mmapped space allocated (here: committed block memory).
    pub arena: usize,
    /// Number of free chunks (0 here).
    pub ordblks: usize,
    /// Number of free fastbin blocks (0 here).
    pub smblks: usize,
    /// Number of mmapped regions (0 here).
    pub hblks: usize,
    /// Space in mmapped regions (0 here).
    pub hblkhd: usize,
    /// Unused, always 0 (as glibc).
    pub usmblks: usize,
    /// Space in freed fastbin blocks (0 here).
    pub fsmblks: usize,
    /// Total allocated space (here: bytes in live blocks).
    pub uordblks: usize,
    /// Total free space (committed minus live).
    pub fordblks: usize,
    /// Top-most releasable space (0 here).
    pub keepcost: usize,
}

/// glibc's `struct mallinfo` (the same fields as `int`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo {
    /// See [`Mallinfo2`].
    pub arena: c_int,
    /// See [`Mallinfo2`].
    pub ordblks: c_int,
    /// See [`Mallinfo2`].
    pub smblks: c_int,
    /// See [`Mallinfo2`].
    pub hblks: c_int,
    /// See [`Mallinfo2`].
    pub hblkhd: c_int,
    /// See [`Mallinfo2`].
    pub usmblks: c_int,
    /// See [`Mallinfo2`].
    pub fsmblks: c_int,
    /// See [`Mallinfo2`].
    pub uordblks: c_int,
    /// See [`Mallinfo2`].
    pub fordblks: c_int,
    /// See [`Mallinfo2`].
    pub keepcost: c_int,
}

/// `mallinfo2(3)`: see [`Mallinfo2`] for what each field holds here.
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    let s = shardalloc_core::stats();
    Mallinfo2 {
        arena: s.committed,
        uordblks: s.live,
        fordblks: free_bytes(&s),
        ..Mallinfo2::default()
    }
}

/// `mallinfo(3)`: [`mallinfo2`] truncated to `int`, as glibc (the figures
/// wrap beyond 2 GiB; deprecated there for that reason).
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    // Truncation is the documented behaviour of `mallinfo`.
    let int = |v: usize| v as c_int;
    Mallinfo {
        arena: int(m.arena),
        ordblks: int(m.ordblks),
        smblks: int(m.smblks),
        hblks: int(m.hblks),
        hblkhd: int(m.hblkhd),
        usmblks: int(m.usmblks),
        fsmblks: int(m.fsmblks),
        uordblks: int(m.uordblks),
        fordblks: int(m.fordblks),
        keepcost: int(m.keepcost),
    }
}

/// glibc's `mallopt` parameter numbers (`malloc.h`) that do something here.
const M_MXFAST: c_int = 1;
const M_TRIM_THRESHOLD: c_int = -1;

/// glibc's largest `M_MXFAST` (`80 * sizeof(size_t) / 4`).
const MAX_FAST_SIZE: usize = 80 * size_of::<usize>() / 4;

/// `mallopt(3)` as glibc 2.36 does it: `M_TRIM_THRESHOLD` sets the floor
/// of shardalloc's warm budget (the unused memory the process may keep
/// warm beyond what it uses before the oldest goes back at once; a
/// negative value, which glibc reads as a huge unsigned one, keeps
/// everything for the decay time); every other
/// parameter, known or not, is accepted and ignored. Returns 1, except 0
/// for an `M_MXFAST` above 160 (glibc's one range check that fails: its
/// `__libc_mallopt` starts from `res = 1` and only the helpers it calls may
/// turn that into 0, so an unknown parameter returns 1 there too, although
/// mallopt(3) documents it as an error).
#[unsafe(no_mangle)]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    // glibc converts the value to an unsigned size for its range checks.
    let unsigned = value as isize as usize;
    match param {
        M_TRIM_THRESHOLD => {
            shardalloc_core::options::set_pending_reset_limit(unsigned);
            1
        }
        M_MXFAST => c_int::from(unsigned <= MAX_FAST_SIZE),
        // M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_CHECK_ACTION,
        // M_PERTURB, M_ARENA_TEST, M_ARENA_MAX and unknown parameters.
        _ => 1,
    }
}
