//! Review defect 7: in a forked child, the heaps of parent threads that do
//! not exist in the child must not stay registered forever (their registry
//! slots and empty pages leaked), and the segments holding their live blocks
//! must become abandoned segments that the child's threads can reclaim.
//!
//! A worker thread fills pages (live blocks, and freed ones) and parks on a
//! channel — outside the allocator — while the test thread forks. The child
//! checks, without panicking (exit codes name the failed check):
//!
//! 1. only the forking thread's heap is registered (`Stats::heaps`);
//! 2. the worker's segments with live blocks were abandoned;
//! 3. the worker's blocks are intact and can be freed from the child;
//! 4. a thread started in the child allocates and frees normally.
//!
//! Run: `cargo test --release --test fork_child_heaps`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const BLOCKS: usize = 4096;
const BLOCK_SIZE: usize = 1024;

/// Child exit codes, one per check.
const OK: i32 = 0;
const STILL_REGISTERED: i32 = 10;
const NOT_ABANDONED: i32 = 11;
const CORRUPTED: i32 = 12;
const CHILD_THREAD_FAILED: i32 = 13;

#[test]
fn a_forked_child_tears_down_the_heaps_of_vanished_threads() {
    let (ready_tx, ready_rx) = mpsc::channel::<Vec<usize>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let mut blocks: Vec<Box<[u8; BLOCK_SIZE]>> = (0..BLOCKS)
            .map(|i| Box::new([(i % 251) as u8; BLOCK_SIZE]))
            .collect();
        // Free every other block: the worker's pages hold live and free blocks.
        let mut kept = Vec::new();
        for (i, block) in blocks.drain(..).enumerate() {
            if i % 2 == 0 {
                kept.push(Box::into_raw(block) as usize);
            }
        }
        ready_tx.send(kept).unwrap();
        done_rx.recv().unwrap();
    });
    let kept = ready_rx.recv().unwrap();
    let before = shardalloc::stats();
    assert!(
        before.heaps >= 2,
        "the worker and this thread have heaps: {before:?}"
    );

    // SAFETY: the child only calls the allocator, async-signal-safe libc
    // functions and `_exit`; the parent waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child(&kept);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let status = wait_with_timeout(pid, Duration::from_secs(20));
    done_tx.send(()).unwrap();
    worker.join().unwrap();
    for &addr in &kept {
        // SAFETY: the worker's live blocks, handed to us, freed once.
        drop(unsafe { Box::from_raw(addr as *mut [u8; BLOCK_SIZE]) });
    }
    let code = libc::WEXITSTATUS(status);
    assert!(
        libc::WIFEXITED(status) && code == OK,
        "child failed: status {status:#x}, exit code {code} (10: a vanished thread's heap \
         still registered; 11: its segments not abandoned; 12: its blocks corrupted; \
         13: a thread of the child failed)"
    );
}

/// The child's checks; returns its exit code.
fn child(kept: &[usize]) -> i32 {
    let stats = shardalloc::stats();
    // The forking thread's default heap is the only one left: the worker
    // and the harness's main thread do not exist here.
    if stats.heaps != 1 {
        return STILL_REGISTERED;
    }
    if stats.abandoned_segments == 0 {
        return NOT_ABANDONED;
    }
    for (n, &addr) in kept.iter().enumerate() {
        let i = 2 * n;
        // SAFETY: the worker's live block, copied into the child.
        let block = unsafe { &*(addr as *const [u8; BLOCK_SIZE]) };
        if block.iter().any(|&b| b != (i % 251) as u8) {
            return CORRUPTED;
        }
    }
    for &addr in kept {
        // SAFETY: as above; freed once, from the only thread.
        drop(unsafe { Box::from_raw(addr as *mut [u8; BLOCK_SIZE]) });
    }
    let worked = std::thread::spawn(|| {
        let v: Vec<Vec<u64>> = (0..1000).map(|i| vec![i; 100]).collect();
        v.iter()
            .enumerate()
            .all(|(i, x)| x.iter().all(|&y| y == i as u64))
    })
    .join();
    if !matches!(worked, Ok(true)) {
        return CHILD_THREAD_FAILED;
    }
    OK
}

/// Waits for `pid`; kills it and fails after `limit`.
fn wait_with_timeout(pid: libc::pid_t, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: our own child; `status` is a valid out-pointer.
        let got = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
        if got == pid {
            return status;
        }
        if start.elapsed() > limit {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("child hung for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
