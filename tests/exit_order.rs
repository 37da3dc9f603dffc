//! Exit ordering under `ShardAlloc` as the global allocator.
//!
//! * **Destructors after the allocator's teardown.** shardalloc tears a thread's heap down in a
//!   pthread key destructor; glibc runs key destructors in rounds (up to 4), and runs again a key
//!   whose value was set during a round. Threads here set keys of their own whose destructors
//!   verify and free blocks the thread allocated earlier (now in abandoned segments), allocate and
//!   write new blocks, and re-arm themselves so that they run again in later rounds — after the
//!   allocator tore down the heap those allocations created. Rust `thread_local!` values with
//!   `Drop` (which run before key destructors) allocate, free blocks of other threads, start other
//!   thread-locals during destruction, and hand blocks to the key destructors. Every block is
//!   checked before it is freed; every destructor must have run its full course.
//! * **Process exit.** The test binary runs itself in child processes (`SHARDALLOC_EXIT_CHILD`) in
//!   which the process exits while threads are allocating and freeing, threads are starting and
//!   exiting, blocks are live and thread-local destructors are pending: `std::process::exit` from
//!   the test thread or from a worker, or `main` returning. `atexit` handlers and the exiting
//!   thread's thread-local destructors allocate and free. Each child must exit with status 0,
//!   print no `shardalloc: fatal`, and report that its exit-time handlers ran.
//! * **Frees never wait for the owner.** A thread that only frees must free all blocks of another
//!   thread (small ones filling whole pages, so most go the delayed route; medium, large and huge
//!   ones) while the owner is parked, has exited, is exiting, or is busy in a computation that
//!   never enters the allocator; then the owner allocates again. Timed and printed.
//!
//! Randomized parts print their seed; replay with `SHARDALLOC_SEED=<seed> cargo test --release
//! --test exit_order <name> -- --exact --nocapture`. Long mode: `SHARDALLOC_TEST_SCALE=<k>` runs k
//! times as many threads, child processes and blocks.

mod common;
#[path = "common/raw.rs"]
mod raw;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::cell::RefCell;
use std::ffi::c_void;
use std::io::Read;
use std::os::unix::thread::JoinHandleExt;
use std::process::{Command, Stdio};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use raw::Fill;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Mostly small, some medium and large, now and then huge.
fn pick_size(rng: &mut SmallRng) -> usize {
    match rng.random_range(0..1000u32) {
        0..=799 => rng.random_range(8..=KIB),
        800..=949 => rng.random_range(KIB + 1..=64 * KIB),
        950..=989 => rng.random_range(64 * KIB + 1..=MIB),
        _ => rng.random_range(MIB + 1..=4 * MIB),
    }
}

fn alloc_tagged(rng: &mut SmallRng, seed: u64) -> Result<*mut u8, String> {
    let size = pick_size(rng);
    let fill = if size > 64 * KIB {
        Fill::Edges
    } else {
        Fill::Full
    };
    raw::alloc(size, 8 << rng.random_range(0..4), fill, seed).map_err(|d| d.to_string())
}

/// A raw block pointer that may cross threads (the test owns the block).
#[derive(Clone, Copy)]
struct Ptr(*mut u8);
// SAFETY: a tagged block is plain memory owned by whoever holds the `Ptr`; the allocator accepts
// frees from any thread.
unsafe impl Send for Ptr {}

// ============================================================================================
// a. Destructors after the allocator's own teardown
// ============================================================================================

/// Errors seen inside destructors (which must not panic: a panic in a key destructor aborts).
static DTOR_ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Key destructor runs, by run number (1..=4).
static KEY_RUNS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];
/// Key states that reached their last planned run.
static KEY_DONE: AtomicUsize = AtomicUsize::new(0);
/// Rust thread-local destructors that ran (first and second kind).
static TLS_DONE: AtomicUsize = AtomicUsize::new(0);
static TLS_LATE_DONE: AtomicUsize = AtomicUsize::new(0);
/// Blocks freed by destructors after being checked.
static DTOR_FREED: AtomicUsize = AtomicUsize::new(0);
/// Blocks of other threads, freed by thread-local destructors.
static SHARED_POOL: Mutex<Vec<Ptr>> = Mutex::new(Vec::new());

fn dtor_error(msg: String) {
    DTOR_ERRORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(msg);
}

