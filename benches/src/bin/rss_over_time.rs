//! Resident memory over time through burst / idle / burst (memory-return issue, item 8), one
//! allocator per process, sampled from `/proc/self/statm` every 100 ms.
//!
//! Usage: `rss_over_time <allocator>` (`ShardAlloc`, `System`, `mimalloc`, `jemalloc` or
//! `rusty_alloc`, any case); the first four with a summary table: `python3 benches/rss_over_time.py`
//! (`--allocators` adds `rusty_alloc`).
//!
//! Timeline (two long-lived worker threads; the allocator is called directly through
//! `GlobalAlloc`, this process's global allocator stays System and serves only the harness,
//! whose buffers are reserved up front):
//!
//! 1. **burst 1** — each worker allocates 100 MiB (about 200 MiB in all) in blocks of 64 B–256 KiB
//!    (log-uniform), writing every page, then frees a random 90 % of its blocks (its own, so the
//!    frees are local); the other 10 % stay live to the end;
//! 2. **idle, quiet** — 1 s in which nothing calls the allocator;
//! 3. **idle, light activity** — 1 s in which each worker, every 10 ms, allocates and frees four
//!    blocks of 16 B–32 KiB;
//! 4. **burst 2**, **idle quiet**, **idle with activity** — the same again (burst-1 survivors
//!    still live);
//! 5. **release** — each worker calls the allocator's explicit release (ShardAlloc
//!    `collect(true)`, System `malloc_trim(0)`, mimalloc `mi_collect(true)`, jemalloc purge; see
//!    `benches/src/release.rs`).
//!
//! Output: a header comment, then `t_ms rss_mib phase` per sample (every 100 ms, plus one at each
//! phase change), then `# mark <name> t_ms=<t> rss_mib=<r> live_mib=<l>` for the key moments
//! (`start`, `peak1`, `free1`, `quiet1`, `active1`, `peak2`, `free2`, `quiet2`, `active2`,
//! `release`).

#[path = "../release.rs"]
mod release;
#[path = "../../../tests/rss_cases/mod.rs"]
mod rss_cases;

use std::alloc::GlobalAlloc;
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rss_cases::{Rng, Slot, alloc_touched, free_slot, light_activity};
use shardalloc_bench::{ALLOCATOR_NAMES, Visitor, visit_by_name};

const MIB: usize = 1 << 20;
/// Worker threads.
const WORKERS: usize = 2;
/// Bytes each worker allocates per burst.
const BURST_BYTES: usize = 100 * MIB;
/// Block sizes of a burst (log-uniform).
const MIN_BLOCK: usize = 64;
const MAX_BLOCK: usize = 256 * 1024;
/// Share of a burst's blocks that stays live.
const KEEP: f64 = 0.10;
/// Bursts in the run.
const BURSTS: usize = 2;
/// Length of each half of an idle phase.
const IDLE_HALF: Duration = Duration::from_secs(1);
/// Interval between RSS samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Interval between rounds of light activity.
const ACTIVITY_EVERY: Duration = Duration::from_millis(10);
/// Slots reserved per worker for one burst's blocks (the mean block is about 31 KiB, so a burst
/// needs about 3 300; a burst stops early rather than grow the array).
const BURST_SLOTS: usize = 16_384;

/// What a worker is told to do next.
enum Cmd {
    /// Allocate a burst with this seed.
    Burst(u64),
    /// Free 90 % of the burst's blocks, keeping the rest.
    FreeMost,
    /// Light activity until the deadline.
    Activity(Instant),
    /// The allocator's explicit release.
    Release,
}

/// A worker's answer: bytes it holds live after the command.
struct Done {
    live: usize,
}

