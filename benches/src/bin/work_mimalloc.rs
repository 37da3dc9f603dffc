//! The workload suite with mimalloc as the global allocator (see `shardalloc_bench::workloads`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() -> std::process::ExitCode {
    shardalloc_bench::workloads::main(shardalloc_bench::report_name("mimalloc"))
}
