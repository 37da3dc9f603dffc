//! loom models of abandonment and reclaim, and of the abandoned-segment
//! list itself, on shardalloc's real code (`--cfg loom`).
#![cfg(loom)]

use loom::thread;
use shardalloc::__loom::{self as model, AbandonedList, ModelHeap, World};
use shardalloc_loom_tests::{OWNER, REMOTE_A, REMOTE_B, SendPtr, builder};
use std::sync::Arc;

/// Thread A exits (abandons its heap) holding a small segment with three
/// live blocks; thread R frees two of them; thread B starts a heap and
/// allocates, which reclaims abandoned segments of its kind. All three race.
/// Afterwards no block is lost or counted twice: once the last block is
/// freed, every segment is empty and released exactly once.
#[test]
fn abandon_and_reclaim_race_remote_frees() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let owner = ModelHeap::new(&world, OWNER);
        let (x, y, z) = (owner.alloc(64), owner.alloc(64), owner.alloc(64));
        let handed = (SendPtr(x), SendPtr(y));
        let remote = thread::spawn(move || {
            let handed = handed;
            // SAFETY: this thread holds both blocks alone.
            unsafe {
                model::free(handed.0.0, REMOTE_A);
                model::free(handed.1.0, REMOTE_A);
            }
        });
        let world_b = Arc::clone(&world);
        let heir = thread::spawn(move || {
            let heap = ModelHeap::new(&world_b, REMOTE_B);
            let own = heap.alloc(64);
            // SAFETY: our own block.
            unsafe { heap.free(own) };
            // Thread exit of the heir.
            heap.abandon();
        });
        owner.abandon();
        remote.join().unwrap();
        heir.join().unwrap();
        // The last live block, freed by a thread that owns nothing.
        // SAFETY: z is live and given up.
        unsafe { model::free(z, REMOTE_A) };
        let collector = ModelHeap::new(&world, REMOTE_A);
        collector.collect(true);
        assert_eq!(
            world.abandoned_segments(),
            0,
            "every segment emptied and released"
        );
        drop(collector);
        drop(owner);
        drop(world);
        assert_eq!(
            model::live_mappings(),
            baseline,
            "no segment leaked or released twice"
        );
    });
}

/// Two threads push segments onto the abandoned list while a third takes
/// the whole list: every segment is taken exactly once.
#[test]
fn abandoned_list_push_races_take_all() {
    builder().check(|| {
        let list = Arc::new(AbandonedList::new());
        let pushers: Vec<_> = (0..2)
            .map(|_| {
                let list = Arc::clone(&list);
                thread::spawn(move || list.push_new())
            })
            .collect();
        let mut taken = list.take_all();
        let pushed: Vec<usize> = pushers.into_iter().map(|t| t.join().unwrap()).collect();
        taken.extend(list.take_all());
        taken.sort_unstable();
        let mut expected = pushed;
        expected.sort_unstable();
        assert_eq!(taken, expected, "each pushed segment taken exactly once");
    });
}
