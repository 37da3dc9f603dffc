//! Memory freed by other threads into the pages of a thread that is alive but idle comes back
//! without its help (memory-return issue, item 4): a producer allocates 48 MiB, hands the blocks
//! to the main thread and sleeps; the main thread frees them all (remote frees, which only the
//! producer's own slow paths would ever collect). Light allocator activity on the main thread
//! runs the reaper, which — once the producer has been idle for ten reset delays — frees the
//! producer's wholly freed full pages for it and gives back the memory inside the other freed
//! blocks of 8 KiB and more (`Heap::reset_remote_frees`, `docs/design.md` §6). Then the producer
//! wakes, allocates again and checks the contents. Twice: with 64 KiB blocks and with 1 KiB
//! blocks.
//!
//! One test in this binary, so nothing else moves the process's RSS. Run: `cargo test --release
//! --test idle_producer -- --nocapture`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{mib, rss_bytes};

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const BYTES: usize = 48 << 20;

#[test]
fn remote_frees_into_an_idle_threads_pages_are_given_back() {
    for block in [64 << 10, 1 << 10] {
        producer_goes_idle(block);
    }
}

fn producer_goes_idle(block: usize) {
    static WAKE: AtomicBool = AtomicBool::new(false);
    WAKE.store(false, Ordering::Release);
    let (send, receive) = mpsc::channel::<Vec<Box<[u8]>>>();
    let producer = thread::spawn(move || {
        let blocks: Vec<Box<[u8]>> = (0..BYTES / block)
            .map(|i| vec![i as u8; block].into_boxed_slice())
            .collect();
        send.send(blocks).unwrap();
        // Idle: no allocator call at all until woken.
        while !WAKE.load(Ordering::Acquire) {
            thread::park();
        }
        let again: Vec<Box<[u8]>> = (0..BYTES / block)
            .map(|i| vec![(i as u8).wrapping_add(7); block].into_boxed_slice())
            .collect();
        assert!(
            again
                .iter()
                .enumerate()
                .all(|(i, b)| b.iter().all(|&x| x == (i as u8).wrapping_add(7))),
            "blocks reused after the reaper's pass hold what was written"
        );
    });
    let blocks = receive.recv().unwrap();
    assert!(
        blocks
            .iter()
            .enumerate()
            .all(|(i, b)| b.iter().all(|&x| x == i as u8))
    );
    let peak = rss_bytes();
    drop(blocks); // remote frees into the producer's pages
    let before = rss_bytes();
    let start = Instant::now();
    let mut after = before;
    while start.elapsed() < Duration::from_secs(2) {
        let light: Vec<Box<[u8; 64 << 10]>> = (0..20).map(|_| Box::new([1u8; 64 << 10])).collect();
        drop(light);
        after = rss_bytes();
        if before.saturating_sub(after) >= BYTES * 3 / 4 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let took = start.elapsed();
    println!(
        "idle producer, {} B blocks: RSS {:.1} MiB with the blocks, {:.1} MiB right after the \
         remote frees, {:.1} MiB after {took:?} of light activity on this thread",
        block,
        mib(peak),
        mib(before),
        mib(after)
    );
    assert!(
        before.saturating_sub(after) >= BYTES * 3 / 4,
        "the {} MiB freed into the idle producer's pages ({block} B blocks) were not given back: \
         RSS {:.1} -> {:.1} MiB",
        BYTES >> 20,
        mib(before),
        mib(after)
    );
    assert!(took < Duration::from_secs(1), "took {took:?}, target 1 s");
    WAKE.store(true, Ordering::Release);
    producer.thread().unpark();
    producer.join().unwrap();
}
