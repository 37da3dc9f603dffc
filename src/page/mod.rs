//! A page: a run of memory inside a segment holding blocks of one size.
//!
//! Each page shards its free blocks over three lists, so that the owner
//! thread never needs an atomic instruction for its own work:
//!
//! * `free` — blocks ready to be handed out (owner only);
//! * `local_free` — blocks the owner freed (owner only); moved to `free` in
//!   one step when `free` runs dry, which forces the owner through the slow
//!   path regularly (the allocator's heartbeat);
//! * `thread_free` — blocks freed by other threads: an atomic list that a
//!   remote free pushes onto with one compare-and-swap, and the owner takes
//!   whole.
//!
//! `used` counts blocks handed out, *including* those sitting in
//! `thread_free`; the page is empty exactly when `used` reaches 0 after a
//! collect.
//!
//! The low two bits of `thread_free` carry the page's [`DelayedMode`], the
//! delayed-free state machine that tells a remote thread whether to push
//! onto the page list or onto the owning heap's `thread_delayed_free` list
//! (see `docs/design.md`, "Delayed free", and the loom models in
//! `loom-tests/`).

mod extend;
mod thread_free;

use thread_free::empty_list;
pub(crate) use thread_free::{ADDRESS_LIMIT, DelayedMode, RemoteFree};

use crate::heap::RawHeap;
use crate::sync::{AtomicPtr, Ordering, OwnerCell, UnsafeCell};
use core::cell::Cell;
use core::ptr;

/// A free block: its first word links to the next free block of the same
/// list. Blocks are user memory while allocated.
#[repr(transparent)]
pub(crate) struct Block {
    next: UnsafeCell<*mut Block>,
}

impl Block {
    /// Reads the link of a free block.
    ///
    /// # Safety
    /// `block` is a free block of ours that no other thread is writing.
    #[inline(always)]
    pub(crate) unsafe fn next(block: *mut Block) -> *mut Block {
        // SAFETY: the caller guarantees the block is valid and not being
        // written concurrently.
        let stored = unsafe { (*block).next.with(|p| *p) };
        #[cfg(feature = "secure")]
        // SAFETY: a free block of ours (caller): decode and validate (same page).
        let stored = unsafe { crate::secure::checked_next(block, stored) };
        stored
    }

    /// [`Block::next`] for a block of `page` (secure builds: no page lookup).
    ///
    /// # Safety
    /// As for [`Block::next`]; `block` is a block of `page`.
    #[cfg(feature = "secure")]
    #[inline(always)]
    pub(crate) unsafe fn next_in(page: &Page, block: *mut Block) -> *mut Block {
        // SAFETY: forwarded from the caller.
        unsafe {
            crate::secure::checked_next_in(
                ptr::from_ref(page).cast_mut(),
                block,
                (*block).next.with(|p| *p),
            )
        }
    }

    /// [`Block::set_next`] for a block of `page` (secure builds: no page
    /// lookup).
    ///
    /// # Safety
    /// As for [`Block::set_next`]; `block` is a block of `page`.
    #[cfg(feature = "secure")]
    #[inline(always)]
    pub(crate) unsafe fn set_next_in(page: &Page, block: *mut Block, next: *mut Block) {
        let next = crate::secure::encode(page.key.get(), block, next);
        // SAFETY: the caller guarantees exclusive ownership of the block.
        unsafe { (*block).next.with_mut(|p| *p = next) }
    }

    /// Reads the link of a block on a heap's delayed list, whose next block
    /// may be of another page (secure builds validate it accordingly).
    ///
    /// # Safety
    /// As for [`Block::next`].
    #[inline(always)]
    pub(crate) unsafe fn next_delayed(block: *mut Block) -> *mut Block {
        #[cfg(feature = "secure")]
        // SAFETY: forwarded from the caller.
        unsafe {
            crate::secure::checked_next_any(block, (*block).next.with(|p| *p))
        }
        #[cfg(not(feature = "secure"))]
        // SAFETY: forwarded from the caller.
        unsafe {
            Block::next(block)
        }
    }

    /// Writes the link of a block this thread owns (about to be freed).
    ///
    /// # Safety
    /// `block` is a block of ours that this thread exclusively owns.
    #[inline(always)]
    pub(crate) unsafe fn set_next(block: *mut Block, next: *mut Block) {
        #[cfg(feature = "secure")]
        // SAFETY: a block of ours (caller): its page's key is set.
        let next = crate::secure::encode(unsafe { crate::secure::key_of(block) }, block, next);
        // SAFETY: the caller guarantees exclusive ownership of the block.
        unsafe { (*block).next.with_mut(|p| *p = next) }
    }

    /// Turns fresh page memory into a block (loom needs its cells built).
    ///
    /// # Safety
    /// `block` points to at least `size_of::<Block>()` writable bytes of page
    /// memory that hold no live block.
    #[inline(always)]
    unsafe fn init(block: *mut Block, next: *mut Block) {
        #[cfg(all(loom, feature = "secure"))]
        // SAFETY: a block of ours (caller): its page's key is set.
        let next = crate::secure::encode(unsafe { crate::secure::key_of(block) }, block, next);
        #[cfg(loom)]
        // SAFETY: the caller guarantees the memory is writable and unused.
        unsafe {
            ptr::write(
                block,
                Block {
                    next: UnsafeCell::new(next),
                },
            );
        }
        #[cfg(not(loom))]
        // SAFETY: as above; a block is just its link word.
        unsafe {
            Block::set_next(block, next);
        }
    }
}

