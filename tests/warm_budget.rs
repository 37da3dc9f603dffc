//! The warm budget measures warm memory against the recent peak of memory in use, not only the
//! memory in use at this instant: a program that builds a structure beside the one it is about to
//! drop, then drops the old one while the new one is smaller, keeps the old one's memory warm for
//! its next build instead of giving it back and faulting it in again (`rebuild` at two threads:
//! 120-270 MiB reset and faulted back per run before).
//!
//! One test in its own process: it reads process-wide counters (`stats()`, `/proc/self/stat`).

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

const MIB: usize = 1024 * 1024;
const BLOCK: usize = 1024;

/// `bytes` of 1 KiB blocks, every byte written.
fn build(bytes: usize, tag: u8) -> Vec<Vec<u8>> {
    (0..bytes / BLOCK).map(|_| vec![tag; BLOCK]).collect()
}

/// Minor page faults of this process so far (field 10 of `/proc/self/stat`).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name (field 2) may hold spaces; the fields after it follow its ')'.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    after
        .split(' ')
        .nth(7)
        .and_then(|f| f.parse().ok())
        .expect("minflt")
}

#[test]
fn a_structure_dropped_beside_a_smaller_live_one_stays_warm_for_the_next_build() {
    // Only the budget may give memory back during the test, not the decay curve.
    shardalloc::options::set_reset_delay_ms(20_000).expect("a valid delay");
    let old = build(48 * MIB, 1);
    let new = build(32 * MIB, 2);
    let before = shardalloc::stats();
    drop(old);
    let after_drop = shardalloc::stats();
    // Warm now: 48 MiB, over the 32 MiB floor and over the 32 MiB in use, but not over the
    // 80 MiB in use a moment ago. Before, the budget gave back 16 MiB or more at once.
    let reset = after_drop.reset - before.reset;
    assert!(
        reset < 4 * MIB,
        "{} MiB of the dropped structure went back at once: {before:?} then {after_drop:?}",
        reset / MIB
    );

    let faults = minor_faults();
    let next = build(48 * MIB, 3);
    let faulted = minor_faults() - faults;
    // 48 MiB is 12 288 pages of 4 KiB; taken from the warm memory, nearly none fault.
    assert!(
        faulted < 2_000,
        "the next build faulted {faulted} pages: its memory was given back and touched again"
    );
    assert!(new.iter().all(|b| b[0] == 2 && b[BLOCK - 1] == 2));
    assert!(next.iter().all(|b| b[0] == 3 && b[BLOCK - 1] == 3));
}
