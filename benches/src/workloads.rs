//! The workload suite: allocation patterns modelled on the classic allocator benchmarks, run
//! with the allocator under test installed as the process's `#[global_allocator]`.
//!
//! Unlike the rest of this crate (which calls each allocator through `GlobalAlloc` from one
//! process), every workload here allocates through `std::alloc` and the standard collections,
//! so `Vec`s, channels, thread start-up and everything else in the process use the allocator
//! being measured, and the process's peak resident memory is that allocator's. One small bin per
//! allocator (`src/bin/work_<allocator>.rs`) installs it and calls [`main`]; `benches/suite.py`
//! runs them, interleaved and repeated, and prints the table.
//!
//! Every workload does a fixed total amount of work, split evenly over its threads, so on an
//! idle machine with enough cores the time at two threads is about half the time at one. Each
//! block carries a tag written when it is allocated and checked when it is freed (and `realloc`ed
//! buffers carry a pattern checked when they are dropped); a mismatch aborts the process with a
//! message, so a broken allocator cannot post a good time.
//!
//! Command line of a `work_<allocator>` bin:
//!
//! ```text
//! work_<allocator> <workload> <threads> [--scale <f>] [--seed <n>]
//! work_<allocator> --list
//! ```
//!
//! It prints one line on stdout, `@work key=value ...`, with the elapsed time of the workload
//! (measured in the process, from before its threads start until they are all done), the
//! peak resident set of the process (`VmHWM`, see [`peak_rss_kib`]) and the minor page faults
//! the process took during the workload (`minflt` of `/proc/self/stat`, read just before and
//! just after it; see [`minor_faults`]).

use std::alloc::{Layout, handle_alloc_error};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// Alignment of every block the workloads allocate directly (that of `u64`).
const ALIGN: usize = 8;
const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// Page size assumed when touching large blocks (one write per page is enough to fault a page
/// in; a larger real page size only means some writes land on a page already touched).
const PAGE: usize = 4096;
/// Seed used when none is given on the command line.
pub const DEFAULT_SEED: u64 = 0x5EED_2026;

/// A workload of the suite.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Name on the command line and in the tables.
    pub name: &'static str,
    /// One line on what it stresses.
    pub what: &'static str,
    run: fn(&Params) -> u64,
    /// Threads the workload runs for a `threads` argument of `t`.
    os_threads: fn(usize) -> usize,
}

impl Workload {
    /// OS threads (besides the main thread) running at once for a thread argument of `threads`.
    pub fn os_threads(&self, threads: usize) -> usize {
        (self.os_threads)(threads)
    }
}

fn same(t: usize) -> usize {
    t
}

fn twice(t: usize) -> usize {
    2 * t
}

/// Every workload, in the order the tables list them.
pub const WORKLOADS: [Workload; 12] = [
    Workload {
        name: "glibc-thread",
        what: "fast path: each thread replaces random slots of 512 blocks of 8-1024 B",
        run: glibc_thread,
        os_threads: same,
    },
    Workload {
        name: "alloc-test",
        what: "Pareto sizes up to 1 KiB, filled; 8192-block working set per thread, random replacement",
        run: alloc_test,
        os_threads: same,
    },
    Workload {
        name: "larson",
        what: "server: a thread replaces random objects, then hands its objects to a new thread and exits",
        run: larson,
        os_threads: same,
    },
    Workload {
        name: "xmalloc",
        what: "producer/consumer pairs: every block is freed by a thread that did not allocate it",
        run: xmalloc,
        os_threads: twice,
    },
    Workload {
        name: "cache-scratch",
        what: "passive false sharing: threads free 8 B objects from the main thread, then alloc/write/free",
        run: cache_scratch,
        os_threads: same,
    },
    Workload {
        name: "cache-thrash",
        what: "active false sharing: threads alloc, write and free 8 B objects of their own",
        run: cache_thrash,
        os_threads: same,
    },
    Workload {
        name: "mstress",
        what: "threads churn, trade objects through shared slots, and die; their objects live on",
        run: mstress,
        os_threads: same,
    },
    Workload {
        name: "malloc-large",
        what: "blocks of 1-8 MiB, every page written, 6 live per thread, random replacement",
        run: malloc_large,
        os_threads: same,
    },
    Workload {
        name: "realloc",
        what: "64 growing buffers per thread: exact String-like growth and doubling Vec growth",
        run: realloc,
        os_threads: same,
    },
    Workload {
        name: "rss-burst",
        what: "burst 64 MiB in 64 B-64 KiB blocks, free 90 %, idle 30 ms, repeat 5x (peak RSS)",
        run: rss_burst,
        os_threads: same,
    },
    Workload {
        name: "rebuild",
        what: "build a 1.5 M-node linked list of 32-64 B nodes while the previous one lives, drop the old; 10x",
        run: rebuild,
        os_threads: same,
    },
    Workload {
        name: "thread-churn-handoff",
        what: "400 short-lived threads in waves; each allocates 12000 blocks, leaves half to the next wave",
        run: thread_churn,
        os_threads: same,
    },
];

