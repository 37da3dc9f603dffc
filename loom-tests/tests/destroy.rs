//! loom model of destroying a first-class heap (`shardalloc::Heap::destroy`)
//! while another thread frees blocks, on shardalloc's real code (`--cfg
//! loom`; see `src/lib.rs` of this crate).
#![cfg(loom)]

use loom::thread;
use shardalloc::__loom::{self as model, ModelHeap, World};
use shardalloc_loom_tests::{OWNER, REMOTE_A, SendPtr, assert_all_released, builder};

const MIB: usize = 1 << 20;

/// The owner thread has two heaps: its default heap and a first-class heap
/// (same thread id, so their segments carry the same owner). A remote
/// thread frees a block of the default heap — of a full page, so the free
/// takes the delayed route and pushes onto the default heap itself — while
/// the owner destroys the first-class heap. That is the race the rule
/// allows (blocks of *other* heaps; frees of the destroyed heap's own
/// blocks must happen before `destroy`, here the one ordered by a join).
/// Afterwards:
/// * no access of the remote thread to the destroyed heap is unordered
///   with the end of `destroy` (`claim_exclusive`), so its memory may go;
/// * the default heap gets its block back and nothing is lost: once every
///   block is freed, every segment is released exactly once.
#[test]
fn destroy_races_remote_free_of_sibling_heap() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = World::new();
        let default = ModelHeap::new_registered(&world, OWNER);
        let mut first_class = ModelHeap::new_first_class(&world, OWNER);
        // Two large blocks in the default heap: the second parks the first
        // one's page in the full queue (`UseDelayed`).
        let (d0, d1) = (default.alloc(MIB), default.alloc(MIB));
        // The first-class heap: a freed-before-destroy block, and live ones.
        let (h0, h1) = (first_class.alloc(MIB), first_class.alloc(64));
        let _h2 = first_class.alloc(64);
        let early = SendPtr(h0);
        thread::spawn(move || {
            let early = early;
            // SAFETY: a live block, handed to this thread, which frees it.
            unsafe { model::free(early.0, REMOTE_A) }
        })
        .join()
        .unwrap();
        let sibling = SendPtr(d0);
        let remote = thread::spawn(move || {
            let sibling = sibling;
            // SAFETY: this thread holds the block alone.
            unsafe { model::free(sibling.0, REMOTE_A) }
        });
        // h1 and _h2 die with the heap.
        let _ = h1;
        first_class.destroy();
        first_class.claim_exclusive();
        remote.join().unwrap();
        assert_eq!(first_class.segments(), 0, "destroy released every segment");
        default.collect(true);
        // SAFETY: our own live block.
        unsafe { default.free(d1) };
        default.collect(true);
        default.abandon();
        drop(first_class);
        drop(default);
        drop(world);
        assert_all_released(baseline);
    });
}

/// A destroyed first-class heap's emptied segment waits on the default
/// heap's reset queue; the next first-class heap of the thread takes it back
/// (`give_empty_segment`, under the default heap's lock) and fills a block
/// in it, while a reaper on another thread resets every waiting slot of the
/// default heap. The block keeps its contents, every access to the slots'
/// reset state is ordered by the default heap's lock (a loom-tracked cell),
/// and every segment is released exactly once.
#[test]
fn reused_segment_of_destroyed_heap_races_reaper() {
    use loom::sync::Arc;
    const SIZE: usize = 512 << 10;
    const LINK: usize = 64;
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let default = ModelHeap::new_registered(&world, OWNER);
        let first = ModelHeap::new_first_class_with_heir(&world, OWNER, &default);
        let _ = first.alloc(SIZE);
        first.destroy();
        drop(first);
        let reaper_world = Arc::clone(&world);
        let reaper = thread::spawn(move || {
            let reaper = ModelHeap::new_registered(&reaper_world, REMOTE_A);
            reaper.reap_others(true);
            reaper.abandon();
        });
        let second = ModelHeap::new_first_class_with_heir(&world, OWNER, &default);
        let block = second.alloc(SIZE);
        // SAFETY: our own live block of SIZE bytes (its first bytes hold the
        // free-list link's tracked cell under loom).
        unsafe { block.add(LINK).write_bytes(0xA5, SIZE - LINK) };
        reaper.join().unwrap();
        // SAFETY: as above; the reaper has finished.
        let intact = unsafe { core::slice::from_raw_parts(block.add(LINK), SIZE - LINK) }
            .iter()
            .all(|&byte| byte == 0xA5);
        assert!(intact, "a slot in use was reset");
        second.destroy();
        drop(second);
        default.collect(true);
        default.abandon();
        drop(default);
        drop(world);
        assert_all_released(baseline);
    });
}
