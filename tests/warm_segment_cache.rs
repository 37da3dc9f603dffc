//! Warm empty segments of an exited thread are kept for the next thread, however many there are
//! (within the warm budget): a thread that exits holding eight empty segments (too many to be
//! parked, so its heap is torn down) leaves all eight in the segment cache with their memory, and
//! the next thread that needs as many takes them instead of mapping fresh ones. Before, the cache
//! kept four (`SHARDALLOC_SEGMENT_CACHE`'s default) and unmapped the others: the next thread mapped
//! and faulted them in again (`mstress` at two threads mapped 27 segments where one maps 16).
//!
//! One test in its own process: it reads process-wide counters (`stats()`).

use std::thread;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const KIB: usize = 1024;

/// Eight sizes in eight large size classes (over 64 KiB): one large segment each.
const SIZES: [usize; 8] = [
    200 * KIB,
    260 * KIB,
    330 * KIB,
    420 * KIB,
    520 * KIB,
    660 * KIB,
    820 * KIB,
    1000 * KIB,
];

/// Allocates a block of each size, writes every byte, and frees them all.
fn fill_and_free() {
    let blocks: Vec<Vec<u8>> = SIZES.iter().map(|&size| vec![0xa5; size]).collect();
    for block in &blocks {
        assert!(block.iter().all(|&b| b == 0xa5));
    }
}

#[test]
fn an_exited_threads_warm_segments_are_all_reused_by_the_next_thread() {
    // The memory stays warm for the whole test: no sweep resets it meanwhile.
    shardalloc::options::set_reset_delay_ms(20_000).expect("a valid delay");
    // Warm up: the registry, the main thread's heap, the test harness's blocks.
    thread::spawn(|| drop(vec![1u8; 100]))
        .join()
        .expect("no panic");

    thread::spawn(fill_and_free).join().expect("no panic");
    let after_exit = shardalloc::stats();
    assert!(
        after_exit.cached_segments >= SIZES.len(),
        "the exited thread's {} empty segments are all cached: {after_exit:?}",
        SIZES.len()
    );

    thread::spawn(fill_and_free).join().expect("no panic");
    let after_reuse = shardalloc::stats();
    let mapped = after_reuse.mmap_calls - after_exit.mmap_calls;
    // The second thread's small blocks (thread start-up) take a cached segment too, so one
    // large block may need a fresh one; before, at least four were mapped.
    assert!(
        mapped <= 1,
        "the next thread mapped {mapped} segments instead of taking the cached ones: \
         {after_exit:?} then {after_reuse:?}"
    );
}