/// Verifies and frees `p`, recording damage.
fn checked_free(p: *mut u8, seed: u64, who: &str) {
    // SAFETY: every pointer passed here is a live tagged block its caller gives up.
    match unsafe { raw::free(p, seed) } {
        Ok(_) => {
            DTOR_FREED.fetch_add(1, Ordering::Relaxed);
        }
        Err(d) => dtor_error(format!("seed {seed}: {who}: {d}")),
    }
}

/// The state behind one of our pthread keys, owned by the key's value.
struct KeyState {
    seed: u64,
    thread: usize,
    key: libc::pthread_key_t,
    /// Destructor runs so far.
    runs: u32,
    /// The destructor re-arms the key in its first `rearm` runs, so it runs `rearm + 1` times.
    rearm: u32,
    /// Whether the last run allocates too (its heap is created after the allocator's last
    /// destructor round, so the allocator cannot tear it down).
    alloc_in_last_run: bool,
    /// Blocks to check and free in the next run.
    carried: Vec<Ptr>,
    rng: SmallRng,
}

unsafe extern "C" fn key_destructor(value: *mut c_void) {
    let state = value.cast::<KeyState>();
    // SAFETY: the key's value is always a `Box<KeyState>` leaked by `arm_key` or by the previous
    // run below, and glibc hands it to us once per run.
    let st = unsafe { &mut *state };
    st.runs += 1;
    KEY_RUNS[(st.runs as usize).min(4)].fetch_add(1, Ordering::Relaxed);
    let who = format!("thread {}, key destructor run {}", st.thread, st.runs);
    // Free what the thread (or the previous run) left: blocks in segments the allocator abandoned
    // when it tore the heap down.
    for p in std::mem::take(&mut st.carried) {
        checked_free(p.0, st.seed, &who);
    }
    let last = st.runs > st.rearm;
    if !last || st.alloc_in_last_run {
        // Allocate, write, check and free some blocks on the spot; keep others for the next run.
        let mut fresh = Vec::new();
        for _ in 0..st.rng.random_range(8..=40) {
            match alloc_tagged(&mut st.rng, st.seed) {
                Ok(p) => fresh.push(Ptr(p)),
                Err(e) => dtor_error(format!("seed {}: {who}: alloc: {e}", st.seed)),
            }
        }
        for (i, p) in fresh.into_iter().enumerate() {
            if last || i % 2 == 0 {
                checked_free(p.0, st.seed, &who);
            } else {
                st.carried.push(p);
            }
        }
    }
    if last {
        KEY_DONE.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the last run owns the box; glibc will not call us again (the key is not set).
        drop(unsafe { Box::from_raw(state) });
    } else {
        // Re-arm: glibc runs this destructor again in the next round.
        // SAFETY: the key exists; the value is the live box.
        let r = unsafe { libc::pthread_setspecific(st.key, state.cast::<c_void>()) };
        if r != 0 {
            dtor_error(format!("{who}: pthread_setspecific failed: {r}"));
        }
    }
}

/// Three keys, created once: glibc runs key destructors in key order, and these are created after
/// the allocator's exit key (made at the process's first allocation), so even the first run of
/// each comes after the allocator's teardown of the thread's first heap.
fn keys() -> &'static [libc::pthread_key_t; 3] {
    static KEYS: OnceLock<[libc::pthread_key_t; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        std::array::from_fn(|_| {
            let mut key = 0;
            // SAFETY: a valid out-pointer and a destructor with the C ABI signature.
            let r = unsafe { libc::pthread_key_create(&raw mut key, Some(key_destructor)) };
            assert_eq!(r, 0, "pthread_key_create");
            key
        })
    })
}

fn arm_key(key: libc::pthread_key_t, state: KeyState) {
    let state = Box::into_raw(Box::new(state));
    // SAFETY: the key exists; the destructor takes ownership of the box.
    let r = unsafe { libc::pthread_setspecific(key, state.cast::<c_void>()) };
    assert_eq!(r, 0, "pthread_setspecific");
}

/// A Rust thread-local whose destructor (which runs before the key destructors) checks and frees
/// blocks, frees a block of another thread, allocates and frees, starts another thread-local with
/// a destructor, and hands blocks to a key destructor.
struct TlsWork {
    seed: u64,
    thread: usize,
    blocks: Vec<Ptr>,
    /// The key state that takes over blocks allocated here.
    handoff: libc::pthread_key_t,
}

