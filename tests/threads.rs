//! Threads under `ShardAlloc` as the global allocator: many threads allocating, resizing and freeing
//! with contents checks; producers sending blocks over `mpsc` channels to consumers that verify,
//! resize and free them (cross-thread frees and reallocs); a ring where every thread frees the
//! previous thread's blocks; blocks that outlive the thread that allocated them, freed and
//! resized by other threads while those threads allocate (abandoned memory must stay intact and
//! must not be handed out again while live); and thread-local destructors that allocate and free
//! during thread exit.
//!
//! Every block carries an offset-dependent fill pattern over its whole usable size, checked before
//! it is freed or resized. Randomized tests print their seed; replay with
//! `SHARDALLOC_SEED=<seed> cargo test --test threads <name> -- --exact`.
//! `SHARDALLOC_TEST_SCALE=<k>` multiplies the work.

mod common;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Barrier, Mutex};
use std::thread;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use common::Block;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Mostly small, some medium, and `large_per_mille` ‰ large blocks (up to 2 MiB).
fn pick_size_with(rng: &mut SmallRng, large_per_mille: u32) -> usize {
    if rng.random_range(0..1000) < large_per_mille {
        return rng.random_range(256 * KIB + 1..=2 * MIB);
    }
    match rng.random_range(0..100u32) {
        0..=69 => rng.random_range(1..=512),
        70..=91 => rng.random_range(513..=16 * KIB),
        _ => rng.random_range(16 * KIB + 1..=256 * KIB),
    }
}

fn pick_size(rng: &mut SmallRng) -> usize {
    pick_size_with(rng, 20)
}

/// Mostly 8, some up to 4 KiB, a few up to 64 KiB.
fn pick_align(rng: &mut SmallRng) -> usize {
    match rng.random_range(0..100u32) {
        0..=84 => 8,
        85..=94 => 1 << rng.random_range(0..=12),
        _ => 1 << rng.random_range(13..=16),
    }
}

fn random_block(rng: &mut SmallRng, seed: u64) -> Block {
    let size = pick_size(rng);
    let align = pick_align(rng);
    Block::new(size, align, rng.random(), seed)
}

/// A block with few large sizes, for tests that keep thousands live.
fn random_block_lean(rng: &mut SmallRng, seed: u64) -> Block {
    let size = pick_size_with(rng, 5);
    let align = pick_align(rng);
    Block::new(size, align, rng.random(), seed)
}

/// A per-thread seed derived from the test seed.
fn thread_seed(seed: u64, t: usize) -> u64 {
    seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[track_caller]
fn verify(b: &Block, seed: u64, who: &str) {
    if let Err(e) = b.verify() {
        panic!("seed {seed}, {who}: {e}");
    }
}

#[test]
fn many_threads_alloc_free() {
    let seed = common::seed("many_threads_alloc_free");
    common::tip("many_threads_alloc_free");
    let threads = 12;
    let ops = 15_000 * common::scale();
    thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(thread_seed(seed, t));
                let mut live: Vec<Block> = Vec::new();
                for i in 0..ops {
                    let who = format!("thread {t}, op {i}");
                    let r = rng.random_range(0..100u32);
                    if live.is_empty() || (r < 45 && live.len() < 300) {
                        live.push(random_block(&mut rng, seed));
                    } else if r < 60 {
                        let j = rng.random_range(0..live.len());
                        let new_size = pick_size(&mut rng);
                        live[j].resize(new_size, seed);
                    } else {
                        let j = rng.random_range(0..live.len());
                        let b = live.swap_remove(j);
                        verify(&b, seed, &who);
                    }
                    if i % 2000 == 1999 {
                        for b in &live {
                            verify(b, seed, &who);
                        }
                    }
                }
                for b in &live {
                    verify(b, seed, &format!("thread {t}, end"));
                }
            });
        }
    });
}

