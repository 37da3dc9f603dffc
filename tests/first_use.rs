//! Races of first use (review defect 1 of issue 10): threads making their first heap or their
//! first allocation at the same moment, then a `fork`, then every heap destroyed.
//!
//! The bug: both racing threads registered the `pthread_atfork` handlers, so at each fork a
//! heap's lock went up twice and down once, and `Heap::destroy` then spun forever. Process
//! start-up happens once per process, so each run of the scenario is a fresh copy of this test
//! binary (this binary keeps the system allocator, so shardalloc is first used by the race
//! itself); a run that has not ended within its limit is a hang, and fails.
//!
//! Run: `cargo test --release --test first_use`.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::alloc::{GlobalAlloc, Layout};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use shardalloc::{Heap, ShardAlloc};

/// Set in the environment of the fresh copies that run the scenario.
const CHILD_VAR: &str = "SHARDALLOC_FIRST_USE_CHILD";
const RUNS: usize = 20;
const THREADS: usize = 4;
const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn first_heaps_made_together_survive_forks_and_destroy() {
    if std::env::var_os(CHILD_VAR).is_some() {
        return; // inside a fresh copy: only `scenario` runs there
    }
    // Besides each run's own limit: nothing here may outlive all of them.
    let _watchdog = watchdog::Watchdog::start("first_use", LIMIT * (RUNS as u32 + 1), || {
        "the first-use races were still running; replay: cargo test --release --test first_use"
            .to_owned()
    });
    let exe = std::env::current_exe().unwrap();
    for run in 0..RUNS {
        let mut child = Command::new(&exe)
            .args(["--exact", "scenario", "--test-threads=1", "--nocapture"])
            .env(CHILD_VAR, "1")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                panic!("run {run}: hung for {LIMIT:?} (destroy or stats after fork)");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "run {run}: the scenario failed: {status}");
    }
}

/// The scenario, in a fresh copy of the binary: `THREADS` threads behind a barrier make their
/// first heap (half of them) or their first allocation (the others) at the same moment; the
/// main thread forks twice (as `std` does when `uid` is set); every thread then destroys its
/// heap, and `stats()` returns.
#[test]
fn scenario() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return; // only meaningful in a fresh process, see the test above
    }
    let start = Barrier::new(THREADS);
    let made = Barrier::new(THREADS + 1);
    let forked = Barrier::new(THREADS + 1);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (start, made, forked) = (&start, &made, &forked);
            s.spawn(move || {
                start.wait();
                let layout = Layout::from_size_align(64, 8).unwrap();
                let (heap, block) = if t % 2 == 0 {
                    (Some(Heap::new()), std::ptr::null_mut())
                } else {
                    // SAFETY: a nonzero layout.
                    (None, unsafe { ShardAlloc.alloc(layout) })
                };
                made.wait();
                forked.wait();
                let heap = heap.unwrap_or_default();
                let p = heap.alloc(layout);
                assert!(!p.is_null());
                heap.destroy();
                if !block.is_null() {
                    // SAFETY: our live block.
                    unsafe { ShardAlloc.dealloc(block, layout) };
                }
            });
        }
        made.wait();
        for _ in 0..2 {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            let status = Command::new("/bin/true").uid(uid).status().unwrap();
            assert!(status.success());
        }
        forked.wait();
    });
    let _ = shardalloc::stats();
}
