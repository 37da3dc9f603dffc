//! Runtime options: set through this module's functions at any time, or at
//! start-up from `SHARDALLOC_*` environment variables (read once, at the
//! first allocation, with `getenv`: no allocation). An invalid environment
//! value is reported on standard error and the default is kept; an invalid
//! value passed to a setter is returned as an [`OptionError`].
//!
//! | variable | setter | default | meaning |
//! |---|---|---|---|
//! | `SHARDALLOC_RESET_DELAY_MS` | [`set_reset_delay_ms`] | 500 | the decay time: unused page memory goes back gradually over it (smootherstep; little in its first tenth, half by its middle, all by its end), memory reused within it is never given back (0: at once) |
//! | `SHARDALLOC_RESET_MODE` | [`set_reset_mode`] | `dontneed` | `dontneed` (RSS drops at once) or `free` (`MADV_FREE`: cheaper, RSS drops only under memory pressure) |
//! | `SHARDALLOC_PENDING_RESET_KIB` | [`set_pending_reset_limit`] | 32768 | the floor of the process-wide warm budget: unused memory waiting on the decay curve beyond this, the memory in use and the most memory in use within the last decay time goes back at once, oldest first |
//! | `SHARDALLOC_SEGMENT_CACHE` | [`set_segment_cache`] | 4 | empty segments (4 MiB of address space each, their memory already given back) kept for reuse, at most 16; warm ones (still holding their memory, within the warm budget) may fill all 16 slots until their decay time; 0 turns the cache off |
//! | `SHARDALLOC_PURGE_THREAD` | [`set_purge_thread`] | on in Rust programs, off in the C library | `1`: a background thread gives warm memory back along the decay curve when no thread calls the allocator (started at the first warm memory; in the C library, when it loads), asleep while there is none; `0`: memory goes back on allocator calls only |
//! | `SHARDALLOC_HUGE_OS_PAGES` | [`set_huge_os_pages`] | `1` | `1`: ask for transparent huge pages (`MADV_HUGEPAGE`) on huge blocks of 2 MiB or more and on dense segments; `0`: never |
//! | `SHARDALLOC_DENSE_SEGMENTS` | [`set_dense_segments`] | `4` | how many small (or medium) segments a heap fills with 4 KiB pages before its next one is backed by transparent huge pages from the start; `0`: every one (far fewer page faults, resident memory in 2 MiB steps, as mimalloc's arenas), at most 64 |
//!
//! Options are plain atomics read with `Relaxed` ordering: a change takes
//! effect on each thread's next slow path, and nothing depends on two
//! options changing together. They are configuration, not protocol state, so
//! they use `core` atomics even under loom.
//!
//! Secure builds (feature `secure`, `docs/security.md`) also read
//! `SHARDALLOC_SECURE_GUARD_PAGES` (`set_secure_guard_pages`), default `1`:
//! every new segment ends with a `PROT_NONE` guard page; `0` leaves the
//! guards out (one `mprotect` call and one mapping split less per segment;
//! an overflow past a large or huge block then runs into the next mapping
//! instead of faulting). The layout is the same either way. And
//! `SHARDALLOC_SECURE_SHUFFLE` (`set_secure_shuffle`), default `runs`:
//! each block of a page extension joins one of two runs at random, each
//! run handed out in address order; `groups` shuffles groups of 1 KiB of
//! consecutive blocks; `blocks` shuffles every block (stronger, and slower
//! for programs that walk their objects in allocation order).

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

/// How empty pages give their memory back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetMode {
    /// `madvise(MADV_DONTNEED)`: the memory leaves RSS at once and reads
    /// back as zeros. The default: RSS is what people measure.
    DontNeed,
    /// `madvise(MADV_FREE)`: cheaper; the kernel takes the memory back only
    /// under memory pressure, so RSS stays up until then. Falls back to
    /// `DontNeed` where the kernel does not support it.
    Free,
}

/// A rejected option value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionError {
    option: &'static str,
    expected: &'static str,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value for {}: expected {}",
            self.option, self.expected
        )
    }
}

