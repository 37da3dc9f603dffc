//! Races of first use: threads making their first `shardalloc::Heap`, or their first allocation
//! through the global allocator, at the same moment (behind a `std::sync::Barrier`, then a spin
//! until all are past it, so that they leave together), interleaved with forks, then every heap
//! destroyed and `shardalloc::stats()` called.
//!
//! Why: first use is where per-process and per-thread set-up happens (the `pthread_atfork`
//! registration, registry entries, thread ids, exit keys), and a fork handler sees whatever state
//! that set-up is in. Review defect 1 of issue 10: two threads creating their first heaps together
//! both registered the fork handlers, so at every fork the forking thread's heap lock went up
//! twice and down once, and `Heap::destroy` then spun forever. Such a bug shows as a hang, so
//! everything here runs under a limit: a hang fails in bounded time, naming the round, what each
//! thread was doing, and the seed.
//!
//! * `first_use_races_forks_in_process` (randomized): 100 rounds; each starts 4–8 fresh threads
//!   that make their first heap and their first global allocation at the same moment (some heap
//!   first, some allocation first) while the main thread (which owns a heap of its own) forks
//!   once in the middle of the race and once after it; about a third of the racing threads also
//!   fork once, with their heap live (the forking thread's own heaps are the ones the fork
//!   handlers lock and unlock). Each fork is either the way `std::process::Command` forks when
//!   `uid` is set (`Command::new("/bin/true").uid(getuid()).status()`: `fork` + `exec`, not
//!   `posix_spawn`), or a raw `libc::fork()` whose child allocates through a `Heap` and the global
//!   allocator, checks and frees, and `_exit(0)`s (the parent polls `waitpid` with `WNOHANG`,
//!   kills a child still running after 10 s, and fails). After the forks every thread destroys its
//!   heap (and makes, uses and destroys another), the main thread destroys its own, and `stats()`
//!   must return within 2 s after each fork. A racing thread not finished 10 s after the forks
//!   fails the test naming the stage of every thread; a round still running after 20 s (the main
//!   thread stuck in a fork, say) is aborted by the watchdog with the same report.
//! * Process-wide set-up happens once per process, and in this binary the test harness allocates
//!   first. So the process-wide race runs in fresh copies of this binary (`current_exe()` started
//!   with `SHARDALLOC_FIRST_USE_CHILD` set, `<child test> --exact --ignored --test-threads=1`), 20
//!   copies per scenario, each killed and failed if still running after 10 s. In those copies the
//!   global allocator of this binary forwards to `std::alloc::System` (decided once, at the
//!   process's first allocation, by that variable; no block ever crosses allocators), so
//!   shardalloc's first use in the process is the race itself (checked: `stats()` shows no heap
//!   and no mapping before it); there "first allocation through the global allocator" calls
//!   `ShardAlloc`'s `GlobalAlloc` methods directly, which is all `#[global_allocator]` does.
//!   Elsewhere the global allocator is `ShardAlloc`.
//!   - `defect_1_two_first_heaps_then_fork_then_destroy`, the regression test of defect 1: two
//!     threads make the process's first heaps behind a barrier, each forks via `Command` with
//!     `uid`, then each destroys its heap (on the code before the fix, a copy hangs in `destroy`
//!     within the first few runs);
//!   - `first_use_of_the_process_races_forks`: 4–8 threads, heaps first and `ShardAlloc`
//!     allocations first; the main thread forks via `Command` in the middle of the race and raw
//!     after it, two racing threads fork too (one each way).
//!
//! The watchdog is not `tests/common/watchdog.rs`'s, whose thread formats its message through the
//! global allocator: after a fork that leaves heap locks held, that thread blocks like every
//! other (seen on a deliberately broken build). `HangGuard` below allocates nothing once started.
//!
//! Run: `cargo test --release --test first_use -- --nocapture`. Replay the randomized choices
//! (thread counts, who goes first, who forks how; not the interleaving) with
//! `SHARDALLOC_SEED=<seed> cargo test --release --test first_use <test> -- --exact`; a failing
//! fresh copy is named with the command that reruns it alone. `SHARDALLOC_TEST_SCALE=<k>` runs k
//! times the rounds and fresh copies.

mod common;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use shardalloc::{Heap, ShardAlloc};

// === the global allocator ===

/// Set in the environment of the fresh copies of this binary; its value names the scenario.
const CHILD_VAR: &str = "SHARDALLOC_FIRST_USE_CHILD";

