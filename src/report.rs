//! The process-wide report: [`stats`] (a [`Stats`] snapshot: the counters
//! of `stats`, and the live bytes of every registered heap, each read under
//! its lock) and [`print_stats`], formatted without allocating.

use crate::stats::{
    ABANDONED_LIVE, COMMITTED, HEAPS_ADOPTED, HEAPS_EVICTED, HEAPS_PARKED, HUGE_LIVE,
    MADVISE_CALLS, MMAP_CALLS, MOVED_TOTAL, MUNMAP_CALLS, RESERVED, RESET_TOTAL,
    THREADS_WITHOUT_EXIT_HOOK,
};

/// A snapshot of the allocator's process-wide figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes in live blocks (their usable sizes): blocks of every registered
    /// heap, read under each heap's lock, plus live huge blocks, plus blocks
    /// of exited threads as of the last look at their segments. Blocks freed
    /// by another thread count until their page's owner collects them.
    pub live: usize,
    /// Bytes of block memory that may be resident: pages in use, and empty
    /// pages whose memory has not been given back yet (headers and heap
    /// metadata excluded).
    pub committed: usize,
    /// Bytes of address space mapped from the OS now (segments, huge blocks,
    /// thread heaps). Not all of it is resident.
    pub reserved: usize,
    /// Bytes given back to the OS with `madvise` so far (cumulative).
    pub reset: usize,
    /// Bytes of freed huge blocks moved, page tables and all, into the
    /// segment of a larger huge block so far (cumulative): memory reused
    /// without a page fault.
    pub moved: usize,
    /// Segments of exited threads waiting to be reclaimed.
    pub abandoned_segments: usize,
    /// Empty segments kept for reuse, and spare huge segments in the
    /// process-wide pool (left by exited threads and destroyed heaps).
    pub cached_segments: usize,
    /// `mmap` calls so far.
    pub mmap_calls: usize,
    /// `munmap` calls so far.
    pub munmap_calls: usize,
    /// `madvise` calls so far.
    pub madvise_calls: usize,
    /// Resident memory of the whole process (`/proc/self/statm`), if readable.
    pub resident: Option<usize>,
    /// Threads that got a heap without a thread-exit hook, because the
    /// process had no pthread key left: they allocate normally, but their
    /// heaps are not torn down when they exit (their memory is leaked).
    pub threads_without_exit_hook: usize,
    /// Heaps in the registry now: the default heaps of live threads that
    /// have allocated, parked heaps, and live first-class heaps (all of
    /// them: the registry has no fixed capacity).
    pub heaps: usize,
    /// Default heaps of exited threads parked now, kept whole for the next
    /// thread to adopt (at most 8; part of `heaps`).
    pub parked_heaps: usize,
    /// Heaps parked at their thread's exit so far (cumulative).
    pub heaps_parked: usize,
    /// Parked heaps a new thread adopted so far (cumulative).
    pub heaps_adopted: usize,
    /// Parked heaps nobody adopted within the decay time, torn down so far
    /// (cumulative).
    pub heaps_evicted: usize,
    /// Bytes of unused page memory kept warm for reuse (empty slots waiting
    /// on the decay curve, huge spares, what exited threads left within the
    /// warm budget): part of `committed`, given back within the decay time
    /// (`options::reset_delay_ms`) unless reused.
    pub warm: usize,
    /// Resident anonymous memory of the whole process backed by transparent
    /// huge pages (`AnonHugePages` of `/proc/self/smaps_rollup`), if
    /// readable; with `resident`, the huge-page coverage.
    pub huge_pages: Option<usize>,
}

/// How many times `stats` yields to a heap's owner busy in a slow path.
const LOCK_ROUNDS: usize = 1000;

