//! The operating-system seam: every page of memory the allocator uses comes
//! from here, and goes back through here.
//!
//! Two backends implement the same functions (`map`, `unmap`, `reset`,
//! `advise_huge_pages`, `advise_no_huge_pages`, `move_pages`, `now_ms`):
//!
//! * `unix` (normal builds): `mmap`, `munmap` and `madvise` through `libc`,
//!   and the monotonic clock;
//! * `test_backend` (under `cfg(loom)` and `cfg(miri)`): aligned blocks from
//!   `std::alloc::System`, because neither loom nor Miri can run real `mmap`
//!   trimming or `madvise`.
//!
//! Nothing in this module allocates or panics. Failures are reported as
//! `None` / `false` and the caller turns them into a null allocation.

/// The granule of `mmap` and `madvise`.
pub(crate) const OS_PAGE_SIZE: usize = 4096;

/// Rounds `n` up to a multiple of the power of two `align`, or `None` on
/// overflow.
#[inline]
pub(crate) const fn checked_align_up(n: usize, align: usize) -> Option<usize> {
    match n.checked_add(align - 1) {
        Some(m) => Some(m & !(align - 1)),
        None => None,
    }
}

#[cfg(not(any(loom, miri)))]
pub(crate) use unix::{
    advise_huge_pages, advise_no_huge_pages, map, move_pages, now_ms, reset, unmap,
};

#[cfg(any(loom, miri))]
pub(crate) use test_backend::{
    advise_huge_pages, advise_no_huge_pages, live_mappings, map, move_pages, now_ms, reset, unmap,
};

/// What [`move_pages`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Moved {
    /// The pages are at the destination, with their contents, and the
    /// source range is no longer mapped.
    Yes,
    /// Nothing moved: the source is as it was, and the destination is
    /// mapped with fresh zeroed memory.
    No,
    /// Nothing moved, and the destination range may be unmapped: the
    /// caller must give the whole destination mapping up.
    Broken,
}

#[cfg(not(any(loom, miri)))]
mod unix {
    use super::{OS_PAGE_SIZE, checked_align_up};
    use crate::options::{self, ResetMode};
    use crate::stats;
    use core::ptr::{self, NonNull};
    use core::sync::atomic::{AtomicBool, Ordering};

    /// Maps `size` bytes of zeroed read-write memory whose address plus
    /// `offset` is a multiple of `align` (a power of two ≥ the OS page).
    ///
    /// Over-maps by `align` and trims the head and the tail, so the result is
    /// exactly `size` bytes (rounded to OS pages) that [`unmap`] gives back
    /// with the same `size`.
    pub(crate) fn map(size: usize, align: usize, offset: usize) -> Option<NonNull<u8>> {
        let size = checked_align_up(size, OS_PAGE_SIZE)?;
        let align = align.max(OS_PAGE_SIZE);
        if align == OS_PAGE_SIZE {
            return raw_map(size);
        }
        let over = size.checked_add(align)?;
        let base = raw_map(over)?;
        let base_addr = base.as_ptr().addr();
        // The first address ≥ base whose sum with `offset` is aligned.
        let start_addr = checked_align_up(base_addr.checked_add(offset)?, align)? - offset;
        let head = start_addr - base_addr;
        let tail = over - head - size;
        // SAFETY: both ranges lie inside the `over` bytes mapped just above
        // and are page-aligned (`align` and `size` are page multiples, and
        // `offset` is a page multiple by the callers' contract).
        unsafe {
            if head > 0 {
                raw_unmap(base.as_ptr(), head);
            }
            if tail > 0 {
                raw_unmap(base.as_ptr().add(head + size), tail);
            }
        }
        // `base` carries the provenance of the whole mapping; keep it.
        NonNull::new(base.as_ptr().with_addr(start_addr))
    }

    fn raw_map(size: usize) -> Option<NonNull<u8>> {
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; failure is reported as MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        stats::MMAP_CALLS.add(1);
        stats::RESERVED.add(size);
        NonNull::new(p.cast())
    }

    /// # Safety
    /// The range is page-aligned, part of a mapping of ours, and unused.
    unsafe fn raw_unmap(ptr: *mut u8, size: usize) {
        // SAFETY: forwarded from the caller.
        if unsafe { libc::munmap(ptr.cast(), size) } == 0 {
            stats::MUNMAP_CALLS.add(1);
            stats::RESERVED.sub(size);
        }
    }

