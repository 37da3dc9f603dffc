//! The four resident-memory cases of the memory-return issue (item 7), written once and shared by
//! the acceptance test `tests/rss.rs` (ShardAlloc as the global allocator) and the comparison bin
//! `benches/src/bin/rss_cases.rs` (ShardAlloc, System, mimalloc or jemalloc called directly), so
//! every allocator is measured the same way. `benches/src/bin/rss_over_time.rs` reuses the light
//! activity. Not a test on its own: run `cargo test --test rss -- --nocapture` or
//! `python3 benches/rss_table.py`.
//!
//! What one case measures, RSS read from `/proc/self/statm` (`shardalloc::resident_bytes`):
//!
//! 1. **baseline** — after the bookkeeping arrays (from the global allocator, every page written)
//!    and the case's warm-up, before the first measured allocation;
//! 2. **peak** — after all blocks are allocated, every OS page of every block written;
//! 3. **after frees** — right after the case's frees;
//! 4. **light activity** — every 10 ms allocate and free a few blocks of 16 B–32 KiB through the
//!    same allocator, then read RSS; for up to 1 s, noting when the share first came within
//!    5 points of the ideal;
//! 5. **explicit release** — after the allocator's "give memory back" call, when it has one
//!    (ShardAlloc: `collect(true)`; the comparison bin also tries the others' equivalents).
//!
//! share = (rss − baseline) / (peak − baseline); ideal = bytes still live / bytes allocated at
//! peak (requested sizes). Targets (ShardAlloc): share ≤ ideal + 5 pp after at most 1 s of light
//! activity, share ≤ ideal + 2 pp after `collect(true)`.
//!
//! Every case's blocks go through the `GlobalAlloc` it is given; the bookkeeping (arrays of block
//! addresses) comes from the process's global allocator, is allocated and written before the
//! baseline reading and freed only after the last one, so it does not move the figures.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Allowed excess of the share over the ideal after at most [`ACTIVITY_WINDOW`] of light activity.
pub(crate) const TARGET_AFTER_ACTIVITY: f64 = 0.05;
/// Allowed excess of the share over the ideal after the explicit release (`collect(true)`).
pub(crate) const TARGET_AFTER_RELEASE: f64 = 0.02;
/// How long the light activity lasts at most.
pub(crate) const ACTIVITY_WINDOW: Duration = Duration::from_secs(1);
/// Interval between two rounds of light activity (and RSS readings).
pub(crate) const ACTIVITY_TICK: Duration = Duration::from_millis(10);
/// Blocks allocated (then freed) per round of light activity.
const ACTIVITY_BLOCKS: usize = 4;
/// Alignment of every block of the cases.
const ALIGN: usize = 8;

/// Case a: blocks of 100 KiB.
const A_COUNT: usize = 5000;
const A_SIZE: usize = 100 * KIB;
/// Case b: pairs of a 1 KiB block and a 32 B node.
const B_PAIRS: usize = 50_000;
const B_BIG: usize = KIB;
const B_NODE: usize = 32;
/// Case c: 16 B blocks and 1 MiB blocks.
const C_EACH: usize = 100;
const C_SMALL: usize = 16;
const C_BIG: usize = MIB;
/// Case d: blocks per allocating thread (two threads), sizes uniform in `D_MIN..=D_MAX`.
const D_PER_THREAD: usize = 100_000;
const D_MIN: usize = 64;
const D_MAX: usize = 4096;

/// One of the four cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    /// 5000 blocks of 100 KiB, every page touched, all freed except the last one allocated.
    A,
    /// 50 000 blocks of 1 KiB interleaved with 50 000 nodes of 32 B, all freed in reverse order.
    B,
    /// Warm-up 1 MiB alloc/free, then 100 × 16 B and 100 × 1 MiB interleaved; every other block
    /// of each kind freed (half stays).
    C,
    /// Two threads allocate 100 000 blocks of 64–4096 B each (200 000 in all), hand them to the
    /// main thread and exit; the main thread frees them all.
    D,
}

