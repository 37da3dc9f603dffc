//! Helpers shared by the integration tests: seeds, work scaling, fill patterns, owned test blocks
//! and resident-memory readings.
//!
//! Each file in `tests/` is its own binary and uses only some of these helpers.
#![allow(dead_code)]

use std::alloc::Layout;
use std::ptr::NonNull;
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable that fixes the seed of every randomized test.
pub(crate) const SEED_VAR: &str = "SHARDALLOC_SEED";
/// Environment variable that multiplies the amount of work of every test (default 1).
pub(crate) const SCALE_VAR: &str = "SHARDALLOC_TEST_SCALE";

/// The seed for the randomized test `test`: `SHARDALLOC_SEED` if set, else taken from the clock.
///
/// Prints the seed and the command that replays it (run with `--nocapture` to see it; every
/// assertion message of a randomized test repeats the seed as well).
pub(crate) fn seed(test: &str) -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={v:?} is not a u64")),
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock before 1970");
            // Mix seconds and nanoseconds so that tests started in the same second differ.
            t.as_secs().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(t.subsec_nanos())
        }
    };
    println!(
        "[{test}] seed = {seed}; replay: {SEED_VAR}={seed} cargo test --test {} {test} -- --exact",
        env!("CARGO_CRATE_NAME")
    );
    seed
}

/// The work multiplier from `SHARDALLOC_TEST_SCALE` (default 1, at least 1).
pub(crate) fn scale() -> usize {
    match std::env::var(SCALE_VAR) {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("{SCALE_VAR}={v:?} is not an integer"))
            .max(1),
        Err(_) => 1,
    }
}

/// Prints how to make the test `test` run longer.
pub(crate) fn tip(test: &str) {
    println!("[{test}] tip: {SCALE_VAR}=10 (or more) gives a longer run");
}

// === fill patterns ===

/// Length of one comparison chunk.
const CHUNK: usize = 64 * 1024;

/// `PATTERN[k] == k as u8`: a window of it starting at `(fill + offset) % 256` is the expected
/// content of a block filled with `fill`, from `offset` on.
static PATTERN: [u8; CHUNK + 256] = {
    let mut p = [0u8; CHUNK + 256];
    let mut i = 0;
    while i < p.len() {
        p[i] = i as u8;
        i += 1;
    }
    p
};

static ZEROS: [u8; CHUNK] = [0u8; CHUNK];

/// The byte the pattern `fill` puts at `offset`.
///
/// The pattern depends on the offset, so a block copied to the wrong place, or shifted, does not
/// match.
pub(crate) fn pattern_byte(fill: u8, offset: usize) -> u8 {
    (usize::from(fill).wrapping_add(offset)) as u8
}

/// Writes the pattern `fill` into `base[from..to]` (offsets are from `base`).
///
/// # Safety
///
/// `base[from..to]` must be valid for writes.
pub(crate) unsafe fn fill_pattern(base: *mut u8, from: usize, to: usize, fill: u8) {
    let mut off = from;
    while off < to {
        let n = (to - off).min(CHUNK);
        let start = (usize::from(fill) + off) % 256;
        // SAFETY: `base[off..off + n]` lies in `base[from..to]`, valid for writes (caller), and
        // `PATTERN[start..start + n]` is in bounds because `start < 256` and `n <= CHUNK`; a test
        // block never overlaps the static `PATTERN`.
        unsafe { std::ptr::copy_nonoverlapping(PATTERN.as_ptr().add(start), base.add(off), n) };
        off += n;
    }
}

/// Checks that `base[from..to]` holds the pattern `fill`; on a mismatch returns the first wrong
/// offset with the byte found and the byte expected.
///
/// # Safety
///
/// `base[from..to]` must be valid for reads.
pub(crate) unsafe fn check_pattern(
    base: *const u8,
    from: usize,
    to: usize,
    fill: u8,
) -> Result<(), (usize, u8, u8)> {
    let mut off = from;
    while off < to {
        let n = (to - off).min(CHUNK);
        let start = (usize::from(fill) + off) % 256;
        // SAFETY: `base[off..off + n]` lies in `base[from..to]`, valid for reads (caller).
        let got = unsafe { std::slice::from_raw_parts(base.add(off), n) };
        let want = &PATTERN[start..start + n];
        if got != want {
            let i = got.iter().zip(want).position(|(g, w)| g != w).unwrap_or(0);
            return Err((off + i, got[i], want[i]));
        }
        off += n;
    }
    Ok(())
}

