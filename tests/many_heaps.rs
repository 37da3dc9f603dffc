//! Issue 12, point 7: the heap registry has no fixed size. Thousands of live heaps (first-class
//! heaps here, registered like threads' heaps) are all registered, so `stats()` sees every one
//! of them and their live blocks; destroyed heaps give their registry entries back, and the
//! next heaps reuse them.
//!
//! One test in this binary, so the heap count is this test's alone (plus the harness's threads).

use std::alloc::Layout;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

/// Well past the former fixed capacity of 1024 entries (and past the registry's first two
/// chunks, 1024 + 2048).
const HEAPS: usize = 3500;
const BLOCK: usize = 4096;

#[test]
fn thousands_of_heaps_are_all_registered_and_counted() {
    let layout = Layout::from_size_align(BLOCK, 8).expect("layout");
    let before = shardalloc::stats();
    let heaps: Vec<shardalloc::Heap> = (0..HEAPS)
        .map(|i| {
            let heap = shardalloc::Heap::new();
            let p = heap.alloc(layout);
            assert!(!p.is_null(), "out of memory at heap {i}");
            // SAFETY: a live block of `BLOCK` bytes of `heap`.
            unsafe { p.write_bytes(0x5A, BLOCK) };
            heap
        })
        .collect();
    let during = shardalloc::stats();
    assert!(
        during.heaps >= before.heaps + HEAPS,
        "{} heaps registered with {HEAPS} first-class heaps alive (before: {})",
        during.heaps,
        before.heaps
    );
    assert!(
        during.live >= before.live + HEAPS * BLOCK,
        "live {} B: the blocks of every heap count (before: {} B)",
        during.live,
        before.live
    );
    for heap in heaps {
        heap.destroy();
    }
    let after = shardalloc::stats();
    assert!(
        after.heaps <= before.heaps + 1,
        "{} heaps registered after destroying them all (before: {})",
        after.heaps,
        before.heaps
    );
    // The entries come back: another round registers every heap again.
    let heaps: Vec<shardalloc::Heap> = (0..HEAPS).map(|_| shardalloc::Heap::new()).collect();
    assert!(shardalloc::stats().heaps >= before.heaps + HEAPS);
    for heap in heaps {
        heap.destroy();
    }
}
