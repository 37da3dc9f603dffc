//! Runs one allocation pattern against one allocator, for instruction counting under
//! `valgrind --tool=callgrind` (driven by `benches/callgrind.sh`).
//!
//! Usage: `pairs <allocator> <size> <iterations> [pair|ring|xthread|xthread-mix]`
//!
//! - `<allocator>`: `ShardAlloc`, `System`, `mimalloc`, `jemalloc` or `rusty_alloc` (any case).
//! - `pair` (default): allocate and free one block `<iterations>` times
//!   (`shardalloc_bench::pairs`, the code `pair_<size>` in `micro.rs` times).
//! - `ring`: 64 live blocks, `<iterations>` allocate-new/free-oldest steps
//!   (`shardalloc_bench::Ring`, the code `ring64_<size>` times).
//! - `xthread`: `<iterations>` blocks of `<size>` bytes allocated by a producer thread and
//!   freed by a consumer thread (`shardalloc_bench::CrossThread`, the code `xthread_64` times).
//! - `xthread-mix`: `<iterations>` blocks of mixed sizes allocated by a producer thread and
//!   freed by a consumer thread (`shardalloc_bench::CrossThread`, the code `xthread_mix`
//!   times); the size argument is ignored.
//!
//! With `PAIRS_TIME=1` it prints `ns_per_op <n>` (wall clock of the pattern alone), which
//! `benches/interleaved.py` uses.
//!
//! The count of a run includes process start-up and the allocator's first-use
//! initialisation; the script subtracts a run with fewer iterations to get a per-pair figure.

use std::alloc::GlobalAlloc;
use std::process::ExitCode;

use shardalloc_bench::{
    ALLOCATOR_NAMES, BlockLayout, CrossThread, Ring, Visitor, mixed_layouts, pairs, visit_by_name,
};

/// Which pattern to run.
#[derive(Clone, Copy)]
enum Pattern {
    /// `shardalloc_bench::pairs`.
    Pair,
    /// `shardalloc_bench::Ring`.
    Ring,
    /// `shardalloc_bench::CrossThread` with blocks of `<size>` bytes.
    Cross,
    /// `shardalloc_bench::CrossThread` over `mixed_layouts()` (the size is ignored).
    CrossMix,
}

/// Runs the chosen pattern with whichever allocator it is given.
struct Run {
    pattern: Pattern,
    layout: BlockLayout,
    iters: u64,
}

impl Visitor for Run {
    fn visit<A: GlobalAlloc + Sync + 'static>(&mut self, _name: &'static str, alloc: &'static A) {
        let start = std::time::Instant::now();
        self.run(alloc);
        if std::env::var_os("PAIRS_TIME").is_some() {
            let ns = start.elapsed().as_nanos() as f64 / self.iters.max(1) as f64;
            println!("ns_per_op {ns:.3}");
        }
    }
}

impl Run {
    fn run<A: GlobalAlloc + Sync + 'static>(&self, alloc: &'static A) {
        match self.pattern {
            Pattern::Pair => pairs(alloc, self.layout, self.iters),
            Pattern::Ring => Ring::new(alloc, self.layout).run(self.iters),
            Pattern::Cross | Pattern::CrossMix => {
                let layouts = match self.pattern {
                    Pattern::Cross => vec![self.layout],
                    _ => mixed_layouts(),
                };
                let times = CrossThread::new(alloc, layouts).run(self.iters);
                if std::env::var_os("PAIRS_VERBOSE").is_some() {
                    let per =
                        |d: std::time::Duration| d.as_nanos() as f64 / self.iters.max(1) as f64;
                    eprintln!(
                        "per block: wall {:.1} ns, producer {:.1} ns, consumer {:.1} ns",
                        per(times.wall),
                        per(times.producer_cpu),
                        per(times.consumer_cpu)
                    );
                }
            }
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("pairs: {msg}");
    eprintln!(
        "usage: pairs <allocator> <size> <iterations> [pair|ring|xthread|xthread-mix]   (allocators: {})",
        ALLOCATOR_NAMES.join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(3..=4).contains(&args.len()) {
        return usage("expected 3 or 4 arguments");
    }
    let Some(layout) = args[1].parse().ok().and_then(BlockLayout::new) else {
        return usage("size must be a positive integer");
    };
    let Ok(iters) = args[2].parse() else {
        return usage("iterations must be a non-negative integer");
    };
    let pattern = match args.get(3).map(String::as_str) {
        None | Some("pair") => Pattern::Pair,
        Some("ring") => Pattern::Ring,
        Some("xthread") => Pattern::Cross,
        Some("xthread-mix") => Pattern::CrossMix,
        Some(other) => return usage(&format!("unknown pattern {other:?}")),
    };
    let mut run = Run {
        pattern,
        layout,
        iters,
    };
    if !visit_by_name(&args[0], &mut run) {
        return usage(&format!("unknown allocator {:?}", args[0]));
    }
    ExitCode::SUCCESS
}