/// Checks that `base[from..to]` is all zero; on a mismatch returns the first non-zero offset and
/// the byte found there.
///
/// # Safety
///
/// `base[from..to]` must be valid for reads.
pub(crate) unsafe fn check_zero(
    base: *const u8,
    from: usize,
    to: usize,
) -> Result<(), (usize, u8)> {
    let mut off = from;
    while off < to {
        let n = (to - off).min(CHUNK);
        // SAFETY: `base[off..off + n]` lies in `base[from..to]`, valid for reads (caller).
        let got = unsafe { std::slice::from_raw_parts(base.add(off), n) };
        if got != &ZEROS[..n] {
            let i = got.iter().position(|&b| b != 0).unwrap_or(0);
            return Err((off + i, got[i]));
        }
        off += n;
    }
    Ok(())
}

/// Whether `bytes` is all zero (compared in chunks with `memcmp`, fast even in debug builds).
pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    bytes.chunks(CHUNK).all(|c| c == &ZEROS[..c.len()])
}

// === owned test blocks ===

/// A block from the global allocator whose usable size holds a fill pattern: all of it, or for a
/// sparse block only the first and last `SPARSE_EDGE` bytes (cheap for huge blocks).
///
/// It can be sent to another thread; dropping it frees it on the dropping thread.
pub(crate) struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
    usable: usize,
    fill: u8,
    sparse: bool,
}

/// How much of each end of a sparse block holds the pattern.
pub(crate) const SPARSE_EDGE: usize = 64 * 1024;

// SAFETY: a `Block` owns its allocation exclusively (like a `Box<[u8]>`), and the global allocator
// accepts frees from any thread.
unsafe impl Send for Block {}

// SAFETY: through `&Block` the block's memory is only read (`verify`, `addr`, ...); writes need
// `&mut Block` or ownership.
unsafe impl Sync for Block {}

impl Block {
    /// Allocates `size` bytes aligned to `align` from the global allocator and fills the whole
    /// usable size with the pattern `fill`. Panics (naming `seed`) if the allocation fails or is
    /// misaligned, or if `usable_size` is smaller than `size`.
    pub(crate) fn new(size: usize, align: usize, fill: u8, seed: u64) -> Block {
        Block::with_pattern(size, align, fill, false, seed)
    }

    /// Like [`Block::new`], but only the first and last `SPARSE_EDGE` bytes of the usable size hold
    /// (and are checked for) the pattern.
    pub(crate) fn new_sparse(size: usize, align: usize, fill: u8, seed: u64) -> Block {
        Block::with_pattern(size, align, fill, true, seed)
    }

    fn with_pattern(size: usize, align: usize, fill: u8, sparse: bool, seed: u64) -> Block {
        let layout = Layout::from_size_align(size.max(1), align).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            panic!("seed {seed}: global alloc({layout:?}) returned null");
        };
        assert_eq!(
            ptr.as_ptr().addr() % align,
            0,
            "seed {seed}: global alloc({layout:?}) returned misaligned {ptr:p}"
        );
        // SAFETY: `ptr` is a live block of the global allocator, which is `ShardAlloc`.
        let usable = unsafe { shardalloc::usable_size(ptr.as_ptr()) };
        assert!(
            usable >= layout.size(),
            "seed {seed}: usable_size({ptr:p}) = {usable} < requested {layout:?}"
        );
        let block = Block {
            ptr,
            layout,
            usable,
            fill,
            sparse,
        };
        for (from, to) in block.patterned() {
            // SAFETY: the block is live and `usable >= to` bytes long.
            unsafe { fill_pattern(ptr.as_ptr(), from, to, fill) };
        }
        block
    }

    /// The ranges of the usable size that hold the pattern.
    fn patterned(&self) -> [(usize, usize); 2] {
        if self.sparse && self.usable > 2 * SPARSE_EDGE {
            [(0, SPARSE_EDGE), (self.usable - SPARSE_EDGE, self.usable)]
        } else {
            [(0, self.usable), (self.usable, self.usable)]
        }
    }

    /// The block's address.
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr().addr()
    }

    /// The requested size.
    pub(crate) fn size(&self) -> usize {
        self.layout.size()
    }

    /// The usable size reported when the block was allocated.
    pub(crate) fn usable(&self) -> usize {
        self.usable
    }

    /// Checks that the whole usable size still holds the pattern and that `usable_size` still
    /// reports the same value; describes the first damage found.
    pub(crate) fn verify(&self) -> Result<(), String> {
        // SAFETY: the block is live and `usable` bytes long.
        let now = unsafe { shardalloc::usable_size(self.ptr.as_ptr()) };
        if now != self.usable {
            return Err(format!(
                "block {:p} ({:?}): usable_size changed from {} to {now}",
                self.ptr, self.layout, self.usable
            ));
        }
        for (from, to) in self.patterned() {
            // SAFETY: as above; `to <= usable`.
            unsafe { check_pattern(self.ptr.as_ptr(), from, to, self.fill) }.map_err(
                |(off, got, want)| {
                    format!(
                        "block {:p} ({:?}, usable {}): byte {off} is {got:#04x}, expected \
                         {want:#04x}",
                        self.ptr, self.layout, self.usable
                    )
                },
            )?;
        }
        Ok(())
    }
}