#[test]
fn producers_consumers_over_channels() {
    let seed = common::seed("producers_consumers_over_channels");
    let producers = 4;
    let consumers = 4;
    let per_producer = 6_000 * common::scale();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..consumers)
        .map(|_| mpsc::channel::<(usize, usize, Block)>())
        .unzip();
    let (received, bytes_in) = thread::scope(|s| {
        let mut consumer_handles = Vec::new();
        for (c, rx) in rxs.into_iter().enumerate() {
            consumer_handles.push(s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(thread_seed(seed, 100 + c));
                // Hold a window of blocks so that frees lag behind allocation.
                let mut window: VecDeque<(usize, usize, Block)> = VecDeque::new();
                let mut count = 0usize;
                let mut bytes = 0usize;
                for (p, i, mut b) in rx {
                    count += 1;
                    bytes += b.size();
                    let who = format!("consumer {c}, block {i} of producer {p}");
                    verify(&b, seed, &who);
                    if rng.random_bool(0.25) {
                        // Resize a block that another thread allocated.
                        let new_size = pick_size(&mut rng);
                        b.resize(new_size, seed);
                    }
                    window.push_back((p, i, b));
                    let limit = rng.random_range(0..200);
                    while window.len() > limit {
                        let (p, i, b) = window.pop_front().unwrap();
                        verify(
                            &b,
                            seed,
                            &format!("consumer {c}, block {i} of producer {p}"),
                        );
                    }
                }
                for (p, i, b) in &window {
                    verify(b, seed, &format!("consumer {c}, block {i} of producer {p}"));
                }
                (count, bytes)
            }));
        }
        let mut producer_handles = Vec::new();
        for p in 0..producers {
            let txs = txs.clone();
            producer_handles.push(s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(thread_seed(seed, p));
                let mut bytes = 0usize;
                // Blocks the producer frees itself, interleaved with the ones it sends.
                let mut own: Vec<Block> = Vec::new();
                for i in 0..per_producer {
                    let b = random_block(&mut rng, seed);
                    bytes += b.size();
                    let c = rng.random_range(0..txs.len());
                    txs[c].send((p, i, b)).expect("consumer alive");
                    if rng.random_bool(0.3) {
                        own.push(random_block(&mut rng, seed));
                        if own.len() > 50 {
                            let b = own.swap_remove(rng.random_range(0..own.len()));
                            verify(&b, seed, &format!("producer {p}, own block"));
                        }
                    }
                }
                bytes
            }));
        }
        drop(txs);
        let bytes_out: usize = producer_handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        let mut received = 0;
        let mut bytes_in = 0;
        for h in consumer_handles {
            let (n, b) = h.join().unwrap();
            received += n;
            bytes_in += b;
        }
        assert_eq!(
            bytes_in, bytes_out,
            "seed {seed}: bytes sent and received differ"
        );
        (received, bytes_in)
    });
    assert_eq!(received, producers * per_producer, "seed {seed}");
    println!("[producers_consumers_over_channels] {received} blocks, {bytes_in} bytes");
}

#[test]
fn ring_frees_previous_threads_blocks() {
    let seed = common::seed("ring_frees_previous_threads_blocks");
    let n = 8;
    let rounds = 250 * common::scale();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel::<Vec<Block>>()).unzip();
    // Thread i sends to thread i + 1 and receives from thread i - 1.
    let mut txs: VecDeque<_> = txs.into();
    txs.rotate_left(1);
    thread::scope(|s| {
        for (t, (tx, rx)) in txs.into_iter().zip(rxs).enumerate() {
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(thread_seed(seed, t));
                for round in 0..rounds {
                    let batch: Vec<Block> = (0..rng.random_range(1..=24))
                        .map(|_| random_block(&mut rng, seed))
                        .collect();
                    tx.send(batch).expect("next thread alive");
                    let got = rx.recv().expect("previous thread alive");
                    for b in &got {
                        verify(b, seed, &format!("thread {t}, round {round}"));
                    }
                    drop(got);
                }
                drop(tx);
                // The previous thread sent exactly `rounds` batches.
                assert!(
                    rx.recv().is_err(),
                    "seed {seed}: thread {t} got an extra batch"
                );
            });
        }
    });
}

