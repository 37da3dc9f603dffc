//! loom model of the reaper (`registry`): another thread gives back the
//! memory of a heap's waiting page slots while the heap's owner reuses one,
//! on shardalloc's real code (`--cfg loom`; see `src/lib.rs` of this crate).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use shardalloc::__loom::{self as model, ModelHeap, World};
use shardalloc_loom_tests::{OWNER, REMOTE_A, REMOTE_B, SendPtr, assert_all_released, builder};

/// A large block has a page (and a segment) to itself: few allocations
/// reach the slot reuse.
const SIZE: usize = 512 << 10;
const PATTERN: u8 = 0xA5;
/// Bytes at the start of a block that the model leaves to the allocator.
const LINK: usize = 64;

/// A thread with its own registered heap that runs one forced reaper pass
/// over the other heaps of `world` (every one counts as idle), then exits.
fn spawn_reaper(world: &Arc<World>) -> thread::JoinHandle<()> {
    let world = Arc::clone(world);
    thread::spawn(move || {
        let reaper = ModelHeap::new_registered(&world, REMOTE_A);
        reaper.reap_others(true);
        reaper.abandon();
    })
}

/// The owner empties a page, whose slot then waits on the heap's reset
/// queue (the model clock never moves, so only a reaper can reset it).
/// A reaper on another thread resets every waiting slot of the other
/// registered heaps while the owner allocates again, reusing that slot, and
/// fills its block. Afterwards:
/// * the block still holds what the owner wrote (a reset of a slot in use
///   would zero it);
/// * loom saw every access to the slot's reset state ordered by the heap's
///   lock (the state is a tracked cell);
/// * every segment is released exactly once at the end.
#[test]
fn reaper_races_owner_reuse() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let owner = ModelHeap::new_registered(&world, OWNER);
        // a and c each fill a page; freeing a empties page 1, which is not
        // alone in its queue (page 2 is), so its slot goes onto the reset
        // queue.
        let (a, c) = (owner.alloc(SIZE), owner.alloc(SIZE));
        // SAFETY: our own live block.
        unsafe { owner.free(a) };
        // SAFETY: a (freed, its segment kept) and c are blocks of live segments.
        assert_ne!(unsafe { model::page_address(a) }, unsafe {
            model::page_address(c)
        });
        assert!(
            owner.pending_reset() > 0,
            "page 1's slot waits for its reset"
        );
        let reaper = spawn_reaper(&world);
        // e needs a fresh page and reuses page 1's slot (taking it off the
        // reset queue, unless the reaper reset it first).
        let e = owner.alloc(SIZE);
        // SAFETY: e is live; a's address lies in the same (reused) segment.
        let (page_e, page_a) = unsafe { (model::page_address(e), model::page_address(a)) };
        assert_eq!(page_e, page_a, "the emptied slot is reused");
        let block = e;
        // SAFETY: our own live block of SIZE bytes. The first bytes are left
        // alone: under loom they hold the tracked cell of the free-list link.
        unsafe { block.add(LINK).write_bytes(PATTERN, SIZE - LINK) };
        reaper.join().unwrap();
        // SAFETY: as above; the reaper has finished.
        let intact = unsafe { core::slice::from_raw_parts(block.add(LINK), SIZE - LINK) }
            .iter()
            .all(|&byte| byte == PATTERN);
        assert!(intact, "a slot in use was reset");
        for ptr in [c, e] {
            // SAFETY: our own live blocks.
            unsafe { owner.free(ptr) };
        }
        owner.collect(true);
        owner.abandon();
        drop(owner);
        drop(world);
        assert_all_released(baseline);
    });
}

