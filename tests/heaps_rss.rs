//! Resident memory of first-class heaps (`shardalloc::Heap`):
//!
//! * a million objects allocated in a heap and released with `destroy` give the resident memory
//!   back: RSS returns to its baseline (measured after a warm-up run of the same work) once the
//!   reset delay has passed, through the thread's own light activity (the emptied segments wait
//!   on the thread's default heap, `docs/design.md` §8) — right after `destroy` it is at most the
//!   pending limit above — and at once with a reset delay of 0; and after `collect(true)`;
//! * 100 cycles of create / fill (collections, raw blocks, huge blocks) / destroy do not grow: the
//!   least RSS, `stats().reserved` and `stats().committed` of the last 10 cycles stay within a
//!   small bound of the least of cycles 5 to 15 (the figures move from cycle to cycle with the
//!   dirty slots waiting for their reset delay, with no trend; those of cycles 10 and 100 are
//!   printed), and no cycle passes them by more than the pending limit;
//! * the same while the thread's default heap allocates a little between the cycles, as a real
//!   program's does: `reserved` must not grow much beyond what the default heap's own blocks need.
//!
//! RSS and the statistics are process-wide, so the tests of this binary run one at a time (a
//! mutex) and nothing else runs in it. Run: `cargo test --release --test heaps_rss --
//! --nocapture` (prints every figure).

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use allocator_api2::boxed::Box as HBox;
use allocator_api2::vec::Vec as HVec;
use shardalloc::Heap;

use common::{mib, rss_bytes};
use raw::mix;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The tests of this binary measure process-wide figures: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

// === a million objects ===

const OBJECTS: usize = 1_000_000;

type Object = [u64; 4];

fn object(i: usize) -> Object {
    let i = i as u64;
    [i, mix(i), !i, mix(i ^ 0x5555)]
}

/// What one run of [`million`] saw.
#[derive(Debug)]
struct Million {
    fill: Duration,
    destroy: Duration,
    /// RSS with the million objects live.
    peak: usize,
    /// `stats().live` with the million objects live.
    live: usize,
    /// RSS right after `destroy`.
    after_destroy: usize,
    stats_after_destroy: shardalloc::Stats,
}

/// Allocates a million objects in a fresh heap (their addresses in `ptrs`, which lives in the
/// global heap), checks them and the heap's figures, frees every 1000th one by itself and
/// destroys the heap with the rest.
fn million(ptrs: &mut Vec<*mut Object>) -> Million {
    let heap = Heap::new();
    ptrs.clear();
    let t = Instant::now();
    for i in 0..OBJECTS {
        ptrs.push(HBox::into_raw(HBox::new_in(object(i), &heap)));
    }
    let fill = t.elapsed();
    for (i, &p) in ptrs.iter().enumerate() {
        // SAFETY: a live object of the heap (nothing was freed yet).
        let got = unsafe { *p };
        assert_eq!(got, object(i), "object {i} at {p:p}");
    }
    let s = heap.stats();
    assert_eq!(s.live_blocks, OBJECTS, "{s:?}");
    assert_eq!(s.live_bytes, OBJECTS * size_of::<Object>(), "{s:?}");
    assert!(heap.contains(ptrs[0].cast()) && heap.contains(ptrs[OBJECTS - 1].cast()));
    let live = shardalloc::stats().live;
    let peak = rss_bytes();
    for &p in ptrs.iter().step_by(1000) {
        // SAFETY: a live object of the heap, boxed with it; freed once (the rest are never
        // touched again).
        drop(unsafe { HBox::from_raw_in(p, &heap) });
    }
    assert_eq!(heap.stats().live_blocks, OBJECTS - OBJECTS / 1000);
    let t = Instant::now();
    heap.destroy();
    let destroy = t.elapsed();
    ptrs.clear();
    Million {
        fill,
        destroy,
        peak,
        live,
        after_destroy: rss_bytes(),
        stats_after_destroy: shardalloc::stats(),
    }
}

/// Light allocator activity on this thread — a few blocks that take the slow path (which gives
/// back page memory whose reset delay has passed) — every 10 ms, until `done()` or `limit`.
/// Returns how long it took, or `None` at the limit.
fn activity_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if done() {
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            return None;
        }
        let blocks: Vec<Box<[u8; 4 * KIB]>> = (0..20).map(|_| Box::new([1u8; 4 * KIB])).collect();
        drop(std::hint::black_box(blocks));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs [`million`] once as a warm-up, then measures a second run against the baseline taken
