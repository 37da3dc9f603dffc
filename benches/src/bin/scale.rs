//! How shardalloc's costs grow with the size of the process (issue 12, point 7): time per
//! operation with 10, 100, 1 000 and 10 000 **abandoned segments**, and with 10, 100, 1 000
//! and 10 000 **live heaps**. ShardAlloc is this process's global allocator.
//!
//! Usage: `scale [--rounds N] [--levels 10,100,1000,10000] [--only abandoned|heaps]`
//! (`cargo run --release -p shardalloc-bench --bin scale`). Every (case, level) runs in a
//! process of its own (this bin, re-executed with `--child <case> <n>`), so what one level
//! leaves behind cannot slow the next; the levels are interleaved, their order rotating from
//! round to round, and the table shows medians over rounds. Output: Markdown tables.
//!
//! **Abandoned segments.** A setup thread allocates `n` blocks of 1 MiB (a large page is a
//! whole 4 MiB segment and holds one block of more than 256 KiB, so that is one segment per
//! block), writes both ends of each, and exits without freeing them: thread exit abandons
//! every segment with a live block. Then, on new threads:
//! * *fresh page*: allocations of 1 KiB blocks until 64 new small pages have been started;
//!   each new page takes the slow path, which first tries to reclaim an abandoned segment of
//!   its kind (none is small here); time per new page;
//! * *pair*: a 64 B allocation and its free, 2 M times (the fast path); time per pair;
//! * *churn*: for 400 ms, 8 KiB allocations (each freeing the block allocated 256 before),
//!   each timed in thread CPU time (`CLOCK_THREAD_CPUTIME_ID`, so preemption on a loaded
//!   machine does not count): the worst single allocation and the mean. The churn's slow
//!   paths run the process's reaping passes (every 31 ms) and, every 100 ms, a reclaim pass
//!   over the abandoned segments: the worst allocation is the one that paid for a pass;
//! * *1 MiB alloc (adopts)*: 16 allocations of 1 MiB, each of which takes the slow path for a
//!   large page and first adopts an abandoned large segment (full, so it then maps a new one);
//! * `shardalloc::collect(true)` (median of 5 calls) and `shardalloc::stats()` (median of 11
//!   batches of 100 calls, per call), on the main thread.
//!
//! **Live heaps.** The main thread creates `n` `shardalloc::Heap`s (first-class heaps, each
//! registered like a thread's; 10 000 parked threads would oversubscribe this 2-CPU machine
//! for nothing), allocates one 64 B block in each and keeps them all alive (the
//! `registered` column is `stats().heaps`). Then: the time per `Heap::new()` (+ one
//! allocation) for the last tenth of the heaps created; a `Heap::new()` + allocation +
//! `destroy()` cycle at `n` live heaps (median of 200); `stats()` and `collect(true)` as above
//! (on the main thread); fresh page and pair on a new thread, as above; a thread started,
//! its first allocation (which registers its heap) and its join (median of 51); the churn
//! above, on a new thread, whose reaping passes visit the registered heaps (all idle here,
//! so each one visited is locked and its remote frees looked at).
//!
//! Figures are wall-clock on a shared machine: read the growth from 10 to 10 000, not the
//! last digit.

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

use std::alloc::Layout;
use std::hint::black_box;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// New small pages started by the fresh-page measurement.
const FRESH_PAGES: usize = 64;
/// Small-page size (the allocator's `SMALL_PAGE_SHIFT`): a change of `addr >> 16` between two
/// consecutive 1 KiB blocks is a new page.
const SMALL_PAGE_SHIFT: u32 = 16;
/// Allocation/free pairs of the fast-path measurement.
const PAIRS: usize = 2_000_000;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Time per new small page (µs), allocating 1 KiB blocks until `FRESH_PAGES` new pages have
/// been started; then the blocks are freed (not timed).
fn fresh_page_us() -> f64 {
    let layout = Layout::from_size_align(KIB, 8).expect("layout");
    // Enough room for every block, reserved before the clock starts.
    let mut blocks: Vec<*mut u8> = Vec::with_capacity((FRESH_PAGES + 2) * 64);
    let mut pages = 0;
    let mut last_page = usize::MAX;
    let start = Instant::now();
    while pages < FRESH_PAGES {
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null(), "out of memory");
        // SAFETY: a live 1 KiB block.
        unsafe { p.write(1) };
        let page = p.addr() >> SMALL_PAGE_SHIFT;
        if page != last_page {
            pages += 1;
            last_page = page;
        }
        blocks.push(p);
    }
    let elapsed = start.elapsed();
    for p in blocks {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { std::alloc::dealloc(p, layout) };
    }
    us(elapsed) / FRESH_PAGES as f64
}

