//! Stress and soak under `ShardAlloc` as the global allocator, sized for 2 cores, in the manner of
//! mimalloc's `test-stress`.
//!
//! Generations of threads (10 at a time, with staggered lifetimes) allocate blocks of mixed sizes
//! (mostly small, some medium and large up to 2 MiB, occasionally huge 2–8 MiB) and alignments,
//! free and `realloc` them, and swap blocks through a shared transfer array of atomic slots (a
//! block swapped out is freed, reallocated or kept by a thread that usually did not allocate it).
//! Threads exit while blocks they allocated are still in the transfer array or in an orphan pool,
//! where threads of the same and later generations free and reallocate them: the dead threads'
//! segments are abandoned and reclaimed while remote frees land in them. Threads now and then call
//! `shardalloc::collect(true)`. A steady thread lives through all generations allocating blocks of
//! a single size class, so it adopts abandoned segments whose other size classes it never uses.
//!
//! Every block holds a pattern derived from (address, size, seed) over its whole size and is
//! verified before every free and realloc (`common/raw.rs`): any corruption, double hand-out or
//! lost realloc content fails the test. Resident memory and virtual size are read after the first
//! generation and at the end: neither what is resident beyond the live blocks nor the address space
//! may grow with the number of generations (the bounds are argued at `RSS_SLACK` and `VM_SLACK`).
//!
//! Run: `cargo test --release --test stress -- --nocapture` (about 5 s on 2 cores).
//! Replay: `SHARDALLOC_SEED=<seed> cargo test --release --test stress -- --nocapture` (the seed
//! fixes every thread's sequence of operations; the interleaving stays up to the scheduler).
//! Soak: `SHARDALLOC_SOAK_SECS=<n>` runs further generations until `n` seconds have passed (the
//! bounds then cover every generation after the first).

mod common;
#[path = "common/raw.rs"]
mod raw;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::collections::VecDeque;
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use common::mib;
use raw::Fill;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Threads per generation (all alive at once, exiting at different times).
const THREADS: usize = 10;
/// Generations in the default run (a soak runs more).
const GENERATIONS: usize = 16;
/// Average operations per thread (each thread does between half and one and a half of this).
const OPS: usize = 4_000;
/// Slots of the transfer array.
const TRANSFER_SLOTS: usize = 512;
/// Most blocks the orphan pool holds between generations.
const ORPHAN_CAP: usize = 1_500;
/// Most blocks a thread keeps in its own list.
const LOCAL_CAP: usize = 300;
/// Environment variable: run generations until this many seconds have passed.
const SOAK_VAR: &str = "SHARDALLOC_SOAK_SECS";

/// Allowed growth of the memory resident beyond the live blocks, from the reading after the first
/// generation to the end.
///
/// Why 64 MiB, and why that bound means something:
///
/// * Both readings are taken between generations, when the only live blocks are those in the
///   transfer array (≤ 512) and the orphan pool (≤ 1500); about 650–1700 blocks in practice. Their
///   bytes are summed at each reading and subtracted, so what is compared is the *overhead*: memory
///   resident beyond the live blocks. Huge live blocks, whose number varies most between readings,
///   are thereby counted exactly.
/// * The overhead that legitimately varies is what the live blocks pin: each can keep the rest of
///   its page resident (64 KiB small pages, 512 KiB medium pages, and for the ~1 % large blocks
///   most of a 4 MiB segment, since empty parts of segments are not returned yet). Both live sets
///   are samples of the same steady state, so the expected pinning is the same at both readings;
///   what varies most is the number of live large blocks (about 10 ± 3, ±12 MiB of segments) and
///   how the small ones are spread over pages. 2 × 12 MiB for the large blocks, 24 MiB for the
///   spread of small and medium pages, and 16 MiB for the process's own variation after the first
///   generation (glibc's cache of thread stacks, the test harness) give 64 MiB.
/// * The signal: a thread touches many pages (dozens of small size classes, medium pages, large
///   segments: several MiB). If the segments of exited threads were neither reused nor returned,
///   each exited thread would add at least about 1 MiB: 150 MiB over the 15 measured generations
///   of the default run, twice the slack (an assertion keeps it so), and more in a soak. With
///   reclaim of abandoned segments disabled in a scratch copy of the allocator, the overhead grew
///   by 551 MiB over 13 generations (~4 MiB per exited thread); the real allocator measured
///   between +0.2 and +21 MiB in six runs on the 2-core dev box.
const RSS_SLACK: usize = 64 * MIB;
const _: () = assert!(
    (GENERATIONS - 1) * THREADS * MIB >= 2 * RSS_SLACK,
    "the RSS bound would not detect a retention of 1 MiB per exited thread"
);