/// The reaper's work on an idle owner's remote frees (`reset_remote_frees`):
/// it takes a page's `thread_free` chain, gives back the memory inside the
/// blocks and hands the chain back, while a remote thread pushes more frees
/// onto the same list and the owner collects it. No block may be lost or
/// counted twice (the page must empty and every segment go back exactly
/// once), and every link the owner follows must be ordered after its write
/// (the links are loom-tracked cells).
#[test]
fn reaper_hands_back_remote_frees_while_owner_collects() {
    /// Blocks with whole OS pages inside (the reaper leaves smaller ones).
    const BLOCK: usize = 16 << 10;
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let owner = ModelHeap::new_registered(&world, OWNER);
        let blocks: Vec<*mut u8> = (0..3).map(|_| owner.alloc(BLOCK)).collect();
        // SAFETY: live blocks of live segments.
        let pages: Vec<usize> = blocks
            .iter()
            .map(|&b| unsafe { model::page_address(b) })
            .collect();
        assert!(pages.iter().all(|&p| p == pages[0]), "one page");
        // One remote free before the race, so the reaper has a chain.
        // SAFETY: a live block, given up.
        unsafe { model::free(blocks[0], REMOTE_B) };
        let late = SendPtr(blocks[1]);
        let remote = thread::spawn(move || {
            let late = late;
            // SAFETY: this thread holds the block alone.
            unsafe { model::free(late.0, REMOTE_B) }
        });
        let reaper = spawn_reaper(&world);
        // Two collects with a yield between, so loom also explores the
        // schedules where the reaper hands the chain back first (without
        // the yield it lets the spawned threads run late).
        // SAFETY: blocks[2] is ours and live: its page is ours.
        unsafe { owner.collect_page_of(blocks[2]) };
        thread::yield_now();
        // SAFETY: as above.
        unsafe { owner.collect_page_of(blocks[2]) };
        remote.join().unwrap();
        reaper.join().unwrap();
        // SAFETY: our own live block.
        unsafe { owner.free(blocks[2]) };
        owner.collect(true);
        assert_eq!(owner.segments(), 0, "the page emptied: no block lost");
        owner.abandon();
        drop(owner);
        drop(world);
        assert_all_released(baseline);
    });
}

/// The reaper frees a wholly freed full page of an idle owner: the owner's
/// one block of a full page was freed by another thread (the delayed route,
/// onto the heap's list), and the reaper takes the list, sees the page's
/// every block in its hands, and frees the page for the owner — while the
/// owner allocates again (processing its delayed list, moving a page to the
/// full queue, taking a fresh page, maybe the very slot). Afterwards the
/// owner's new block is intact, every queue link was touched in an order
/// loom accepts (page-queue links are tracked cells), and every segment is
/// released exactly once.
#[test]
fn reaper_frees_a_wholly_freed_full_page_while_owner_allocates() {
    const SIZE: usize = 512 << 10;
    const LINK: usize = 64;
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let owner = ModelHeap::new_registered(&world, OWNER);
        // a's page goes to the full queue when b needs a fresh page.
        let (a, b) = (owner.alloc(SIZE), owner.alloc(SIZE));
        let handed = SendPtr(a);
        thread::spawn(move || {
            let handed = handed;
            // SAFETY: the block was handed to this thread, which frees it.
            unsafe { model::free(handed.0, REMOTE_B) }
        })
        .join()
        .unwrap();
        let reaper = spawn_reaper(&world);
        let c = owner.alloc(SIZE);
        // SAFETY: our own live block (its first bytes hold the link's
        // tracked cell under loom).
        unsafe { c.add(LINK).write_bytes(0xA5, SIZE - LINK) };
        reaper.join().unwrap();
        // SAFETY: as above; the reaper has finished.
        let intact = unsafe { core::slice::from_raw_parts(c.add(LINK), SIZE - LINK) }
            .iter()
            .all(|&byte| byte == 0xA5);
        assert!(intact, "a block in use was reset");
        for block in [b, c] {
            // SAFETY: our own live blocks.
            unsafe { owner.free(block) };
        }
        owner.collect(true);
        assert_eq!(owner.segments(), 0, "every page emptied and went back");
        owner.abandon();
        drop(owner);
        drop(world);
        assert_all_released(baseline);
    });
}

