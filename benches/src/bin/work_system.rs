//! The workload suite with System as the global allocator (see `shardalloc_bench::workloads`).
#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;
fn main() -> std::process::ExitCode {
    shardalloc_bench::workloads::main("System")
}