impl Case {
    /// All cases, in order.
    pub(crate) const ALL: [Case; 4] = [Case::A, Case::B, Case::C, Case::D];

    /// The case's letter (`"a"` … `"d"`).
    pub(crate) fn letter(self) -> &'static str {
        match self {
            Case::A => "a",
            Case::B => "b",
            Case::C => "c",
            Case::D => "d",
        }
    }

    /// The case called `s` (`a`–`d`, any case).
    pub(crate) fn parse(s: &str) -> Option<Case> {
        Case::ALL
            .into_iter()
            .find(|c| c.letter().eq_ignore_ascii_case(s))
    }

    /// One line saying what the case does.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Case::A => "5000 x 100 KiB, all freed but the last one",
            Case::B => "50 000 x 1 KiB interleaved with 50 000 x 32 B, freed in reverse order",
            Case::C => "1 MiB warm-up; 100 x 16 B + 100 x 1 MiB, every other one freed",
            Case::D => "2 threads allocate 2 x 100 000 x 64-4096 B and exit; main frees all",
        }
    }
}

/// How the light-activity phase runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// Longest light-activity phase.
    pub(crate) window: Duration,
    /// End the phase as soon as the share is within [`TARGET_AFTER_ACTIVITY`] of the ideal.
    pub(crate) stop_at_target: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            window: ACTIVITY_WINDOW,
            stop_at_target: false,
        }
    }
}

/// The allocator's explicit "give memory back" call, run on the case's thread after the light
/// activity.
pub(crate) struct Release<'a> {
    /// What is called, for the report (e.g. `collect(true)`).
    pub(crate) label: &'static str,
    /// The call.
    pub(crate) run: &'a dyn Fn(),
}

/// The readings of one case.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    /// Which case.
    pub(crate) case: Case,
    /// Bytes requested by the measured allocations.
    pub(crate) allocated: usize,
    /// Bytes of them still live after the frees.
    pub(crate) live: usize,
    /// RSS before the measured allocations.
    pub(crate) baseline: usize,
    /// RSS with everything allocated and written.
    pub(crate) peak: usize,
    /// RSS right after the frees.
    pub(crate) after_free: usize,
    /// (ms since the activity started, RSS) after each round of light activity.
    pub(crate) samples: Vec<(u64, usize)>,
    /// When the share first came within [`TARGET_AFTER_ACTIVITY`] of the ideal (0: already
    /// right after the frees); `None` if it did not within the window.
    pub(crate) target_ms: Option<u64>,
    /// The explicit release's label and the RSS after it.
    pub(crate) release: Option<(&'static str, usize)>,
}

impl Report {
    /// Bytes live after the frees / bytes allocated.
    pub(crate) fn ideal(&self) -> f64 {
        self.live as f64 / self.allocated as f64
    }

    /// (rss − baseline) / (peak − baseline).
    pub(crate) fn share(&self, rss: usize) -> f64 {
        (rss as f64 - self.baseline as f64) / (self.peak as f64 - self.baseline as f64).max(1.0)
    }

    /// RSS at the end of the light activity (the last sample; right after the frees if none).
    pub(crate) fn after_activity(&self) -> usize {
        self.samples.last().map_or(self.after_free, |&(_, rss)| rss)
    }

    /// Length of the light-activity phase in ms.
    pub(crate) fn activity_ms(&self) -> u64 {
        self.samples.last().map_or(0, |&(ms, _)| ms)
    }

    /// Whether the share after the light activity is within target (checked at every sample).
    pub(crate) fn activity_ok(&self) -> bool {
        self.target_ms.is_some()
    }

    /// Whether the share after the explicit release is within target (`None`: no release).
    pub(crate) fn release_ok(&self) -> Option<bool> {
        self.release
            .map(|(_, rss)| self.share(rss) <= self.ideal() + TARGET_AFTER_RELEASE)
    }

