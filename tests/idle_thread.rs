//! Memory of a thread that is alive but idle comes back without its help (memory-return issue,
//! item 4): a worker frees 12 MiB of blocks and then sleeps; its empty pages wait for their reset
//! delay, which only its own slow paths would ever notice. Another thread's light allocator
//! activity (its slow paths run the reaper, see `docs/design.md` §6) must give them back while the
//! worker still sleeps. Then the worker wakes, reuses the reset memory, and checks its contents.
//!
//! One test in this binary, so nothing else moves the process's RSS. Run: `cargo test --release
//! --test idle_thread -- --nocapture`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{mib, rss_bytes};

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const BLOCK: usize = 1024;
const BYTES: usize = 12 << 20;

/// Allocates `BYTES` in `BLOCK`-byte boxes, each filled with `fill`, and checks them.
fn fill(fill: u8) -> Vec<Box<[u8]>> {
    let blocks: Vec<Box<[u8]>> = (0..BYTES / BLOCK)
        .map(|_| vec![fill; BLOCK].into_boxed_slice())
        .collect();
    assert!(blocks.iter().all(|b| b.iter().all(|&x| x == fill)));
    blocks
}

#[test]
fn an_idle_threads_empty_pages_are_given_back_by_other_threads() {
    static FREED: AtomicBool = AtomicBool::new(false);
    static WAKE: AtomicBool = AtomicBool::new(false);
    let worker = thread::spawn(|| {
        drop(fill(0x5A));
        FREED.store(true, Ordering::Release);
        // Idle: no allocator call at all until woken.
        while !WAKE.load(Ordering::Acquire) {
            thread::park();
        }
        // The reset memory is reused and reads back what is written.
        let again = fill(0xC3);
        drop(again);
    });
    while !FREED.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(1));
    }
    let before = rss_bytes();
    let committed_before = shardalloc::stats().committed;
    // Light activity on this thread: every 10 ms, a few blocks that take the slow path.
    let start = Instant::now();
    let mut after = before;
    while start.elapsed() < Duration::from_secs(2) {
        let blocks: Vec<Box<[u8; 16 << 10]>> = (0..8).map(|_| Box::new([1u8; 16 << 10])).collect();
        drop(blocks);
        after = rss_bytes();
        if before.saturating_sub(after) >= BYTES * 3 / 4 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let took = start.elapsed();
    let stats = shardalloc::stats();
    println!(
        "idle worker: RSS {:.1} MiB -> {:.1} MiB after {took:?} of activity on another thread; \
         committed {:.1} MiB -> {:.1} MiB",
        mib(before),
        mib(after),
        mib(committed_before),
        mib(stats.committed)
    );
    assert!(
        before.saturating_sub(after) >= BYTES * 3 / 4,
        "the idle worker's {} MiB of empty pages were not given back: RSS {:.1} -> {:.1} MiB",
        BYTES >> 20,
        mib(before),
        mib(after)
    );
    assert!(
        committed_before.saturating_sub(stats.committed) >= BYTES * 3 / 4,
        "committed did not drop by the reset memory: {:.1} -> {:.1} MiB",
        mib(committed_before),
        mib(stats.committed)
    );
    assert!(took < Duration::from_secs(1), "took {took:?}, target 1 s");
    WAKE.store(true, Ordering::Release);
    worker.thread().unpark();
    worker.join().unwrap();
}
