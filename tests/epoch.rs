//! A `crossbeam-epoch` workload under `ShardAlloc` as the global allocator. Deferred destruction
//! frees memory on whichever thread collects the garbage, usually not the one that allocated it,
//! and garbage left in the bags of exited threads is freed later by live ones.
//!
//! * A lock-free Treiber stack shared by several threads: nodes (with payloads of mixed sizes and
//!   alignments) are pushed and popped, popped nodes go to `guard.defer_destroy`; short-lived
//!   threads join in and exit with garbage still pending. Every value pushed is popped exactly
//!   once, every payload is intact when read and when destroyed, and every node is destroyed.
//! * A shared `Atomic` slot swapped by writers (the old value deferred) while readers check the
//!   value they see.
//!
//! Randomized; replay with `SHARDALLOC_SEED=<seed> cargo test --test epoch <name> -- --exact`.
//! `SHARDALLOC_TEST_SCALE=<k>` multiplies the work.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_epoch::{Atomic, Collector, Guard, LocalHandle, Owned};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use common::Block;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

/// Creation and destruction counts for one test.
struct Counters {
    created: AtomicUsize,
    destroyed: AtomicUsize,
    /// Payloads destroyed on a thread other than the one that created them.
    destroyed_elsewhere: AtomicUsize,
}

impl Counters {
    const fn new() -> Counters {
        Counters {
            created: AtomicUsize::new(0),
            destroyed: AtomicUsize::new(0),
            destroyed_elsewhere: AtomicUsize::new(0),
        }
    }
}

