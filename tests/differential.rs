//! Randomized differential test of `ShardAlloc`'s `GlobalAlloc` methods against a shadow model.
//!
//! A seeded stream of `alloc` / `alloc_zeroed` / `realloc` (grow and shrink) / `dealloc`, with sizes
//! from 1 B to 64 MiB and alignments from 1 B to 1 MiB, is checked against a
//! `BTreeMap<address, (size, align, fill, usable)>`: alignment, no overlap between live blocks,
//! `usable_size >= size`, contents kept across `realloc` (an offset-dependent fill pattern over the
//! whole usable size, so writing all usable bytes must not damage a neighbour), zeroing by
//! `alloc_zeroed` over freed, dirty memory, and in-place `realloc` when the new size fits. Further
//! deterministic tests cover every size-class boundary at every alignment up to 1 MiB, alignments
//! 2^21..2^30 (and null-or-correct beyond), null on absurd sizes through `alloc`, `alloc_zeroed` and
//! `realloc` (a failed `realloc` leaves the old block intact), and alignment kept by `realloc`.
//!
//! `ShardAlloc` is also the global allocator of this binary, so the model's own collections go
//! through it, interleaved with the direct calls.
//!
//! Replay a run with `SHARDALLOC_SEED=<seed> cargo test --test differential random_ops -- --exact`
//! (the seed is printed at start and in every failure message); `SHARDALLOC_TEST_OPS=<n>` sets the
//! number of operations (default 30 000), `SHARDALLOC_TEST_SCALE=<k>` multiplies it.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Display;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use shardalloc::ShardAlloc;

use common::{check_pattern, check_zero, fill_pattern};

#[global_allocator]
static GLOBAL: ShardAlloc = ShardAlloc;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// Default number of random operations (a few seconds in a debug build).
const DEFAULT_OPS: usize = 30_000;
/// Bound on the sum of the usable sizes of the model's live blocks.
const LIVE_LIMIT: usize = 256 * MIB;
/// Bound on the number of the model's live blocks.
const MAX_LIVE_BLOCKS: usize = 3_000;
/// Largest size the random stream asks for.
const MAX_SIZE: usize = 64 * MIB;
/// Every how many operations all live blocks are verified.
const FULL_CHECK_EVERY: usize = 5_000;
/// How many recent operations a failure message lists.
const RECENT_OPS: usize = 24;

/// Whether `realloc` of a block of `size` bytes with usable size `usable` to `new_size` must
/// return the same pointer. The promise is "`realloc` stays in place when the new size fits"; this
/// checks the part of it no policy can argue with: growing into the block's own slack, or keeping
/// the size. (A shrink may move, to give back a mostly unused block.)
fn must_stay_in_place(size: usize, usable: usize, new_size: usize) -> bool {
    size <= new_size && new_size <= usable
}

/// The largest size any `Layout` with alignment `align` allows.
fn max_layout_size(align: usize) -> usize {
    isize::MAX as usize - (align - 1)
}

// === random choices ===

/// Mostly ≤ 1 KiB, some ≤ 64 KiB, some boundaries, some ≤ 4 MiB, rarely up to 64 MiB.
fn pick_size(rng: &mut SmallRng, boundaries: &[usize]) -> usize {
    let small_boundaries = boundaries.partition_point(|&s| s <= MIB + 1);
    let mid_boundaries = boundaries.partition_point(|&s| s <= 4 * MIB + 1);
    match rng.random_range(0..1000u32) {
        0..=649 => rng.random_range(1..=KIB),
        650..=849 => common::log_uniform(rng, KIB + 1, 64 * KIB),
        850..=939 => boundaries[rng.random_range(0..small_boundaries)],
        940..=997 => {
            if rng.random_bool(0.1) {
                boundaries[rng.random_range(small_boundaries..mid_boundaries)]
            } else {
                common::log_uniform(rng, 64 * KIB + 1, 4 * MIB)
            }
        }
        _ => {
            if rng.random_bool(0.25) {
                boundaries[rng.random_range(mid_boundaries..boundaries.len())]
            } else {
                common::log_uniform(rng, 4 * MIB + 1, MAX_SIZE)
            }
        }
    }
}

/// Mostly ≤ 16, some ≤ 4 KiB, a few ≤ 64 KiB, rarely 128 KiB..1 MiB.
fn pick_align(rng: &mut SmallRng) -> usize {
    let shift = match rng.random_range(0..1000u32) {
        0..=599 => rng.random_range(0..=4),
        600..=899 => rng.random_range(5..=12),
        900..=984 => rng.random_range(13..=16),
        _ => rng.random_range(17..=20),
    };
    1 << shift
}

// === the model ===

/// What the model knows about one live block.
#[derive(Clone, Copy, Debug)]
struct Live {
    size: usize,
    align: usize,
    fill: u8,
    usable: usize,
}