/// after the warm-up (and `collect(true)`). Prints the figures.
///
/// `ptrs` (with room for the addresses) lives in the global heap for the whole test: touched by
/// the warm-up, it is part of the baseline.
fn measured_million(
    label: &str,
    ptrs: &mut Vec<*mut Object>,
) -> (usize, shardalloc::Stats, Million) {
    let warm = million(ptrs);
    shardalloc::collect(true);
    let base = rss_bytes();
    let base_stats = shardalloc::stats();
    let run = million(ptrs);
    println!(
        "[{label}] {OBJECTS} × {} B: fill {:?}, destroy {:?} (warm-up: {:?}, {:?})",
        size_of::<Object>(),
        run.fill,
        run.destroy,
        warm.fill,
        warm.destroy
    );
    println!(
        "[{label}] RSS: baseline {:.1} MiB, with the objects {:.1} MiB ({:+.1}), right after \
         destroy {:.1} MiB ({:+.2})",
        mib(base),
        mib(run.peak),
        mib(run.peak) - mib(base),
        mib(run.after_destroy),
        mib(run.after_destroy) - mib(base)
    );
    println!(
        "[{label}] stats().live {:+.1} MiB with the objects; committed {:.1} MiB at the baseline, \
         {:.1} MiB right after destroy; reserved {:.1} → {:.1} MiB",
        mib(run.live) - mib(base_stats.live),
        mib(base_stats.committed),
        mib(run.stats_after_destroy.committed),
        mib(base_stats.reserved),
        mib(run.stats_after_destroy.reserved)
    );
    let objects_bytes = OBJECTS * size_of::<Object>();
    assert!(
        run.peak >= base + objects_bytes * 9 / 10,
        "the objects ({:.1} MiB) are not resident: RSS {:.1} → {:.1} MiB",
        mib(objects_bytes),
        mib(base),
        mib(run.peak)
    );
    assert!(
        run.live.abs_diff(base_stats.live + objects_bytes) <= MIB,
        "stats().live does not count the heap's objects: {:.1} MiB over a {:.1} MiB baseline",
        mib(run.live.saturating_sub(base_stats.live)),
        mib(base_stats.live)
    );
    (base, base_stats, run)
}

/// RSS and `committed` back at the baseline after `collect(true)`, and `reserved` too.
fn assert_back_after_collect(label: &str, base: usize, base_stats: &shardalloc::Stats) {
    shardalloc::collect(true);
    let rss = rss_bytes();
    let s = shardalloc::stats();
    println!(
        "[{label}] after collect(true): RSS {:.1} MiB ({:+.2}), committed {:.1} MiB, reserved \
         {:.1} MiB",
        mib(rss),
        mib(rss) - mib(base),
        mib(s.committed),
        mib(s.reserved)
    );
    assert!(
        rss <= base + 2 * MIB,
        "[{label}] RSS after collect(true): {:.1} MiB, baseline {:.1} MiB",
        mib(rss),
        mib(base)
    );
    assert!(
        s.committed <= base_stats.committed + MIB,
        "[{label}] committed after collect(true): {:.1} MiB, baseline {:.1} MiB",
        mib(s.committed),
        mib(base_stats.committed)
    );
    assert!(
        s.reserved <= base_stats.reserved + 4 * MIB,
        "[{label}] reserved after collect(true): {:.1} MiB, baseline {:.1} MiB",
        mib(s.reserved),
        mib(base_stats.reserved)
    );
}

/// With the default options: `destroy` hands the emptied segments to the thread's default heap,
/// whose dirty slots go back along the decay curve — except what passes the warm budget, which
/// is reset at once (`docs/design.md` §6, §8). So right after `destroy` RSS is at most the
/// budget's floor above the baseline, and within the decay time the thread's own light
/// activity (no `collect`) brings RSS and the committed bytes back.
#[test]
fn a_million_objects_destroyed_give_rss_back_to_the_baseline() {
    let _one = one_at_a_time();
    let label = "million";
    let mut ptrs = Vec::with_capacity(OBJECTS);
    let (base, base_stats, run) = measured_million(label, &mut ptrs);
    let pending = shardalloc::options::pending_reset_limit();
    assert!(
        run.after_destroy <= base + pending + 4 * MIB,
        "right after destroy RSS is {:.1} MiB, more than the pending limit ({:.1} MiB) above the \
         {:.1} MiB baseline",
        mib(run.after_destroy),
        mib(pending),
        mib(base)
    );
    assert!(
        run.stats_after_destroy.committed <= base_stats.committed + pending + MIB,
        "committed right after destroy: {:.1} MiB, baseline {:.1} MiB",
        mib(run.stats_after_destroy.committed),
        mib(base_stats.committed)
    );
    let back = activity_until(Duration::from_secs(2), || {
        rss_bytes() <= base + 4 * MIB
            && shardalloc::stats().committed <= base_stats.committed + 2 * MIB
    });
    let rss = rss_bytes();
    let s = shardalloc::stats();
    println!(
        "[{label}] after light activity on this thread for {back:?} (reset delay {} ms): RSS \
         {:.1} MiB ({:+.2}), committed {:.1} MiB",
        shardalloc::options::reset_delay_ms(),
        mib(rss),
        mib(rss) - mib(base),
        mib(s.committed)
    );
    assert!(
        back.is_some(),
        "2 s after destroy RSS is still {:.1} MiB, baseline {:.1} MiB",
        mib(rss),
        mib(base)
    );
    assert!(
        s.committed <= base_stats.committed + 2 * MIB,
        "committed after the decay time: {:.1} MiB, baseline {:.1} MiB",
        mib(s.committed),
        mib(base_stats.committed)
    );
    assert_back_after_collect(label, base, &base_stats);
    drop(ptrs);
}

