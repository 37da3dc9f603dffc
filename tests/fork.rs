//! Fork safety under `ShardAlloc` as the global allocator.
//!
//! Worker threads allocate and free without pause — batches of fresh large blocks (512 KiB–1 MiB)
//! and huge blocks (1–8 MiB, a mapping each), bursts of small blocks, cross-thread frees through a
//! transfer array, reallocs of other threads' blocks, frees of blocks the forking thread allocated
//! — and a churn thread keeps starting short-lived threads that allocate, leave blocks behind and
//! exit (heap teardown, abandoned segments). A reaper thread frees, as fast as it can, blocks the
//! forking thread allocated in pages it filled, so that its frees take the delayed route
//! (`UseDelayed` → `Freeing` → the owner's delayed list).
//!
//! The test thread forks repeatedly. Just before each fork it stops the workers and the reaper
//! with a signal whose handler waits until the fork is done: each is frozen at an arbitrary
//! instruction, usually inside an allocator call (every worker records which call it is in, so the
//! child knows exactly; the parent prints how often it was a slow-path call, and how often the
//! reaper was frozen inside a delayed free). In the child those threads simply do not exist.
//!
//! Each child, without locks or panics (it writes with `libc::write` and exits with
//! `libc::_exit`): allocates, verifies and frees small, medium, large and huge blocks; frees blocks
//! that the parent's workers and exited threads allocated before the fork (remote frees into
//! orphaned heaps and abandoned segments); frees its own blocks in the page the reaper was freeing
//! into (a local free into a page in the full queue, which waits for any `Freeing` on it) and a
//! sample of its other blocks; starts a thread that allocates, frees and also frees parent blocks
//! (glibc usually gives it the stack and thread-local block of a vanished thread); calls
//! `shardalloc::collect(true)`; allocates again. The parent waits for each child (polling
//! `waitpid` with `WNOHANG`), kills a child that takes more than 10 s, and asserts that every child
//! exited 0.
//!
//! Run: `cargo test --release --test fork -- --nocapture`. Replay a seed (it fixes the workers'
//! sequences and the fork points in the reaper's sweep, not the interleaving):
//! `SHARDALLOC_SEED=<seed> cargo test --release --test fork -- --nocapture`. Long mode:
//! `SHARDALLOC_TEST_SCALE=<k>` forks k times as often (200 × k forks).

mod common;
#[path = "common/raw.rs"]
mod raw;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::ffi::c_void;
use std::fmt::Write as _;
use std::os::unix::thread::JoinHandleExt;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use raw::{Fill, StackText};

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Forks in the default run (times `SHARDALLOC_TEST_SCALE`).
const FORKS: usize = 200;
/// Worker threads allocating and freeing around the forks.
const WORKERS: usize = 3;
/// Index in `IN_OP`/`SELF` of the reaper, which frees the forking thread's blocks as fast as it
/// can.
const REAPER: usize = WORKERS;
/// Index of the churn thread's short-lived threads in `IN_OP`/`SELF`.
const CHURN: usize = WORKERS + 1;
/// Threads whose state is recorded.
const TRACKED: usize = WORKERS + 2;
/// A child that has not exited after this long is hung.
const CHILD_TIMEOUT: Duration = Duration::from_secs(10);
/// Stop forking after this many failed children (each hung one costs `CHILD_TIMEOUT`).
const MAX_FAILURES: usize = 3;

/// Blocks passed between workers (remote frees and reallocs).
static TRANSFER: [AtomicPtr<u8>; 64] = [const { AtomicPtr::new(ptr::null_mut()) }; 64];
/// Blocks of workers and exited threads, kept for children to free.
static STASH: [AtomicPtr<u8>; 128] = [const { AtomicPtr::new(ptr::null_mut()) }; 128];
/// Blocks the forking thread allocated; the reaper (and now and then a worker) frees them.
/// Before every fork the forking thread fills `MAIN_PAGES` whole small pages with 8 KiB blocks
/// (8 to a 64 KiB page), so that the pages go to its full queue (`UseDelayed`), and publishes here
/// the first block of each page, keeping the other seven. Every free the reaper does then takes the
/// delayed route (`UseDelayed` → `Freeing` → the forking thread's delayed list → `NoDelayed`); the
/// blocks hold only a short pattern (`Fill::Head`), so the reaper frees fast, and the freeze before
/// a fork often catches it in `Freeing`: a state that no thread of the child will ever end, on a
/// page whose other blocks the child then frees.
static FROM_MAIN: [AtomicPtr<u8>; MAIN_PAGES] =
    [const { AtomicPtr::new(ptr::null_mut()) }; MAIN_PAGES];
/// Pages the forking thread fills before every fork.
const MAIN_PAGES: usize = 512;
/// Size of the blocks of those pages (a small page of 64 KiB holds 8).
const MAIN_BLOCK: usize = 8 * KIB;
static STOP: AtomicBool = AtomicBool::new(false);