/// `flags` bit: the page sits in its heap's full queue.
pub(crate) const IN_FULL: u8 = 1;

/// Blocks at least this large have whole OS pages past their first one,
/// which go back to the OS while the block sits free (`collect(true)`, and
/// a reaper for an idle heap). Their pages' `local_free` is left only under
/// the heap's lock ([`OwnerList`]).
pub(crate) const INTERIOR_RESET_MIN: usize = 2 * crate::os::OS_PAGE_SIZE;

/// A free block's word at [`MARK_OFFSET`] holds this, mixed with the
/// block's address, once the OS pages inside the block were given back: a
/// later pass skips it. Cleared (`clear_interior_marks`) whenever blocks
/// become allocatable again, so a mark always means "free, and reset
/// since".
pub(crate) const INTERIOR_RESET_MARK: usize = 0x5EED_F4EE_B10C_0000;

/// Where a free block keeps [`INTERIOR_RESET_MARK`]: the second word (past
/// the link; past the link's tracked cell under loom; past the canary in
/// secure builds).
pub(crate) const MARK_OFFSET: usize = size_of::<Block>().next_multiple_of(size_of::<usize>())
    + if cfg!(feature = "secure") {
        size_of::<usize>()
    } else {
        0
    };

/// One page descriptor. It lives in its segment's header, never in the page
/// memory itself.
///
/// Fields in `Cell`s are touched only by the owner thread; `block_size` and
/// `page_start` (secure builds: also `key`, the boundary test's constants and `reserved`)
/// are also read by remote freeing threads but never change while a block
/// of the page is live; the two atomics are the only fields written across
/// threads.
///
/// Layout, by who writes a line (a line one thread writes while another
/// reads it moves between their caches on every write):
/// * plain builds, two lines: the first holds everything the owner touches
///   on its fast paths; the atomics other threads write sit on the second,
///   so a remote free does not steal the line the owner allocates from (it
///   reads only the second line);
/// * secure builds, three (`LineBreak`): a remote free also reads the
///   page's key, start, multiplier and block count (to check the block and
///   mark it freed), so those sit on a line of their own that nobody writes
///   while the page is in use: the owner's writes (`free`, `used`, ...) stay
///   on the first line, the remote writes (`thread_free`) on the third. With
///   the key on the owner's line, a producer/consumer pair moved that line
///   between the two cores on every free (`xmalloc` t=1 ran 1.6× the plain
///   build's time against 1.3× its instructions; `docs/security.md`).
#[repr(C, align(64))]
pub(crate) struct Page {
    // --- cache line 1: written by the owner only ---
    /// Blocks ready for allocation. First field: the empty-page sentinel
    /// (see [`empty_page`]) has only this one.
    pub(crate) free: Cell<*mut Block>,
    /// Blocks freed by the owner. Only the owner pushes; the blocks leave
    /// it only under the heap's lock for pages of blocks of 8 KiB and more,
    /// whose chain a reaper may read to give back the blocks' interiors
    /// (see [`OwnerList`]).
    pub(crate) local_free: OwnerList,
    /// Blocks handed out, including those in `thread_free`.
    pub(crate) used: OwnerCount,
    /// Blocks threaded into the lists so far (lazy extension).
    pub(crate) capacity: Cell<u32>,
    /// Blocks that fit in the page. (Secure builds: on the read-mostly
    /// line, below.)
    #[cfg(not(feature = "secure"))]
    pub(crate) reserved: Cell<u32>,
    /// RawHeap queue index (a size-class bin, `BIN_HUGE`; `BIN_FULL` is a flag).
    pub(crate) bin: Cell<u8>,
    /// [`IN_FULL`]; tested on the local free fast path.
    pub(crate) flags: OwnerFlags,
    /// Every block on `free` is zero except its link word.
    pub(crate) free_is_zero: Cell<bool>,
    /// Countdown of a retired (empty, kept) page; 0 when not retired. Made
    /// nonzero only under the heap's lock (`page_retire`); a reaper reads
    /// it (a retired page's `local_free` moves to `free` without the lock:
    /// see [`OwnerList`]).
    pub(crate) retire_expire: OwnerFlags,
    /// Size of every block; for a huge page, the usable size of its block.
    /// (Secure builds: on the read-mostly line, below.)
    #[cfg(not(feature = "secure"))]
    pub(crate) block_size: Cell<usize>,
    /// Address of the first block. (Secure builds: on the read-mostly
    /// line, below.)
    #[cfg(not(feature = "secure"))]
    pub(crate) page_start: Cell<*mut u8>,
    /// Secure mode: `capacity` as a word (set with it, by the owner, hence
    /// on this line): the owner's fast paths bound a block's index by it,
    /// one compare with memory, where the `u32` would take a load and a
    /// compare.
    #[cfg(feature = "secure")]
    pub(crate) extent: Cell<usize>,
    /// Queue links (owner only).
    pub(crate) next: OwnerCell<*mut Page>,
    pub(crate) prev: OwnerCell<*mut Page>,
    // --- secure builds, cache line 2: read-mostly (set by `init`) ---
    #[cfg(feature = "secure")]
    read_mostly: LineBreak,
    /// Secure mode: the key encoding the links stored in this page's free
    /// blocks and their freed canaries; drawn afresh by every `init`. Every
    /// pop and every push uses it, remote pushes included.
    #[cfg(feature = "secure")]
    pub(crate) key: Cell<usize>,
    /// Address of the first block (secure builds; see above).
    #[cfg(feature = "secure")]
    pub(crate) page_start: Cell<*mut u8>,
    /// Secure mode: the block-boundary test's inverse of the block size's
    /// odd factor (`secure::boundary_constants`), set with `block_size`.
    #[cfg(feature = "secure")]
    pub(crate) boundary_inv: Cell<usize>,
    /// Size of every block (secure builds; see above).
    #[cfg(feature = "secure")]
    pub(crate) block_size: Cell<usize>,
    /// Blocks that fit in the page (secure builds; see above).
    #[cfg(feature = "secure")]
    pub(crate) reserved: Cell<u32>,
    /// Secure mode: the block-boundary test's rotation, the block size's
    /// trailing zeros (`secure::boundary_constants`).
    #[cfg(feature = "secure")]
    pub(crate) boundary_shift: Cell<u32>,
    /// Secure mode: `reserved` while the page is in use, 0 otherwise: the
    /// bound of the block-boundary test of frees by other threads and of
    /// reapers (no pointer passes it in a page not in use).
    #[cfg(feature = "secure")]
    pub(crate) live_blocks: Cell<usize>,
    /// The page slot holds a page in use (segment bookkeeping; changes only
    /// with the slot's state, not while the page is in use). Secure builds.
    #[cfg(feature = "secure")]
    pub(crate) in_use: Cell<bool>,
    /// As `in_use` (secure builds; each field's meaning is given with the
    /// plain builds' copy on the last line, below).
    #[cfg(feature = "secure")]
    pub(crate) memory_is_zero: Cell<bool>,
    /// As `in_use` (secure builds).
    #[cfg(feature = "secure")]
    reset_pending: UnsafeCell<bool>,
    /// As `in_use` (secure builds).
    #[cfg(feature = "secure")]
    pub(crate) emptied_at: Cell<u64>,
    // --- cache line 2 (secure builds: 3): written by other threads ---
    #[cfg(feature = "secure")]
    remote: LineBreak,
    /// Blocks freed by other threads, tagged with the [`DelayedMode`].
    pub(crate) thread_free: AtomicPtr<Block>,
    /// The owning heap; null while the page is abandoned or unused.
    pub(crate) heap: AtomicPtr<RawHeap>,
    /// The page slot holds a page in use (segment bookkeeping).
    #[cfg(not(feature = "secure"))]
    pub(crate) in_use: Cell<bool>,
    /// The page's memory is known to be zero (fresh from the OS or reset).
    #[cfg(not(feature = "secure"))]
    pub(crate) memory_is_zero: Cell<bool>,
    /// An unused slot on its heap's reset queue. Owner only, or the holder
    /// of the heap's lock (a reaper); an `UnsafeCell` so that loom checks
    /// that the lock orders the two.
    #[cfg(not(feature = "secure"))]
    reset_pending: UnsafeCell<bool>,
    /// When an unused slot emptied (`os::now_ms`): its age on the decay
    /// curve. 0 for a slot of an abandoned segment not yet seen unused.
    #[cfg(not(feature = "secure"))]
    pub(crate) emptied_at: Cell<u64>,
    /// Scratch of a reaper holding the heap's lock (`reset_remote_frees`):
    /// the blocks of this page it took from the heap's delayed list for the
    /// moment. Empty otherwise.
    pub(crate) reaped_delayed: Cell<*mut Block>,
    pub(crate) reaped_delayed_count: Cell<u32>,
}