/// Puts the reset delay back when dropped.
struct RestoreResetDelay(u64);

impl Drop for RestoreResetDelay {
    fn drop(&mut self) {
        shardalloc::options::set_reset_delay_ms(self.0).expect("restore the reset delay");
    }
}

/// With a reset delay of 0, `destroy` gives the memory back at once (`docs/design.md` §8).
#[test]
fn with_a_reset_delay_of_0_destroy_gives_rss_back_at_once() {
    let _one = one_at_a_time();
    let _restore = RestoreResetDelay(shardalloc::options::reset_delay_ms());
    shardalloc::options::set_reset_delay_ms(0).expect("a reset delay of 0");
    let label = "million, delay 0";
    let mut ptrs = Vec::with_capacity(OBJECTS);
    let (base, base_stats, run) = measured_million(label, &mut ptrs);
    assert!(
        run.after_destroy <= base + 4 * MIB,
        "right after destroy RSS is {:.1} MiB, baseline {:.1} MiB",
        mib(run.after_destroy),
        mib(base)
    );
    assert!(
        run.stats_after_destroy.committed <= base_stats.committed + 2 * MIB,
        "committed right after destroy: {:.1} MiB, baseline {:.1} MiB",
        mib(run.stats_after_destroy.committed),
        mib(base_stats.committed)
    );
    assert_back_after_collect(label, base, &base_stats);
    drop(ptrs);
}

// === create / fill / destroy cycles ===

/// A hashbrown map allocating from a heap.
type HeapMap<'h, K, V> = hashbrown::HashMap<K, V, hashbrown::DefaultHashBuilder, &'h Heap>;

/// A node of a linked list allocated in the heap.
struct Node<'h> {
    value: u64,
    payload: [u8; 48],
    next: Option<HBox<Node<'h>, &'h Heap>>,
}