/// Set while a child runs: the churn thread then waits, leaving the cores to the child (the state
/// that matters is the one at the fork; afterwards it would only slow the child down).
static PAUSED: AtomicBool = AtomicBool::new(false);

/// Waits while `PAUSED` is set.
fn pause_point() {
    while PAUSED.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_micros(100));
    }
}

/// Batches of blocks the forking thread has published in `FROM_MAIN`: the reaper sweeps once
/// per batch, starting when the whole batch is there.
static BATCH: AtomicUsize = AtomicUsize::new(0);
/// The last batch the reaper finished sweeping.
static SWEPT: AtomicUsize = AtomicUsize::new(0);
/// Blocks the reaper has freed so far.
static REAPED: AtomicUsize = AtomicUsize::new(0);
/// The block the reaper is freeing (null between frees).
static REAPING: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());

/// Bit `t` is set while tracked thread `t` is stopped in `on_freeze`; `THAW` lets them go.
static FROZEN: AtomicUsize = AtomicUsize::new(0);
static THAW: AtomicBool = AtomicBool::new(true);
/// The signal that freezes a thread.
const FREEZE_SIGNAL: libc::c_int = libc::SIGUSR1;

/// Signal handler: holds the interrupted thread where it was until `THAW`. Only atomics,
/// `pthread_self` and `nanosleep` (async-signal-safe).
extern "C" fn on_freeze(_signal: libc::c_int) {
    if THAW.load(Ordering::Acquire) {
        // A late timer signal: nothing to wait for.
        return;
    }
    let me = pthread_self();
    let Some(t) = SELF.iter().position(|s| s.load(Ordering::Relaxed) == me) else {
        return;
    };
    FROZEN.fetch_or(1 << t, Ordering::AcqRel);
    let pause = libc::timespec {
        tv_sec: 0,
        tv_nsec: 50_000,
    };
    while !THAW.load(Ordering::Acquire) {
        // SAFETY: a valid timespec; no remainder wanted.
        unsafe { libc::nanosleep(&raw const pause, ptr::null_mut()) };
    }
    FROZEN.fetch_and(!(1 << t), Ordering::AcqRel);
}

fn install_freeze_handler() {
    // SAFETY: a zeroed `sigaction` is a valid starting point; the handler has the signature
    // `sa_handler` expects (no `SA_SIGINFO`) and stays valid for the life of the process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_freeze as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut action.sa_mask);
        let r = libc::sigaction(FREEZE_SIGNAL, &raw const action, ptr::null_mut());
        assert_eq!(r, 0, "sigaction");
    }
}

/// Bits of the threads `freeze` stops: the workers and the reaper.
const FREEZE_ALL: usize = (1 << (REAPER + 1)) - 1;

/// Stops the workers and the reaper wherever they are (the reaper may already be stopped by its
/// timer); false if not all stopped within a second (the fork then catches the others running).
fn freeze() -> bool {
    let frozen = FROZEN.load(Ordering::Acquire);
    for (t, s) in SELF[..=REAPER].iter().enumerate() {
        if frozen & (1 << t) == 0 {
            let thread = s.load(Ordering::Relaxed) as libc::pthread_t;
            // SAFETY: workers and reaper are alive until `STOP`, which is set after the last
            // fork.
            let r = unsafe { libc::pthread_kill(thread, FREEZE_SIGNAL) };
            assert_eq!(r, 0, "pthread_kill");
        }
    }
    let t0 = Instant::now();
    while FROZEN.load(Ordering::Acquire) & FREEZE_ALL != FREEZE_ALL {
        if t0.elapsed() > Duration::from_secs(1) {
            return false;
        }
        thread::yield_now();
    }
    true
}

/// Lets the frozen threads go, and waits until they have left the handler.
fn thaw() {
    THAW.store(true, Ordering::Release);
    while FROZEN.load(Ordering::Acquire) != 0 {
        thread::yield_now();
    }
}

/// A one-shot `CLOCK_MONOTONIC` timer that sends `FREEZE_SIGNAL` to the thread that made it.
struct FreezeTimer(libc::timer_t);

impl FreezeTimer {
    fn new() -> FreezeTimer {
        // SAFETY: a zeroed `sigevent` is valid; the fields set make the kernel signal this very
        // thread (`SIGEV_THREAD_ID`); `timer` is a valid out-pointer.
        unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = FREEZE_SIGNAL;
            event.sigev_notify_thread_id = libc::syscall(libc::SYS_gettid) as libc::c_int;
            let mut timer: libc::timer_t = ptr::null_mut();
            let r = libc::timer_create(libc::CLOCK_MONOTONIC, &raw mut event, &raw mut timer);
            assert_eq!(r, 0, "timer_create");
            FreezeTimer(timer)
        }
    }

    /// Fires once after `delay` (zero: disarms).
    fn set(&self, delay: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: delay.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(delay.subsec_nanos()),
            },
        };
        // SAFETY: our timer; a valid spec; no old value wanted.
        let r = unsafe { libc::timer_settime(self.0, 0, &raw const spec, ptr::null_mut()) };
        assert_eq!(r, 0, "timer_settime");
    }
}