/// A zero-sized field that starts a new cache line in a `repr(C)` struct
/// (secure builds' [`Page`]).
#[cfg(feature = "secure")]
#[repr(align(64))]
struct LineBreak;

#[cfg(not(loom))]
const _: () = assert!(
    size_of::<Page>() == if cfg!(feature = "secure") { 192 } else { 128 },
    "plain builds keep the descriptor at two lines, secure builds at three"
);

#[cfg(all(feature = "secure", not(loom)))]
const _: () = assert!(
    core::mem::offset_of!(Page, extent) < 64
        && core::mem::offset_of!(Page, key) == 64
        && core::mem::offset_of!(Page, emptied_at) < 128,
    "secure builds: the owner's line, then the read-mostly line"
);

#[cfg(not(loom))]
const _: () = assert!(
    core::mem::offset_of!(Page, thread_free) == size_of::<Page>() - 64,
    "remote-written fields start the last line"
);

// SAFETY: a `Page` is shared between the owner thread and remote freeing
// threads. The remote side only touches the atomics and reads
// `block_size`/`page_start` (secure builds: also `key`, the boundary constants and
// `reserved`, set with them), which the owner never writes while any block
// of the page is live (a live block keeps `used > 0`, and the fields change
// only in `init`, on an unused page). The `Cell` fields are the owner's (the
// thread whose id is stored in the segment, checked on every free before a
// `Cell` is touched), except that a reaper holding the heap's lock touches
// an unused slot's fields, and a full page's once it holds every block in
// use of it (`RawHeap::reset_remote_frees`: the owner's `used` stores are
// Release, its read Acquire); `used` and `flags`, which the owner reads and
// writes without the lock, are atomics.
unsafe impl Sync for Page {}