/// Reads the counters and walks every registered heap's pages for the live
/// bytes (no allocation; each heap's lock is taken in turn, so its owner
/// may wait for the walk of its segments).
pub fn stats() -> Stats {
    let shared = &crate::process::SHARED;
    let mut live = HUGE_LIVE.get().wrapping_add(ABANDONED_LIVE.get());
    for entry in shared.heaps.entries() {
        if entry.try_lock() {
            // SAFETY: we hold the heap's lock (see `registry`).
            live = live.wrapping_add(unsafe { (*entry.heap()).live_bytes() });
            entry.unlock();
        } else if let Some(heap) = crate::thread::own_heap_of(entry) {
            // One of the calling thread's heaps, whose lock this thread
            // holds (`stats()` called from a `visit_blocks` callback):
            // re-entrant for the owner.
            // SAFETY: the calling thread's own heap.
            live = live.wrapping_add(unsafe { (*heap).live_bytes_as_owner() });
        } else if entry.lock_bounded(LOCK_ROUNDS) {
            // Bounded: a entry left locked by a thread that vanished in
            // `fork` is skipped rather than waited for.
            // SAFETY: we hold the heap's lock (see `registry`).
            live = live.wrapping_add(unsafe { (*entry.heap()).live_bytes() });
            entry.unlock();
        }
    }
    Stats {
        live,
        committed: COMMITTED.get(),
        reserved: RESERVED.get(),
        reset: RESET_TOTAL.get(),
        moved: MOVED_TOTAL.get(),
        abandoned_segments: shared.abandoned.len(),
        cached_segments: shared.segment_cache.len() + shared.huge_spares.len(),
        mmap_calls: MMAP_CALLS.get(),
        munmap_calls: MUNMAP_CALLS.get(),
        madvise_calls: MADVISE_CALLS.get(),
        #[cfg(not(miri))]
        resident: crate::os::resident_bytes(),
        #[cfg(miri)]
        resident: None,
        threads_without_exit_hook: THREADS_WITHOUT_EXIT_HOOK.get(),
        heaps: shared.heaps.heap_count(),
        parked_heaps: shared.parked.len(),
        heaps_parked: HEAPS_PARKED.get(),
        heaps_adopted: HEAPS_ADOPTED.get(),
        heaps_evicted: HEAPS_EVICTED.get(),
        warm: crate::decay::WARM.get(),
        #[cfg(not(miri))]
        huge_pages: crate::os::huge_page_bytes(),
        #[cfg(miri)]
        huge_pages: None,
    }
}

/// Writes the figures to standard error, in the spirit of `malloc_stats`
/// (formatted on the stack: no allocation).
pub fn print_stats() {
    let s = stats();
    let mut line = Line::new();
    line.text("shardalloc stats\n");
    for (name, value) in [
        ("  live blocks   ", Some(s.live)),
        ("  committed     ", Some(s.committed)),
        ("  reserved      ", Some(s.reserved)),
        ("  resident      ", s.resident),
        ("  huge pages    ", s.huge_pages),
        ("  warm          ", Some(s.warm)),
        ("  reset (total) ", Some(s.reset)),
        ("  moved (total) ", Some(s.moved)),
    ] {
        line.text(name);
        match value {
            Some(bytes) => line.bytes(bytes),
            None => line.text("n/a"),
        }
        line.text("\n");
    }
    for (name, value) in [
        ("  abandoned segments ", s.abandoned_segments),
        ("  cached segments    ", s.cached_segments),
        ("  mmap calls         ", s.mmap_calls),
        ("  munmap calls       ", s.munmap_calls),
        ("  madvise calls      ", s.madvise_calls),
        ("  parked heaps       ", s.parked_heaps),
        ("  heaps adopted      ", s.heaps_adopted),
    ] {
        line.text(name);
        line.number(value);
        line.text("\n");
    }
    crate::fatal::write_stderr(line.as_bytes());
}

/// A fixed-size text buffer on the stack.
struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 1024],
            len: 0,
        }
    }

    fn text(&mut self, text: &str) {
        for &b in text.as_bytes() {
            if let Some(entry) = self.buf.get_mut(self.len) {
                *entry = b;
                self.len += 1;
            }
        }
    }

    fn number(&mut self, mut n: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            if let Some(entry) = self.buf.get_mut(self.len) {
                *entry = d;
                self.len += 1;
            }
        }
    }

    /// Bytes as KiB with a unit.
    fn bytes(&mut self, bytes: usize) {
        self.number(bytes / 1024);
        self.text(" KiB");
    }

    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_without_allocating() {
        let mut line = Line::new();
        line.number(0);
        line.text(" ");
        line.number(1234567890);
        line.text(" ");
        line.bytes(4096);
        assert_eq!(line.as_bytes(), b"0 1234567890 4 KiB");
    }

    #[test]
    fn counters_follow_os_calls() {
        let before = stats();
        let p = crate::os::map(1 << 20, 4096, 0).unwrap();
        let during = stats();
        assert!(during.mmap_calls > before.mmap_calls);
        // SAFETY: our own fresh mapping.
        unsafe {
            crate::os::reset(p.as_ptr(), 1 << 20);
            crate::os::unmap(p, 1 << 20, 4096);
        }
        let after = stats();
        assert!(after.madvise_calls > during.madvise_calls);
        assert!(after.munmap_calls > during.munmap_calls);
        assert!(after.reset >= before.reset + (1 << 20));
    }
}