/// The same decision for a page of small blocks (4 KiB: no interiors, so the
/// owner moves a page to the full queue under the lock taken for that move
/// alone, not the one `search_queue` holds around pages of big blocks):
/// another thread frees every block of the owner's full page, and a reaper
/// frees the page for the idle owner while the owner allocates on.
#[test]
fn reaper_frees_a_wholly_freed_full_page_of_small_blocks() {
    const SIZE: usize = 4 << 10;
    /// Blocks in a 64 KiB page past the segment's first.
    const PER_PAGE: usize = (64 << 10) / SIZE;
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let owner = ModelHeap::new_registered(&world, OWNER);
        let first = owner.alloc(SIZE);
        // SAFETY: live blocks of live segments (addresses only).
        let first_page = unsafe { model::page_address(first) };
        let mut full = vec![SendPtr(first)];
        let next = loop {
            let block = owner.alloc(SIZE);
            // SAFETY: as above.
            if unsafe { model::page_address(block) } != first_page {
                break block;
            }
            full.push(SendPtr(block));
        };
        // All but one block of `next`'s page, before the race.
        let mut mine = vec![next];
        mine.extend((2..PER_PAGE).map(|_| owner.alloc(SIZE)));
        thread::spawn(move || {
            for block in full {
                // SAFETY: the blocks were handed to this thread, which frees them.
                unsafe { model::free(block.0, REMOTE_B) }
            }
        })
        .join()
        .unwrap();
        let reaper = spawn_reaper(&world);
        // The last block of the page, then one that finds it full and moves
        // it to the full queue (under the lock) while the reaper may be
        // walking that queue.
        let last = owner.alloc(SIZE);
        let beyond = owner.alloc(SIZE);
        reaper.join().unwrap();
        // SAFETY: live blocks (addresses only).
        unsafe {
            assert_eq!(model::page_address(last), model::page_address(next));
            assert_ne!(model::page_address(beyond), model::page_address(next));
        }
        for block in mine.into_iter().chain([last, beyond]) {
            // SAFETY: our own live blocks.
            unsafe { owner.free(block) };
        }
        owner.collect(true);
        assert_eq!(owner.segments(), 0, "every page emptied and went back");
        owner.abandon();
        drop(owner);
        drop(world);
        assert_all_released(baseline);
    });
}

/// The other side of the same decision: a full page with live blocks, one
/// of which another thread freed. The reaper holds that one block, sees
/// the page still in use, and must hand the block back rather than free the
/// page, while the owner allocates (and processes its delayed list).
#[test]
fn reaper_leaves_a_full_page_with_live_blocks() {
    const SIZE: usize = 64 << 10;
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let owner = ModelHeap::new_registered(&world, OWNER);
        // Fill the first page; the allocation that lands on a second page
        // moves the first to the full queue.
        let first = owner.alloc(SIZE);
        // SAFETY: live blocks of live segments (addresses only).
        let first_page = unsafe { model::page_address(first) };
        let mut full = vec![first];
        let next = loop {
            let block = owner.alloc(SIZE);
            // SAFETY: as above.
            if unsafe { model::page_address(block) } != first_page {
                break block;
            }
            full.push(block);
        };
        assert!(full.len() >= 2, "the full page holds several blocks");
        let handed = SendPtr(full[0]);
        thread::spawn(move || {
            let handed = handed;
            // SAFETY: the block was handed to this thread, which frees it.
            unsafe { model::free(handed.0, REMOTE_B) }
        })
        .join()
        .unwrap();
        let reaper = spawn_reaper(&world);
        let extra = owner.alloc(SIZE);
        reaper.join().unwrap();
        assert_eq!(
            owner.pending_reset(),
            0,
            "no page with live blocks was freed (nothing of the owner waits for a reset)"
        );
        for block in full.into_iter().skip(1).chain([next, extra]) {
            // SAFETY: our own live blocks.
            unsafe { owner.free(block) };
        }
        owner.collect(true);
        assert_eq!(owner.segments(), 0, "every page emptied and went back");
        owner.abandon();
        drop(owner);
        drop(world);
        assert_all_released(baseline);
    });
}