/// The generation running now, and bit `t` set for every thread `t` of it that is still working
/// / has been joined (for the watchdog's message).
static GENERATION: AtomicUsize = AtomicUsize::new(0);
static WORKING: AtomicU64 = AtomicU64::new(0);
static JOINED: AtomicU64 = AtomicU64::new(0);
/// Time limit of the default run (it takes about 10 s in a release build on 2 cores); a soak adds
/// its duration.
const WATCHDOG_LIMIT: Duration = Duration::from_secs(300);

/// Allowed growth of the virtual size from the reading after the first generation to the end.
///
/// Why 192 MiB, and why that bound means something:
///
/// * At both readings no worker thread is alive (only the steady thread, with at most one batch
///   of 2 MiB live), and the live blocks are samples of the same steady state. Address space that
///   may vary without a leak: the segments the live blocks keep (a segment stays mapped while any
///   block in it lives: for the ~10 ± 3 live large blocks 4 MiB each, ±12 MiB; for the small and
///   medium ones a few segments either way), the allocator's cache of empty segments (≤ 4 × 4 MiB),
///   glibc's cache of freed thread stacks (≤ 40 MiB) and, should one appear, a glibc malloc arena
///   (64 MiB). 12 + 16 + 16 + 40 + 64 = 148 MiB, rounded up to 192 MiB. Measured on the 2-core dev
///   box: between −12 and +33 MiB.
/// * The signal: a segment kept although it holds no live block is 4 MiB of address space (RSS
///   barely shows it: its pages were given back). With the allocator as of commit 3db33b2, whose
///   threads never looked again at adopted pages of size classes they do not allocate from, the
///   steady thread kept every segment it adopted: +550 to +620 MiB over the default run (about
///   40 MiB per generation), three times this bound.
const VM_SLACK: usize = 192 * MIB;

