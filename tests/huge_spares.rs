//! Freed huge blocks are spares that the next huge block reuses without page faults
//! (issue 12, point 4): a request larger than every spare is built from the spares' memory,
//! moved with its page tables (`stats().moved`), and what a smaller request leaves of a spare
//! stays a spare of its own. Its own test binary: the warm budget and the counters are
//! process-wide, and other tests' memory would make the figures noisy.
//!
//! Run: `cargo test --release --test huge_spares -- --nocapture`.

mod common;

use common::Block;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const MIB: usize = 1 << 20;

/// The tests of this binary one at a time: the warm budget is process-wide, and one test's
/// spares would push another's out.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether the test of spare reshaping `test` runs here; prints why not. Every build reshapes
/// its spares, secure builds too (they move a spare's guard page: docs/design.md, §6).
fn reshaping_runs(test: &str) -> bool {
    if shardalloc::options::reset_delay_ms() == 0 {
        println!("[{test}] skipping: SHARDALLOC_RESET_DELAY_MS=0 keeps no spares");
        return false;
    }
    true
}

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Start from nothing warm: what an earlier test left would count in the budget.
    shardalloc::collect(true);
    guard
}

/// Minor page faults of the calling thread so far.
fn thread_minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: a valid out-pointer; RUSAGE_THREAD is Linux's per-thread usage.
    let done = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(done, 0, "getrusage(RUSAGE_THREAD)");
    // SAFETY: filled in by the successful call above.
    unsafe { usage.assume_init() }.ru_minflt
}

/// Writes one byte per 4 KiB page of `[ptr, ptr + len)`, the way a program's first pass over
/// a buffer does; returns the minor faults that took.
fn touch_pages(ptr: *mut u8, len: usize) -> i64 {
    let before = thread_minor_faults();
    for offset in (0..len).step_by(4096) {
        // SAFETY: inside a live block of `len` bytes (caller).
        unsafe { ptr.add(offset).write_volatile(0xA5) };
    }
    thread_minor_faults() - before
}

/// Two freed 6 MiB blocks, then a zeroed 12 MiB request, larger than either: its memory is
/// theirs, moved, so writing all of it takes no page fault, and it reads as zeros.
#[test]
fn a_larger_huge_block_is_built_from_spares_without_faults() {
    let _one = one_at_a_time();
    if !reshaping_runs("a_larger_huge_block_is_built_from_spares_without_faults") {
        return;
    }
    let heap = shardalloc::Heap::new();
    let layout = |size| std::alloc::Layout::from_size_align(size, 16).expect("layout");
    let a = heap.alloc(layout(6 * MIB));
    let b = heap.alloc(layout(6 * MIB));
    assert!(!a.is_null() && !b.is_null(), "6 MiB allocations failed");
    touch_pages(a, 6 * MIB);
    touch_pages(b, 6 * MIB);
    // SAFETY: live blocks of `heap`, each freed once.
    unsafe {
        heap.dealloc(a);
        heap.dealloc(b);
    }
    let moved = shardalloc::stats().moved;
    // Zeroed: the moved memory holds the freed blocks' bytes, which must not show.
    let c = heap.alloc_zeroed(layout(12 * MIB));
    assert!(!c.is_null(), "12 MiB allocation failed");
    // SAFETY: a live block of ours, 12 MiB of it requested zeroed.
    let zeroed = unsafe { std::slice::from_raw_parts(c, 12 * MIB) };
    assert!(
        zeroed.iter().all(|&x| x == 0),
        "a zeroed block built from spares holds their old bytes"
    );
    // SAFETY: a live block of ours.
    let len = unsafe { shardalloc::usable_size(c) };
    let moved = shardalloc::stats().moved - moved;
    let faults = touch_pages(c, len);
    println!(
        "12 MiB block {c:p} (usable {len}): {moved} bytes moved in, {faults} faults to write it"
    );
    assert!(
        moved >= 12 * MIB,
        "the 12 MiB block was not built from the two 6 MiB spares: {moved} bytes moved"
    );
    assert!(
        faults <= 1,
        "writing a block built from resident spares took {faults} page faults"
    );
    // The block is sound memory end to end, and the heap accounts for it.
    // SAFETY: the block is ours, `len` bytes long.
    unsafe { c.write_bytes(0x5a, len) };
    // SAFETY: as above.
    let bytes = unsafe { std::slice::from_raw_parts(c, len) };
    assert!(bytes.iter().all(|&x| x == 0x5a));
    assert!(heap.stats().live_bytes >= 12 * MIB);
    drop(heap);
}

