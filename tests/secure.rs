//! Secure mode (`--features secure`): each misuse runs in a child process (this test binary run
//! again with `SHARDALLOC_SECURE_CHILD=<name>`, selecting one `#[ignore]`d child test) and the
//! parent asserts the outcome: an abort (SIGABRT) whose stderr names the misuse and the address,
//! a fault (SIGSEGV) for overflows into guard pages, and never an attacker's address returned.
//!
//! Run: `cargo test --release --features secure --test secure`.
#![cfg(feature = "secure")]

use shardalloc::ShardAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;

#[global_allocator]
static GLOBAL: ShardAlloc = ShardAlloc;

const CHILD_ENV: &str = "SHARDALLOC_SECURE_CHILD";

/// What a child run ended with.
struct Outcome {
    signal: Option<i32>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the `#[ignore]`d test `name` of this binary in a child process.
fn run_child(name: &str) -> Outcome {
    run_child_with(name, &[])
}

/// [`run_child`] with extra environment variables.
fn run_child_with(name: &str, envs: &[(&str, &str)]) -> Outcome {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, name)
        .envs(envs.iter().copied())
        .output()
        .expect("spawn child");
    Outcome {
        signal: out.status.signal(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether this process is the child selected for `name`.
fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(name)
}

/// Tells the parent an address (it checks the abort message names it).
fn report(tag: &str, addr: usize) {
    let mut out = std::io::stdout();
    writeln!(out, "{tag} {addr:#x}").unwrap();
    out.flush().unwrap();
}

/// The address the child reported under `tag`.
fn reported(outcome: &Outcome, tag: &str) -> String {
    outcome
        .stdout
        .lines()
        .find_map(|l| {
            // (The harness may print "test <name> ... " on the same line first.)
            let (_, rest) = l.split_once(&format!("{tag} "))?;
            rest.split_whitespace().next().map(str::to_string)
        })
        .unwrap_or_else(|| panic!("child reported no {tag}: {}", outcome.stdout))
}

/// The child died of SIGSEGV (a guard page stopped it); `why` says which.
fn assert_faulted(outcome: &Outcome, why: &str) {
    assert_eq!(
        outcome.signal,
        Some(libc::SIGSEGV),
        "{why}: expected SIGSEGV (exit code {:?}); stdout: {}; stderr: {}",
        outcome.code,
        outcome.stdout,
        outcome.stderr
    );
}

/// The child died of SIGABRT with exactly `shardalloc: <what> of <addr>; aborting`.
fn assert_aborted(outcome: &Outcome, what: &str, addr: Option<&str>) {
    assert_eq!(
        outcome.signal,
        Some(libc::SIGABRT),
        "expected SIGABRT (exit code {:?}); stdout: {}; stderr: {}",
        outcome.code,
        outcome.stdout,
        outcome.stderr
    );
    let expected = match addr {
        Some(addr) => format!("shardalloc: {what} of {addr}; aborting"),
        None => format!("shardalloc: {what} of 0x"),
    };
    assert!(
        outcome.stderr.contains(&expected),
        "stderr lacks {expected:?}: {}",
        outcome.stderr
    );
    assert!(
        !outcome.stdout.contains("ATTACKER"),
        "an attacker's address was returned: {}",
        outcome.stdout
    );
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// A raw block from ShardAlloc.
fn alloc(size: usize) -> *mut u8 {
    // SAFETY: non-zero size.
    let p = unsafe { ShardAlloc.alloc(layout(size)) };
    assert!(!p.is_null());
    p
}

/// Frees through ShardAlloc (misuse on purpose in the children).
fn free(p: *mut u8) {
    // SAFETY: not in general — the children misuse it on purpose; the allocator must catch it.
    unsafe { shardalloc::free(p) }
}

/// Sends an address to another thread (raw pointers are not `Send`).
#[derive(Clone, Copy)]
struct Addr(usize);

fn ptr_of(a: Addr) -> *mut u8 {
    std::ptr::with_exposed_provenance_mut(a.0)
}

macro_rules! child {
    ($name:ident, $body:block) => {
        #[test]
        #[ignore = "child process of a secure-mode test"]
        fn $name() {
            if !is_child(stringify!($name)) {
                return;
            }
            $body
        }
    };
}

// ---- double frees ----------------------------------------------------------------------------

child!(child_double_free_local_free, {
    let keep = alloc(64); // the page stays in use
    let p = alloc(64);
    report("ADDR", p.addr());
    free(p);
    free(p); // still on `local_free`
    std::hint::black_box(keep);
    println!("SURVIVED");
});

#[test]
fn double_free_on_the_owner_thread_in_local_free_aborts() {
    let o = run_child("child_double_free_local_free");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

child!(child_double_free_free_list, {
    // An alloc/free loop on the only page of a size class: the freed block goes straight back
    // to the page's `free` list (retired page), where the second free finds it.
    let p = alloc(2800);
    free(p);
    let q = alloc(2800);
    free(q);
    report("ADDR", q.addr());
    free(q);
    println!("SURVIVED");
});

#[test]
fn double_free_on_the_owner_thread_in_free_aborts() {
    let o = run_child("child_double_free_free_list");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

child!(child_double_free_owner_then_other, {
    let keep = alloc(128);
    let p = alloc(128);
    report("ADDR", p.addr());
    free(p);
    let a = Addr(p.expose_provenance());
    std::thread::spawn(move || free(ptr_of(a))).join().unwrap();
    std::hint::black_box(keep);
    println!("SURVIVED");
});

#[test]
fn double_free_owner_then_other_thread_aborts() {
    let o = run_child("child_double_free_owner_then_other");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

child!(child_double_free_other_then_owner, {
    let keep = alloc(128);
    let p = alloc(128);
    report("ADDR", p.addr());
    let a = Addr(p.expose_provenance());
    // The other thread frees first (onto the page's thread_free list) and exits.
    std::thread::spawn(move || free(ptr_of(a))).join().unwrap();
    free(p);
    std::hint::black_box(keep);
    println!("SURVIVED");
});

#[test]
fn double_free_other_thread_then_owner_aborts() {
    let o = run_child("child_double_free_other_then_owner");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

child!(child_double_free_other_then_owner_collected, {
    // As above, but the owner collects the remote free (the block moves to its own lists)
    // before freeing again.
    let keep = alloc(128); // the page stays in use
    let p = alloc(128);
    report("ADDR", p.addr());
    let a = Addr(p.expose_provenance());
    std::thread::spawn(move || free(ptr_of(a))).join().unwrap();
    shardalloc::collect(false);
    free(p);
    std::hint::black_box(keep);
    println!("SURVIVED");
});

#[test]
fn double_free_other_thread_then_owner_after_collect_aborts() {
    let o = run_child("child_double_free_other_then_owner_collected");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

child!(child_double_free_after_page_emptied, {
    // The only block of its page freed by another thread, collected (the page empties and goes
    // back to its segment), then freed again by the owner.
    let p = alloc(128);
    report("ADDR", p.addr());
    let a = Addr(p.expose_provenance());
    std::thread::spawn(move || free(ptr_of(a))).join().unwrap();
    shardalloc::collect(true);
    free(p);
    println!("SURVIVED");
});

#[test]
fn double_free_after_the_page_emptied_aborts() {
    let o = run_child("child_double_free_after_page_emptied");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

child!(child_double_free_after_page_emptied_other_thread, {
    // As above, but the owner frees the block (its page empties and goes back to its segment)
    // and another thread frees it again: the remote path's boundary test must see the page is
    // no longer in use. The thread is started first, so that nothing allocates between the two
    // frees (a new page could take the slot).
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    let addr = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(2));
    let other = {
        let (addr, go) = (Arc::clone(&addr), Arc::clone(&go));
        std::thread::spawn(move || {
            go.wait();
            free(ptr_of(Addr(addr.load(Ordering::SeqCst))));
        })
    };
    let p = alloc(128);
    report("ADDR", p.addr());
    free(p);
    shardalloc::collect(true);
    addr.store(p.expose_provenance(), Ordering::SeqCst);
    go.wait();
    other.join().unwrap();
    println!("SURVIVED");
});

#[test]
fn double_free_by_another_thread_after_the_page_emptied_aborts() {
    let o = run_child("child_double_free_after_page_emptied_other_thread");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

child!(child_double_free_two_other_threads, {
    let p = alloc(128);
    report("ADDR", p.addr());
    let a = Addr(p.expose_provenance());
    std::thread::spawn(move || free(ptr_of(a))).join().unwrap();
    std::thread::spawn(move || free(ptr_of(a))).join().unwrap();
    println!("SURVIVED");
});

#[test]
fn double_free_by_two_other_threads_aborts() {
    let o = run_child("child_double_free_two_other_threads");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

child!(child_double_free_huge, {
    let p = alloc(3 << 20);
    report("ADDR", p.addr());
    free(p); // kept as a spare for the reset delay
    free(p);
    println!("SURVIVED");
});

#[test]
fn double_free_of_a_huge_block_aborts() {
    let o = run_child("child_double_free_huge");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

// ---- invalid frees ---------------------------------------------------------------------------

child!(child_interior_free, {
    let p = alloc(64);
    report("ADDR", p.addr() + 16);
    free(p.wrapping_add(16));
    println!("SURVIVED");
});

#[test]
fn free_of_an_interior_pointer_aborts() {
    let o = run_child("child_interior_free");
    assert_aborted(&o, "invalid free", Some(&reported(&o, "ADDR")));
}

child!(child_interior_free_other_thread, {
    let keep = alloc(64); // the page stays in use
    let p = alloc(64);
    report("ADDR", p.addr() + 16);
    let a = Addr(p.wrapping_add(16).expose_provenance());
    std::thread::spawn(move || free(ptr_of(a))).join().unwrap();
    std::hint::black_box(keep);
    println!("SURVIVED");
});

#[test]
fn free_of_an_interior_pointer_by_another_thread_aborts() {
    let o = run_child("child_interior_free_other_thread");
    assert_aborted(&o, "invalid free", Some(&reported(&o, "ADDR")));
}

child!(child_free_past_the_extension, {
    // A block boundary of a page in use that no extension has threaded yet (200 blocks on:
    // an extension threads about 21 blocks of this class, 192 B, and a page holds 341):
    // never handed out.
    let p = alloc(176);
    // SAFETY: a live block of ours.
    let size = unsafe { shardalloc::usable_size(p) };
    let q = p.wrapping_add(size * 200);
    report("ADDR", q.addr());
    free(q);
    std::hint::black_box(p);
    println!("SURVIVED");
});

#[test]
fn free_of_a_block_past_the_extension_aborts() {
    let o = run_child("child_free_past_the_extension");
    assert_aborted(&o, "double free", Some(&reported(&o, "ADDR")));
}

child!(child_free_into_the_segment_header, {
    // Our own segment, on its owner thread, but below the first page's blocks: the offset
    // from the page start is "negative".
    let p = alloc(64);
    let header = p.wrapping_sub(p.addr() % (4 << 20)).wrapping_add(64);
    report("ADDR", header.addr());
    free(header);
    std::hint::black_box(p);
    println!("SURVIVED");
});

#[test]
fn free_into_a_segment_header_aborts() {
    let o = run_child("child_free_into_the_segment_header");
    assert_aborted(&o, "invalid free", Some(&reported(&o, "ADDR")));
}

child!(child_stack_free, {
    let mut on_stack = [0u64; 8];
    let p = on_stack.as_mut_ptr().cast::<u8>();
    report("ADDR", p.addr());
    free(p);
    println!("SURVIVED {}", on_stack[0]);
});

#[test]
fn free_of_a_stack_pointer_aborts() {
    let o = run_child("child_stack_free");
    assert_aborted(&o, "invalid free", Some(&reported(&o, "ADDR")));
}

child!(child_foreign_mmap_free, {
    const LEN: usize = 64 << 20;
    // SAFETY: an anonymous private mapping; no preconditions.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base.cast::<u8>();
    // A pointer whose 4 MiB-aligned address below lies inside our mapping: a "segment header"
    // the attacker controls, filled with plausible garbage.
    let seg = (base.addr() + (8 << 20)) & !((4 << 20) - 1);
    // SAFETY: inside our own mapping.
    unsafe { base.add(seg - base.addr()).write_bytes(0x01, 64 << 10) };
    let p = base.wrapping_add(seg - base.addr() + (1 << 20));
    report("ADDR", p.addr());
    free(p);
    println!("SURVIVED");
});

#[test]
fn free_into_memory_mapped_by_the_program_aborts() {
    let o = run_child("child_foreign_mmap_free");
    assert_aborted(&o, "invalid free", Some(&reported(&o, "ADDR")));
}

/// A segment's 4 MiB.
const SEGMENT: usize = 4 << 20;

/// A copy of the first 16 KiB of `block`'s segment (its header), taken while `block` is live,
/// and the segment's address.
fn copy_segment_header(block: *mut u8) -> (usize, [u8; 16 << 10]) {
    let segment = (block.addr() - 1) & !(SEGMENT - 1);
    let mut header = [0u8; 16 << 10];
    // SAFETY: the segment's header, ours and mapped while `block` is live; read as bytes only.
    unsafe {
        std::ptr::copy_nonoverlapping(
            std::ptr::with_exposed_provenance::<u8>(segment),
            header.as_mut_ptr(),
            header.len(),
        )
    };
    (segment, header)
}

/// Maps memory of the program's own at `segment` (which must have gone back to the OS) and
/// writes `header` there: a forged header that passes every test but the segment map's.
fn forge_segment_header(segment: usize, header: &[u8]) {
    // SAFETY: a fresh anonymous mapping at a fixed address, refused if anything is there.
    let at = unsafe {
        libc::mmap(
            std::ptr::with_exposed_provenance_mut(segment),
            SEGMENT,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(
        at.addr(),
        segment,
        "the segment was not given back to the OS"
    );
    // SAFETY: our own mapping, at least `header.len()` bytes.
    unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), at.cast::<u8>(), header.len()) };
}

child!(child_free_into_a_remapped_segment, {
    // The owner cache (a free into the segment the thread last freed into as its owner skips
    // the map): a 512 KiB block has a segment to itself; its free caches that segment, empties
    // it, and `collect(true)` unmaps it. The program then maps memory of its own at the same
    // address holding a copy of the segment's header taken while the block was live, and frees
    // the block again. A stale cache entry would let the free trust the forged header; the
    // unmap must have made it stale, so the map is asked and the free is refused. Nothing in
    // between frees anything (a free into another segment of ours would replace the entry).
    let p = alloc(512 << 10);
    let (segment, header) = copy_segment_header(p);
    report("ADDR", p.addr());
    free(p);
    shardalloc::collect(true);
    forge_segment_header(segment, &header);
    free(p);
    println!("SURVIVED");
});

#[test]
fn free_into_a_segment_the_program_remapped_aborts() {
    let o = run_child("child_free_into_a_remapped_segment");
    assert_aborted(&o, "invalid free", Some(&reported(&o, "ADDR")));
}

child!(child_remote_free_into_a_remapped_segment, {
    // As above for a free by another thread, which remembers the segment the map vouched for
    // (and still takes the owner test): thread B frees the owner's 512 KiB block (remembering
    // its segment), the owner takes it back and `collect(true)` unmaps the segment, the
    // program maps a forged copy of the segment's header there, and B frees the block again:
    // the unmap made B's entry stale, so the map is asked and the free is refused. B does
    // nothing else in between (barriers, which do not allocate, order the steps).
    use std::sync::{Arc, Barrier};
    let p = alloc(512 << 10);
    let (segment, header) = copy_segment_header(p);
    report("ADDR", p.addr());
    let (first, second) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let other = {
        let (first, second) = (Arc::clone(&first), Arc::clone(&second));
        let a = Addr(p.expose_provenance());
        std::thread::spawn(move || {
            free(ptr_of(a));
            first.wait();
            second.wait();
            free(ptr_of(a));
        })
    };
    first.wait();
    shardalloc::collect(true);
    forge_segment_header(segment, &header);
    second.wait();
    other.join().unwrap();
    println!("SURVIVED");
});

#[test]
fn a_remote_free_into_a_segment_the_program_remapped_aborts() {
    let o = run_child("child_remote_free_into_a_remapped_segment");
    assert_aborted(&o, "invalid free", Some(&reported(&o, "ADDR")));
}

// ---- free-list poisoning ---------------------------------------------------------------------

/// Allocates 64 B blocks until the allocator aborts or `limit` blocks are out; prints
/// "ATTACKER" if `attacker` is ever returned.
fn allocate_looking_for(attacker: usize, limit: usize) {
    for _ in 0..limit {
        let q = alloc(64);
        if q.addr() == attacker {
            println!("ATTACKER {:#x}", q.addr());
            std::process::exit(3);
        }
    }
}

child!(child_uaf_link_overwrite_stack, {
    let mut target = [0u64; 16];
    let attacker = target.as_mut_ptr().addr();
    let keep: Vec<*mut u8> = (0..8).map(|_| alloc(64)).collect();
    let victim = alloc(64);
    free(victim);
    report("ADDR", victim.addr());
    // Use after free: the attacker's address over the link.
    // SAFETY: not safe — the misuse under test; the block's memory is still mapped.
    unsafe { victim.cast::<usize>().write(attacker) };
    allocate_looking_for(attacker, 20_000);
    println!("SURVIVED {} {}", keep.len(), target[0]);
});

#[test]
fn a_use_after_free_write_of_a_stack_address_never_returns_it() {
    let o = run_child("child_uaf_link_overwrite_stack");
    assert_aborted(
        &o,
        "free-list corruption in the free block",
        Some(&reported(&o, "ADDR")),
    );
}

child!(child_uaf_link_overwrite_live_block, {
    // The attacker points the link at a live block, hoping for two overlapping live blocks.
    let live: Vec<*mut u8> = (0..8).map(|_| alloc(64)).collect();
    let victim = alloc(64);
    free(victim);
    report("ADDR", victim.addr());
    let attacker = live[3].addr();
    // SAFETY: not safe — the misuse under test.
    unsafe { victim.cast::<usize>().write(attacker) };
    allocate_looking_for(attacker, 20_000);
    println!("SURVIVED");
});

#[test]
fn a_use_after_free_write_of_a_live_block_address_never_returns_it() {
    let o = run_child("child_uaf_link_overwrite_live_block");
    assert_aborted(
        &o,
        "free-list corruption in the free block",
        Some(&reported(&o, "ADDR")),
    );
}

child!(child_linear_overflow, {
    // Find two neighbours (the layout is randomized), free the upper one, overflow the lower.
    let blocks: Vec<*mut u8> = (0..64).map(|_| alloc(64)).collect();
    let mut sorted: Vec<usize> = blocks.iter().map(|p| p.addr()).collect();
    sorted.sort_unstable();
    let lower = sorted
        .windows(2)
        .find(|w| w[1] == w[0] + 64)
        .expect("two neighbours")[0];
    let lower = blocks.iter().copied().find(|p| p.addr() == lower).unwrap();
    let upper = lower.wrapping_add(64);
    free(upper);
    report("ADDR", upper.addr());
    // SAFETY: not safe — a 72-byte write into a 64-byte block, the misuse under test.
    unsafe { lower.write_bytes(0x41, 72) };
    allocate_looking_for(0x4141_4141_4141_4141, 20_000);
    println!("SURVIVED");
});

#[test]
fn a_linear_overflow_into_a_free_neighbours_link_is_caught() {
    let o = run_child("child_linear_overflow");
    assert_aborted(
        &o,
        "free-list corruption in the free block",
        Some(&reported(&o, "ADDR")),
    );
}

// ---- guard pages -----------------------------------------------------------------------------

/// Writes past the end of `p` (of `size` bytes) in 4 KiB steps; before each write checks that
/// the target is in none of `others` (exit 4 if it is: the overflow reached a live block).
fn overflow(p: *mut u8, size: usize, others: &[(usize, usize)]) {
    let mut offset = size;
    loop {
        let target = p.addr() + offset;
        if others.iter().any(|&(s, l)| target >= s && target < s + l) {
            println!("REACHED a live block at {target:#x}");
            std::process::exit(4);
        }
        // SAFETY: not safe — the overflow under test; the guard page must stop it.
        unsafe { p.wrapping_add(offset).write_volatile(0x5A) };
        offset += 4096;
        if offset > 64 << 20 {
            println!("NO FAULT");
            std::process::exit(5);
        }
    }
}

child!(child_overflow_large, {
    let blocks: Vec<*mut u8> = (0..6).map(|_| alloc(1 << 20)).collect();
    let spans: Vec<(usize, usize)> = blocks.iter().map(|p| (p.addr(), 1 << 20)).collect();
    overflow(blocks[0], 1 << 20, &spans[1..]);
});

#[test]
fn writing_past_a_1_mib_block_faults_before_another_block() {
    assert_faulted(&run_child("child_overflow_large"), "past a 1 MiB block");
}

child!(child_overflow_huge, {
    let blocks: Vec<*mut u8> = (0..4).map(|_| alloc(3 << 20)).collect();
    let spans: Vec<(usize, usize)> = blocks.iter().map(|p| (p.addr(), 3 << 20)).collect();
    overflow(blocks[0], 3 << 20, &spans[1..]);
});

#[test]
fn writing_past_a_huge_block_faults_before_another_block() {
    assert_faulted(&run_child("child_overflow_huge"), "past a huge block");
}

/// Writes one byte in every OS page of `[p, p + len)`: a spare's memory is then resident.
fn touch(p: *mut u8, len: usize) {
    for offset in (0..len).step_by(4096) {
        // SAFETY: inside a live block of `len` bytes (caller).
        unsafe { p.add(offset).write_volatile(1) };
    }
}

/// A huge block made of spares' memory, as the environment variable `SECURE_TEST_RESHAPE`
/// says: `reused`, an 8 MiB spare taken for a 3 MiB block (its guard page moved to the new
/// end, its tail split off as a spare of its own), or `gathered`, two 6 MiB spares moved into
/// a 12 MiB block. Returns the block and its usable size; exits with 6 if no spare was
/// reshaped (the test would prove nothing).
fn reshaped_huge_block() -> (*mut u8, usize) {
    let how = std::env::var("SECURE_TEST_RESHAPE").unwrap_or_default();
    let p = match how.as_str() {
        "reused" => {
            let big = alloc(8 << 20);
            touch(big, 8 << 20);
            free(big);
            let p = alloc(3 << 20);
            if p.addr() >> 22 != big.addr() >> 22 {
                println!("NOT RESHAPED: the 3 MiB block is not in the 8 MiB spare");
                std::process::exit(6);
            }
            p
        }
        "gathered" => {
            let (a, b) = (alloc(6 << 20), alloc(6 << 20));
            touch(a, 6 << 20);
            touch(b, 6 << 20);
            free(a);
            free(b);
            let moved = shardalloc::stats().moved;
            let p = alloc(12 << 20);
            if shardalloc::stats().moved == moved {
                println!("NOT RESHAPED: no spare moved into the 12 MiB block");
                std::process::exit(6);
            }
            p
        }
        _ => panic!("SECURE_TEST_RESHAPE={how:?}: expected reused or gathered"),
    };
    // SAFETY: a live block of ours.
    (p, unsafe { shardalloc::usable_size(p) })
}

child!(child_write_past_a_reshaped_huge_block, {
    let (p, len) = reshaped_huge_block();
    touch(p, len);
    // The next huge block takes the spare split off the old one, or other memory.
    let next = alloc(3 << 20);
    touch(next, 3 << 20);
    // SAFETY: not safe — the OS page right after the block, on purpose; its guard page must
    // stop it.
    unsafe {
        p.wrapping_add(len.next_multiple_of(4096))
            .write_volatile(0x5A)
    };
    println!("WROTE past {p:p}+{len}");
});

child!(child_overflow_reshaped_huge, {
    let (p, len) = reshaped_huge_block();
    // Blocks that may take the spare split off right after it, or other spares.
    let others: Vec<*mut u8> = (0..3).map(|_| alloc(3 << 20)).collect();
    let spans: Vec<(usize, usize)> = others.iter().map(|q| (q.addr(), 3 << 20)).collect();
    overflow(p, len, &spans);
});

#[test]
fn writing_past_a_huge_block_made_of_spares_faults_at_once() {
    for how in ["reused", "gathered"] {
        let o = run_child_with(
            "child_write_past_a_reshaped_huge_block",
            &[("SECURE_TEST_RESHAPE", how)],
        );
        assert_faulted(&o, &format!("the page after a {how} huge block"));
    }
}

#[test]
fn writing_past_a_huge_block_made_of_spares_faults_before_another_block() {
    for how in ["reused", "gathered"] {
        let o = run_child_with(
            "child_overflow_reshaped_huge",
            &[("SECURE_TEST_RESHAPE", how)],
        );
        assert_faulted(&o, &format!("past a {how} huge block"));
    }
}

/// The end of live block `p` (its usable size rounded up to whole OS pages): where its guard
/// page starts.
fn block_end(p: *mut u8) -> usize {
    // SAFETY: a live block of ours.
    p.addr() + unsafe { shardalloc::usable_size(p) }.next_multiple_of(4096)
}

/// Exits with 6 (the test would prove nothing) unless `p` lies in the segment of `spare`.
fn expect_in_spare(p: *mut u8, spare: *mut u8, what: &str) {
    if p.addr() >> 22 != spare.addr() >> 22 {
        println!("NOT RESHAPED: {what}");
        std::process::exit(6);
    }
}

child!(child_reuse_keeps_the_guard_page, {
    // `SECURE_TEST_CASE=shrunk`: a 5 MiB block in the spare of a 6 MiB one ends where the
    // 6 MiB block ended, right before its guard page, which stays where it is (no `mprotect`).
    // `tail`: a 3 MiB block in an 8 MiB spare ends a page below the 4 MiB boundary, where its
    // guard page goes; the spare splits off at that boundary with the old guard page, and the
    // next 3 MiB block ends right before it. Then writes past the block `SECURE_TEST_WRITE`
    // names (`b` or `c`) in 4 KiB steps, checking it never reaches another live block.
    let case = std::env::var("SECURE_TEST_CASE").unwrap_or_default();
    let which = std::env::var("SECURE_TEST_WRITE").unwrap_or_default();
    let (first, second) = if case == "shrunk" {
        (6 << 20, 5 << 20)
    } else {
        (8 << 20, 3 << 20)
    };
    let a = alloc(first);
    touch(a, first);
    let old_end = block_end(a);
    free(a);
    let b = alloc(second);
    expect_in_spare(b, a, "the second block is not in the first one's spare");
    let mut live = vec![(b.addr(), second)];
    if case == "shrunk" {
        if block_end(b) == old_end {
            println!("B ENDS AT THE OLD GUARD");
        }
    } else {
        if (block_end(b) + 4096).is_multiple_of(4 << 20) {
            println!("B ENDS A PAGE BELOW A 4 MIB BOUNDARY");
        }
        let c = alloc(3 << 20);
        expect_in_spare(
            c.wrapping_sub(4 << 20),
            a,
            "the third block is not in the split tail",
        );
        if block_end(c) == old_end {
            println!("C ENDS AT THE OLD GUARD");
        }
        live.push((c.addr(), 3 << 20));
    }
    for &(p, len) in &live {
        touch(p as *mut u8, len);
    }
    let target = if which == "c" { 1 } else { 0 };
    let (p, len) = live[target];
    let others: Vec<(usize, usize)> = live.iter().copied().filter(|&(q, _)| q != p).collect();
    // The first step is the OS page right after the block: its guard page.
    overflow(p as *mut u8, len, &others);
});

child!(child_gathered_block_below_a_boundary, {
    // Two written 6 MiB blocks, freed, gathered into a 15 MiB block: its usual end, 16 MiB
    // into its segment, is a 4 MiB boundary, and the huge page below it is moved, resident
    // memory, so the block ends a page lower, its guard page the last page before the
    // boundary (the memory past it splits off as a spare). Writes past it in 4 KiB steps.
    let (a, b) = (alloc(6 << 20), alloc(6 << 20));
    touch(a, 6 << 20);
    touch(b, 6 << 20);
    free(a);
    free(b);
    let moved = shardalloc::stats().moved;
    let p = alloc(15 << 20);
    if shardalloc::stats().moved == moved {
        println!("NOT RESHAPED: no spare moved into the 15 MiB block");
        std::process::exit(6);
    }
    if (block_end(p) + 4096).is_multiple_of(4 << 20) {
        println!("ENDS A PAGE BELOW A 4 MIB BOUNDARY");
    }
    touch(p, 15 << 20);
    // Blocks that may take the spare split off right after it.
    let others: Vec<(usize, usize)> = (0..2).map(|_| (alloc(3 << 20).addr(), 3 << 20)).collect();
    overflow(p, 15 << 20, &others);
});

#[test]
fn a_gathered_block_ends_below_a_4_mib_boundary_and_faults_past_it() {
    let o = run_child("child_gathered_block_below_a_boundary");
    assert_faulted(&o, "past a gathered block ending below a 4 MiB boundary");
    assert!(
        o.stdout.contains("ENDS A PAGE BELOW A 4 MIB BOUNDARY"),
        "{}",
        o.stdout
    );
}

#[test]
fn a_reused_spare_keeps_its_guard_page_where_the_block_can_end_before_it() {
    let o = run_child_with(
        "child_reuse_keeps_the_guard_page",
        &[("SECURE_TEST_CASE", "shrunk"), ("SECURE_TEST_WRITE", "b")],
    );
    assert_faulted(&o, "past a block ending at its spare's guard page");
    assert!(o.stdout.contains("B ENDS AT THE OLD GUARD"), "{}", o.stdout);
}

#[test]
fn a_split_tail_keeps_the_old_guard_page_for_its_next_block() {
    for which in ["b", "c"] {
        let o = run_child_with(
            "child_reuse_keeps_the_guard_page",
            &[("SECURE_TEST_CASE", "tail"), ("SECURE_TEST_WRITE", which)],
        );
        assert_faulted(&o, &format!("past block {which}"));
        assert!(
            o.stdout.contains("B ENDS A PAGE BELOW A 4 MIB BOUNDARY"),
            "{}",
            o.stdout
        );
        assert!(o.stdout.contains("C ENDS AT THE OLD GUARD"), "{}", o.stdout);
    }
}

child!(child_reuse_prefers_a_spare_that_keeps_its_guard, {
    // Spare A, of a 3 MiB block mapped with guard pages off (so it has none), is the smaller
    // one: 6 MiB of mapping against spare B's 8 MiB (of a 4.5 MiB block, its guard page 6 MiB
    // in). A 3 MiB block fits either, but only in B can it end right before a guard page that
    // is already there: it goes to B, and A is left for later (in A its guard page would need
    // an `mprotect`). Then writes past it in 4 KiB steps.
    shardalloc::options::set_secure_guard_pages(false);
    let a = alloc(3 << 20);
    shardalloc::options::set_secure_guard_pages(true);
    let b = alloc(9 << 19);
    touch(a, 3 << 20);
    touch(b, 9 << 19);
    let b_end = block_end(b);
    free(a);
    free(b);
    let c = alloc(3 << 20);
    if c.addr() >> 22 == a.addr() >> 22 {
        println!("IN THE SMALLER SPARE, WITHOUT A GUARD PAGE");
        std::process::exit(7);
    }
    expect_in_spare(c, b, "the 3 MiB block is in neither spare");
    if block_end(c) == b_end {
        println!("C ENDS AT B'S GUARD");
    }
    touch(c, 3 << 20);
    overflow(c, 3 << 20, &[]);
});

#[test]
fn a_reused_spare_is_one_whose_guard_page_stays_where_one_can() {
    let o = run_child("child_reuse_prefers_a_spare_that_keeps_its_guard");
    assert_faulted(&o, "past a block in the spare that kept its guard page");
    assert!(o.stdout.contains("C ENDS AT B'S GUARD"), "{}", o.stdout);
}

/// Minor page faults of the calling thread so far.
fn thread_minflt() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `usage` is a valid out-pointer for getrusage.
    let done = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(done, 0, "getrusage(RUSAGE_THREAD)");
    // SAFETY: getrusage filled it.
    unsafe { usage.assume_init() }.ru_minflt
}

child!(child_block_in_untouched_spare_memory, {
    // A 7 MiB block never written past its first huge page (its start, within the header's
    // huge page, is written when it is handed out), freed; a 3 MiB block in its spare would
    // end a page below the 4 MiB boundary, its guard page splitting its last huge page (2–4
    // MiB, not resident), which would then be faulted 4 KiB at a time: it is placed as usual
    // instead, its guard page on the boundary.
    let a = alloc(7 << 20);
    free(a);
    let b = alloc(3 << 20);
    expect_in_spare(b, a, "the 3 MiB block is not in the 7 MiB spare");
    let before = thread_minflt();
    touch(b, 3 << 20);
    println!("FAULTS {}", thread_minflt() - before);
});

#[test]
fn a_block_in_untouched_spare_memory_is_faulted_in_huge_pages() {
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !(mode.contains("[always]") || mode.contains("[madvise]"))
        || !shardalloc::options::huge_os_pages()
    {
        println!("skipping: transparent huge pages off here ({mode:?})");
        return;
    }
    let o = run_child("child_block_in_untouched_spare_memory");
    assert_eq!(o.code, Some(0), "{} {}", o.stdout, o.stderr);
    let faults: i64 = reported(&o, "FAULTS").parse().expect("a fault count");
    // Two huge pages at most (and a few 4 KiB ones); 4 KiB faults would take over 500.
    assert!(faults < 64, "{faults} page faults for a 3 MiB block");
}

// ---- SHARDALLOC_SECURE_GUARD_PAGES ------------------------------------------------------------

child!(child_write_the_guard_page, {
    // The OS page right after a huge block: its segment's guard page.
    let p = alloc(3 << 20);
    // SAFETY: a live block of ours.
    let end = p.addr() + unsafe { shardalloc::usable_size(p) };
    let guard = end.next_multiple_of(4096);
    // SAFETY: not safe — past the block on purpose; a guard page must stop it.
    unsafe { p.wrapping_add(guard - p.addr()).write_volatile(0x5A) };
    println!("WROTE {guard:#x}");
});

#[test]
fn guard_pages_can_be_turned_off() {
    assert_faulted(
        &run_child("child_write_the_guard_page"),
        "default: guard page",
    );
    let off = run_child_with(
        "child_write_the_guard_page",
        &[("SHARDALLOC_SECURE_GUARD_PAGES", "0")],
    );
    assert_eq!(
        off.code,
        Some(0),
        "no guard page: {} {}",
        off.stdout,
        off.stderr
    );
    reported(&off, "WROTE");
    assert!(!off.stderr.contains("ignoring"), "{}", off.stderr);
}

#[test]
fn an_invalid_guard_pages_value_is_reported_and_ignored() {
    let o = run_child_with(
        "child_write_the_guard_page",
        &[("SHARDALLOC_SECURE_GUARD_PAGES", "off")],
    );
    assert!(
        o.stderr
            .contains("shardalloc: ignoring SHARDALLOC_SECURE_GUARD_PAGES=off: expected 0 or 1\n"),
        "stderr: {}",
        o.stderr
    );
    assert_faulted(&o, "the default (guards) stays");
}

// ---- randomized layout -----------------------------------------------------------------------

child!(child_adjacency, {
    // Of 4096 consecutive 48 B allocations (fresh extensions, mostly), the share (per mille)
    // that lie right after the previous one in memory.
    let blocks: Vec<*mut u8> = (0..4096).map(|_| alloc(48)).collect();
    let adjacent = blocks
        .windows(2)
        .filter(|w| w[1].addr() == w[0].addr() + 48)
        .count();
    println!("ADJACENT {}", adjacent * 1000 / (blocks.len() - 1));
});

fn adjacency(envs: &[(&str, &str)]) -> (usize, Outcome) {
    let o = run_child_with("child_adjacency", envs);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    (reported(&o, "ADJACENT").parse().unwrap(), o)
}

#[test]
fn extensions_shuffle_in_runs_groups_or_every_block() {
    // Default: each block of 48 B joins one of two runs by a coin flip, each run in address
    // order: the next block is the neighbour in memory half of the time.
    let (runs, o) = adjacency(&[]);
    assert!(
        (350..650).contains(&runs),
        "runs: {runs} per mille adjacent"
    );
    assert!(!o.stderr.contains("ignoring"), "{}", o.stderr);
    let (named, o) = adjacency(&[("SHARDALLOC_SECURE_SHUFFLE", "runs")]);
    assert!(
        (350..650).contains(&named),
        "runs: {named} per mille adjacent"
    );
    assert!(!o.stderr.contains("ignoring"), "{}", o.stderr);
    // SHARDALLOC_SECURE_SHUFFLE=groups: 1 KiB groups of 21 blocks of 48 B in address order, in
    // a random order.
    let (groups, o) = adjacency(&[("SHARDALLOC_SECURE_SHUFFLE", "groups")]);
    assert!(
        (800..990).contains(&groups),
        "groups: {groups} per mille adjacent"
    );
    assert!(!o.stderr.contains("ignoring"), "{}", o.stderr);
    // SHARDALLOC_SECURE_SHUFFLE=blocks: every block in a random order (1 in 85 by chance).
    let (blocks, o) = adjacency(&[("SHARDALLOC_SECURE_SHUFFLE", "blocks")]);
    assert!(blocks < 100, "blocks: {blocks} per mille adjacent");
    assert!(!o.stderr.contains("ignoring"), "{}", o.stderr);
    let (_, o) = adjacency(&[("SHARDALLOC_SECURE_SHUFFLE", "none")]);
    assert!(
        o.stderr.contains(
            "shardalloc: ignoring SHARDALLOC_SECURE_SHUFFLE=none: expected runs, groups or blocks\n"
        ),
        "{}",
        o.stderr
    );
}

child!(child_layout, {
    // Offsets inside the 4 MiB segment: the same in two runs unless the layout is randomized
    // (the segments' own addresses differ anyway, by ASLR).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let blocks: Vec<*mut u8> = (0..10_000).map(|_| alloc(64)).collect();
    for p in &blocks {
        hash = (hash ^ (p.addr() & ((4 << 20) - 1)) as u64).wrapping_mul(0x0100_0000_01b3);
    }
    println!("LAYOUT {hash:#x}");
});

#[test]
fn two_runs_get_different_address_sequences() {
    let a = run_child("child_layout");
    let b = run_child("child_layout");
    assert_eq!(a.code, Some(0), "{}", a.stderr);
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    let (a, b) = (reported(&a, "LAYOUT"), reported(&b, "LAYOUT"));
    assert_ne!(a, b, "same in-segment address sequence twice");
}

// ---- correct programs are unaffected --------------------------------------------------------

#[test]
fn live_blocks_never_overlap_under_churn() {
    // Many threads allocating, freeing locally and remotely; every live block is tagged with its
    // address and checked before it is freed (an overlap would overwrite a tag).
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut live: Vec<(*mut u8, usize)> = Vec::new();
                let mut x: u64 = 0x9E37_79B9 ^ t;
                for _ in 0..200_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if live.len() < 512 && (x & 1 == 0 || live.is_empty()) {
                        let size = 16 + (x as usize >> 8) % 2000;
                        let p = alloc(size);
                        // SAFETY: a fresh block of at least `size` bytes.
                        unsafe { p.cast::<usize>().write_unaligned(p.addr()) };
                        // SAFETY: as above.
                        unsafe { p.add(size - 1).write(0xA5) };
                        live.push((p, size));
                    } else {
                        let (p, size) = live.swap_remove((x as usize >> 16) % live.len());
                        // SAFETY: a live block of ours.
                        unsafe {
                            assert_eq!(p.cast::<usize>().read_unaligned(), p.addr());
                            assert_eq!(p.add(size - 1).read(), 0xA5);
                        }
                        free(p);
                    }
                }
                live.into_iter()
                    .map(|(p, s)| (p.expose_provenance(), s))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // Each thread's survivors are freed by the main thread (remote frees).
    for h in handles {
        for (p, size) in h.join().unwrap() {
            let p: *mut u8 = std::ptr::with_exposed_provenance_mut(p);
            // SAFETY: a live block of ours.
            unsafe {
                assert_eq!(p.cast::<usize>().read_unaligned(), p.addr());
                assert_eq!(p.add(size - 1).read(), 0xA5);
            }
            free(p);
        }
    }
}
