//! Shared helpers for the benchmark binaries: the allocators under test and the allocation
//! patterns they are measured with, plus the workload suite ([`workloads`]), which runs with the
//! allocator under test installed as the global allocator instead.
//!
//! Every pattern is written once, generic over [`GlobalAlloc`], and monomorphised per
//! allocator, so `benches/micro.rs` (criterion, wall-clock time) and `src/bin/pairs.rs`
//! (callgrind, instruction counts) run the same code against each allocator. The allocators
//! are called directly through their `GlobalAlloc` methods; none of them is installed as the
//! process's `#[global_allocator]`, so the harness's own allocations (criterion, channels,
//! `Vec`s) go to the system allocator and do not disturb the allocators under test.
//!
//! Block sizes are passed as runtime values (the pattern functions are `#[inline(never)]`), so
//! an allocator that is inlined into the caller cannot constant-fold the size class; this is
//! the `Vec`-growth case rather than the `Box<T>` case.

use std::alloc::{GlobalAlloc, Layout, System, handle_alloc_error};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use shardalloc::ShardAlloc;

pub mod workloads;

/// The names the allocators are reported under, in the order [`for_each_allocator`] visits
/// them. The first is the allocator under development, the others are the references.
///
/// `rusty_alloc` is `rusty_alloc_api::RustyAlloc`, the `GlobalAlloc` of the pure-Rust mimalloc
/// remake (crates `rusty_alloc` and `rusty_alloc-api` 2.4).
pub const ALLOCATOR_NAMES: [&str; 5] = [
    "ShardAlloc",
    "System",
    "mimalloc",
    "jemalloc",
    "rusty_alloc",
];

/// Whether this is the hardened build (`--features secure`: `shardalloc/secure` and
/// `mimalloc/secure`). Cargo unifies features, so the secure allocators are separate binaries,
/// built into `target/secure` by `benches/callgrind.sh` and `scripts/bench.sh --secure`, where
/// they are reported as `ShardAlloc-secure` and `mimalloc-secure`.
pub const SECURE: bool = cfg!(feature = "secure");