    /// Returns a range obtained from [`map`] to the OS.
    ///
    /// # Safety
    /// `ptr` and `size` are exactly what one call to [`map`] returned and was
    /// given; nothing uses the range afterwards.
    pub(crate) unsafe fn unmap(ptr: NonNull<u8>, size: usize, _align: usize) {
        // SAFETY: the caller guarantees the range is a live mapping of ours.
        unsafe {
            raw_unmap(
                ptr.as_ptr(),
                checked_align_up(size, OS_PAGE_SIZE).unwrap_or(size),
            )
        };
    }

    /// Gives the physical memory behind `[ptr, ptr + size)` back to the OS;
    /// the range stays mapped. Returns whether the range now reads as zeros
    /// (true for `MADV_DONTNEED`; false for `MADV_FREE`, or on failure).
    ///
    /// The mode is the [`options::reset_mode`]: `MADV_DONTNEED` lowers RSS at
    /// once; `MADV_FREE` only under memory pressure. A kernel that rejects
    /// `MADV_FREE` (EINVAL) switches the process to `MADV_DONTNEED`.
    ///
    /// # Safety
    /// The range is page-aligned, lies inside one of our mappings, and holds
    /// nothing anyone still needs.
    pub(crate) unsafe fn reset(ptr: *mut u8, size: usize) -> bool {
        if size == 0 {
            return true;
        }
        stats::MADVISE_CALLS.add(1);
        if options::reset_mode() == ResetMode::Free && MADV_FREE_WORKS.load(Ordering::Relaxed) {
            // SAFETY: the caller guarantees the range is ours and unused.
            if unsafe { libc::madvise(ptr.cast(), size, libc::MADV_FREE) } == 0 {
                stats::RESET_TOTAL.add(size);
                return false;
            }
            // SAFETY: reading errno has no preconditions.
            if unsafe { *libc::__errno_location() } == libc::EINVAL {
                // Relaxed: a sticky hint; a racing call merely tries once more.
                MADV_FREE_WORKS.store(false, Ordering::Relaxed);
            }
        }
        // SAFETY: the caller guarantees the range is ours and unused.
        let done = unsafe { libc::madvise(ptr.cast(), size, libc::MADV_DONTNEED) } == 0;
        if done {
            stats::RESET_TOTAL.add(size);
        }
        done
    }

    /// Asks the kernel to back the range with transparent huge pages (2 MiB
    /// on x86-64) where it can: far fewer page faults for memory that is
    /// used whole. A kernel without THP ignores it (the call fails
    /// harmlessly).
    ///
    /// # Safety
    /// The range is page-aligned and lies inside one of our mappings.
    pub(crate) unsafe fn advise_huge_pages(ptr: *mut u8, size: usize) {
        stats::MADVISE_CALLS.add(1);
        // SAFETY: the caller guarantees the range is ours; the advice does
        // not change the contents.
        unsafe { libc::madvise(ptr.cast(), size, libc::MADV_HUGEPAGE) };
    }

    /// Withdraws [`advise_huge_pages`] from the range (`MADV_NOHUGEPAGE`):
    /// no fault maps a huge page there, and khugepaged leaves it alone. It
    /// would otherwise collapse a range with as little as one resident 4 KiB
    /// page back into a whole huge page (Linux's default `max_ptes_none` is
    /// 511), taking back within one scan the memory a partial reset gave
    /// back. Huge pages already mapped stay until something splits them.
    ///
    /// # Safety
    /// The range is page-aligned and lies inside one of our mappings.
    pub(crate) unsafe fn advise_no_huge_pages(ptr: *mut u8, size: usize) {
        stats::MADVISE_CALLS.add(1);
        // SAFETY: the caller guarantees the range is ours; the advice does
        // not change the contents.
        unsafe { libc::madvise(ptr.cast(), size, libc::MADV_NOHUGEPAGE) };
    }

