//! The per-request pattern of first-class heaps: allocate N objects of mixed
//! sizes, touch them, then drop them all — with a `shardalloc::Heap` dropped
//! wholesale by `destroy`, against freeing every object one by one with
//! ShardAlloc, System (glibc) and mimalloc, and against `bumpalo` (an arena:
//! `reset` frees everything, but it cannot free one object alone).
//!
//! One process, interleaved: each round runs every variant once in a rotating
//! order; times are per request; the table prints each variant's median and
//! its median ratio to `Heap + destroy` (ratios taken within a round, so the
//! noise of this 2-core machine hits all variants alike).
//!
//! Usage: `cargo run --release -p shardalloc-bench --bin request [-- ROUNDS]`
//! (`REQUEST_OBJECTS` sets N, default 10 000; 200 requests a round).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Instant;

use bumpalo::Bump;
use shardalloc::{Heap, ShardAlloc};

/// Requests per round and variant.
const REQUESTS: usize = 200;

/// Object sizes: mostly small nodes and strings, some buffers (a request's
/// mix); picked in turn by a fixed xorshift so every variant sees the same.
const SIZES: [usize; 16] = [
    16, 24, 32, 32, 48, 64, 64, 96, 128, 128, 256, 384, 512, 1024, 2048, 4096,
];

fn layouts(count: usize) -> Vec<Layout> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let size = SIZES[(state % SIZES.len() as u64) as usize];
            Layout::from_size_align(size, 8).expect("valid layout")
        })
        .collect()
}

/// Writes the object's first and last word (a constructor's work, and what
/// makes every page resident).
///
/// # Safety
/// `ptr` is a live block of `layout`.
#[inline]
unsafe fn touch(ptr: *mut u8, layout: Layout) {
    // SAFETY: the block spans `layout.size() ≥ 16` bytes, 8-aligned.
    unsafe {
        ptr.cast::<u64>().write(layout.size() as u64);
        ptr.add(layout.size() - 8).cast::<u64>().write(1);
    }
}

/// One request with a global-style allocator: allocate all, free all.
fn individual<A: GlobalAlloc>(alloc: &A, layouts: &[Layout], ptrs: &mut Vec<*mut u8>) {
    ptrs.clear();
    for &layout in layouts {
        // SAFETY: nonzero size.
        let p = unsafe { alloc.alloc(layout) };
        assert!(!p.is_null(), "out of memory");
        // SAFETY: a fresh block of `layout`.
        unsafe { touch(p, layout) };
        ptrs.push(p);
    }
    black_box(&ptrs);
    for (&p, &layout) in ptrs.iter().zip(layouts) {
        // SAFETY: a live block of `layout`.
        unsafe { alloc.dealloc(p, layout) };
    }
}

/// One request in a first-class heap, dropped wholesale.
fn heap_destroy(layouts: &[Layout], ptrs: &mut Vec<*mut u8>) {
    let heap = Heap::new();
    ptrs.clear();
    for &layout in layouts {
        let p = heap.alloc(layout);
        assert!(!p.is_null(), "out of memory");
        // SAFETY: a fresh block of `layout`.
        unsafe { touch(p, layout) };
        ptrs.push(p);
    }
    black_box(&ptrs);
    heap.destroy();
}

/// One request in a bump arena, reset wholesale (the arena is reused, as a
/// server would reuse it between requests).
fn bump_reset(bump: &mut Bump, layouts: &[Layout], ptrs: &mut Vec<*mut u8>) {
    ptrs.clear();
    for &layout in layouts {
        let p = bump.alloc_layout(layout).as_ptr();
        // SAFETY: a fresh block of `layout`.
        unsafe { touch(p, layout) };
        ptrs.push(p);
    }
    black_box(&ptrs);
    bump.reset();
}

const VARIANTS: [&str; 5] = [
    "Heap + destroy",
    "ShardAlloc frees",
    "System frees",
    "mimalloc frees",
    "bumpalo reset",
];

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let objects: usize = std::env::var("REQUEST_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let layouts = layouts(objects);
    let bytes: usize = layouts.iter().map(|l| l.size()).sum();
    println!(
        "per-request pattern: {objects} objects ({} KiB) allocated, touched, dropped; \
         {REQUESTS} requests per variant and round, {rounds} rounds",
        bytes >> 10
    );
    let mut ptrs = Vec::with_capacity(objects);
    let mut bump = Bump::new();
    // ns per request, per variant, per round.
    let mut times = vec![Vec::new(); VARIANTS.len()];
    for round in 0..rounds + 1 {
        for k in 0..VARIANTS.len() {
            let variant = (round + k) % VARIANTS.len();
            let start = Instant::now();
            for _ in 0..REQUESTS {
                match variant {
                    0 => heap_destroy(&layouts, &mut ptrs),
                    1 => individual(&ShardAlloc, &layouts, &mut ptrs),
                    2 => individual(&System, &layouts, &mut ptrs),
                    3 => individual(&mimalloc::MiMalloc, &layouts, &mut ptrs),
                    _ => bump_reset(&mut bump, &layouts, &mut ptrs),
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / REQUESTS as f64;
            // Round 0 warms every allocator up and is not counted.
            if round > 0 {
                times[variant].push(ns);
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{:18} {:>12} {:>14} {:>16}",
        "variant", "µs/request", "ns/object", "× Heap+destroy"
    );
    for (variant, name) in VARIANTS.iter().enumerate() {
        let ratios: Vec<f64> = times[variant]
            .iter()
            .zip(&times[0])
            .map(|(t, base)| t / base)
            .collect();
        let t = median(times[variant].clone());
        println!(
            "{name:18} {:>12.1} {:>14.1} {:>15.2}x",
            t / 1000.0,
            t / objects as f64,
            median(ratios)
        );
    }
}
