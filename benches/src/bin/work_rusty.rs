//! The workload suite with rusty_alloc as the global allocator (see `shardalloc_bench::workloads`).
#[global_allocator]
static GLOBAL: rusty_alloc_api::RustyAlloc = rusty_alloc_api::RustyAlloc;
fn main() -> std::process::ExitCode {
    shardalloc_bench::workloads::main("rusty_alloc")
}