/// A count only the page's owner writes, which `stats()` may read from
/// another thread (holding the heap's lock, while the owner's fast paths go
/// on). Plain atomic loads and stores, never a read-modify-write: the owner
/// pays exactly what a `Cell<u32>` costs.
pub(crate) struct OwnerCount(core::sync::atomic::AtomicU32);

impl OwnerCount {
    /// A count of `value`.
    pub(crate) const fn new(value: u32) -> OwnerCount {
        OwnerCount(core::sync::atomic::AtomicU32::new(value))
    }

    /// The count.
    #[inline(always)]
    pub(crate) fn get(&self) -> u32 {
        // Relaxed: the owner's own stores are in program order, and a
        // statistics reader only needs an untorn value.
        self.0.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// The count, with everything the owner did to the page before storing
    /// it (a reaper deciding the page is wholly free).
    #[inline]
    pub(crate) fn get_acquire(&self) -> u32 {
        // Acquire pairs with the Release of `set`.
        self.0.load(core::sync::atomic::Ordering::Acquire)
    }

    /// Sets the count (owner only).
    #[inline(always)]
    pub(crate) fn set(&self, value: u32) {
        // Release pairs with `get_acquire`: a reaper that reads the count
        // sees the owner's list writes made before it (a plain store on
        // x86-64 and a `stlr` on aarch64: the fast paths pay nothing more).
        self.0.store(value, core::sync::atomic::Ordering::Release);
    }
}

/// A list head only the owner writes (`local_free`), which a reaper holding
/// the heap's lock may read: `Relaxed` loads and `Release` stores for the
/// owner (plain moves on x86-64: the free fast path pays nothing), an
/// `Acquire` load for the reaper, so the links of the blocks it finds were
/// written before it reads them. The owner only ever *prepends* blocks
/// without the lock; for pages whose blocks have interiors (the pages a
/// reaper looks at, `reset_local_free_interiors`), everything that takes
/// blocks off the list holds the lock — except the move to `free` of a
/// retired page (an alloc/free loop on the only page of a class), which
/// reapers skip: a page becomes retired only under the lock. So a chain a
/// reaper read stays free and on the list while it holds the lock.
/// A loom atomic under loom, so the models check the pairing.
pub(crate) struct OwnerList(AtomicPtr<Block>);

impl OwnerList {
    /// A list starting at `head`.
    pub(crate) fn new(head: *mut Block) -> OwnerList {
        OwnerList(AtomicPtr::new(head))
    }

    /// The head (owner, or lock holder after `get_acquire`).
    #[inline(always)]
    pub(crate) fn get(&self) -> *mut Block {
        // Relaxed: the owner's own stores are in program order.
        self.0.load(Ordering::Relaxed)
    }

    /// The head, with the links the owner wrote before publishing it (a
    /// reaper).
    #[inline]
    pub(crate) fn get_acquire(&self) -> *mut Block {
        // Acquire pairs with the Release of `set`.
        self.0.load(Ordering::Acquire)
    }

    /// Sets the head (owner; or a lock holder of a page without owner).
    #[inline(always)]
    pub(crate) fn set(&self, head: *mut Block) {
        // Release pairs with `get_acquire`: a reaper that reads the head
        // sees the link written into it before.
        self.0.store(head, Ordering::Release);
    }

    /// Replaces the head, returning the old one (owner only).
    #[inline(always)]
    pub(crate) fn replace(&self, head: *mut Block) -> *mut Block {
        let old = self.get();
        self.set(head);
        old
    }
}

/// The page's flags: written by the owner, or by a reaper holding the heap's
/// lock that frees a wholly freed full page; read by the owner's local free
/// right after its `used` store, which may be just when such a reaper
/// clears them. Relaxed atomic loads and stores (plain moves): the owner
/// acts on a stale value safely (`free::after_local_free` re-checks under
/// the lock).
pub(crate) struct OwnerFlags(core::sync::atomic::AtomicU8);

impl OwnerFlags {
    /// Flags `value`.
    pub(crate) const fn new(value: u8) -> OwnerFlags {
        OwnerFlags(core::sync::atomic::AtomicU8::new(value))
    }

