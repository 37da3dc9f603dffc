//! The workload suite with ShardAlloc as the global allocator (see `shardalloc_bench::workloads`).
//!
//! With `SHARDALLOC_BENCH_STATS=1` in the environment it also prints, after the `@work` line,
//! one `@stats` line with ShardAlloc's OS-call counters and bytes given back for the whole
//! process (start-up included): what the fault counts of issue 12 come from.
#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;
fn main() -> std::process::ExitCode {
    let code = shardalloc_bench::workloads::main(shardalloc_bench::report_name("ShardAlloc"));
    if std::env::var_os("SHARDALLOC_BENCH_STATS").is_some_and(|v| v == "1") {
        let s = shardalloc::stats();
        println!(
            "@stats mmap_calls={} munmap_calls={} madvise_calls={} reset_mib={:.1} moved_mib={:.1} \
             reserved_mib={:.1} committed_mib={:.1} abandoned_segments={} cached_segments={}",
            s.mmap_calls,
            s.munmap_calls,
            s.madvise_calls,
            s.reset as f64 / f64::from(1 << 20),
            s.moved as f64 / f64::from(1 << 20),
            s.reserved as f64 / f64::from(1 << 20),
            s.committed as f64 / f64::from(1 << 20),
            s.abandoned_segments,
            s.cached_segments,
        );
    }
    code
}