/// This binary's global allocator: `ShardAlloc`, except in the fresh copies (where
/// `SHARDALLOC_FIRST_USE_CHILD` is set) that run a process-wide first-use race, where it is
/// `System`, so that nothing uses shardalloc before the race does. Decided at the process's first
/// allocation, before any block exists, and never changed: no block crosses allocators.
struct FirstUseGlobal;

/// 0: not decided yet; 1: `ShardAlloc`; 2: `System`.
static MODE: AtomicU8 = AtomicU8::new(0);

fn uses_system() -> bool {
    // Relaxed: every thread that decides reads the same environment and stores the same value.
    match MODE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            // SAFETY: a NUL-terminated name; `getenv` neither allocates nor keeps the pointer.
            let child = !unsafe { libc::getenv(c"SHARDALLOC_FIRST_USE_CHILD".as_ptr()) }.is_null();
            MODE.store(if child { 2 } else { 1 }, Ordering::Relaxed);
            child
        }
    }
}

// SAFETY: forwards every call to one allocator, the same for the life of the process.
unsafe impl GlobalAlloc for FirstUseGlobal {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe {
            if uses_system() {
                System.alloc(layout)
            } else {
                ShardAlloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe {
            if uses_system() {
                System.alloc_zeroed(layout)
            } else {
                ShardAlloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller; the block came from the same allocator.
        unsafe {
            if uses_system() {
                System.dealloc(ptr, layout)
            } else {
                ShardAlloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller; the block came from the same allocator.
        unsafe {
            if uses_system() {
                System.realloc(ptr, layout, new_size)
            } else {
                ShardAlloc.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[global_allocator]
static GLOBAL: FirstUseGlobal = FirstUseGlobal;

// === limits ===

/// Rounds of the in-process test (times `SHARDALLOC_TEST_SCALE`).
const ROUNDS: usize = 100;
/// Fresh copies per process-wide scenario (times `SHARDALLOC_TEST_SCALE`).
const FRESH_RUNS: usize = 20;
/// How long a forked child, or a fresh copy, may run.
const CHILD_LIMIT: Duration = Duration::from_secs(10);
/// How long a racing thread may take to finish once the forks are done.
const THREAD_LIMIT: Duration = Duration::from_secs(10);
/// How long one round may take before its watchdog aborts the process.
const ROUND_LIMIT: Duration = Duration::from_secs(20);
/// How long `stats()` may take.
const STATS_LIMIT: Duration = Duration::from_secs(2);

// === forks ===

/// How the main thread forks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ForkKind {
    /// `Command::new("/bin/true").uid(getuid()).status()`: `std` forks (running the fork
    /// handlers) instead of using `posix_spawn` when `uid` is set.
    CommandWithUid,
    /// `libc::fork()`; the child allocates and frees through a heap and the global allocator.
    Raw,
}

/// How a forked child ended.
enum Outcome {
    Exited(i32),
    Signaled(i32),
    Hung,
}

/// Polls `waitpid` for `pid`; kills it (and reports `Hung`) after `CHILD_LIMIT`.
fn wait_child(pid: libc::pid_t) -> Outcome {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid({pid}) failed");
        if r == pid {
            return if libc::WIFEXITED(status) {
                Outcome::Exited(libc::WEXITSTATUS(status))
            } else {
                Outcome::Signaled(libc::WTERMSIG(status))
            };
        }
        if start.elapsed() > CHILD_LIMIT {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &raw mut status, 0);
            }
            return Outcome::Hung;
        }
        thread::sleep(Duration::from_micros(200));
    }
}

/// Forks the way `kind` says; `Err` describes a fork that failed, a child that failed or hung.
fn fork(kind: ForkKind, salt: u64) -> Result<(), String> {
    match kind {
        ForkKind::CommandWithUid => {
            // SAFETY: `getuid` has no preconditions.
            let uid = unsafe { libc::getuid() };
            let status = Command::new("/bin/true")
                .uid(uid)
                .status()
                .map_err(|e| format!("Command::new(\"/bin/true\").uid({uid}).status(): {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "/bin/true started with uid {uid} ended with {status}"
                ))
            }
        }
        ForkKind::Raw => {
            // SAFETY: the child only calls the allocator, plain libc functions and `_exit`, and
            // never returns; the parent waits for it.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(format!("fork failed: {}", std::io::Error::last_os_error()));
            }
            if pid == 0 {
                // SAFETY: `_exit` has no preconditions; nothing is flushed or destroyed.
                unsafe { libc::_exit(child_allocates(salt)) }
            }
            match wait_child(pid) {
                Outcome::Exited(0) => Ok(()),
                Outcome::Exited(code) => Err(format!(
                    "the forked child failed with exit code {code} ({})",
                    child_failure(code)
                )),
                Outcome::Signaled(sig) => Err(format!("the forked child died of signal {sig}")),
                Outcome::Hung => Err(format!(
                    "the forked child was still running after {CHILD_LIMIT:?} (killed): a hang in \
                     the allocator after fork"
                )),
            }
        }
    }
}

/// What a forked child's exit code means.
fn child_failure(code: i32) -> &'static str {
    match code {
        10 => "Heap::try_new failed",
        11 => "a heap allocation returned null",
        12 => "ShardAlloc::alloc returned null",
        13 => "a block's contents changed",
        14 => "a Vec through the global allocator has the wrong contents",
        _ => "unknown",
    }
}

/// A forked child's work: blocks of several sizes (small to huge) from a new heap and from
/// `ShardAlloc`, filled, checked, freed (some singly, the rest with the heap), `stats()`, and a
/// `Vec` through the global allocator. Returns the exit code. No panic, no lock but the
/// allocator's.
fn child_allocates(salt: u64) -> i32 {
    const SIZES: [usize; 7] = [8, 100, 1000, 20_000, 200_000, 1 << 20, 5 << 20];
    let Ok(heap) = Heap::try_new() else {
        return 10;
    };
    let mut heap_blocks = [(ptr::null_mut::<u8>(), 0usize); SIZES.len()];
    let mut global_blocks = [(ptr::null_mut::<u8>(), 0usize); SIZES.len()];
    for (i, &size) in SIZES.iter().enumerate() {
        let fill = ((salt as u8) ^ (i as u8)) | 1;
        let Ok(layout) = Layout::from_size_align(size, 16) else {
            return 11;
        };
        let p = heap.alloc(layout);
        if p.is_null() {
            return 11;
        }
        // SAFETY: a live block of `size` bytes.
        unsafe { p.write_bytes(fill, size) };
        heap_blocks[i] = (p, size);
        // SAFETY: a non-zero size.
        let q = unsafe { ShardAlloc.alloc(layout) };
        if q.is_null() {
            return 12;
        }
        // SAFETY: a live block of `size` bytes.
        unsafe { q.write_bytes(!fill, size) };
        global_blocks[i] = (q, size);
    }
    for (i, (&(p, size), &(q, _))) in heap_blocks.iter().zip(&global_blocks).enumerate() {
        let fill = ((salt as u8) ^ (i as u8)) | 1;
        // SAFETY: live blocks of `size` bytes.
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(p, size),
                std::slice::from_raw_parts(q, size),
            )
        };
        if a.iter().any(|&x| x != fill) || b.iter().any(|&x| x != !fill) {
            return 13;
        }
        if i.is_multiple_of(2) {
            // SAFETY: a live block of the heap, freed once.
            unsafe { shardalloc::free(p) };
        }
        let Ok(layout) = Layout::from_size_align(size, 16) else {
            return 12;
        };
        // SAFETY: a live block allocated with `layout`.
        unsafe { ShardAlloc.dealloc(q, layout) };
    }
    let _ = shardalloc::stats();
    heap.destroy();
    let v: Vec<u64> = (0..1000u64).collect();
    if v.iter().sum::<u64>() != 999 * 1000 / 2 {
        return 14;
    }
    drop(v);
    let _ = shardalloc::stats();
    0
}