/// One cycle: a fresh heap, filled with a vector, a map of byte strings, a linked list, raw
/// blocks of many sizes and two huge blocks, all checked; some of it freed on the way, the rest
/// (the map and the list are leaked into the heap) released by `destroy`.
fn cycle(n: usize) {
    let heap = Heap::new();
    let salt = n as u64;
    {
        let mut v: HVec<u64, &Heap> = HVec::new_in(&heap);
        v.extend((0..300_000).map(|i| mix(i ^ salt)));
        let mut map: HeapMap<'_, u64, HVec<u8, &Heap>> = HeapMap::new_in(&heap);
        for i in 0..20_000u64 {
            let len = 8 + (mix(i) % 200) as usize;
            let mut s = HVec::with_capacity_in(len, &heap);
            s.extend((0..len).map(|k| (i as usize + k) as u8));
            map.insert(i, s);
        }
        let mut list: Option<HBox<Node<'_>, &Heap>> = None;
        for i in 0..20_000u64 {
            list = Some(HBox::new_in(
                Node {
                    value: mix(i ^ salt),
                    payload: [i as u8; 48],
                    next: list,
                },
                &heap,
            ));
        }
        let mut raws: HVec<(*mut u8, usize), &Heap> = HVec::new_in(&heap);
        for i in 0..2000usize {
            let size = 16 + (mix(i as u64 ^ salt) % 8000) as usize;
            let p = heap.alloc(std::alloc::Layout::from_size_align(size, 8).expect("layout"));
            assert!(!p.is_null());
            // SAFETY: a live block of `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            raws.push((p, size));
        }
        for size in [2 * MIB, 3 * MIB + 17] {
            let p = heap.alloc(std::alloc::Layout::from_size_align(size, 64).expect("layout"));
            assert!(!p.is_null());
            // SAFETY: a live block of `size` bytes.
            unsafe { p.write_bytes(0xAB, size) };
            raws.push((p, size));
        }

        // Check everything.
        assert!(
            v.iter()
                .enumerate()
                .all(|(i, &x)| x == mix(i as u64 ^ salt))
        );
        for i in (0..20_000u64).step_by(7) {
            let s = &map[&i];
            assert!(
                s.iter()
                    .enumerate()
                    .all(|(k, &b)| b == (i as usize + k) as u8)
            );
        }
        let mut node = list.as_deref();
        let mut i = 20_000u64;
        while let Some(n) = node {
            i -= 1;
            assert_eq!(n.value, mix(i ^ salt));
            assert_eq!(n.payload[47], i as u8);
            node = n.next.as_deref();
        }
        assert_eq!(i, 0);
        for (i, &(p, size)) in raws.iter().enumerate() {
            let fill = if size > MIB { 0xAB } else { i as u8 };
            // SAFETY: a live block of `size` bytes.
            let bytes = unsafe { std::slice::from_raw_parts(p, size) };
            assert!(bytes.iter().step_by(997).all(|&b| b == fill));
        }
        // Freed one by one: the vector, half the raw blocks.
        drop(v);
        for &(p, _) in raws.iter().step_by(2) {
            // SAFETY: a live block of the heap, freed once (the other half is never freed).
            unsafe { heap.dealloc(p) };
        }
        drop(raws);
        // Left to destroy: the map, the list (leaked here), the other raw blocks.
        std::mem::forget(map);
        std::mem::forget(list);
    }
    heap.destroy();
}

/// Prints the figures of cycles 1, 10, 20, …
fn print_cycles(label: &str, figures: &[(usize, usize, usize, usize)]) {
    for &(n, rss, reserved, committed) in figures {
        if n == 1 || n % 10 == 0 {
            println!(
                "[{label}] after cycle {n:3}: RSS {:6.1} MiB, reserved {:6.1} MiB, committed \
                 {:6.1} MiB",
                mib(rss),
                mib(reserved),
                mib(committed)
            );
        }
    }
}

/// No growth over the cycles. RSS and `committed` move from one cycle to the next with the dirty
/// page slots still waiting for their reset delay (up to the pending limit, by design), and
/// `reserved` by a segment or so with the segment cache, with no trend; so growth is judged on
/// the floors: the least figure of the last 10 cycles must stay within a small bound of the
/// least of cycles 5 to 15. And no cycle may pass that floor by more than the pending limit (RSS,
/// `committed`) or the most of cycles 5 to 15 by more than two segments (`reserved`).
#[test]
fn create_fill_destroy_cycles_do_not_grow() {
    let _one = one_at_a_time();
    const CYCLES: usize = 100;
    // (cycle, RSS, reserved, committed) after each cycle. Nothing is printed (nothing allocated
    // from the default heap) until the cycles are over.
    let mut figures: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(CYCLES);
    // What earlier tests of this binary left warm would decay during the cycles and move the
    // figures; start from nothing kept.
    shardalloc::collect(true);
    let t = Instant::now();
    for n in 1..=CYCLES {
        cycle(n);
        let s = shardalloc::stats();
        figures.push((n, rss_bytes(), s.reserved, s.committed));
    }
    let took = t.elapsed();
    print_cycles("cycles", &figures);
    type Figure = (usize, usize, usize, usize);
    let window = &figures[4..15];
    let last = &figures[CYCLES - 10..];
    let least = |w: &[Figure], f: fn(&Figure) -> usize| w.iter().map(f).min().expect("cycles");
    let most = |w: &[Figure], f: fn(&Figure) -> usize| w.iter().map(f).max().expect("cycles");
    let pending = shardalloc::options::pending_reset_limit();
    let (_, rss10, reserved10, committed10) = figures[9];
    let (_, rss100, reserved100, committed100) = figures[CYCLES - 1];
    println!(
        "[cycles] {CYCLES} cycles in {took:?}; cycle 100 − cycle 10: RSS {:+.2} MiB, reserved \
         {:+.2} MiB, committed {:+.2} MiB",
        mib(rss100) - mib(rss10),
        mib(reserved100) - mib(reserved10),
        mib(committed100) - mib(committed10)
    );
    for (what, f, growth, ceiling) in [
        (
            "RSS",
            (|f: &Figure| f.1) as fn(&Figure) -> usize,
            2 * MIB,
            None,
        ),
        ("reserved", |f: &Figure| f.2, 4 * MIB, Some(8 * MIB)),
        // `committed` takes one of two values about 3 MiB apart from one cycle to the next (the
        // freed 3 MiB huge block kept as a spare or not when the figure is read).
        ("committed", |f: &Figure| f.3, 4 * MIB, None),
    ] {
        let (floor, top, last_floor) = (least(window, f), most(window, f), least(last, f));
        println!(
            "[cycles] {what}: cycles 5–15 {:.1}–{:.1} MiB, least of the last 10 cycles {:.1} MiB",
            mib(floor),
            mib(top),
            mib(last_floor)
        );
        assert!(
            last_floor <= floor + growth,
            "{what} grew: at least {:.1} MiB in the last 10 cycles, {:.1} MiB at least in cycles \
             5 to 15",
            mib(last_floor),
            mib(floor)
        );
        let cap = match ceiling {
            Some(extra) => top + extra,
            None => floor + pending + growth,
        };
        for fig in &figures[15..] {
            assert!(
                f(fig) <= cap,
                "{what} after cycle {}: {:.1} MiB, above {:.1} MiB (cycles 5 to 15: {:.1}–{:.1} MiB)",
                fig.0,
                mib(f(fig)),
                mib(cap),
                mib(floor),
                mib(top)
            );
        }
    }
}

