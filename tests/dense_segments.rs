//! `SHARDALLOC_DENSE_SEGMENTS` / `options::set_dense_segments`: how many small segments a heap
//! fills with 4 KiB pages before its next one is advised for transparent huge pages from the
//! start. By default (4) a thread's first small segment is not advised; at 0 it is, so that its
//! first touch maps a whole huge page. Read from the `VmFlags` of `/proc/self/smaps` (`hg`).
//! Skipped with a message where THP is off or `SHARDALLOC_HUGE_OS_PAGES=0`. Its own test binary:
//! the option is process-wide.
//!
//! Run: `cargo test --release --test dense_segments -- --nocapture`.

mod common;

use common::thp_mode;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

/// Whether the mapping holding `addr` is advised `MADV_HUGEPAGE` (`hg` in its `VmFlags`).
fn advised(addr: usize) -> bool {
    let text = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut inside = false;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if inside {
                return flags.split_whitespace().any(|f| f == "hg");
            }
            continue;
        }
        let range = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = lo <= addr && addr < hi;
        }
    }
    panic!("no mapping holds {addr:#x}");
}

/// Allocates a 64 B block in `heap`, a new first-class heap (no segments yet), and reports
/// whether its segment is advised. (Not a new thread: it could adopt a parked heap that has
/// segments.)
fn first_segment_advised(heap: &shardalloc::Heap) -> bool {
    let layout = std::alloc::Layout::from_size_align(64, 16).expect("layout");
    let block = heap.alloc(layout);
    assert!(!block.is_null(), "a 64 B block");
    // SAFETY: a live 64 B block of `heap`.
    unsafe { block.write_bytes(7, 64) };
    advised(block as usize)
}

#[test]
fn zero_dense_segments_backs_a_heaps_first_segment_with_huge_pages() {
    let mode = thp_mode();
    if mode.as_deref().is_none_or(|m| m == "never") || !shardalloc::options::huge_os_pages() {
        println!(
            "skipping: transparent huge pages off here ({mode:?}) or SHARDALLOC_HUGE_OS_PAGES=0"
        );
        return;
    }
    // Fresh segments only: cached ones keep the advice of their previous life (and the heaps
    // stay alive to the end, so that neither hands an empty segment to the other).
    shardalloc::options::set_segment_cache(0).expect("segment cache 0");
    shardalloc::collect(true);
    let (first, second) = (shardalloc::Heap::new(), shardalloc::Heap::new());
    shardalloc::options::set_dense_segments(4).expect("dense segments 4");
    let by_default = first_segment_advised(&first);
    shardalloc::options::set_dense_segments(0).expect("dense segments 0");
    let at_zero = first_segment_advised(&second);
    first.destroy();
    second.destroy();
    println!("a new heap's first small segment advised: with 4 {by_default}, with 0 {at_zero}");
    assert!(
        !by_default,
        "with the default, a heap's first small segment is advised for huge pages"
    );
    assert!(
        at_zero,
        "with SHARDALLOC_DENSE_SEGMENTS=0, a heap's first small segment is not advised"
    );
}