/// Nanoseconds per 64 B allocation + free (the fast path).
fn pair_ns() -> f64 {
    let layout = Layout::from_size_align(64, 8).expect("layout");
    let start = Instant::now();
    for i in 0..PAIRS {
        // SAFETY: non-zero size; freed right away with the same layout.
        unsafe {
            let p = std::alloc::alloc(layout);
            assert!(!p.is_null(), "out of memory");
            p.write(i as u8);
            black_box(p);
            std::alloc::dealloc(p, layout);
        }
    }
    start.elapsed().as_secs_f64() * 1e9 / PAIRS as f64
}

/// `collect(true)`, median of 5 calls (`SCALE_COLLECTS` to change), µs (each call listed on
/// stderr with `SCALE_VERBOSE`).
fn collect_us() -> f64 {
    let calls = std::env::var("SCALE_COLLECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let times: Vec<f64> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            shardalloc::collect(true);
            us(t.elapsed())
        })
        .collect();
    if std::env::var_os("SCALE_VERBOSE").is_some() {
        eprintln!("collect(true) calls, µs: {times:?}");
    }
    median(times)
}

/// `stats()`, per call, median of 11 batches of 100, µs.
fn stats_us() -> f64 {
    median(
        (0..11)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..100 {
                    black_box(shardalloc::stats());
                }
                us(t.elapsed()) / 100.0
            })
            .collect(),
    )
}

/// Runs the per-thread measurements on a new thread: (fresh page µs, pair ns).
fn on_new_thread() -> (f64, f64) {
    std::thread::spawn(|| {
        // The thread's heap is set up by its first allocation, not timed.
        black_box(Box::new(0u64));
        let fresh = fresh_page_us();
        let pair = pair_ns();
        (fresh, pair)
    })
    .join()
    .expect("measuring thread")
}

/// CPU time of the calling thread, ns (`CLOCK_THREAD_CPUTIME_ID`: time the thread spends
/// preempted does not count, so one slow allocation shows as itself on a loaded machine).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock id exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Block size of the churn: 8 KiB, eight to a small page, so one allocation in eight or so
/// takes the slow path (where the reaper and the reclaim passes run).
const CHURN_BLOCK: usize = 8 * KIB;
/// Live blocks of the churn (a window: each allocation frees the oldest).
const CHURN_WINDOW: usize = 256;
/// How long the churn runs: several reaping passes (one per 31 ms) and reclaim passes (one per
/// 100 ms at the default decay time).
const CHURN_MS: u64 = 400;

/// The worst single allocation (thread CPU time, µs) and the mean (ns) while a thread churns
/// through 8 KiB blocks for `CHURN_MS`: the slow paths of that churn run the process's
/// reaping passes (over the registry) and reclaim passes (over the abandoned segments), so the
/// worst allocation is one that paid for a pass.
fn churn_worst() -> (f64, f64) {
    let layout = Layout::from_size_align(CHURN_BLOCK, 8).expect("layout");
    let mut window: Vec<*mut u8> = vec![std::ptr::null_mut(); CHURN_WINDOW];
    let deadline = Instant::now() + Duration::from_millis(CHURN_MS);
    let (mut worst, mut total, mut count) = (0u64, 0u64, 0u64);
    let mut i = 0usize;
    while Instant::now() < deadline {
        for _ in 0..64 {
            let slot = &mut window[i % CHURN_WINDOW];
            if !slot.is_null() {
                // SAFETY: allocated below with `layout`, freed once.
                unsafe { std::alloc::dealloc(*slot, layout) };
            }
            let t = thread_cpu_ns();
            // SAFETY: non-zero size.
            let p = unsafe { std::alloc::alloc(layout) };
            let dt = thread_cpu_ns() - t;
            assert!(!p.is_null(), "out of memory");
            // SAFETY: a live 8 KiB block.
            unsafe { p.write(1) };
            *slot = p;
            worst = worst.max(dt);
            total += dt;
            count += 1;
            i += 1;
        }
    }
    for p in window.into_iter().filter(|p| !p.is_null()) {
        // SAFETY: allocated with `layout`, freed once.
        unsafe { std::alloc::dealloc(p, layout) };
    }
    (worst as f64 / 1e3, total as f64 / count as f64)
}