impl Drop for TlsWork {
    fn drop(&mut self) {
        let who = format!("thread {}, thread-local destructor", self.thread);
        let seed = self.seed;
        for p in self.blocks.drain(..) {
            checked_free(p.0, seed, &who);
        }
        // A block of another (probably exited) thread.
        let foreign = SHARED_POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(p) = foreign {
            checked_free(p.0, seed, &format!("{who}, block of another thread"));
        }
        let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ self.thread as u64 ^ 0x7777));
        let mut fresh = Vec::new();
        for _ in 0..16 {
            match alloc_tagged(&mut rng, seed) {
                Ok(p) => fresh.push(Ptr(p)),
                Err(e) => dtor_error(format!("seed {seed}: {who}: alloc: {e}")),
            }
        }
        // Start another thread-local during destruction: its destructor runs later in this
        // thread's exit, and allocates too.
        LATE.with(|late| {
            *late.borrow_mut() = Some(LateWork {
                seed,
                thread: self.thread,
                blocks: fresh.split_off(8),
            })
        });
        // Hand the rest to the key destructor (it frees them after the allocator's teardown).
        // SAFETY: the key exists; its value, if set, is a `KeyState` box of this thread.
        let state = unsafe { libc::pthread_getspecific(self.handoff) }.cast::<KeyState>();
        if state.is_null() {
            for p in fresh {
                checked_free(p.0, seed, &who);
            }
        } else {
            // SAFETY: this thread's own key state; its destructor has not run yet (Rust
            // thread-local destructors run before key destructors).
            unsafe { (*state).carried.extend(fresh) };
        }
        TLS_DONE.fetch_add(1, Ordering::Relaxed);
    }
}

/// A thread-local first touched during another thread-local's destruction.
struct LateWork {
    seed: u64,
    thread: usize,
    blocks: Vec<Ptr>,
}

