//! loom models of the page thread-free list and the delayed-free route,
//! running shardalloc's real code (`--cfg loom`).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p shardalloc-loom-tests --release`
//! (`.ci/run` does, with `LOOM_MAX_PREEMPTIONS=2`).
#![cfg(loom)]

use loom::thread;
use shardalloc::__loom::{self as model, ModelHeap, World};
use shardalloc_loom_tests::{OWNER, REMOTE_A, REMOTE_B, SendPtr, builder};
use std::sync::Arc;

/// Two remote threads each push a block onto the page's `thread_free` list
/// while the owner collects it: afterwards every block is back exactly once
/// and `used` is 0.
#[test]
fn thread_free_push_races_collect() {
    builder().check(|| {
        let world = Arc::new(World::new());
        let heap = ModelHeap::new(&world, OWNER);
        let a = heap.alloc(64);
        let b = heap.alloc(64);
        let c = heap.alloc(64);
        let (pa, pb) = (SendPtr(a), SendPtr(b));
        let ta = thread::spawn(move || {
            let pa = pa;
            // SAFETY: this thread holds block a alone.
            unsafe { model::free(pa.0, REMOTE_A) }
        });
        let tb = thread::spawn(move || {
            let pb = pb;
            // SAFETY: this thread holds block b alone.
            unsafe { model::free(pb.0, REMOTE_B) }
        });
        // The owner frees its own block and collects twice, racing both
        // pushes. (The yield gives loom a scheduling point between the two
        // collects; without one it explores only the schedules where the
        // remote threads start after the owner is done.)
        // SAFETY: c is ours; a's page is ours.
        unsafe {
            heap.free(c);
            heap.collect_page_of(a);
            thread::yield_now();
            heap.collect_page_of(a);
        }
        ta.join().unwrap();
        tb.join().unwrap();
        // SAFETY: all three blocks are free now and the page is ours.
        unsafe {
            heap.collect_page_of(a);
            let view = model::page_view(a);
            assert_eq!(view.used, 0, "every block collected: {view:?}");
            for block in [a, b, c] {
                assert_eq!(
                    model::times_on_free_lists(block),
                    1,
                    "block on exactly one free list"
                );
            }
        }
        heap.abandon();
    });
}

/// Fill a large page (fifteen 256 KiB blocks) so the heap moves it to the
/// full queue in `UseDelayed` mode; then two remote frees into it race the
/// owner's heartbeat (delayed-list processing). Afterwards both blocks are
/// back exactly once, the page has left the full queue, and `used` counts
/// only the blocks still live.
#[test]
fn delayed_free_of_full_page_races_owner() {
    builder().check(|| {
        let world = Arc::new(World::new());
        let heap = ModelHeap::new(&world, OWNER);
        let blocks: Vec<*mut u8> = (0..BLOCKS_PER_PAGE).map(|_| heap.alloc(BLOCK)).collect();
        // The next allocation finds the page exhausted: it goes to the full
        // queue (UseDelayed) and a fresh page serves the request.
        let extra = heap.alloc(BLOCK);
        let (a, b) = (blocks[0], blocks[1]);
        // SAFETY: a is a block of the owner's page.
        let view = unsafe { model::page_view(a) };
        assert!(
            view.in_full && view.mode == model::MODE_USE_DELAYED,
            "{view:?}"
        );
        let (pa, pb) = (SendPtr(a), SendPtr(b));
        let ta = thread::spawn(move || {
            let pa = pa;
            // SAFETY: sole holder of a.
            unsafe { model::free(pa.0, REMOTE_A) }
        });
        let tb = thread::spawn(move || {
            let pb = pb;
            // SAFETY: sole holder of b.
            unsafe { model::free(pb.0, REMOTE_B) }
        });
        heap.process_delayed(false);
        thread::yield_now();
        heap.process_delayed(false);
        ta.join().unwrap();
        tb.join().unwrap();
        heap.process_delayed(true);
        // SAFETY: the page is ours; a and b are free, the rest live.
        unsafe {
            let live = blocks[2];
            heap.collect_page_of(live);
            let view = model::page_view(live);
            assert_eq!(
                view.used as usize,
                BLOCKS_PER_PAGE - 2,
                "a and b came back: {view:?}"
            );
            assert!(!view.in_full, "the page left the full queue: {view:?}");
            assert_eq!(model::times_on_free_lists(a), 1);
            assert_eq!(model::times_on_free_lists(b), 1);
            for &block in blocks[2..].iter().chain([&extra]) {
                heap.free(block);
            }
        }
        heap.abandon();
    });
}

/// Blocks of 256 KiB: the largest that share a large page, fifteen to a page.
const BLOCK: usize = 256 << 10;
const BLOCKS_PER_PAGE: usize = 15;
