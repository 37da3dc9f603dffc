//! First-class heaps (`shardalloc::Heap`): collections allocating through `&Heap`
//! (allocator-api2 `Vec` and `Box`, hashbrown `HashMap`), `contains`, `stats`, `visit_blocks`,
//! limits, `realloc` and alignments, zero-size allocations, frees from any thread and through the
//! global allocator, many heaps per thread (and `fork` with them), heaps dropped at thread exit,
//! and the documented rule for frees racing `destroy`:
//!
//! * remote frees of the heap's own blocks ordered before `destroy` (channel ack, join);
//! * frees of the thread's default heap and of a sibling heap concurrent with `destroy`;
//! * a heap dropped without `destroy` while another thread frees its blocks (the rest stay valid,
//!   even while other first-class heaps come and go).
//!
//! Resident-memory figures (a million objects, create/fill/destroy cycles) are in
//! `tests/heaps_rss.rs`, alone in their binary.
//!
//! Randomized tests print their seed; replay with `SHARDALLOC_SEED=<seed> cargo test --release
//! --test heaps <name> -- --exact --nocapture`.

mod common;
#[path = "common/raw.rs"]
mod raw;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::alloc::Layout;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Display;
use std::ptr::{self, NonNull};
use std::sync::{Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use allocator_api2::alloc::Allocator;
use allocator_api2::boxed::Box as HBox;
use allocator_api2::vec::Vec as HVec;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use shardalloc::{Heap, HeapStats};

use common::{check_pattern, check_zero, fill_pattern, seed};
use raw::mix;
use watchdog::Watchdog;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// A hashbrown map allocating from a heap.
type HeapMap<'h, K, V> = hashbrown::HashMap<K, V, hashbrown::DefaultHashBuilder, &'h Heap>;

// === raw blocks ===

/// A raw block (of a heap or of the global allocator) whose first `layout.size()` bytes hold the
/// fill pattern `fill` (all of them, or both ends of a big block).
///
/// Invariant: a `Raw` exists only while its block is live. It is not `Copy`; it is consumed by
/// [`Raw::free`], and the tests discard (never use again) the `Raw`s of a heap before or when
/// they destroy it.
#[derive(Debug)]
struct Raw {
    ptr: NonNull<u8>,
    layout: Layout,
    fill: u8,
}

// SAFETY: a `Raw` owns its block exclusively (like a `Box<[u8]>`); shardalloc accepts the free of
// any block from any thread (`shardalloc::free`, documented for first-class heaps too), and a
// `Raw` is only read through `&Raw`.
unsafe impl Send for Raw {}

// SAFETY: through `&Raw` the block is only read (`check`, `usable`, `addr`); reads from several
// threads at once are fine, and writes or the free need the `Raw` itself.
unsafe impl Sync for Raw {}

/// Blocks above `4 * EDGE` bytes hold the pattern only in their first and last `EDGE` bytes.
const EDGE: usize = 16 * KIB;

impl Raw {
    /// Allocates `layout` from `heap` (checking the result) and fills it.
    fn alloc_in(heap: &Heap, layout: Layout, fill: u8) -> Raw {
        Raw::adopt(heap.alloc(layout), layout, fill, "heap.alloc")
    }

    /// Allocates `layout` from the global allocator (the thread's default heap) and fills it.
    fn alloc_global(layout: Layout, fill: u8) -> Raw {
        assert!(layout.size() > 0);
        // SAFETY: nonzero size (checked above).
        let ptr = unsafe { std::alloc::alloc(layout) };
        Raw::adopt(ptr, layout, fill, "global alloc")
    }

    fn adopt(ptr: *mut u8, layout: Layout, fill: u8, what: &str) -> Raw {
        let Some(ptr) = NonNull::new(ptr) else {
            panic!("{what}({layout:?}) returned null");
        };
        assert_eq!(
            ptr.as_ptr().addr() % layout.align(),
            0,
            "{what}({layout:?}) = {ptr:p} is misaligned"
        );
        let raw = Raw { ptr, layout, fill };
        let usable = raw.usable();
        assert!(
            usable >= layout.size(),
            "{what}({layout:?}) = {ptr:p}: usable_size {usable} < size"
        );
        for (from, to) in raw.ranges() {
            // SAFETY: a fresh live block at least `layout.size() >= to` bytes long.
            unsafe { fill_pattern(ptr.as_ptr(), from, to, fill) };
        }
        raw
    }

    fn ranges(&self) -> [(usize, usize); 2] {
        let n = self.layout.size();
        if n > 4 * EDGE {
            [(0, EDGE), (n - EDGE, n)]
        } else {
            [(0, n), (n, n)]
        }
    }

    fn addr(&self) -> usize {
        self.ptr.as_ptr().addr()
    }

    fn usable(&self) -> usize {
        // SAFETY: the block is live (type invariant).
        unsafe { shardalloc::usable_size(self.ptr.as_ptr()) }
    }

    /// The first damage found, if any (no panic: usable in a forked child).
    fn damage(&self) -> Option<(usize, u8, u8)> {
        for (from, to) in self.ranges() {
            // SAFETY: the block is live (type invariant) and `to <= layout.size()`.
            if let Err(e) = unsafe { check_pattern(self.ptr.as_ptr(), from, to, self.fill) } {
                return Some(e);
            }
        }
        None
    }

    /// Panics (naming `ctx`) if the block lost its pattern.
    fn check(&self, ctx: &dyn Display) {
        if let Some((off, got, want)) = self.damage() {
            panic!(
                "{ctx}: block {:p} ({:?}): byte {off} is {got:#04x}, expected {want:#04x}",
                self.ptr, self.layout
            );
        }
    }

    /// Checks the block and frees it with `shardalloc::free` on the calling thread.
    fn free(self, ctx: &dyn Display) {
        self.check(ctx);
        // SAFETY: live (type invariant), freed once: `self` is consumed.
        unsafe { shardalloc::free(self.ptr.as_ptr()) };
    }

    /// Checks the block and frees it through the global allocator (`ShardAlloc::dealloc`).
    fn dealloc_global(self, ctx: &dyn Display) {
        self.check(ctx);
        // SAFETY: a live block of this allocator (type invariant) with its layout; shardalloc's
        // `dealloc` frees blocks of any heap, first-class heaps included.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A size: mostly small, some medium and large, and (with `huge`) now and then a huge one.
fn random_size(rng: &mut SmallRng, huge: bool) -> usize {
    match rng.random_range(0..1000) {
        0..=599 => rng.random_range(1..=1024),
        600..=849 => rng.random_range(1025..=8 * KIB),
        850..=969 => rng.random_range(8 * KIB + 1..=64 * KIB),
        970..=994 => rng.random_range(64 * KIB + 1..=MIB),
        _ if huge => rng.random_range(MIB + 1..=3 * MIB),
        _ => rng.random_range(1..=64),
    }
}

/// A layout of `size` bytes with an alignment that is usually 8 and sometimes up to 4096.
fn random_layout(rng: &mut SmallRng, size: usize) -> Layout {
    let align = match rng.random_range(0..20) {
        0 => 1 << rng.random_range(5..=12),
        1 => 16,
        _ => 8,
    };
    Layout::from_size_align(size, align).expect("layout")
}

/// `live_blocks`/`live_bytes` of `heap` equal those of `blocks`.
fn assert_exact(heap: &Heap, blocks: &[Raw], ctx: &dyn Display) -> HeapStats {
    let s = heap.stats();
    let bytes: usize = blocks.iter().map(Raw::usable).sum();
    assert_eq!(s.live_blocks, blocks.len(), "{ctx}: live_blocks ({s:?})");
    assert_eq!(s.live_bytes, bytes, "{ctx}: live_bytes ({s:?})");
    assert!(
        s.page_bytes >= s.live_bytes && s.peak_page_bytes >= s.page_bytes,
        "{ctx}: page_bytes below live_bytes or above the peak: {s:?}"
    );
    assert_eq!(s.pages == 0, s.page_bytes == 0, "{ctx}: {s:?}");
    s
}

/// The blocks `visit_blocks` reports (address → size), checking that none is reported twice.
fn visited(heap: &mut Heap, ctx: &dyn Display) -> HashMap<usize, usize> {
    let mut seen = Vec::new();
    heap.visit_blocks(|block, size| seen.push((block.as_ptr().addr(), size)));
    let n = seen.len();
    let map: HashMap<usize, usize> = seen.into_iter().collect();
    assert_eq!(map.len(), n, "{ctx}: visit_blocks reported a block twice");
    map
}

/// `visit_blocks` reports exactly `blocks`, each with its usable size.
fn assert_visits_exactly(heap: &mut Heap, blocks: &[Raw], ctx: &dyn Display) {
    let seen = visited(heap, ctx);
    let want: HashMap<usize, usize> = blocks.iter().map(|b| (b.addr(), b.usable())).collect();
    if seen != want {
        let missing: Vec<_> = want
            .keys()
            .filter(|a| !seen.contains_key(a))
            .take(5)
            .collect();
        let extra: Vec<_> = seen
            .keys()
            .filter(|a| !want.contains_key(a))
            .take(5)
            .collect();
        let wrong: Vec<_> = want
            .iter()
            .filter(|(a, s)| seen.get(a).is_some_and(|t| t != *s))
            .take(5)
            .collect();
        panic!(
            "{ctx}: visit_blocks saw {} blocks, {} live; missing {missing:x?}, extra {extra:x?}, \
             wrong sizes {wrong:?}",
            seen.len(),
            want.len()
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Record {
    id: u64,
    key: u64,
    name: [u8; 16],
    score: f64,
}

fn record(i: u64) -> Record {
    let mut name = [0u8; 16];
    name.copy_from_slice(&mix(i).to_le_bytes().repeat(2));
    Record {
        id: i,
        key: mix(i ^ 0xABCD),
        name,
        score: i as f64 * 0.5,
    }
}

fn value_text(i: u64) -> String {
    format!("value #{i}: {:x}", mix(i))
}

// === 1. collections ===

#[test]
fn collections_allocate_from_the_heap_and_stats_follow() {
    const N: u64 = 100_000;
    let heap = Heap::new();
    let sibling = Heap::new();
    let s0 = heap.stats();
    assert_eq!(
        (
            s0.live_blocks,
            s0.live_bytes,
            s0.pages,
            s0.page_bytes,
            s0.limit
        ),
        (0, 0, 0, 0, None),
        "a new heap is empty: {s0:?}"
    );
    {
        let mut records: HVec<Record, &Heap> = HVec::new_in(&heap);
        for i in 0..N {
            records.push(record(i));
        }
        let boxed: HBox<[u64; 300], &Heap> =
            HBox::new_in(std::array::from_fn(|i| mix(i as u64)), &heap);
        let mut map: HeapMap<'_, u64, HVec<u8, &Heap>> = HeapMap::new_in(&heap);
        for i in 0..N {
            let text = value_text(i);
            let mut value = HVec::with_capacity_in(text.len(), &heap);
            value.extend_from_slice(text.as_bytes());
            assert!(map.insert(i, value).is_none());
        }

        // Contents.
        assert_eq!(records.len(), N as usize);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(*r, record(i as u64), "record {i}");
        }
        assert!(boxed.iter().enumerate().all(|(i, &x)| x == mix(i as u64)));
        assert_eq!(map.len(), N as usize);
        for i in 0..N {
            assert_eq!(map[&i].as_slice(), value_text(i).as_bytes(), "map[{i}]");
        }

        // `contains`: the buffers (first and last byte), the box, the map's table (an entry lives
        // in it) and a value's buffer are the heap's; nothing else is.
        let last = records
            .as_ptr()
            .wrapping_add(records.len() - 1)
            .cast::<u8>();
        let entry = ptr::from_ref(map.get(&77).expect("key 77")).cast::<u8>();
        for (what, p) in [
            ("records buffer", records.as_ptr().cast::<u8>()),
            ("last record", last),
            ("box", ptr::from_ref(&*boxed).cast::<u8>()),
            ("map entry (table)", entry),
            ("map value buffer", map[&12345].as_ptr()),
        ] {
            assert!(heap.contains(p), "heap.contains({what} {p:p}) is false");
            assert!(!sibling.contains(p), "a sibling heap contains {what} {p:p}");
        }
        let global = Box::new([7u64; 4]);
        let global_big = vec![1u8; 3 * MIB];
        let on_stack = 5u64;
        static IN_STATIC: u64 = 9;
        let theirs = sibling.alloc(Layout::new::<u64>());
        for (what, p) in [
            ("a global Box", ptr::from_ref(&*global).cast::<u8>()),
            ("a global huge Vec", global_big.as_ptr()),
            ("a stack address", ptr::from_ref(&on_stack).cast::<u8>()),
            ("a static", ptr::from_ref(&IN_STATIC).cast::<u8>()),
            ("null", ptr::null()),
            ("address 1", ptr::without_provenance(1)),
            (
                "the top of the address space",
                ptr::without_provenance(usize::MAX - 15),
            ),
            ("a sibling heap's block", theirs.cast_const()),
        ] {
            assert!(!heap.contains(p), "heap.contains({what} {p:p}) is true");
        }
        assert!(sibling.contains(theirs));
        // SAFETY: a live block of `sibling`, freed once.
        unsafe { sibling.dealloc(theirs) };

        // Stats: exactly the vector, the box, the table and the N values, with their usable sizes.
        let usable = |p: *const u8| {
            // SAFETY: `p` is the start of a live block of the heap.
            unsafe { shardalloc::usable_size(p) }
        };
        let values_bytes: usize = map.values().map(|v| usable(v.as_ptr())).sum();
        let known =
            usable(records.as_ptr().cast()) + usable(ptr::from_ref(&*boxed).cast()) + values_bytes;
        let s = heap.stats();
        println!(
            "[collections] filled: {s:?}; table allocation {} B",
            map.allocation_size()
        );
        assert_eq!(s.live_blocks, 3 + N as usize, "live_blocks: {s:?}");
        let table = s
            .live_bytes
            .checked_sub(known)
            .expect("live_bytes below the known blocks");
        assert!(
            table >= map.allocation_size() && table <= map.allocation_size() * 5 / 4 + 4 * KIB,
            "live_bytes {} leaves {table} B for a {} B table",
            s.live_bytes,
            map.allocation_size()
        );
        // The records' buffer (5 MB) and the table are huge blocks with pages of their own,
        // and the values fill many small pages.
        assert!(s.pages >= 3 + values_bytes / (64 * KIB), "pages: {s:?}");
        assert!(
            s.page_bytes >= s.live_bytes && s.peak_page_bytes >= s.page_bytes,
            "{s:?}"
        );

        // Remove half the entries, shrink everything: the figures follow.
        for i in (1..N).step_by(2) {
            let v = map.remove(&i).expect("present");
            assert_eq!(v.as_slice(), value_text(i).as_bytes());
        }
        map.shrink_to_fit();
        records.truncate(1000);
        records.shrink_to_fit();
        for i in (0..N).step_by(2) {
            assert_eq!(
                map[&i].as_slice(),
                value_text(i).as_bytes(),
                "map[{i}] after removals"
            );
        }
        assert!(
            records
                .iter()
                .enumerate()
                .all(|(i, r)| *r == record(i as u64))
        );
        assert!(heap.contains(records.as_ptr().cast()));
        let values_bytes: usize = map.values().map(|v| usable(v.as_ptr())).sum();
        let known =
            usable(records.as_ptr().cast()) + usable(ptr::from_ref(&*boxed).cast()) + values_bytes;
        let t = heap.stats();
        println!("[collections] halved and shrunk: {t:?}");
        assert_eq!(t.live_blocks, 3 + N as usize / 2, "live_blocks: {t:?}");
        let table = t
            .live_bytes
            .checked_sub(known)
            .expect("live_bytes below the known blocks");
        assert!(table >= map.allocation_size() && table <= map.allocation_size() * 5 / 4 + 4 * KIB);
        assert!(
            t.peak_page_bytes >= s.page_bytes,
            "the peak went down: {s:?} → {t:?}"
        );
        drop((records, boxed, map, global, global_big));
    }
    let e = heap.stats();
    println!("[collections] all dropped: {e:?}");
    assert_eq!((e.live_blocks, e.live_bytes), (0, 0), "{e:?}");
    assert!(e.page_bytes < e.peak_page_bytes, "no page went back: {e:?}");
    heap.destroy();
    sibling.destroy();
}

// === 2. destroy and the rule for frees racing it ===

/// A batch of blocks for a worker thread to check and free, and where to say it is done.
struct Batch {
    blocks: Vec<Raw>,
    ack: mpsc::Sender<usize>,
}

#[test]
fn remote_frees_ordered_before_destroy_lose_nothing() {
    let test = "remote_frees_ordered_before_destroy_lose_nothing";
    let seed = seed(test);
    let _dog = Watchdog::start(test, Duration::from_secs(120), move || {
        format!("seed {seed}")
    });
    let mut rng = SmallRng::seed_from_u64(seed);
    // Two long-lived workers that free what they are sent and acknowledge each batch.
    let (txs, workers): (Vec<mpsc::Sender<Batch>>, Vec<thread::JoinHandle<()>>) = (0..2)
        .map(|_| {
            let (tx, rx) = mpsc::channel::<Batch>();
            let worker = thread::spawn(move || {
                for batch in rx {
                    let n = batch.blocks.len();
                    for b in batch.blocks {
                        b.free(&format_args!("seed {seed}: worker"));
                    }
                    batch.ack.send(n).expect("ack");
                }
            });
            (tx, worker)
        })
        .unzip();
    const ROUNDS: usize = 30;
    for round in 0..ROUNDS {
        let ctx = format!("seed {seed}, round {round}");
        let mut heap = Heap::new();
        let mut kept: Vec<Raw> = Vec::new();
        let (ack_tx, ack_rx) = mpsc::channel();
        let mut sent = 0;
        // Allocate in waves; send most of each wave to the workers while the next one is
        // allocated (remote frees concurrent with the owner's allocations are fine).
        let everything = round % 5 == 4;
        for wave in 0..4 {
            let mut blocks: Vec<Raw> = (0..800)
                .map(|i| {
                    let size = random_size(&mut rng, true);
                    let fill = (round * 7 + wave * 3 + i) as u8;
                    Raw::alloc_in(&heap, random_layout(&mut rng, size), fill)
                })
                .collect();
            // Full pages of one small class: their frees take the delayed route.
            blocks.extend(
                (0..2000).map(|i| Raw::alloc_in(&heap, Layout::new::<[u64; 6]>(), i as u8)),
            );
            blocks.shuffle(&mut rng);
            let keep = if everything { 0 } else { blocks.len() / 3 };
            kept.extend(blocks.drain(..keep));
            let mut k = 0;
            while !blocks.is_empty() {
                let batch: Vec<Raw> = blocks.drain(..blocks.len().min(300)).collect();
                sent += batch.len();
                txs[k % txs.len()]
                    .send(Batch {
                        blocks: batch,
                        ack: ack_tx.clone(),
                    })
                    .expect("send");
                k += 1;
            }
        }
        for b in &kept {
            b.check(&ctx);
        }
        // Order every remote free before what follows: wait for all the acknowledgements.
        drop(ack_tx);
        let acked: usize = ack_rx.iter().sum();
        assert_eq!(acked, sent, "{ctx}");
        assert_exact(&heap, &kept, &ctx);
        assert_visits_exactly(&mut heap, &kept, &ctx);
        for b in &kept {
            assert!(
                heap.contains(b.ptr.as_ptr()),
                "{ctx}: kept block {:p} not in the heap",
                b.ptr
            );
            b.check(&ctx);
        }
        // Half of the rounds: a scoped thread frees half of what is left, ordered by the join.
        if round % 2 == 1 && !kept.is_empty() {
            let theirs: Vec<Raw> = kept.drain(..kept.len() / 2).collect();
            thread::scope(|s| {
                s.spawn(|| {
                    for b in theirs {
                        b.free(&format_args!("{ctx}: scoped thread"));
                    }
                });
            });
            assert_exact(&heap, &kept, &ctx);
        }
        drop(kept);
        heap.destroy();
    }
    drop(txs);
    for w in workers {
        w.join().expect("worker");
    }
}

#[test]
fn destroy_races_frees_of_the_default_heap_and_of_a_sibling_heap() {
    let test = "destroy_races_frees_of_the_default_heap_and_of_a_sibling_heap";
    let seed = seed(test);
    let _dog = Watchdog::start(test, Duration::from_secs(120), move || {
        format!("seed {seed}")
    });
    let mut rng = SmallRng::seed_from_u64(seed);
    const ROUNDS: usize = 40;
    const FREERS: usize = 2;
    let sibling = Heap::new();
    let mut sibling_kept: Vec<Raw> = Vec::new();
    let mut destroy_time = Duration::ZERO;
    for round in 0..ROUNDS {
        let ctx = format!("seed {seed}, round {round}");
        let doomed = Heap::new();
        // The doomed heap: many pages of several kinds and a huge block, so destroy takes a while.
        let mut doomed_blocks: Vec<Raw> = (0..2500)
            .map(|i| {
                let size = random_size(&mut rng, false);
                Raw::alloc_in(&doomed, random_layout(&mut rng, size), i as u8)
            })
            .collect();
        doomed_blocks.push(Raw::alloc_in(
            &doomed,
            Layout::from_size_align(2 * MIB + 5, 64).expect("layout"),
            1,
        ));
        // Blocks of the sibling heap and of the default heap for the other threads to free.
        let mut to_free: Vec<Vec<Raw>> = (0..FREERS).map(|_| Vec::new()).collect();
        for i in 0..3000 {
            let size = random_size(&mut rng, i % 1000 == 0);
            let layout = random_layout(&mut rng, size);
            let fill = (round + i) as u8;
            let b = if i % 2 == 0 {
                Raw::alloc_in(&sibling, layout, fill)
            } else {
                Raw::alloc_global(layout, fill)
            };
            if i % 2 == 0 && rng.random_range(0..4) == 0 {
                sibling_kept.push(b);
            } else {
                to_free[i % FREERS].push(b);
            }
        }
        // Fill pages of one class, so that some frees take the delayed route.
        for i in 0..3000 {
            let b = Raw::alloc_in(&sibling, Layout::new::<[u8; 24]>(), i as u8);
            if i % 10 == 0 {
                sibling_kept.push(b);
            } else {
                to_free[i % FREERS].push(b);
            }
        }
        for list in &mut to_free {
            list.shuffle(&mut rng);
        }
        let go = Barrier::new(FREERS + 1);
        thread::scope(|s| {
            for list in to_free {
                let (go, ctx) = (&go, &ctx);
                s.spawn(move || {
                    go.wait();
                    for (k, b) in list.into_iter().enumerate() {
                        b.free(ctx);
                        if k % 200 == 0 {
                            // Some slow paths of our own (and the reaper) in between.
                            drop(std::hint::black_box(vec![k as u8; 20_000]));
                        }
                    }
                });
            }
            go.wait();
            // Every block of the doomed heap is gone with it: forget them first.
            drop(std::mem::take(&mut doomed_blocks));
            let t = Instant::now();
            doomed.destroy();
            destroy_time += t.elapsed();
        });
        for b in &sibling_kept {
            b.check(&ctx);
        }
        // The sibling heap still works and its figures are exact.
        for i in 0..200 {
            let size = random_size(&mut rng, false);
            sibling_kept.push(Raw::alloc_in(
                &sibling,
                random_layout(&mut rng, size),
                i as u8,
            ));
        }
        assert_exact(&sibling, &sibling_kept, &ctx);
        if sibling_kept.len() > 3000 {
            sibling_kept.shuffle(&mut rng);
            for b in sibling_kept.drain(1500..) {
                b.free(&ctx);
            }
        }
    }
    println!("[{test}] {ROUNDS} rounds, destroy took {destroy_time:?} in all");
    let mut sibling = sibling;
    assert_visits_exactly(&mut sibling, &sibling_kept, &format_args!("seed {seed}"));
    for b in sibling_kept {
        b.free(&format_args!("seed {seed}"));
    }
    assert_eq!(sibling.stats().live_blocks, 0);
    sibling.destroy();
}

/// Allocates blocks of the same layouts as `like` from `heap` (twice over), checks them, and
/// returns them.
fn allocate_like(heap: &Heap, like: &[Raw], fill: u8) -> Vec<Raw> {
    let blocks: Vec<Raw> = like
        .iter()
        .chain(like)
        .map(|b| Raw::alloc_in(heap, b.layout, fill))
        .collect();
    for b in &blocks {
        b.check(&"allocate_like");
    }
    blocks
}

#[test]
fn a_heap_dropped_while_another_thread_frees_its_blocks_keeps_the_rest_valid() {
    let test = "a_heap_dropped_while_another_thread_frees_its_blocks_keeps_the_rest_valid";
    let seed = seed(test);
    let _dog = Watchdog::start(test, Duration::from_secs(120), move || {
        format!("seed {seed}")
    });
    let mut rng = SmallRng::seed_from_u64(seed);
    const ROUNDS: usize = 25;
    for round in 0..ROUNDS {
        let ctx = format!("seed {seed}, round {round}");
        let heap = Heap::new();
        let mut blocks: Vec<Raw> = (0..3000)
            .map(|i| {
                let size = random_size(&mut rng, i % 1000 == 0);
                Raw::alloc_in(&heap, random_layout(&mut rng, size), (round * 13 + i) as u8)
            })
            .collect();
        blocks.extend((0..1500).map(|i| Raw::alloc_in(&heap, Layout::new::<[u64; 2]>(), i as u8)));
        blocks.shuffle(&mut rng);
        let theirs: Vec<Raw> = blocks.drain(..blocks.len() / 2).collect();
        let kept = blocks;
        let go = Barrier::new(2);
        thread::scope(|s| {
            s.spawn(|| {
                go.wait();
                for b in theirs {
                    b.free(&ctx);
                }
            });
            go.wait();
            drop(heap); // not destroyed: its live blocks stay valid
        });
        for b in &kept {
            b.check(&format_args!("{ctx}, after the drop"));
        }
        // Other first-class heaps — of this thread and of another — need fresh pages of the same
        // kinds and are destroyed: the dropped heap's segments must not be theirs.
        let again = Heap::new();
        let mine = allocate_like(&again, &kept, 0xA5);
        drop(mine);
        again.destroy();
        thread::scope(|s| {
            s.spawn(|| {
                let other = Heap::new();
                let theirs = allocate_like(&other, &kept, 0x5A);
                drop(theirs);
                other.destroy();
            });
        });
        // The default heap may adopt them: fine, the blocks stay valid.
        let global: Vec<Raw> = kept
            .iter()
            .map(|b| Raw::alloc_global(b.layout, 0x3C))
            .collect();
        for b in &kept {
            b.check(&format_args!("{ctx}, after other heaps came and went"));
        }
        for b in global {
            b.free(&ctx);
        }
        // Free the rest: half here, half from another thread.
        let mut kept = kept;
        let theirs: Vec<Raw> = kept.drain(..kept.len() / 2).collect();
        thread::scope(|s| {
            s.spawn(|| {
                for b in theirs {
                    b.dealloc_global(&ctx);
                }
            });
            for b in kept {
                b.free(&ctx);
            }
        });
    }
    shardalloc::collect(true);
}

// === 3. limits ===

#[test]
fn a_limit_refuses_growth_cleanly_and_the_heap_recovers() {
    let heap = Heap::new();
    let other = Heap::new();
    let limit = MIB;
    heap.set_limit(Some(limit));
    assert_eq!(heap.stats().limit, Some(limit));
    // Fill with 1000-byte blocks until the limit refuses a page.
    let kb = Layout::from_size_align(1000, 8).expect("layout");
    let mut blocks: Vec<Raw> = Vec::new();
    loop {
        let p = heap.alloc(kb);
        if p.is_null() {
            break;
        }
        blocks.push(Raw::adopt(p, kb, blocks.len() as u8, "heap.alloc"));
        assert!(blocks.len() < 100_000, "a 1 MiB limit let 100 MB through");
    }
    let full = heap.stats();
    println!(
        "[limit] {} blocks of 1000 B under a 1 MiB limit: {full:?}",
        blocks.len()
    );
    assert!(
        full.page_bytes <= limit,
        "page_bytes above the limit: {full:?}"
    );
    assert!(
        full.live_bytes >= limit / 2,
        "the limit refused far too early: {full:?}"
    );
    // Refused again, in every class and through every interface; nothing changes.
    for size in [1000, 8, 100, 5000, 20_000, 300_000, 2 * MIB, 8 * MIB] {
        let layout = Layout::from_size_align(size, 8).expect("layout");
        assert!(
            heap.alloc(layout).is_null(),
            "alloc({size}) beyond the limit succeeded"
        );
        assert!(
            heap.alloc_zeroed(layout).is_null(),
            "alloc_zeroed({size}) succeeded"
        );
        assert!(
            (&heap).allocate(layout).is_err(),
            "allocate({size}) succeeded"
        );
    }
    {
        let mut v: HVec<u8, &Heap> = HVec::new_in(&heap);
        assert!(
            v.try_reserve(100).is_err(),
            "Vec::try_reserve(100) beyond the limit"
        );
        assert!(
            v.try_reserve(8 * MIB).is_err(),
            "Vec::try_reserve(8 MiB) beyond the limit"
        );
        assert_eq!(v.capacity(), 0);
        let mut m: HeapMap<'_, u64, u64> = HeapMap::new_in(&heap);
        assert!(
            m.try_reserve(1000).is_err(),
            "HashMap::try_reserve beyond the limit"
        );
        // A realloc that must move fails and leaves the block alone.
        let b = &blocks[3];
        // SAFETY: a live block of `heap` allocated with `kb`; the new size is small.
        let moved = unsafe { heap.realloc(b.ptr.as_ptr(), kb, 4000) };
        assert!(moved.is_null(), "realloc beyond the limit succeeded");
        b.check(&"after a refused realloc");
    }
    assert_eq!(
        heap.stats(),
        full,
        "refused allocations changed the figures"
    );
    for b in &blocks {
        b.check(&"under the limit");
    }
    // Everything else is unaffected.
    let o = other.alloc(Layout::from_size_align(8 * MIB, 16).expect("layout"));
    assert!(!o.is_null(), "another heap is limited too");
    // SAFETY: a live block of `other`.
    unsafe { other.dealloc(o) };
    let g = vec![3u8; 8 * MIB];
    assert!(g.iter().step_by(4096).all(|&x| x == 3));
    drop(g);

    // Frees make room: the first half of the blocks (whole pages) go.
    let rest = blocks.split_off(blocks.len() / 2);
    for b in blocks {
        b.free(&"freeing under the limit");
    }
    let mut blocks = rest;
    let freed = heap.stats();
    println!("[limit] half freed: {freed:?}");
    assert!(
        freed.page_bytes < full.page_bytes,
        "no page went back: {freed:?}"
    );
    for size in [8, 100, 1000, 5000] {
        let layout = Layout::from_size_align(size, 8).expect("layout");
        blocks.push(Raw::alloc_in(&heap, layout, size as u8));
    }
    {
        let mut v: HVec<u64, &Heap> = HVec::new_in(&heap);
        v.try_reserve(1000)
            .expect("Vec::try_reserve(1000) after frees");
        v.extend(0..1000);
        assert!(v.iter().copied().eq(0..1000));
        assert!(
            v.try_reserve(4 * MIB).is_err(),
            "4 MiB more under a 1 MiB limit"
        );
        assert!(
            v.iter().copied().eq(0..1000),
            "a refused growth damaged the vector"
        );
    }
    assert!(heap.stats().page_bytes <= limit);

    // Raised: a huge block fits, two do not.
    heap.set_limit(Some(heap.stats().page_bytes + 8 * MIB));
    let eight = Layout::from_size_align(8 * MIB, 16).expect("layout");
    assert!(
        heap.alloc(Layout::from_size_align(8 * MIB + 1, 16).expect("layout"))
            .is_null(),
        "8 MiB + 1 B beyond an 8 MiB margin"
    );
    blocks.push(Raw::alloc_in(&heap, eight, 8));
    let s = heap.stats();
    assert!(
        s.page_bytes <= s.limit.expect("a limit"),
        "huge block beyond the limit: {s:?}"
    );
    assert!(
        heap.alloc(eight).is_null(),
        "a second 8 MiB block beyond the limit"
    );
    // Removed: anything goes.
    heap.set_limit(None);
    assert_eq!(heap.stats().limit, None);
    blocks.push(Raw::alloc_in(&heap, eight, 9));
    {
        let mut v: HVec<u8, &Heap> = HVec::new_in(&heap);
        v.try_reserve(32 * MIB)
            .expect("try_reserve(32 MiB) without a limit");
        let mut m: HeapMap<'_, u64, u64> = HeapMap::new_in(&heap);
        m.try_reserve(100_000)
            .expect("HashMap::try_reserve without a limit");
        m.extend((0..100_000).map(|i| (i, mix(i))));
        assert!((0..100_000).all(|i| m[&i] == mix(i)));
    }
    // Lowered below what the heap holds: nothing is freed, growth is refused, frees still work.
    heap.set_limit(Some(64 * KIB));
    let before = heap.stats();
    assert!(
        heap.alloc(Layout::from_size_align(40_000, 8).expect("layout"))
            .is_null()
    );
    assert!(heap.alloc(eight).is_null());
    for b in &blocks {
        b.check(&"after lowering the limit");
    }
    assert_eq!(heap.stats().live_blocks, before.live_blocks);
    assert_exact(&heap, &blocks, &"after lowering the limit");
    for b in blocks {
        b.free(&"after lowering the limit");
    }
    assert_eq!(heap.stats().live_blocks, 0);
    heap.destroy();
    other.destroy();
}

/// A huge block whose alignment needs padding in its segment counts that padding in
/// `page_bytes`; the limit must still cap `page_bytes`.
#[test]
fn a_limit_caps_page_bytes_of_over_aligned_huge_blocks() {
    let heap = Heap::new();
    for align in [4 * KIB, 64 * KIB, MIB, 4 * MIB] {
        heap.set_limit(Some(heap.stats().page_bytes + 4 * MIB));
        let layout = Layout::from_size_align(4 * MIB - 64 * KIB, align).expect("layout");
        let p = heap.alloc(layout);
        let s = heap.stats();
        println!("[limit, align {align}] {p:p}: {s:?}");
        if !p.is_null() {
            assert_eq!(p.addr() % align, 0);
            assert!(
                s.page_bytes <= s.limit.expect("a limit"),
                "a {layout:?} block took page_bytes {} KiB beyond the limit",
                (s.page_bytes - s.limit.expect("a limit")) / KIB
            );
        }
    }
    heap.destroy();
}

// === 4. introspection ===

#[test]
fn visit_blocks_and_stats_are_exact() {
    let test = "visit_blocks_and_stats_are_exact";
    let seed = seed(test);
    let ctx = format!("seed {seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut heap = Heap::new();
    let mut blocks: Vec<Raw> = (0..6000)
        .map(|i| {
            let size = random_size(&mut rng, false);
            Raw::alloc_in(&heap, random_layout(&mut rng, size), i as u8)
        })
        .collect();
    // Every kind: tiny and zero-size blocks, over-aligned ones, and huge blocks.
    for (size, align) in [
        (0, 1),
        (0, 8),
        (1, 1),
        (8, 8),
        (16, 16),
        (4096, 4096),
        (100, 512),
        (70_000, 8),
        (300_000, 64),
        (MIB, 16),
        (MIB + 1, 8),
        (5 * MIB, 4096),
        (2 * MIB, 8),
    ] {
        let layout = Layout::from_size_align(size, align).expect("layout");
        blocks.push(Raw::alloc_in(&heap, layout, size as u8));
    }
    // And full pages of the smallest class.
    blocks.extend((0..9000).map(|i| Raw::alloc_in(&heap, Layout::new::<u64>(), i as u8)));
    let full = assert_exact(&heap, &blocks, &ctx);
    assert_visits_exactly(&mut heap, &blocks, &ctx);
    println!("[{test}] {} blocks: {full:?}", blocks.len());

    // Free a random subset: a third here (two ways), a third from another thread.
    blocks.shuffle(&mut rng);
    let n = blocks.len();
    let theirs: Vec<Raw> = blocks.drain(..n / 3).collect();
    let local: Vec<Raw> = blocks.drain(..n / 3).collect();
    for (k, b) in local.into_iter().enumerate() {
        if k % 2 == 0 {
            b.check(&ctx);
            // SAFETY: a live block of `heap`, freed once.
            unsafe { heap.dealloc(b.ptr.as_ptr()) };
        } else {
            b.free(&ctx);
        }
    }
    thread::scope(|s| {
        s.spawn(|| {
            for b in theirs {
                b.free(&ctx);
            }
        });
    });
    let part = assert_exact(&heap, &blocks, &ctx);
    assert_visits_exactly(&mut heap, &blocks, &ctx);
    println!("[{test}] {} left: {part:?}", blocks.len());
    assert!(
        part.peak_page_bytes >= full.page_bytes,
        "{full:?} → {part:?}"
    );
    // The visitor may read the blocks: their first bytes hold their patterns.
    let fills: HashMap<usize, (u8, usize)> = blocks
        .iter()
        .map(|b| (b.addr(), (b.fill, b.layout.size())))
        .collect();
    let mut read = 0;
    heap.visit_blocks(|block, size| {
        let (fill, requested) = fills[&block.as_ptr().addr()];
        assert!(size >= requested);
        // SAFETY: a live block of at least `requested` bytes, read only.
        let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), requested.min(64)) };
        for (off, &b) in bytes.iter().enumerate() {
            assert_eq!(
                b,
                common::pattern_byte(fill, off),
                "{ctx}: visited block {block:p} byte {off}"
            );
        }
        read += 1;
    });
    assert_eq!(read, blocks.len());
    for b in &blocks {
        assert!(
            heap.contains(b.ptr.as_ptr()),
            "{ctx}: {:p} not in the heap",
            b.ptr
        );
        let last = b.ptr.as_ptr().wrapping_add(b.layout.size().max(1) - 1);
        assert!(
            heap.contains(last),
            "{ctx}: the last byte {last:p} of {:p} ({:?}, usable {}) not in the heap",
            b.ptr,
            b.layout,
            b.usable()
        );
    }
    for b in blocks {
        b.free(&ctx);
    }
    let empty = heap.stats();
    println!("[{test}] all freed: {empty:?}");
    assert_eq!((empty.live_blocks, empty.live_bytes), (0, 0));
    assert!(visited(&mut heap, &ctx).is_empty());
    assert_eq!(
        empty.peak_page_bytes,
        part.peak_page_bytes.max(full.peak_page_bytes)
    );
    heap.destroy();
}

/// `contains` is true for every byte of a block of every kind — huge blocks of any size
/// included, live or freed while their page is in use — and false just outside the heap's pages.
#[test]
fn contains_covers_every_byte_of_blocks_of_every_kind() {
    let heap = Heap::new();
    let mut misses = Vec::new();
    let mut blocks = Vec::new();
    for (size, align) in [
        (8, 8),
        (1000, 8),
        (8000, 64),
        (60_000, 8),
        (900_000, 4096),
        (2 * MIB, 8),
        (8 * MIB, 8),
        (12 * MIB, 8),
        (40 * MIB + 5, 4096),
        (3 * MIB, 8 * MIB),
    ] {
        let layout = Layout::from_size_align(size, align).expect("layout");
        let b = Raw::alloc_in(&heap, layout, size as u8);
        let step = (size / 64).max(1);
        for off in (0..size).step_by(step).chain([size - 1]) {
            let p = b.ptr.as_ptr().wrapping_add(off);
            if !heap.contains(p) {
                misses.push(format!("{layout:?}: offset {off} ({p:p})"));
                break;
            }
        }
        blocks.push(b);
    }
    // A freed block whose page stays in use (its neighbour lives) is still inside the heap.
    let neighbour = Raw::alloc_in(&heap, Layout::new::<[u64; 4]>(), 1);
    let freed = Raw::alloc_in(&heap, Layout::new::<[u64; 4]>(), 2);
    let freed_at = freed.ptr.as_ptr();
    freed.free(&"contains");
    assert!(heap.contains(freed_at), "a freed block of a page in use");
    assert!(
        misses.is_empty(),
        "bytes of live blocks not in the heap: {misses:#?}"
    );
    for b in blocks.into_iter().chain([neighbour]) {
        b.free(&"contains");
    }
    heap.destroy();
}

// === 5. realloc, alignment, zero-size ===

#[test]
fn realloc_keeps_contents_across_classes_and_into_huge_sizes() {
    let heap = Heap::new();
    let sizes = [
        1,
        8,
        24,
        100,
        1000,
        1024,
        5000,
        8192,
        40_000,
        65_536,
        300_000,
        MIB,
        3 * MIB,
        10 * MIB,
        10 * MIB + 1,
        6 * MIB,
        2 * MIB,
        200_000,
        50_000,
        1000,
        100,
        16,
        1,
    ];
    for align in [1, 8, 16, 64, 4096] {
        let mut layout = Layout::from_size_align(sizes[0], align).expect("layout");
        let mut p = heap.alloc(layout);
        let fill = align as u8;
        // SAFETY: a live block of `layout.size()` bytes.
        unsafe { fill_pattern(p, 0, layout.size(), fill) };
        for &new in &sizes[1..] {
            // SAFETY: a live block of `heap` allocated with `layout`; `new` is nonzero.
            let q = unsafe { heap.realloc(p, layout, new) };
            let ctx = format!("realloc({p:p}, {layout:?}, {new})");
            assert!(!q.is_null(), "{ctx} returned null");
            assert_eq!(q.addr() % align, 0, "{ctx} = {q:p} misaligned");
            assert!(heap.contains(q), "{ctx} = {q:p} left the heap");
            // SAFETY: `q` is live.
            let usable = unsafe { shardalloc::usable_size(q) };
            assert!(usable >= new, "{ctx}: usable size {usable} too small");
            let kept = layout.size().min(new);
            // SAFETY: `q` is live and at least `new >= kept` bytes long.
            if let Err((off, got, want)) = unsafe { check_pattern(q, 0, kept, fill) } {
                panic!("{ctx} = {q:p}: byte {off} is {got:#04x}, expected {want:#04x}");
            }
            // SAFETY: as above.
            unsafe { fill_pattern(q, kept, new, fill) };
            assert_eq!(heap.stats().live_blocks, 1, "{ctx}");
            p = q;
            layout = Layout::from_size_align(new, align).expect("layout");
        }
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
        assert_eq!(heap.stats().live_blocks, 0);
    }

    // A block of the default heap resized through the heap moves into it…
    let layout = Layout::from_size_align(100, 8).expect("layout");
    let g = Raw::alloc_global(layout, 0x42);
    // SAFETY: a live block of this allocator allocated with `layout`.
    let q = unsafe { heap.realloc(g.ptr.as_ptr(), layout, 50_000) };
    assert!(
        !q.is_null() && heap.contains(q),
        "a moved block went elsewhere"
    );
    // SAFETY: `q` is live, 50 000 bytes.
    assert_eq!(unsafe { check_pattern(q, 0, 100, 0x42) }, Ok(()));
    // (`g`'s block moved: `g` is not used again.)
    // …and a heap block resized through the global allocator moves out of it.
    let big = Layout::from_size_align(50_000, 8).expect("layout");
    // SAFETY: `q` is a live block allocated (moved) with 50 000 bytes and alignment 8.
    let r = unsafe { std::alloc::realloc(q, big, 4 * MIB) };
    assert!(
        !r.is_null() && !heap.contains(r),
        "global realloc kept the block in the heap"
    );
    // SAFETY: `r` is live, 4 MiB.
    assert_eq!(unsafe { check_pattern(r, 0, 100, 0x42) }, Ok(()));
    assert_eq!(heap.stats().live_blocks, 0);
    // SAFETY: live, with this layout.
    unsafe { std::alloc::dealloc(r, Layout::from_size_align(4 * MIB, 8).expect("layout")) };
    heap.destroy();
}

#[repr(align(4096))]
#[derive(Clone, Copy, Debug, PartialEq)]
struct PageAligned([u64; 512]);

#[test]
fn vec_growth_in_a_heap_keeps_contents_into_huge_sizes() {
    let heap = Heap::new();
    {
        let mut v: HVec<u64, &Heap> = HVec::new_in(&heap);
        let mut buffers = 0;
        let mut cap = v.capacity();
        for i in 0..3_000_000u64 {
            v.push(mix(i));
            if v.capacity() != cap {
                cap = v.capacity();
                buffers += 1;
                assert!(
                    heap.contains(v.as_ptr().cast()),
                    "Vec buffer of capacity {cap} outside"
                );
                assert_eq!(heap.stats().live_blocks, 1, "old buffers not freed");
            }
        }
        assert!(buffers > 15, "{buffers} buffers");
        assert!(
            v.iter().enumerate().all(|(i, &x)| x == mix(i as u64)),
            "after growth"
        );
        for keep in [1_000_000, 30_000, 100, 1] {
            v.truncate(keep);
            v.shrink_to_fit();
            assert!(heap.contains(v.as_ptr().cast()));
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == mix(i as u64)),
                "after shrinking to {keep}"
            );
        }
        // Over-aligned elements: every buffer 4096-aligned.
        let mut pages: HVec<PageAligned, &Heap> = HVec::new_in(&heap);
        for i in 0..700u64 {
            pages.push(PageAligned([mix(i); 512]));
            assert_eq!(
                pages.as_ptr().addr() % 4096,
                0,
                "PageAligned buffer misaligned"
            );
        }
        assert!(
            pages
                .iter()
                .enumerate()
                .all(|(i, p)| p.0.iter().all(|&x| x == mix(i as u64)))
        );
        // Bytes appended in uneven chunks.
        let mut bytes: HVec<u8, &Heap> = HVec::new_in(&heap);
        let mut n = 0usize;
        while bytes.len() < 5 * MIB {
            let chunk: Vec<u8> = (0..n % 7919).map(|k| (n + k) as u8).collect();
            bytes.extend_from_slice(&chunk);
            n += 1;
        }
        let mut off = 0;
        for m in 0..n {
            let len = m % 7919;
            assert!(
                bytes[off..off + len]
                    .iter()
                    .enumerate()
                    .all(|(k, &b)| b == (m + k) as u8),
                "chunk {m}"
            );
            off += len;
        }
        assert_eq!(heap.stats().live_blocks, 3);
    }
    assert_eq!(heap.stats().live_blocks, 0);
    heap.destroy();
}

#[test]
fn alloc_honours_alignments_up_to_4096_and_beyond() {
    let heap = Heap::new();
    let sizes = [
        1,
        7,
        8,
        9,
        15,
        16,
        17,
        31,
        33,
        63,
        64,
        65,
        100,
        255,
        256,
        257,
        1000,
        1024,
        1025,
        4095,
        4096,
        4097,
        8191,
        8192,
        8193,
        10_000,
        65_535,
        65_536,
        65_537,
        100_000,
        262_144,
        262_145,
        MIB,
        MIB + 1,
        2 * MIB + 3,
    ];
    let mut blocks = Vec::new();
    let mut aligns: Vec<usize> = (0..=12).map(|k| 1 << k).collect();
    aligns.extend([8 * KIB, 64 * KIB, 256 * KIB, MIB]);
    for &align in &aligns {
        for &size in &sizes {
            let layout = Layout::from_size_align(size, align).expect("layout");
            let b = Raw::alloc_in(&heap, layout, (size ^ align) as u8);
            assert!(
                heap.contains(b.ptr.as_ptr()),
                "{layout:?}: {:p} not in the heap",
                b.ptr
            );
            blocks.push(b);
        }
    }
    for b in &blocks {
        b.check(&"aligned blocks");
    }
    assert_exact(&heap, &blocks, &"aligned blocks");
    for b in blocks {
        b.free(&"aligned blocks");
    }
    // Zeroed allocations over dirty memory, with alignments too.
    for &align in &[8, 64, 4096] {
        for &size in &[24, 3000, 50_000, 500_000, 3 * MIB] {
            let layout = Layout::from_size_align(size, align).expect("layout");
            let dirty: Vec<*mut u8> = (0..4)
                .map(|_| {
                    let p = heap.alloc(layout);
                    // SAFETY: a live block of `size` bytes.
                    unsafe { p.write_bytes(0xEE, size) };
                    p
                })
                .collect();
            for p in dirty {
                // SAFETY: live, freed once.
                unsafe { heap.dealloc(p) };
            }
            let z = heap.alloc_zeroed(layout);
            assert!(!z.is_null() && z.addr().is_multiple_of(align));
            // SAFETY: a live block of `size` bytes.
            let zeroed = unsafe { check_zero(z, 0, size) };
            assert_eq!(zeroed, Ok(()), "alloc_zeroed({layout:?})");
            let y = (&heap).allocate_zeroed(layout).expect("allocate_zeroed");
            // SAFETY: as above.
            let zeroed = unsafe { check_zero(y.cast::<u8>().as_ptr(), 0, size) };
            assert_eq!(zeroed, Ok(()), "allocate_zeroed({layout:?})");
            // SAFETY: live blocks of `heap`.
            unsafe {
                heap.dealloc(z);
                (&heap).deallocate(y.cast(), layout);
            }
        }
    }
    // grow_zeroed keeps the old bytes and zeroes the new ones.
    let old = Layout::from_size_align(100, 8).expect("layout");
    let p = (&heap).allocate(old).expect("allocate").cast::<u8>();
    // SAFETY: 100 live bytes.
    unsafe { fill_pattern(p.as_ptr(), 0, 100, 0x77) };
    // Dirty the memory the moved blocks may land in.
    for size in [200, 5000, 300_000, 3 * MIB] {
        let junk = heap.alloc(Layout::from_size_align(size, 8).expect("layout"));
        // SAFETY: a live block of `size` bytes, then freed once.
        unsafe {
            junk.write_bytes(0xEE, size);
            heap.dealloc(junk);
        }
    }
    let mut cur = old;
    let mut p = p;
    for new_size in [200, 5000, 300_000, 3 * MIB] {
        let new = Layout::from_size_align(new_size, 8).expect("layout");
        // SAFETY: `p` is a live block of `cur`, `new` is larger.
        let q = unsafe { (&heap).grow_zeroed(p, cur, new) }
            .expect("grow_zeroed")
            .cast::<u8>();
        // SAFETY: a live block of `new_size` bytes.
        unsafe {
            assert_eq!(
                check_pattern(q.as_ptr(), 0, 100, 0x77),
                Ok(()),
                "grow_zeroed to {new_size}"
            );
            assert_eq!(
                check_zero(q.as_ptr(), 100, new_size),
                Ok(()),
                "grow_zeroed to {new_size}"
            );
        }
        p = q;
        cur = new;
    }
    // SAFETY: live, with `cur`.
    unsafe { (&heap).deallocate(p, cur) };
    assert_eq!(heap.stats().live_blocks, 0);
    heap.destroy();
}

#[test]
fn zero_size_allocations_through_the_allocator_api() {
    #[repr(align(64))]
    #[derive(Clone, Copy)]
    struct Zst64;

    let heap = Heap::new();
    {
        let mut units: HVec<(), &Heap> = HVec::new_in(&heap);
        for _ in 0..1_000_000 {
            units.push(());
        }
        assert_eq!(units.len(), 1_000_000);
        assert_eq!(units.pop(), Some(()));
        let mut z64: HVec<Zst64, &Heap> = HVec::with_capacity_in(10, &heap);
        z64.extend([Zst64; 1000]);
        assert_eq!(z64.as_ptr().addr() % 64, 0);
        let empty: HVec<u64, &Heap> = HVec::new_in(&heap);
        assert_eq!((empty.len(), empty.capacity()), (0, 0));
        let mut none: HVec<u64, &Heap> = HVec::with_capacity_in(0, &heap);
        none.shrink_to_fit();
        let unit_box = HBox::new_in((), &heap);
        let empty_box = HBox::new_in([0u64; 0], &heap);
        let z_box = HBox::new_in(Zst64, &heap);
        assert_eq!(ptr::from_ref(&*z_box).addr() % 64, 0);
        assert_eq!(
            heap.stats().live_blocks,
            0,
            "zero-size values allocated blocks"
        );
        // A vector that grows and is emptied and shrunk gives its block back.
        let mut v: HVec<u64, &Heap> = HVec::new_in(&heap);
        v.extend(0..1000);
        assert_eq!(heap.stats().live_blocks, 1);
        v.clear();
        v.shrink_to_fit();
        assert_eq!(v.capacity(), 0);
        assert_eq!(heap.stats().live_blocks, 0, "shrink to 0 kept the block");
        v.push(5);
        assert_eq!(v[0], 5);
        drop((units, z64, empty, none, unit_box, empty_box, z_box, v));
    }
    for align in [1, 8, 64, 4096, MIB] {
        let layout = Layout::from_size_align(0, align).expect("layout");
        let p = (&heap).allocate(layout).expect("zero-size allocate");
        assert_eq!(p.len(), 0);
        assert_eq!(p.cast::<u8>().as_ptr().addr() % align, 0);
        let z = (&heap)
            .allocate_zeroed(layout)
            .expect("zero-size allocate_zeroed");
        // Grown from zero size, then shrunk back to it.
        let grown_layout = Layout::from_size_align(100, align).expect("layout");
        // SAFETY: `z` was allocated with `layout` (size 0) and 100 >= 0.
        let g = unsafe { (&heap).grow(z.cast(), layout, grown_layout) }.expect("grow from 0");
        assert!(heap.contains(g.cast::<u8>().as_ptr()));
        assert_eq!(g.cast::<u8>().as_ptr().addr() % align, 0);
        // SAFETY: `g` is live with `grown_layout`; 0 <= 100.
        let s = unsafe { (&heap).shrink(g.cast(), grown_layout, layout) }.expect("shrink to 0");
        assert_eq!(s.len(), 0);
        // SAFETY: zero-size "blocks" from this allocator.
        unsafe {
            (&heap).deallocate(p.cast(), layout);
            (&heap).deallocate(s.cast(), layout);
        }
    }
    assert_eq!(heap.stats().live_blocks, 0);
    heap.destroy();
}

/// Allocates zero-size blocks with each alignment in `aligns` (plain and zeroed) and returns the
/// misaligned ones.
fn misaligned_zero_size_blocks(heap: &Heap, aligns: impl Iterator<Item = usize>) -> Vec<String> {
    let mut bad = Vec::new();
    for align in aligns {
        let layout = Layout::from_size_align(0, align).expect("layout");
        for zeroed in [false, true] {
            let p = if zeroed {
                heap.alloc_zeroed(layout)
            } else {
                heap.alloc(layout)
            };
            assert!(!p.is_null(), "alloc({layout:?}) returned null");
            assert!(
                heap.contains(p),
                "alloc({layout:?}) = {p:p} is not in the heap"
            );
            if p.addr() % align != 0 {
                bad.push(format!("{layout:?} (zeroed: {zeroed}) = {p:p}"));
            }
            // SAFETY: a live block of `heap`.
            unsafe { heap.dealloc(p) };
        }
    }
    bad
}

/// `Heap::alloc` gives zero-size layouts a real block: it must honour the alignment like any
/// other (up to 64 KiB, served from size classes).
#[test]
fn heap_alloc_of_zero_size_honours_alignments_up_to_64_kib() {
    let heap = Heap::new();
    // Dirty the 8-byte class first so that a block of it is not aligned by luck.
    let spacer = heap.alloc(Layout::new::<u64>());
    let bad = misaligned_zero_size_blocks(&heap, (0..=16).map(|k| 1 << k));
    assert!(bad.is_empty(), "misaligned zero-size blocks: {bad:#?}");
    // SAFETY: a live block of `heap`.
    unsafe { heap.dealloc(spacer) };
    heap.destroy();
}

/// Set in a child process of this binary: the test it runs.
const CHILD_VAR: &str = "SHARDALLOC_HEAPS_CHILD";

/// The same above 64 KiB (a zero-size huge block). Run in a child process (this binary re-run
/// with `--exact`), so that a crash fails this test only.
#[test]
fn heap_alloc_of_zero_size_honours_alignments_above_64_kib() {
    let test = "heap_alloc_of_zero_size_honours_alignments_above_64_kib";
    if std::env::var(CHILD_VAR).as_deref() == Ok(test) {
        let heap = Heap::new();
        let bad = misaligned_zero_size_blocks(&heap, (17..=23).map(|k| 1 << k));
        assert!(bad.is_empty(), "misaligned zero-size blocks: {bad:#?}");
        heap.destroy();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, test)
        .output()
        .expect("start the child process");
    let crashed = std::os::unix::process::ExitStatusExt::signal(&out.status).is_some();
    assert!(
        out.status.success(),
        "[{test}] the child failed ({}){}:\n{}\n{}",
        out.status,
        if crashed {
            ": Heap::alloc of a zero-size layout crashed"
        } else {
            ""
        },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// === 6. frees from anywhere ===

#[test]
fn heap_blocks_freed_through_the_global_allocator_and_free_from_any_thread() {
    let test = "heap_blocks_freed_through_the_global_allocator_and_free_from_any_thread";
    let seed = seed(test);
    let ctx = format!("seed {seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let heap = Heap::new();
    for round in 0..5 {
        let mut blocks: Vec<Raw> = (0..2000)
            .map(|i| {
                let size = random_size(&mut rng, i % 500 == 0);
                Raw::alloc_in(&heap, random_layout(&mut rng, size), i as u8)
            })
            .collect();
        blocks.shuffle(&mut rng);
        let mut quarters: Vec<Vec<Raw>> = (0..4).map(|_| Vec::new()).collect();
        for (i, b) in blocks.into_iter().enumerate() {
            quarters[i % 4].push(b);
        }
        let mut left: usize = quarters.iter().map(Vec::len).sum();
        let [q0, q1, q2, q3]: [Vec<Raw>; 4] = quarters.try_into().expect("four");
        // Owner thread: through the global allocator, then `shardalloc::free`.
        left -= q0.len();
        for b in q0 {
            b.dealloc_global(&ctx);
        }
        assert_eq!(heap.stats().live_blocks, left, "{ctx}, round {round}");
        left -= q1.len();
        for b in q1 {
            b.free(&ctx);
        }
        assert_eq!(heap.stats().live_blocks, left, "{ctx}, round {round}");
        // Another thread: both ways, while this one allocates and frees more in the heap.
        left -= q2.len() + q3.len();
        thread::scope(|s| {
            s.spawn(|| {
                for b in q2 {
                    b.dealloc_global(&ctx);
                }
                for b in q3 {
                    b.free(&ctx);
                }
            });
            for i in 0..3000 {
                let b = Raw::alloc_in(&heap, Layout::new::<[u8; 40]>(), i as u8);
                b.free(&ctx);
            }
        });
        assert_eq!(heap.stats().live_blocks, left, "{ctx}, round {round}");
        assert_eq!(left, 0);
        assert_eq!(heap.stats().live_bytes, 0);
    }
    heap.destroy();
}

// === 7. many heaps ===

#[test]
fn many_heaps_of_a_thread_stay_apart_whatever_the_teardown_order() {
    let test = "many_heaps_of_a_thread_stay_apart_whatever_the_teardown_order";
    let seed = seed(test);
    let ctx = format!("seed {seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut heaps: Vec<Option<Heap>> = (0..8).map(|_| Some(Heap::new())).collect();
    let mut blocks: Vec<Vec<Raw>> = (0..8).map(|_| Vec::new()).collect();
    let mut orphans: Vec<Raw> = Vec::new(); // blocks of heaps dropped without destroy
    let global: Vec<Raw> = (0..200)
        .map(|i| Raw::alloc_global(Layout::from_size_align(64 + i, 8).expect("layout"), i as u8))
        .collect();
    // Interleaved allocation.
    for i in 0..8000 {
        let h = rng.random_range(0..8);
        let size = random_size(&mut rng, i % 2000 == 0);
        let heap = heaps[h].as_ref().expect("live");
        blocks[h].push(Raw::alloc_in(
            heap,
            random_layout(&mut rng, size),
            (h * 31 + i) as u8,
        ));
    }
    let check_apart = |heaps: &[Option<Heap>], blocks: &[Vec<Raw>], orphans: &[Raw]| {
        for (h, list) in blocks.iter().enumerate() {
            for b in list {
                b.check(&ctx);
                for (k, heap) in heaps.iter().enumerate() {
                    if let Some(heap) = heap {
                        assert_eq!(
                            heap.contains(b.ptr.as_ptr()),
                            k == h,
                            "{ctx}: block of heap {h} vs heap {k}"
                        );
                    }
                }
            }
        }
        for b in orphans.iter().chain(&global) {
            b.check(&ctx);
            assert!(
                heaps
                    .iter()
                    .flatten()
                    .all(|heap| !heap.contains(b.ptr.as_ptr()))
            );
        }
        for (h, heap) in heaps.iter().enumerate() {
            if let Some(heap) = heap {
                assert_exact(heap, &blocks[h], &format_args!("{ctx}, heap {h}"));
            }
        }
    };
    check_apart(&heaps, &blocks, &orphans);
    // Newest, middle, oldest; destroyed and dropped.
    let mut order: Vec<usize> = vec![7, 3, 0, 5, 1, 6, 2];
    let turn = rng.random_range(0..order.len());
    order.rotate_left(turn);
    for (step, &h) in order.iter().enumerate() {
        let heap = heaps[h].take().expect("live");
        if step % 2 == 0 {
            blocks[h].clear();
            heap.destroy();
        } else {
            drop(heap);
            orphans.append(&mut blocks[h]);
        }
        // The survivors go on allocating.
        for (k, heap) in heaps.iter().enumerate() {
            if let Some(heap) = heap {
                for i in 0..100 {
                    let size = random_size(&mut rng, false);
                    blocks[k].push(Raw::alloc_in(
                        heap,
                        random_layout(&mut rng, size),
                        (k + i) as u8,
                    ));
                }
            }
        }
        check_apart(&heaps, &blocks, &orphans);
        fork_and_use(&heaps, &blocks, &orphans, &ctx);
    }
    for b in orphans.into_iter().chain(global) {
        b.free(&ctx);
    }
    let last = heaps[4].take().expect("heap 4");
    for b in std::mem::take(&mut blocks[4]) {
        b.free(&ctx);
    }
    assert_eq!(last.stats().live_blocks, 0);
    last.destroy();
}

/// Forks: the child (without panics or locks) checks the blocks, allocates from every live heap
/// and from the default heap, frees some blocks, and exits with a status the parent checks.
fn fork_and_use(heaps: &[Option<Heap>], blocks: &[Vec<Raw>], orphans: &[Raw], ctx: &str) {
    // SAFETY: the child only uses the allocator, reads memory and calls `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut code = 0;
        if orphans.iter().any(|b| b.damage().is_some()) {
            code = 13;
        }
        for (h, heap) in heaps.iter().enumerate() {
            if blocks[h].iter().any(|b| b.damage().is_some()) {
                code = 10;
            }
            if let Some(heap) = heap {
                for size in [16, 1000, 20_000, 300_000, 3 * MIB] {
                    let layout = Layout::from_size_align(size, 16).expect("layout");
                    let p = heap.alloc(layout);
                    if p.is_null() || !heap.contains(p) {
                        code = 11;
                        continue;
                    }
                    // SAFETY: a live block of `size` bytes, freed once.
                    unsafe {
                        p.write_bytes(0xCD, size);
                        shardalloc::free(p);
                    }
                }
                if let Some(b) = blocks[h].first() {
                    // SAFETY: live in the child's copy; the parent keeps its own.
                    unsafe { shardalloc::free(b.ptr.as_ptr()) };
                }
            }
        }
        let layout = Layout::from_size_align(5000, 8).expect("layout");
        // SAFETY: nonzero size; freed once.
        unsafe {
            let p = std::alloc::alloc(layout);
            if p.is_null() {
                code = 12;
            } else {
                std::alloc::dealloc(p, layout);
            }
        }
        // SAFETY: `_exit` has no preconditions.
        unsafe { libc::_exit(code) };
    }
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        if r == pid {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            // SAFETY: our child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &raw mut status, 0);
            }
            panic!("{ctx}: the forked child hung");
        }
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{ctx}: the forked child failed (status {status:#x}: exit {}, signal {})",
        libc::WEXITSTATUS(status),
        libc::WTERMSIG(status)
    );
}

#[test]
fn more_heaps_than_registry_slots_work_and_go_away() {
    // The registry has 1024 slots; heaps beyond them are unregistered but must work the same.
    let heaps: Vec<Heap> = (0..1100).map(|_| Heap::new()).collect();
    let blocks: Vec<Raw> = heaps
        .iter()
        .enumerate()
        .map(|(i, h)| {
            Raw::alloc_in(
                h,
                Layout::from_size_align(24 + i % 200, 8).expect("layout"),
                i as u8,
            )
        })
        .collect();
    for (i, (h, b)) in heaps.iter().zip(&blocks).enumerate() {
        b.check(&format_args!("heap {i}"));
        assert!(h.contains(b.ptr.as_ptr()));
        assert_eq!(h.stats().live_blocks, 1, "heap {i}");
    }
    drop(blocks);
    for (i, h) in heaps.into_iter().enumerate() {
        if i % 3 == 0 {
            drop(h);
        } else {
            h.destroy();
        }
    }
    shardalloc::collect(true);
}

// === 8. thread exit ===

thread_local! {
    static KEPT_HEAP: RefCell<Option<Heap>> = const { RefCell::new(None) };
}

/// Destroys its heap when dropped (at thread exit, as a thread-local).
struct DestroyOnDrop(Option<Heap>);

impl Drop for DestroyOnDrop {
    fn drop(&mut self) {
        if let Some(heap) = self.0.take() {
            heap.destroy();
        }
    }
}

thread_local! {
    static DOOMED_HEAP: RefCell<DestroyOnDrop> = const { RefCell::new(DestroyOnDrop(None)) };
}

#[test]
fn heaps_in_thread_locals_are_dropped_or_destroyed_at_thread_exit() {
    for round in 0..20 {
        let ctx = format!("round {round}");
        let blocks: Vec<Raw> = thread::spawn(move || {
            let kept = Heap::new();
            let doomed = Heap::new();
            let blocks: Vec<Raw> = (0..500)
                .map(|i| {
                    Raw::alloc_in(
                        &kept,
                        Layout::from_size_align(8 + i * 37 % 9000, 8).expect("layout"),
                        i as u8,
                    )
                })
                .collect();
            let huge = Raw::alloc_in(
                &kept,
                Layout::from_size_align(2 * MIB, 8).expect("layout"),
                7,
            );
            for i in 0..500 {
                // Blocks of the doomed heap: gone with it, never handed out.
                Raw::alloc_in(
                    &doomed,
                    Layout::from_size_align(8 + i * 53 % 9000, 8).expect("layout"),
                    1,
                );
            }
            // The default heap too, so its teardown runs after the thread-locals'.
            let global = vec![9u8; 100_000];
            KEPT_HEAP.with(|h| *h.borrow_mut() = Some(kept));
            DOOMED_HEAP.with(|h| h.borrow_mut().0 = Some(doomed));
            drop(global);
            let mut blocks = blocks;
            blocks.push(huge);
            blocks
        })
        .join()
        .expect("thread");
        for b in &blocks {
            b.check(&ctx);
        }
        // Other heaps come and go, then the blocks are freed here.
        let h = Heap::new();
        let again = allocate_like(&h, &blocks, 3);
        drop(again);
        h.destroy();
        for b in blocks {
            b.free(&ctx);
        }
    }
    shardalloc::collect(true);
}

/// Review defect 8: `shardalloc::stats()` called from inside a `visit_blocks` callback (which
/// holds the visited heap's lock) counts that heap too, instead of waiting on its own lock and
/// leaving the heap out.
#[test]
fn stats_inside_visit_blocks_counts_the_visited_heap() {
    const BLOCK: usize = 64 * 1024;
    const COUNT: usize = 512; // 32 MiB live in the visited heap
    let mut heap = Heap::new();
    let layout = Layout::from_size_align(BLOCK, 8).unwrap();
    let blocks: Vec<*mut u8> = (0..COUNT).map(|_| heap.alloc(layout)).collect();
    assert!(blocks.iter().all(|b| !b.is_null()));
    let mut inside = None;
    heap.visit_blocks(|_, _| {
        if inside.is_none() {
            inside = Some(shardalloc::stats().live);
        }
    });
    let inside = inside.expect("the heap has blocks to visit");
    assert!(
        inside >= COUNT * BLOCK,
        "stats() inside visit_blocks left the visited heap out: live {inside} < {}",
        COUNT * BLOCK
    );
    heap.destroy();
}
