//! Criterion micro-benchmarks: wall-clock time per operation of `ShardAlloc`, the system
//! allocator (glibc), mimalloc, jemalloc and rusty_alloc, called directly through `GlobalAlloc`
//! in one process (this binary's own `#[global_allocator]` stays the system default, so
//! criterion's allocations do not touch the allocators under test).
//!
//! Groups (each holds one benchmark per allocator, named `<group>/<allocator>`):
//!
//! - `pair_<size>`: allocate one block of `<size>` bytes and free it at once; ns per pair.
//! - `ring64_<size>`: 64 blocks stay live; allocate a new one, free the oldest; ns per step.
//! - `xthread_64`, `xthread_mix`: a producer thread allocates batches of 1000 blocks (64 B, or
//!   a mix of 8–1024 B) and a consumer thread frees them; wall-clock ns per block, pipelined
//!   (sensitive to whatever else runs on the machine).
//! - `xthread_cpu_64`, `xthread_cpu_mix`: the same pipeline, reporting the producer's plus the
//!   consumer's thread CPU time per block (the work done, steadier under load).
//!
//! Sizes: 16, 64, 256, 1024, 8192 and 65536 B, aligned to 8.
//!
//! Run: `cargo bench -p shardalloc-bench --bench micro [-- <filter>]`, then
//! `python3 benches/ratios.py` for the table. Measurement times are short so that the whole
//! run takes a few minutes on two cores; pass `--measurement-time`/`--warm-up-time` to
//! override.

use std::alloc::GlobalAlloc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use shardalloc_bench::{
    BlockLayout, CrossThread, RING_LEN, Ring, Visitor, for_each_allocator, mixed_layouts, pairs,
};

/// Block sizes of the single-thread groups, in bytes.
const SIZES: [usize; 6] = [16, 64, 256, 1024, 8192, 65536];

/// Registers `pair_<size>/<allocator>`.
struct PairBench<'g, 'c> {
    group: &'g mut BenchmarkGroup<'c, WallTime>,
    layout: BlockLayout,
}

impl Visitor for PairBench<'_, '_> {
    fn visit<A: GlobalAlloc + Sync + 'static>(&mut self, name: &'static str, alloc: &'static A) {
        let layout = self.layout;
        self.group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                pairs(alloc, layout, iters);
                start.elapsed()
            });
        });
    }
}

/// Registers `ring64_<size>/<allocator>`.
struct RingBench<'g, 'c> {
    group: &'g mut BenchmarkGroup<'c, WallTime>,
    layout: BlockLayout,
}

impl Visitor for RingBench<'_, '_> {
    fn visit<A: GlobalAlloc + Sync + 'static>(&mut self, name: &'static str, alloc: &'static A) {
        let layout = self.layout;
        self.group.bench_function(name, |b| {
            // Filling and emptying the ring happen outside the timed region.
            let mut ring = Ring::new(alloc, layout);
            b.iter_custom(|iters| {
                let start = Instant::now();
                ring.run(iters);
                start.elapsed()
            });
        });
    }
}

/// Which time a cross-thread benchmark reports.
#[derive(Clone, Copy)]
enum Clock {
    /// Wall-clock time of the pipeline.
    Wall,
    /// Producer plus consumer thread CPU time.
    Cpu,
}

/// Registers `xthread_<name>/<allocator>` or `xthread_cpu_<name>/<allocator>`.
struct CrossThreadBench<'g, 'c> {
    group: &'g mut BenchmarkGroup<'c, WallTime>,
    layouts: Vec<BlockLayout>,
    clock: Clock,
}

impl Visitor for CrossThreadBench<'_, '_> {
    fn visit<A: GlobalAlloc + Sync + 'static>(&mut self, name: &'static str, alloc: &'static A) {
        // The threads are started on first use (so a filtered-out benchmark starts none) and
        // live until the benchmark is done; one criterion iteration is one block.
        let mut workers: Option<CrossThread> = None;
        let layouts = &self.layouts;
        let clock = self.clock;
        self.group.bench_function(name, |b| {
            let xt = workers.get_or_insert_with(|| CrossThread::new(alloc, layouts.clone()));
            b.iter_custom(|blocks| {
                let times = xt.run(blocks);
                match clock {
                    Clock::Wall => times.wall,
                    Clock::Cpu => times.cpu(),
                }
            });
        });
    }
}

/// Single-thread groups: `pair_<size>` and `ring64_<size>` for every size in [`SIZES`].
fn single_thread(c: &mut Criterion) {
    for size in SIZES {
        let layout = BlockLayout::new(size).expect("bench sizes are non-zero");
        let mut group = c.benchmark_group(format!("pair_{size}"));
        group.throughput(Throughput::Elements(1));
        for_each_allocator(&mut PairBench {
            group: &mut group,
            layout,
        });
        group.finish();
    }
    for size in SIZES {
        let layout = BlockLayout::new(size).expect("bench sizes are non-zero");
        let mut group = c.benchmark_group(format!("ring{RING_LEN}_{size}"));
        group.throughput(Throughput::Elements(1));
        for_each_allocator(&mut RingBench {
            group: &mut group,
            layout,
        });
        group.finish();
    }
}

/// Cross-thread groups: `xthread_64` (all blocks 64 B) and `xthread_mix` (8–1024 B) report
/// wall-clock time per block; `xthread_cpu_64` and `xthread_cpu_mix` run the same pipeline
/// and report the producer's plus the consumer's CPU time per block.
fn cross_thread(c: &mut Criterion) {
    let fixed = vec![BlockLayout::new(64).expect("64 is non-zero")];
    let mix = mixed_layouts();
    for (clock, prefix) in [(Clock::Wall, "xthread"), (Clock::Cpu, "xthread_cpu")] {
        for (suffix, layouts) in [("64", &fixed), ("mix", &mix)] {
            let mut group = c.benchmark_group(format!("{prefix}_{suffix}"));
            group.throughput(Throughput::Elements(1));
            for_each_allocator(&mut CrossThreadBench {
                group: &mut group,
                layouts: layouts.clone(),
                clock,
            });
            group.finish();
        }
    }
}

/// Short runs: 80 benchmarks have to fit in a few minutes on two cores. Command-line options
/// (`--warm-up-time`, `--measurement-time`, `--sample-size`) override these.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(2500))
        .sample_size(50)
        .nresamples(20_000)
}

criterion_group! {
    name = benches;
    config = config();
    targets = single_thread, cross_thread
}
criterion_main!(benches);