impl Drop for LateWork {
    fn drop(&mut self) {
        let who = format!("thread {}, late thread-local destructor", self.thread);
        for p in self.blocks.drain(..) {
            checked_free(p.0, self.seed, &who);
        }
        let mut rng = SmallRng::seed_from_u64(raw::mix(self.seed ^ self.thread as u64 ^ 0x8888));
        for _ in 0..8 {
            match alloc_tagged(&mut rng, self.seed) {
                Ok(p) => checked_free(p, self.seed, &who),
                Err(e) => dtor_error(format!("seed {}: {who}: alloc: {e}", self.seed)),
            }
        }
        TLS_LATE_DONE.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    static WORK: RefCell<Option<TlsWork>> = const { RefCell::new(None) };
    static LATE: RefCell<Option<LateWork>> = const { RefCell::new(None) };
}

#[test]
fn destructors_after_allocator_teardown() {
    let seed = common::seed("destructors_after_allocator_teardown");
    let threads = 96 * common::scale();
    let batch = 8;
    let keys = *keys();
    let _watchdog = watchdog::Watchdog::start(
        "destructors_after_allocator_teardown",
        Duration::from_secs(120 * common::scale() as u64),
        move || {
            format!(
                "seed {seed}; key destructor runs by round: {:?}; replay: {}={seed} cargo test \
                 --release --test exit_order destructors_after_allocator_teardown -- --exact",
                KEY_RUNS
                    .iter()
                    .map(|r| r.load(Ordering::Relaxed))
                    .collect::<Vec<_>>(),
                common::SEED_VAR
            )
        },
    );
    let start = Instant::now();
    let runs_before: Vec<usize> = KEY_RUNS.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    let (done_before, tls_before, late_before) = (
        KEY_DONE.load(Ordering::Relaxed),
        TLS_DONE.load(Ordering::Relaxed),
        TLS_LATE_DONE.load(Ordering::Relaxed),
    );
    // Per thread: key 0 runs once (after the allocator's first teardown), key 1 three times, key 2
    // four times (every glibc round) and allocates in its last run too.
    let plans: [(u32, bool); 3] = [(0, false), (2, false), (3, true)];
    let mut t = 0;
    while t < threads {
        let n = batch.min(threads - t);
        let handles: Vec<_> = (t..t + n)
            .map(|i| {
                thread::spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ (i as u64 + 1)));
                    let alloc_n = |rng: &mut SmallRng, n: usize| -> Vec<Ptr> {
                        (0..n)
                            .map(|_| {
                                Ptr(alloc_tagged(rng, seed)
                                    .unwrap_or_else(|e| panic!("seed {seed}: thread {i}: {e}")))
                            })
                            .collect()
                    };
                    for (k, &(rearm, alloc_in_last_run)) in plans.iter().enumerate() {
                        let carried = alloc_n(&mut rng, 24);
                        arm_key(
                            keys[k],
                            KeyState {
                                seed,
                                thread: i,
                                key: keys[k],
                                runs: 0,
                                rearm,
                                alloc_in_last_run,
                                carried,
                                rng: SmallRng::seed_from_u64(raw::mix(seed ^ (i * 3 + k) as u64)),
                            },
                        );
                    }
                    let blocks = alloc_n(&mut rng, 32);
                    WORK.with(|w| {
                        *w.borrow_mut() = Some(TlsWork {
                            seed,
                            thread: i,
                            blocks,
                            handoff: keys[2],
                        })
                    });
                    // Leave blocks for other threads' destructors.
                    let mine = alloc_n(&mut rng, 4);
                    SHARED_POOL.lock().unwrap().extend(mine);
                    // Work a little so the heap has pages of several kinds.
                    let temp = alloc_n(&mut rng, 100);
                    for p in temp {
                        // SAFETY: a live tagged block of ours.
                        if let Err(d) = unsafe { raw::free(p.0, seed) } {
                            panic!("seed {seed}: thread {i}: {d}");
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        t += n;
    }
    // Blocks left in the pool: freed here.
    for p in std::mem::take(&mut *SHARED_POOL.lock().unwrap()) {
        checked_free(p.0, seed, "main thread, pool");
    }
    let runs: Vec<usize> = KEY_RUNS
        .iter()
        .zip(&runs_before)
        .map(|(r, b)| r.load(Ordering::Relaxed) - b)
        .collect();
    let done = KEY_DONE.load(Ordering::Relaxed) - done_before;
    let tls = TLS_DONE.load(Ordering::Relaxed) - tls_before;
    let late = TLS_LATE_DONE.load(Ordering::Relaxed) - late_before;
    println!(
        "[destructors_after_allocator_teardown] seed {seed}: {threads} threads in {:.2?}; key \
         destructor runs by round {:?}; {done} key states completed; {tls} + {late} thread-local \
         destructors; {} blocks checked and freed by destructors",
        start.elapsed(),
        &runs[1..],
        DTOR_FREED.load(Ordering::Relaxed)
    );
    let errors = std::mem::take(&mut *DTOR_ERRORS.lock().unwrap());
    assert!(
        errors.is_empty(),
        "seed {seed}: {} errors in destructors, first ones:\n  {}",
        errors.len(),
        errors[..errors.len().min(10)].join("\n  ")
    );
    assert_eq!(
        done,
        3 * threads,
        "seed {seed}: every key destructor ran its planned number of times (runs by round: {runs:?})"
    );
    assert_eq!(
        runs[1..],
        [3 * threads, 2 * threads, 2 * threads, threads],
        "seed {seed}: key destructor runs by round"
    );
    assert_eq!(tls, threads, "seed {seed}: thread-local destructors");
    assert_eq!(late, threads, "seed {seed}: late thread-local destructors");
}

// ============================================================================================
// b. Process exit while threads allocate
// ============================================================================================

/// Environment variable that makes `exit_child_scenario` run a scenario (its value).
const EXIT_CHILD_VAR: &str = "SHARDALLOC_EXIT_CHILD";
/// Markers the child writes to stderr when its exit-time handlers succeeded.
const ATEXIT_OK: &str = "exit_order: atexit handler ok";
const TLS_EXIT_OK: &str = "exit_order: exiting thread's thread-local destructor ok";
const SCENARIO_READY: &str = "exit_order: scenario running";

/// The ways the child process ends.
const SCENARIOS: [&str; 3] = [
    "exit-from-test-thread",
    "exit-from-worker",
    "return-from-main",
];

static CHILD_SEED: AtomicUsize = AtomicUsize::new(0);
static CHILD_SLOTS: [AtomicPtr<u8>; 256] = [const { AtomicPtr::new(ptr::null_mut()) }; 256];

fn child_seed() -> u64 {
    CHILD_SEED.load(Ordering::Relaxed) as u64
}

/// Writes a line to fd 2 without locks (std's stderr could be locked by a thread the exit
/// interrupted).
fn say(line: &str) {
    watchdog::write_stderr(format!("{line}\n").as_bytes());
}

/// Allocates, checks and frees a few blocks of every kind; true if all were intact.
fn exit_time_work(salt: u64) -> bool {
    let seed = child_seed();
    let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ salt));
    let mut ok = true;
    let mut live = Vec::new();
    for size in [8, 100, 1000, 20 * KIB, 300 * KIB, MIB, 3 * MIB] {
        match raw::alloc(size + rng.random_range(0..8), 16, Fill::Edges, seed) {
            Ok(p) => live.push(p),
            Err(d) => {
                say(&format!("exit_order child: exit-time alloc: {d}"));
                ok = false;
            }
        }
    }
    // Also free blocks the workers left in the slots.
    for slot in CHILD_SLOTS.iter().step_by(7) {
        let p = slot.swap(ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            live.push(p);
        }
    }
    for p in live {
        // SAFETY: live tagged blocks we own.
        if let Err(d) = unsafe { raw::free(p, seed) } {
            say(&format!("exit_order child: exit-time free: {d}"));
            ok = false;
        }
    }
    ok
}

extern "C" fn atexit_handler() {
    if exit_time_work(1) {
        say(ATEXIT_OK);
    }
}

struct ExitTls;

impl Drop for ExitTls {
    fn drop(&mut self) {
        if exit_time_work(2) {
            say(TLS_EXIT_OK);
        }
    }
}

thread_local! {
    static EXIT_TLS: RefCell<Option<ExitTls>> = const { RefCell::new(None) };
    static WORKER_TLS: RefCell<Vec<Ptr>> = const { RefCell::new(Vec::new()) };
}

/// The child's way to fail from any thread: a message on fd 2 and an abort (a panic on a
/// background thread would go unnoticed, since the exit status is the main thread's).
fn or_abort<T>(r: Result<T, String>, who: &str) -> T {
    r.unwrap_or_else(|e| {
        say(&format!("exit_order child, {who}: {e}"));
        std::process::abort()
    })
}

/// Verifies and frees a tagged block in the child, aborting on damage.
fn child_free(p: *mut u8, who: &str) {
    // SAFETY: callers pass live tagged blocks they own.
    or_abort(
        unsafe { raw::free(p, child_seed()) }.map_err(|d| d.to_string()),
        who,
    );
}

/// A worker of the child: allocates, frees and swaps blocks through the slots forever.
fn child_worker(w: usize) -> ! {
    let seed = child_seed();
    let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ (w as u64 + 100)));
    // Blocks held in a thread-local with a destructor that never gets to run.
    let who = format!("worker {w}");
    WORKER_TLS.with(|v| {
        v.borrow_mut()
            .extend((0..16).map(|_| Ptr(or_abort(alloc_tagged(&mut rng, seed), &who))))
    });
    let mut mine: Vec<*mut u8> = Vec::new();
    loop {
        let p = or_abort(alloc_tagged(&mut rng, seed), &who);
        if rng.random_bool(0.5) {
            mine.push(p);
        } else {
            let old = CHILD_SLOTS[rng.random_range(0..CHILD_SLOTS.len())].swap(p, Ordering::AcqRel);
            if !old.is_null() {
                mine.push(old);
            }
        }
        if mine.len() > 64 {
            let p = mine.swap_remove(rng.random_range(0..mine.len()));
            child_free(p, &who);
        }
    }
}

