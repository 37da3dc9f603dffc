//! Each allocator's explicit "give memory back to the OS" call, for the resident-memory bins
//! (`rss_cases`, `rss_over_time`), which include this file with `#[path]`. Not a bin of its own.
//!
//! * ShardAlloc: `shardalloc::collect(true)` (the calling thread's heap, plus abandoned segments);
//! * System (glibc): `malloc_trim(0)` (all arenas);
//! * mimalloc: `mi_collect(true)` (the calling thread's heap, plus shared memory);
//! * jemalloc: `thread.tcache.flush` then `arena.<all>.purge` through `mallctl`;
//! * rusty_alloc: `rusty_alloc::alloc::collect(true)` (its `mi_collect`).
//!
//! mimalloc and jemalloc are linked into the bench crate already (as `mimalloc` and
//! `tikv-jemallocator`); their C entry points are declared here rather than through the `-sys`
//! crates so that `benches/Cargo.toml` needs no further dependency.

use std::ffi::{c_char, c_int, c_void};

unsafe extern "C" {
    /// mimalloc's collect (`mimalloc.h`): returns free memory of the calling thread's heap and
    /// of the shared segments/arenas; `force` also frees pages kept for reuse. Safe to call at
    /// any time.
    safe fn mi_collect(force: bool);

    /// jemalloc's `mallctl`, under the `_rjem_` prefix `tikv-jemalloc-sys` builds it with.
    #[link_name = "_rjem_mallctl"]
    fn rjem_mallctl(
        name: *const c_char,
        oldp: *mut c_void,
        oldlenp: *mut usize,
        newp: *mut c_void,
        newlen: usize,
    ) -> c_int;
}

/// `arena.<MALLCTL_ARENAS_ALL>.purge`: purge the unused dirty pages of every arena.
const JEMALLOC_PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";

fn shardalloc_release() {
    shardalloc::collect(true);
}

fn system_release() {
    // SAFETY: `malloc_trim` has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

fn mimalloc_release() {
    mi_collect(true);
}

fn rusty_alloc_release() {
    rusty_alloc::alloc::collect(true);
}

fn jemalloc_release() {
    for name in [c"thread.tcache.flush", JEMALLOC_PURGE_ALL] {
        // SAFETY: both names are "void" controls of jemalloc 5 (no old or new value), so null
        // pointers and a zero length are what they take.
        let rc = unsafe {
            rjem_mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            eprintln!("jemalloc: mallctl({name:?}) failed with {rc}");
        }
    }
}

/// The explicit release of the allocator reported as `name` (one of
/// `shardalloc_bench::ALLOCATOR_NAMES`): a label for the reports and the function to call.
pub(crate) fn release_for(name: &str) -> Option<(&'static str, fn())> {
    let r: (&'static str, fn()) = match name {
        "ShardAlloc" => ("collect(true)", shardalloc_release),
        "System" => ("malloc_trim(0)", system_release),
        "mimalloc" => ("mi_collect(true)", mimalloc_release),
        "jemalloc" => ("arena.purge", jemalloc_release),
        "rusty_alloc" => ("collect(true)", rusty_alloc_release),
        _ => return None,
    };
    Some(r)
}