/// The name `allocator` (one of [`ALLOCATOR_NAMES`]) is reported under in this build: with a
/// `-secure` suffix for the two allocators the `secure` feature hardens.
pub fn report_name(allocator: &'static str) -> &'static str {
    match (SECURE, allocator) {
        (true, "ShardAlloc") => "ShardAlloc-secure",
        (true, "mimalloc") => "mimalloc-secure",
        _ => allocator,
    }
}

/// Alignment used for every block in the patterns: the alignment of `u64`/`usize`, which is
/// what most Rust heap allocations (`Box` of a struct, `Vec<u64>`, `String` headers) ask for.
pub const BLOCK_ALIGN: usize = 8;

/// Something that can be run once per allocator, with the allocator's concrete type.
///
/// Closures cannot be generic, so the benchmark binaries implement this trait instead; the
/// method is monomorphised per allocator and calls the allocator without dynamic dispatch.
pub trait Visitor {
    /// Called with the allocator's report name and a `'static` instance of it.
    fn visit<A: GlobalAlloc + Sync + 'static>(&mut self, name: &'static str, alloc: &'static A);
}

/// Calls `v` once for each allocator in [`ALLOCATOR_NAMES`], in that order.
pub fn for_each_allocator(v: &mut impl Visitor) {
    for name in ALLOCATOR_NAMES {
        visit_by_name(name, v);
    }
}

/// Calls `v` with the allocator called `name` (one of [`ALLOCATOR_NAMES`], compared ASCII
/// case-insensitively). Returns `false`, without calling `v`, for an unknown name.
pub fn visit_by_name(name: &str, v: &mut impl Visitor) -> bool {
    if name.eq_ignore_ascii_case("ShardAlloc") {
        v.visit("ShardAlloc", &ShardAlloc);
    } else if name.eq_ignore_ascii_case("System") {
        v.visit("System", &System);
    } else if name.eq_ignore_ascii_case("mimalloc") {
        v.visit("mimalloc", &mimalloc::MiMalloc);
    } else if name.eq_ignore_ascii_case("jemalloc") {
        v.visit("jemalloc", &tikv_jemallocator::Jemalloc);
    } else if name.eq_ignore_ascii_case("rusty_alloc") {
        v.visit("rusty_alloc", &rusty_alloc_api::RustyAlloc);
    } else {
        return false;
    }
    true
}

/// A layout the patterns may allocate: non-zero size, so `GlobalAlloc::alloc` may be called
/// with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLayout(Layout);

impl BlockLayout {
    /// A layout of `size` bytes aligned to [`BLOCK_ALIGN`]; `None` if `size` is zero or too
    /// large for a `Layout`.
    pub fn new(size: usize) -> Option<Self> {
        if size == 0 {
            return None;
        }
        Layout::from_size_align(size, BLOCK_ALIGN).ok().map(Self)
    }

    /// The underlying layout.
    pub fn layout(self) -> Layout {
        self.0
    }
}

/// Allocates one block, aborting through [`handle_alloc_error`] if the allocator returns null.
#[inline(always)]
fn alloc_block<A: GlobalAlloc>(alloc: &A, layout: BlockLayout) -> NonNull<u8> {
    // SAFETY: `BlockLayout` guarantees a non-zero size, the only precondition of `alloc`.
    let p = unsafe { alloc.alloc(layout.0) };
    match NonNull::new(p) {
        Some(p) => p,
        None => handle_alloc_error(layout.0),
    }
}

/// Frees one block.
///
/// # Safety
///
/// `p` must have been returned by `alloc_block(alloc, layout)` with this very allocator and
/// layout, and not freed since.
#[inline(always)]
unsafe fn free_block<A: GlobalAlloc>(alloc: &A, p: NonNull<u8>, layout: BlockLayout) {
    // SAFETY: forwarded from the caller: `p` is live and was allocated by `alloc` with `layout`.
    unsafe { alloc.dealloc(p.as_ptr(), layout.0) }
}

/// The tight pattern: `iters` times, allocate one block and free it again at once.
///
/// With a LIFO free list this returns the same block every time; it measures the fast path
/// and nothing else.
#[inline(never)]
pub fn pairs<A: GlobalAlloc>(alloc: &A, layout: BlockLayout, iters: u64) {
    let layout = black_box(layout);
    for _ in 0..iters {
        let p = black_box(alloc_block(alloc, layout));
        // SAFETY: `p` was just allocated by `alloc` with `layout` and is freed once.
        unsafe { free_block(alloc, p, layout) };
    }
}

/// Number of live blocks kept by [`Ring`].
pub const RING_LEN: usize = 64;

/// The ring pattern: [`RING_LEN`] blocks stay live; each step allocates a new block, then
/// frees the oldest one and puts the new one in its slot (FIFO order).
///
/// Blocks live for 64 steps, so the allocator cycles through 65 distinct blocks instead of
/// handing the same one back, and a step's free is never of the block it just allocated.
pub struct Ring<'a, A: GlobalAlloc> {
    alloc: &'a A,
    layout: BlockLayout,
    slots: [NonNull<u8>; RING_LEN],
    next: usize,
}

impl<'a, A: GlobalAlloc> Ring<'a, A> {
    /// Allocates the [`RING_LEN`] initial blocks.
    pub fn new(alloc: &'a A, layout: BlockLayout) -> Self {
        let slots = std::array::from_fn(|_| alloc_block(alloc, layout));
        Self {
            alloc,
            layout,
            slots,
            next: 0,
        }
    }

    /// Runs `iters` steps of the pattern.
    #[inline(never)]
    pub fn run(&mut self, iters: u64) {
        let layout = black_box(self.layout);
        let mut next = self.next;
        for _ in 0..iters {
            let fresh = black_box(alloc_block(self.alloc, layout));
            let slot = &mut self.slots[next];
            let old = std::mem::replace(slot, fresh);
            // SAFETY: every slot holds a live block allocated by `self.alloc` with
            // `self.layout` (== `layout`); `old` has just been removed from its slot, so it
            // is freed exactly once.
            unsafe { free_block(self.alloc, old, layout) };
            next = (next + 1) % RING_LEN;
        }
        self.next = next;
    }
}