/// Time per 1 MiB allocation (µs) on a new thread, 16 of them: each takes the slow path for a
/// large page, which first tries to adopt an abandoned large segment.
fn adopt_large_us() -> f64 {
    std::thread::spawn(|| {
        black_box(Box::new(0u64));
        let layout = Layout::from_size_align(MIB, 8).expect("layout");
        let mut blocks = Vec::with_capacity(16);
        let start = Instant::now();
        for _ in 0..16 {
            // SAFETY: non-zero size.
            let p = unsafe { std::alloc::alloc(layout) };
            assert!(!p.is_null(), "out of memory");
            blocks.push(p);
        }
        let elapsed = start.elapsed();
        for p in blocks {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { std::alloc::dealloc(p, layout) };
        }
        us(elapsed) / 16.0
    })
    .join()
    .expect("adopting thread")
}

/// A thread started, its heap set up by a first allocation, and joined (µs, median of 51).
fn thread_start_us() -> f64 {
    median(
        (0..51)
            .map(|_| {
                let t = Instant::now();
                std::thread::spawn(|| black_box(Box::new(0u64)))
                    .join()
                    .expect("thread");
                us(t.elapsed())
            })
            .collect(),
    )
}

/// Runs `churn_worst` on a new thread.
fn churn_on_new_thread() -> (f64, f64) {
    std::thread::spawn(|| {
        black_box(Box::new(0u64));
        churn_worst()
    })
    .join()
    .expect("churning thread")
}

fn child_abandoned(n: usize) {
    let setup = Instant::now();
    let layout = Layout::from_size_align(MIB, 8).expect("layout");
    // The block addresses go back to the main thread, as integers (the blocks stay live until
    // the process exits: that is the point).
    let kept: Vec<usize> = std::thread::spawn(move || {
        let mut kept = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: non-zero size.
            let p = unsafe { std::alloc::alloc(layout) };
            assert!(!p.is_null(), "out of memory after {i} segments");
            // SAFETY: both ends of a live 1 MiB block.
            unsafe {
                p.write(1);
                p.add(MIB - 1).write(1);
            }
            kept.push(p.addr());
        }
        kept
    })
    .join()
    .expect("setup thread");
    let setup_s = setup.elapsed().as_secs_f64();
    let abandoned = shardalloc::stats().abandoned_segments;
    let (fresh, pair) = on_new_thread();
    let (worst, mean) = churn_on_new_thread();
    let adopt = adopt_large_us();
    let collect = collect_us();
    let stats = stats_us();
    let after = shardalloc::stats().abandoned_segments;
    println!(
        "@scale case=abandoned n={n} abandoned={abandoned} abandoned_after={after} \
         setup_s={setup_s:.3} fresh_page_us={fresh:.2} pair_ns={pair:.2} \
         worst_alloc_us={worst:.1} churn_ns={mean:.0} adopt_us={adopt:.1} \
         collect_us={collect:.1} stats_us={stats:.2} kept={}",
        kept.len()
    );
    // Exit without freeing the blocks.
    std::mem::forget(kept);
}

fn child_heaps(n: usize) {
    let layout = Layout::from_size_align(64, 8).expect("layout");
    let mut heaps = Vec::with_capacity(n);
    let last_tenth = n - n / 10;
    let mut t_last = Instant::now();
    for i in 0..n {
        if i == last_tenth {
            t_last = Instant::now();
        }
        let heap = shardalloc::Heap::new();
        let p = heap.alloc(layout);
        assert!(!p.is_null(), "out of memory after {i} heaps");
        // SAFETY: a live 64 B block of `heap`.
        unsafe { p.write(1) };
        heaps.push(heap);
    }
    let create_us = us(t_last.elapsed()) / (n - last_tenth) as f64;
    let registered = shardalloc::stats().heaps;
    let cycle_us = median(
        (0..200)
            .map(|_| {
                let t = Instant::now();
                let heap = shardalloc::Heap::new();
                black_box(heap.alloc(layout));
                heap.destroy();
                us(t.elapsed())
            })
            .collect(),
    );
    let stats = stats_us();
    let collect = collect_us();
    let (fresh, pair) = on_new_thread();
    let thread = thread_start_us();
    let (worst, mean) = churn_on_new_thread();
    println!(
        "@scale case=heaps n={n} registered={registered} create_us={create_us:.2} \
         cycle_us={cycle_us:.2} stats_us={stats:.2} collect_us={collect:.1} \
         fresh_page_us={fresh:.2} pair_ns={pair:.2} thread_us={thread:.1} \
         worst_alloc_us={worst:.1} churn_ns={mean:.0}"
    );
    // The heaps live until the process exits.
    std::mem::forget(heaps);
}

