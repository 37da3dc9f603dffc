//! Huge-page-aware segments (issue 12, point 3): a heap dense in small blocks gets transparent
//! huge pages behind its segments (`stats().huge_pages`, from `AnonHugePages` in
//! `/proc/self/smaps_rollup`), and freeing everything gives them back. Skipped with a message
//! where the kernel has THP off (`/sys/kernel/mm/transparent_hugepage/enabled` = `never`) or
//! `SHARDALLOC_HUGE_OS_PAGES=0`.
//!
//! Run: `cargo test --release --test huge_pages -- --nocapture`.

mod common;

use common::{mib, thp_mode};

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const BLOCK: usize = 1024;
/// Twelve segments' worth of 1 KiB blocks: the heap's fifth small segment on are backed by
/// huge pages from the start.
const BYTES: usize = 48 << 20;

#[test]
fn dense_small_blocks_get_huge_pages_and_give_them_back() {
    let mode = thp_mode();
    if mode.as_deref().is_none_or(|m| m == "never") || !shardalloc::options::huge_os_pages() {
        println!(
            "skipping: transparent huge pages off here ({mode:?}) or SHARDALLOC_HUGE_OS_PAGES=0"
        );
        return;
    }
    shardalloc::collect(true);
    let before = shardalloc::stats().huge_pages.expect("smaps_rollup");
    let blocks: Vec<Box<[u8; BLOCK]>> = (0..BYTES / BLOCK)
        .map(|i| Box::new([i as u8; BLOCK]))
        .collect();
    assert!(
        blocks
            .iter()
            .enumerate()
            .all(|(i, b)| b[BLOCK - 1] == i as u8)
    );
    let s = shardalloc::stats();
    let huge = s.huge_pages.expect("smaps_rollup");
    let resident = s.resident.expect("statm");
    println!(
        "THP {mode:?}: {:.1} MiB of {:.1} MiB resident on huge pages ({:.0} %) with {:.1} MiB of 1 KiB \
         blocks live (before: {:.1} MiB)",
        mib(huge),
        mib(resident),
        100.0 * huge as f64 / resident as f64,
        mib(s.live),
        mib(before)
    );
    // Eight of the twelve segments are advised whole (16 huge pages); the kernel may fall back
    // to 4 KiB pages when it has no free huge page, so ask for a quarter of that.
    assert!(
        huge >= before + (8 << 20),
        "only {:.1} MiB on huge pages (before: {:.1} MiB)",
        mib(huge),
        mib(before)
    );
    drop(blocks);
    shardalloc::collect(true);
    let after = shardalloc::stats();
    println!(
        "after the frees and collect(true): {:.1} MiB on huge pages, {:.1} MiB resident",
        mib(after.huge_pages.expect("smaps_rollup")),
        mib(after.resident.expect("statm"))
    );
    assert!(
        after.huge_pages.expect("smaps_rollup") <= before + (2 << 20),
        "huge pages kept after everything was freed: {:.1} MiB",
        mib(after.huge_pages.expect("smaps_rollup"))
    );
    assert_eq!(after.warm, 0, "collect(true) leaves nothing warm");
}