impl<A: GlobalAlloc> Drop for Ring<'_, A> {
    fn drop(&mut self) {
        for &p in &self.slots {
            // SAFETY: each slot holds a distinct live block allocated by `self.alloc` with
            // `self.layout`; the ring is being dropped, so none is used again.
            unsafe { free_block(self.alloc, p, self.layout) };
        }
    }
}

/// Blocks per batch handed from the producer to the consumer in [`CrossThread`].
pub const XTHREAD_BATCH: usize = 1000;

/// Batches that may be in flight at once in [`CrossThread`] (bounds its live memory).
const XTHREAD_POOL: usize = 4;

/// A deterministic mix of block sizes for the cross-thread benchmark: 256 layouts, about
/// 60% of 8–64 B, 30% of 80–512 B and 10% of 576–1024 B (mean about 180 B).
pub fn mixed_layouts() -> Vec<BlockLayout> {
    let mut x: u32 = 0x9E37_79B9;
    (0..256)
        .map(|_| {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let r = x as usize;
            let size = match (r >> 8) % 100 {
                0..60 => 8 * (1 + r % 8),
                60..90 => 64 + 16 * (1 + r % 28),
                _ => 512 + 64 * (1 + r % 8),
            };
            BlockLayout::new(size).expect("sizes in the mix are small and non-zero")
        })
        .collect()
}

/// A block in flight from the producer to the consumer.
struct Block {
    ptr: NonNull<u8>,
    layout: BlockLayout,
}

// SAFETY: a `Block` is an owned allocation, like a `Box`; the producer gives up all access to
// it when it sends the batch, and the allocators under test are `Sync`, so the consumer may
// free it from its own thread.
unsafe impl Send for Block {}

/// Set on the last batch of a job: when the job started and the CPU time the producer spent
/// on it.
#[derive(Clone, Copy)]
struct JobEnd {
    start: Instant,
    producer_cpu: Duration,
}

/// A message from the producer to the consumer.
struct Batch {
    blocks: Vec<Block>,
    /// `Some` on the last batch of a job.
    end: Option<JobEnd>,
}

/// The times of one [`CrossThread::run`].
#[derive(Clone, Copy, Debug)]
pub struct CrossThreadTimes {
    /// Wall-clock time from the producer starting the job until the consumer has freed its
    /// last block.
    pub wall: Duration,
    /// CPU time of the producer thread during the job (allocating and sending batches).
    pub producer_cpu: Duration,
    /// CPU time of the consumer thread since the end of the previous job (freeing blocks and
    /// receiving batches; waiting blocked costs none).
    pub consumer_cpu: Duration,
}

impl CrossThreadTimes {
    /// Producer plus consumer CPU time: the work done for the job, whatever the scheduler
    /// did in the meantime.
    pub fn cpu(&self) -> Duration {
        self.producer_cpu + self.consumer_cpu
    }
}

/// CPU time consumed so far by the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` for the duration of the call, and
    // `CLOCK_THREAD_CPUTIME_ID` is a clock Linux always provides.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    let secs = u64::try_from(ts.tv_sec).expect("CPU time is non-negative");
    let nanos = u32::try_from(ts.tv_nsec).expect("tv_nsec is below 1e9");
    Duration::new(secs, nanos)
}

/// Pins the calling thread to CPU `cpu` if the process may run there; returns whether it did.
///
/// Best effort: on a machine with fewer CPUs, or if `sched_setaffinity` fails, the thread
/// stays where the scheduler puts it.
pub fn pin_to_cpu(cpu: usize) -> bool {
    // `cpu_set_t` holds `CPU_SETSIZE` bits; the CPU_* helpers index it without a size check.
    if cpu >= usize::try_from(libc::CPU_SETSIZE).unwrap_or(0) {
        return false;
    }
    // SAFETY: `cpu_set_t` is a plain bit array, for which all zeroes is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid, writable `cpu_set_t` of `size` bytes; pid 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, size, &raw mut set) } != 0 {
        return false;
    }
    // SAFETY: `cpu < CPU_SETSIZE` (checked above), so the bit is inside `set`.
    if !unsafe { libc::CPU_ISSET(cpu, &set) } {
        return false;
    }
    // SAFETY: `set` is a valid `cpu_set_t` and `cpu < CPU_SETSIZE` (checked above).
    unsafe {
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
    }
    // SAFETY: `set` is a valid `cpu_set_t` of `size` bytes holding one CPU this process may
    // use; pid 0 is this thread.
    unsafe { libc::sched_setaffinity(0, size, &raw const set) == 0 }
}

