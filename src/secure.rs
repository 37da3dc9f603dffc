//! Secure mode (cargo feature `secure`; `docs/security.md`): the checks and
//! the randomness that harden the allocator against heap misuse.
//!
//! * **Encoded links.** Every link stored inside a free block (the `free`,
//!   `local_free` and `thread_free` lists, the delayed list, a reaper's
//!   chains) is `rotl(next ⊕ block ⊕ k, k mod 64)`, with `k` the key of the
//!   block's page (`Page::key`, on the descriptor's read-mostly cache line,
//!   which remote frees read without disturbing the owner's), drawn afresh
//!   each time a page is set up from the thread's generator, seeded from a
//!   process-wide one seeded by `getrandom`. Every decoded link is validated
//!   before it is followed ([`Block::next`](crate::page::Block)): null, or a
//!   block boundary of the same page below its extension (delayed list: of a
//!   page of one of our segments); otherwise `free-list corruption` aborts.
//! * **Freed canary.** A free writes `block ⊕ k` into the block's second
//!   word; allocation clears it. A free that finds it already there is a
//!   double free.
//! * **Segment map.** A bitmap over the 4 MiB-aligned addresses below
//!   2^48 marks our segments; a free is trusted only if its segment is
//!   marked, its page in use and the pointer on a block boundary of that
//!   page. The [`owner_cache`] lets a thread's free into the segment it
//!   last freed into as its owner skip the map and the owner test while no
//!   segment has left the map or changed hands since.
//!
//! The block-boundary test is one multiplication and one rotation
//! ([`block_index`]): with `size = d · 2^s` (`d` odd), `inv` the inverse of
//! `d` modulo 2^64 (`Page::boundary_inv`, `Page::boundary_shift`) and
//! `offset = addr − page_start` (wrapping), `rotr(offset · inv, s)` is
//! `offset / size` when `size` divides `offset`, and otherwise at least
//! 2^(64 − s) / d, above any page's block count (Granlund and Montgomery's
//! divisibility test: an odd `d` divides a `W`-bit `y` exactly when
//! `y · inv mod 2^W ≤ (2^W − 1) / d`, the quotient then; a multiple of
//! 2^s has its low `s` bits zero, which the rotation moves to the top
//! otherwise). So `addr` is the start of block `i < n` exactly when the
//! result is below `n`, for every address, "negative" offsets included: the
//! owner's paths bound it by the page's extension (`Page::extent`), others
//! by `Page::live_blocks`, 0 while the page is not in use.
//!
//! Nothing here allocates or panics; a detected misuse ends the process
//! through [`crate::fatal::misuse`].

use crate::fatal::misuse;
use crate::page::{ADDRESS_LIMIT, Block, Page};
use crate::segment::{SEGMENT_SHIFT, Segment};
#[cfg(not(loom))]
use core::sync::atomic::AtomicU64;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Where a free block keeps its freed canary: the word after its link (past
/// the link's tracked cell under loom).
pub(crate) const CANARY_OFFSET: usize = size_of::<Block>().next_multiple_of(size_of::<usize>());

/// The smallest block a secure page holds: a link and a canary. The public
/// entry points never ask for the 8 B class (`global` rounds requests up to
/// 16 B) and `Page::init` rounds smaller blocks up to this, so the fast
/// paths write the canary without testing the size.
pub(crate) const CANARY_MIN_BLOCK: usize = CANARY_OFFSET + size_of::<usize>();

/// A value alone on its cache line: a word every thread reads on its hot
/// path must not share a line with one that other threads write (the
/// generator's state sat on the owner cache's generation line, and a
/// producer's page extensions, each one RMW of it, stole the line from its
/// consumer's frees, each one load of the generation).
#[repr(align(64))]
pub(crate) struct OwnLine<T>(pub(crate) T);

/// The process-wide seed source (a Weyl sequence; 0: not seeded): each
/// thread's generator takes its seed from it, once ([`thread_seed`]).
#[cfg(not(loom))]
static SEEDS: OwnLine<AtomicU64> = OwnLine(AtomicU64::new(0));

const WEYL: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(not(loom))]
std::thread_local! {
    /// The calling thread's generator: a Weyl sequence as the process-wide
    /// one, from a seed of its own (0: not seeded yet). Thread-local so
    /// that two threads setting up and extending pages at once do not take
    /// turns on one cache line (an RMW per extension and two per page set
    /// up, when the state was process-wide).
    static THREAD_RNG: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// A random 64-bit value from the calling thread's generator (splitmix64),
/// seeded at its first use from the process-wide seed source, itself
/// seeded from the OS (`getrandom`). Never allocates; no atomic operation
/// but the first on each thread.
#[cfg(not(loom))]
pub(crate) fn random_u64() -> u64 {
    THREAD_RNG.with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = thread_seed();
        }
        s = s.wrapping_add(WEYL);
        state.set(s);
        mix(s)
    })
}