/// Blocks outlive the threads that allocated them. New threads allocate while those blocks are
/// live (the allocator may reclaim the dead threads' memory, but must not hand out a live block
/// again), then free and resize them; the main thread frees the rest.
#[test]
fn blocks_freed_after_owner_exit() {
    let seed = common::seed("blocks_freed_after_owner_exit");
    let scale = common::scale();
    // Phase 1: threads allocate, free half of their blocks themselves, and exit with the rest.
    let mut orphans: Vec<Block> = Vec::new();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(thread_seed(seed, t));
                let mut mine: Vec<Block> = (0..1500 * scale)
                    .map(|_| random_block_lean(&mut rng, seed))
                    .collect();
                let mut keep = Vec::new();
                for (i, b) in mine.drain(..).enumerate() {
                    if i % 2 == 0 {
                        keep.push(b);
                    } else {
                        verify(&b, seed, &format!("owner thread {t}"));
                    }
                }
                keep
            })
        })
        .collect();
    for h in handles {
        orphans.extend(h.join().unwrap());
    }
    // Threads that allocate a single block and exit at once.
    for t in 0..64 {
        let b = thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(thread_seed(seed, 1000 + t));
            random_block_lean(&mut rng, seed)
        })
        .join()
        .unwrap();
        orphans.push(b);
    }
    let mut ranges: Vec<(usize, usize)> = orphans
        .iter()
        .map(|b| (b.addr(), b.addr() + b.usable()))
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "seed {seed}: live blocks overlap: {w:?}");
    }
    let ranges = &ranges;

    // Phase 2: new threads allocate while all orphans are live, then free/resize a share each.
    let workers = 4;
    let mut shares: Vec<Vec<Block>> = (0..=workers).map(|_| Vec::new()).collect();
    for (i, b) in orphans.into_iter().enumerate() {
        shares[i % (workers + 1)].push(b);
    }
    let main_share = shares.pop().unwrap();
    let barrier = &Barrier::new(workers);
    thread::scope(|s| {
        for (w, share) in shares.into_iter().enumerate() {
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(thread_seed(seed, 2000 + w));
                let mut fresh: Vec<Block> = Vec::new();
                for _ in 0..3000 * scale {
                    let b = random_block_lean(&mut rng, seed);
                    let (a, e) = (b.addr(), b.addr() + b.usable());
                    let k = ranges.partition_point(|r| r.1 <= a);
                    if let Some(&r) = ranges.get(k) {
                        assert!(
                            e <= r.0,
                            "seed {seed}: worker {w}: new block {a:#x}..{e:#x} overlaps the live \
                             block {:#x}..{:#x} of an exited thread",
                            r.0,
                            r.1
                        );
                    }
                    if rng.random_bool(0.3) {
                        drop(b);
                    } else {
                        fresh.push(b);
                    }
                }
                barrier.wait();
                for (i, mut b) in share.into_iter().enumerate() {
                    verify(&b, seed, &format!("worker {w}, orphan {i}"));
                    if i % 4 == 0 {
                        let new_size = pick_size(&mut rng);
                        b.resize(new_size, seed);
                        verify(&b, seed, &format!("worker {w}, resized orphan {i}"));
                    }
                }
                for b in &fresh {
                    verify(b, seed, &format!("worker {w}, own block"));
                }
            });
        }
    });
    for (i, b) in main_share.iter().enumerate() {
        verify(b, seed, &format!("main thread, orphan {i}"));
    }
}

thread_local! {
    static AT_EXIT: RefCell<Option<ExitWork>> = const { RefCell::new(None) };
}

/// Blocks that a thread-local destructor verifies and frees at thread exit; it also allocates
/// and frees there, and leaves one block to the main thread.
struct ExitWork {
    seed: u64,
    rng_seed: u64,
    blocks: Vec<Block>,
    handoff: &'static Mutex<Vec<Block>>,
}

impl Drop for ExitWork {
    fn drop(&mut self) {
        for b in &self.blocks {
            verify(b, self.seed, "thread-local destructor");
        }
        self.blocks.clear();
        let mut rng = SmallRng::seed_from_u64(self.rng_seed);
        let temp: Vec<Block> = (0..20).map(|_| random_block(&mut rng, self.seed)).collect();
        for b in &temp {
            verify(b, self.seed, "thread-local destructor, temporary block");
        }
        drop(temp);
        let b = random_block(&mut rng, self.seed);
        self.handoff.lock().unwrap().push(b);
    }
}

#[test]
fn thread_local_destructors_allocate_and_free() {
    static HANDOFF: Mutex<Vec<Block>> = Mutex::new(Vec::new());
    let seed = common::seed("thread_local_destructors_allocate_and_free");
    let threads = 64;
    for round in 0..4 {
        let handles: Vec<_> = (0..threads / 4)
            .map(|t| {
                thread::spawn(move || {
                    let rng_seed = thread_seed(seed, round * 100 + t);
                    let mut rng = SmallRng::seed_from_u64(rng_seed);
                    let blocks = (0..50).map(|_| random_block(&mut rng, seed)).collect();
                    AT_EXIT.with(|w| {
                        *w.borrow_mut() = Some(ExitWork {
                            seed,
                            rng_seed,
                            blocks,
                            handoff: &HANDOFF,
                        });
                    });
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
    let left = std::mem::take(&mut *HANDOFF.lock().unwrap());
    assert_eq!(
        left.len(),
        threads,
        "seed {seed}: every destructor ran once"
    );
    for b in &left {
        verify(b, seed, "main thread, block left by a destructor");
    }
}