/// malloc-large's pattern, randomized: six slots of 1–8 MiB blocks, each replaced by a new one
/// of another size, every block filled with its own pattern at both ends and checked when it
/// is freed. Spares are split and gathered all the time; no two live blocks may overlap and
/// no byte may change under its owner. Then the faults: after the first round, new blocks are
/// made of spares, so the thread faults in far less than it writes.
#[test]
fn huge_blocks_replaced_at_random_stay_intact_and_reuse_memory() {
    let _one = one_at_a_time();
    let seed = common::seed("huge_blocks_replaced_at_random_stay_intact_and_reuse_memory");
    let mut rng = SmallRng::seed_from_u64(seed);
    let steps = 300 * common::scale();
    let new_block = |rng: &mut SmallRng, fill: u8| {
        let size = rng.random_range(MIB / 4096..=8 * MIB / 4096) * 4096;
        Block::new_sparse(size, 16, fill, seed)
    };
    let mut slots: Vec<Block> = (0..6).map(|i| new_block(&mut rng, i as u8)).collect();
    let faults_before = thread_minor_faults();
    let mut written = 0usize;
    for step in 0..steps {
        let i = rng.random_range(0..slots.len());
        if let Err(e) = slots[i].verify() {
            panic!("seed {seed}, step {step}: {e}");
        }
        slots[i] = new_block(&mut rng, step as u8);
        written += slots[i].usable().min(2 * common::SPARSE_EDGE);
        for (j, other) in slots.iter().enumerate() {
            let (x, y) = (&slots[i], other);
            assert!(
                i == j || x.addr() + x.usable() <= y.addr() || y.addr() + y.usable() <= x.addr(),
                "seed {seed}, step {step}: blocks {:#x}+{} and {:#x}+{} overlap",
                x.addr(),
                x.usable(),
                y.addr(),
                y.usable()
            );
        }
    }
    for (i, block) in slots.iter().enumerate() {
        if let Err(e) = block.verify() {
            panic!("seed {seed}, at the end, slot {i}: {e}");
        }
    }
    let faults = thread_minor_faults() - faults_before;
    let s = shardalloc::stats();
    println!(
        "seed {seed}: {steps} replacements, {} MiB of pattern written, {faults} faults, {} MiB \
         moved, {} MiB reset",
        written / MIB,
        s.moved / MIB,
        s.reset / MIB
    );
    if shardalloc::options::reset_delay_ms() > 0 {
        assert!(s.moved > 0, "seed {seed}: no spare was ever gathered");
    }
}

/// A block of `layout` from the global allocator with every 4 KiB page written (a program's
/// first pass over a new buffer).
fn written_block(layout: std::alloc::Layout) -> *mut u8 {
    // SAFETY: the layouts of these tests are non-zero.
    let p = unsafe { std::alloc::alloc(layout) };
    assert!(!p.is_null(), "alloc({layout:?})");
    touch_pages(p, layout.size());
    p
}

/// Writes a fresh 6 MiB block from the global allocator on a new thread; returns the faults.
fn faults_of_a_new_threads_6_mib_block() -> i64 {
    let layout = std::alloc::Layout::from_size_align(6 * MIB, 16).expect("layout");
    std::thread::spawn(move || {
        // SAFETY: a non-zero layout; the block is written, then freed once.
        unsafe {
            let p = std::alloc::alloc(layout);
            assert!(!p.is_null());
            let faults = touch_pages(p, 6 * MIB);
            std::alloc::dealloc(p, layout);
            faults
        }
    })
    .join()
    .expect("the measuring thread")
}

/// A destroyed `Heap` hands its spare to the process's pool, and another thread's 6 MiB block
/// is that memory (no fault to write it), not a fresh mapping.
#[test]
fn a_destroyed_heaps_huge_spare_serves_another_thread() {
    let _one = one_at_a_time();
    if !reshaping_runs("a_destroyed_heaps_huge_spare_serves_another_thread") {
        return;
    }
    let layout = std::alloc::Layout::from_size_align(6 * MIB, 16).expect("layout");
    let heap = shardalloc::Heap::new();
    let p = heap.alloc(layout);
    assert!(!p.is_null());
    touch_pages(p, 6 * MIB);
    // SAFETY: a live block of `heap`, freed once.
    unsafe { heap.dealloc(p) };
    drop(heap);
    let pooled = shardalloc::stats().cached_segments;
    let faults = faults_of_a_new_threads_6_mib_block();
    println!("{pooled} segments cached or pooled; the new thread's block took {faults} faults");
    assert!(pooled >= 1, "the destroyed heap's spare was not pooled");
    assert!(
        faults <= 1,
        "the new thread's 6 MiB block took {faults} faults: not the pooled spare's memory"
    );
}