/// A seed for a thread's generator: two outputs of the process-wide seed
/// source combined (as [`new_key`] does, so that a thread's state does not
/// give away the source's), never 0.
#[cfg(not(loom))]
#[cold]
#[inline(never)]
fn thread_seed() -> u64 {
    // Relaxed: the state is a counter; nothing else is published through it.
    if SEEDS.0.load(Ordering::Relaxed) == 0 {
        let mut seed = [0u8; 8];
        crate::os::random_bytes(&mut seed);
        let seed = u64::from_ne_bytes(seed) | 1;
        // Relaxed: whichever seed wins, it is random; no data hangs on it.
        let _ = SEEDS
            .0
            .compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    // Relaxed: RMWs on a counter, nothing published with them.
    let draw = || {
        mix(SEEDS
            .0
            .fetch_add(WEYL, Ordering::Relaxed)
            .wrapping_add(WEYL))
    };
    (draw() ^ draw().rotate_left(23)) | 1
}

/// After `fork`, in the child (its only thread, from the fork handler):
/// the seed source and the thread's generator start over, from the OS at
/// the next draw, so that parent and child, and two children of one
/// parent, draw different keys and layouts from then on. (Pages set up
/// before the fork keep their keys in both: their lists are encoded with
/// them.)
#[cfg(not(loom))]
pub(crate) fn reseed_after_fork() {
    // Relaxed: the child's only thread; nothing is published with it.
    SEEDS.0.store(0, Ordering::Relaxed);
    THREAD_RNG.with(|state| state.set(0));
}

/// Under loom a model must run the same way on every exploration: secure
/// mode's keys, shuffles and slot choices are fixed there (the models check
/// the protocols, not the secrecy).
#[cfg(loom)]
pub(crate) fn random_u64() -> u64 {
    mix(WEYL)
}

/// A small local generator (xorshift64*) for loops that need many random
/// numbers at once (shuffling an extension), seeded from [`random_u64`].
pub(crate) struct LocalRng(u64);

impl LocalRng {
    /// A generator seeded from the thread's.
    pub(crate) fn new() -> LocalRng {
        LocalRng(random_u64() | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `bound` (≤ 2^32, > 0): the high half of a 32 × 32-bit
    /// product (no division; the bias, below 2^-24, is irrelevant here).
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        let r = self.next_u64() >> 32;
        ((r * bound as u64) >> 32) as usize
    }
}

/// A fresh key for a page being set up: two outputs of the generator
/// combined, so that one key does not give away the generator's state
/// (splitmix64's output function alone is invertible).
pub(crate) fn new_key() -> usize {
    (random_u64() ^ random_u64().rotate_left(23)) as usize
}

/// The link stored in `block` for `next`: one xor and one rotation.
#[inline(always)]
pub(crate) fn encode(key: usize, block: *mut Block, next: *mut Block) -> *mut Block {
    // `rotate_left` takes the amount modulo 64 (x86-64: `rol r, cl`).
    next.map_addr(|a| (a ^ block.addr() ^ key).rotate_left(key as u32))
}

/// The inverse of [`encode`].
#[inline(always)]
pub(crate) fn decode(key: usize, block: *mut Block, stored: *mut Block) -> *mut Block {
    stored.map_addr(|s| s.rotate_right(key as u32) ^ block.addr() ^ key)
}

/// The page of a block (or of any address in a non-huge page area).
///
/// # Safety
/// `block` is a block of one of our live segments.
#[inline(always)]
pub(crate) unsafe fn page_of(block: *mut Block) -> *mut Page {
    let segment = Segment::of(block.cast());
    // SAFETY: a block of a live segment (caller).
    unsafe { Segment::page_of(segment, block.cast()) }
}

/// The key of `block`'s page.
///
/// # Safety
/// As for [`page_of`].
#[inline(always)]
pub(crate) unsafe fn key_of(block: *mut Block) -> usize {
    // SAFETY: forwarded; the key is written at page set-up, before any
    // block of the page is handed out, and never while one is live.
    unsafe { (*page_of(block)).key.get() }
}

/// The block-boundary test's constants for blocks of `size` bytes in a
/// page of `count` blocks: `(inv, s)` with `size = d · 2^s`, `d` odd and
/// `inv · d ≡ 1 (mod 2^64)` (see the module documentation). A page of one
/// block (huge, or a large one-block page) gets `(1, 0)`: the index is the
/// offset itself, below 1 only at 0.
pub(crate) fn boundary_constants(size: usize, count: u32) -> (usize, u32) {
    if count <= 1 || size == 0 {
        return (1, 0);
    }
    let shift = size.trailing_zeros();
    let odd = size >> shift;
    // Newton's iteration: `odd` is its own inverse modulo 8 (3 bits), and
    // each step doubles the bits that are right: 6, 12, 24, 48, 96.
    let mut inv = odd;
    for _ in 0..5 {
        inv = inv.wrapping_mul(2usize.wrapping_sub(odd.wrapping_mul(inv)));
    }
    (inv, shift)
}

/// The index of the block of `page` that starts at `addr`, if one does
/// (below the page's block count); otherwise a value above any block
/// count (see the module documentation). One `imul`, one `ror`.
///
/// # Safety
/// `page` is a descriptor of one of our live segments.
#[inline(always)]
unsafe fn block_index(page: *mut Page, addr: usize) -> usize {
    // SAFETY: a live descriptor (caller); `page_start` and the constants
    // are set by `Page::init` and do not change while the page is in use.
    unsafe {
        let offset = addr.wrapping_sub((*page).page_start.get().addr());
        offset
            .wrapping_mul((*page).boundary_inv.get())
            .rotate_right((*page).boundary_shift.get())
    }
}

/// Whether `addr` is the start of a block of `page` below its extension
/// (`Page::extent`, its `capacity` as a word): [`block_index`] and one
/// compare with memory (seven instructions and one branch, where the former
/// test, an offset bound and a multiply-and-compare, took eight and two).
/// A page not in use has an extension of 0: nothing passes.
///
/// # Safety
/// `page` is a descriptor of one of our live segments, and the caller its
/// owner (`extent` is owner-only).
#[inline(always)]
unsafe fn in_extent(page: *mut Page, addr: usize) -> bool {
    // SAFETY: a live descriptor of ours (caller); `extent` changes only on
    // its owner, the caller.
    unsafe { block_index(page, addr) < (*page).extent.get() }
}

/// Whether `addr` is the start of a block of `page`, a page in use (its
/// [`Page::live_blocks`] bound is 0 otherwise): the test of callers that
/// are not the page's owner.
///
/// # Safety
/// As for [`block_index`].
#[inline(always)]
unsafe fn is_live_block(page: *mut Page, addr: usize) -> bool {
    // SAFETY: as for `block_index`; `live_blocks` changes only while the
    // page holds no live block.
    unsafe { block_index(page, addr) < (*page).live_blocks.get() }
}

/// Decodes the link stored in free block `block` and checks that it is null
/// or a block of the same page (below its block count: callers may be a
/// reaper holding the heap's lock, so the owner-only `capacity` is not
/// read here).
///
/// # Safety
/// `block` is a free block of one of our live pages.
#[inline(always)]
pub(crate) unsafe fn checked_next(block: *mut Block, stored: *mut Block) -> *mut Block {
    // SAFETY: a free block of a live page (caller); `reserved` does not
    // change while the page holds blocks.
    unsafe {
        let page = page_of(block);
        let next = decode((*page).key.get(), block, stored);
        if !next.is_null() && !is_live_block(page, next.addr()) {
            corrupt(block);
        }
        next
    }
}

/// [`checked_next`] when the caller knows the block's page: the decoded
/// link must be null or a block boundary of `page` below its `capacity`
/// (every block on a list of the page was threaded by an extension).
///
/// # Safety
/// `block` is a free block of `page`, a live page of ours, and the caller
/// is the page's owner (`capacity` is owner-only).
#[inline(always)]
pub(crate) unsafe fn checked_next_in(
    page: *mut Page,
    block: *mut Block,
    stored: *mut Block,
) -> *mut Block {
    // SAFETY: a free block of a live page of ours (caller).
    unsafe {
        let next = decode((*page).key.get(), block, stored);
        if !next.is_null() && !in_extent(page, next.addr()) {
            corrupt(block);
        }
        next
    }
}

/// As [`checked_next`] for the delayed list, whose links cross pages and
/// segments: the next block must be a block boundary of a page in use of one
/// of our segments.
///
/// # Safety
/// As for [`checked_next`].
pub(crate) unsafe fn checked_next_any(block: *mut Block, stored: *mut Block) -> *mut Block {
    // SAFETY: as for `checked_next`; the target is checked before its page
    // is read.
    unsafe {
        let next = decode(key_of(block), block, stored);
        if !next.is_null() && find_page(next.cast()).is_none() {
            corrupt(block);
        }
        next
    }
}

#[cold]
#[inline(never)]
fn corrupt(block: *mut Block) -> ! {
    misuse("free-list corruption in the free block", block.addr())
}

/// The page of `ptr` if it is a block boundary of a page in use of one of
/// our segments; `None` otherwise. Never reads memory that is not ours.
///
/// # Safety
/// None beyond the pointer being any address; unsafe because a live page's
/// descriptor is read while its owner may run (the fields read do not
/// change while one of its blocks is live).
unsafe fn find_page(ptr: *mut u8) -> Option<*mut Page> {
    // SAFETY: forwarded.
    match unsafe { classify(ptr) } {
        Found::Live(page) => Some(page),
        Found::FreedPage | Found::NotOurs => None,
    }
}

/// What a pointer handed to the free path is.
enum Found {
    /// A block boundary of a page in use of one of our segments.
    Live(*mut Page),
    /// A block boundary of the last layout of a page of ours that is no
    /// longer in use: a block freed already (its page emptied since).
    FreedPage,
    /// Anything else.
    NotOurs,
}

/// See [`find_page`]. The careful version of [`check_free`]'s test: it
/// also tells a block of a page no longer in use (whose `live_blocks` is 0)
/// from a pointer that was never a block.
///
/// # Safety
/// As for [`find_page`].
unsafe fn classify(ptr: *mut u8) -> Found {
    let segment = Segment::of(ptr);
    if !segment_map::contains(segment.addr()) {
        return Found::NotOurs;
    }
    // SAFETY: the segment is one of ours and mapped (the map says so).
    unsafe {
        let index = (ptr.addr() - segment.addr()) >> (*segment).page_shift;
        if index >= (*segment).page_count {
            return Found::NotOurs;
        }
        let page = Segment::page(segment, index);
        if (*page).in_use.get() {
            return if is_live_block(page, ptr.addr()) {
                Found::Live(page)
            } else {
                Found::NotOurs
            };
        }
        // Not in use: its bound is 0; test the last layout's block count
        // (its constants are the last layout's).
        if block_index(page, ptr.addr()) < (*page).reserved.get() as usize {
            Found::FreedPage
        } else {
            Found::NotOurs
        }
    }
}

/// Checks a pointer handed to `free`/`dealloc` before any header is
/// trusted: its segment is in the map. Returns its segment and page; or
/// reports it (`invalid free`) through [`reject_free`], which aborts, and
/// returns `None` (never reached: see [`reject_free`]). Whether it is a
/// block of that page is tested next, on each path with the bound it needs:
/// [`mark_freed_local`] the page's extension, [`mark_freed_remote`] its
/// block count.
///
/// # Safety
/// See [`find_page`].
#[inline(always)]
pub(crate) unsafe fn check_free(ptr: *mut u8) -> Option<(*mut Segment, *mut Page)> {
    let segment = Segment::of(ptr);
    if !segment_map::contains(segment.addr()) {
        reject_free(ptr);
        return None;
    }
    // SAFETY: the segment is one of ours and mapped (the map says so); the
    // page index is below its page count (below); the fields read do not
    // change while a block of the page is live.
    unsafe {
        let index = (ptr.addr() - segment.addr()) >> (*segment).page_shift;
        // No test needed: the offset is below SEGMENT_SIZE (the segment is
        // the pointer's 4 MiB-aligned base), and every kind's page slots
        // tile those 4 MiB (small: 64 × 64 KiB, medium: 8 × 512 KiB; large
        // and huge: a shift of 22 or more, index 0 of 1).
        debug_assert!(index < (*segment).page_count);
        Some((segment, Segment::page(segment, index)))
    }
}

/// A pointer [`check_free`] or a bound on its index refused: report what
/// it is.
#[cold]
#[inline(never)]
fn reject(ptr: *mut u8) -> ! {
    // SAFETY: any address may be classified.
    match unsafe { classify(ptr) } {
        Found::FreedPage => misuse("double free", ptr.addr()),
        Found::Live(_) | Found::NotOurs => misuse("invalid free", ptr.addr()),
    }
}

/// [`reject`] for the free path. **It never returns** (the process
/// aborts); it is declared to return `()` so that the free fast path, which
/// returns right after calling it, reaches it with a tail jump. A call to a
/// `-> !` function is a real call, which needs the stack aligned: LLVM then
/// gives the whole fast path a stack frame (a `push` and a `pop` on every
/// free; it does not shrink-wrap the frame into the cold blocks). Callers
/// return at once after it, freeing nothing, so they would stay correct
/// even if it did return.
#[cold]
#[inline(never)]
pub(crate) fn reject_free(ptr: *mut u8) {
    reject(ptr)
}

/// A block freed twice (its freed canary found in place): as
/// [`reject_free`], never returns.
#[cold]
#[inline(never)]
fn double_free(block: *mut Block) {
    misuse("double free", block.addr())
}

/// Checks a pointer handed to `usable_size`/`realloc`: [`check_free`]'s
/// test, with the index bounded by the page's block count.
///
/// # Safety
/// See [`find_page`].
#[inline(always)]
pub(crate) unsafe fn check_pointer(ptr: *const u8) {
    let segment = Segment::of(ptr);
    if segment_map::contains(segment.addr()) {
        // SAFETY: as in `check_free`.
        unsafe {
            let index = (ptr.addr() - segment.addr()) >> (*segment).page_shift;
            // Below the page count, as in `check_free`.
            debug_assert!(index < (*segment).page_count);
            let page = Segment::page(segment, index);
            if is_live_block(page, ptr.addr()) {
                return;
            }
        }
    }
    invalid_pointer(ptr)
}

#[cold]
#[inline(never)]
fn invalid_pointer(ptr: *const u8) -> ! {
    misuse("invalid pointer (not a block of ours)", ptr.addr())
}

/// The canary a freed `block` carries: the block's address under its
/// page's key (a value a correct program never holds in a live block: it
/// never sees the key).
#[inline(always)]
fn canary(key: usize, block: *mut Block) -> usize {
    block.addr() ^ key
}

/// The canary word of `block` (its second word).
#[inline(always)]
fn canary_word(block: *mut Block) -> *mut usize {
    block.wrapping_byte_add(CANARY_OFFSET).cast::<usize>()
}

/// A free by the owner thread of `block`, a pointer into `page` (whose key
/// is `key`): reports it unless it is the start of a block below the page's
/// extension ([`in_extent`]; else [`reject_owner_free`]), or as a
/// `double free` if it already carries its freed canary, and returns false
/// (never reached: the reports abort, see [`reject_free`]); else writes the
/// canary and returns true. The canary: one load, one compare, one store.
///
/// # Safety
/// `page` is a page of the calling thread and `block` passed
/// [`check_free`] with it.
#[inline(always)]
pub(crate) unsafe fn mark_freed_local(page: *mut Page, block: *mut Block, key: usize) -> bool {
    // SAFETY: the page is ours (caller); once `in_extent` passes, the
    // canary word lies inside the block (every secure block holds
    // `CANARY_MIN_BLOCK` bytes, and it is one of the page's blocks).
    unsafe {
        if !in_extent(page, block.addr()) {
            reject_owner_free(page, block);
            return false;
        }
        let word = canary_word(block);
        let expected = canary(key, block);
        if word.read() == expected {
            double_free(block);
            return false;
        }
        word.write(expected);
        true
    }
}

/// A pointer freed by the owner of its page that is not the start of a block
/// below the page's extension: a block boundary past the extension, below
/// the page's block count, is a block never handed out since the page was
/// set up (its slot is on a free list or untouched): `double free`; else as
/// [`reject_free`] (a block of a page emptied since: `double free`;
/// anything else, an interior pointer say: `invalid free`). As
/// [`reject_free`], never returns.
#[cold]
#[inline(never)]
fn reject_owner_free(page: *mut Page, block: *mut Block) {
    // SAFETY: a descriptor of one of our segments (`check_free`).
    if unsafe { is_live_block(page, block.addr()) } {
        misuse("double free", block.addr());
    }
    reject(block.cast())
}

/// A free by another thread of `block`, a pointer into `page`: as
/// [`mark_freed_local`], the block bounded by the page's block count instead
/// of the owner-only extension ([`is_live_block`]), with an atomic swap so that two
/// threads freeing the same block at once cannot both pass.
///
/// # Safety
/// `block` passed [`check_free`] with `page`.
#[inline(always)]
pub(crate) unsafe fn mark_freed_remote(page: *mut Page, block: *mut Block) -> bool {
    // SAFETY: a descriptor of one of our segments (`check_free`); once the
    // bounds pass, the block is a block of the live `page`, and its canary
    // word lies inside it and is word-aligned.
    unsafe {
        if !is_live_block(page, block.addr()) {
            reject_free(block.cast());
            return false;
        }
        let word = AtomicUsize::from_ptr(canary_word(block));
        let expected = canary((*page).key.get(), block);
        // Relaxed: only the value matters; the block itself is published to
        // the owner by the list push's Release CAS that follows.
        if word.swap(expected, Ordering::Relaxed) == expected {
            double_free(block);
            return false;
        }
        true
    }
}

/// Clears the freed canary of a block about to be handed out: one store.
///
/// # Safety
/// `block` was just taken off a free list of a page the caller owns.
#[inline(always)]
pub(crate) unsafe fn clear_canary(block: *mut Block) {
    // SAFETY: the block is ours (caller); the word lies inside it.
    unsafe { canary_word(block).write(0) }
}

/// The process-wide map of our segments: one bit per 4 MiB-aligned address
/// below [`ADDRESS_LIMIT`] (2^26 bits: 8 MiB of zero-initialised static
/// memory, of which only the OS pages covering addresses we actually map
/// ever become resident — one 4 KiB page of the map covers 128 GiB). A bit
/// and not a byte: a byte map's test is 2 instructions shorter (no bit
/// index, no `bt`) but its 64 MiB of static memory count against a strict
/// overcommit limit (`vm.overcommit_memory=2`) or `ulimit -v` in every
/// process that links the allocator.
pub(crate) mod segment_map {
    use super::{ADDRESS_LIMIT, SEGMENT_SHIFT};
    use core::sync::atomic::{AtomicU64, Ordering};

    const BITS: usize = ADDRESS_LIMIT >> SEGMENT_SHIFT;
    static MAP: [AtomicU64; BITS / 64] = [const { AtomicU64::new(0) }; BITS / 64];

    /// Word and bit of a segment address (`None` above the limit).
    fn slot(segment: usize) -> Option<(&'static AtomicU64, u64)> {
        let index = segment >> SEGMENT_SHIFT;
        let word = MAP.get(index / 64)?;
        Some((word, 1 << (index % 64)))
    }

    /// Marks a freshly mapped segment as ours.
    pub(crate) fn insert(segment: usize) {
        if let Some((word, bit)) = slot(segment) {
            // Release pairs with the Acquire load of `contains`: a thread
            // that finds the bit sees the segment's header initialised.
            word.fetch_or(bit, Ordering::Release);
        }
    }

    /// Unmarks a segment about to be unmapped (or moved): first every
    /// thread's owner cache goes stale ([`super::owner_cache`]).
    pub(crate) fn remove(segment: usize) {
        super::owner_cache::invalidate();
        if let Some((word, bit)) = slot(segment) {
            // Relaxed: a free racing the unmap of its own segment is a use
            // after free of the program; nothing is published by clearing.
            word.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Whether `segment` is one of our mapped segments.
    #[inline(always)]
    pub(crate) fn contains(segment: usize) -> bool {
        // Acquire pairs with the Release of `insert`.
        slot(segment).is_some_and(|(word, bit)| word.load(Ordering::Acquire) & bit != 0)
    }
}

/// The owner cache: the last segment the calling thread freed a block into
/// as its owner, with the *generation* at which the segment map and the
/// owner test vouched for it. A free into that segment, while the
/// generation has not moved, skips both (the map's 11 instructions, the
/// owner test's 5) for a compare of the segment and one of the generation:
/// the segment is still mapped, still ours and still the calling thread's,
/// since everything that could change that bumps the generation first —
/// a segment leaving the map ([`segment_map::remove`]: unmapped, moved),
/// or changing owner ([`Segment::set_owner`], `Segment::init_header`),
/// rare events (a segment is 4 MiB). Everything else a free checks (the
/// block boundary below the extension, the freed canary) is checked as
/// before.
///
/// The cache is per thread and read only by its thread; only the thread's
/// own frees write it, with the generation read *before* their checks, so
/// that a change racing them leaves the entry stale. Huge segments are not
/// remembered (their frees are rare, and a huge segment goes away with its
/// block). Only the entry points that free on the calling thread's behalf
/// use it ([`crate::free::free_current`]), not `free_block` with an
/// explicit thread id (tests, loom), so the loom models check the full path.
///
/// A segment that changes hands while one of its owner's frees runs is the
/// program's use after free (it held no live block); the owner test had
/// the same window (a stale owner id read).
pub(crate) mod owner_cache {
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// Bumped before any segment leaves the map or changes owner; read by
    /// every free, so alone on its cache line.
    static GENERATION: super::OwnLine<AtomicUsize> = super::OwnLine(AtomicUsize::new(0));

    #[cfg(not(loom))]
    std::thread_local! {
        /// `[segment, generation]`; `usize::MAX` (no segment's address)
        /// until the thread's first free into a segment of its own.
        static LAST: core::cell::Cell<[usize; 2]> =
            const { core::cell::Cell::new([usize::MAX, 0]) };
        /// As `LAST`, for the last segment the map vouched for on a free of
        /// another thread's block ([`vouched`]).
        static VOUCHED: core::cell::Cell<[usize; 2]> =
            const { core::cell::Cell::new([usize::MAX, 0]) };
    }

    /// The generation now; read before the checks whose outcome
    /// [`remember`] records.
    #[inline(always)]
    pub(crate) fn generation() -> usize {
        // Relaxed: nothing is published through the counter. A thread's own
        // bumps precede its later reads in program order (the cases a
        // correct program meets: its own segments leave it through its own
        // hands); another thread's bump is seen once the hardware makes it
        // visible, and a free racing it is the program's use after free,
        // which no ordering here would close (see the module doc).
        GENERATION.0.load(Ordering::Relaxed)
    }

    /// Whether `segment` is the calling thread's cached own segment and no
    /// segment left the map or changed hands since it was cached. (Under
    /// loom the cache is off: the models check the full path.)
    #[inline(always)]
    pub(crate) fn hit(segment: usize) -> bool {
        #[cfg(not(loom))]
        {
            let [cached, at] = LAST.with(core::cell::Cell::get);
            cached == segment && at == generation()
        }
        #[cfg(loom)]
        {
            let _ = segment;
            false
        }
    }

    /// Whether `segment` is the segment the map last vouched for on one of
    /// the calling thread's frees of another thread's block, and no segment
    /// left the map or changed hands since `generation` (read before the
    /// caller's checks). Such a free still takes the owner test.
    #[inline(always)]
    pub(crate) fn vouched(segment: usize, generation: usize) -> bool {
        #[cfg(not(loom))]
        {
            let [cached, at] = VOUCHED.with(core::cell::Cell::get);
            cached == segment && at == generation
        }
        #[cfg(loom)]
        {
            let _ = (segment, generation);
            false
        }
    }

    /// Records that at `generation` the map vouched for `segment` (not the
    /// calling thread's: see [`vouched`]).
    #[inline(always)]
    pub(crate) fn remember_vouched(segment: usize, generation: usize) {
        #[cfg(not(loom))]
        VOUCHED.with(|last| last.set([segment, generation]));
        #[cfg(loom)]
        let _ = (segment, generation);
    }

    /// Records that at `generation` the map and the owner test vouched for
    /// `segment` as one of the calling thread's.
    #[inline(always)]
    pub(crate) fn remember(segment: usize, generation: usize) {
        #[cfg(not(loom))]
        LAST.with(|last| last.set([segment, generation]));
        #[cfg(loom)]
        let _ = (segment, generation);
    }

    /// Makes every thread's cached entry stale: called before a segment
    /// leaves the map or changes owner.
    pub(crate) fn invalidate() {
        // Relaxed: a counter, as in `generation` (the RMW keeps every bump).
        GENERATION.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr;

    #[test]
    fn links_round_trip_and_null_is_hidden() {
        let key = new_key();
        let block = ptr::without_provenance_mut::<Block>(0x7000_0000_1000);
        for next in [0usize, 0x7000_0000_1040, 0x7fff_ffff_fff0] {
            let next = ptr::without_provenance_mut::<Block>(next);
            let stored = encode(key, block, next);
            assert_eq!(decode(key, block, stored), next);
        }
        assert_ne!(encode(key, block, ptr::null_mut()).addr(), 0);
        // A link copied into another block decodes to another address.
        let other = ptr::without_provenance_mut::<Block>(0x7000_0000_1040);
        let stored = encode(key, block, other);
        assert_ne!(decode(key, other, stored), other);
    }

    /// `rotr((addr − start) · inv, s) < n` holds exactly for the starts of
    /// blocks `0 .. n`: every size class over a segment's span on both
    /// sides of the page start (every 8 bytes), far offsets, and odd sizes.
    #[test]
    fn the_boundary_test_is_exact() {
        let check = |size: usize, count: usize| {
            let (inv, shift) = boundary_constants(size, count as u32);
            let index = |offset: usize| offset.wrapping_mul(inv).rotate_right(shift);
            let span = 4usize << 20;
            let mut offset = 0usize.wrapping_sub(span);
            while offset != span {
                let expected = offset.is_multiple_of(size) && offset / size < count;
                assert_eq!(
                    index(offset) < count,
                    expected,
                    "size {size} offset {offset:#x}"
                );
                if expected {
                    assert_eq!(index(offset), offset / size);
                }
                offset = offset.wrapping_add(if size.is_multiple_of(8) { 8 } else { 1 });
            }
            for far in [
                usize::MAX,
                usize::MAX - 7,
                0usize.wrapping_sub(size),
                0usize.wrapping_sub(size * count),
                size * count,
                1 << 32,
                size << 32,
                1 << 47,
                (1 << 48) - size,
            ] {
                assert!(index(far) >= count, "size {size} offset {far:#x}");
            }
        };
        for &size in crate::size_class::BLOCK_SIZES.iter().filter(|&&s| s > 0) {
            check(size, (64 << 10) / size.min(64 << 10));
            check(size, (4usize << 20) / size);
        }
        for size in [24, 40, 48, 3 * 1024, 7 * 4096] {
            check(size, 1000);
        }
        // One block (huge pages): offset 0 only, whatever the size.
        check(5 << 20, 1);
        assert_eq!(boundary_constants(5 << 20, 1), (1, 0));
    }

    #[test]
    fn a_change_of_owner_makes_the_owner_cache_stale() {
        let p = crate::global::ShardAlloc;
        let layout = core::alloc::Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a non-zero layout; the block is freed once, below.
        let block = unsafe { core::alloc::GlobalAlloc::alloc(&p, layout) };
        let segment = Segment::of(block);
        // Other tests' threads bump the generation too: remember until a
        // check right after it hits.
        let remembered = (0..1000).any(|_| {
            owner_cache::remember(segment.addr(), owner_cache::generation());
            owner_cache::hit(segment.addr())
        });
        assert!(remembered, "the cache never held the segment");
        // SAFETY: the segment is live (its block is); its owner is stored
        // again unchanged, so nothing else notices.
        unsafe {
            let owner = (*segment).thread_id.load(Ordering::Relaxed);
            (*segment).set_owner(owner);
        }
        assert!(!owner_cache::hit(segment.addr()));
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { core::alloc::GlobalAlloc::dealloc(&p, block, layout) };
    }

    /// After a fork the child's next draws do not continue its parent's
    /// sequence: the thread's state is reset and the next draw reseeds.
    #[test]
    fn a_forked_child_draws_afresh() {
        let _ = random_u64();
        let state = THREAD_RNG.with(core::cell::Cell::get);
        assert_ne!(state, 0);
        // What the parent draws next, from the state both processes share.
        let parents_next = mix(state.wrapping_add(WEYL));
        reseed_after_fork();
        assert_eq!(THREAD_RNG.with(core::cell::Cell::get), 0);
        assert_ne!(random_u64(), parents_next);
        assert_ne!(
            THREAD_RNG.with(core::cell::Cell::get),
            state.wrapping_add(WEYL)
        );
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn the_segment_map_knows_our_segments_only() {
        let p = crate::global::ShardAlloc;
        let layout = core::alloc::Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a non-zero layout; freed once.
        unsafe {
            use core::alloc::GlobalAlloc;
            let block = p.alloc(layout);
            assert!(segment_map::contains(Segment::of(block).addr()));
            let stack = 0u64;
            assert!(!segment_map::contains(
                Segment::of((&raw const stack).cast()).addr()
            ));
            p.dealloc(block, layout);
        }
    }
}