/// Keeps starting threads that allocate, leave blocks in the slots, and exit.
fn child_churn() -> ! {
    let seed = child_seed();
    let mut n = 0u64;
    loop {
        n += 1;
        let _ = thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ n));
            let blocks: Vec<Ptr> = (0..20)
                .map(|_| Ptr(or_abort(alloc_tagged(&mut rng, seed), "churn thread")))
                .collect();
            for p in &blocks[..4] {
                let old =
                    CHILD_SLOTS[rng.random_range(0..CHILD_SLOTS.len())].swap(p.0, Ordering::AcqRel);
                if !old.is_null() {
                    child_free(old, "churn thread");
                }
            }
            for p in &blocks[4..] {
                child_free(p.0, "churn thread");
            }
            WORK.with(|w| {
                *w.borrow_mut() = Some(TlsWork {
                    seed,
                    thread: n as usize,
                    blocks: Vec::new(),
                    handoff: keys()[0],
                })
            });
        })
        .join();
    }
}

/// Runs a scenario in a child process; does nothing unless `SHARDALLOC_EXIT_CHILD` is set.
#[test]
#[ignore = "run by exit_path_is_clean in child processes"]
fn exit_child_scenario() {
    let Ok(scenario) = std::env::var(EXIT_CHILD_VAR) else {
        println!("exit_child_scenario: only meaningful with {EXIT_CHILD_VAR}=<scenario>");
        return;
    };
    let seed: u64 = std::env::var(common::SEED_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    CHILD_SEED.store(seed as usize, Ordering::Relaxed);
    // SAFETY: a handler with the C ABI signature.
    let r = unsafe { libc::atexit(atexit_handler) };
    assert_eq!(r, 0, "atexit");
    for w in 0..4 {
        thread::spawn(move || child_worker(w));
    }
    thread::spawn(|| child_churn());
    // Threads parked with live blocks and pending thread-local destructors.
    for t in 0..4 {
        thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ (t + 1000)));
            let blocks = (0..32)
                .map(|_| Ptr(or_abort(alloc_tagged(&mut rng, seed), "parked thread")))
                .collect();
            WORK.with(|w| {
                *w.borrow_mut() = Some(TlsWork {
                    seed,
                    thread: t as usize,
                    blocks,
                    handoff: keys()[1],
                })
            });
            loop {
                thread::park();
            }
        });
    }
    thread::sleep(Duration::from_millis(30));
    say(SCENARIO_READY);
    match scenario.as_str() {
        "exit-from-test-thread" => {
            EXIT_TLS.with(|t| *t.borrow_mut() = Some(ExitTls));
            std::process::exit(0);
        }
        "exit-from-worker" => {
            thread::spawn(|| {
                EXIT_TLS.with(|t| *t.borrow_mut() = Some(ExitTls));
                std::process::exit(0);
            });
            loop {
                thread::park();
            }
        }
        "return-from-main" => {
            // The test passes; libtest's `main` returns while every thread above still runs.
        }
        other => panic!("unknown scenario {other:?}"),
    }
}