    /// The flags.
    #[inline(always)]
    pub(crate) fn get(&self) -> u8 {
        // Relaxed: a hint re-checked under the lock (type documentation).
        self.0.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the flags.
    #[inline(always)]
    pub(crate) fn set(&self, value: u8) {
        // Relaxed: see `get`.
        self.0.store(value, core::sync::atomic::Ordering::Relaxed);
    }
}

/// The stand-in page of every direct-table slot whose size class has no
/// page: its `free` list is empty, so a pop misses and takes the slow path.
/// Only `free` (the first field of `Page`) is ever read through it.
#[repr(C)]
struct EmptyPage {
    free: Cell<*mut Block>,
}

// SAFETY: the sentinel is never written; its only field is read.
unsafe impl Sync for EmptyPage {}

static EMPTY_PAGE: EmptyPage = EmptyPage {
    free: Cell::new(ptr::null_mut()),
};

/// The empty-page sentinel. Callers may read only `free` through it.
#[inline(always)]
pub(crate) const fn empty_page() -> *mut Page {
    ptr::from_ref(&EMPTY_PAGE).cast_mut().cast()
}

impl Page {
    /// An unused page descriptor.
    pub(crate) fn new() -> Page {
        Page {
            free: Cell::new(ptr::null_mut()),
            local_free: OwnerList::new(ptr::null_mut()),
            used: OwnerCount::new(0),
            capacity: Cell::new(0),
            reserved: Cell::new(0),
            bin: Cell::new(0),
            flags: OwnerFlags::new(0),
            free_is_zero: Cell::new(false),
            retire_expire: OwnerFlags::new(0),
            block_size: Cell::new(0),
            page_start: Cell::new(ptr::null_mut()),
            thread_free: AtomicPtr::new(empty_list(DelayedMode::NoDelayed)),
            heap: AtomicPtr::new(ptr::null_mut()),
            next: OwnerCell::new(ptr::null_mut()),
            prev: OwnerCell::new(ptr::null_mut()),
            in_use: Cell::new(false),
            memory_is_zero: Cell::new(true),
            reset_pending: UnsafeCell::new(false),
            emptied_at: Cell::new(0),
            reaped_delayed: Cell::new(ptr::null_mut()),
            reaped_delayed_count: Cell::new(0),
            #[cfg(feature = "secure")]
            key: Cell::new(0),
            #[cfg(feature = "secure")]
            boundary_inv: Cell::new(1),
            #[cfg(feature = "secure")]
            boundary_shift: Cell::new(0),
            #[cfg(feature = "secure")]
            live_blocks: Cell::new(0),
            #[cfg(feature = "secure")]
            extent: Cell::new(0),
            #[cfg(feature = "secure")]
            read_mostly: LineBreak,
            #[cfg(feature = "secure")]
            remote: LineBreak,
        }
    }

    /// Whether the slot waits on its heap's reset queue.
    ///
    /// # Safety
    /// The caller owns the heap of the page's segment or holds its lock.
    pub(crate) unsafe fn is_reset_pending(&self) -> bool {
        // SAFETY: owner or lock holder (caller): no concurrent write.
        self.reset_pending.with(|pending| unsafe { *pending })
    }

    /// Marks the slot as waiting (or no longer waiting) for its reset;
    /// returns the previous value.
    ///
    /// # Safety
    /// As for [`Page::is_reset_pending`].
    pub(crate) unsafe fn replace_reset_pending(&self, value: bool) -> bool {
        // SAFETY: owner or lock holder (caller): no concurrent access.
        self.reset_pending
            .with_mut(|pending| unsafe { core::mem::replace(&mut *pending, value) })
    }

    /// Prepares an unused page for blocks of `block_size` in
    /// `[area, area + area_size)`, owned by `heap`, and threads its first
    /// blocks.
    ///
    /// # Safety
    /// The page is unused (no live block, no remote thread can reach it) and
    /// the area is writable memory of its segment. `block_size ≥ 8`.
    pub(crate) unsafe fn init(
        &self,
        heap: *mut RawHeap,
        bin: usize,
        block_size: usize,
        area: *mut u8,
        area_size: usize,
    ) {
        // Secure: every block has room for its link and its freed canary
        // (the public entry points never ask for the 8 B class; a page of
        // that class made from inside the crate holds 16 B blocks).
        #[cfg(feature = "secure")]
        let block_size = block_size.max(crate::secure::CANARY_MIN_BLOCK);
        let align = crate::size_class::block_alignment(block_size);
        let first = area.map_addr(|a| (a + align - 1) & !(align - 1));
        let slack = first.addr() - area.addr();
        let mut reserved = area_size.saturating_sub(slack) / block_size;
        if block_size > crate::size_class::SHARED_PAGE_BLOCK_MAX {
            // One block per page: the block's memory goes back to the OS as
            // soon as it is freed, not when its neighbours are.
            reserved = reserved.min(1);
        }
        #[cfg(feature = "secure")]
        {
            self.key.set(crate::secure::new_key());
            let (inverse, shift) = crate::secure::boundary_constants(
                block_size,
                u32::try_from(reserved).unwrap_or(u32::MAX),
            );
            self.boundary_inv.set(inverse);
            self.boundary_shift.set(shift);
            self.live_blocks.set(reserved);
        }
        self.free.set(ptr::null_mut());
        self.local_free.set(ptr::null_mut());
        self.used.set(0);
        self.capacity.set(0);
        #[cfg(feature = "secure")]
        self.extent.set(0);
        self.reserved
            .set(u32::try_from(reserved).unwrap_or(u32::MAX));
        self.bin.set(u8::try_from(bin).unwrap_or(u8::MAX));
        self.flags.set(0);
        self.free_is_zero.set(self.memory_is_zero.get());
        self.retire_expire.set(0);
        self.block_size.set(block_size);
        self.page_start.set(first);
        self.next.set(ptr::null_mut());
        self.prev.set(ptr::null_mut());
        // Relaxed: no remote thread can reach this page until one of its
        // blocks is handed out, which happens-after this store on the owner
        // and reaches the remote thread through the user's own hand-off.
        self.thread_free
            .store(empty_list(DelayedMode::NoDelayed), Ordering::Relaxed);
        // Release pairs with the Acquire load in `free_remote` (the delayed
        // route): a remote thread that finds this heap sees it initialised.
        self.heap.store(heap, Ordering::Release);
        self.in_use.set(true);
        self.memory_is_zero.set(false);
        // SAFETY: the page is ours and its area is writable (caller).
        unsafe { self.extend() };
    }