impl Drop for FreezeTimer {
    fn drop(&mut self) {
        // SAFETY: our timer, deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

/// What each tracked thread is doing (`Op` as `u8`): the child reads the values the fork copied.
static IN_OP: [AtomicU8; TRACKED] = [const { AtomicU8::new(0) }; TRACKED];
/// `pthread_self()` of each tracked thread (the churn slot: of its current short-lived thread).
static SELF: [AtomicUsize; TRACKED] = [const { AtomicUsize::new(0) }; TRACKED];

/// The allocator call a thread is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Idle = 0,
    AllocSmall,
    AllocLarge,
    AllocHuge,
    FreeOwn,
    FreeOther,
    Realloc,
    /// A short-lived thread past its last statement: thread-local destructors and the allocator's
    /// heap teardown (until joined).
    Exiting,
}

const OP_NAMES: [&str; 8] = [
    "idle",
    "alloc small",
    "alloc large (slow path)",
    "alloc huge (slow path)",
    "free own",
    "free other thread's",
    "realloc",
    "thread exit",
];

/// The forking thread's index for `alloc`/`free` (not tracked).
const MAIN: usize = usize::MAX;

/// Runs `f` with `IN_OP[me]` set to `op` (for a tracked thread).
fn tracked<T>(me: usize, op: Op, f: impl FnOnce() -> T) -> T {
    let Some(state) = IN_OP.get(me) else {
        return f();
    };
    state.store(op as u8, Ordering::Relaxed);
    let r = f();
    state.store(Op::Idle as u8, Ordering::Relaxed);
    r
}

fn pthread_self() -> usize {
    // SAFETY: no preconditions.
    unsafe { libc::pthread_self() as usize }
}

// === blocks in the parent ===

fn alloc(me: usize, op: Op, size: usize, seed: u64) -> *mut u8 {
    let fill = if size > 64 * KIB {
        Fill::Edges
    } else {
        Fill::Full
    };
    tracked(me, op, || raw::alloc(size, 16, fill, seed))
        .unwrap_or_else(|d| panic!("seed {seed}: parent thread {me}: alloc: {d}"))
}

fn free(me: usize, op: Op, p: *mut u8, seed: u64) {
    // SAFETY: every pointer passed here is a live tagged block the caller owns.
    if let Err(d) = unsafe { raw::verify(p, seed) } {
        panic!("seed {seed}: parent thread {me}: before free: {d}");
    }
    // SAFETY: as above; `raw::free` verifies again (cheap) and frees.
    tracked(me, op, || unsafe { raw::free(p, seed) })
        .unwrap_or_else(|d| panic!("seed {seed}: parent thread {me}: free: {d}"));
}

/// Puts `p` into a random slot of `slots` and frees what was there.
fn swap_in(me: usize, slots: &[AtomicPtr<u8>], p: *mut u8, rng: &mut SmallRng, seed: u64) {
    let slot = &slots[rng.random_range(0..slots.len())];
    // AcqRel: Release publishes the block's contents, Acquire sees those of the block taken.
    let old = slot.swap(p, Ordering::AcqRel);
    if !old.is_null() {
        free(me, Op::FreeOther, old, seed);
    }
}

/// Lowers the calling thread's scheduling priority (nice 19), so that on a small machine the
/// forking thread and the reaper get the cores when they need them. The other threads still run
/// whenever a core is free.
fn lower_priority() {
    // SAFETY: no pointers; raising one's own nice value needs no privilege. Failure is harmless
    // (only the timing gets less precise).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

fn worker(me: usize, seed: u64) {
    lower_priority();
    SELF[me].store(pthread_self(), Ordering::Relaxed);
    let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ (me as u64 + 1)));
    let mut batch: Vec<*mut u8> = Vec::with_capacity(64);
    while !STOP.load(Ordering::Relaxed) {
        pause_point();
        match rng.random_range(0..100u32) {
            0..=39 => {
                // Fresh large blocks: 512 KiB–1 MiB, at most 7 per 4 MiB segment.
                for _ in 0..rng.random_range(2..=8) {
                    let size = rng.random_range(512 * KIB + 1..=MIB);
                    batch.push(alloc(me, Op::AllocLarge, size, seed));
                }
            }
            40..=59 => {
                let size = rng.random_range(MIB + 1..=8 * MIB);
                batch.push(alloc(me, Op::AllocHuge, size, seed));
            }
            60..=79 => {
                for _ in 0..32 {
                    let size = rng.random_range(8..=4 * KIB);
                    batch.push(alloc(me, Op::AllocSmall, size, seed));
                }
            }
            80..=94 => {
                // Free blocks the forking thread allocated.
                for _ in 0..8 {
                    let slot = &FROM_MAIN[rng.random_range(0..FROM_MAIN.len())];
                    let p = slot.swap(ptr::null_mut(), Ordering::AcqRel);
                    if !p.is_null() {
                        free(me, Op::FreeOther, p, seed);
                    }
                }
            }
            _ => {
                // Realloc a block of another thread.
                let slot = &TRANSFER[rng.random_range(0..TRANSFER.len())];
                let p = slot.swap(ptr::null_mut(), Ordering::AcqRel);
                if !p.is_null() {
                    let new_size = if rng.random_bool(0.5) {
                        rng.random_range(8..=64 * KIB)
                    } else {
                        rng.random_range(512 * KIB..=3 * MIB)
                    };
                    // SAFETY: a live tagged block, ours now.
                    let q = tracked(me, Op::Realloc, || unsafe {
                        raw::realloc(p, new_size, seed)
                    })
                    .unwrap_or_else(|d| panic!("seed {seed}: parent thread {me}: realloc: {d}"));
                    batch.push(q);
                }
            }
        }
        // Dispose of the batch: free own blocks, pass some on (remote frees), stash a few.
        while let Some(p) = batch.pop() {
            match rng.random_range(0..10u32) {
                0..=4 => free(me, Op::FreeOwn, p, seed),
                5..=8 => swap_in(me, &TRANSFER, p, &mut rng, seed),
                _ => swap_in(me, &STASH, p, &mut rng, seed),
            }
        }
    }
}

