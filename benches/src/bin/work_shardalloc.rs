//! The workload suite with ShardAlloc as the global allocator (see `shardalloc_bench::workloads`).
#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;
fn main() -> std::process::ExitCode {
    shardalloc_bench::workloads::main("ShardAlloc")
}
