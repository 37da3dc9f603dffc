//! A 2 MiB half advised `MADV_HUGEPAGE` that gives back part of its memory loses the advice, so
//! khugepaged cannot collapse it back into a whole huge page. Linux collapses an advised range
//! with as little as one resident 4 KiB page (`max_ptes_none` defaults to 511), every
//! `scan_sleep_millisecs` (10 s): without this, one `tests/rss.rs` run in twenty kept 6 MiB for
//! good after its frees, as huge pages refilled behind the reset.
//!
//! The test makes a heap dense in 1 KiB blocks (its later segments are advised whole), keeps one
//! block in every advised 2 MiB window, frees the rest and calls `collect(true)`. Then it does
//! what khugepaged would do, synchronously: `MADV_COLLAPSE` on each window. A window must stay
//! as resident as it was. Where the kernel has no `MADV_COLLAPSE` (before 6.1; checked on a
//! mapping of the test's own), it checks the advice itself instead: no such window may still be
//! in a mapping flagged `hg` in `/proc/self/smaps`. Skipped with a message where THP is off.
//!
//! Run: `cargo test --release --test huge_advice -- --nocapture`.

mod common;

use common::thp_mode;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const BLOCK: usize = 1024;
/// Twelve small segments' worth of 1 KiB blocks: the heap's later segments are advised whole.
const BYTES: usize = 48 << 20;
const WINDOW: usize = 2 << 20;
const OS_PAGE: usize = 4096;
const PAGES_PER_WINDOW: usize = WINDOW / OS_PAGE;

/// The mappings of `/proc/self/smaps`: start, end, and whether `VmFlags` has `hg`.
fn mappings() -> Vec<(usize, usize, bool)> {
    let text = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut out: Vec<(usize, usize, bool)> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.2 = flags.split_whitespace().any(|f| f == "hg");
            }
            continue;
        }
        let Some(range) = line.split_whitespace().next() else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
            out.push((lo, hi, false));
        }
    }
    out
}

/// Whether every byte of `[lo, lo + len)` lies in mappings advised `MADV_HUGEPAGE`.
fn advised(maps: &[(usize, usize, bool)], lo: usize, len: usize) -> bool {
    let mut at = lo;
    for &(start, end, hg) in maps {
        if start <= at && at < end {
            if !hg {
                return false;
            }
            at = end;
            if at >= lo + len {
                return true;
            }
        }
    }
    false
}

/// Resident OS pages in `[addr, addr + WINDOW)` (`mincore`).
fn resident_pages(addr: usize) -> usize {
    let mut vec = vec![0u8; PAGES_PER_WINDOW];
    // SAFETY: the window lies inside mappings of ours (the test's blocks' segments, or its own
    // mapping); `vec` has one byte per OS page of it.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, WINDOW, vec.as_mut_ptr()) };
    assert_eq!(
        rc,
        0,
        "mincore({addr:#x}): {}",
        std::io::Error::last_os_error()
    );
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

/// `MADV_COLLAPSE` on the window: whether the kernel collapsed it.
fn collapse(addr: usize) -> bool {
    // SAFETY: advice on a range of our own mappings; it does not change their contents.
    unsafe { libc::madvise(addr as *mut libc::c_void, WINDOW, libc::MADV_COLLAPSE) == 0 }
}

/// Whether this kernel collapses an advised range with one resident page on request: checked on
/// a mapping of the test's own.
fn collapse_works() -> bool {
    let len = 2 * WINDOW;
    // SAFETY: a fresh private anonymous mapping.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap a probe mapping");
    let window = (map as usize + WINDOW - 1) & !(WINDOW - 1);
    // SAFETY: the window lies inside the fresh mapping; one byte written in its first page.
    let works = unsafe {
        libc::madvise(window as *mut libc::c_void, WINDOW, libc::MADV_HUGEPAGE);
        (window as *mut u8).write_volatile(1);
        collapse(window) && resident_pages(window) == PAGES_PER_WINDOW
    };
    // SAFETY: the mapping made above, used no more.
    unsafe { libc::munmap(map, len) };
    works
}

#[test]
fn a_half_that_gave_memory_back_is_not_collapsed_again() {
    let mode = thp_mode();
    if mode.as_deref().is_none_or(|m| m == "never") || !shardalloc::options::huge_os_pages() {
        println!(
            "skipping: transparent huge pages off here ({mode:?}) or SHARDALLOC_HUGE_OS_PAGES=0"
        );
        return;
    }
    // Each block filled with a non-zero byte of its own, so a block whose memory went back by
    // mistake (it reads back as zeros) fails the last check.
    let fill = |i: usize| (i % 251 + 1) as u8;
    let mut blocks: Vec<(usize, Box<[u8; BLOCK]>)> = (0..BYTES / BLOCK)
        .map(|i| (i, Box::new([fill(i); BLOCK])))
        .collect();
    let maps = mappings();
    // Keep the block nearest the middle of each 2 MiB window that is advised whole.
    blocks.sort_by_key(|(_, b)| b.as_ptr() as usize);
    let mut kept = Vec::new();
    let mut windows = Vec::new();
    for (i, b) in blocks {
        let addr = b.as_ptr() as usize;
        let window = addr & !(WINDOW - 1);
        if addr - window >= WINDOW / 2
            && windows.last() != Some(&window)
            && advised(&maps, window, WINDOW)
        {
            windows.push(window);
            kept.push((i, b));
        }
    }
    assert!(
        windows.len() >= 4,
        "only {} advised 2 MiB windows hold blocks: the heap was not dense",
        windows.len()
    );
    shardalloc::collect(true);

    let collapses = collapse_works();
    if !collapses {
        println!("MADV_COLLAPSE unavailable here: checking the advice in /proc/self/smaps instead");
    }
    let maps = mappings();
    let mut failures = Vec::new();
    for &window in &windows {
        let before = resident_pages(window);
        assert!(
            before < PAGES_PER_WINDOW / 2,
            "window {window:#x} still holds {before} of {PAGES_PER_WINDOW} pages after the frees \
             and collect(true): nothing was given back"
        );
        if collapses {
            collapse(window);
            let after = resident_pages(window);
            if after > before + 16 {
                failures.push(format!("{window:#x}: {before} -> {after} pages"));
            }
        } else if advised(&maps, window, WINDOW) {
            failures.push(format!("{window:#x}: still advised MADV_HUGEPAGE"));
        }
    }
    println!(
        "{} advised 2 MiB windows, one 1 KiB block kept in each, {} refilled",
        windows.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "windows that gave memory back were collapsed again (resident 4 KiB pages before -> \
         after MADV_COLLAPSE):\n  {}",
        failures.join("\n  ")
    );
    for (i, b) in &kept {
        assert!(
            b.iter().all(|&x| x == fill(*i)),
            "kept block {i} lost its contents"
        );
    }
}