    /// Prepares an unused page as the single block of a huge segment.
    ///
    /// # Safety
    /// As [`Page::init`]; `block` starts `usable` writable bytes.
    pub(crate) unsafe fn init_huge(
        &self,
        heap: *mut RawHeap,
        bin: usize,
        block: *mut u8,
        usable: usize,
    ) {
        #[cfg(feature = "secure")]
        {
            self.key.set(crate::secure::new_key());
            let (inverse, shift) = crate::secure::boundary_constants(usable, 1);
            self.boundary_inv.set(inverse);
            self.boundary_shift.set(shift);
            self.live_blocks.set(1);
        }
        // SAFETY: the block is fresh memory of ours, at least a word long.
        unsafe { Block::init(block.cast(), ptr::null_mut()) };
        self.free.set(ptr::null_mut());
        self.local_free.set(ptr::null_mut());
        self.used.set(1);
        self.capacity.set(1);
        #[cfg(feature = "secure")]
        self.extent.set(1);
        self.reserved.set(1);
        self.bin.set(u8::try_from(bin).unwrap_or(u8::MAX));
        self.flags.set(0);
        self.free_is_zero.set(false);
        self.retire_expire.set(0);
        self.block_size.set(usable);
        self.page_start.set(block);
        #[cfg(all(feature = "secure", not(loom)))]
        // SAFETY: the block is ours and longer than two words. A live block's
        // link word means nothing, and a fresh huge block must read as zero
        // (the encoded null link is not 0); a reused spare still carries its
        // old freed canary.
        unsafe {
            block.cast::<[usize; 2]>().write([0; 2])
        };
        // Under loom the link's first bytes are its tracked cell, which
        // `Block::init` set: only the canary is cleared (the models' keys
        // are fixed, so a reused spare's old canary would match).
        #[cfg(all(feature = "secure", loom))]
        // SAFETY: the block is ours and holds the canary word past the link.
        unsafe {
            crate::secure::clear_canary(block.cast())
        };
        self.next.set(ptr::null_mut());
        self.prev.set(ptr::null_mut());
        // Relaxed, as in `init`. A huge page is always "full": its one remote
        // free must reach the owner through the heap's delayed list.
        self.thread_free
            .store(empty_list(DelayedMode::UseDelayed), Ordering::Relaxed);
        // Release pairs with the Acquire load in `free_remote`.
        self.heap.store(heap, Ordering::Release);
        self.in_use.set(true);
        self.memory_is_zero.set(false);
    }

    /// The page has a block ready on `free`.
    #[inline(always)]
    pub(crate) fn has_free(&self) -> bool {
        !self.free.get().is_null()
    }

    /// Pops a block from `free`, or returns null.
    #[inline(always)]
    pub(crate) fn pop(&self) -> *mut Block {
        let block = self.free.get();
        if !block.is_null() {
            // SAFETY: blocks on `free` are free blocks of this page, and only
            // the owner (this thread) touches `free` lists.
            #[cfg(not(feature = "secure"))]
            self.free.set(unsafe { Block::next(block) });
            #[cfg(feature = "secure")]
            // SAFETY: as above; the block is a free block of this page.
            self.free.set(unsafe { Block::next_in(self, block) });
            self.used.set(self.used.get() + 1);
            #[cfg(feature = "secure")]
            // SAFETY: just taken off our list.
            unsafe {
                crate::secure::clear_canary(block)
            };
        }
        block
    }

    /// Pushes a block freed by the owner; returns the new `used`.
    ///
    /// # Safety
    /// Owner only; `block` is a live block of this page.
    #[inline(always)]
    pub(crate) unsafe fn push_local(&self, block: *mut Block) -> u32 {
        #[cfg(not(feature = "secure"))]
        // SAFETY: the caller hands us the block.
        unsafe {
            Block::set_next(block, self.local_free.get())
        };
        #[cfg(feature = "secure")]
        // SAFETY: the caller hands us the block, of this page.
        unsafe {
            Block::set_next_in(self, block, self.local_free.get())
        };
        self.local_free.set(block);
        let used = self.used.get().wrapping_sub(1);
        self.used.set(used);
        used
    }

    /// [`Page::push_local`] with the page's key already loaded (secure
    /// builds: the free path loads it once for the canary and the link).
    ///
    /// # Safety
    /// As for [`Page::push_local`]; `key` is this page's key.
    #[cfg(feature = "secure")]
    #[inline(always)]
    pub(crate) unsafe fn push_local_keyed(&self, block: *mut Block, key: usize) -> u32 {
        let next = crate::secure::encode(key, block, self.local_free.get());
        // SAFETY: the caller hands us the block, of this page.
        unsafe { (*block).next.with_mut(|p| *p = next) };
        self.local_free.set(block);
        let used = self.used.get().wrapping_sub(1);
        self.used.set(used);
        used
    }