/// Calls `stats()`; fails (naming `what`) if it takes longer than `STATS_LIMIT`.
fn stats_promptly(what: &str) -> Duration {
    let t0 = Instant::now();
    let s = shardalloc::stats();
    let took = t0.elapsed();
    assert!(
        took < STATS_LIMIT,
        "{what}: stats() took {took:?} (limit {STATS_LIMIT:?}): {s:?}"
    );
    took
}

// === the racing threads ===

/// What a racing thread does first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum First {
    /// `Heap::new()`, then an allocation through the global allocator.
    Heap,
    /// An allocation through the global allocator, then `Heap::new()`.
    GlobalAlloc,
}

/// Where a racing thread is, for hang reports (indices: the `S_*` constants).
const STAGES: [&str; 9] = [
    "starting",
    "waiting at the start barrier",
    "making its first heap / first allocation",
    "waiting for the other threads' heaps",
    "forking",
    "waiting for the forks to end",
    "destroying its heap",
    "making, using and destroying a heap after the forks",
    "done",
];
const S_START_BARRIER: usize = 1;
const S_FIRST_USE: usize = 2;
const S_MADE: usize = 3;
const S_FORKING: usize = 4;
const S_FORKED: usize = 5;
const S_DESTROYING: usize = 6;
const S_AFTER: usize = 7;
const S_DONE: usize = 8;