/// One operation, kept for failure messages.
#[derive(Clone, Copy)]
enum Op {
    Alloc {
        size: usize,
        align: usize,
        zeroed: bool,
        got: usize,
    },
    Realloc {
        from: usize,
        size: usize,
        align: usize,
        new_size: usize,
        got: usize,
    },
    Dealloc {
        addr: usize,
        size: usize,
        align: usize,
    },
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Op::Alloc {
                size,
                align,
                zeroed,
                got,
            } => {
                let what = if zeroed { "alloc_zeroed" } else { "alloc" };
                write!(f, "{what}(size {size}, align {align}) = {got:#x}")
            }
            Op::Realloc {
                from,
                size,
                align,
                new_size,
                got,
            } => write!(
                f,
                "realloc({from:#x}, size {size}, align {align}, new size {new_size}) = {got:#x}"
            ),
            Op::Dealloc { addr, size, align } => {
                write!(f, "dealloc({addr:#x}, size {size}, align {align})")
            }
        }
    }
}

#[derive(Default, Debug)]
struct Stats {
    allocs: usize,
    zeroed: usize,
    dirty_cycles: usize,
    reallocs: usize,
    reallocs_in_place: usize,
    deallocs: usize,
    peak_live_bytes: usize,
    peak_live_blocks: usize,
    largest: usize,
}

struct Model {
    seed: u64,
    step: usize,
    rng: SmallRng,
    boundaries: Vec<usize>,
    live: BTreeMap<usize, Live>,
    /// The keys of `live`, for picking a random block in O(1).
    addrs: Vec<usize>,
    live_bytes: usize,
    recent: VecDeque<Op>,
    stats: Stats,
}

impl Model {
    fn new(seed: u64) -> Model {
        Model {
            seed,
            step: 0,
            rng: SmallRng::seed_from_u64(seed),
            boundaries: common::boundary_sizes(MAX_SIZE),
            live: BTreeMap::new(),
            addrs: Vec::new(),
            live_bytes: 0,
            recent: VecDeque::with_capacity(RECENT_OPS),
            stats: Stats::default(),
        }
    }

    #[track_caller]
    fn fail(&self, msg: impl Display) -> ! {
        let mut recent = String::new();
        for op in &self.recent {
            recent.push_str(&format!("\n    {op:?}"));
        }
        panic!(
            "seed {seed}, step {step}: {msg}\nlast operations, oldest first:{recent}\n\
             replay: SHARDALLOC_SEED={seed} SHARDALLOC_TEST_OPS={step} \
             cargo test --test differential random_ops -- --exact",
            seed = self.seed,
            step = self.step,
        )
    }