    /// Moves remotely freed blocks to `local_free`, then `local_free` to
    /// `free` if `free` is empty.
    ///
    /// # Safety
    /// Owner only.
    pub(crate) unsafe fn collect(&self) {
        let taken = self.take_thread_free();
        if self.free.get().is_null() {
            if !taken.is_null() {
                // Allocate from the remotely freed blocks first: no walk,
                // and `local_free` waits for the next turn.
                // SAFETY: blocks of this page we now own (owner, caller).
                unsafe { self.clear_interior_marks(taken) };
                self.free.set(taken);
                self.free_is_zero.set(false);
                return;
            }
            let local = self.local_free.replace(ptr::null_mut());
            if !local.is_null() {
                // SAFETY: as above.
                unsafe { self.clear_interior_marks(local) };
                self.free.set(local);
                self.free_is_zero.set(false);
            }
        } else if !taken.is_null() {
            // SAFETY: owner only (caller); the taken blocks are ours.
            unsafe { self.splice_local(taken) };
        }
    }

    /// Moves `local_free` to `free` when `free` is empty (owner only): the
    /// blocks the owner freed become allocatable without a slow path.
    #[inline]
    pub(crate) fn reuse_local_free(&self) {
        if self.free.get().is_null() {
            let local = self.local_free.replace(ptr::null_mut());
            if !local.is_null() {
                // SAFETY: the owner's free blocks of this page (owner only).
                unsafe { self.clear_interior_marks(local) };
                self.free.set(local);
                self.free_is_zero.set(false);
            }
        }
    }

    /// Blocks about to become allocatable again lose their
    /// [`INTERIOR_RESET_MARK`] (only pages with interiors have marks): the
    /// program may write the block's pages and leave the mark's word alone.
    ///
    /// # Safety
    /// Owner only (or a lock holder acting for it); `list` is a chain of
    /// free blocks of this page that the caller owns.
    #[inline]
    pub(crate) unsafe fn clear_interior_marks(&self, mut list: *mut Block) {
        if !self.has_interiors() {
            return;
        }
        while !list.is_null() {
            // SAFETY: a free block of this page, at least
            // `INTERIOR_RESET_MIN` bytes (so the word is inside it), ours.
            unsafe {
                list.cast::<u8>().add(MARK_OFFSET).cast::<usize>().write(0);
                list = Block::next(list);
            }
        }
    }

    /// The page's free blocks have interiors a reaper may give back, so its
    /// `local_free` is left only under the heap's lock.
    #[inline]
    pub(crate) fn has_interiors(&self) -> bool {
        self.block_size.get() >= INTERIOR_RESET_MIN
    }

    /// The page is in its heap's full queue.
    #[inline(always)]
    pub(crate) fn is_in_full(&self) -> bool {
        self.flags.get() & IN_FULL != 0
    }
}

#[cfg(test)]
mod tests {
    use super::extend::EXTEND_BYTES;
    #[cfg(feature = "secure")]
    use super::extend::MIN_EXTEND;
    use super::thread_free::with_mode;
    use super::*;
    use crate::segment::Segment;
    use crate::size_class::PageKind;

    /// A page of `block_size` blocks in the first slot of a fresh small segment
    /// (no heap: the tests drive the page directly).
    fn fresh_page(block_size: usize) -> (*mut Segment, *mut Page) {
        let segment = Segment::create(PageKind::Small, 7, ptr::null_mut(), false)
            .expect("segment")
            .as_ptr();
        // SAFETY: the segment is ours and fresh, so it has a free slot.
        unsafe {
            let page = Segment::claim_slot(segment);
            let (area, len) = Segment::page_area(segment, Segment::page_index(segment, page));
            (*page).init(ptr::null_mut(), 0, block_size, area, len);
            (segment, page)
        }
    }

    #[test]
    fn extension_is_lazy_and_bounded() {
        let (segment, page) = fresh_page(64);
        // SAFETY: the page is ours.
        unsafe {
            let page = &*page;
            let (_, len) = Segment::page_area(segment, Segment::page_index(segment, page));
            assert_eq!(page.reserved.get() as usize, len / 64);
            assert_eq!(
                page.capacity.get() as usize,
                EXTEND_BYTES / 64,
                "one OS page worth at a time"
            );
            assert!(page.free_is_zero.get());
            let mut blocks = Vec::new();
            while let Some(block) = Some(page.pop()).filter(|b| !b.is_null()) {
                blocks.push(block.addr());
            }
            assert_eq!(blocks.len(), EXTEND_BYTES / 64);
            #[cfg(not(feature = "secure"))]
            assert!(
                blocks.windows(2).all(|w| w[1] == w[0] + 64),
                "sequential order"
            );
            #[cfg(feature = "secure")]
            {
                let mut sorted = blocks.clone();
                sorted.sort_unstable();
                assert!(
                    sorted.windows(2).all(|w| w[1] == w[0] + 64),
                    "a permutation"
                );
                assert_ne!(sorted, blocks, "shuffled");
            }
            assert_eq!(page.used.get() as usize, blocks.len());
            page.extend();
            assert_eq!(page.capacity.get() as usize, 2 * EXTEND_BYTES / 64);
            Segment::release(segment);
        }
    }