/// Frees each batch of the forking thread's blocks as soon as it is published. At the start of a
/// sweep it sets a timer that freezes it (`on_freeze`) after a random part of the time the last
/// sweep took: wherever it is then, usually inside a free, whatever the scheduler does.
fn reaper(seed: u64) {
    SELF[REAPER].store(pthread_self(), Ordering::Relaxed);
    let timer = FreezeTimer::new();
    let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ 0x5EED));
    let mut last_sweep = Duration::from_micros(200);
    let mut seen = 0;
    while !STOP.load(Ordering::Relaxed) {
        pause_point();
        // Acquire pairs with the Release increment: the batch's slots are all filled.
        let batch = BATCH.load(Ordering::Acquire);
        if batch == seen {
            thread::yield_now();
            continue;
        }
        seen = batch;
        let start = Instant::now();
        let nanos = u64::try_from(last_sweep.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        timer.set(Duration::from_nanos(rng.random_range(1..=nanos)));
        for slot in &FROM_MAIN {
            let p = slot.swap(ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                REAPING.store(p, Ordering::Relaxed);
                free(REAPER, Op::FreeOther, p, seed);
                REAPING.store(ptr::null_mut(), Ordering::Relaxed);
                REAPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        timer.set(Duration::ZERO);
        last_sweep = start.elapsed();
        SWEPT.store(batch, Ordering::Release);
    }
}

/// Keeps starting short-lived threads that allocate, stash blocks and exit.
fn churn(seed: u64) {
    lower_priority();
    let mut n = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        pause_point();
        n += 1;
        let h = thread::spawn(move || {
            SELF[CHURN].store(pthread_self(), Ordering::Relaxed);
            let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ n.wrapping_mul(0x1000_0001)));
            let mut mine: Vec<*mut u8> = Vec::new();
            for _ in 0..rng.random_range(4..=40) {
                let size = rng.random_range(8..=2 * KIB);
                mine.push(alloc(CHURN, Op::AllocSmall, size, seed));
            }
            if rng.random_bool(0.3) {
                let size = rng.random_range(64 * KIB..=MIB);
                mine.push(alloc(CHURN, Op::AllocLarge, size, seed));
            }
            if rng.random_bool(0.2) {
                let size = rng.random_range(MIB + 1..=4 * MIB);
                mine.push(alloc(CHURN, Op::AllocHuge, size, seed));
            }
            for _ in 0..2 {
                if let Some(p) = mine.pop() {
                    swap_in(CHURN, &STASH, p, &mut rng, seed);
                }
            }
            for _ in 0..2 {
                if let Some(p) = mine.pop() {
                    swap_in(CHURN, &TRANSFER, p, &mut rng, seed);
                }
            }
            for p in mine {
                free(CHURN, Op::FreeOwn, p, seed);
            }
            IN_OP[CHURN].store(Op::Exiting as u8, Ordering::Relaxed);
        });
        h.join().expect("churn thread");
        IN_OP[CHURN].store(Op::Idle as u8, Ordering::Relaxed);
    }
}

// === the child ===