/// The workload called `name`.
pub fn workload(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

/// What a run is given.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Threads (for `xmalloc`: producer/consumer pairs).
    pub threads: usize,
    /// Multiplies the amount of work (1.0: the quick profile).
    pub scale: f64,
    /// Seed of every random stream of the run.
    pub seed: u64,
}

impl Params {
    /// `base` units of work at scale 1, scaled, and split over the threads (at least 1 each).
    fn per_thread(&self, base: u64) -> u64 {
        ((base as f64 * self.scale / self.threads as f64) as u64).max(1)
    }
}

/// Runs `w` with `p` on the calling process's global allocator; returns the elapsed time and
/// the operations done (allocations, roughly; what counts as one is per workload).
pub fn run(w: &Workload, p: &Params) -> (Duration, u64) {
    let start = Instant::now();
    let ops = (w.run)(p);
    (start.elapsed(), ops)
}

// ---------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------

/// Reports a failed check and aborts: the allocator handed out memory that was not exclusively
/// the block's, or lost its contents.
#[cold]
fn corrupted(what: &str, detail: std::fmt::Arguments<'_>) -> ! {
    eprintln!("workload check failed: {what}: {detail}");
    std::process::abort();
}

/// A small, fast, deterministic generator (xorshift64*), seeded through splitmix64. It never
/// allocates.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The stream `stream` of the run seeded with `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(z | 1)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `(0, 1]`.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in `lo..=hi` (`0 < lo <= hi`): every power of two in the range equally likely.
    #[inline]
    pub fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let span = (hi as f64 / lo as f64).ln();
        ((lo as f64 * (span * self.unit()).exp()) as usize).clamp(lo, hi)
    }

    /// `true` with probability `percent` / 100.
    #[inline]
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// One heap block allocated through the global allocator, stamped with a tag that is checked
/// when it is freed (on drop).
///
/// The stamp is the tag in the first 8 bytes (fewer for smaller blocks) and its low byte,
/// inverted, in the last byte; [`Blk::fill`] and [`Blk::touch_pages`] write more of the block
/// (and the check then covers those bytes too, sampled).
pub struct Blk {
    ptr: NonNull<u8>,
    size: usize,
    tag: u64,
    /// What the body holds: see [`Body`].
    body: Body,
}

/// How much of a block, beyond its stamp, was written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Nothing.
    Stamp,
    /// Every byte holds the tag's low byte.
    Filled,
    /// The first byte of every page holds the tag's low byte.
    Pages,
}

// SAFETY: a `Blk` owns its allocation like a `Box<[u8]>` does; whoever holds the `Blk` is the
// only one to access the memory, and the global allocator accepts frees from any thread.
unsafe impl Send for Blk {}

impl Blk {
    /// Allocates `size` (> 0) bytes and stamps them with `tag`.
    #[inline]
    pub fn new(size: usize, tag: u64) -> Self {
        let layout = Layout::from_size_align(size.max(1), ALIGN).expect("block size fits a Layout");
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(p) else {
            handle_alloc_error(layout)
        };
        let b = Self {
            ptr,
            size: layout.size(),
            tag,
            body: Body::Stamp,
        };
        b.stamp();
        b
    }

    /// The block's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes of the tag at the start of the block: up to 8, never the last byte.
    fn head_len(&self) -> usize {
        (self.size - 1).min(8)
    }

    fn stamp(&self) {
        let p = self.ptr.as_ptr();
        if self.head_len() == 8 {
            // SAFETY: the block is live, owned by `self`, more than 8 bytes long and aligned
            // to 8.
            unsafe { p.cast::<u64>().write(self.tag) };
        } else {
            for (i, byte) in self
                .tag
                .to_le_bytes()
                .iter()
                .take(self.head_len())
                .enumerate()
            {
                // SAFETY: `i < head_len < size`, inside the live block.
                unsafe { p.add(i).write(*byte) };
            }
        }
        // SAFETY: `self.size - 1` is the last byte of the live block.
        unsafe { p.add(self.size - 1).write(!(self.tag as u8)) };
    }

    /// Writes the tag's low byte into every byte between the stamp's ends.
    pub fn fill(&mut self) {
        if self.size > 9 {
            // SAFETY: bytes 8..size-1 are inside the live block owned by `self`.
            unsafe {
                self.ptr
                    .as_ptr()
                    .add(8)
                    .write_bytes(self.tag as u8, self.size - 9)
            };
        }
        self.body = Body::Filled;
    }

    /// Writes the tag's low byte into the first byte of every page-sized stretch after the
    /// stamp, so that every page of a large block is faulted in.
    pub fn touch_pages(&mut self) {
        let mut off = PAGE;
        while off < self.size - 1 {
            // SAFETY: `off < size - 1`, inside the live block owned by `self`.
            unsafe { self.ptr.as_ptr().add(off).write(self.tag as u8) };
            off += PAGE;
        }
        self.body = Body::Pages;
    }