/// Columns of each case's table: (key, header).
const ABANDONED_COLS: [(&str, &str); 9] = [
    ("abandoned", "abandoned (stats)"),
    ("fresh_page_us", "fresh page, µs"),
    ("adopt_us", "1 MiB alloc (adopts), µs"),
    ("worst_alloc_us", "worst 8 KiB alloc in 400 ms, µs CPU"),
    ("churn_ns", "mean 8 KiB alloc, ns CPU"),
    ("pair_ns", "alloc+free 64 B, ns"),
    ("collect_us", "collect(true), µs"),
    ("stats_us", "stats(), µs"),
    ("setup_s", "setup, s"),
];
const HEAPS_COLS: [(&str, &str); 10] = [
    ("registered", "registered (stats)"),
    ("create_us", "Heap::new()+alloc, µs (last tenth)"),
    ("cycle_us", "new+alloc+destroy, µs"),
    ("thread_us", "thread start+alloc+join, µs"),
    ("worst_alloc_us", "worst 8 KiB alloc in 400 ms, µs CPU"),
    ("churn_ns", "mean 8 KiB alloc, ns CPU"),
    ("stats_us", "stats(), µs"),
    ("collect_us", "collect(true), µs"),
    ("fresh_page_us", "fresh page (new thread), µs"),
    ("pair_ns", "alloc+free 64 B, ns"),
];

/// The `key=value` figures of one child run.
type Figures = Vec<(String, f64)>;

fn run_child(case: &str, n: usize) -> Result<Figures, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["--child", case, &n.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("@scale "))
        .ok_or_else(|| {
            format!(
                "{case} n={n}: exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    Ok(line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse::<f64>().ok()?)))
        .collect())
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let n: usize = args
            .get(2)
            .and_then(|s| s.parse().ok())
            .expect("--child <case> <n>");
        match args.get(1).map(String::as_str) {
            Some("abandoned") => child_abandoned(n),
            Some("heaps") => child_heaps(n),
            other => panic!("unknown case {other:?}"),
        }
        return ExitCode::SUCCESS;
    }
    let mut rounds = 3;
    let mut levels = vec![10, 100, 1000, 10_000];
    let mut cases = vec!["abandoned", "heaps"];
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().map(String::as_str).unwrap_or("");
        match flag.as_str() {
            "--rounds" => rounds = value.parse().expect("--rounds N"),
            "--levels" => {
                levels = value
                    .split(',')
                    .map(|s| s.parse().expect("--levels 10,100,..."))
                    .collect();
            }
            "--only" => cases.retain(|c| *c == value),
            _ => {
                eprintln!(
                    "usage: scale [--rounds N] [--levels 10,100,1000,10000] [--only abandoned|heaps]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let start = Instant::now();
    // results[case][level] = one map per round.
    let mut results: Vec<Vec<Vec<Figures>>> = vec![vec![Vec::new(); levels.len()]; cases.len()];
    let runs: Vec<(usize, usize)> = (0..cases.len())
        .flat_map(|c| (0..levels.len()).map(move |l| (c, l)))
        .collect();
    for round in 0..rounds {
        let k = round % runs.len();
        for &(c, l) in runs[k..].iter().chain(&runs[..k]) {
            match run_child(cases[c], levels[l]) {
                Ok(kv) => {
                    eprintln!(
                        "[round {}/{rounds}] {} n={}: {}",
                        round + 1,
                        cases[c],
                        levels[l],
                        kv.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                    results[c][l].push(kv);
                }
                Err(e) => {
                    eprintln!("scale: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!(
        "shardalloc scale: {rounds} rounds, medians; {} CPUs; {:.0} s",
        std::thread::available_parallelism().map_or(1, usize::from),
        start.elapsed().as_secs_f64()
    );
    for (c, case) in cases.iter().enumerate() {
        let (cols, title): (&[(&str, &str)], &str) = if *case == "abandoned" {
            (&ABANDONED_COLS, "abandoned segments")
        } else {
            (&HEAPS_COLS, "live heaps")
        };
        println!();
        println!("### {title}");
        println!();
        println!(
            "| {} | {} |",
            title,
            cols.iter().map(|(_, h)| *h).collect::<Vec<_>>().join(" | ")
        );
        println!("|---:|{}", "---:|".repeat(cols.len()));
        for (l, level) in levels.iter().enumerate() {
            let cells: Vec<String> = cols
                .iter()
                .map(|(key, _)| {
                    fmt(median(
                        results[c][l]
                            .iter()
                            .filter_map(|kv| kv.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
                            .collect(),
                    ))
                })
                .collect();
            println!("| {level} | {} |", cells.join(" | "));
        }
    }
    ExitCode::SUCCESS
}