    /// Secure builds shuffle the four blocks of an extension of 1 KiB blocks
    /// one by one (`Page::extend_few`): a permutation, and not always the
    /// same one.
    #[cfg(feature = "secure")]
    #[test]
    fn few_blocks_are_shuffled_one_by_one() {
        let mut orders = std::collections::HashSet::new();
        for _ in 0..32 {
            let (segment, page) = fresh_page(1024);
            // SAFETY: the page is ours.
            unsafe {
                let page = &*page;
                assert_eq!(page.capacity.get() as usize, MIN_EXTEND);
                let start = page.page_start.get().addr();
                let order: Vec<usize> = (0..MIN_EXTEND)
                    .map(|_| (page.pop().addr() - start) / 1024)
                    .collect();
                assert!(page.pop().is_null());
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..MIN_EXTEND).collect::<Vec<_>>(), "a permutation");
                orders.insert(order);
                Segment::release(segment);
            }
        }
        // 32 draws from 24 orders: all equal with probability 24^-31.
        assert!(orders.len() > 4, "shuffled: {orders:?}");
    }

    #[test]
    fn local_frees_come_back_through_collect() {
        let (segment, page) = fresh_page(128);
        // SAFETY: the page is ours.
        unsafe {
            let page = &*page;
            let a = page.pop();
            let b = page.pop();
            assert_eq!(page.push_local(a), 1);
            assert_eq!(page.push_local(b), 0);
            // `free` still has extended blocks, so collect keeps local_free.
            page.collect();
            assert_eq!(page.local_free.get(), b);
            while !page.pop().is_null() {}
            page.collect();
            assert_eq!(page.free.get(), b, "local_free became free");
            assert!(!page.free_is_zero.get(), "recycled blocks are dirty");
            Segment::release(segment);
        }
    }

    #[test]
    fn remote_frees_from_many_threads_all_come_back() {
        let (segment, page) = fresh_page(64);
        // SAFETY: the page is ours; blocks are handed to the threads below.
        unsafe {
            let page = &*page;
            page.extend();
            page.extend();
            let blocks: Vec<usize> = (0..(3 * EXTEND_BYTES / 64))
                .map(|_| page.pop().addr())
                .collect();
            let page_addr = ptr::from_ref(page).addr();
            std::thread::scope(|scope| {
                for chunk in blocks.chunks(blocks.len() / 4 + 1) {
                    scope.spawn(move || {
                        let page: &Page = &*ptr::with_exposed_provenance::<Page>(page_addr);
                        for &block in chunk {
                            assert!(matches!(
                                page.free_remote(ptr::with_exposed_provenance_mut(block)),
                                RemoteFree::Pushed
                            ));
                        }
                    });
                }
                // The owner collects while the frees land.
                for _ in 0..100 {
                    page.collect_thread_free();
                }
            });
            page.collect_thread_free();
            assert_eq!(page.used.get(), 0);
            let mut seen = std::collections::HashSet::new();
            let mut block = page.local_free.get();
            while !block.is_null() {
                assert!(seen.insert(block.addr()), "block listed twice");
                block = Block::next(block);
            }
            assert_eq!(seen.len(), blocks.len());
            assert_eq!(page.delayed_mode(), DelayedMode::NoDelayed);
            Segment::release(segment);
        }
    }

    #[test]
    fn a_fork_child_ends_orphaned_freeing() {
        let (segment, page) = fresh_page(64);
        // SAFETY: the page is ours; this thread plays the forked child.
        unsafe {
            let page = &*page;
            let block = page.pop();
            assert!(matches!(page.free_remote(block), RemoteFree::Pushed));
            page.thread_free.store(
                with_mode(
                    page.thread_free.load(Ordering::Relaxed),
                    DelayedMode::Freeing,
                ),
                Ordering::Relaxed,
            );
            assert!(
                !page.try_set_delayed_mode(DelayedMode::UseDelayed, false),
                "the owner would wait"
            );
            page.end_orphaned_freeing();
            assert_eq!(page.delayed_mode(), DelayedMode::NoDelayed);
            page.collect_thread_free();
            assert_eq!(page.used.get(), 0, "the pushed block survives");
            Segment::release(segment);
        }
    }

    #[test]
    fn delayed_modes_follow_the_protocol() {
        let (segment, page) = fresh_page(64);
        // SAFETY: the page is ours.
        unsafe {
            let page = &*page;
            assert_eq!(page.delayed_mode(), DelayedMode::NoDelayed);
            assert!(page.try_set_delayed_mode(DelayedMode::Never, false));
            assert!(page.try_set_delayed_mode(DelayedMode::UseDelayed, false));
            assert_eq!(page.delayed_mode(), DelayedMode::Never, "Never is sticky");
            assert!(page.try_set_delayed_mode(DelayedMode::UseDelayed, true));
            assert_eq!(page.delayed_mode(), DelayedMode::UseDelayed);
            // A remote thread caught in `Freeing` makes the owner wait.
            page.thread_free
                .store(empty_list(DelayedMode::Freeing), Ordering::Relaxed);
            assert!(!page.try_set_delayed_mode(DelayedMode::Never, false));
            Segment::release(segment);
        }
    }
}