    /// Checks the stamp (and a sample of the body); aborts the process if anything changed.
    fn check(&self) {
        let p = self.ptr.as_ptr();
        let head = if self.head_len() == 8 {
            // SAFETY: the block is live, more than 8 bytes long and aligned to 8.
            unsafe { p.cast::<u64>().read() }
        } else {
            // The bytes past `head_len` are taken from the tag, so only the stamped ones count.
            let mut bytes = self.tag.to_le_bytes();
            for (i, b) in bytes.iter_mut().take(self.head_len()).enumerate() {
                // SAFETY: `i < head_len < size`, inside the live block.
                *b = unsafe { p.add(i).read() };
            }
            u64::from_le_bytes(bytes)
        };
        // SAFETY: the last byte of the live block.
        let tail = unsafe { p.add(self.size - 1).read() };
        if head != self.tag || tail != !(self.tag as u8) {
            corrupted(
                "block stamp",
                format_args!(
                    "{} B block at {p:p}: head {head:#x} tail {tail:#x}, expected tag {:#x}",
                    self.size, self.tag
                ),
            );
        }
        let step = match self.body {
            Body::Stamp => return,
            Body::Filled => 61,
            Body::Pages => PAGE,
        };
        let mut off = if self.body == Body::Pages { PAGE } else { 8 };
        while off < self.size - 1 {
            // SAFETY: `off < size - 1`, inside the live block.
            let got = unsafe { p.add(off).read() };
            if got != self.tag as u8 {
                corrupted(
                    "block body",
                    format_args!("{} B block at {p:p}, byte {off}: {got:#x}", self.size),
                );
            }
            off += step;
        }
    }
}

impl Drop for Blk {
    #[inline]
    fn drop(&mut self) {
        self.check();
        let layout = Layout::from_size_align(self.size, ALIGN).expect("checked in Blk::new");
        // SAFETY: `ptr` was allocated by the global allocator with `layout` and is freed once,
        // here, by its only owner.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// Tags of one thread: distinct across threads and blocks.
struct Tags(u64);

impl Tags {
    fn new(seed: u64, thread: usize) -> Self {
        let stream = (thread as u64).wrapping_add(0xA11C);
        Self((Rng::new(seed, stream).next_u64() & !0xFFFF_FFFF) | 1)
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x1_0000_0001);
        self.0
    }
}

/// Runs `f(thread index)` on `threads` threads at once (released together by a barrier) and
/// returns the sum of their results.
fn parallel(threads: usize, f: impl Fn(usize) -> u64 + Sync) -> u64 {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(t)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("workload thread panicked"))
            .sum()
    })
}

// ---------------------------------------------------------------------------------------------
// The workloads
// ---------------------------------------------------------------------------------------------

/// glibc `bench-malloc-thread`-like: the fast path. Each thread keeps 512 live blocks of
/// 8-1024 B (log-uniform) and replaces a random one per step.
fn glibc_thread(p: &Params) -> u64 {
    const SLOTS: usize = 512;
    let steps = p.per_thread(6_000_000);
    parallel(p.threads, |t| {
        let mut rng = Rng::new(p.seed, t as u64);
        let mut tags = Tags::new(p.seed, t);
        let mut slots: Vec<Blk> = (0..SLOTS)
            .map(|_| Blk::new(rng.log_uniform(8, 1024), tags.next()))
            .collect();
        for _ in 0..steps {
            let i = rng.below(SLOTS);
            slots[i] = Blk::new(rng.log_uniform(8, 1024), tags.next());
        }
        steps + SLOTS as u64
    })
}

/// A Pareto-distributed size (shape 1.1, scale 12 B), capped at 1 KiB: most blocks are small,
/// a heavy tail is not.
#[inline]
fn pareto_size(rng: &mut Rng) -> usize {
    let x = 12.0 / rng.unit().powf(1.0 / 1.1);
    (x as usize).clamp(8, KIB)
}

/// alloc-test-like: Pareto sizes up to 1 KiB, every byte written; a working set of 8192 blocks
/// per thread, a random one replaced per step.
fn alloc_test(p: &Params) -> u64 {
    const SLOTS: usize = 8192;
    let steps = p.per_thread(3_000_000);
    parallel(p.threads, |t| {
        let mut rng = Rng::new(p.seed, t as u64);
        let mut tags = Tags::new(p.seed, t);
        let mut new = |rng: &mut Rng| {
            let mut b = Blk::new(pareto_size(rng), tags.next());
            b.fill();
            b
        };
        let mut slots: Vec<Blk> = (0..SLOTS).map(|_| new(&mut rng)).collect();
        for _ in 0..steps {
            let i = rng.below(SLOTS);
            slots[i] = new(&mut rng);
        }
        steps + SLOTS as u64
    })
}