/// Shared by the main thread and the racers of one round (or of one fresh copy).
struct Race {
    start: Barrier,
    made: Barrier,
    forked: Barrier,
    stages: Vec<AtomicUsize>,
    /// Racers past the start barrier; they spin until all are, so that they leave together
    /// (a barrier wakes its waiters one by one, tens of microseconds apart).
    line: AtomicUsize,
    /// Whether the racers' global allocations go through `ShardAlloc` directly (in the fresh
    /// copies, where the global allocator is `System`) or through the global allocator.
    direct: bool,
}

impl Race {
    fn new(threads: usize, direct: bool) -> Arc<Race> {
        Arc::new(Race {
            start: Barrier::new(threads + 1),
            made: Barrier::new(threads + 1),
            forked: Barrier::new(threads + 1),
            stages: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            line: AtomicUsize::new(0),
            direct,
        })
    }

    /// Waits at the start barrier, then until every racer has passed it.
    fn start_line(&self) {
        self.start.wait();
        // SeqCst: a plain counter every racer waits on; the cost does not matter here.
        self.line.fetch_add(1, Ordering::SeqCst);
        let mut spins = 0u32;
        while self.line.load(Ordering::SeqCst) < self.stages.len() {
            spins += 1;
            if spins < 100_000 {
                std::hint::spin_loop();
            } else {
                thread::yield_now(); // more racers than cores: let the others run
            }
        }
    }

    fn set(&self, t: usize, stage: usize) {
        // Relaxed: read for reports only.
        self.stages[t].store(stage, Ordering::Relaxed);
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for (t, stage) in self.stages.iter().enumerate() {
            // Relaxed: a report.
            let stage = stage.load(Ordering::Relaxed).min(STAGES.len() - 1);
            s.push_str(&format!("\n  thread {t}: {}", STAGES[stage]));
        }
        s
    }
}

/// A block from the global allocator (or from `ShardAlloc` directly), filled with a byte.
struct GlobalBlock {
    ptr: *mut u8,
    layout: Layout,
    fill: u8,
    direct: bool,
}

impl GlobalBlock {
    fn new(size: usize, fill: u8, direct: bool) -> GlobalBlock {
        let layout = Layout::from_size_align(size, 16).expect("layout");
        // SAFETY: a non-zero size.
        let ptr = unsafe {
            if direct {
                ShardAlloc.alloc(layout)
            } else {
                GLOBAL.alloc(layout)
            }
        };
        assert!(!ptr.is_null(), "allocation of {layout:?} failed");
        // SAFETY: a live block of `size` bytes.
        unsafe { ptr.write_bytes(fill, size) };
        GlobalBlock {
            ptr,
            layout,
            fill,
            direct,
        }
    }

    fn intact(&self) -> bool {
        // SAFETY: a live block of `layout.size()` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) };
        bytes.iter().all(|&b| b == self.fill)
    }
}

impl Drop for GlobalBlock {
    fn drop(&mut self) {
        // SAFETY: a live block allocated with `layout` by the same allocator, freed once.
        unsafe {
            if self.direct {
                ShardAlloc.dealloc(self.ptr, self.layout);
            } else {
                GLOBAL.dealloc(self.ptr, self.layout);
            }
        }
    }
}

/// Blocks of a few sizes from `heap`, each filled with its own byte.
fn heap_blocks(heap: &Heap, rng: &mut SmallRng) -> Vec<(*mut u8, usize, u8)> {
    (0..rng.random_range(1..=6))
        .map(|_| {
            let size = match rng.random_range(0..10u32) {
                0..=5 => rng.random_range(1..=1024),
                6..=8 => rng.random_range(1025..=256 * 1024),
                _ => rng.random_range(256 * 1024..=6 << 20),
            };
            let p = heap.alloc(Layout::from_size_align(size, 8).expect("layout"));
            assert!(!p.is_null(), "a heap allocation of {size} bytes failed");
            let fill = rng.random::<u8>() | 1;
            // SAFETY: a live block of `size` bytes.
            unsafe { p.write_bytes(fill, size) };
            (p, size, fill)
        })
        .collect()
}