    #[track_caller]
    fn ensure(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(msg())
        }
    }

    fn record(&mut self, op: Op) {
        if self.recent.len() == RECENT_OPS {
            self.recent.pop_front();
        }
        self.recent.push_back(op);
    }

    /// Checks a block just returned by the allocator: non-null, aligned, `usable_size >= size`,
    /// and disjoint from every live block. Returns its usable size.
    #[track_caller]
    fn check_new(&self, what: &str, p: *mut u8, size: usize, align: usize) -> usize {
        self.ensure(!p.is_null(), || {
            format!("{what}(size {size}, align {align}) returned null")
        });
        self.ensure(p.addr().is_multiple_of(align), || {
            format!("{what}(size {size}, align {align}) returned {p:p}, not aligned")
        });
        // SAFETY: `p` is a live block just returned by `ShardAlloc`.
        let usable = unsafe { shardalloc::usable_size(p) };
        self.ensure(usable >= size, || {
            format!("{what}(size {size}, align {align}) = {p:p}: usable_size {usable} < size")
        });
        let a = p.addr();
        if let Some((&b, e)) = self.live.range(..=a).next_back() {
            self.ensure(b + e.usable <= a, || {
                format!(
                    "{what}(size {size}, align {align}) = {p:p} (usable {usable}) overlaps live \
                     block {b:#x} {e:?}"
                )
            });
        }
        if let Some((&b, e)) = self.live.range(a..).next() {
            self.ensure(a + usable <= b, || {
                format!(
                    "{what}(size {size}, align {align}) = {p:p} (usable {usable}) overlaps live \
                     block {b:#x} {e:?}"
                )
            });
        }
        usable
    }

    /// Checks that a live block still holds its pattern over its whole usable size and that
    /// `usable_size` has not changed.
    #[track_caller]
    fn verify(&self, addr: usize, e: &Live) {
        let p = std::ptr::with_exposed_provenance::<u8>(addr);
        // SAFETY: `addr` is a live block of `ShardAlloc` (the model holds it).
        let now = unsafe { shardalloc::usable_size(p) };
        self.ensure(now == e.usable, || {
            format!("live block {addr:#x} {e:?}: usable_size changed to {now}")
        });
        // SAFETY: the block is live and `e.usable` bytes long.
        if let Err((off, got, want)) = unsafe { check_pattern(p, 0, e.usable, e.fill) } {
            self.fail(format!(
                "live block {addr:#x} {e:?} damaged: byte {off} is {got:#04x}, expected {want:#04x}"
            ));
        }
    }

    fn insert(&mut self, p: *mut u8, e: Live) {
        let addr = p.expose_provenance();
        self.live.insert(addr, e);
        self.live_bytes += e.usable;
        self.stats.peak_live_bytes = self.stats.peak_live_bytes.max(self.live_bytes);
        self.stats.peak_live_blocks = self.stats.peak_live_blocks.max(self.live.len());
        self.stats.largest = self.stats.largest.max(e.size);
    }

    fn remove(&mut self, addr: usize) -> Live {
        let e = self.live.remove(&addr).expect("model block");
        self.live_bytes -= e.usable;
        e
    }

    /// Frees random blocks until `extra` more bytes fit under `LIVE_LIMIT`.
    fn make_room(&mut self, extra: usize) {
        while self.live_bytes + extra > LIVE_LIMIT && !self.addrs.is_empty() {
            let i = self.rng.random_range(0..self.addrs.len());
            self.dealloc_at(i);
        }
    }

    fn step(&mut self) {
        self.step += 1;
        if self.addrs.is_empty() {
            self.alloc();
            return;
        }
        let r = self.rng.random_range(0..100u32);
        if r < 40 && self.addrs.len() < MAX_LIVE_BLOCKS {
            self.alloc();
        } else if r < 65 {
            let i = self.rng.random_range(0..self.addrs.len());
            self.realloc_at(i);
        } else {
            let i = self.rng.random_range(0..self.addrs.len());
            self.dealloc_at(i);
        }
        if self.step.is_multiple_of(FULL_CHECK_EVERY) {
            for (&a, e) in &self.live {
                self.verify(a, e);
            }
        }
    }

    fn alloc(&mut self) {
        let size = pick_size(&mut self.rng, &self.boundaries);
        let align = pick_align(&mut self.rng);
        let zeroed = self.rng.random_bool(0.25);
        self.make_room(size);
        let layout = Layout::from_size_align(size, align).expect("valid layout");
        if zeroed && self.rng.random_bool(0.5) {
            self.dirty_cycle(layout);
        }
        // SAFETY: the layout has a non-zero size.
        let p = unsafe {
            if zeroed {
                ShardAlloc.alloc_zeroed(layout)
            } else {
                ShardAlloc.alloc(layout)
            }
        };
        self.record(Op::Alloc {
            size,
            align,
            zeroed,
            got: p.addr(),
        });
        let what = if zeroed { "alloc_zeroed" } else { "alloc" };
        let usable = self.check_new(what, p, size, align);
        if zeroed {
            self.stats.zeroed += 1;
            // SAFETY: `p` is live and at least `size` bytes long.
            if let Err((off, got)) = unsafe { check_zero(p, 0, size) } {
                self.fail(format!(
                    "alloc_zeroed(size {size}, align {align}) = {p:p}: byte {off} is {got:#04x}"
                ));
            }
        } else {
            self.stats.allocs += 1;
        }
        let fill = self.rng.random::<u8>();
        // SAFETY: `p` is live and `usable` bytes long.
        unsafe { fill_pattern(p, 0, usable, fill) };
        self.insert(
            p,
            Live {
                size,
                align,
                fill,
                usable,
            },
        );
        self.addrs.push(p.addr());
    }

    /// Allocates a few blocks of `layout`, dirties them, and frees them, so that a following
    /// `alloc_zeroed` of the same layout is likely to get dirty memory back.
    fn dirty_cycle(&mut self, layout: Layout) {
        self.stats.dirty_cycles += 1;
        let n = if layout.size() <= 64 * KIB { 4 } else { 1 };
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { ShardAlloc.alloc(layout) };
            let usable = self.check_new("alloc (dirty cycle)", p, layout.size(), layout.align());
            // SAFETY: `p` is live and `usable` bytes long.
            unsafe { std::ptr::write_bytes(p, 0xA5, usable) };
            blocks.push(p);
        }
        // Free in allocation order, so the last one freed is the first block (LIFO free lists
        // hand it back first).
        for p in blocks {
            // SAFETY: `p` was allocated just above with `layout` and is freed once.
            unsafe { ShardAlloc.dealloc(p, layout) };
        }
    }

    fn realloc_at(&mut self, i: usize) {
        let addr = self.addrs[i];
        let e = self.live[&addr];
        self.verify(addr, &e);
        let mut new_size = match self.rng.random_range(0..100u32) {
            // Grow within the usable size (or keep the size): must stay in place.
            0..=24 => self.rng.random_range(e.size..=e.usable),
            // Shrink a little.
            25..=34 => self.rng.random_range((e.size * 3 / 4).max(1)..=e.size),
            // Anything.
            35..=59 => pick_size(&mut self.rng, &self.boundaries),
            // Grow like a `Vec`: up to twice the size.
            60..=79 => (e.size + self.rng.random_range(1..=e.size)).min(MAX_SIZE),
            // Shrink by any amount.
            _ => self.rng.random_range(1..=e.size),
        };
        if self.live_bytes - e.usable + new_size > LIVE_LIMIT {
            new_size = self.rng.random_range(1..=e.size);
        }
        let layout = Layout::from_size_align(e.size, e.align).expect("valid layout");
        let p = std::ptr::with_exposed_provenance_mut::<u8>(addr);
        // SAFETY: `p` is a live block allocated with `layout`; `new_size` is non-zero and, rounded
        // up to `e.align` (≤ 1 MiB), far below `isize::MAX`.
        let q = unsafe { ShardAlloc.realloc(p, layout, new_size) };
        self.record(Op::Realloc {
            from: addr,
            size: e.size,
            align: e.align,
            new_size,
            got: q.addr(),
        });
        self.ensure(!q.is_null(), || {
            format!("realloc({addr:#x} {e:?}, new size {new_size}) returned null")
        });
        // The old block is gone now (moved or resized in place).
        self.remove(addr);
        self.stats.reallocs += 1;
        if q.addr() == addr {
            self.stats.reallocs_in_place += 1;
        }
        let usable = self.check_new("realloc", q, new_size, e.align);
        if must_stay_in_place(e.size, e.usable, new_size) {
            self.ensure(q.addr() == addr, || {
                format!(
                    "realloc({addr:#x} {e:?}, new size {new_size}) moved the block to {q:p} \
                     although the new size fits the usable size"
                )
            });
        }
        let kept = e.size.min(new_size);
        // SAFETY: `q` is live and at least `new_size >= kept` bytes long.
        if let Err((off, got, want)) = unsafe { check_pattern(q, 0, kept, e.fill) } {
            self.fail(format!(
                "realloc({addr:#x} {e:?}, new size {new_size}) = {q:p}: byte {off} is {got:#04x}, \
                 expected {want:#04x} (contents up to {kept} must be kept)"
            ));
        }
        // SAFETY: `q` is live and `usable` bytes long.
        unsafe { fill_pattern(q, kept, usable, e.fill) };
        self.insert(
            q,
            Live {
                size: new_size,
                usable,
                ..e
            },
        );
        self.addrs[i] = q.addr();
    }

    fn dealloc_at(&mut self, i: usize) {
        let addr = self.addrs.swap_remove(i);
        let e = self.live[&addr];
        self.verify(addr, &e);
        self.record(Op::Dealloc {
            addr,
            size: e.size,
            align: e.align,
        });
        self.remove(addr);
        let layout = Layout::from_size_align(e.size, e.align).expect("valid layout");
        let p = std::ptr::with_exposed_provenance_mut::<u8>(addr);
        // SAFETY: `p` is a live block allocated with `layout`; the model forgets it here.
        unsafe { ShardAlloc.dealloc(p, layout) };
        self.stats.deallocs += 1;
    }

    fn free_all(&mut self) {
        while !self.addrs.is_empty() {
            let last = self.addrs.len() - 1;
            self.dealloc_at(last);
        }
    }
}