/// What a child reports to the parent, in a shared mapping.
#[repr(C)]
struct Report {
    /// Last step the child started (`STEPS`).
    step: u32,
    /// `IN_OP` as the fork copied it.
    ops: [u8; TRACKED],
    /// The child's thread had the `pthread_self` (so the stack and thread-local block)
    /// of this tracked parent thread, plus one; 0 if none.
    same_self_as: u32,
    stash_freed: u32,
    from_main_freed: u32,
    /// `REAPED` as the fork copied it.
    reaped: u64,
    /// The reaper was inside `free` at the fork: our blocks in the page it was freeing into.
    reaper_page_blocks: u32,
}

const STEPS: [&str; 9] = [
    "start",
    "allocate and free small, medium, large and huge blocks",
    "free stashed blocks of the parent's threads",
    "free own blocks (some of them in pages a vanished thread was freeing into)",
    "start a thread (pthread_create)",
    "the thread: allocate, free, free stashed blocks",
    "join the thread (its exit tears its heap down)",
    "collect(true)",
    "allocate again",
];

/// Reports a failure on fd 2 and exits with `10 + step`.
fn child_fail(fork: usize, step: u32, seed: u64, what: &str, damage: Option<raw::Damage>) -> ! {
    let mut text = StackText::<512>::new();
    let _ = write!(
        text,
        "[fork] child of fork {fork} (seed {seed}), step {step} ({}): {what}",
        STEPS[step as usize]
    );
    if let Some(d) = damage {
        let _ = write!(text, ": {d}");
    }
    let _ = writeln!(text);
    text.write_to(2);
    // SAFETY: `_exit` has no preconditions; nothing is flushed or destroyed.
    unsafe { libc::_exit(10 + step as i32) }
}

/// Allocates, checks and frees a round of blocks of every kind; returns the first damage.
fn child_round(seed: u64, salt: u64) -> Result<(), raw::Damage> {
    let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ salt));
    let sizes = [
        8,
        24,
        100,
        1000,
        rng.random_range(8..=KIB),
        rng.random_range(KIB..=64 * KIB),
        rng.random_range(64 * KIB..=MIB),
        MIB,
        rng.random_range(MIB + 1..=8 * MIB),
    ];
    let mut live = [ptr::null_mut::<u8>(); 64];
    for (i, slot) in live.iter_mut().enumerate() {
        let size = if i < sizes.len() {
            sizes[i]
        } else {
            rng.random_range(8..=2 * KIB)
        };
        *slot = raw::alloc(size, 16, Fill::Edges, seed)?;
    }
    for &p in &live {
        // SAFETY: a live tagged block of ours.
        unsafe { raw::free(p, seed) }?;
    }
    Ok(())
}

/// Frees every other stashed block starting at `first` (0 or 1); returns how many.
fn free_stash(first: usize, seed: u64) -> Result<u32, raw::Damage> {
    let mut n = 0;
    for slot in STASH.iter().skip(first).step_by(2) {
        let p = slot.swap(ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: a stashed block is live and owned by the slot; now by us.
            unsafe { raw::free(p, seed) }?;
            n += 1;
        }
    }
    Ok(n)
}

/// What the child's thread gets and gives back.
struct ChildThread {
    seed: u64,
    fork: usize,
    /// `SELF` as the fork copied it.
    selves: [usize; TRACKED],
    /// Which vanished tracked thread's `pthread_self` the thread had (plus one; 0 if none) and
    /// how many stashed blocks it freed; or the step and damage of a failure.
    result: Result<(u32, u32), (u32, raw::Damage)>,
}

/// The child's thread: allocates, frees, frees stashed blocks of the parent's threads, and exits
/// (the allocator tears its heap down).
extern "C" fn child_thread(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `arg` is the `ChildThread` the creating thread keeps alive until it has joined us.
    let args = unsafe { &mut *arg.cast::<ChildThread>() };
    let (seed, fork) = (args.seed, args.fork as u64);
    let me = pthread_self();
    let same = args
        .selves
        .iter()
        .position(|&s| s == me)
        .map_or(0, |i| i as u32 + 1);
    args.result = (|| {
        child_round(seed, fork ^ 0xABCD).map_err(|d| (5, d))?;
        let n = free_stash(1, seed).map_err(|d| (5, d))?;
        child_round(seed, fork ^ 0xDCBA).map_err(|d| (5, d))?;
        Ok((same, n))
    })();
    ptr::null_mut()
}