fn heap_blocks_intact(blocks: &[(*mut u8, usize, u8)]) -> bool {
    blocks.iter().all(|&(p, size, fill)| {
        // SAFETY: live blocks of `size` bytes.
        unsafe { std::slice::from_raw_parts(p, size) }
            .iter()
            .all(|&b| b == fill)
    })
}

/// A racing thread: waits at the start barrier, makes its first heap and its first global
/// allocation in the order `first` says, forks itself if `fork_kind` says so (with its heap
/// live: the forking thread's own heaps are the ones the fork handlers lock and unlock), waits
/// for every fork to end, then destroys its heap, makes and destroys another, and frees its
/// global blocks. `what` names the round (and seed) in assertion messages.
fn racer(t: usize, first: First, fork_kind: Option<ForkKind>, seed: u64, race: &Race, what: &str) {
    let mut rng =
        SmallRng::seed_from_u64(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let size = rng.random_range(1..=4096);
    race.set(t, S_START_BARRIER);
    race.start_line();
    race.set(t, S_FIRST_USE);
    let (heap, global) = match first {
        First::Heap => {
            let heap = Heap::new();
            (heap, GlobalBlock::new(size, 0x5A, race.direct))
        }
        First::GlobalAlloc => {
            let global = GlobalBlock::new(size, 0x5A, race.direct);
            (Heap::new(), global)
        }
    };
    let blocks = heap_blocks(&heap, &mut rng);
    let more = GlobalBlock::new(rng.random_range(1..=200_000), 0xC3, race.direct);
    race.set(t, S_MADE);
    race.made.wait();
    if let Some(kind) = fork_kind {
        race.set(t, S_FORKING);
        if let Err(e) = fork(kind, seed ^ t as u64) {
            panic!("{what}: thread {t}: its fork ({kind:?}): {e}");
        }
    }
    race.set(t, S_FORKED);
    race.forked.wait();
    race.set(t, S_DESTROYING);
    assert!(
        heap_blocks_intact(&blocks),
        "{what}: thread {t}: a heap block changed across the forks"
    );
    heap.destroy();
    race.set(t, S_AFTER);
    let again = Heap::new();
    let again_blocks = heap_blocks(&again, &mut rng);
    assert!(heap_blocks_intact(&again_blocks), "{what}: thread {t}");
    again.destroy();
    assert!(
        global.intact() && more.intact(),
        "{what}: thread {t}: a global block changed across the forks"
    );
    drop((global, more));
    race.set(t, S_DONE);
}

/// Waits for every racer to finish (`THREAD_LIMIT` each) and joins them, passing on a panic.
fn join_racers(handles: Vec<thread::JoinHandle<()>>, race: &Race, what: &str) {
    let deadline = Instant::now() + THREAD_LIMIT;
    for (t, h) in handles.into_iter().enumerate() {
        while !h.is_finished() {
            if Instant::now() > deadline {
                panic!(
                    "{what}: thread {t} had not finished {THREAD_LIMIT:?} after the forks (a heap \
                     that can no longer be destroyed?); threads:{}",
                    race.describe()
                );
            }
            thread::sleep(Duration::from_micros(200));
        }
        if let Err(e) = h.join() {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{what}: thread {t} panicked: {msg}");
        }
    }
}

// === an allocation-free watchdog ===

/// What the main thread of a round is doing, for hang reports.
const MAIN_STAGES: [&str; 6] = [
    "starting the threads",
    "forking during the race",
    "waiting for the heaps",
    "forking after the race",
    "waiting for the threads",
    "calling stats()",
];

/// What a [`HangGuard`]'s thread reads.
struct GuardState {
    done: AtomicBool,
    limit: Duration,
    /// Names the test, the seed, the round and the replay command; built before the guard starts.
    header: String,
    /// Index into `main_stages`, or a plain number if `main_stages` is empty.
    main: AtomicUsize,
    main_stages: &'static [&'static str],
    race: Option<Arc<Race>>,
}

/// A watchdog that allocates nothing once started, unlike `tests/common/watchdog.rs` (whose thread
/// formats its message, through the global allocator, when the limit passes): a bug that leaves
/// heap locks held after a fork blocks every thread that allocates — the watchdog's too, if it
/// does (`tests/common/watchdog.rs` hung that way on a deliberately broken build). Its thread is a
/// raw pthread (no Rust thread start-up, no thread-local state) that only sleeps, reads atomics,
/// writes to file descriptor 2 and aborts.
struct HangGuard {
    state: *mut GuardState,
    thread: libc::pthread_t,
}