    /// Moves the pages of `[from, from + size)` to `[to, to + size)`, which
    /// they replace, without copying or faulting them: the kernel moves
    /// the page-table entries (whole 2 MiB entries for transparent huge
    /// pages when both ends are 2 MiB-aligned). `mremap` with
    /// `MREMAP_FIXED`; the source must be a single mapping (one VMA: the
    /// same protection and advice throughout).
    ///
    /// # Safety
    /// Both ranges are page-aligned, disjoint, and lie inside mappings of
    /// ours that nothing uses; the source range's provenance ends here, and
    /// the destination is used through the destination mapping's pointer.
    pub(crate) unsafe fn move_pages(from: *mut u8, size: usize, to: *mut u8) -> super::Moved {
        // SAFETY: the caller guarantees both ranges are ours and unused.
        let moved = unsafe {
            libc::mremap(
                from.cast(),
                size,
                size,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to.cast::<libc::c_void>(),
            )
        };
        if moved != libc::MAP_FAILED {
            // The source mapping is gone; the destination was counted when
            // it was mapped.
            stats::RESERVED.sub(size);
            return super::Moved::Yes;
        }
        // A failed move may have unmapped the destination first: map it
        // again, fresh, so the caller's mapping has no hole.
        // SAFETY: `to` lies in a mapping of ours (caller); MAP_FIXED
        // replaces whatever is left there.
        let again = unsafe {
            libc::mmap(
                to.cast(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if again == to.cast() {
            super::Moved::No
        } else {
            super::Moved::Broken
        }
    }

    /// Cleared when the kernel rejects `MADV_FREE`.
    static MADV_FREE_WORKS: AtomicBool = AtomicBool::new(true);

    /// Milliseconds of a monotonic clock (coarse: a vDSO read, no system call).
    pub(crate) fn now_ms() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; the coarse monotonic clock
        // always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
        (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
    }
}

#[cfg(any(loom, miri))]
mod test_backend {
    use core::alloc::{GlobalAlloc, Layout};
    use core::ptr::NonNull;
    use std::alloc::System;

    /// See the unix backend. This backend cannot honour an `offset` that is
    /// not a multiple of `align` (only over-aligned huge blocks ask for one)
    /// and reports it as out of memory.
    pub(crate) fn map(size: usize, align: usize, offset: usize) -> Option<NonNull<u8>> {
        if !offset.is_multiple_of(align) {
            return None;
        }
        let layout = Layout::from_size_align(size, align).ok()?;
        // SAFETY: `size` is non-zero for every caller (a segment header at least).
        let memory = NonNull::new(unsafe { System.alloc_zeroed(layout) })?;
        LIVE_MAPPINGS.with(|live| live.set(live.get() + 1));
        Some(memory)
    }

    /// Bytes at the start of a mapping that [`unmap`] poisons.
    const POISONED_HEADER: usize = 64 << 10;

    std::thread_local! {
        /// Mappings made and not yet unmapped on this OS thread (a loom model
        /// runs all its threads on one OS thread), so models can check that
        /// every segment is released exactly once.
        static LIVE_MAPPINGS: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    }

    /// See `LIVE_MAPPINGS`.
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn live_mappings() -> usize {
        LIVE_MAPPINGS.with(core::cell::Cell::get)
    }

    /// # Safety
    /// `ptr`, `size` and `align` are exactly those of one [`map`] call.
    pub(crate) unsafe fn unmap(ptr: NonNull<u8>, size: usize, align: usize) {
        LIVE_MAPPINGS.with(|live| live.set(live.get() - 1));
        // The header (where the page descriptors and their atomics live) is
        // poisoned first: the System allocator keeps freed blocks mapped, so
        // a late access from a thread that should have been done with the
        // segment would otherwise go unnoticed; this way loom (or Miri)
        // trips over what it reads.
        // SAFETY: the mapping is ours until the dealloc below (caller).
        unsafe { ptr.as_ptr().write_bytes(0xDB, size.min(POISONED_HEADER)) };
        // SAFETY: map() succeeded with this very layout.
        unsafe { System.dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(size, align)) }
    }

    /// # Safety
    /// The range lies inside one of our mappings and holds nothing anyone needs.
    pub(crate) unsafe fn reset(ptr: *mut u8, size: usize) -> bool {
        // SAFETY: the caller guarantees the range is ours and unused.
        unsafe { ptr.write_bytes(0, size) };
        true
    }

    /// No transparent huge pages in the test backend.
    ///
    /// # Safety
    /// None needed; the signature matches the unix backend.
    pub(crate) unsafe fn advise_huge_pages(_ptr: *mut u8, _size: usize) {}

    /// No transparent huge pages in the test backend.
    ///
    /// # Safety
    /// None needed; the signature matches the unix backend.
    pub(crate) unsafe fn advise_no_huge_pages(_ptr: *mut u8, _size: usize) {}

    /// Never moves: the test backend's mappings are heap blocks. The
    /// destination keeps its (zeroed) memory and the source stays mapped.
    ///
    /// # Safety
    /// None needed; the signature matches the unix backend.
    pub(crate) unsafe fn move_pages(_from: *mut u8, _size: usize, _to: *mut u8) -> super::Moved {
        super::Moved::No
    }

    /// A clock that never moves: loom models and Miri runs see no delay expire.
    pub(crate) fn now_ms() -> u64 {
        0
    }
}

/// Fills `buf` with random bytes for secure mode's keys and seeds, without
/// allocating: `getrandom(2)`, else a read of `/dev/urandom`, else a mix of
/// the clocks and of stack and code addresses (weak, but never fails).
#[cfg(feature = "secure")]
pub(crate) fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n <= 0 {
            break;
        }
        filled += n.unsigned_abs();
    }
    if filled == buf.len() {
        return;
    }
    // SAFETY: a NUL-terminated path; the flags need nothing else.
    let fd = unsafe { libc::open(c"/dev/urandom".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        while filled < buf.len() {
            let rest = &mut buf[filled..];
            // SAFETY: our descriptor; `rest` is writable for its length.
            let n = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
            if n <= 0 {
                break;
            }
            filled += n.unsigned_abs();
        }
        // SAFETY: our descriptor, closed once.
        unsafe { libc::close(fd) };
    }
    if filled == buf.len() {
        return;
    }
    // Last resort: clocks and addresses (ASLR), mixed with splitmix64.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut ts) };
    let mut state = (ts.tv_sec as u64) << 32
        ^ ts.tv_nsec as u64
        ^ (&raw const ts).addr() as u64
        ^ (random_bytes as fn(&mut [u8]) as usize as u64);
    for byte in &mut buf[filled..] {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        *byte = (z ^ (z >> 31)) as u8;
    }
}

/// Makes `[ptr, ptr + size)` inaccessible (`PROT_NONE`): a guard page that
/// turns an overflow into a fault. Returns whether it worked.
///
/// # Safety
/// The range is page-aligned, inside one of our mappings, and holds no block.
#[cfg(all(feature = "secure", not(any(loom, miri))))]
pub(crate) unsafe fn protect_none(ptr: *mut u8, size: usize) -> bool {
    // SAFETY: the caller guarantees the range is ours and unused.
    unsafe { libc::mprotect(ptr.cast(), size, libc::PROT_NONE) == 0 }
}

/// Faults `[ptr, ptr + size)` in for writing (`MADV_POPULATE_WRITE`, Linux
/// 5.14): memory that is about to be split off from a transparent huge page
/// by a guard page is faulted now, while the whole huge page can still be
/// mapped at once, rather than 4 KiB at a time afterwards. Resident pages
/// are left as they are. Returns whether it worked (an older kernel refuses
/// with `EINVAL`; the memory is then faulted when touched).
///
/// # Safety
/// The range is page-aligned, inside one of our mappings, read-write, and
/// holds no block (its contents may be replaced by zero pages only where
/// nothing was resident).
#[cfg(all(feature = "secure", not(any(loom, miri))))]
pub(crate) unsafe fn populate_write(ptr: *mut u8, size: usize) -> bool {
    crate::stats::MADVISE_CALLS.add(1);
    // SAFETY: the caller guarantees the range is ours, writable and unused;
    // populating keeps resident contents.
    unsafe { libc::madvise(ptr.cast(), size, libc::MADV_POPULATE_WRITE) == 0 }
}

/// Whether every OS page of `[ptr, ptr + size)` is resident (`mincore`),
/// for ranges of at most 512 OS pages; false when the kernel refuses or the
/// range is longer.
///
/// # Safety
/// The range is page-aligned and inside one of our mappings.
#[cfg(all(feature = "secure", not(any(loom, miri))))]
pub(crate) unsafe fn all_resident(ptr: *mut u8, size: usize) -> bool {
    let mut pages = [0u8; 512];
    if size > pages.len() * OS_PAGE_SIZE {
        return false;
    }
    // SAFETY: the range is ours (caller); the vector holds one byte per
    // page of it (checked above).
    let done = unsafe { libc::mincore(ptr.cast(), size, pages.as_mut_ptr()) } == 0;
    done && pages[..size.div_ceil(OS_PAGE_SIZE)]
        .iter()
        .all(|&p| p & 1 != 0)
}

/// Makes `[ptr, ptr + size)` read-write again (a guard page that a huge
/// spare's new block, or a move of its pages, needs back). Returns whether
/// it worked.
///
/// # Safety
/// The range is page-aligned and inside one of our mappings.
#[cfg(all(feature = "secure", not(any(loom, miri))))]
pub(crate) unsafe fn protect_read_write(ptr: *mut u8, size: usize) -> bool {
    // SAFETY: the caller guarantees the range is ours; widening the
    // protection of our own memory changes no contents.
    unsafe { libc::mprotect(ptr.cast(), size, libc::PROT_READ | libc::PROT_WRITE) == 0 }
}

/// Returns the current resident set size of the process in bytes, read from
/// `/proc/self/statm` with raw system calls (no allocation).
#[cfg(not(any(loom, miri)))]
pub fn resident_bytes() -> Option<usize> {
    let mut buf = [0u8; 128];
    let text = read_proc_file(c"/proc/self/statm", &mut buf)?;
    // Second field: resident pages.
    let field = text.split(|&b| b == b' ').nth(1)?;
    let mut pages = 0usize;
    for &digit in field {
        if !digit.is_ascii_digit() {
            break;
        }
        pages = pages
            .checked_mul(10)?
            .checked_add(usize::from(digit - b'0'))?;
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.checked_mul(usize::try_from(page).ok()?)
}

/// Reads the file at `path` (a small `/proc` file) into `buf` with raw
/// system calls (no allocation) and returns what was read, at most
/// `buf.len()` bytes; `None` if it cannot be opened.
#[cfg(not(any(loom, miri)))]
fn read_proc_file<'a>(path: &core::ffi::CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: `path` is a NUL-terminated string (a `CStr`).
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    while len < buf.len() {
        let rest = &mut buf[len..];
        // SAFETY: `rest` is writable for its whole length; `fd` is open.
        let n = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        match usize::try_from(n) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    // SAFETY: `fd` is open and ours, closed once.
    unsafe { libc::close(fd) };
    Some(&buf[..len])
}

/// Returns the resident anonymous memory of the process that transparent
/// huge pages back, in bytes (`AnonHugePages` of `/proc/self/smaps_rollup`,
/// read with raw system calls: no allocation). `None` if unreadable.
#[cfg(not(any(loom, miri)))]
pub(crate) fn huge_page_bytes() -> Option<usize> {
    const FIELD: &[u8] = b"AnonHugePages:";
    let mut buf = [0u8; 4096];
    let text = read_proc_file(c"/proc/self/smaps_rollup", &mut buf)?;
    let at = text.windows(FIELD.len()).position(|w| w == FIELD)?;
    let mut kib = 0usize;
    let mut seen = false;
    for &byte in &text[at + FIELD.len()..] {
        match byte {
            b' ' | b'\t' if !seen => {}
            b'0'..=b'9' => {
                seen = true;
                kib = kib.checked_mul(10)?.checked_add(usize::from(byte - b'0'))?;
            }
            _ => break,
        }
    }
    if !seen {
        return None;
    }
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_honours_alignment_and_offset() {
        for (size, align, offset) in [
            (8192, 1 << 22, 0),
            (1 << 20, 1 << 24, 1 << 22),
            (4096, 4096, 0),
        ] {
            let p = map(size, align, offset).expect("map");
            assert_eq!(
                (p.as_ptr().addr() + offset) % align,
                0,
                "size {size} align {align} offset {offset}"
            );
            // SAFETY: the mapping is ours, `size` bytes long and zeroed.
            unsafe {
                assert_eq!(p.as_ptr().read(), 0);
                p.as_ptr().add(size - 1).write(7);
                unmap(p, size, align);
            }
        }
    }

    #[test]
    fn reset_reads_back_zero() {
        let size = 16 * OS_PAGE_SIZE;
        let p = map(size, OS_PAGE_SIZE, 0).expect("map");
        // SAFETY: the mapping is ours and `size` bytes long.
        unsafe {
            p.as_ptr().write_bytes(0xAB, size);
            assert!(reset(p.as_ptr(), size));
            assert!(
                (0..size)
                    .step_by(512)
                    .all(|i| p.as_ptr().add(i).read() == 0)
            );
            unmap(p, size, OS_PAGE_SIZE);
        }
    }

    #[test]
    fn absurd_sizes_are_refused() {
        assert!(map(usize::MAX - 100, 1 << 22, 0).is_none());
        assert!(map(1 << 62, 1 << 22, 0).is_none());
    }

    #[test]
    #[cfg(not(miri))]
    fn resident_bytes_reads_statm() {
        let rss = resident_bytes().expect("statm");
        assert!(rss > 0);
    }

    #[test]
    #[cfg(not(miri))]
    fn huge_page_bytes_reads_smaps_rollup() {
        // Present on every kernel since 4.14; the value itself depends on
        // the machine's THP setting, and is never above the resident set.
        let huge = huge_page_bytes().expect("smaps_rollup");
        let rss = resident_bytes().expect("statm");
        assert!(huge <= rss + (2 << 20), "{huge} > {rss}");
        assert_eq!(huge % 1024, 0);
    }
}