/// larson-like: each of `threads` lineages holds 1000 objects of 16-512 B. A thread replaces
/// random objects for a while, then starts a new thread, hands it the objects and exits; the
/// new thread frees what the old one allocated (objects "bleed" between threads, and the dead
/// thread's memory must be reclaimed).
fn larson(p: &Params) -> u64 {
    const SLOTS: usize = 1000;
    const STEPS_PER_THREAD: u64 = 10_000;
    let steps = p.per_thread(5_000_000);
    let generations = steps.div_ceil(STEPS_PER_THREAD);

    /// One thread of a lineage: `steps` replacements, then the next generation.
    fn generation(
        mut slots: Vec<Blk>,
        mut rng: Rng,
        mut tags: Tags,
        left: u64,
        done: std::sync::mpsc::Sender<u64>,
    ) {
        for _ in 0..STEPS_PER_THREAD {
            let i = rng.below(SLOTS);
            slots[i] = Blk::new(rng.range(16, 512), tags.next());
        }
        if left > 1 {
            std::thread::spawn(move || generation(slots, rng, tags, left - 1, done));
        } else {
            drop(slots);
            let _ = done.send(STEPS_PER_THREAD);
        }
    }

    let (done_tx, done_rx) = channel::<u64>();
    for t in 0..p.threads {
        let mut rng = Rng::new(p.seed, t as u64);
        let mut tags = Tags::new(p.seed, t);
        let slots: Vec<Blk> = (0..SLOTS)
            .map(|_| Blk::new(rng.range(16, 512), tags.next()))
            .collect();
        let done = done_tx.clone();
        std::thread::spawn(move || generation(slots, rng, tags, generations, done));
    }
    drop(done_tx);
    for _ in 0..p.threads {
        done_rx.recv().expect("a larson lineage died");
    }
    p.threads as u64 * (generations * STEPS_PER_THREAD + SLOTS as u64)
}

/// xmalloc-test-like: `threads` producer/consumer pairs. A producer allocates blocks of 16-256 B
/// in batches of 128 and sends each batch (a `Vec`, itself freed by the consumer) to its
/// consumer, which frees them: every free is a remote free.
fn xmalloc(p: &Params) -> u64 {
    const BATCH: usize = 128;
    /// Batches in flight per pair.
    const DEPTH: usize = 16;
    let batches = p.per_thread(3_000_000).div_ceil(BATCH as u64);
    type Ends = (
        Mutex<Option<SyncSender<Vec<Blk>>>>,
        Mutex<Option<Receiver<Vec<Blk>>>>,
    );
    let ends: Vec<Ends> = (0..p.threads)
        .map(|_| {
            let (tx, rx) = sync_channel(DEPTH);
            (Mutex::new(Some(tx)), Mutex::new(Some(rx)))
        })
        .collect();
    // Threads 2k (producer) and 2k + 1 (consumer) are pair k.
    parallel(2 * p.threads, |t| {
        let pair = t / 2;
        if t % 2 == 0 {
            let tx = ends[pair]
                .0
                .lock()
                .expect("not poisoned")
                .take()
                .expect("one producer");
            let mut rng = Rng::new(p.seed, pair as u64);
            let mut tags = Tags::new(p.seed, pair);
            for _ in 0..batches {
                let batch: Vec<Blk> = (0..BATCH)
                    .map(|_| Blk::new(rng.range(16, 256), tags.next()))
                    .collect();
                tx.send(batch).expect("consumer alive");
            }
            batches * BATCH as u64
        } else {
            let rx = ends[pair]
                .1
                .lock()
                .expect("not poisoned")
                .take()
                .expect("one consumer");
            while let Ok(batch) = rx.recv() {
                drop(batch);
            }
            0
        }
    })
}

/// Size of the objects of the cache workloads (as in the classic cache-scratch/-thrash).
const CACHE_OBJ: usize = 8;
/// Allocations per thread at scale 1, and writes of each byte per allocation.
const CACHE_ALLOCS: u64 = 100_000;
const CACHE_WRITES: usize = 1000;

/// The inner loop of the cache workloads: allocate an object, write every byte of it
/// `CACHE_WRITES` times, free it; `allocs` times.
fn cache_loop(allocs: u64, tags: &mut Tags) {
    for _ in 0..allocs {
        let b = Blk::new(CACHE_OBJ, tags.next());
        let p = b.ptr.as_ptr();
        for r in 0..CACHE_WRITES {
            for i in 0..CACHE_OBJ {
                // SAFETY: `i < CACHE_OBJ`, inside the live block `b` owns; volatile so the
                // writes happen (they are the workload).
                unsafe { p.add(i).write_volatile(r as u8) };
            }
        }
        b.stamp();
    }
}

/// cache-scratch-like (passive false sharing): the main thread allocates one small object per
/// thread, back to back; each thread frees its object, then allocates, writes and frees objects
/// of the same size. An allocator that hands a thread memory next to another thread's (from the
/// main thread's page) makes the cores fight over cache lines.
fn cache_scratch(p: &Params) -> u64 {
    let allocs = p.per_thread(CACHE_ALLOCS);
    let mut main_tags = Tags::new(p.seed, usize::MAX);
    let handed: Vec<Mutex<Option<Blk>>> = (0..p.threads)
        .map(|_| Mutex::new(Some(Blk::new(CACHE_OBJ, main_tags.next()))))
        .collect();
    parallel(p.threads, |t| {
        let mut tags = Tags::new(p.seed, t);
        drop(handed[t].lock().expect("not poisoned").take());
        cache_loop(allocs, &mut tags);
        allocs
    })
}