impl HangGuard {
    fn start(
        header: String,
        limit: Duration,
        main_stages: &'static [&'static str],
        race: Option<Arc<Race>>,
    ) -> HangGuard {
        let state = Box::into_raw(Box::new(GuardState {
            done: AtomicBool::new(false),
            limit,
            header,
            main: AtomicUsize::new(0),
            main_stages,
            race,
        }));
        let mut thread = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
        // SAFETY: `guard_main` has the signature pthread expects; `state` stays valid until the
        // thread is joined in `drop`.
        let r = unsafe {
            libc::pthread_create(
                thread.as_mut_ptr(),
                ptr::null(),
                guard_main,
                state.cast::<libc::c_void>(),
            )
        };
        assert_eq!(r, 0, "pthread_create for the watchdog");
        HangGuard {
            state,
            // SAFETY: initialised by the successful `pthread_create`.
            thread: unsafe { thread.assume_init() },
        }
    }

    /// Records what the main thread is doing (an index into `main_stages`, or a number).
    fn main(&self, stage: usize) {
        // SAFETY: `state` lives until `drop`.
        let state = unsafe { &*self.state };
        // Relaxed: read for reports only.
        state.main.store(stage, Ordering::Relaxed);
    }
}

impl Drop for HangGuard {
    fn drop(&mut self) {
        // SAFETY: `state` lives until the end of this function.
        let state = unsafe { &*self.state };
        // Release: nothing to publish but the flag itself; pairs with the Acquire load.
        state.done.store(true, Ordering::Release);
        // SAFETY: our joinable thread, joined once; then nothing reads `state` any more, and it
        // came from `Box::into_raw`.
        unsafe {
            libc::pthread_join(self.thread, ptr::null_mut());
            drop(Box::from_raw(self.state));
        }
    }
}

/// The watchdog thread: waits for `done` or the limit; at the limit writes what every thread
/// was doing to fd 2 and aborts the process.
extern "C" fn guard_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: the `GuardState` that `HangGuard::start` passed; it outlives this thread.
    let state = unsafe { &*arg.cast::<GuardState>() };
    let start = Instant::now();
    // Acquire: pairs with the Release store in `drop`.
    while !state.done.load(Ordering::Acquire) {
        if start.elapsed() > state.limit {
            report_hang(state);
            // SAFETY: `abort` has no preconditions.
            unsafe { libc::abort() };
        }
        // SAFETY: `usleep` has no preconditions.
        unsafe { libc::usleep(1000) };
    }
    ptr::null_mut()
}

/// Writes the hang report without allocating.
fn report_hang(state: &GuardState) {
    let w = |b: &[u8]| watchdog::write_stderr(b);
    w(b"\n[first_use] WATCHDOG: still running after ");
    write_number(state.limit.as_secs() as usize);
    w(b" s, probably hung: ");
    w(state.header.as_bytes());
    // Relaxed: a report.
    let main = state.main.load(Ordering::Relaxed);
    w(b"\n  main thread: ");
    match state.main_stages.get(main) {
        Some(stage) => w(stage.as_bytes()),
        None => write_number(main),
    }
    if let Some(race) = &state.race {
        for (t, stage) in race.stages.iter().enumerate() {
            w(b"\n  thread ");
            write_number(t);
            w(b": ");
            // Relaxed: a report.
            let stage = stage.load(Ordering::Relaxed).min(STAGES.len() - 1);
            w(STAGES[stage].as_bytes());
        }
    }
    w(b"\naborting\n");
}

/// Writes `n` in decimal to fd 2 without allocating.
fn write_number(mut n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    watchdog::write_stderr(&buf[i..]);
}

// === in process ===

