//! The workload suite with jemalloc as the global allocator (see `shardalloc_bench::workloads`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
fn main() -> std::process::ExitCode {
    shardalloc_bench::workloads::main("jemalloc")
}