#[test]
fn exit_path_is_clean() {
    let seed = common::seed("exit_path_is_clean");
    let runs = 10 * common::scale();
    let exe = std::env::current_exe().expect("current_exe");
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut times = Vec::new();
    for run in 0..runs {
        for scenario in SCENARIOS {
            let child_seed = raw::mix(seed ^ run as u64) >> 1;
            let mut child = Command::new(&exe)
                .args([
                    "exit_child_scenario",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(EXIT_CHILD_VAR, scenario)
                .env(common::SEED_VAR, child_seed.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the test binary");
            let t0 = Instant::now();
            // Read both pipes on helper threads, so a chatty child cannot block on a full pipe.
            let mut out = child.stdout.take().unwrap();
            let mut err = child.stderr.take().unwrap();
            let out_reader = thread::spawn(move || {
                let mut s = String::new();
                let _ = out.read_to_string(&mut s);
                s
            });
            let err_reader = thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            });
            let status = loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    break Some(status);
                }
                if t0.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                thread::sleep(Duration::from_millis(2));
            };
            times.push(t0.elapsed());
            let stdout = out_reader.join().unwrap();
            let stderr = err_reader.join().unwrap();
            let mut problems = Vec::new();
            match status {
                None => problems.push("hung (killed after 20 s)".to_string()),
                Some(s) if !s.success() => problems.push(format!("exit status {s}")),
                Some(_) => {}
            }
            if stderr.contains("shardalloc: fatal") {
                problems.push("\"shardalloc: fatal\" on stderr".into());
            }
            if !stderr.contains(SCENARIO_READY) {
                problems.push("the scenario did not start".into());
            }
            if !stderr.contains(ATEXIT_OK) {
                problems.push("the atexit handler did not report success".into());
            }
            if scenario != "return-from-main" && !stderr.contains(TLS_EXIT_OK) {
                problems.push(
                    "the exiting thread's thread-local destructor did not report success".into(),
                );
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "run {run}, scenario {scenario} (child seed {child_seed}): {}\n--- stdout:\n{}\n--- \
                     stderr:\n{}\n--- replay: {EXIT_CHILD_VAR}={scenario} {}={child_seed} {} \
                     exit_child_scenario --exact --ignored --nocapture",
                    problems.join("; "),
                    stdout.trim_end(),
                    stderr.trim_end(),
                    common::SEED_VAR,
                    exe.display()
                ));
            }
        }
    }
    times.sort();
    println!(
        "[exit_path_is_clean] seed {seed}: {} child processes ({runs} × {SCENARIOS:?}) in {:.2?}; \
         child time median {:.2?}, max {:.2?}",
        runs * SCENARIOS.len(),
        start.elapsed(),
        times[times.len() / 2],
        times.last().unwrap()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} children failed:\n{}",
        failures.len(),
        runs * SCENARIOS.len(),
        failures.join("\n\n")
    );
}