/// The cross-thread free pattern: a long-lived producer thread allocates blocks in batches of
/// [`XTHREAD_BATCH`] and sends each batch to a long-lived consumer thread, which frees them.
///
/// [`CrossThread::run`] moves `n` blocks through this pipeline and returns both the wall-clock
/// time from the producer starting the job until the consumer has freed the last block, and
/// the CPU time each thread spent on it. Producer and consumer overlap (up to four batches are
/// in flight), so wall-clock time is the pipeline's throughput: roughly the slower of
/// "allocate, including reclaiming blocks that other threads freed" and "free a block owned
/// by another thread", and it suffers whenever the scheduler does not give both threads a
/// core. The summed CPU time is the total work, and is steadier on a loaded machine.
///
/// The producer is pinned to CPU 0 and the consumer to CPU 1 (when the process may use
/// both), so blocks always cross between cores: left to the scheduler, the two threads
/// sometimes share one core, where handing a block over costs no cache-line transfer, and
/// the CPU time per block then varies several-fold from run to run.
///
/// Threads are created in [`CrossThread::new`], outside any timing; batch `Vec`s are
/// recycled, so the steady state allocates nothing from the harness side.
pub struct CrossThread {
    jobs: Option<Sender<u64>>,
    done: Receiver<CrossThreadTimes>,
    threads: Vec<JoinHandle<()>>,
}

impl CrossThread {
    /// Starts the producer and consumer threads for `alloc`; the producer cycles through
    /// `layouts` (which must not be empty).
    pub fn new<A: GlobalAlloc + Sync + 'static>(
        alloc: &'static A,
        layouts: Vec<BlockLayout>,
    ) -> Self {
        assert!(!layouts.is_empty(), "CrossThread needs at least one layout");
        let (jobs_tx, jobs_rx) = channel::<u64>();
        let (done_tx, done_rx) = channel::<CrossThreadTimes>();
        let (batch_tx, batch_rx) = sync_channel::<Batch>(XTHREAD_POOL);
        let (pool_tx, pool_rx) = sync_channel::<Vec<Block>>(XTHREAD_POOL);
        for _ in 0..XTHREAD_POOL {
            pool_tx
                .send(Vec::with_capacity(XTHREAD_BATCH))
                .expect("pool receiver is alive");
        }
        let producer = std::thread::Builder::new()
            .name("xthread-producer".into())
            .spawn(move || {
                pin_to_cpu(0);
                produce(alloc, &layouts, &jobs_rx, &pool_rx, &batch_tx);
            })
            .expect("spawn producer");
        let consumer = std::thread::Builder::new()
            .name("xthread-consumer".into())
            .spawn(move || {
                pin_to_cpu(1);
                consume(alloc, &batch_rx, &pool_tx, &done_tx);
            })
            .expect("spawn consumer");
        Self {
            jobs: Some(jobs_tx),
            done: done_rx,
            threads: vec![producer, consumer],
        }
    }

    /// Moves `blocks` blocks from the producer to the consumer and returns the times taken
    /// (see the type's documentation for what is timed).
    pub fn run(&self, blocks: u64) -> CrossThreadTimes {
        self.jobs
            .as_ref()
            .expect("jobs sender lives until drop")
            .send(blocks)
            .expect("producer thread is alive");
        self.done.recv().expect("consumer thread is alive")
    }
}

impl Drop for CrossThread {
    fn drop(&mut self) {
        // Closing the job channel stops the producer, whose exit closes the batch channel and
        // stops the consumer.
        self.jobs = None;
        for t in self.threads.drain(..) {
            // A panic in a worker has already been printed; do not panic again in drop.
            let _ = t.join();
        }
    }
}