impl std::error::Error for OptionError {}

/// Largest accepted reset delay (one minute).
pub const MAX_RESET_DELAY_MS: u64 = 60_000;
/// Largest accepted segment cache.
pub const MAX_SEGMENT_CACHE: usize = 16;
/// Largest accepted [`set_dense_segments`].
pub const MAX_DENSE_SEGMENTS: usize = 64;

static RESET_DELAY_MS: AtomicUsize = AtomicUsize::new(500);
static RESET_MODE_FREE: AtomicUsize = AtomicUsize::new(0);
static PENDING_RESET_LIMIT: AtomicUsize = AtomicUsize::new(32 << 20);
static HUGE_OS_PAGES: AtomicUsize = AtomicUsize::new(1);
static SEGMENT_CACHE: AtomicUsize = AtomicUsize::new(4);
static DENSE_SEGMENTS: AtomicUsize = AtomicUsize::new(4);
/// 0: off; 1: on (asked for); 2: the default: on in a Rust program; the C
/// library's load-time constructor turns it off unless asked for.
static PURGE_THREAD: AtomicUsize = AtomicUsize::new(PURGE_THREAD_AUTO);
const PURGE_THREAD_AUTO: usize = 2;

/// Sets the decay time (in milliseconds, at most [`MAX_RESET_DELAY_MS`]):
/// unused page memory goes back to the OS gradually over it, and none is
/// kept longer; 0 gives it back at once.
pub fn set_reset_delay_ms(ms: u64) -> Result<(), OptionError> {
    if ms > MAX_RESET_DELAY_MS {
        return Err(OptionError {
            option: "reset delay",
            expected: "0..=60000 milliseconds",
        });
    }
    // Relaxed: see the module documentation.
    RESET_DELAY_MS.store(ms as usize, Ordering::Relaxed);
    Ok(())
}

/// The decay time (the reset delay) in milliseconds.
pub fn reset_delay_ms() -> u64 {
    // Relaxed: see the module documentation.
    RESET_DELAY_MS.load(Ordering::Relaxed) as u64
}

/// Sets how memory is given back.
pub fn set_reset_mode(mode: ResetMode) {
    // Relaxed: see the module documentation.
    RESET_MODE_FREE.store(usize::from(mode == ResetMode::Free), Ordering::Relaxed);
}

/// How memory is given back.
pub fn reset_mode() -> ResetMode {
    // Relaxed: see the module documentation.
    if RESET_MODE_FREE.load(Ordering::Relaxed) == 1 {
        ResetMode::Free
    } else {
        ResetMode::DontNeed
    }
}

/// Sets the floor of the process-wide warm budget (in bytes): unused page
/// memory waiting on the decay curve may exceed the memory in use (and its
/// recent peak) up to this much; beyond all three, the heap adding to it
/// gives back its oldest at once.
pub fn set_pending_reset_limit(bytes: usize) {
    // Relaxed: see the module documentation.
    PENDING_RESET_LIMIT.store(bytes, Ordering::Relaxed);
}

/// The floor of the warm budget in bytes.
pub fn pending_reset_limit() -> usize {
    // Relaxed: see the module documentation.
    PENDING_RESET_LIMIT.load(Ordering::Relaxed)
}

/// Enables or disables the purge thread (`purge_thread`): with it, memory
/// goes back along the decay curve even when no thread calls the
/// allocator. Disabling it does not stop a thread already started; it then
/// stays asleep only once no memory is warm.
pub fn set_purge_thread(enabled: bool) {
    // Relaxed: see the module documentation.
    PURGE_THREAD.store(usize::from(enabled), Ordering::Relaxed);
}

/// Whether a purge thread may be started (unless set, it may in a Rust
/// program and may not where `malloc` is shardalloc's: the C library).
pub fn purge_thread() -> bool {
    // Relaxed: see the module documentation.
    PURGE_THREAD.load(Ordering::Relaxed) != 0
}