// ============================================================================================
// c. A thread that only frees never waits for the owner
// ============================================================================================

/// What the owner does while another thread frees its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// Blocked on a channel (never entering the allocator) until the frees are done.
    Parked,
    /// Exited before the frees start.
    Exited,
    /// Exits while the frees are under way.
    Exiting,
    /// Spinning in arithmetic (never entering the allocator) until the frees are done.
    Computing,
}

/// Blocks the owner allocates: enough small ones to fill many pages (most go to the full queue,
/// so remote frees take the delayed route), medium, large and huge ones.
fn owner_blocks(rng: &mut SmallRng, seed: u64, n: usize) -> Vec<Ptr> {
    let mut blocks = Vec::with_capacity(n + 8);
    for i in 0..n {
        let size = match i % 100 {
            0..=89 => rng.random_range(8..=256),
            90..=97 => rng.random_range(257..=32 * KIB),
            98 => rng.random_range(32 * KIB + 1..=MIB),
            _ => rng.random_range(MIB + 1..=3 * MIB),
        };
        let fill = if size > 64 * KIB {
            Fill::Edges
        } else {
            Fill::Full
        };
        blocks
            .push(Ptr(raw::alloc(size, 8, fill, seed)
                .unwrap_or_else(|d| panic!("seed {seed}: owner: {d}"))));
    }
    // At least a few huge blocks, whatever `n`.
    for _ in 0..4 {
        let size = rng.random_range(MIB + 1..=2 * MIB);
        blocks.push(Ptr(raw::alloc(size, 8, Fill::Edges, seed)
            .unwrap_or_else(|d| panic!("seed {seed}: owner: {d}"))));
    }
    blocks
}

/// Time a free-only thread may take for all blocks before the test calls it blocked.
const FREE_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags between the test and the owner thread.
#[derive(Default)]
struct Flags {
    /// The freeing threads are about to start.
    go: AtomicBool,
    /// All blocks are freed.
    frees_done: AtomicBool,
}

/// The owner's side of a free-only case: allocates the blocks, hands them over, waits in the
/// given way, then (unless it exits) allocates again. Returns whether the frees were done when
/// it came back (`None` if it exited).
fn owner_work(
    owner_mode: Owner,
    flags: &Flags,
    name: &str,
    n: usize,
    owner_seed: u64,
    seed: u64,
    blocks_tx: mpsc::Sender<Vec<Ptr>>,
) -> Option<bool> {
    let mut rng = SmallRng::seed_from_u64(owner_seed);
    let blocks = owner_blocks(&mut rng, seed, n);
    blocks_tx.send(blocks).expect("test alive");
    match owner_mode {
        Owner::Parked => {
            while !flags.frees_done.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(1));
            }
        }
        Owner::Exited => return None,
        Owner::Exiting => {
            // Exit as soon as the frees start.
            while !flags.go.load(Ordering::Acquire) {
                thread::sleep(Duration::from_micros(50));
            }
            return None;
        }
        Owner::Computing => {
            let t0 = Instant::now();
            let mut x = 1u64;
            while !flags.frees_done.load(Ordering::Acquire) && t0.elapsed() < 3 * FREE_TIMEOUT {
                for _ in 0..1000 {
                    x = std::hint::black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 1);
                }
            }
            std::hint::black_box(x);
        }
    }
    // The owner comes back and allocates: other threads emptied its pages meanwhile.
    let again = owner_blocks(&mut rng, seed, n / 4);
    for p in again {
        // SAFETY: a live tagged block of ours.
        if let Err(d) = unsafe { raw::free(p.0, seed) } {
            panic!("seed {seed}: {name}: owner, after the remote frees: {d}");
        }
    }
    Some(flags.frees_done.load(Ordering::Acquire))
}