/// The number of random operations: `SHARDALLOC_TEST_OPS`, else the default, times the scale.
fn op_count() -> usize {
    let base = match std::env::var("SHARDALLOC_TEST_OPS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SHARDALLOC_TEST_OPS={v:?} is not a number")),
        Err(_) => DEFAULT_OPS,
    };
    base * common::scale()
}

#[test]
fn random_ops() {
    let seed = common::seed("random_ops");
    let ops = op_count();
    println!("[random_ops] {ops} operations; tip: SHARDALLOC_TEST_OPS=1000000 for a longer run");
    let start = std::time::Instant::now();
    let mut m = Model::new(seed);
    for _ in 0..ops {
        m.step();
    }
    for (&a, e) in &m.live {
        m.verify(a, e);
    }
    m.free_all();
    println!(
        "[random_ops] seed {seed}: {:?} in {:.2?}",
        m.stats,
        start.elapsed()
    );
}

/// Blocks of one layout allocated, dirtied and freed, then allocated again with `alloc_zeroed`:
/// the second round must read as zero although it reuses the first round's memory.
#[test]
fn zeroed_over_dirty_memory() {
    let sizes = [
        8,
        24,
        64,
        100,
        1000,
        1024,
        1025,
        4096,
        8193,
        50_000,
        65_537,
        300 * KIB,
        MIB + 1,
        5 * MIB,
    ];
    for &size in &sizes {
        for align in [8, 64, 4096] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let per_round = (4 * MIB / size).clamp(2, 400);
            let mut seen = std::collections::HashSet::new();
            let mut reused = 0usize;
            for round in 0..4 {
                let mut blocks = Vec::with_capacity(per_round);
                for _ in 0..per_round {
                    // SAFETY: the layout has a non-zero size.
                    let p = unsafe { ShardAlloc.alloc_zeroed(layout) };
                    assert!(!p.is_null(), "alloc_zeroed({layout:?}) returned null");
                    assert_eq!(p.addr() % align, 0, "alloc_zeroed({layout:?}) = {p:p}");
                    // SAFETY: `p` is live and `size` bytes long.
                    if let Err((off, got)) = unsafe { check_zero(p, 0, size) } {
                        panic!(
                            "round {round}: alloc_zeroed({layout:?}) = {p:p} (address seen before: \
                             {}): byte {off} is {got:#04x}",
                            seen.contains(&p.addr())
                        );
                    }
                    if !seen.insert(p.addr()) {
                        reused += 1;
                    }
                    // SAFETY: `p` is live and its usable size is at least `size`.
                    let usable = unsafe { shardalloc::usable_size(p) };
                    // SAFETY: `p` is live and `usable` bytes long.
                    unsafe { std::ptr::write_bytes(p, 0xFF, usable) };
                    blocks.push(p);
                }
                for p in blocks {
                    // SAFETY: allocated above with `layout`, freed once.
                    unsafe { ShardAlloc.dealloc(p, layout) };
                }
            }
            // Freed small and medium blocks must come back: otherwise the test would not test
            // zeroing over reused memory, and an allocator that never reuses a freed block grows
            // without bound. (Where big blocks land is up to the kernel's `mmap`.)
            assert!(
                reused > 0 || size > 64 * KIB,
                "{layout:?}: 4 rounds of {per_round} alloc/free never reused an address"
            );
        }
    }
}