    /// The machine-readable lines (`@rss key=value …`), one per reading, the last one with
    /// `phase=summary` holding every figure.
    pub(crate) fn machine_lines(&self, alloc: &str) -> String {
        let mut out = String::new();
        let head = format!("@rss alloc={alloc} case={}", self.case.letter());
        let _ = writeln!(
            out,
            "{head} phase=setup allocated={} live={} ideal={:.6}",
            self.allocated,
            self.live,
            self.ideal()
        );
        let _ = writeln!(out, "{head} phase=baseline rss={}", self.baseline);
        for (phase, rss) in [("peak", self.peak), ("after_free", self.after_free)] {
            let _ = writeln!(
                out,
                "{head} phase={phase} rss={rss} share={:.6}",
                self.share(rss)
            );
        }
        for &(ms, rss) in &self.samples {
            let _ = writeln!(
                out,
                "{head} phase=activity t_ms={ms} rss={rss} share={:.6}",
                self.share(rss)
            );
        }
        let target = self
            .target_ms
            .map_or_else(|| "none".to_string(), |t| t.to_string());
        let (method, release_rss, release_share) = match self.release {
            Some((label, rss)) => (label, rss.to_string(), format!("{:.6}", self.share(rss))),
            None => ("none", "na".into(), "na".into()),
        };
        let _ = writeln!(
            out,
            "{head} phase=release method={method} rss={release_rss} share={release_share}"
        );
        let _ = writeln!(
            out,
            "{head} phase=summary ideal={:.6} allocated={} peak_delta={} after_free={:.6} \
             after_activity={:.6} activity_ms={} target_ms={target} release_method={method} \
             after_release={release_share}",
            self.ideal(),
            self.allocated,
            self.peak as i64 - self.baseline as i64,
            self.share(self.after_free),
            self.share(self.after_activity()),
            self.activity_ms(),
        );
        out
    }

    /// A few lines for people.
    pub(crate) fn human(&self, alloc: &str) -> String {
        let mib = |b: usize| b as f64 / MIB as f64;
        let pct = |x: f64| 100.0 * x;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "case {} with {alloc}: {}",
            self.case.letter(),
            self.case.describe()
        );
        let _ = writeln!(
            out,
            "  allocated {:.1} MiB, still live {:.2} MiB: ideal share {:.2} %",
            mib(self.allocated),
            mib(self.live),
            pct(self.ideal())
        );
        let _ = writeln!(
            out,
            "  RSS baseline {:.1} MiB, peak {:.1} MiB (+{:.1} MiB)",
            mib(self.baseline),
            mib(self.peak),
            mib(self.peak.saturating_sub(self.baseline))
        );
        let _ = writeln!(
            out,
            "  after the frees            {:8.1} MiB  share {:6.2} %",
            mib(self.after_free),
            pct(self.share(self.after_free))
        );
        let reached = match self.target_ms {
            Some(ms) => format!("within ideal + 5 pp after {ms} ms"),
            None => "never within ideal + 5 pp".to_string(),
        };
        let _ = writeln!(
            out,
            "  after {:4} ms of activity  {:8.1} MiB  share {:6.2} %  ({reached})",
            self.activity_ms(),
            mib(self.after_activity()),
            pct(self.share(self.after_activity()))
        );
        match self.release {
            Some((label, rss)) => {
                let _ = writeln!(
                    out,
                    "  after {label:<20} {:8.1} MiB  share {:6.2} %  ({} ideal + 2 pp)",
                    mib(rss),
                    pct(self.share(rss)),
                    if self.release_ok() == Some(true) {
                        "within"
                    } else {
                        "above"
                    }
                );
            }
            None => {
                let _ = writeln!(out, "  explicit release           n/a");
            }
        }
        out
    }
}

/// The process's resident memory in bytes.
pub(crate) fn rss() -> usize {
    shardalloc::resident_bytes().expect("read /proc/self/statm")
}

/// The OS page size.
fn page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096)
}

/// A small deterministic generator (xorshift64*).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (any value).
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in `lo..=hi` (as many blocks per power of two).
    pub(crate) fn log_range(&mut self, lo: usize, hi: usize) -> usize {
        let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
        ((l + self.unit() * (h - l)).exp() as usize).clamp(lo, hi)
    }
}

