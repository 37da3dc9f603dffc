//! Resident memory after frees, ShardAlloc as the global allocator (memory-return issue, item 7):
//! the four cases of `tests/rss_cases/mod.rs`, each in a child process of its own (this binary
//! re-run with `--exact rss_case_<x>` and `SHARDALLOC_RSS_CASE=<x>`), one child at a time.
//!
//! share = (RSS − baseline) / (peak − baseline); ideal = bytes still live / bytes allocated. Each
//! case asserts:
//!
//! * after at most 1 s of light allocator activity (every 10 ms a few blocks allocated and freed;
//!   no explicit call), share ≤ ideal + 5 pp;
//! * after `shardalloc::collect(true)`, share ≤ ideal + 2 pp;
//! * and, so that the figures mean something, that the peak rose by at least 90 % of the bytes
//!   allocated (every page of every block is written).
//!
//! Run: `cargo test --release --test rss -- --nocapture` (prints every figure; a few seconds, a
//! case that misses the activity target takes its full second). One case: `cargo test --test
//! rss -- --exact rss_case_c --nocapture`. Just the child's measurement, every activity sample
//! included and nothing judged: `SHARDALLOC_RSS_CASE=c cargo test --test rss -- --exact
//! rss_case_c --nocapture`. The same cases against System, mimalloc and jemalloc: `python3
//! benches/rss_table.py`.

mod rss_cases;

use std::process::Command;
use std::sync::Mutex;

use rss_cases::{Case, Options, Release, TARGET_AFTER_ACTIVITY, TARGET_AFTER_RELEASE};

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

/// Set in a child process: the case it runs.
const CHILD_VAR: &str = "SHARDALLOC_RSS_CASE";

/// One child at a time: the cases allocate up to 500 MiB each, and a child's timing should not
/// depend on another's page faults.
static ONE_CHILD: Mutex<()> = Mutex::new(());

/// The figures of the `phase=summary` line a child prints.
#[derive(Debug, Default)]
struct Summary {
    ideal: f64,
    allocated: f64,
    peak_delta: f64,
    after_free: f64,
    after_activity: f64,
    target_ms: Option<u64>,
    after_release: f64,
}

impl Summary {
    /// Parses the `@rss … phase=summary …` line of `stdout`, if there is one.
    fn parse(stdout: &str) -> Option<Summary> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("@rss ") && l.contains(" phase=summary "))?;
        let mut s = Summary::default();
        for field in line.split_whitespace() {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let num = || value.parse::<f64>().ok();
            match key {
                "ideal" => s.ideal = num()?,
                "allocated" => s.allocated = num()?,
                "peak_delta" => s.peak_delta = num()?,
                "after_free" => s.after_free = num()?,
                "after_activity" => s.after_activity = num()?,
                "target_ms" => s.target_ms = value.parse().ok(),
                "after_release" => s.after_release = num()?,
                _ => {}
            }
        }
        Some(s)
    }
}

/// In the child: runs `case` and prints its figures. In the parent: runs the child and checks
/// them.
fn check(case: Case) {
    let test = format!("rss_case_{}", case.letter());
    if let Ok(v) = std::env::var(CHILD_VAR) {
        if Case::parse(&v) == Some(case) {
            child(case);
        }
        // A child runs only its own case (`--exact` selects just that test anyway).
        return;
    }

    let _one = ONE_CHILD.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new(exe)
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, case.letter())
        .output()
        .expect("start the child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The child's own lines, without the activity samples and libtest's chatter.
    let ours = |l: &&str| {
        !(l.trim().is_empty()
            || l.contains(" phase=activity ")
            || l.starts_with("running ")
            || l.starts_with("test ")
            || *l == "ok")
    };
    for line in stdout.lines().filter(ours) {
        println!("[{test}] {line}");
    }
    assert!(
        out.status.success(),
        "[{test}] child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let s = Summary::parse(&stdout)
        .unwrap_or_else(|| panic!("[{test}] the child printed no summary:\n{stdout}\n{stderr}"));

    let pct = |x: f64| 100.0 * x;
    assert!(
        s.peak_delta >= 0.9 * s.allocated,
        "[{test}] the peak rose by {:.1} MiB, less than 90 % of the {:.1} MiB allocated: the \
         case did not make its blocks resident",
        s.peak_delta / (1 << 20) as f64,
        s.allocated / (1 << 20) as f64
    );
    let mut failures = Vec::new();
    if s.target_ms.is_none() {
        failures.push(format!(
            "after 1 s of light activity the share is {:.2} % (right after the frees {:.2} %), \
             target ideal {:.2} % + {:.0} pp",
            pct(s.after_activity),
            pct(s.after_free),
            pct(s.ideal),
            pct(TARGET_AFTER_ACTIVITY)
        ));
    }
    if s.after_release > s.ideal + TARGET_AFTER_RELEASE {
        failures.push(format!(
            "after collect(true) the share is {:.2} %, target ideal {:.2} % + {:.0} pp",
            pct(s.after_release),
            pct(s.ideal),
            pct(TARGET_AFTER_RELEASE)
        ));
    }
    assert!(
        failures.is_empty(),
        "[{test}] case {} ({}):\n  {}",
        case.letter(),
        case.describe(),
        failures.join("\n  ")
    );
}

/// The child's part: measure and print (the parent judges).
fn child(case: Case) {
    let opts = Options {
        stop_at_target: true,
        ..Options::default()
    };
    let collect = || shardalloc::collect(true);
    let release = Release {
        label: "collect(true)",
        run: &collect,
    };
    let report = rss_cases::run_case(&GLOBAL, case, opts, Some(release));
    // Off the line libtest started with "test rss_case_x ... ".
    println!();
    print!("{}", report.machine_lines("ShardAlloc"));
    print!("{}", report.human("ShardAlloc"));
}

#[test]
fn rss_case_a() {
    check(Case::A);
}

#[test]
fn rss_case_b() {
    check(Case::B);
}

#[test]
fn rss_case_c() {
    check(Case::C);
}

#[test]
fn rss_case_d() {
    check(Case::D);
}