/// cache-thrash-like (active false sharing): each thread allocates, writes and frees small
/// objects of its own; an allocator that puts different threads' objects in one cache line
/// makes the cores fight over it.
fn cache_thrash(p: &Params) -> u64 {
    let allocs = p.per_thread(CACHE_ALLOCS);
    parallel(p.threads, |t| {
        let mut tags = Tags::new(p.seed, t);
        cache_loop(allocs, &mut tags);
        allocs
    })
}

/// Transfer slots shared by the `mstress` threads.
const MSTRESS_SLOTS: usize = 1024;

/// mstress-like (mimalloc's test-stress): 10 rounds; each round starts `threads` threads that
/// allocate (mostly small, sometimes up to 64 KiB), free at random, and swap objects through
/// shared transfer slots, then die. A dying thread frees half of what it holds and leaves the
/// other half, with whatever sits in the slots, to the next round's threads: memory of dead
/// threads keeps being used and freed by others.
fn mstress(p: &Params) -> u64 {
    const ROUNDS: u64 = 10;
    let steps = p.per_thread(2_000_000).div_ceil(ROUNDS);
    let slots: Vec<AtomicPtr<Blk>> = (0..MSTRESS_SLOTS)
        .map(|_| AtomicPtr::new(std::ptr::null_mut()))
        .collect();
    let retained: Mutex<Vec<Blk>> = Mutex::new(Vec::new());
    let mut ops = 0;
    for round in 0..ROUNDS {
        ops += parallel(p.threads, |t| {
            let stream = round * 1000 + t as u64;
            let mut rng = Rng::new(p.seed, stream);
            let mut tags = Tags::new(p.seed, stream as usize);
            // Adopt a share of what the previous round's threads left.
            let mut local: Vec<Blk> = {
                let mut left = retained.lock().expect("not poisoned");
                let share = left.len() / p.threads + 1;
                let from = left.len().saturating_sub(share);
                left.split_off(from)
            };
            let mut ops = 0u64;
            for _ in 0..steps {
                let r = rng.below(100);
                if r < 50 || local.is_empty() {
                    let size = if rng.percent(1) {
                        rng.log_uniform(1024, 64 * KIB)
                    } else {
                        rng.log_uniform(8, 256)
                    };
                    local.push(Blk::new(size, tags.next()));
                    ops += 1;
                } else if r < 90 {
                    let i = rng.below(local.len());
                    drop(local.swap_remove(i));
                } else {
                    // Swap a local object with a transfer slot (which may be empty).
                    let i = rng.below(local.len());
                    let mine = Box::into_raw(Box::new(local.swap_remove(i)));
                    let theirs = slots[rng.below(MSTRESS_SLOTS)].swap(mine, Ordering::AcqRel);
                    if !theirs.is_null() {
                        // SAFETY: every non-null slot value came from `Box::into_raw` and is
                        // taken out of the slot by exactly one swap.
                        local.push(*unsafe { Box::from_raw(theirs) });
                    }
                }
            }
            // Die: free half, leave half to the next round.
            drop(local.split_off(local.len() / 2));
            retained.lock().expect("not poisoned").append(&mut local);
            ops
        });
    }
    for s in &slots {
        let b = s.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !b.is_null() {
            // SAFETY: as above: from `Box::into_raw`, taken out once.
            drop(unsafe { Box::from_raw(b) });
        }
    }
    drop(retained);
    ops
}

/// malloc-large-like: each thread keeps 6 blocks of 1-8 MiB (uniform, page multiples) with
/// every page written, and replaces a random one per step.
fn malloc_large(p: &Params) -> u64 {
    const SLOTS: usize = 6;
    let steps = p.per_thread(400);
    parallel(p.threads, |t| {
        let mut rng = Rng::new(p.seed, t as u64);
        let mut tags = Tags::new(p.seed, t);
        let mut new = |rng: &mut Rng| {
            let mut b = Blk::new(rng.range(MIB / PAGE, 8 * MIB / PAGE) * PAGE, tags.next());
            b.touch_pages();
            b
        };
        let mut slots: Vec<Option<Blk>> = (0..SLOTS).map(|_| Some(new(&mut rng))).collect();
        for _ in 0..steps {
            let i = rng.below(SLOTS);
            // Free before allocating, as a program replacing a buffer does.
            drop(slots[i].take());
            slots[i] = Some(new(&mut rng));
        }
        steps + SLOTS as u64
    })
}

/// 256 bytes of pattern, twice, so any 256-byte window starts anywhere in it.
static PATTERN: [u8; 512] = {
    let mut a = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        a[i] = i as u8;
        i += 1;
    }
    a
};

/// A buffer of the `realloc` workload: byte `i` holds `(i + offset) as u8`.
struct Growing {
    kind: Grow,
    data: Vec<u8>,
    offset: usize,
    target: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Grow {
    /// `reserve_exact` then append: a reallocation for every append (a string built up by
    /// `realloc(p, len + n)`).
    Exact,
    /// `Vec`'s own doubling growth.
    Doubling,
}

impl Growing {
    fn new(rng: &mut Rng) -> Self {
        let kind = if rng.percent(50) {
            Grow::Exact
        } else {
            Grow::Doubling
        };
        Self {
            kind,
            data: Vec::new(),
            offset: rng.below(256),
            target: rng.log_uniform(64, 64 * KIB),
        }
    }