/// Every boundary size up to 4 MiB + 1 at every alignment from 1 B to 1 MiB, all blocks of one size
/// live together: aligned, disjoint, usable, and kept intact while the others are written.
#[test]
fn boundary_sizes_at_every_alignment() {
    let sizes: Vec<usize> = (1..=16)
        .chain(common::boundary_sizes(MAX_SIZE))
        .filter(|&s| s <= 4 * MIB + 1)
        .collect();
    for &size in &sizes {
        let mut blocks: Vec<(*mut u8, Layout, usize, u8)> = Vec::new();
        for shift in 0..=20 {
            let align = 1usize << shift;
            let layout = Layout::from_size_align(size, align).unwrap();
            let zeroed = shift % 2 == 1;
            // SAFETY: the layout has a non-zero size.
            let p = unsafe {
                if zeroed {
                    ShardAlloc.alloc_zeroed(layout)
                } else {
                    ShardAlloc.alloc(layout)
                }
            };
            assert!(!p.is_null(), "alloc({layout:?}) returned null");
            assert_eq!(
                p.addr() % align,
                0,
                "alloc({layout:?}) = {p:p} is misaligned"
            );
            // SAFETY: `p` is live.
            let usable = unsafe { shardalloc::usable_size(p) };
            assert!(
                usable >= size,
                "alloc({layout:?}) = {p:p}: usable_size {usable}"
            );
            if zeroed {
                // SAFETY: `p` is live and `size` bytes long.
                let r = unsafe { check_zero(p, 0, size) };
                assert!(
                    r.is_ok(),
                    "alloc_zeroed({layout:?}) = {p:p}: not zero at {r:?}"
                );
            }
            for &(q, l, u, _) in &blocks {
                assert!(
                    p.addr() + usable <= q.addr() || q.addr() + u <= p.addr(),
                    "alloc({layout:?}) = {p:p} (usable {usable}) overlaps {q:p} ({l:?}, usable {u})"
                );
            }
            let fill = (size as u8) ^ (shift as u8);
            // SAFETY: `p` is live and `usable` bytes long.
            unsafe { fill_pattern(p, 0, usable, fill) };
            blocks.push((p, layout, usable, fill));
        }
        for (p, layout, usable, fill) in blocks {
            // SAFETY: `p` is live and `usable` bytes long.
            let r = unsafe { check_pattern(p, 0, usable, fill) };
            assert!(
                r.is_ok(),
                "{p:p} ({layout:?}, usable {usable}) damaged: {r:?}"
            );
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { ShardAlloc.dealloc(p, layout) };
        }
    }
}