/// One block of a case: its address and requested size (0: no block).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    addr: usize,
    size: usize,
}

impl Slot {
    /// The block's requested size (0: no block).
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}

/// Layout of a block of `size` bytes.
fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("block layout")
}

/// Allocates `size` bytes from `alloc` and writes one byte in every OS page the block spans
/// (and its last byte), so that all of it is resident. Panics if the allocator returns null.
pub(crate) fn alloc_touched<A: GlobalAlloc>(alloc: &A, size: usize) -> Slot {
    let l = layout(size);
    // SAFETY: `l` has a non-zero size.
    let p = unsafe { alloc.alloc(l) };
    assert!(!p.is_null(), "allocation of {size} bytes failed");
    let step = page_size();
    let mut off = 0;
    while off < size {
        // SAFETY: `off < size`, inside the block just allocated. Volatile, so the writes are
        // not dropped as dead stores before the free.
        unsafe { p.add(off).write_volatile(off as u8 | 1) };
        off += step;
    }
    // SAFETY: `size - 1` is the block's last byte.
    unsafe { p.add(size - 1).write_volatile(1) };
    Slot {
        addr: p as usize,
        size,
    }
}

/// Frees `slot`'s block (if any) through `alloc` and empties the slot.
///
/// # Safety
///
/// A non-empty `slot` must hold a live block from `alloc_touched(alloc, slot.size)`.
pub(crate) unsafe fn free_slot<A: GlobalAlloc>(alloc: &A, slot: &mut Slot) {
    if slot.size != 0 {
        // SAFETY: a live block of `alloc` with this layout (caller); the slot is emptied, so it
        // is freed once.
        unsafe { alloc.dealloc(slot.addr as *mut u8, layout(slot.size)) };
        *slot = Slot { addr: 0, size: 0 };
    }
}

/// `n` empty slots, every page of the array written (so it is resident before the baseline).
fn slots(n: usize) -> Vec<Slot> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, Slot { addr: 1, size: 0 });
    for s in &mut v {
        s.addr = 0;
    }
    v
}

/// One round of light activity: allocate [`ACTIVITY_BLOCKS`] blocks of 16 B–32 KiB
/// (log-uniform), write their first byte, free them again (in reverse order).
pub(crate) fn light_activity<A: GlobalAlloc>(alloc: &A, rng: &mut Rng) {
    let mut blocks = [(std::ptr::null_mut::<u8>(), layout(16)); ACTIVITY_BLOCKS];
    for b in &mut blocks {
        let l = layout(rng.log_range(16, 32 * KIB));
        // SAFETY: non-zero size. (`black_box`: the compiler must not drop a malloc/free pair.)
        let p = std::hint::black_box(unsafe { alloc.alloc(l) });
        assert!(!p.is_null(), "allocation of {} bytes failed", l.size());
        // SAFETY: the block has at least one byte.
        unsafe { p.write_volatile(1) };
        *b = (p, l);
    }
    for &(p, l) in blocks.iter().rev() {
        // SAFETY: allocated just above with `l`, freed once.
        unsafe { alloc.dealloc(p, l) };
    }
}

