//! loom models of abandonment and reclaim, and of the abandoned-segment
//! list itself, on shardalloc's real code (`--cfg loom`).
#![cfg(loom)]

use loom::thread;
use shardalloc::__loom::{self as model, AbandonedList, ModelHeap, World};
use shardalloc_loom_tests::{OWNER, REMOTE_A, REMOTE_B, SendPtr, assert_all_released, builder};
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

/// Two threads push segments onto the abandoned lists while a third pops
/// one and unmaps it at once (what an adopting thread may do with an empty
/// segment): every segment is popped exactly once, and the popper reads
/// each link only after its pusher wrote it (links are loom-tracked cells).
#[test]
fn abandoned_list_push_races_pop() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let list = Arc::new(AbandonedList::new());
        let pushers: Vec<_> = (0..2)
            .map(|_| {
                let list = Arc::clone(&list);
                thread::spawn(move || list.push_new())
            })
            .collect();
        let mut taken: Vec<usize> = list.pop_and_release().into_iter().collect();
        let pushed: Vec<usize> = pushers.into_iter().map(|t| t.join().unwrap()).collect();
        taken.extend(list.drain());
        taken.sort_unstable();
        let mut expected = pushed;
        expected.sort_unstable();
        assert_eq!(taken, expected, "each pushed segment popped exactly once");
        assert!(list.is_empty());
        drop(list);
        assert_all_released(baseline);
    });
}

/// The round robin of reclaim passes: two segments wait; two threads each
/// pop one off `incoming` and keep it (onto `visited`, under the pop lock)
/// while a third pushes a new segment. Afterwards every segment is on the
/// lists exactly once (none lost by racing `visited` updates, none popped
/// twice), and each pop read its link after the push that wrote it.
#[test]
fn abandoned_list_pops_race_pushes_and_keeps() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let list = Arc::new(AbandonedList::new());
        let mut expected = vec![list.push_new(), list.push_new()];
        let keepers: Vec<_> = (0..2)
            .map(|_| {
                let list = Arc::clone(&list);
                thread::spawn(move || list.pop_and_keep())
            })
            .collect();
        expected.push(list.push_new());
        for keeper in keepers {
            keeper.join().unwrap();
        }
        assert_eq!(list.len(), 3);
        let mut taken = list.drain();
        taken.sort_unstable();
        expected.sort_unstable();
        assert_eq!(taken, expected, "every segment kept exactly once");
        drop(list);
        assert_all_released(baseline);
    });
}

/// `collect(true)`'s way: one thread takes both lists whole and gives the
/// chain back onto `visited` while another pushes a segment and a third
/// pops one and unmaps it. Every segment ends up popped exactly once, and
/// the walk of the taken chain reads each link after its push.
#[test]
fn abandoned_list_take_all_races_push_and_pop() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let list = Arc::new(AbandonedList::new());
        let mut expected = vec![list.push_new()];
        let taker = {
            let list = Arc::clone(&list);
            thread::spawn(move || list.take_all_and_keep())
        };
        let pusher = {
            let list = Arc::clone(&list);
            thread::spawn(move || list.push_new())
        };
        let mut taken: Vec<usize> = list.pop_and_release().into_iter().collect();
        taker.join().unwrap();
        expected.push(pusher.join().unwrap());
        taken.extend(list.drain());
        taken.sort_unstable();
        expected.sort_unstable();
        assert_eq!(taken, expected, "every segment popped exactly once");
        drop(list);
        assert_all_released(baseline);
    });
}