/// Counters printed at the end.
#[derive(Default)]
struct Stats {
    allocs: AtomicU64,
    frees: AtomicU64,
    reallocs: AtomicU64,
    transfers: AtomicU64,
    foreign_frees: AtomicU64,
    foreign_reallocs: AtomicU64,
    orphans_taken: AtomicU64,
    orphans_left: AtomicU64,
    huge: AtomicU64,
    collects: AtomicU64,
    bytes: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A block left behind by an exited thread.
struct Orphan {
    ptr: usize,
    generation: usize,
    thread: usize,
}

struct Shared {
    seed: u64,
    transfer: Vec<AtomicPtr<u8>>,
    orphans: Mutex<VecDeque<Orphan>>,
    stats: Stats,
}

/// Mostly small (82 % up to 1 KiB), some medium (17 % up to 64 KiB) and large (1 %, up to 2 MiB),
/// occasionally huge (0.1 %, 2–8 MiB).
fn pick_size(rng: &mut SmallRng) -> usize {
    match rng.random_range(0..10_000u32) {
        0..=5_199 => rng.random_range(8..=128),
        5_200..=8_199 => rng.random_range(129..=KIB),
        8_200..=9_499 => rng.random_range(KIB + 1..=16 * KIB),
        9_500..=9_889 => rng.random_range(16 * KIB + 1..=64 * KIB),
        9_890..=9_989 => rng.random_range(64 * KIB + 1..=2 * MIB),
        _ => rng.random_range(2 * MIB + 1..=8 * MIB),
    }
}

/// Mostly 8 or 16, some up to 4 KiB, a few up to 64 KiB.
fn pick_align(rng: &mut SmallRng) -> usize {
    match rng.random_range(0..100u32) {
        0..=79 => 8,
        80..=89 => 16,
        90..=97 => 1 << rng.random_range(5..=12),
        _ => 1 << rng.random_range(13..=16),
    }
}

/// The context of one worker thread, for messages.
struct Who {
    seed: u64,
    generation: usize,
    thread: usize,
}

impl Who {
    #[track_caller]
    fn fail(&self, op: usize, what: &str, damage: raw::Damage) -> ! {
        panic!(
            "seed {}: generation {}, thread {}, op {op}: {what}: {damage}; replay: {}={} cargo \
             test --release --test stress -- --nocapture",
            self.seed,
            self.generation,
            self.thread,
            common::SEED_VAR,
            self.seed
        )
    }
}

fn worker(shared: &Shared, generation: usize, thread: usize) {
    let seed = shared.seed;
    let who = Who {
        seed,
        generation,
        thread,
    };
    let stats = &shared.stats;
    let mut rng = SmallRng::seed_from_u64(raw::mix(
        seed ^ ((generation * 1000 + thread) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    let mut local: Vec<*mut u8> = Vec::with_capacity(LOCAL_CAP + 1);

    let alloc = |rng: &mut SmallRng, op: usize| -> *mut u8 {
        let size = pick_size(rng);
        let align = pick_align(rng);
        let p =
            raw::alloc(size, align, Fill::Full, seed).unwrap_or_else(|d| who.fail(op, "alloc", d));
        Stats::add(&stats.allocs, 1);
        Stats::add(&stats.bytes, size as u64);
        if size > 2 * MIB {
            Stats::add(&stats.huge, 1);
        }
        p
    };
    let free = |p: *mut u8, op: usize, what: &str| {
        // SAFETY: every pointer in this test is a live tagged block owned by the caller.
        unsafe { raw::free(p, seed) }.unwrap_or_else(|d| who.fail(op, what, d));
        Stats::add(&stats.frees, 1);
    };
    let realloc = |p: *mut u8, rng: &mut SmallRng, op: usize, what: &str| -> *mut u8 {
        let new_size = pick_size(rng);
        // SAFETY: as above; the result replaces `p`.
        let q =
            unsafe { raw::realloc(p, new_size, seed) }.unwrap_or_else(|d| who.fail(op, what, d));
        Stats::add(&stats.reallocs, 1);
        q
    };

    let ops = OPS / 2 + rng.random_range(0..OPS);
    for op in 0..ops {
        let r = rng.random_range(0..1000u32);
        if r < 400 || local.is_empty() {
            local.push(alloc(&mut rng, op));
            if local.len() > LOCAL_CAP {
                let p = local.swap_remove(rng.random_range(0..local.len()));
                free(p, op, "free of an own block");
            }
        } else if r < 600 {
            let p = local.swap_remove(rng.random_range(0..local.len()));
            free(p, op, "free of a kept block");
        } else if r < 680 {
            let j = rng.random_range(0..local.len());
            local[j] = realloc(local[j], &mut rng, op, "realloc of a kept block");
        } else if r < 960 {
            // Swap a block into a random slot; deal with whatever was there (usually a block of
            // another thread, possibly of an exited one).
            let give = if rng.random_bool(0.5) {
                local.swap_remove(rng.random_range(0..local.len()))
            } else {
                alloc(&mut rng, op)
            };
            let slot = &shared.transfer[rng.random_range(0..TRANSFER_SLOTS)];
            // AcqRel: Release publishes the block's contents to the thread that swaps it out;
            // Acquire makes the contents of the block we take visible.
            let got = slot.swap(give, Ordering::AcqRel);
            Stats::add(&stats.transfers, 1);
            if !got.is_null() {
                match rng.random_range(0..10u32) {
                    0..=5 => {
                        free(got, op, "free of a transferred block");
                        Stats::add(&stats.foreign_frees, 1);
                    }
                    6..=7 => {
                        local.push(realloc(got, &mut rng, op, "realloc of a transferred block"));
                        Stats::add(&stats.foreign_reallocs, 1);
                    }
                    _ => {
                        // SAFETY: a live tagged block, now ours.
                        unsafe { raw::verify(got, seed) }
                            .unwrap_or_else(|d| who.fail(op, "transferred block", d));
                        local.push(got);
                    }
                }
                if local.len() > LOCAL_CAP {
                    let p = local.swap_remove(rng.random_range(0..local.len()));
                    free(p, op, "free of an own block");
                }
            }
        } else if r < 995 {
            // Take a few blocks left by exited threads.
            let taken: Vec<Orphan> = {
                let mut pool = shared.orphans.lock().unwrap();
                let n = pool.len().min(rng.random_range(1..=4));
                pool.drain(..n).collect()
            };
            for o in taken {
                Stats::add(&stats.orphans_taken, 1);
                let what = format!(
                    "block left by thread {} of generation {}",
                    o.thread, o.generation
                );
                let p = ptr::with_exposed_provenance_mut::<u8>(o.ptr);
                if rng.random_bool(0.7) {
                    free(p, op, &format!("free of a {what}"));
                    Stats::add(&stats.foreign_frees, 1);
                } else {
                    local.push(realloc(p, &mut rng, op, &format!("realloc of a {what}")));
                    Stats::add(&stats.foreign_reallocs, 1);
                }
            }
        } else if r < 996 {
            shardalloc::collect(true);
            Stats::add(&stats.collects, 1);
        } else {
            // Verify everything kept.
            for &p in &local {
                // SAFETY: a live tagged block of ours.
                unsafe { raw::verify(p, seed) }.unwrap_or_else(|d| who.fail(op, "kept block", d));
            }
        }
    }

    // Exit: free everything, leave everything to the orphan pool, or half and half.
    let leave = match rng.random_range(0..4u32) {
        0 => 0,
        1 => local.len(),
        _ => local.len() / 2,
    };
    while local.len() > leave {
        let p = local.pop().unwrap();
        free(p, ops, "free at thread exit");
    }
    Stats::add(&stats.orphans_left, local.len() as u64);
    let excess: Vec<Orphan> = {
        let mut pool = shared.orphans.lock().unwrap();
        pool.extend(local.iter().map(|p| Orphan {
            ptr: p.expose_provenance(),
            generation,
            thread,
        }));
        let n = pool.len().saturating_sub(ORPHAN_CAP);
        pool.drain(..n).collect()
    };
    for o in excess {
        let p = ptr::with_exposed_provenance_mut::<u8>(o.ptr);
        free(p, ops, "free of an orphan beyond the pool's cap");
    }
    WORKING.fetch_and(!(1 << thread), Ordering::Relaxed);
}

/// Bytes of the live blocks (transfer array and orphan pool) between generations, and their
/// number.
fn live_bytes(shared: &Shared) -> (usize, usize) {
    let mut bytes = 0;
    let mut count = 0;
    for slot in &shared.transfer {
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: between generations no other thread runs; the block is live.
            bytes += unsafe { raw::size_of_block(p) };
            count += 1;
        }
    }
    for o in shared.orphans.lock().unwrap().iter() {
        // SAFETY: as above.
        bytes += unsafe { raw::size_of_block(ptr::with_exposed_provenance(o.ptr)) };
        count += 1;
    }
    (bytes, count)
}

/// Blocks of one size class only, allocated and freed in batches by the steady thread.
const STEADY_BLOCK: usize = 8 * KIB;
const STEADY_BATCH: usize = 256;
static STOP_STEADY: AtomicBool = AtomicBool::new(false);

/// A thread that lives through all generations and allocates only `STEADY_BLOCK`-sized blocks:
/// whenever it needs a fresh page it may adopt a segment abandoned by an exited thread, whose
/// pages of other size classes it never allocates from. Blocks other threads free into those
/// pages must still come back (and the segments go back to the OS once empty); otherwise the
/// memory resident beyond the live blocks grows with every generation. Returns its batch count.
fn steady(seed: u64) -> u64 {
    let mut batches = 0;
    let mut live = Vec::with_capacity(STEADY_BATCH);
    while !STOP_STEADY.load(Ordering::Relaxed) {
        for _ in 0..STEADY_BATCH {
            let p = raw::alloc(STEADY_BLOCK, 8, Fill::Full, seed)
                .unwrap_or_else(|d| panic!("seed {seed}: steady thread: alloc: {d}"));
            live.push(p);
        }
        for p in live.drain(..) {
            // SAFETY: a live tagged block of ours.
            if let Err(d) = unsafe { raw::free(p, seed) } {
                panic!("seed {seed}: steady thread: {d}");
            }
        }
        batches += 1;
        thread::sleep(Duration::from_millis(2));
    }
    batches
}

fn rss() -> usize {
    shardalloc::resident_bytes().expect("shardalloc::resident_bytes")
}

#[test]
fn stress() {
    let seed = common::seed("stress");
    let soak = std::env::var(SOAK_VAR).ok().map(|v| {
        Duration::from_secs(
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SOAK_VAR}={v:?} is not a number of seconds")),
        )
    });
    println!(
        "[stress] {THREADS} threads per generation, {GENERATIONS} generations{}; soak: \
         {SOAK_VAR}=<seconds>",
        match soak {
            Some(d) => format!(" or more, until {d:?} have passed"),
            None => String::new(),
        }
    );
    let shared = Shared {
        seed,
        transfer: (0..TRANSFER_SLOTS)
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect(),
        orphans: Mutex::new(VecDeque::new()),
        stats: Stats::default(),
    };
    let limit = WATCHDOG_LIMIT + soak.unwrap_or_default();
    let _watchdog = watchdog::Watchdog::start("stress", limit, move || {
        let working = WORKING.load(Ordering::Relaxed);
        let joined = JOINED.load(Ordering::Relaxed);
        let list =
            |bits: u64| -> Vec<usize> { (0..THREADS).filter(|t| bits & (1 << t) != 0).collect() };
        format!(
            "seed {seed}, generation {}: threads still working: {:?}; threads done with their \
             work but not joined (stuck in thread exit?): {:?}; replay: {}={seed} cargo test \
             --release --test stress -- --nocapture",
            GENERATION.load(Ordering::Relaxed),
            list(working),
            list(!working & !joined & ((1 << THREADS) - 1)),
            common::SEED_VAR
        )
    });
    let start = Instant::now();
    STOP_STEADY.store(false, Ordering::Relaxed);
    let steady = thread::Builder::new()
        .name("stress-steady".into())
        .spawn(move || steady(seed))
        .expect("spawn");
    let rss_start = rss();
    // (generation, RSS, live bytes, live blocks)
    let mut readings: Vec<(usize, usize, usize, usize)> = Vec::new();
    // Virtual size after each generation.
    let mut vm_readings: Vec<usize> = Vec::new();
    let mut generation = 0;
    loop {
        GENERATION.store(generation, Ordering::Relaxed);
        WORKING.store((1 << THREADS) - 1, Ordering::Relaxed);
        JOINED.store(0, Ordering::Relaxed);
        thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let shared = &shared;
                    thread::Builder::new()
                        .name(format!("stress-{generation}-{t}"))
                        .spawn_scoped(s, move || worker(shared, generation, t))
                        .expect("spawn")
                })
                .collect();
            for (t, h) in handles.into_iter().enumerate() {
                if let Err(e) = h.join() {
                    std::panic::resume_unwind(e);
                }
                JOINED.fetch_or(1 << t, Ordering::Relaxed);
            }
        });
        generation += 1;
        let (bytes, count) = live_bytes(&shared);
        readings.push((generation, rss(), bytes, count));
        vm_readings.push(common::vm_bytes());
        let done = generation >= GENERATIONS && soak.is_none_or(|d| start.elapsed() >= d);
        if done {
            break;
        }
    }
    let elapsed = start.elapsed();
    STOP_STEADY.store(true, Ordering::Relaxed);
    let steady_batches = steady.join().expect("steady thread");

    // Drain: verify and free every block still live.
    let mut drained = 0;
    for slot in &shared.transfer {
        let p = slot.swap(ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: a live tagged block, now ours.
            if let Err(d) = unsafe { raw::free(p, seed) } {
                panic!("seed {seed}: draining the transfer array: {d}");
            }
            drained += 1;
        }
    }
    for o in std::mem::take(&mut *shared.orphans.lock().unwrap()) {
        // SAFETY: as above.
        if let Err(d) = unsafe { raw::free(ptr::with_exposed_provenance_mut(o.ptr), seed) } {
            panic!(
                "seed {seed}: draining the orphan pool (block of thread {} of generation {}): {d}",
                o.thread, o.generation
            );
        }
        drained += 1;
    }
    shardalloc::collect(true);
    let rss_drained = rss();

    let st = &shared.stats;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "[stress] seed {seed}: {generation} generations ({} threads) in {elapsed:.2?}",
        generation * THREADS
    );
    println!(
        "[stress] {} allocs ({:.0} MiB, {} huge), {} frees, {} reallocs, {} transfers; blocks \
         of other threads: {} freed, {} reallocated; {} left at thread exit, {} taken from the \
         pool; {} collect(true); {drained} drained at the end",
        get(&st.allocs),
        get(&st.bytes) as f64 / MIB as f64,
        get(&st.huge),
        get(&st.frees),
        get(&st.reallocs),
        get(&st.transfers),
        get(&st.foreign_frees),
        get(&st.foreign_reallocs),
        get(&st.orphans_left),
        get(&st.orphans_taken),
        get(&st.collects),
    );
    println!(
        "[stress] the steady thread ({STEADY_BLOCK} B blocks only) ran {steady_batches} batches of \
         {STEADY_BATCH}"
    );
    assert_eq!(
        get(&st.allocs),
        get(&st.frees) + drained,
        "seed {seed}: every block allocated was freed exactly once"
    );
    println!("[stress] RSS at start: {:.1} MiB", mib(rss_start));
    for &(g, r, bytes, count) in &readings {
        println!(
            "[stress] after generation {g:3}: RSS {:7.1} MiB, live {count:5} blocks {:6.1} MiB, \
             overhead {:+7.1} MiB",
            mib(r),
            mib(bytes),
            (r as f64 - bytes as f64) / MIB as f64
        );
    }
    println!(
        "[stress] RSS after draining and collect(true): {:.1} MiB",
        mib(rss_drained)
    );
    let (_, rss_first, live_first, _) = readings[0];
    let &(_, rss_end, live_end, _) = readings.last().unwrap();
    let overhead_first = rss_first as i64 - live_first as i64;
    let overhead_end = rss_end as i64 - live_end as i64;
    println!(
        "[stress] RSS after the first generation {:.1} MiB, at the end {:.1} MiB; overhead beyond \
         live blocks {:+.1} -> {:+.1} MiB (growth {:+.1} MiB, allowed {:.0} MiB)",
        mib(rss_first),
        mib(rss_end),
        overhead_first as f64 / MIB as f64,
        overhead_end as f64 / MIB as f64,
        (overhead_end - overhead_first) as f64 / MIB as f64,
        mib(RSS_SLACK)
    );
    assert!(
        overhead_end <= overhead_first + RSS_SLACK as i64,
        "seed {seed}: memory resident beyond the live blocks grew from {:.1} MiB after the first \
         generation to {:.1} MiB after generation {generation} (allowed growth {:.0} MiB). \
         Readings (generation, RSS, live bytes, live blocks): {readings:?}; replay: {}={seed} \
         cargo test --release --test stress -- --nocapture",
        overhead_first as f64 / MIB as f64,
        overhead_end as f64 / MIB as f64,
        mib(RSS_SLACK),
        common::SEED_VAR,
    );
    let (vm_first, vm_end) = (vm_readings[0], *vm_readings.last().unwrap());
    println!(
        "[stress] virtual size after the first generation {:.0} MiB, at the end {:.0} MiB (growth \
         {:+.0} MiB, allowed {:.0} MiB)",
        mib(vm_first),
        mib(vm_end),
        (vm_end as f64 - vm_first as f64) / MIB as f64,
        mib(VM_SLACK)
    );
    assert!(
        vm_end <= vm_first + VM_SLACK,
        "seed {seed}: the virtual size grew from {:.0} MiB after the first generation to {:.0} MiB \
         after generation {generation} (allowed growth {:.0} MiB): segments are kept that hold \
         no live block. Virtual size after each generation (MiB): {:?}; replay: {}={seed} cargo \
         test --release --test stress -- --nocapture",
        mib(vm_first),
        mib(vm_end),
        mib(VM_SLACK),
        vm_readings.iter().map(|&v| v / MIB).collect::<Vec<_>>(),
        common::SEED_VAR,
    );
}