/// The purge thread was asked for (`SHARDALLOC_PURGE_THREAD=1` or
/// `set_purge_thread(true)`), not just left at its default.
pub(crate) fn purge_thread_asked_for() -> bool {
    // Relaxed: see the module documentation.
    PURGE_THREAD.load(Ordering::Relaxed) == 1
}

/// Sets how many empty segments are kept for reuse (at most
/// [`MAX_SEGMENT_CACHE`]; segments that still hold their memory may use
/// every slot until their decay time; 0 keeps none). Shrinking it takes
/// effect as segments come and go; `collect(true)` empties the cache.
pub fn set_segment_cache(segments: usize) -> Result<(), OptionError> {
    if segments > MAX_SEGMENT_CACHE {
        return Err(OptionError {
            option: "segment cache",
            expected: "0..=16 segments",
        });
    }
    // Relaxed: see the module documentation.
    SEGMENT_CACHE.store(segments, Ordering::Relaxed);
    Ok(())
}

/// Whether huge blocks of 2 MiB or more ask the kernel for transparent huge
/// pages (`MADV_HUGEPAGE`): a page fault then maps 2 MiB instead of 4 KiB,
/// which makes touching a fresh multi-MiB block many times cheaper. The
/// cost is resident memory in 2 MiB steps for huge blocks that are only
/// partly touched. On by default (the kernel must allow it: THP `madvise`
/// or `always` mode).
pub fn set_huge_os_pages(enabled: bool) {
    // Relaxed: see the module documentation.
    HUGE_OS_PAGES.store(usize::from(enabled), Ordering::Relaxed);
}

/// See [`set_huge_os_pages`].
pub fn huge_os_pages() -> bool {
    // Relaxed: see the module documentation.
    HUGE_OS_PAGES.load(Ordering::Relaxed) != 0
}

/// Sets how many small (or medium) segments a heap fills with 4 KiB pages
/// before its next one of that kind is advised for transparent huge pages
/// from its creation (when [`huge_os_pages`] is on). A small heap keeps
/// 4 KiB pages because a huge page is resident whole once any byte of it is
/// touched; 0 backs every segment with huge pages: far fewer page faults,
/// at the cost of resident memory in 2 MiB steps (the profile of mimalloc's
/// arenas; `docs/benchmarks.md` measures both). At most
/// [`MAX_DENSE_SEGMENTS`]; takes effect for segments created from then on.
pub fn set_dense_segments(segments: usize) -> Result<(), OptionError> {
    if segments > MAX_DENSE_SEGMENTS {
        return Err(OptionError {
            option: "dense segments",
            expected: "0..=64 segments",
        });
    }
    // Relaxed: see the module documentation.
    DENSE_SEGMENTS.store(segments, Ordering::Relaxed);
    Ok(())
}

/// See [`set_dense_segments`].
pub fn dense_segments() -> usize {
    // Relaxed: see the module documentation.
    DENSE_SEGMENTS.load(Ordering::Relaxed)
}

/// How many empty segments are kept for reuse.
pub fn segment_cache() -> usize {
    // Relaxed: see the module documentation.
    SEGMENT_CACHE.load(Ordering::Relaxed)
}