/// Alignments 2^21..2^30 (the promise goes "up to at least 1 GiB") with small and large sizes, through
/// `alloc`, `alloc_zeroed` and `realloc`; beyond 1 GiB the result must be null or correct, and at
/// 2^57 and above (no such address exists in user space) it must be null.
#[test]
fn huge_alignments() {
    // One small block per alignment stays live until the end, so that they are checked against
    // each other for overlap.
    let mut keep: Vec<(*mut u8, Layout, usize)> = Vec::new();
    for shift in 21..=30 {
        let align = 1usize << shift;
        for size in [1, 8, 4096 + 7, 3 * MIB, align + 1] {
            let layout = Layout::from_size_align(size, align).unwrap();
            for zeroed in [false, true] {
                // SAFETY: the layout has a non-zero size.
                let p = unsafe {
                    if zeroed {
                        ShardAlloc.alloc_zeroed(layout)
                    } else {
                        ShardAlloc.alloc(layout)
                    }
                };
                assert!(
                    !p.is_null(),
                    "alloc(zeroed {zeroed}, {layout:?}) returned null"
                );
                assert_eq!(
                    p.addr() % align,
                    0,
                    "alloc(zeroed {zeroed}, {layout:?}) = {p:p}"
                );
                // SAFETY: `p` is live.
                let usable = unsafe { shardalloc::usable_size(p) };
                assert!(usable >= size, "{layout:?} = {p:p}: usable_size {usable}");
                for &(q, l, u) in &keep {
                    assert!(
                        p.addr() + usable <= q.addr() || q.addr() + u <= p.addr(),
                        "{layout:?} = {p:p} (usable {usable}) overlaps {q:p} ({l:?}, usable {u})"
                    );
                }
                // Touch (and check) at most 8 MiB at each end of the usable size.
                let head = usable.min(8 * MIB);
                let tail = usable.saturating_sub(8 * MIB).max(head);
                if zeroed {
                    // SAFETY: `p` is live and `size` bytes long.
                    let r = unsafe { check_zero(p, 0, size.min(head)) };
                    assert!(r.is_ok(), "alloc_zeroed({layout:?}) = {p:p}: {r:?}");
                    // SAFETY: as above; the range is empty or lies in `p[..size]`.
                    let r = unsafe { check_zero(p, tail.min(size), size) };
                    assert!(r.is_ok(), "alloc_zeroed({layout:?}) = {p:p}: {r:?}");
                }
                // SAFETY: `p` is live and `usable` bytes long.
                unsafe {
                    fill_pattern(p, 0, head, 0x3C);
                    fill_pattern(p, tail, usable, 0x3C);
                }
                // SAFETY: as above.
                let r = unsafe { check_pattern(p, 0, head, 0x3C) };
                assert!(r.is_ok(), "{layout:?} = {p:p}: {r:?}");
                if size == 1 && !zeroed {
                    keep.push((p, layout, usable));
                    continue;
                }
                if size == 8 {
                    // Grow then shrink: the alignment must hold, the contents must be kept.
                    // SAFETY: `p` was allocated with `layout`; the new size is non-zero and small.
                    let q = unsafe { ShardAlloc.realloc(p, layout, 5 * MIB) };
                    assert!(!q.is_null(), "realloc({layout:?} -> 5 MiB) returned null");
                    assert_eq!(q.addr() % align, 0, "realloc({layout:?} -> 5 MiB) = {q:p}");
                    // SAFETY: `q` is live and at least 5 MiB long.
                    let r = unsafe { check_pattern(q, 0, 8, 0x3C) };
                    assert!(r.is_ok(), "realloc({layout:?} -> 5 MiB) = {q:p}: {r:?}");
                    // SAFETY: as above.
                    unsafe { fill_pattern(q, 0, 5 * MIB, 0x77) };
                    let grown = Layout::from_size_align(5 * MIB, align).unwrap();
                    // SAFETY: `q` was allocated with `grown`; the new size is non-zero.
                    let r2 = unsafe { ShardAlloc.realloc(q, grown, 16) };
                    assert!(!r2.is_null(), "realloc({grown:?} -> 16) returned null");
                    assert_eq!(r2.addr() % align, 0, "realloc({grown:?} -> 16) = {r2:p}");
                    // SAFETY: `r2` is live and at least 16 bytes long.
                    let r = unsafe { check_pattern(r2, 0, 16, 0x77) };
                    assert!(r.is_ok(), "realloc({grown:?} -> 16) = {r2:p}: {r:?}");
                    let small = Layout::from_size_align(16, align).unwrap();
                    // SAFETY: `r2` was allocated with `small`, freed once.
                    unsafe { ShardAlloc.dealloc(r2, small) };
                    continue;
                }
                // SAFETY: allocated above with `layout`, freed once.
                unsafe { ShardAlloc.dealloc(p, layout) };
            }
        }
    }
    for (p, layout, usable) in keep {
        // SAFETY: `p` is live and `usable` bytes long; at most 8 MiB was filled at the start.
        let r = unsafe { check_pattern(p, 0, usable.min(8 * MIB), 0x3C) };
        assert!(r.is_ok(), "{layout:?} = {p:p} damaged: {r:?}");
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { ShardAlloc.dealloc(p, layout) };
    }

    // Beyond the promise: null, or a correct block.
    for shift in 31..=40 {
        let layout = Layout::from_size_align(1, 1usize << shift).unwrap();
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { ShardAlloc.alloc(layout) };
        if !p.is_null() {
            assert_eq!(p.addr() % layout.align(), 0, "alloc({layout:?}) = {p:p}");
            // SAFETY: `p` is live and at least one byte long.
            unsafe { p.write(1) };
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { ShardAlloc.dealloc(p, layout) };
        }
    }
    // No user-space address other than 0 is a multiple of 2^57 on x86-64 Linux.
    for shift in 57..=62 {
        let layout = Layout::from_size_align(1, 1usize << shift).unwrap();
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { ShardAlloc.alloc(layout) };
        assert!(p.is_null(), "alloc({layout:?}) = {p:p}, expected null");
        // SAFETY: as above.
        let p = unsafe { ShardAlloc.alloc_zeroed(layout) };
        assert!(
            p.is_null(),
            "alloc_zeroed({layout:?}) = {p:p}, expected null"
        );
    }
}