thread_local! {
    /// A number naming the current thread (assigned by the tests).
    static WHO: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// A value whose block carries a fill pattern derived from its id; it checks the pattern when it
/// is read and when it is destroyed.
struct Payload {
    id: u64,
    creator: usize,
    seed: u64,
    block: Block,
    counters: &'static Counters,
}

impl Payload {
    fn new(id: u64, rng: &mut SmallRng, seed: u64, counters: &'static Counters) -> Payload {
        let size = match rng.random_range(0..100u32) {
            0..=79 => rng.random_range(1..=256),
            80..=97 => rng.random_range(257..=64 * 1024),
            _ => rng.random_range(64 * 1024 + 1..=512 * 1024),
        };
        let align = 1 << rng.random_range(0..=7);
        counters.created.fetch_add(1, Ordering::Relaxed);
        Payload {
            id,
            creator: WHO.get(),
            seed,
            block: Block::new(size, align, id as u8, seed),
            counters,
        }
    }

    #[track_caller]
    fn check(&self, what: &str) {
        if let Err(e) = self.block.verify() {
            panic!("seed {}: {what} payload {}: {e}", self.seed, self.id);
        }
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        self.check("destroying");
        self.counters.destroyed.fetch_add(1, Ordering::Relaxed);
        if WHO.get() != self.creator {
            self.counters
                .destroyed_elsewhere
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Node {
    payload: Payload,
    next: Atomic<Node>,
}

/// A Treiber stack.
struct Stack {
    head: Atomic<Node>,
}

impl Stack {
    fn push(&self, payload: Payload, guard: &Guard) {
        let mut node = Owned::new(Node {
            payload,
            next: Atomic::null(),
        });
        loop {
            let head = self.head.load(Ordering::Acquire, guard);
            node.next.store(head, Ordering::Relaxed);
            // Release publishes the node's contents to the Acquire load of a popper.
            match self.head.compare_exchange(
                head,
                node,
                Ordering::Release,
                Ordering::Relaxed,
                guard,
            ) {
                Ok(_) => return,
                Err(e) => node = e.new,
            }
        }
    }

    /// Pops a node, checks its payload and returns its id; the node is destroyed later.
    fn pop(&self, guard: &Guard) -> Option<u64> {
        loop {
            let head = self.head.load(Ordering::Acquire, guard);
            // SAFETY: `head` was loaded under `guard`, so the node it points to (if any) is not
            // destroyed before the guard is dropped.
            let node = unsafe { head.as_ref() }?;
            let next = node.next.load(Ordering::Relaxed, guard);
            if self
                .head
                .compare_exchange(head, next, Ordering::AcqRel, Ordering::Relaxed, guard)
                .is_ok()
            {
                node.payload.check("popped");
                let id = node.payload.id;
                // SAFETY: the node is unlinked by the successful exchange, so no new reference to
                // it can be made; threads pinned now may still read it, and the epoch scheme
                // destroys it only after they unpin. Each node is unlinked (and deferred) once.
                unsafe { guard.defer_destroy(head) };
                return Some(id);
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: `&mut self` means no other thread uses the stack; the nodes still linked are
        // owned by it and freed once here.
        unsafe {
            let guard = crossbeam_epoch::unprotected();
            let mut cur = self.head.load(Ordering::Relaxed, guard);
            while !cur.is_null() {
                let next = cur.deref().next.load(Ordering::Relaxed, guard);
                drop(cur.into_owned());
                cur = next;
            }
        }
    }
}

/// Pins and flushes until all created payloads are destroyed, or fails after 20 s.
fn collect_all(handle: &LocalHandle, counters: &Counters, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let guard = handle.pin();
        guard.flush();
        drop(guard);
        let created = counters.created.load(Ordering::Relaxed);
        let destroyed = counters.destroyed.load(Ordering::Relaxed);
        if destroyed == created {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: only {destroyed} of {created} payloads destroyed after 20 s of collection"
        );
        thread::yield_now();
    }
}

#[test]
fn treiber_stack_with_deferred_destruction() {
    static COUNTERS: Counters = Counters::new();
    let seed = common::seed("treiber_stack_with_deferred_destruction");
    let scale = common::scale();
    let collector = Collector::new();
    let stack = Stack {
        head: Atomic::null(),
    };
    let workers = 6;
    let rounds = 1000 * scale;
    let next_id = AtomicUsize::new(0);
    let popped: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let exiting_threads = AtomicUsize::new(0);

    thread::scope(|s| {
        for w in 0..workers {
            let (collector, stack, next_id, popped) = (&collector, &stack, &next_id, &popped);
            s.spawn(move || {
                WHO.set(w);
                let handle = collector.register();
                let mut rng = SmallRng::seed_from_u64(seed ^ ((w as u64 + 1) * 0x9E37_79B9));
                let mut mine = Vec::new();
                for _ in 0..rounds {
                    let guard = handle.pin();
                    for _ in 0..rng.random_range(0..8) {
                        let id = next_id.fetch_add(1, Ordering::Relaxed) as u64;
                        stack.push(Payload::new(id, &mut rng, seed, &COUNTERS), &guard);
                    }
                    for _ in 0..rng.random_range(0..8) {
                        if let Some(id) = stack.pop(&guard) {
                            mine.push(id);
                        }
                    }
                }
                popped.lock().unwrap().extend(mine);
            });
        }
        // Short-lived threads that push, pop and exit with their garbage still pending.
        let (collector, stack, next_id, popped) = (&collector, &stack, &next_id, &popped);
        let exiting_threads = &exiting_threads;
        s.spawn(move || {
            for k in 0..40 * scale {
                thread::scope(|s2| {
                    for j in 0..4 {
                        s2.spawn(move || {
                            WHO.set(1000 + 4 * k + j);
                            let handle = collector.register();
                            let mut rng = SmallRng::seed_from_u64(seed ^ (1000 + 4 * k + j) as u64);
                            let guard = handle.pin();
                            let mut mine = Vec::new();
                            for _ in 0..30 {
                                if let Some(id) = stack.pop(&guard) {
                                    mine.push(id);
                                }
                            }
                            for _ in 0..10 {
                                let id = next_id.fetch_add(1, Ordering::Relaxed) as u64;
                                stack.push(Payload::new(id, &mut rng, seed, &COUNTERS), &guard);
                            }
                            popped.lock().unwrap().extend(mine);
                            exiting_threads.fetch_add(1, Ordering::Relaxed);
                            // Exit without flushing: the popped nodes wait in this thread's bag,
                            // which moves to the global queue when the handle is dropped.
                        });
                    }
                });
            }
        });
    });

    // Drain the rest on the main thread.
    WHO.set(usize::MAX - 1);
    let handle = collector.register();
    let mut all = std::mem::take(&mut *popped.lock().unwrap());
    {
        let guard = handle.pin();
        while let Some(id) = stack.pop(&guard) {
            all.push(id);
        }
    }
    let pushed = next_id.load(Ordering::Relaxed);
    assert_eq!(
        all.len(),
        pushed,
        "seed {seed}: popped {} of {pushed}",
        all.len()
    );
    let distinct: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        pushed,
        "seed {seed}: a value was popped twice"
    );
    assert!(
        distinct.iter().all(|&id| (id as usize) < pushed),
        "seed {seed}"
    );

    collect_all(&handle, &COUNTERS, seed);
    let elsewhere = COUNTERS.destroyed_elsewhere.load(Ordering::Relaxed);
    println!(
        "[treiber_stack_with_deferred_destruction] {pushed} nodes, {} short-lived threads, {elsewhere} \
         destroyed on another thread than their creator",
        exiting_threads.load(Ordering::Relaxed)
    );
    assert!(
        elsewhere > 0,
        "seed {seed}: no payload was freed on another thread"
    );
    drop(handle);
    drop(stack);
    drop(collector);
}

#[test]
fn swapped_atomic_slot() {
    static COUNTERS: Counters = Counters::new();
    let seed = common::seed("swapped_atomic_slot");
    let scale = common::scale();
    let collector = Collector::new();
    let slot: Atomic<Payload> = Atomic::null();
    let writers = 4;
    let readers = 3;
    let swaps = 6000 * scale;
    let next_id = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let start = Barrier::new(writers + readers);
    thread::scope(|s| {
        for w in 0..writers {
            let (collector, slot, next_id, done, start) =
                (&collector, &slot, &next_id, &done, &start);
            s.spawn(move || {
                WHO.set(w);
                let handle = collector.register();
                let mut rng = SmallRng::seed_from_u64(seed ^ ((w as u64 + 7) * 0x9E37_79B9));
                start.wait();
                for _ in 0..swaps {
                    let guard = handle.pin();
                    let id = next_id.fetch_add(1, Ordering::Relaxed) as u64;
                    let new = Owned::new(Payload::new(id, &mut rng, seed, &COUNTERS));
                    // AcqRel: Release publishes the new payload, Acquire sees the old one's.
                    let old = slot.swap(new, Ordering::AcqRel, &guard);
                    // SAFETY: `old` was loaded under `guard`.
                    if let Some(p) = unsafe { old.as_ref() } {
                        p.check("swapped out");
                        // SAFETY: the swap unlinked `old`; only threads pinned now can still see
                        // it, and it is deferred exactly once (by the thread that swapped it out).
                        unsafe { guard.defer_destroy(old) };
                    }
                }
                done.fetch_add(1, Ordering::Release);
            });
        }
        for r in 0..readers {
            let (collector, slot, done, start) = (&collector, &slot, &done, &start);
            s.spawn(move || {
                WHO.set(100 + r);
                let handle = collector.register();
                start.wait();
                let mut seen = 0usize;
                while done.load(Ordering::Acquire) < writers {
                    let guard = handle.pin();
                    let cur = slot.load(Ordering::Acquire, &guard);
                    // SAFETY: `cur` was loaded under `guard`.
                    if let Some(p) = unsafe { cur.as_ref() } {
                        p.check("read");
                        seen += 1;
                    }
                }
                seen
            });
        }
    });
    WHO.set(usize::MAX - 1);
    let handle = collector.register();
    {
        let guard = handle.pin();
        let last = slot.swap(crossbeam_epoch::Shared::null(), Ordering::AcqRel, &guard);
        assert!(!last.is_null(), "seed {seed}");
        // SAFETY: the swap unlinked the last value; deferred once.
        unsafe { guard.defer_destroy(last) };
    }
    collect_all(&handle, &COUNTERS, seed);
    assert_eq!(
        COUNTERS.created.load(Ordering::Relaxed),
        writers * swaps,
        "seed {seed}"
    );
    println!(
        "[swapped_atomic_slot] {} swaps, {} payloads destroyed on another thread than their creator",
        writers * swaps,
        COUNTERS.destroyed_elsewhere.load(Ordering::Relaxed)
    );
}
