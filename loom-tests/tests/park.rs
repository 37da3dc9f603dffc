//! loom model of heap parking (`heap/park.rs`, design §4.9): a thread's
//! heap parked whole at its exit and adopted by a new thread, on
//! shardalloc's real code (`--cfg loom`; see `src/lib.rs` of this crate).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use shardalloc::__loom::{self as model, ModelHeap, World};
use shardalloc_loom_tests::{OWNER, REMOTE_A, REMOTE_B, assert_all_released, builder};

/// A large block has a page to itself: the second allocation moves the
/// first one's page to the full queue (`UseDelayed`).
const SIZE: usize = 1 << 20;
const PATTERN: u8 = 0x5C;
const ADOPTER_PATTERN: u8 = 0xC5;
/// Bytes at the start of a block that the model leaves to the allocator
/// (under loom they hold the tracked cell of the free-list link).
const LINK: usize = 64;

/// Whether the `SIZE` bytes after `ptr` hold `pattern` (past the link).
///
/// # Safety
/// `ptr` is a live block of at least `SIZE` bytes.
unsafe fn holds(ptr: *mut u8, pattern: u8) -> bool {
    // SAFETY: forwarded.
    unsafe { core::slice::from_raw_parts(ptr.add(LINK), SIZE - LINK) }
        .iter()
        .all(|&byte| byte == pattern)
}

/// The owner thread exits and parks its heap while a new thread starts and
/// tries to adopt it (before or after the park: both are explored); after
/// parking, the exiting thread frees one more block (a later TLS
/// destructor's free) — a block of a full page, so on the delayed route
/// onto the parked (or already adopted) heap's own list. The adopter, if it
/// got the heap, allocates from it, frees locally and exits (abandon);
/// otherwise the main thread evicts the parked heap (what a reaper does
/// after the decay time). Afterwards:
/// * every owner-only cell of the heap (its id, its lock depth, its lists)
///   was touched by the adopter only after the parker's last touch (loom
///   tracks them): the pool's Release/Acquire is the hand-off;
/// * the block that lived across the hand-off still holds its bytes, and
///   the adopter's block does not overlap it;
/// * no block is lost or counted twice: once all are freed, every segment
///   goes back, each exactly once.
#[test]
fn parked_heap_adopted_while_parker_frees() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let parker = ModelHeap::new_registered(&world, OWNER);
        // `late`'s page is full once `kept` is allocated.
        let late = parker.alloc(SIZE);
        let kept = parker.alloc(SIZE);
        // SAFETY: our own live block of SIZE bytes.
        unsafe { kept.add(LINK).write_bytes(PATTERN, SIZE - LINK) };
        let kept_addr = kept.expose_provenance();
        let adopter = {
            let world = Arc::clone(&world);
            thread::spawn(move || {
                let Some(heap) = world.adopt_parked(REMOTE_A) else {
                    return false;
                };
                let own = heap.alloc(SIZE);
                assert!(
                    own.addr().abs_diff(kept_addr) >= SIZE,
                    "the adopter's block overlaps a live block of the parker"
                );
                // SAFETY: our own live block of SIZE bytes.
                unsafe {
                    own.add(LINK).write_bytes(ADOPTER_PATTERN, SIZE - LINK);
                    assert!(holds(own, ADOPTER_PATTERN));
                    heap.free(own);
                }
                heap.abandon();
                true
            })
        };
        assert!(parker.park(), "a small registered heap is parked");
        // A later destructor of the exiting thread frees with its old id.
        // SAFETY: a live block, given up.
        unsafe { model::free(late, OWNER) };
        let adopted = adopter.join().unwrap();
        if !adopted {
            assert_eq!(world.parked_heaps(), 1);
            world.evict_parked();
        }
        assert_eq!(world.parked_heaps(), 0);
        // SAFETY: `kept` is live; its segment is abandoned now.
        unsafe {
            assert!(holds(kept, PATTERN), "a block lived across the hand-off");
            model::free(kept, REMOTE_B);
        }
        let heir = ModelHeap::new(&world, REMOTE_B);
        heir.collect(true);
        assert_eq!(
            world.abandoned_segments(),
            0,
            "every segment emptied and went back"
        );
        drop(heir);
        drop(parker);
        drop(world);
        assert_all_released(baseline);
    });
}