fn child(fork: usize, seed: u64, report: *mut Report, kept: &[*mut u8]) -> ! {
    // SAFETY: `report` points into the shared mapping, valid for the whole run; only this child
    // writes this entry until it exits.
    let report = unsafe { &mut *report };
    for (op, src) in report.ops.iter_mut().zip(&IN_OP) {
        *op = src.load(Ordering::Relaxed);
    }

    report.step = 1;
    if let Err(d) = child_round(seed, fork as u64) {
        child_fail(fork, 1, seed, "a block", Some(d));
    }
    report.step = 2;
    match free_stash(0, seed) {
        Ok(n) => report.stash_freed = n,
        Err(d) => child_fail(fork, 2, seed, "a stashed block", Some(d)),
    }
    report.step = 3;
    report.reaped = REAPED.load(Ordering::Relaxed) as u64;
    // The page the reaper was freeing into at the fork, if any: free our other blocks of it (a
    // local free into a page in the full queue moves it out of `UseDelayed`).
    let reaping = REAPING.load(Ordering::Relaxed);
    let mut to_free: Vec<*mut u8> = Vec::with_capacity(kept.len() / 16 + 8);
    if !reaping.is_null() && report.ops[REAPER] == Op::FreeOther as u8 {
        let page = reaping.addr() >> 16;
        let from = kept.partition_point(|p| p.addr() >> 16 < page);
        let to = kept.partition_point(|p| p.addr() >> 16 <= page);
        to_free.extend_from_slice(&kept[from..to]);
        report.reaper_page_blocks = (to - from) as u32;
    }
    // And a sample of the rest (freeing all would take the child long: each free of a block
    // the parent wrote copies a page).
    to_free.extend(kept.iter().step_by(16));
    to_free.sort_unstable();
    to_free.dedup();
    for (i, slot) in FROM_MAIN.iter().enumerate() {
        let p = slot.load(Ordering::Relaxed);
        if p.is_null() || (i % 16 != 0 && p.addr() >> 16 != reaping.addr() >> 16) {
            continue;
        }
        slot.store(ptr::null_mut(), Ordering::Relaxed);
        // SAFETY: a live tagged block owned by the slot; now by us.
        if let Err(d) = unsafe { raw::free(p, seed) } {
            child_fail(
                fork,
                3,
                seed,
                "a published block of the forking thread",
                Some(d),
            );
        }
        report.from_main_freed += 1;
    }
    for p in to_free {
        // SAFETY: the forking thread's own live tagged blocks, which it gives up in the child.
        if let Err(d) = unsafe { raw::free(p, seed) } {
            child_fail(fork, 3, seed, "a block of the forking thread", Some(d));
        }
    }
    report.step = 4;
    // The thread is started with `pthread_create`, not `std::thread`: std's thread start takes a
    // process-wide mutex (`stack_overflow::thread_info::set_current_info`), which a parent thread
    // starting up at the fork (the churn thread starts threads all the time) may hold forever in
    // the child — a hang seen here that has nothing to do with the allocator.
    let mut args = ChildThread {
        seed,
        fork,
        selves: std::array::from_fn(|i| SELF[i].load(Ordering::Relaxed)),
        result: Ok((0, 0)),
    };
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `thread` is a valid out-pointer; default attributes; `child_thread` has the C ABI
    // signature pthread expects; `args` outlives the thread, which is joined below.
    let r = unsafe {
        libc::pthread_create(
            &raw mut thread,
            ptr::null(),
            child_thread,
            (&raw mut args).cast::<c_void>(),
        )
    };
    if r != 0 {
        child_fail(fork, 4, seed, "pthread_create failed", None);
    }
    report.step = 6;
    // SAFETY: a joinable thread of ours, joined once.
    if unsafe { libc::pthread_join(thread, ptr::null_mut()) } != 0 {
        child_fail(fork, 6, seed, "pthread_join failed", None);
    }
    match args.result {
        Ok((same, n)) => {
            report.same_self_as = same;
            report.stash_freed += n;
        }
        Err((step, d)) => child_fail(fork, step, seed, "in the child's thread", Some(d)),
    }
    report.step = 7;
    shardalloc::collect(true);
    report.step = 8;
    if let Err(d) = child_round(seed, fork as u64 ^ 0x5555) {
        child_fail(fork, 8, seed, "a block", Some(d));
    }
    // SAFETY: `_exit` has no preconditions; nothing is flushed or destroyed.
    unsafe { libc::_exit(0) }
}

// === the parent ===

/// How a child ended.
enum Outcome {
    Exited(i32),
    Signaled(i32),
    Hung,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited with status {code}"),
            Outcome::Signaled(sig) => write!(f, "was killed by signal {sig}"),
            Outcome::Hung => write!(f, "hung (killed after {CHILD_TIMEOUT:?})"),
        }
    }
}

fn wait_child(pid: libc::pid_t) -> (Outcome, Duration) {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid({pid}) failed");
        if r == pid {
            let outcome = if libc::WIFEXITED(status) {
                Outcome::Exited(libc::WEXITSTATUS(status))
            } else {
                Outcome::Signaled(libc::WTERMSIG(status))
            };
            return (outcome, start.elapsed());
        }
        if start.elapsed() > CHILD_TIMEOUT {
            if std::env::var_os("SHARDALLOC_FORK_GDB").is_some() {
                // Debugging aid: the hung child's stacks, from gdb if it is installed.
                let out = std::process::Command::new("gdb")
                    .args([
                        "-p",
                        &pid.to_string(),
                        "-batch",
                        "-ex",
                        "thread apply all bt 30",
                    ])
                    .output();
                if let Ok(out) = out {
                    watchdog::write_stderr(&out.stdout);
                }
            }
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &raw mut status, 0);
            }
            return (Outcome::Hung, start.elapsed());
        }
        thread::sleep(Duration::from_micros(200));
    }
}