/// A thread frees a 6 MiB block and exits: its heap is parked (or, if it cannot be, its spare
/// goes to the pool), and the next thread's 6 MiB block is that memory.
#[test]
fn an_exited_threads_huge_spare_serves_another_thread() {
    let _one = one_at_a_time();
    if !reshaping_runs("an_exited_threads_huge_spare_serves_another_thread") {
        return;
    }
    let layout = std::alloc::Layout::from_size_align(6 * MIB, 16).expect("layout");
    std::thread::spawn(move || {
        let p = written_block(layout);
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { std::alloc::dealloc(p, layout) };
    })
    .join()
    .expect("the first thread");
    let s = shardalloc::stats();
    let faults = faults_of_a_new_threads_6_mib_block();
    println!(
        "{} heaps parked, {} segments cached or pooled; the next thread's block took {faults} \
         faults",
        s.parked_heaps, s.cached_segments
    );
    assert!(
        faults <= 1,
        "the next thread's 6 MiB block took {faults} faults: not the exited thread's spare"
    );
}

/// A huge block that outlives the thread that allocated it, freed by another thread, joins the
/// process's pool warm instead of being unmapped: the next thread's 6 MiB block is that memory.
#[test]
fn a_huge_block_freed_after_its_owner_exited_serves_another_thread() {
    let _one = one_at_a_time();
    if !reshaping_runs("a_huge_block_freed_after_its_owner_exited_serves_another_thread") {
        return;
    }
    let layout = std::alloc::Layout::from_size_align(6 * MIB, 16).expect("layout");
    let address = std::thread::spawn(move || written_block(layout).expose_provenance())
        .join()
        .expect("the allocating thread");
    let before = shardalloc::stats();
    // SAFETY: the block the exited thread allocated with `layout`, freed once, here.
    unsafe { std::alloc::dealloc(std::ptr::with_exposed_provenance_mut(address), layout) };
    let after = shardalloc::stats();
    let faults = faults_of_a_new_threads_6_mib_block();
    println!(
        "segments cached or pooled: {} before the free, {} after; munmap calls {} -> {}; the \
         next thread's block took {faults} faults",
        before.cached_segments, after.cached_segments, before.munmap_calls, after.munmap_calls
    );
    assert!(
        faults <= 1,
        "the next thread's 6 MiB block took {faults} faults: the freed block's memory went back"
    );
}

/// A huge block freed by another thread while its owner lives keeps its memory for the owner:
/// the owner's next huge block of the same size is that memory, written without faults (its
/// body went back to the OS at the remote free before, and the owner faulted it in again).
#[test]
fn a_huge_block_freed_by_another_thread_stays_warm_for_its_owner() {
    let _one = one_at_a_time();
    if !reshaping_runs("a_huge_block_freed_by_another_thread_stays_warm_for_its_owner") {
        return;
    }
    let layout = std::alloc::Layout::from_size_align(6 * MIB, 16).expect("layout");
    let (to_main, from_owner) = std::sync::mpsc::channel::<usize>();
    let (to_owner, from_main) = std::sync::mpsc::channel::<()>();
    let owner = std::thread::spawn(move || {
        // SAFETY: non-zero layouts; the first block is handed to the main thread, which frees
        // it; the second is written and freed here.
        unsafe {
            to_main
                .send(written_block(layout).expose_provenance())
                .expect("main waits");
            from_main.recv().expect("main freed the block");
            let q = std::alloc::alloc(layout);
            assert!(!q.is_null());
            let faults = touch_pages(q, 6 * MIB);
            std::alloc::dealloc(q, layout);
            faults
        }
    });
    let address = from_owner.recv().expect("the owner's block");
    // SAFETY: the owner's block, allocated with `layout`, freed once, here.
    unsafe { std::alloc::dealloc(std::ptr::with_exposed_provenance_mut(address), layout) };
    to_owner.send(()).expect("the owner waits");
    let faults = owner.join().expect("the owner");
    println!("the owner's next 6 MiB block took {faults} faults");
    assert!(
        faults <= 1,
        "the owner's next 6 MiB block took {faults} faults: the remote free gave its memory back"
    );
}

