//! loom models of heap teardown (thread exit) racing remote frees, on
//! shardalloc's real code (`--cfg loom`; see `src/lib.rs` of this crate).
#![cfg(loom)]

use loom::thread;
use shardalloc::__loom::{self as model, ModelHeap, World};
use shardalloc_loom_tests::{OWNER, REMOTE_A, SendPtr, assert_all_released, builder};

const MIB: usize = 1 << 20;

/// The owner tears its heap down (`Heap::abandon`, what thread exit does)
/// while a remote thread frees a block of a full page — the free that takes
/// the delayed route and pushes onto the heap's own list. Afterwards:
/// * no remote access to the heap is unordered with the end of teardown
///   (`claim_exclusive` makes loom check it), so the heap may be unmapped;
/// * no block is lost: once the rest are freed, every segment goes back.
#[test]
fn heap_teardown_races_remote_free() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = World::new();
        let mut heap = ModelHeap::new(&world, OWNER);
        // A 1 MiB block has a large page to itself: the second allocation
        // parks the first block's page in the full queue (`UseDelayed`).
        let blocks: Vec<*mut u8> = (0..4).map(|_| heap.alloc(MIB)).collect();
        let handed = SendPtr(blocks[0]);
        let remote = thread::spawn(move || {
            let handed = handed;
            // SAFETY: this thread holds the block alone.
            unsafe { model::free(handed.0, REMOTE_A) }
        });
        heap.abandon();
        // From here on the heap must be unreachable for other threads.
        heap.claim_exclusive();
        remote.join().unwrap();
        // The dead owner's remaining blocks are freed by another thread...
        for &block in &blocks[1..] {
            // SAFETY: live blocks, given up; the segments are abandoned.
            unsafe { model::free(block, REMOTE_A) };
        }
        // ...and a live thread's collect releases the emptied segments.
        let heir = ModelHeap::new(&world, REMOTE_A);
        heir.collect(true);
        assert_eq!(
            world.abandoned_segments(),
            0,
            "every abandoned segment emptied and released"
        );
        drop(heir);
        drop(heap);
        drop(world);
        assert_all_released(baseline);
    });
}

/// A huge block outlives its owner: the owner's teardown orphans the huge
/// segment (`UseDelayed → Never`) while a remote thread frees the block.
/// Whoever loses the race must not touch the segment again, and the segment
/// is released exactly once: by the freeing thread if the owner orphaned it
/// first, by the owner's teardown if the free came first.
#[test]
fn huge_orphan_handoff() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = World::new();
        let mut heap = ModelHeap::new(&world, OWNER);
        let huge = SendPtr(heap.alloc_huge(2 * MIB));
        let remote = thread::spawn(move || {
            let huge = huge;
            // SAFETY: this thread holds the block alone.
            unsafe { model::free(huge.0, REMOTE_A) }
        });
        heap.abandon();
        heap.claim_exclusive();
        remote.join().unwrap();
        assert_eq!(heap.segments(), 0);
        assert_eq!(
            world.abandoned_segments(),
            0,
            "huge segments are never abandoned"
        );
        drop(heap);
        drop(world);
        assert_eq!(
            model::live_mappings(),
            baseline,
            "the huge segment was released exactly once"
        );
    });
}
