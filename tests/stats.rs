//! `shardalloc::stats()` against what the test itself allocated (memory-return issue, item 6):
//! live bytes, committed and reserved follow allocations of this thread, of an exited thread
//! (its heap parked, or its segments abandoned) and of huge blocks, and come back down after the frees.
//!
//! One test in this binary, so the harness's own allocations are the only noise (a few KiB);
//! tolerances are 1 MiB against 70+ MiB moved. Run: `cargo test --release --test stats --
//! --nocapture`.

mod common;

use std::thread;

use common::mib;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const SLACK: usize = 1 << 20;

fn within(value: usize, expected: usize, what: &str) {
    assert!(
        value.abs_diff(expected) <= SLACK,
        "{what}: {:.2} MiB, expected {:.2} MiB ± 1 MiB",
        mib(value),
        mib(expected)
    );
}

fn touched(size: usize) -> Vec<u8> {
    vec![0x77u8; size]
}

#[test]
fn stats_follow_live_committed_and_reserved_bytes() {
    shardalloc::collect(true);
    let base = shardalloc::stats();
    println!("baseline: {base:?}");

    // 40 MiB in 16 KiB blocks and one 24 MiB huge block, on this thread.
    let small: Vec<Vec<u8>> = (0..2560).map(|_| touched(16 << 10)).collect();
    let huge = touched(24 << 20);
    // 8 MiB in 4 KiB blocks from a thread that then exits holding none of its segments' pages:
    // the blocks live on in abandoned segments.
    let orphans: Vec<Vec<u8>> = thread::spawn(|| (0..2048).map(|_| touched(4 << 10)).collect())
        .join()
        .unwrap();
    let live_bytes = 40 * (1 << 20) + (24 << 20) + 8 * (1 << 20);
    let s = shardalloc::stats();
    println!("holding {} MiB: {s:?}", live_bytes >> 20);
    within(s.live - base.live, live_bytes, "live after allocating");
    assert!(
        s.committed - base.committed >= live_bytes,
        "committed grew by {:.1} MiB, less than the {} MiB written",
        mib(s.committed - base.committed),
        live_bytes >> 20
    );
    assert!(s.committed <= s.reserved, "committed exceeds reserved");
    // Its heap is parked whole for the next thread (`heap/park.rs`), its
    // live bytes still counted, or abandoned.
    assert!(
        s.abandoned_segments >= 1 || s.parked_heaps >= 1,
        "the exited thread's heap is parked or its segment abandoned"
    );

    drop(small);
    drop(huge);
    // Remote frees into the abandoned segments; the next collect takes them back.
    drop(orphans);
    shardalloc::collect(true);
    let e = shardalloc::stats();
    println!("after freeing and collect(true): {e:?}");
    within(e.live, base.live, "live after freeing");
    within(e.committed, base.committed, "committed after collect(true)");
    assert!(
        e.reserved <= base.reserved + (4 << 20),
        "reserved did not come back down"
    );
    assert!(e.munmap_calls > base.munmap_calls && e.madvise_calls > base.madvise_calls);
    shardalloc::print_stats();
}