/// Reads the `SHARDALLOC_*` environment variables (once per process, at the
/// first allocation). Invalid values are reported and ignored.
#[cfg(not(loom))]
pub(crate) fn read_environment() {
    #[cfg(feature = "secure")]
    read_secure_environment();
    if let Some(value) = env(c"SHARDALLOC_RESET_DELAY_MS") {
        match parse_number(value).filter(|&ms| ms <= MAX_RESET_DELAY_MS as usize) {
            Some(ms) => RESET_DELAY_MS.store(ms, Ordering::Relaxed),
            None => report(
                b"SHARDALLOC_RESET_DELAY_MS",
                value,
                b"milliseconds, 0..=60000",
            ),
        }
    }
    if let Some(value) = env(c"SHARDALLOC_RESET_MODE") {
        if value.eq_ignore_ascii_case(b"dontneed") {
            set_reset_mode(ResetMode::DontNeed);
        } else if value.eq_ignore_ascii_case(b"free") {
            set_reset_mode(ResetMode::Free);
        } else {
            report(b"SHARDALLOC_RESET_MODE", value, b"dontneed or free");
        }
    }
    if let Some(value) = env(c"SHARDALLOC_PENDING_RESET_KIB") {
        match parse_number(value).and_then(|kib| kib.checked_mul(1024)) {
            Some(bytes) => set_pending_reset_limit(bytes),
            None => report(b"SHARDALLOC_PENDING_RESET_KIB", value, b"a size in KiB"),
        }
    }
    if let Some(value) = env(c"SHARDALLOC_HUGE_OS_PAGES") {
        match value {
            b"1" => set_huge_os_pages(true),
            b"0" => set_huge_os_pages(false),
            _ => report(b"SHARDALLOC_HUGE_OS_PAGES", value, b"0 or 1"),
        }
    }
    if let Some(value) = env(c"SHARDALLOC_DENSE_SEGMENTS") {
        match parse_number(value).filter(|&n| n <= MAX_DENSE_SEGMENTS) {
            Some(n) => DENSE_SEGMENTS.store(n, Ordering::Relaxed),
            None => report(b"SHARDALLOC_DENSE_SEGMENTS", value, b"0..=64 segments"),
        }
    }
    if let Some(value) = env(c"SHARDALLOC_PURGE_THREAD") {
        match value {
            b"1" => set_purge_thread(true),
            b"0" => set_purge_thread(false),
            _ => report(b"SHARDALLOC_PURGE_THREAD", value, b"0 or 1"),
        }
    }
    if let Some(value) = env(c"SHARDALLOC_SEGMENT_CACHE") {
        match parse_number(value).filter(|&n| n <= MAX_SEGMENT_CACHE) {
            Some(n) => SEGMENT_CACHE.store(n, Ordering::Relaxed),
            None => report(b"SHARDALLOC_SEGMENT_CACHE", value, b"0..=16 segments"),
        }
    }
}

/// The value of an environment variable, without allocating.
#[cfg(not(loom))]
fn env(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; getenv returns null or a pointer into
    // the environment, valid until the variable is changed (we read it at
    // once, during start-up).
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string from the environment (above).
    Some(unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes())
}

/// A decimal number, or `None` (empty, not a number, or overflowing).
pub(crate) fn parse_number(text: &[u8]) -> Option<usize> {
    if text.is_empty() {
        return None;
    }
    let mut number: usize = 0;
    for &digit in text {
        if !digit.is_ascii_digit() {
            return None;
        }
        number = number
            .checked_mul(10)?
            .checked_add(usize::from(digit - b'0'))?;
    }
    Some(number)
}

#[cfg(not(loom))]
fn report(name: &[u8], value: &[u8], expected: &[u8]) {
    use crate::fatal::write_stderr;
    write_stderr(b"shardalloc: ignoring ");
    write_stderr(name);
    write_stderr(b"=");
    write_stderr(value.get(..64).unwrap_or(value));
    write_stderr(b": expected ");
    write_stderr(expected);
    write_stderr(b"\n");
}

// --- Secure mode's options (feature `secure`) ---

#[cfg(feature = "secure")]
static SECURE_GUARD_PAGES: AtomicUsize = AtomicUsize::new(1);

/// Secure builds: whether segments mapped from now on end with a guard page
/// (`PROT_NONE`), which stops an overflow running off a large or huge block
/// (`docs/security.md`, "Guard pages"). On by default; segments already
/// mapped keep what they have.
#[cfg(feature = "secure")]
pub fn set_secure_guard_pages(enabled: bool) {
    // Relaxed: see the module documentation.
    SECURE_GUARD_PAGES.store(usize::from(enabled), Ordering::Relaxed);
}

/// See [`set_secure_guard_pages`].
#[cfg(feature = "secure")]
pub fn secure_guard_pages() -> bool {
    // Relaxed: see the module documentation.
    SECURE_GUARD_PAGES.load(Ordering::Relaxed) != 0
}