/// See the module documentation.
#[test]
fn first_use_races_forks_in_process() {
    const NAME: &str = "first_use_races_forks_in_process";
    assert!(
        !uses_system(),
        "this test needs ShardAlloc as the global allocator"
    );
    let seed = common::seed(NAME);
    let mut rng = SmallRng::seed_from_u64(seed);
    let replay = format!(
        "replay: {}={seed} cargo test --release --test first_use {NAME} -- --exact",
        common::SEED_VAR
    );
    let rounds = ROUNDS * common::scale();
    let t0 = Instant::now();
    let (mut forks, mut max_stats) = (0usize, Duration::ZERO);
    for round in 0..rounds {
        let threads = rng.random_range(4..=8);
        let firsts: Vec<First> = (0..threads)
            .map(|_| {
                if rng.random_bool(0.5) {
                    First::Heap
                } else {
                    First::GlobalAlloc
                }
            })
            .collect();
        let pick = |rng: &mut SmallRng| {
            if rng.random_bool(0.5) {
                ForkKind::CommandWithUid
            } else {
                ForkKind::Raw
            }
        };
        let during = pick(&mut rng);
        let after = pick(&mut rng);
        let racer_forks: Vec<Option<ForkKind>> = (0..threads)
            .map(|_| rng.random_bool(0.3).then(|| pick(&mut rng)))
            .collect();
        let what = format!(
            "seed {seed}, round {round} ({threads} threads first doing {firsts:?}, then forking \
             {racer_forks:?}; main thread's fork during the race: {during:?}, after it: \
             {after:?}); {replay}"
        );
        let race = Race::new(threads, false);
        let guard = HangGuard::start(
            format!("[{NAME}] {what}"),
            ROUND_LIMIT,
            &MAIN_STAGES,
            Some(race.clone()),
        );
        let set_main = |stage: usize| guard.main(stage);
        // The main thread's own first-class heap, locked by the fork handlers as the forking
        // thread's.
        let own = Heap::new();
        let own_block = own.alloc(Layout::from_size_align(300, 8).expect("layout"));
        assert!(!own_block.is_null(), "{what}: the main thread's heap");
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (race, what) = (race.clone(), what.clone());
                let (first, fork_kind) = (firsts[t], racer_forks[t]);
                thread::Builder::new()
                    .name(format!("racer-{t}"))
                    .spawn(move || racer(t, first, fork_kind, seed ^ round as u64, &race, &what))
                    .expect("spawn a racer")
            })
            .collect();
        race.start.wait();
        set_main(1);
        if let Err(e) = fork(during, seed ^ round as u64) {
            panic!("{what}: the fork during the race: {e}");
        }
        set_main(2);
        race.made.wait();
        max_stats = max_stats.max(stats_promptly(&format!("{what}: after the first fork")));
        set_main(3);
        if let Err(e) = fork(after, seed ^ !(round as u64)) {
            panic!("{what}: the fork after the race: {e}");
        }
        forks += 2 + racer_forks.iter().flatten().count();
        max_stats = max_stats.max(stats_promptly(&format!("{what}: after the second fork")));
        set_main(4);
        race.forked.wait();
        own.destroy();
        join_racers(handles, &race, &what);
        set_main(5);
        max_stats = max_stats.max(stats_promptly(&format!("{what}: after the round")));
    }
    println!(
        "[{NAME}] {rounds} rounds, {forks} forks in {:?}; slowest stats() {max_stats:?}",
        t0.elapsed()
    );
}

// === fresh processes ===