/// Sizes that no process can have (≥ 2^47 B, beyond the 47-bit x86-64 user address space, up to the
/// largest size a `Layout` allows) must give null from `alloc` and `alloc_zeroed`, at every
/// alignment; sizes that merely exceed memory (2^44..2^47 - 1) give null or a usable block (the
/// kernel may grant them under overcommit).
#[test]
fn absurd_sizes_return_null() {
    for align in [1, 2, 8, 16, 64, 4096, 64 * KIB, MIB, 2 * MIB, 32 * MIB, GIB] {
        let max = max_layout_size(align);
        let mut sizes = vec![max, 1 << 62, (1 << 62) + 1, 1 << 57, 1 << 50, 1 << 48];
        sizes.extend([(1 << 47) + 1, 1 << 47]);
        for k in [
            1,
            7,
            15,
            63,
            4095,
            65535,
            (1 << 22) - 1,
            (1 << 25) - 1,
            (1 << 30) - 1,
        ] {
            sizes.push(max - k);
        }
        for size in sizes {
            let layout = Layout::from_size_align(size, align)
                .unwrap_or_else(|e| panic!("size {size} align {align}: {e}"));
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { ShardAlloc.alloc(layout) };
            assert!(p.is_null(), "alloc({layout:?}) = {p:p}, expected null");
            // SAFETY: as above.
            let p = unsafe { ShardAlloc.alloc_zeroed(layout) };
            assert!(
                p.is_null(),
                "alloc_zeroed({layout:?}) = {p:p}, expected null"
            );
        }
        for size in [
            1usize << 44,
            3 << 44,
            1 << 46,
            (1 << 47) - 4096,
            (1 << 47) - 1,
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            for zeroed in [false, true] {
                // SAFETY: the layout has a non-zero size.
                let p = unsafe {
                    if zeroed {
                        ShardAlloc.alloc_zeroed(layout)
                    } else {
                        ShardAlloc.alloc(layout)
                    }
                };
                if p.is_null() {
                    continue;
                }
                // The kernel granted it (overcommit): it must then be a correct block.
                assert_eq!(p.addr() % align, 0, "alloc({layout:?}) = {p:p}");
                // SAFETY: `p` is live and `size` bytes long; only the first and last bytes are
                // touched.
                unsafe {
                    if zeroed {
                        assert_eq!(p.read(), 0, "alloc_zeroed({layout:?}) = {p:p}");
                        assert_eq!(p.add(size - 1).read(), 0, "alloc_zeroed({layout:?})");
                    }
                    p.write(1);
                    p.add(size - 1).write(2);
                }
                // SAFETY: allocated above with `layout`, freed once.
                unsafe { ShardAlloc.dealloc(p, layout) };
            }
        }
    }
}

/// A `realloc` to an impossible size returns null and leaves the old block intact and usable.
#[test]
fn failed_realloc_keeps_block() {
    let blocks = [
        (1, 1),
        (64, 8),
        (1000, 16),
        (100 * KIB, 4096),
        (3 * MIB, 64),
        (8 * MIB, MIB),
        (40 * MIB, 16),
        (100, 4 * MIB),
    ];
    for (size, align) in blocks {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { ShardAlloc.alloc(layout) };
        assert!(!p.is_null(), "alloc({layout:?}) returned null");
        // SAFETY: `p` is live.
        let usable = unsafe { shardalloc::usable_size(p) };
        // SAFETY: `p` is live and `usable` bytes long.
        unsafe { fill_pattern(p, 0, usable, 0x5A) };
        let max = max_layout_size(align);
        for new_size in [max, max - 1, max - 4095, 1 << 62, 1 << 57, 1 << 48, 1 << 47] {
            // SAFETY: `p` is live and was allocated with `layout`; `new_size` rounded up to
            // `align` does not exceed `isize::MAX`.
            let q = unsafe { ShardAlloc.realloc(p, layout, new_size) };
            assert!(
                q.is_null(),
                "realloc({p:p} {layout:?} -> {new_size}) = {q:p}, expected null"
            );
            // SAFETY: the failed realloc left `p` live.
            let now = unsafe { shardalloc::usable_size(p) };
            assert_eq!(
                now, usable,
                "usable_size({p:p}) after a failed realloc to {new_size}"
            );
            // SAFETY: `p` is live and `usable` bytes long.
            let r = unsafe { check_pattern(p, 0, usable, 0x5A) };
            assert!(
                r.is_ok(),
                "{p:p} {layout:?} damaged by a failed realloc to {new_size}: {r:?}"
            );
        }
        // The block still works: grow it for real, then free it.
        let new_size = size * 2 + 1;
        // SAFETY: `p` is live and was allocated with `layout`; `new_size` is modest.
        let q = unsafe { ShardAlloc.realloc(p, layout, new_size) };
        assert!(
            !q.is_null(),
            "realloc({layout:?} -> {new_size}) returned null"
        );
        assert_eq!(
            q.addr() % align,
            0,
            "realloc({layout:?} -> {new_size}) = {q:p}"
        );
        // SAFETY: `q` is live and at least `new_size > size` bytes long.
        let r = unsafe { check_pattern(q, 0, size, 0x5A) };
        assert!(
            r.is_ok(),
            "realloc({layout:?} -> {new_size}) = {q:p}: {r:?}"
        );
        let grown = Layout::from_size_align(new_size, align).unwrap();
        // SAFETY: `q` was allocated with `grown`, freed once.
        unsafe { ShardAlloc.dealloc(q, grown) };
    }
}