impl Block {
    /// Resizes the block with the global allocator's `realloc` after verifying it; checks that
    /// the contents up to the smaller size were kept and that the alignment holds, then fills the
    /// new usable size with the pattern again. Panics (naming `seed`) on any failure.
    pub(crate) fn resize(&mut self, new_size: usize, seed: u64) {
        assert!(!self.sparse, "resize of a sparse block");
        if let Err(e) = self.verify() {
            panic!("seed {seed}: before realloc: {e}");
        }
        let new_size = new_size.max(1);
        // SAFETY: the block is live and was allocated with `self.layout`; `new_size` is non-zero
        // and callers keep it far below `isize::MAX`.
        let raw = unsafe { std::alloc::realloc(self.ptr.as_ptr(), self.layout, new_size) };
        let old = (self.ptr, self.layout);
        let Some(ptr) = NonNull::new(raw) else {
            panic!(
                "seed {seed}: realloc({:p}, {:?}, {new_size}) returned null",
                old.0, old.1
            );
        };
        self.ptr = ptr;
        self.layout = Layout::from_size_align(new_size, self.layout.align()).expect("layout");
        assert_eq!(
            ptr.as_ptr().addr() % self.layout.align(),
            0,
            "seed {seed}: realloc({:p}, {:?}, {new_size}) = {ptr:p} is misaligned",
            old.0,
            old.1
        );
        let kept = old.1.size().min(new_size);
        // SAFETY: the block is live and at least `new_size >= kept` bytes long.
        if let Err((off, got, want)) = unsafe { check_pattern(ptr.as_ptr(), 0, kept, self.fill) } {
            panic!(
                "seed {seed}: realloc({:p}, {:?}, {new_size}) = {ptr:p}: byte {off} is {got:#04x}, \
                 expected {want:#04x}",
                old.0, old.1
            );
        }
        // SAFETY: the block is live.
        self.usable = unsafe { shardalloc::usable_size(ptr.as_ptr()) };
        assert!(
            self.usable >= new_size,
            "seed {seed}: usable_size({ptr:p}) = {} < {new_size} after realloc",
            self.usable
        );
        // SAFETY: the block is live and `usable` bytes long.
        unsafe { fill_pattern(ptr.as_ptr(), kept, self.usable, self.fill) };
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: the block was allocated by the global allocator with `self.layout` and is freed
        // exactly once, here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

// === resident memory ===

/// Field `index` of `/proc/self/statm` (a count of pages) in bytes.
fn statm_bytes(index: usize) -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(index)
        .and_then(|f| f.parse().ok())
        .expect("field of /proc/self/statm");
    pages * page_size()
}

/// Resident set size of this process in bytes (`/proc/self/statm`, second field × page size).
pub(crate) fn rss_bytes() -> usize {
    statm_bytes(1)
}

/// Virtual size of this process in bytes (`/proc/self/statm`, first field × page size).
pub(crate) fn vm_bytes() -> usize {
    statm_bytes(0)
}

/// Number of memory mappings of this process (lines of `/proc/self/maps`).
pub(crate) fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .count()
}

/// The OS page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).expect("page size")
}

/// `bytes` in MiB, for printing.
pub(crate) fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The kernel's transparent-huge-page mode (`always`, `madvise` or `never`, from
/// `/sys/kernel/mm/transparent_hugepage/enabled`), or `None` where it cannot be read.
pub(crate) fn thp_mode() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let start = text.find('[')?;
    let end = text[start..].find(']')?;
    Some(text[start + 1..start + end].to_string())
}

// === random sizes ===

/// Sizes around every power of two from 8 B up to `max`: where size classes, page kinds and
/// segment kinds change.
pub(crate) fn boundary_sizes(max: usize) -> Vec<usize> {
    let mut v = Vec::new();
    for k in 3..=26 {
        let p = 1usize << k;
        v.extend([p - 1, p, p + 1]);
    }
    v.retain(|&s| s <= max);
    v
}

/// A size drawn log-uniformly from `lo..=hi` (uniform exponent, then uniform within the octave).
pub(crate) fn log_uniform(rng: &mut rand::rngs::SmallRng, lo: usize, hi: usize) -> usize {
    use rand::RngExt;
    let k = rng.random_range(lo.ilog2()..=hi.ilog2());
    let a = (1usize << k).max(lo);
    let b = ((1usize << k) * 2 - 1).min(hi);
    rng.random_range(a..=b)
}
