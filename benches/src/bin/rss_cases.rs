//! Resident memory after frees, one case with one allocator per process (memory-return issue,
//! item 7): the cases of `tests/rss_cases/mod.rs` — the very code `tests/rss.rs` asserts on for
//! ShardAlloc — run against ShardAlloc, System, mimalloc or jemalloc.
//!
//! Usage: `rss_cases <allocator> <case> [--stop-at-target]`
//!
//! - `<allocator>`: `ShardAlloc`, `System`, `mimalloc`, `jemalloc` or `rusty_alloc` (any case).
//!   The allocator is called directly through `GlobalAlloc` for every block of the case; this
//!   process's global allocator stays System and serves only the bookkeeping, allocated before
//!   the baseline.
//! - `<case>`: `a`, `b`, `c` or `d` (see `tests/rss_cases/mod.rs`).
//! - `--stop-at-target`: end the light activity once the share is within ideal + 5 pp, as the
//!   test does (default: always 1 s, so "after 1 s" means the same for every allocator).
//!
//! After the light activity it runs the allocator's explicit release (ShardAlloc
//! `collect(true)`, System `malloc_trim(0)`, mimalloc `mi_collect(true)`, jemalloc tcache flush
//! + `arena.<all>.purge`; see `benches/src/release.rs`) and reads RSS once more.
//!
//! Prints one `@rss alloc=… case=… phase=… key=value …` line per reading (the last,
//! `phase=summary`, has every figure; `benches/rss_table.py` reads it), then a human summary.
//!
//! `cargo run --release -p shardalloc-bench --bin rss_cases -- mimalloc c`; all allocators and
//! cases, interleaved and repeated: `python3 benches/rss_table.py`.

#[path = "../release.rs"]
mod release;
#[path = "../../../tests/rss_cases/mod.rs"]
mod rss_cases;

use std::alloc::GlobalAlloc;
use std::process::ExitCode;

use rss_cases::{Case, Options, Release};
use shardalloc_bench::{ALLOCATOR_NAMES, Visitor, visit_by_name};

/// Runs the case with whichever allocator it is given and prints the readings.
struct Run {
    case: Case,
    opts: Options,
}

impl Visitor for Run {
    fn visit<A: GlobalAlloc + Sync + 'static>(&mut self, name: &'static str, alloc: &'static A) {
        let release = release::release_for(name);
        let release = release.as_ref().map(|(label, f)| Release { label, run: f });
        let report = rss_cases::run_case(alloc, self.case, self.opts, release);
        print!("{}", report.machine_lines(name));
        print!("{}", report.human(name));
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("rss_cases: {msg}");
    eprintln!(
        "usage: rss_cases <allocator> <a|b|c|d> [--stop-at-target]   (allocators: {})",
        ALLOCATOR_NAMES.join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Options::default();
    let mut positional = Vec::new();
    for a in &args {
        match a.as_str() {
            "--stop-at-target" => opts.stop_at_target = true,
            s if s.starts_with("--") => return usage(&format!("unknown option {s:?}")),
            s => positional.push(s),
        }
    }
    let [allocator, case] = positional[..] else {
        return usage("expected an allocator and a case");
    };
    let Some(case) = Case::parse(case) else {
        return usage(&format!("unknown case {case:?}"));
    };
    if !visit_by_name(allocator, &mut Run { case, opts }) {
        return usage(&format!("unknown allocator {allocator:?}"));
    }
    ExitCode::SUCCESS
}
