//! Heap parking (`src/heap/park.rs`): short-lived threads started one after
//! another adopt the heap the previous one parked at its exit, blocks freed
//! across the hand-off (by the next thread, by the main thread) stay valid,
//! no two live blocks overlap, and `collect(true)` tears down a parked heap
//! nobody adopted without touching its live blocks.
//!
//! One test in this binary: the pool and the counters are process-wide.

mod common;

use std::thread;

use common::Block;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

/// Threads started one at a time.
const THREADS: usize = 400;
/// Blocks each thread allocates (sizes of 16 size classes and more).
const BLOCKS: usize = 32;
/// Blocks each thread leaves to the main thread.
const LEFT: usize = 2;

/// Panics if two of `blocks` overlap.
fn assert_disjoint(blocks: &[&Block]) {
    let mut ranges: Vec<(usize, usize)> = blocks.iter().map(|b| (b.addr(), b.usable())).collect();
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let ((a, len), (b, _)) = (pair[0], pair[1]);
        assert!(a + len <= b, "live blocks overlap: {a:#x}+{len} and {b:#x}");
    }
}

#[test]
fn threads_adopt_parked_heaps_and_blocks_survive_the_hand_off() {
    let before = shardalloc::stats();
    let mut left: Vec<Block> = Vec::new();
    let mut carry: Option<Block> = None;
    for i in 0..THREADS {
        let handed = carry.take();
        let (next, mut mine) = thread::spawn(move || {
            // The previous thread's block: allocated from the heap this
            // thread has probably just adopted, freed here.
            if let Some(block) = handed {
                block.verify().unwrap();
            }
            let blocks: Vec<Block> = (0..BLOCKS)
                .map(|k| Block::new(24 + k * 97, 8, (i + k) as u8, i as u64))
                .collect();
            assert_disjoint(&blocks.iter().collect::<Vec<_>>());
            for block in &blocks {
                block.verify().unwrap();
            }
            let next = Block::new(200, 16, i as u8, i as u64);
            (next, blocks)
        })
        .join()
        .unwrap();
        // Kept by the main thread past the heap's next hand-offs.
        left.extend(mine.drain(..LEFT));
        // The rest are freed here, remote frees into the parked (or already
        // adopted) heap.
        drop(mine);
        carry = Some(next);
        if i % 50 == 0 {
            let mut all: Vec<&Block> = left.iter().collect();
            all.extend(carry.iter());
            assert_disjoint(&all);
        }
    }
    let s = shardalloc::stats();
    println!("before: {before:?}\nafter {THREADS} threads: {s:?}");
    let parked = s.heaps_parked - before.heaps_parked;
    let adopted = s.heaps_adopted - before.heaps_adopted;
    assert!(
        parked >= THREADS * 9 / 10,
        "{parked} of {THREADS} exiting threads parked their heap"
    );
    assert!(
        adopted >= THREADS * 9 / 10 - 1,
        "{adopted} of {THREADS} new threads adopted a parked heap"
    );
    assert!(
        s.parked_heaps >= 1,
        "the last thread's heap waits in the pool"
    );
    for block in left.iter().chain(carry.iter()) {
        block.verify().unwrap();
    }

    // Nobody adopts the last heap: collect(true) tears it down (abandon);
    // its live blocks stay valid.
    shardalloc::collect(true);
    let e = shardalloc::stats();
    assert_eq!(e.parked_heaps, 0, "collect(true) empties the pool");
    assert!(e.heaps_evicted > s.heaps_evicted);
    let mut all: Vec<&Block> = left.iter().collect();
    all.extend(carry.iter());
    assert_disjoint(&all);
    for block in &all {
        block.verify().unwrap();
    }
    drop(left);
    drop(carry);
    shardalloc::collect(true);
    let end = shardalloc::stats();
    assert!(
        end.live <= before.live + (1 << 20),
        "live bytes came back down: {} -> {}",
        before.live,
        end.live
    );
}