/// Secure builds: how a page extension orders its new blocks
/// (`docs/security.md`, "Randomized layout").
#[cfg(feature = "secure")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureShuffle {
    /// The default: every block of the extension joins one of two runs at
    /// random (a coin per block); the runs are handed out one after the
    /// other, each in address order. Blocks of 1 KiB and more are shuffled
    /// one by one, as with `Blocks`.
    Runs,
    /// Groups of 1 KiB of consecutive blocks, in a random order (the default
    /// before `Runs`).
    Groups,
    /// Every block in a random order (stronger; slower for programs that
    /// walk their objects in allocation order).
    Blocks,
}

#[cfg(feature = "secure")]
static SECURE_SHUFFLE: AtomicUsize = AtomicUsize::new(SecureShuffle::Runs as usize);

/// Secure builds: how page extensions order their blocks from the next
/// extension on (`docs/security.md`, "Randomized layout").
#[cfg(feature = "secure")]
pub fn set_secure_shuffle(shuffle: SecureShuffle) {
    // Relaxed: see the module documentation.
    SECURE_SHUFFLE.store(shuffle as usize, Ordering::Relaxed);
}

/// See [`set_secure_shuffle`].
#[cfg(feature = "secure")]
pub fn secure_shuffle() -> SecureShuffle {
    // Relaxed: see the module documentation.
    match SECURE_SHUFFLE.load(Ordering::Relaxed) {
        x if x == SecureShuffle::Blocks as usize => SecureShuffle::Blocks,
        x if x == SecureShuffle::Groups as usize => SecureShuffle::Groups,
        _ => SecureShuffle::Runs,
    }
}

/// Secure builds: whether page extensions shuffle every block (`true`:
/// [`SecureShuffle::Blocks`]) or use the default order (`false`:
/// [`SecureShuffle::Runs`]), from the next extension on.
#[cfg(feature = "secure")]
pub fn set_secure_shuffle_blocks(blocks: bool) {
    set_secure_shuffle(if blocks {
        SecureShuffle::Blocks
    } else {
        SecureShuffle::Runs
    });
}

/// Whether page extensions shuffle every block (see [`secure_shuffle`]).
#[cfg(feature = "secure")]
pub fn secure_shuffle_blocks() -> bool {
    secure_shuffle() == SecureShuffle::Blocks
}

/// Reads the `SHARDALLOC_SECURE_*` environment variables.
#[cfg(all(feature = "secure", not(loom)))]
fn read_secure_environment() {
    if let Some(value) = env(c"SHARDALLOC_SECURE_GUARD_PAGES") {
        match value {
            b"1" => set_secure_guard_pages(true),
            b"0" => set_secure_guard_pages(false),
            _ => report(b"SHARDALLOC_SECURE_GUARD_PAGES", value, b"0 or 1"),
        }
    }
    if let Some(value) = env(c"SHARDALLOC_SECURE_SHUFFLE") {
        if value.eq_ignore_ascii_case(b"runs") {
            set_secure_shuffle(SecureShuffle::Runs);
        } else if value.eq_ignore_ascii_case(b"groups") {
            set_secure_shuffle(SecureShuffle::Groups);
        } else if value.eq_ignore_ascii_case(b"blocks") {
            set_secure_shuffle(SecureShuffle::Blocks);
        } else {
            report(
                b"SHARDALLOC_SECURE_SHUFFLE",
                value,
                b"runs, groups or blocks",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(parse_number(b"0"), Some(0));
        assert_eq!(parse_number(b"1500"), Some(1500));
        for bad in [&b""[..], b"-1", b"10ms", b" 5", b"99999999999999999999999"] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn setters_reject_out_of_range_values() {
        assert!(set_reset_delay_ms(MAX_RESET_DELAY_MS + 1).is_err());
        assert!(set_segment_cache(MAX_SEGMENT_CACHE + 1).is_err());
        assert!(set_dense_segments(MAX_DENSE_SEGMENTS + 1).is_err());
        let error = set_segment_cache(99).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid value for segment cache: expected 0..=16 segments"
        );
    }
}