/// The producer thread's loop (see [`CrossThread`]).
fn produce<A: GlobalAlloc>(
    alloc: &A,
    layouts: &[BlockLayout],
    jobs: &Receiver<u64>,
    pool: &Receiver<Vec<Block>>,
    batches: &SyncSender<Batch>,
) {
    let mut next_layout = 0;
    while let Ok(n) = jobs.recv() {
        let start = Instant::now();
        let cpu_start = thread_cpu_time();
        let mut left = n;
        loop {
            let mut blocks = pool.recv().expect("consumer returns batch buffers");
            let take = left.min(XTHREAD_BATCH as u64);
            for _ in 0..take {
                let layout = layouts[next_layout];
                next_layout = if next_layout + 1 == layouts.len() {
                    0
                } else {
                    next_layout + 1
                };
                let ptr = alloc_block(alloc, layout);
                blocks.push(Block { ptr, layout });
            }
            left -= take;
            let end = (left == 0).then(|| JobEnd {
                start,
                producer_cpu: thread_cpu_time().saturating_sub(cpu_start),
            });
            batches
                .send(Batch { blocks, end })
                .expect("consumer thread is alive");
            if left == 0 {
                break;
            }
        }
    }
}

/// The consumer thread's loop (see [`CrossThread`]).
fn consume<A: GlobalAlloc>(
    alloc: &A,
    batches: &Receiver<Batch>,
    pool: &SyncSender<Vec<Block>>,
    done: &Sender<CrossThreadTimes>,
) {
    let mut cpu_mark = thread_cpu_time();
    while let Ok(Batch { mut blocks, end }) = batches.recv() {
        for b in blocks.drain(..) {
            // SAFETY: the producer allocated `b.ptr` with `alloc` and `b.layout` and handed
            // it over in this batch without keeping a copy; it is freed here exactly once.
            unsafe { free_block(alloc, b.ptr, b.layout) };
        }
        // The producer may already have exited (at shutdown); then the buffer is dropped.
        let _ = pool.send(blocks);
        if let Some(JobEnd {
            start,
            producer_cpu,
        }) = end
        {
            let wall = start.elapsed();
            let now = thread_cpu_time();
            let consumer_cpu = now.saturating_sub(cpu_mark);
            cpu_mark = now;
            let _ = done.send(CrossThreadTimes {
                wall,
                producer_cpu,
                consumer_cpu,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Smoke;

    impl Visitor for Smoke {
        fn visit<A: GlobalAlloc + Sync + 'static>(
            &mut self,
            _name: &'static str,
            alloc: &'static A,
        ) {
            for size in [1, 16, 64, 256, 1024, 8192, 65536] {
                let layout = BlockLayout::new(size).unwrap();
                pairs(alloc, layout, 100);
                let mut ring = Ring::new(alloc, layout);
                ring.run(1000);
            }
            let xt = CrossThread::new(alloc, mixed_layouts());
            for n in [0, 1, 999, 1000, 1001, 5000] {
                xt.run(n);
            }
        }
    }

    #[test]
    fn every_allocator_runs_every_pattern() {
        for_each_allocator(&mut Smoke);
    }

    #[test]
    fn names_resolve() {
        struct Name(Option<&'static str>);
        impl Visitor for Name {
            fn visit<A: GlobalAlloc + Sync + 'static>(
                &mut self,
                name: &'static str,
                _: &'static A,
            ) {
                self.0 = Some(name);
            }
        }
        for name in ALLOCATOR_NAMES {
            let mut v = Name(None);
            assert!(visit_by_name(&name.to_ascii_lowercase(), &mut v));
            assert_eq!(v.0, Some(name));
        }
        assert!(!visit_by_name("tcmalloc", &mut Name(None)));
    }

    #[test]
    fn pinning_is_best_effort() {
        // In a thread of its own, so the test harness's thread keeps its affinity.
        std::thread::spawn(|| {
            assert!(!pin_to_cpu(usize::MAX));
            assert!(!pin_to_cpu(1 << 20));
            // CPU 0 is normally available; if not, pinning must fail cleanly.
            let _ = pin_to_cpu(0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn mix_is_in_range() {
        let mix = mixed_layouts();
        assert_eq!(mix.len(), 256);
        assert!(mix.iter().all(|l| (8..=1024).contains(&l.layout().size())));
    }
}