/// The worker's loop: runs commands until the channel closes, then frees everything it holds.
fn worker<A: GlobalAlloc>(
    alloc: &A,
    id: usize,
    release: Option<fn()>,
    cmds: &Receiver<Cmd>,
    done: &Sender<Done>,
) {
    let mut burst: Vec<Slot> = Vec::with_capacity(BURST_SLOTS);
    let mut kept: Vec<Slot> = Vec::with_capacity(BURST_SLOTS * BURSTS);
    let mut rng = Rng::new(0x5EED + id as u64);
    let live =
        |burst: &[Slot], kept: &[Slot]| -> usize { burst.iter().chain(kept).map(Slot::size).sum() };
    while let Ok(cmd) = cmds.recv() {
        match cmd {
            Cmd::Burst(seed) => {
                rng = Rng::new(seed ^ ((id as u64) << 32));
                let mut bytes = 0;
                while bytes < BURST_BYTES && burst.len() < BURST_SLOTS {
                    let slot = alloc_touched(alloc, rng.log_range(MIN_BLOCK, MAX_BLOCK));
                    bytes += slot.size();
                    burst.push(slot);
                }
            }
            Cmd::FreeMost => {
                for mut s in burst.drain(..) {
                    if rng.unit() < KEEP {
                        kept.push(s);
                    } else {
                        // SAFETY: the slot holds a live block from `alloc_touched(alloc, ..)`.
                        unsafe { free_slot(alloc, &mut s) };
                    }
                }
            }
            Cmd::Activity(deadline) => {
                let mut next = Instant::now();
                loop {
                    light_activity(alloc, &mut rng);
                    next += ACTIVITY_EVERY;
                    if next >= deadline {
                        break;
                    }
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }
            Cmd::Release => {
                if let Some(f) = release {
                    f();
                }
            }
        }
        let _ = done.send(Done {
            live: live(&burst, &kept),
        });
    }
    for s in burst.iter_mut().chain(kept.iter_mut()) {
        // SAFETY: every slot holds a live block from `alloc_touched(alloc, ..)`, freed once.
        unsafe { free_slot(alloc, s) };
    }
}

/// RSS samples of the run, with the phase each was taken in.
struct Timeline {
    start: Instant,
    next_sample: Instant,
    samples: Vec<(u64, usize, &'static str)>,
    marks: Vec<(&'static str, u64, usize, usize)>,
    live: usize,
}

impl Timeline {
    fn new() -> Self {
        let start = Instant::now();
        Timeline {
            start,
            next_sample: start,
            samples: Vec::with_capacity(4096),
            marks: Vec::with_capacity(32),
            live: 0,
        }
    }

    /// Takes a sample now.
    fn sample(&mut self, phase: &'static str) -> (u64, usize) {
        let rss = rss_cases::rss();
        let ms = self.start.elapsed().as_millis() as u64;
        self.samples.push((ms, rss, phase));
        (ms, rss)
    }

    /// Takes a sample now and records it as the key moment `name`.
    fn mark(&mut self, name: &'static str) {
        let (ms, rss) = self.sample(name);
        self.marks.push((name, ms, rss, self.live));
    }

    /// Samples every [`SAMPLE_EVERY`] until every worker has answered.
    fn wait(&mut self, phase: &'static str, done: &Receiver<Done>) {
        let mut answers = 0;
        let mut live = 0;
        while answers < WORKERS {
            let timeout = self.next_sample.saturating_duration_since(Instant::now());
            match done.recv_timeout(timeout) {
                Ok(d) => {
                    answers += 1;
                    live += d.live;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.sample(phase);
                    self.next_sample += SAMPLE_EVERY;
                }
                Err(RecvTimeoutError::Disconnected) => panic!("a worker thread died"),
            }
        }
        self.live = live;
    }

    /// Samples every [`SAMPLE_EVERY`] for `d`, doing nothing else.
    fn idle(&mut self, phase: &'static str, d: Duration) {
        let end = Instant::now() + d;
        loop {
            let now = Instant::now();
            if self.next_sample >= end {
                std::thread::sleep(end.saturating_duration_since(now));
                return;
            }
            std::thread::sleep(self.next_sample.saturating_duration_since(now));
            self.sample(phase);
            self.next_sample += SAMPLE_EVERY;
        }
    }
}

/// Runs the timeline with whichever allocator it is given and prints it.
struct Run;

impl Visitor for Run {
    fn visit<A: GlobalAlloc + Sync + 'static>(&mut self, name: &'static str, alloc: &'static A) {
        let release = release::release_for(name);
        let (done_tx, done_rx) = channel::<Done>();
        let mut cmds: Vec<Sender<Cmd>> = Vec::new();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for id in 0..WORKERS {
            let (tx, rx) = channel::<Cmd>();
            let done = done_tx.clone();
            let f = release.map(|(_, f)| f);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("rss-worker-{id}"))
                    .spawn(move || worker(alloc, id, f, &rx, &done))
                    .expect("spawn worker"),
            );
            cmds.push(tx);
        }
        let send = |make: &dyn Fn() -> Cmd| {
            for c in &cmds {
                c.send(make()).expect("worker alive");
            }
        };

        let mut tl = Timeline::new();
        tl.mark("start");
        let names = [
            ("peak1", "free1", "quiet1", "active1"),
            ("peak2", "free2", "quiet2", "active2"),
        ];
        for (burst, &(peak, free, quiet, active)) in names.iter().enumerate() {
            send(&|| Cmd::Burst(0xB0057 + burst as u64));
            tl.wait("burst", &done_rx);
            tl.mark(peak);
            send(&|| Cmd::FreeMost);
            tl.wait("free", &done_rx);
            tl.mark(free);
            tl.idle("idle_quiet", IDLE_HALF);
            tl.mark(quiet);
            let deadline = Instant::now() + IDLE_HALF;
            send(&|| Cmd::Activity(deadline));
            tl.wait("idle_activity", &done_rx);
            tl.mark(active);
        }
        send(&|| Cmd::Release);
        tl.wait("release", &done_rx);
        tl.mark("release");
        drop(cmds);
        for t in threads {
            t.join().expect("worker thread");
        }

        let mib = |b: usize| b as f64 / MIB as f64;
        println!(
            "# rss_over_time alloc={name} workers={WORKERS} burst_mib={} keep={KEEP} \
             release={}",
            WORKERS * BURST_BYTES / MIB,
            release.map_or("none", |(l, _)| l)
        );
        println!("t_ms rss_mib phase");
        for &(ms, rss, phase) in &tl.samples {
            println!("{ms} {:.1} {phase}", mib(rss));
        }
        for &(mark, ms, rss, live) in &tl.marks {
            println!(
                "# mark {mark} t_ms={ms} rss_mib={:.1} live_mib={:.1}",
                mib(rss),
                mib(live)
            );
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [allocator] = &args[..] else {
        eprintln!(
            "usage: rss_over_time <allocator>   (allocators: {})",
            ALLOCATOR_NAMES.join(", ")
        );
        return ExitCode::from(2);
    };
    if !visit_by_name(allocator, &mut Run) {
        eprintln!("rss_over_time: unknown allocator {allocator:?}");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