/// Frees whatever is left in `slots` (after the workers stopped).
fn drain(slots: &[AtomicPtr<u8>], seed: u64, what: &str) -> usize {
    let mut n = 0;
    for slot in slots {
        let p = slot.swap(ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: a live tagged block owned by the slot; now by us.
            if let Err(d) = unsafe { raw::free(p, seed) } {
                panic!("seed {seed}: draining {what} after the forks: {d}");
            }
            n += 1;
        }
    }
    n
}

#[test]
fn fork_while_threads_allocate() {
    let seed = common::seed("fork_while_threads_allocate");
    let forks = FORKS * common::scale();
    let replay = format!(
        "replay: {}={seed} cargo test --release --test fork -- --nocapture",
        common::SEED_VAR
    );
    let replay_for_watchdog = replay.clone();
    let _watchdog = watchdog::Watchdog::start(
        "fork_while_threads_allocate",
        Duration::from_secs(120)
            + CHILD_TIMEOUT * MAX_FAILURES as u32
            + forks as u32 * Duration::from_millis(500),
        move || format!("seed {seed}; {replay_for_watchdog}"),
    );
    let reports_len = forks * size_of::<Report>();
    // SAFETY: an anonymous shared mapping; the arguments are valid.
    let map = unsafe {
        libc::mmap(
            ptr::null_mut(),
            reports_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap of the report area");
    let reports = map.cast::<Report>();

    STOP.store(false, Ordering::Relaxed);
    let start = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut child_times: Vec<Duration> = Vec::new();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            thread::Builder::new()
                .name(format!("fork-worker-{w}"))
                .spawn(move || worker(w, seed))
                .expect("spawn")
        })
        .collect();
    let reaper = thread::Builder::new()
        .name("fork-reaper".into())
        .spawn(move || reaper(seed))
        .expect("spawn");
    let churner = thread::Builder::new()
        .name("fork-churn".into())
        .spawn(move || churn(seed))
        .expect("spawn");
    install_freeze_handler();
    while SELF[..=REAPER]
        .iter()
        .any(|s| s.load(Ordering::Relaxed) == 0)
    {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(20));

    let mut done = 0;
    let mut reaped_in_sweep = 0u64;
    let mut not_frozen = 0usize;
    let mut reaper_caught = 0u64;
    for fork in 0..forks {
        // Fill whole pages with blocks; publish the first block of each page for the reaper (and
        // the workers), keep the rest.
        let mut fresh: Vec<*mut u8> = (0..MAIN_PAGES * 8)
            .map(|_| {
                raw::alloc(MAIN_BLOCK, 16, Fill::Head, seed)
                    .unwrap_or_else(|d| panic!("seed {seed}: forking thread: {d}"))
            })
            .collect();
        fresh.sort_unstable();
        let mut kept: Vec<*mut u8> = Vec::with_capacity(fresh.len());
        let mut published = Vec::with_capacity(MAIN_PAGES);
        let mut last_page = usize::MAX;
        for p in fresh {
            let page = p.addr() >> 16;
            if page != last_page && published.len() < MAIN_PAGES {
                published.push(p);
            } else {
                kept.push(p);
            }
            last_page = page;
        }
        let reaped = REAPED.load(Ordering::Relaxed);
        for (slot, p) in FROM_MAIN.iter().zip(published) {
            let old = slot.swap(p, Ordering::AcqRel);
            if !old.is_null() {
                free(MAIN, Op::FreeOther, old, seed);
            }
        }
        // Release pairs with the reaper's Acquire load. Then wait until the reaper's timer has
        // frozen it in the middle of its sweep, or it has finished the sweep (or 20 ms have
        // passed, if it does not get a core); then freeze the others.
        THAW.store(false, Ordering::Release);
        let batch = BATCH.fetch_add(1, Ordering::Release) + 1;
        let t0 = Instant::now();
        while FROZEN.load(Ordering::Acquire) & (1 << REAPER) == 0
            && SWEPT.load(Ordering::Acquire) != batch
            && t0.elapsed() < Duration::from_millis(20)
        {
            thread::yield_now();
        }
        if !freeze() {
            not_frozen += 1;
        }
        // SAFETY: `reports` has `forks` entries.
        let report = unsafe { reports.add(fork) };
        // SAFETY: fork has no preconditions; the child only runs `child`, which never returns.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            child(fork, seed, report, &kept);
        }
        // The frozen threads stay frozen (asleep) while the child runs, the churn thread pauses.
        PAUSED.store(true, Ordering::Relaxed);
        let (outcome, took) = wait_child(pid);
        PAUSED.store(false, Ordering::Relaxed);
        thaw();
        // SAFETY: the child has exited; its entry is complete.
        let reaped_at_fork = unsafe { (*report).reaped }.wrapping_sub(reaped as u64);
        if (1..MAIN_PAGES as u64).contains(&reaped_at_fork) {
            reaped_in_sweep += 1;
        }
        // SAFETY: as above.
        if unsafe { (*report).reaper_page_blocks } > 0 {
            reaper_caught += 1;
        }
        for p in kept {
            free(MAIN, Op::FreeOwn, p, seed);
        }
        child_times.push(took);
        done += 1;
        if !matches!(outcome, Outcome::Exited(0)) {
            // SAFETY: the child has exited; its entry is complete.
            let r = unsafe { &*report };
            let in_op: Vec<String> = r
                .ops
                .iter()
                .enumerate()
                .map(|(t, &op)| format!("thread {t}: {}", OP_NAMES[usize::from(op).min(7)]))
                .collect();
            failures.push(format!(
                "fork {fork}: child {pid} {outcome} after {took:.2?}, in step {} ({}); at the \
                 fork: {}",
                r.step,
                STEPS[(r.step as usize).min(STEPS.len() - 1)],
                in_op.join(", ")
            ));
            if failures.len() >= MAX_FAILURES {
                break;
            }
        }
    }
    STOP.store(true, Ordering::Relaxed);
    // Bounded joins: a thread stuck in its exit (heap teardown) fails the test here, naming it.
    let threads = workers
        .into_iter()
        .enumerate()
        .map(|(w, h)| (format!("worker {w}"), h))
        .chain([
            ("reaper".to_string(), reaper),
            ("churn thread".to_string(), churner),
        ]);
    for (name, h) in threads {
        assert!(
            watchdog::exited_within(h.into_pthread_t(), Duration::from_secs(30)),
            "seed {seed}: the parent's {name} did not exit within 30 s after the forks (stuck in \
             the allocator, or in its thread exit?); {replay}"
        );
    }
    let elapsed = start.elapsed();
    let left = drain(&TRANSFER, seed, "the transfer array")
        + drain(&STASH, seed, "the stash")
        + drain(&FROM_MAIN, seed, "the forking thread's blocks");

    // Figures.
    // SAFETY: every child up to `done` has exited; the entries are complete.
    let reports: &[Report] = unsafe { std::slice::from_raw_parts(reports, done) };
    let mut per_op = [0usize; 8];
    let mut slow_path_forks = 0;
    let mut any_op_forks = 0;
    for r in reports {
        let mut slow = false;
        let mut any = false;
        for &op in &r.ops {
            per_op[usize::from(op).min(7)] += 1;
            any |= op != Op::Idle as u8;
            slow |= [
                Op::AllocLarge,
                Op::AllocHuge,
                Op::FreeOther,
                Op::Realloc,
                Op::Exiting,
            ]
            .iter()
            .any(|&o| o as u8 == op);
        }
        slow_path_forks += usize::from(slow);
        any_op_forks += usize::from(any);
    }
    let same_self = reports.iter().filter(|r| r.same_self_as != 0).count();
    let stash_freed: u64 = reports.iter().map(|r| u64::from(r.stash_freed)).sum();
    let from_main_freed: u64 = reports.iter().map(|r| u64::from(r.from_main_freed)).sum();
    child_times.sort();
    println!(
        "[fork] seed {seed}: {done} forks in {elapsed:.2?}; child run time median {:.2?}, max {:.2?}",
        child_times[child_times.len() / 2],
        child_times.last().unwrap()
    );
    println!(
        "[fork] at the fork, some thread was inside an allocator call in {any_op_forks} of {done} \
         forks, inside a slow-path call (large/huge alloc, remote free, realloc, thread exit) in \
         {slow_path_forks}; {not_frozen} freezes timed out"
    );
    let per_op: Vec<String> = per_op
        .iter()
        .enumerate()
        .map(|(op, n)| format!("{}: {n}", OP_NAMES[op]))
        .collect();
    println!("[fork] thread states at the forks: {}", per_op.join(", "));
    println!(
        "[fork] in {reaped_in_sweep} of {done} forks the reaper was frozen in the middle of its \
         sweep (freeing one block of each full page of the forking thread: delayed frees), in \
         {reaper_caught} inside one of those frees (the child then freed its other blocks of that \
         page)"
    );
    println!(
        "[fork] children freed {stash_freed} blocks of the parent's other threads and \
         {from_main_freed} of their own that workers were freeing; in {same_self} children the \
         spawned thread reused the stack and thread-local block of a vanished parent thread; \
         {left} blocks drained at the end"
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {done} children failed:\n  {}\n{replay}",
        failures.len(),
        failures.join("\n  ")
    );
    // SAFETY: the mapping is ours and no child is alive.
    unsafe { libc::munmap(map, reports_len) };
}