/// A light request: ~2.5 MB of small blocks and 200 medium ones in a fresh heap, destroyed.
fn request(n: usize) {
    let heap = Heap::new();
    for i in 0..60_000usize {
        let size = 16 + (i + n) % 100 * 8;
        let p = heap.alloc(std::alloc::Layout::from_size_align(size, 8).expect("layout"));
        assert!(!p.is_null());
        // SAFETY: a live block of `size` bytes (released by `destroy`).
        unsafe { p.write_bytes(i as u8, size) };
    }
    for i in 0..200usize {
        let size = 9000 + i * 100;
        let p = heap.alloc(std::alloc::Layout::from_size_align(size, 8).expect("layout"));
        assert!(!p.is_null());
        // SAFETY: a live block of at least 64 bytes (released by `destroy`).
        unsafe { p.write_bytes(i as u8, 64) };
    }
    heap.destroy();
}

/// The per-request pattern of a real program: between requests the thread's default heap
/// allocates too (a log, a cache: here two blocks a cycle, 1.8 MB in all). `destroy` hands the
/// emptied segments to the default heap, and the next heap takes them back; the default heap's
/// own new pages must not pin them (each pinned segment makes every later heap map a fresh
/// one). With a reset delay of 0 (segments to the cache or the OS at once) the same program's
/// `reserved` grows by 4 MiB from cycle 10 to cycle 100; the bound here is 12 MiB.
#[test]
fn cycles_with_a_busy_default_heap_do_not_grow_reserved() {
    let _one = one_at_a_time();
    const CYCLES: usize = 100;
    let mut kept: Vec<Box<[u8]>> = Vec::with_capacity(2 * CYCLES);
    let mut figures: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(CYCLES);
    for n in 1..=CYCLES {
        request(n);
        kept.push(vec![n as u8; 16 + 16 * (n % 64)].into_boxed_slice());
        if n % 2 == 0 {
            kept.push(vec![n as u8; 9000 + 1000 * (n % 50)].into_boxed_slice());
        }
        let s = shardalloc::stats();
        figures.push((n, rss_bytes(), s.reserved, s.committed));
    }
    let kept_bytes: usize = kept.iter().map(|b| b.len()).sum();
    assert!(
        kept.iter().all(|b| b.iter().all(|&x| x == b[0])),
        "a kept block changed"
    );
    print_cycles("busy default heap", &figures);
    let (_, _, reserved10, committed10) = figures[9];
    let (_, _, reserved100, committed100) = figures[CYCLES - 1];
    println!(
        "[busy default heap] the default heap keeps {} blocks, {:.1} MiB; cycle 100 − cycle 10: \
         reserved {:+.1} MiB, committed {:+.1} MiB",
        kept.len(),
        mib(kept_bytes),
        mib(reserved100) - mib(reserved10),
        mib(committed100) - mib(committed10)
    );
    assert!(
        reserved100 <= reserved10 + 12 * MIB,
        "reserved grew from {:.1} MiB after cycle 10 to {:.1} MiB after cycle 100, for {:.1} MiB \
         kept by the default heap",
        mib(reserved10),
        mib(reserved100),
        mib(kept_bytes)
    );
}