/// ... and if the owner goes quiet, that memory still goes back with no call: the purge thread
/// wakes for it, its reaper frees the block for the quiet owner and pools the segment, and the
/// pool gives it back after the decay time (before the owner kept it, the remote free itself
/// gave it back at once).
#[test]
fn a_quiet_owners_remotely_freed_huge_block_goes_back_with_no_call() {
    let _one = one_at_a_time();
    if !reshaping_runs("a_quiet_owners_remotely_freed_huge_block_goes_back_with_no_call")
        || !shardalloc::options::purge_thread()
    {
        return;
    }
    let layout = std::alloc::Layout::from_size_align(16 * MIB, 16).expect("layout");
    let (to_main, from_owner) = std::sync::mpsc::channel::<usize>();
    let (to_owner, from_main) = std::sync::mpsc::channel::<()>();
    let owner = std::thread::spawn(move || {
        to_main
            .send(written_block(layout).expose_provenance())
            .expect("main waits");
        // Alive and quiet until the main thread has seen the memory go back (or given up).
        from_main.recv().expect("main is done");
    });
    let address = from_owner.recv().expect("the owner's block");
    let resident = || shardalloc::stats().resident.expect("/proc/self/statm");
    let before = resident();
    // SAFETY: the owner's block, allocated with `layout`, freed once, here.
    unsafe { std::alloc::dealloc(std::ptr::with_exposed_provenance_mut(address), layout) };
    let start = std::time::Instant::now();
    let mut now = resident();
    while before.saturating_sub(now) < 12 * MIB && start.elapsed().as_millis() < 2_000 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        now = resident();
    }
    to_owner.send(()).expect("the owner waits");
    owner.join().expect("the owner");
    println!(
        "resident {} MiB before the free, {} MiB {} ms after",
        before / MIB,
        now / MIB,
        start.elapsed().as_millis()
    );
    assert!(
        before.saturating_sub(now) >= 12 * MIB,
        "the quiet owner's 16 MiB block freed by another thread still resident after 2 s: \
         {} MiB before, {} MiB after",
        before / MIB,
        now / MIB
    );
}

/// Waits (at most 2 s) until the process's pool or segment cache holds something: the purge
/// thread's reaper has pooled a quiet heap's spare. Returns the milliseconds waited.
fn wait_until_pooled() -> u128 {
    let start = std::time::Instant::now();
    while shardalloc::stats().cached_segments == 0 && start.elapsed().as_millis() < 2_000 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    start.elapsed().as_millis()
}

/// A thread that stays alive but quiet: `work` runs on it, then it waits until `done` is
/// dropped or sent to.
fn quiet_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> (T, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (to_main, from_thread) = std::sync::mpsc::channel::<T>();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        to_main.send(work()).expect("main waits");
        let _ = wait.recv();
    });
    let value = from_thread.recv().expect("the quiet thread's work");
    (value, done, handle)
}

/// A huge block freed by another thread while its owner lives, the owner then quiet: the
/// reaper frees it for the owner and pools its segment, so another thread's 6 MiB block is
/// that memory (no fault to write it), not a fresh mapping, while the owner still lives.
#[test]
fn a_quiet_owners_remotely_freed_huge_block_serves_another_thread() {
    let _one = one_at_a_time();
    if !reshaping_runs("a_quiet_owners_remotely_freed_huge_block_serves_another_thread")
        || !shardalloc::options::purge_thread()
    {
        return;
    }
    let layout = std::alloc::Layout::from_size_align(6 * MIB, 16).expect("layout");
    let (address, done, owner) = quiet_thread(move || written_block(layout).expose_provenance());
    // SAFETY: the owner's block, allocated with `layout`, freed once, here.
    unsafe { std::alloc::dealloc(std::ptr::with_exposed_provenance_mut(address), layout) };
    let waited = wait_until_pooled();
    let faults = faults_of_a_new_threads_6_mib_block();
    drop(done);
    owner.join().expect("the owner");
    println!("pooled after {waited} ms; another thread's 6 MiB block took {faults} faults");
    assert!(
        faults <= 1,
        "another thread's 6 MiB block took {faults} faults: the quiet owner's freed block was \
         not pooled"
    );
}

/// A quiet thread's own spare (a huge block it freed itself) is pooled by the reaper too:
/// another thread's 6 MiB block is that memory.
#[test]
fn a_quiet_threads_huge_spare_serves_another_thread() {
    let _one = one_at_a_time();
    if !reshaping_runs("a_quiet_threads_huge_spare_serves_another_thread")
        || !shardalloc::options::purge_thread()
    {
        return;
    }
    let layout = std::alloc::Layout::from_size_align(6 * MIB, 16).expect("layout");
    let ((), done, owner) = quiet_thread(move || {
        let p = written_block(layout);
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { std::alloc::dealloc(p, layout) };
    });
    let waited = wait_until_pooled();
    let faults = faults_of_a_new_threads_6_mib_block();
    drop(done);
    owner.join().expect("the quiet thread");
    println!("pooled after {waited} ms; another thread's 6 MiB block took {faults} faults");
    assert!(
        faults <= 1,
        "another thread's 6 MiB block took {faults} faults: the quiet thread's spare was not \
         pooled"
    );
}
