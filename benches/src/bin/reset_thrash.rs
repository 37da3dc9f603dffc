//! No-thrash check for eager memory return: tight allocate/free cycles that
//! empty whole pages, timed, with the number of `madvise` calls they cause,
//! for ShardAlloc's default reset delay against a delay of 0 (memory given
//! back the moment a page empties).
//!
//! Usage: `cargo run --release -p shardalloc-bench --bin reset_thrash`

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::time::Instant;

use shardalloc::ShardAlloc;

/// One pattern: `blocks` blocks of `size` bytes allocated, touched and
/// freed, `cycles` times.
struct Pattern {
    name: &'static str,
    size: usize,
    blocks: usize,
    cycles: usize,
}

const PATTERNS: [Pattern; 3] = [
    Pattern {
        name: "64 x 16 KiB (medium pages)",
        size: 16 << 10,
        blocks: 64,
        cycles: 2000,
    },
    Pattern {
        name: "8 x 256 KiB (large pages)",
        size: 256 << 10,
        blocks: 8,
        cycles: 2000,
    },
    Pattern {
        name: "4096 x 64 B (small pages)",
        size: 64,
        blocks: 4096,
        cycles: 500,
    },
];

fn run(pattern: &Pattern) -> (f64, usize) {
    let layout = Layout::from_size_align(pattern.size, 8).expect("valid layout");
    let mut blocks = Vec::with_capacity(pattern.blocks);
    let before = shardalloc::stats().madvise_calls;
    let start = Instant::now();
    for _ in 0..pattern.cycles {
        for _ in 0..pattern.blocks {
            // SAFETY: a non-zero layout; every block is freed below.
            let p = unsafe { ShardAlloc.alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: the block is ours and at least one byte long.
            unsafe { p.write(1) };
            blocks.push(p);
        }
        for p in blocks.drain(..) {
            // SAFETY: allocated above with this layout.
            unsafe { ShardAlloc.dealloc(black_box(p), layout) };
        }
    }
    let elapsed = start.elapsed().as_secs_f64() * 1e9 / (pattern.cycles * pattern.blocks) as f64;
    (elapsed, shardalloc::stats().madvise_calls - before)
}

fn main() {
    println!(
        "{:<28} {:>14} {:>12} {:>14} {:>12}",
        "pattern", "default ns/blk", "madvise", "delay 0 ns/blk", "madvise"
    );
    for pattern in &PATTERNS {
        shardalloc::options::set_reset_delay_ms(10).expect("valid delay");
        let (default_ns, default_calls) = run(pattern);
        shardalloc::collect(true);
        shardalloc::options::set_reset_delay_ms(0).expect("valid delay");
        let (eager_ns, eager_calls) = run(pattern);
        shardalloc::collect(true);
        println!(
            "{:<28} {:>14.1} {:>12} {:>14.1} {:>12}",
            pattern.name, default_ns, default_calls, eager_ns, eager_calls
        );
    }
}