/// `realloc` honours the layout's alignment for the new size, in both directions; in particular a
/// 16-aligned 32-B block shrunk to 8 B stays 16-aligned.
#[test]
fn realloc_keeps_alignment() {
    let layout = Layout::from_size_align(32, 16).unwrap();
    for _ in 0..100 {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { ShardAlloc.alloc(layout) };
        assert!(
            !p.is_null() && p.addr() % 16 == 0,
            "alloc({layout:?}) = {p:p}"
        );
        // SAFETY: `p` is live and 32 bytes long.
        unsafe { fill_pattern(p, 0, 32, 9) };
        // SAFETY: `p` was allocated with `layout`; 8 is non-zero.
        let q = unsafe { ShardAlloc.realloc(p, layout, 8) };
        assert!(!q.is_null(), "realloc({layout:?} -> 8) returned null");
        assert_eq!(
            q.addr() % 16,
            0,
            "realloc({p:p} {layout:?} -> 8) = {q:p}: not 16-aligned"
        );
        // SAFETY: `q` is live and at least 8 bytes long.
        let r = unsafe { check_pattern(q, 0, 8, 9) };
        assert!(r.is_ok(), "realloc({layout:?} -> 8) = {q:p}: {r:?}");
        let small = Layout::from_size_align(8, 16).unwrap();
        // SAFETY: `q` was allocated with `small`, freed once.
        unsafe { ShardAlloc.dealloc(q, small) };
    }
    for shift in 4..=22 {
        let align = 1usize << shift;
        for size in [2 * align, align + 8, 3 * align / 2] {
            let mut layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: the layout has a non-zero size.
            let mut p = unsafe { ShardAlloc.alloc(layout) };
            assert!(!p.is_null(), "alloc({layout:?}) returned null");
            // SAFETY: `p` is live and `size` bytes long.
            unsafe { fill_pattern(p, 0, size, shift as u8) };
            let mut kept = size;
            for new_size in [
                8,
                1,
                24,
                align - 1,
                5 * align + 3,
                100 * KIB,
                7,
                3 * MIB,
                64,
            ] {
                // SAFETY: `p` is live and was allocated with `layout`; `new_size` is non-zero.
                let q = unsafe { ShardAlloc.realloc(p, layout, new_size) };
                assert!(
                    !q.is_null(),
                    "realloc({layout:?} -> {new_size}) returned null"
                );
                assert_eq!(
                    q.addr() % align,
                    0,
                    "realloc({p:p} {layout:?} -> {new_size}) = {q:p}: not {align}-aligned"
                );
                kept = kept.min(new_size);
                // SAFETY: `q` is live and at least `new_size >= kept` bytes long.
                let r = unsafe { check_pattern(q, 0, kept, shift as u8) };
                assert!(
                    r.is_ok(),
                    "realloc({layout:?} -> {new_size}) = {q:p}: {r:?}"
                );
                // SAFETY: `q` is live and `new_size` bytes long.
                unsafe { fill_pattern(q, kept, new_size, shift as u8) };
                kept = new_size;
                p = q;
                layout = Layout::from_size_align(new_size, align).unwrap();
            }
            // SAFETY: `p` is live and was allocated with `layout`; freed once.
            unsafe { ShardAlloc.dealloc(p, layout) };
        }
    }
}

/// `realloc` to a size that fits the block's usable size (grow into the slack, or keep the size)
/// returns the same pointer.
#[test]
fn realloc_in_place_when_it_fits() {
    let sizes = [
        1,
        7,
        8,
        24,
        100,
        1000,
        1025,
        5000,
        8193,
        70_000,
        600_000,
        MIB + 1,
        3 * MIB + 5,
        20 * MIB + 3,
    ];
    for size in sizes {
        for align in [1, 16, 4096, 256 * KIB] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { ShardAlloc.alloc(layout) };
            assert!(!p.is_null(), "alloc({layout:?}) returned null");
            // SAFETY: `p` is live.
            let usable = unsafe { shardalloc::usable_size(p) };
            // SAFETY: `p` is live and `size` bytes long.
            unsafe { fill_pattern(p, 0, size, 0x42) };
            let mut cur = layout;
            for new_size in [size, (size + usable) / 2, usable] {
                assert!(must_stay_in_place(cur.size(), usable, new_size));
                // SAFETY: `p` is live and was allocated with `cur`; `new_size` is non-zero.
                let q = unsafe { ShardAlloc.realloc(p, cur, new_size) };
                assert_eq!(
                    q, p,
                    "realloc({p:p} {cur:?} -> {new_size}) moved the block although usable_size is \
                     {usable}"
                );
                cur = Layout::from_size_align(new_size, align).unwrap();
            }
            // SAFETY: `p` is live and at least `size` bytes long.
            let r = unsafe { check_pattern(p, 0, size, 0x42) };
            assert!(r.is_ok(), "in-place realloc of {p:p} {layout:?}: {r:?}");
            // SAFETY: `p` is live and was allocated with `cur`; freed once.
            unsafe { ShardAlloc.dealloc(p, cur) };
        }
    }
}