    /// Appends 1-64 bytes; returns whether the buffer reached its target length.
    fn grow(&mut self, rng: &mut Rng) -> bool {
        let n = rng.range(1, 64);
        let start = (self.data.len() + self.offset) % 256;
        if self.kind == Grow::Exact {
            self.data.reserve_exact(n);
        }
        self.data.extend_from_slice(&PATTERN[start..start + n]);
        self.data.len() >= self.target
    }

    /// Checks a sample of the contents (every reallocation had to copy them).
    fn check(&self) {
        for i in (0..self.data.len()).step_by(29) {
            if self.data[i] != (i + self.offset) as u8 {
                corrupted(
                    "realloc contents",
                    format_args!(
                        "{} B buffer, byte {i}: {:#x}",
                        self.data.len(),
                        self.data[i]
                    ),
                );
            }
        }
    }
}

/// realloc-heavy: each thread grows 64 buffers, a random one by 1-64 bytes per step; half grow
/// exactly (a reallocation per step, like a string built with `realloc(p, len + n)`), half with
/// `Vec`'s doubling. A buffer that reaches its target length (64 B-64 KiB, log-uniform) is
/// checked, dropped and started again.
fn realloc(p: &Params) -> u64 {
    const SLOTS: usize = 64;
    let steps = p.per_thread(3_000_000);
    parallel(p.threads, |t| {
        let mut rng = Rng::new(p.seed, t as u64);
        let mut bufs: Vec<Growing> = (0..SLOTS).map(|_| Growing::new(&mut rng)).collect();
        for _ in 0..steps {
            let i = rng.below(SLOTS);
            if bufs[i].grow(&mut rng) {
                bufs[i].check();
                bufs[i] = Growing::new(&mut rng);
            }
        }
        for b in &bufs {
            b.check();
        }
        steps
    })
}

/// RSS burst/idle: 5 cycles of a burst of 64 MiB (split over the threads) in blocks of
/// 64 B-64 KiB (log-uniform) with every page written, then 90 % of the burst freed in random
/// order and the previous cycle's survivors freed, then 30 ms idle. The figure that matters
/// is the peak resident set: ideally one burst plus two cycles' survivors (about 77 MiB).
fn rss_burst(p: &Params) -> u64 {
    const CYCLES: usize = 5;
    const IDLE: Duration = Duration::from_millis(30);
    // The amount per burst is not scaled: it sets the RSS the figure is about.
    let bytes = 64 * MIB / p.threads;
    let barrier = Barrier::new(p.threads);
    parallel(p.threads, |t| {
        let mut rng = Rng::new(p.seed, t as u64);
        let mut tags = Tags::new(p.seed, t);
        let mut survivors: Vec<Blk> = Vec::new();
        let mut ops = 0;
        for _ in 0..CYCLES {
            let mut burst: Vec<Blk> = Vec::new();
            let mut total = 0;
            while total < bytes {
                let mut b = Blk::new(rng.log_uniform(64, 64 * KIB), tags.next());
                b.touch_pages();
                total += b.size();
                burst.push(b);
            }
            ops += burst.len() as u64;
            // Free 90 % in random order (Fisher-Yates, then cut); the rest survive a cycle.
            for i in (1..burst.len()).rev() {
                burst.swap(i, rng.below(i + 1));
            }
            let keep = burst.len() / 10;
            burst.truncate(keep);
            drop(std::mem::replace(&mut survivors, burst));
            barrier.wait();
            std::thread::sleep(IDLE);
        }
        ops
    })
}

/// Nodes of one `rebuild` structure at scale 1 (over all threads).
const REBUILD_NODES: u64 = 1_500_000;
/// Structures built (and dropped) per run.
const REBUILD_GENERATIONS: usize = 10;

/// The header of a `rebuild` node: the rest of the node (up to its 32-64 B size) is padding,
/// whose last byte carries the inverted tag.
#[repr(C)]
struct NodeHead {
    next: *mut NodeHead,
    tag: u64,
    size: usize,
}

/// A singly linked list of `rebuild` nodes, in allocation order (appended at the tail), freed
/// and checked front to back on drop (iteratively: a recursive drop of a million nodes would
/// overflow the stack).
struct NodeList {
    head: *mut NodeHead,
    len: u64,
}

// SAFETY: the list owns its nodes exclusively, like a `Box` chain would.
unsafe impl Send for NodeList {}

impl NodeList {
    /// Builds a list of `len` nodes of 32-64 B (uniform, multiples of 8), each stamped.
    fn build(len: u64, rng: &mut Rng, tags: &mut Tags) -> Self {
        let mut head: *mut NodeHead = std::ptr::null_mut();
        let mut tail: *mut NodeHead = std::ptr::null_mut();
        for _ in 0..len {
            let size = rng.range(4, 8) * 8;
            let layout = Layout::from_size_align(size, ALIGN).expect("node layout");
            // SAFETY: non-zero size.
            let node = unsafe { std::alloc::alloc(layout) }.cast::<NodeHead>();
            if node.is_null() {
                handle_alloc_error(layout);
            }
            let tag = tags.next();
            // SAFETY: `node` is a fresh block of `size >= 32` bytes, aligned to 8; the header
            // takes 24 bytes and the tail byte is `size - 1 >= 24`.
            unsafe {
                node.write(NodeHead {
                    next: std::ptr::null_mut(),
                    tag,
                    size,
                });
                node.cast::<u8>().add(size - 1).write(!(tag as u8));
                if tail.is_null() {
                    head = node;
                } else {
                    (*tail).next = node;
                }
            }
            tail = node;
        }
        Self { head, len }
    }
}

impl Drop for NodeList {
    fn drop(&mut self) {
        let mut node = self.head;
        let mut seen = 0u64;
        let mut last_tag = 0u64;
        while !node.is_null() {
            // SAFETY: every node of the chain is a live block written by `build` and owned by
            // the list; it is read, then freed once.
            unsafe {
                let NodeHead { next, tag, size } = node.read();
                let tail = node.cast::<u8>().add(size.clamp(32, 64) - 1).read();
                // Tags of one thread grow by a fixed step: a node out of order, or a size out
                // of range, means its memory was overwritten.
                if !(32..=64).contains(&size)
                    || tail != !(tag as u8)
                    || (seen > 0 && tag != last_tag.wrapping_add(0x1_0000_0001))
                {
                    corrupted(
                        "rebuild node",
                        format_args!(
                            "node {seen} at {node:p}: size {size}, tag {tag:#x}, tail {tail:#x}"
                        ),
                    );
                }
                last_tag = tag;
                std::alloc::dealloc(node.cast(), Layout::from_size_align_unchecked(size, ALIGN));
                node = next;
            }
            seen += 1;
        }
        if seen != self.len {
            corrupted(
                "rebuild list",
                format_args!("{seen} nodes found, {} built", self.len),
            );
        }
    }
}

/// Rebuild: each thread builds a linked list of small nodes (32-64 B) while the list it built
/// before is still alive, then drops the old one; 10 generations. The pattern of a program that
/// rebuilds an index, a parse tree or a cache from scratch: the memory of every dropped
/// structure is needed again at once by the next build, so an allocator that gives it back to
/// the OS between builds faults it in again, 4 KiB at a time.
fn rebuild(p: &Params) -> u64 {
    let nodes = p.per_thread(REBUILD_NODES);
    parallel(p.threads, |t| {
        let mut rng = Rng::new(p.seed, t as u64);
        let mut tags = Tags::new(p.seed, t);
        let mut current = NodeList::build(nodes, &mut rng, &mut tags);
        for _ in 1..REBUILD_GENERATIONS {
            let next = NodeList::build(nodes, &mut rng, &mut tags);
            drop(std::mem::replace(&mut current, next));
        }
        drop(current);
        nodes * REBUILD_GENERATIONS as u64
    })
}

/// Threads started by a `thread-churn` run at scale 1 (over all waves).
const CHURN_THREADS: u64 = 400;
/// Blocks each `thread-churn` thread allocates.
const CHURN_BLOCKS: usize = 12_000;

/// Thread churn with hand-off: 400 short-lived threads, `threads` at a time (waves of
/// `threads`, so 400 waves at one thread). Each thread frees one batch of blocks left by the
/// previous wave (allocated by a thread that has exited), allocates 12 000 blocks of 16-512 B
/// (log-uniform), frees a random half of them and leaves the other half for the next wave to
/// free, then exits. The pattern of a thread-per-task server: every thread needs memory at
/// once, and what a dead thread leaves is freed later by another.
fn thread_churn(p: &Params) -> u64 {
    let waves = p.per_thread(CHURN_THREADS);
    let left: Mutex<Vec<Vec<Blk>>> = Mutex::new(Vec::new());
    let mut ops = 0;
    for wave in 0..waves {
        ops += parallel(p.threads, |t| {
            let stream = wave * 1000 + t as u64;
            let mut rng = Rng::new(p.seed, stream);
            let mut tags = Tags::new(p.seed, stream as usize);
            // Free a batch a dead thread left.
            let inherited = left.lock().expect("not poisoned").pop();
            drop(inherited);
            let mut mine: Vec<Blk> = (0..CHURN_BLOCKS)
                .map(|_| Blk::new(rng.log_uniform(16, 512), tags.next()))
                .collect();
            // Free a random half (Fisher-Yates, then cut), leave the rest.
            for i in (1..mine.len()).rev() {
                mine.swap(i, rng.below(i + 1));
            }
            drop(mine.split_off(mine.len() / 2));
            left.lock().expect("not poisoned").push(mine);
            CHURN_BLOCKS as u64
        });
    }
    drop(left);
    ops
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

/// The value, in KiB, of the `/proc/self/status` line starting with `key`.
fn proc_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident set of the process so far, in KiB: `VmHWM` of `/proc/self/status`.
///
/// Not `getrusage`'s `ru_maxrss`: Linux carries that over `execve` from the image the process
/// had before, so a bin started by a 15 MiB Python parent reports at least 15 MiB whatever it
/// does. `ru_maxrss` is the fallback if `/proc` cannot be read.
pub fn peak_rss_kib() -> u64 {
    if let Some(kib) = proc_status_kib("VmHWM:") {
        return kib;
    }
    // SAFETY: `rusage` is plain data, for which all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    u64::try_from(ru.ru_maxrss).unwrap_or(0)
}

/// Minor page faults of the whole process so far (its threads, live and exited): field 10
/// (`minflt`) of `/proc/self/stat`; 0 if it cannot be read. The fields are counted after the
/// command name, which is in parentheses and may itself hold spaces.
pub fn minor_faults() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    // `rest` starts with field 3 (state): field 10 is the 8th.
    rest.split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

fn usage(bin: &str, msg: &str) -> ExitCode {
    eprintln!("{bin}: {msg}");
    eprintln!("usage: {bin} <workload> <threads> [--scale <f>] [--seed <n>] | --list");
    eprintln!("workloads: {}", WORKLOADS.map(|w| w.name).join(", "));
    ExitCode::from(2)
}

/// The `main` of a `work_<allocator>` bin, whose global allocator is `allocator` (the name
/// printed in the output line).
pub fn main(allocator: &str) -> ExitCode {
    // What the process holds before the workload: the binary, the runtime, the allocator's own
    // start-up (mimalloc, for one, starts with a huge-page-backed arena).
    let start_rss = proc_status_kib("VmRSS:").unwrap_or(0);
    let bin = format!("work_{}", allocator.to_ascii_lowercase());
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        for w in &WORKLOADS {
            println!("{}\t{}", w.name, w.what);
        }
        return ExitCode::SUCCESS;
    }
    if args.len() < 2 {
        return usage(&bin, "expected a workload and a thread count");
    }
    let Some(w) = workload(&args[0]) else {
        return usage(&bin, &format!("unknown workload {:?}", args[0]));
    };
    let Some(threads) = args[1]
        .parse::<usize>()
        .ok()
        .filter(|&t| (1..=256).contains(&t))
    else {
        return usage(&bin, "threads must be in 1..=256");
    };
    let mut params = Params {
        threads,
        scale: 1.0,
        seed: DEFAULT_SEED,
    };
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next();
        match (flag.as_str(), value) {
            ("--scale", Some(v)) => match v.parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => params.scale = s,
                _ => return usage(&bin, "--scale takes a positive number"),
            },
            ("--seed", Some(v)) => match v.parse::<u64>() {
                Ok(s) => params.seed = s,
                Err(_) => return usage(&bin, "--seed takes an unsigned integer"),
            },
            _ => return usage(&bin, &format!("unexpected argument {flag:?}")),
        }
    }
    let faults_before = minor_faults();
    let (elapsed, ops) = run(w, &params);
    let faults = minor_faults().saturating_sub(faults_before);
    let peak = peak_rss_kib();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "@work alloc={allocator} workload={} threads={threads} os_threads={} cpus={cpus} \
         scale={} seed={} secs={:.6} ops={ops} peak_rss_kib={peak} start_rss_kib={start_rss} \
         minflt={faults}",
        w.name,
        w.os_threads(threads),
        params.scale,
        params.seed,
        elapsed.as_secs_f64(),
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_runs_small() {
        for w in &WORKLOADS {
            for threads in [1, 2, 3] {
                let p = Params {
                    threads,
                    scale: 0.002,
                    seed: 7,
                };
                let (_, ops) = run(w, &p);
                assert!(ops > 0, "{} at {threads} threads did nothing", w.name);
            }
        }
    }

    #[test]
    fn blocks_of_every_small_size_check_out() {
        for size in 1..=40 {
            let mut b = Blk::new(size, 0x0123_4567_89AB_CDEF ^ size as u64);
            b.check();
            b.fill();
            b.check();
        }
    }

    #[test]
    fn minor_faults_grow_when_fresh_memory_is_touched() {
        // A fresh private mapping (not the test's allocator, which may hand out memory another
        // test already touched): each of its 256 pages faults when first written.
        const LEN: usize = MIB;
        let before = minor_faults();
        assert!(before > 0);
        // SAFETY: an anonymous private mapping of LEN bytes, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        for off in (0..LEN).step_by(PAGE) {
            // SAFETY: inside the mapping.
            unsafe { p.cast::<u8>().add(off).write_volatile(1) };
        }
        let after = minor_faults();
        // SAFETY: the mapping made above.
        assert_eq!(unsafe { libc::munmap(p, LEN) }, 0);
        assert!(
            after >= before + (LEN / PAGE) as u64 / 2,
            "{before} -> {after} minor faults for {} fresh pages",
            LEN / PAGE
        );
    }

    #[test]
    fn rng_ranges() {
        let mut r = Rng::new(1, 2);
        for _ in 0..10_000 {
            assert!((3..=9).contains(&r.range(3, 9)));
            assert!((8..=1024).contains(&r.log_uniform(8, 1024)));
            assert!((8..=1024).contains(&pareto_size(&mut r)));
            let u = r.unit();
            assert!(u > 0.0 && u <= 1.0);
        }
    }
}