/// Runs the ignored test `scenario` in `runs` fresh copies of this binary, one after the other,
/// each with `CHILD_LIMIT`; fails on the first copy that fails or hangs, with its output.
fn run_fresh_copies(name: &str, scenario: &str, seed: u64, runs: usize) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let t0 = Instant::now();
    let guard = HangGuard::start(
        format!("[{name}] seed {seed}: the main thread is at fresh copy number (below)"),
        CHILD_LIMIT * (runs as u32 + 2),
        &[],
        None,
    );
    for run in 0..runs {
        guard.main(run);
        let run_seed = seed ^ (run as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
        let mut child = Command::new(&exe)
            .args([
                scenario,
                "--exact",
                "--ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD_VAR, scenario)
            .env(common::SEED_VAR, run_seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a fresh copy of the test binary");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the fresh copy") {
                break Some(status);
            }
            if start.elapsed() > CHILD_LIMIT {
                let _ = child.kill();
                break None;
            }
            thread::sleep(Duration::from_millis(2));
        };
        let out = child.wait_with_output().expect("the fresh copy's output");
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let replay = format!(
            "replay this copy: {CHILD_VAR}={scenario} {}={run_seed} {} {scenario} --exact \
             --ignored --nocapture",
            common::SEED_VAR,
            exe.display()
        );
        match status {
            Some(s) if s.success() => {}
            Some(s) => panic!(
                "[{name}] seed {seed}: fresh copy {run} of {runs} failed: {s}; {replay}\nits \
                 output:\n{output}"
            ),
            None => panic!(
                "[{name}] seed {seed}: fresh copy {run} of {runs} still running after \
                 {CHILD_LIMIT:?} (killed): a hang; {replay}\nits output:\n{output}"
            ),
        }
    }
    println!("[{name}] {runs} fresh copies passed in {:?}", t0.elapsed());
}

/// In a fresh copy: checks that nothing used shardalloc yet (else the race is not the process's
/// first use, and the scenario proves nothing) and returns true. Elsewhere (`--include-ignored`
/// in a normal run) says so and returns false: the scenario only means something in a fresh copy.
fn first_use_of_the_process(scenario: &str) -> bool {
    if !uses_system() {
        println!(
            "{scenario}: not in a fresh copy of the binary, nothing to do (see the module docs)"
        );
        return false;
    }
    let s = shardalloc::stats();
    assert!(
        s.heaps == 0 && s.mmap_calls == 0,
        "{scenario}: shardalloc was used before the race: {s:?}"
    );
    true
}

/// Defect 1's regression test: see the module documentation.
#[test]
fn defect_1_two_first_heaps_then_fork_then_destroy() {
    run_fresh_copies(
        "defect_1_two_first_heaps_then_fork_then_destroy",
        "child_two_first_heaps_then_fork_then_destroy",
        0,
        FRESH_RUNS * common::scale(),
    );
}

/// Run by `defect_1_two_first_heaps_then_fork_then_destroy` in fresh copies.
#[test]
#[ignore = "run in fresh copies by defect_1_two_first_heaps_then_fork_then_destroy"]
fn child_two_first_heaps_then_fork_then_destroy() {
    if !first_use_of_the_process("child_two_first_heaps_then_fork_then_destroy") {
        return;
    }
    let race = Race::new(2, true);
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let race = race.clone();
            thread::spawn(move || {
                race.set(t, S_START_BARRIER);
                race.start_line();
                race.set(t, S_FIRST_USE);
                let heap = Heap::new();
                let p = heap.alloc(Layout::from_size_align(64, 8).expect("layout"));
                assert!(!p.is_null(), "thread {t}: the heap allocates");
                race.set(t, S_MADE);
                race.made.wait();
                // The heap's owner forks: its heaps are the ones the fork handlers lock.
                race.set(t, S_FORKING);
                if let Err(e) = fork(ForkKind::CommandWithUid, 0) {
                    panic!("thread {t}: the fork: {e}");
                }
                race.set(t, S_FORKED);
                race.forked.wait();
                race.set(t, S_DESTROYING);
                heap.destroy();
                race.set(t, S_DONE);
            })
        })
        .collect();
    race.start.wait();
    race.made.wait();
    race.forked.wait();
    stats_promptly("after the forks");
    join_racers(handles, &race, "defect 1 scenario");
    stats_promptly("after destroy");
}

/// The process-wide first-use race of many threads: see the module documentation.
#[test]
fn first_use_of_the_process_races_forks() {
    const NAME: &str = "first_use_of_the_process_races_forks";
    let seed = common::seed(NAME);
    run_fresh_copies(
        NAME,
        "child_first_use_of_the_process_races_forks",
        seed,
        FRESH_RUNS * common::scale(),
    );
}

/// Run by `first_use_of_the_process_races_forks` in fresh copies.
#[test]
#[ignore = "run in fresh copies by first_use_of_the_process_races_forks"]
fn child_first_use_of_the_process_races_forks() {
    if !first_use_of_the_process("child_first_use_of_the_process_races_forks") {
        return;
    }
    let seed = common::seed("child_first_use_of_the_process_races_forks");
    let mut rng = SmallRng::seed_from_u64(seed);
    let threads = rng.random_range(4..=8);
    let what = format!("seed {seed}, {threads} threads");
    let race = Race::new(threads, true);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let first = if t.is_multiple_of(2) {
                First::Heap
            } else {
                First::GlobalAlloc
            };
            // Threads 0 and 1 (a heap-first and an allocation-first one) fork themselves too.
            let fork_kind = match t {
                0 => Some(ForkKind::CommandWithUid),
                1 => Some(ForkKind::Raw),
                _ => None,
            };
            let (race, what) = (race.clone(), what.clone());
            thread::spawn(move || racer(t, first, fork_kind, seed, &race, &what))
        })
        .collect();
    race.start.wait();
    if let Err(e) = fork(ForkKind::CommandWithUid, seed) {
        panic!("{what}: the fork during the race: {e}");
    }
    race.made.wait();
    stats_promptly(&format!("{what}: after the first fork"));
    if let Err(e) = fork(ForkKind::Raw, seed) {
        panic!("{what}: the fork after the race: {e}");
    }
    stats_promptly(&format!("{what}: after the second fork"));
    race.forked.wait();
    join_racers(handles, &race, &what);
    stats_promptly(&format!("{what}: at the end"));
}