/// Runs `case` against `alloc` and returns its readings (see the module documentation).
///
/// Runs on the calling thread (case d also starts two threads); `release`, if given, runs on it
/// too. The process should do nothing else meanwhile: every reading is of the whole process.
pub(crate) fn run_case<A: GlobalAlloc + Sync>(
    alloc: &A,
    case: Case,
    opts: Options,
    release: Option<Release<'_>>,
) -> Report {
    let ticks = (opts.window.as_millis() / ACTIVITY_TICK.as_millis().max(1)) as usize + 8;
    let mut report = Report {
        case,
        allocated: 0,
        live: 0,
        baseline: 0,
        peak: 0,
        after_free: 0,
        samples: Vec::with_capacity(ticks),
        target_ms: None,
        release: None,
    };
    let n = match case {
        Case::A => A_COUNT,
        Case::B => 2 * B_PAIRS,
        Case::C => 2 * C_EACH,
        Case::D => 2 * D_PER_THREAD,
    };
    let mut blocks = slots(n);

    if case == Case::C {
        // Warm-up: with glibc, freeing an mmapped 1 MiB chunk raises the mmap threshold, so the
        // measured 1 MiB blocks come from the heap; the block is not written.
        let l = layout(C_BIG);
        // SAFETY: non-zero size. (`black_box`: the compiler must not drop a malloc/free pair.)
        let p = std::hint::black_box(unsafe { alloc.alloc(l) });
        assert!(!p.is_null(), "warm-up allocation failed");
        // SAFETY: just allocated with `l`.
        unsafe { alloc.dealloc(p, l) };
    }

    report.baseline = rss();
    match case {
        Case::A => {
            for s in blocks.iter_mut() {
                *s = alloc_touched(alloc, A_SIZE);
            }
        }
        Case::B => {
            for pair in blocks.chunks_exact_mut(2) {
                pair[0] = alloc_touched(alloc, B_BIG);
                pair[1] = alloc_touched(alloc, B_NODE);
            }
        }
        Case::C => {
            for pair in blocks.chunks_exact_mut(2) {
                pair[0] = alloc_touched(alloc, C_SMALL);
                pair[1] = alloc_touched(alloc, C_BIG);
            }
        }
        Case::D => {
            let (first, second) = blocks.split_at_mut(D_PER_THREAD);
            std::thread::scope(|scope| {
                for (i, part) in [first, second].into_iter().enumerate() {
                    scope.spawn(move || {
                        let mut rng = Rng::new(0xD0 + i as u64);
                        for s in part.iter_mut() {
                            *s = alloc_touched(alloc, rng.range(D_MIN, D_MAX));
                        }
                        // The thread exits here, handing its blocks to the main thread.
                    });
                }
            });
        }
    }
    report.allocated = blocks.iter().map(|s| s.size).sum();
    report.peak = rss();

    // The frees.
    match case {
        Case::A => {
            let (last, rest) = blocks.split_last_mut().expect("case a has blocks");
            for s in rest {
                // SAFETY: every slot holds a block from `alloc_touched(alloc, ..)`.
                unsafe { free_slot(alloc, s) };
            }
            report.live = last.size;
        }
        Case::B | Case::D => {
            for s in blocks.iter_mut().rev() {
                // SAFETY: as above.
                unsafe { free_slot(alloc, s) };
            }
        }
        Case::C => {
            // Blocks 0, 1 are the first pair (16 B, 1 MiB); free the even pairs.
            for pair in blocks.chunks_exact_mut(4) {
                for s in &mut pair[..2] {
                    // SAFETY: as above.
                    unsafe { free_slot(alloc, s) };
                }
            }
            report.live = blocks.iter().map(|s| s.size).sum();
        }
    }
    report.after_free = rss();

    // Light activity.
    let ideal = report.ideal();
    if report.share(report.after_free) <= ideal + TARGET_AFTER_ACTIVITY {
        report.target_ms = Some(0);
    }
    let mut rng = Rng::new(0xAC71);
    let start = Instant::now();
    let mut next = start;
    while !(opts.stop_at_target && report.target_ms.is_some()) {
        next += ACTIVITY_TICK;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        light_activity(alloc, &mut rng);
        let rss = rss();
        let ms = start.elapsed().as_millis() as u64;
        report.samples.push((ms, rss));
        if report.target_ms.is_none() && report.share(rss) <= ideal + TARGET_AFTER_ACTIVITY {
            report.target_ms = Some(ms);
        }
        if next + ACTIVITY_TICK > start + opts.window {
            break;
        }
    }

    if let Some(r) = release {
        (r.run)();
        report.release = Some((r.label, rss()));
    }

    for s in &mut blocks {
        // SAFETY: the slots still holding a block hold one from `alloc_touched(alloc, ..)`.
        unsafe { free_slot(alloc, s) };
    }
    report
}