fn free_only_case(owner_mode: Owner, freers: usize, seed: u64) {
    let name = format!("owner {owner_mode:?}, {freers} freeing thread(s)");
    let replay = format!(
        "replay: {}={seed} cargo test --release --test exit_order free_only_threads_never_wait -- \
         --exact",
        common::SEED_VAR
    );
    let n = 20_000 * common::scale();
    let (blocks_tx, blocks_rx) = mpsc::channel::<Vec<Ptr>>();
    // The owner waits on these flags by polling with `thread::sleep` (a system call, no
    // allocation), so while it waits it never enters the allocator.
    let flags = Arc::new(Flags::default());
    let owner_seed = raw::mix(seed ^ owner_mode as u64);

    // Threads are detached (not scoped), so that one that blocks fails the test on a timeout
    // instead of hanging it.
    let (result_tx, result_rx) = mpsc::channel::<Option<bool>>();
    let owner = {
        let flags = Arc::clone(&flags);
        let name = name.clone();
        thread::spawn(move || {
            let _ = result_tx.send(owner_work(
                owner_mode, &flags, &name, n, owner_seed, seed, blocks_tx,
            ));
        })
    }
    .into_pthread_t();
    let mut blocks = blocks_rx.recv().expect("owner sent its blocks");
    if owner_mode == Owner::Exited {
        assert!(
            watchdog::exited_within(owner, FREE_TIMEOUT),
            "seed {seed}: {name}: the owner's thread exit did not complete within \
             {FREE_TIMEOUT:?}; {replay}"
        );
    }
    // Shuffle, and split among the freeing threads.
    let mut rng = SmallRng::seed_from_u64(raw::mix(seed ^ 0xF4EE));
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, rng.random_range(0..=i));
    }
    let total = blocks.len();
    let per = total.div_ceil(freers);
    let started = Arc::new(Barrier::new(freers + 1));
    let (done_tx, done_rx) = mpsc::channel::<Result<Duration, String>>();
    for f in 0..freers {
        let chunk = blocks.split_off(blocks.len().saturating_sub(per));
        let done_tx = done_tx.clone();
        let started = Arc::clone(&started);
        thread::spawn(move || {
            started.wait();
            let t0 = Instant::now();
            let mut result = Ok(());
            for p in chunk {
                // SAFETY: live tagged blocks handed to us.
                if let Err(d) = unsafe { raw::free(p.0, seed) } {
                    result = Err(format!("freeing thread {f}: {d}"));
                    break;
                }
            }
            let _ = done_tx.send(result.map(|()| t0.elapsed()));
        });
    }
    drop(done_tx);
    let t0 = Instant::now();
    started.wait();
    flags.go.store(true, Ordering::Release);
    let mut slowest = Duration::ZERO;
    for _ in 0..freers {
        let left = FREE_TIMEOUT.saturating_sub(t0.elapsed());
        match done_rx.recv_timeout(left) {
            Ok(Ok(took)) => slowest = slowest.max(took),
            Ok(Err(e)) => panic!("seed {seed}: {name}: {e}; {replay}"),
            Err(_) => panic!(
                "seed {seed}: {name}: the freeing threads did not free {total} blocks within \
                 {FREE_TIMEOUT:?}: a free waited for the owner; {replay}"
            ),
        }
    }
    let all_done = t0.elapsed();
    flags.frees_done.store(true, Ordering::Release);
    if owner_mode != Owner::Exited {
        assert!(
            watchdog::exited_within(owner, FREE_TIMEOUT),
            "seed {seed}: {name}: the owner thread did not finish (allocate again, exit) within \
             {FREE_TIMEOUT:?} after the frees; {replay}"
        );
    }
    let owner_result = result_rx
        .try_recv()
        .unwrap_or_else(|_| panic!("seed {seed}: {name}: the owner thread panicked; {replay}"));
    if owner_mode == Owner::Computing {
        // The owner computed until the frees were done: they completed without it.
        assert_eq!(
            owner_result,
            Some(true),
            "seed {seed}: {name}: the owner's computation ran out before the frees were done; \
             {replay}"
        );
    }
    println!(
        "[free_only_threads_never_wait] {name}: {total} blocks freed in {all_done:.2?} (slowest \
         thread {slowest:.2?}, {:.0} ns per block)",
        slowest.as_nanos() as f64 / (total as f64 / freers as f64)
    );
}

#[test]
fn free_only_threads_never_wait() {
    let seed = common::seed("free_only_threads_never_wait");
    let _watchdog = watchdog::Watchdog::start(
        "free_only_threads_never_wait",
        Duration::from_secs(180 * common::scale() as u64),
        move || {
            format!(
                "seed {seed}; an owner or freeing thread never finished; replay: {}={seed} cargo \
                 test --release --test exit_order free_only_threads_never_wait -- --exact",
                common::SEED_VAR
            )
        },
    );
    for owner in [
        Owner::Parked,
        Owner::Exited,
        Owner::Exiting,
        Owner::Computing,
    ] {
        for freers in [1, 3] {
            free_only_case(owner, freers, seed);
        }
    }
}