/// An idle owner's own frees (design §6, `page::OwnerList`): the owner
/// freed two blocks of 64 KiB into a page that keeps a live one, and a
/// reaper (`force`: the owner counts as idle) gives back the OS pages inside
/// the blocks on that page's `local_free`, while the owner allocates again —
/// taking those very blocks once the page's `free` list runs out, writing
/// them, and freeing one back. Afterwards:
/// * the blocks the owner holds still read what it wrote (a reset of a block
///   the owner had taken back would zero it);
/// * loom saw every read of a link on `local_free` ordered after the write
///   that made it (the lock, and `OwnerList`'s Release/Acquire);
/// * every segment is released exactly once at the end.
#[test]
fn reaper_resets_local_free_interiors_while_owner_reuses_them() {
    const BIG: usize = 64 << 10;
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let owner = ModelHeap::new_registered(&world, OWNER);
        let keep = owner.alloc(BIG);
        let (a, b) = (owner.alloc(BIG), owner.alloc(BIG));
        // SAFETY: our own live blocks.
        unsafe {
            owner.free(a);
            owner.free(b);
        }
        let reaper = spawn_reaper(&world);
        // Allocate until the blocks freed above come back (the page's
        // `free` list holds the rest of its first extension before them).
        let mut held = Vec::new();
        loop {
            let block = owner.alloc(BIG);
            // SAFETY: a live block of BIG bytes.
            unsafe { block.add(LINK).write_bytes(PATTERN, BIG - LINK) };
            held.push(block);
            if block == a || block == b || held.len() > 8 {
                break;
            }
        }
        // One freed again while the reaper may be walking the list.
        let last = held.pop().expect("allocated");
        // SAFETY: our own live block.
        unsafe { owner.free(last) };
        reaper.join().unwrap();
        for &block in &held {
            // SAFETY: our own live blocks of BIG bytes.
            let intact = unsafe { core::slice::from_raw_parts(block.add(LINK), BIG - LINK) }
                .iter()
                .all(|&byte| byte == PATTERN);
            assert!(intact, "a block in use was reset");
        }
        for block in held.into_iter().chain([keep]) {
            // SAFETY: our own live blocks.
            unsafe { owner.free(block) };
        }
        owner.collect(true);
        owner.abandon();
        drop(owner);
        drop(world);
        assert_all_released(baseline);
    });
}

/// A huge block (its own segment) in the models below: just over the
/// largest size-classed block.
const HUGE: usize = (1 << 20) + (64 << 10);

/// A huge block freed by another thread while its owner lives reaches the
/// owner's delayed list with its memory (`keep_remote_huge`). A reaper that
/// finds the owner idle frees the block for it and hands the heap's spare
/// huge segments to the process (`free_huge_for_quiet_owner`,
/// `pool_huge_spares`), while the owner passes over its delayed list and
/// allocates another huge block. Afterwards:
/// * the owner's new block still holds what the owner wrote (a segment
///   freed twice, or handed out twice, would be reused under it);
/// * every segment is released exactly once at the end.
#[test]
fn reaper_frees_a_quiet_owners_remotely_freed_huge_block() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let owner = ModelHeap::new_registered(&world, OWNER);
        let handed = SendPtr(owner.alloc_huge(HUGE));
        thread::spawn(move || {
            let handed = handed;
            // SAFETY: the block was handed to this thread, which frees it.
            unsafe { model::free(handed.0, REMOTE_B) }
        })
        .join()
        .unwrap();
        let reaper = spawn_reaper(&world);
        owner.process_delayed(false);
        let c = owner.alloc_huge(HUGE);
        // SAFETY: our own live block (its first bytes hold the link's
        // tracked cell under loom).
        unsafe { c.add(LINK).write_bytes(PATTERN, HUGE - LINK) };
        reaper.join().unwrap();
        // SAFETY: as above; the reaper has finished.
        let intact = unsafe { core::slice::from_raw_parts(c.add(LINK), HUGE - LINK) }
            .iter()
            .all(|&byte| byte == PATTERN);
        assert!(intact, "a huge block in use was freed or reused");
        // SAFETY: our own live block.
        unsafe { owner.free(c) };
        owner.process_delayed(true);
        owner.collect(true);
        owner.abandon();
        drop(owner);
        drop(world);
        assert_all_released(baseline);
    });
}

/// The same, with the remote free racing the reaper: a reaper that takes
/// the delayed list while the freeing thread is still in its `Freeing` step
/// on the page must not free the page under it (it hands the block back for
/// the owner instead). Afterwards every segment is released exactly once.
#[test]
fn reaper_races_the_remote_free_of_a_huge_block() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let world = Arc::new(World::new());
        let owner = ModelHeap::new_registered(&world, OWNER);
        let handed = SendPtr(owner.alloc_huge(HUGE));
        let remote = thread::spawn(move || {
            let handed = handed;
            // SAFETY: the block was handed to this thread, which frees it.
            unsafe { model::free(handed.0, REMOTE_B) }
        });
        let reaper = spawn_reaper(&world);
        remote.join().unwrap();
        reaper.join().unwrap();
        owner.process_delayed(true);
        owner.collect(true);
        assert_eq!(
            owner.segments(),
            0,
            "the huge block's segment is still the owner's"
        );
        owner.abandon();
        drop(owner);
        drop(world);
        assert_all_released(baseline);
    });
}
