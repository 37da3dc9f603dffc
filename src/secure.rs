//! Secure mode (cargo feature `secure`; `docs/security.md`): the checks and
//! the randomness that harden the allocator against heap misuse.
//!
//! * **Encoded links.** Every link stored inside a free block (the `free`,
//!   `local_free` and `thread_free` lists, the delayed list, a reaper's
//!   chains) is `rotl(next ⊕ block ⊕ k0, k1 mod 64) + k1`, with `k0, k1` the
//!   keys of the block's page, drawn afresh from a process-wide generator
//!   seeded by `getrandom` each time a page is set up. Every decoded link is
//!   validated before it is followed ([`Block::next`](crate::page::Block)):
//!   null, or a block boundary of the same page (delayed list: of a page of
//!   one of our segments); otherwise `free-list corruption` aborts.
//! * **Freed canary.** A free writes a keyed value into the block's second
//!   word; allocation clears it. A free that finds it already there is a
//!   double free.
//! * **Segment map.** A bitmap over the 4 MiB-aligned addresses below 2^48
//!   marks our segments; a free is trusted only if its segment is marked,
//!   its page in use and the pointer on a block boundary of that page.
//!
//! Nothing here allocates or panics; a detected misuse ends the process
//! through [`crate::fatal::misuse`].

use crate::fatal::misuse;
use crate::page::{ADDRESS_LIMIT, Block, Page};
use crate::segment::{SEGMENT_SHIFT, Segment};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Where a free block keeps its freed canary: the word after its link (past
/// the link's tracked cell under loom).
pub(crate) const CANARY_OFFSET: usize = size_of::<Block>().next_multiple_of(size_of::<usize>());

/// Blocks smaller than this carry no canary (the 8 B class: secure builds
/// never hand it out through the public entry points, see `global`).
const CANARY_MIN_BLOCK: usize = CANARY_OFFSET + size_of::<usize>();

/// State of the process-wide generator (a Weyl sequence; 0: not seeded).
static RNG: AtomicU64 = AtomicU64::new(0);

const WEYL: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random 64-bit value from the process-wide generator, seeded from the
/// OS (`getrandom`) at its first use. Lock-free; never allocates.
#[cfg(not(loom))]
pub(crate) fn random_u64() -> u64 {
    // Relaxed: the state is a counter; nothing else is published through it.
    if RNG.load(Ordering::Relaxed) == 0 {
        let mut seed = [0u8; 8];
        crate::os::random_bytes(&mut seed);
        let seed = u64::from_ne_bytes(seed) | 1;
        // Relaxed: whichever seed wins, it is random; no data hangs on it.
        let _ = RNG.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    // Relaxed: an RMW on a counter, nothing published with it.
    mix(RNG.fetch_add(WEYL, Ordering::Relaxed).wrapping_add(WEYL))
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
    /// A generator seeded from the process-wide one.
    pub(crate) fn new() -> LocalRng {
        LocalRng(random_u64() | 1)
    }

    /// A value below `bound` (> 0); the modulo bias is irrelevant here.
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % bound
    }
}

/// Fresh keys for a page being set up.
pub(crate) fn new_keys() -> [usize; 2] {
    [random_u64() as usize, random_u64() as usize]
}

/// The link stored in `block` for `next`.
#[inline(always)]
pub(crate) fn encode(keys: [usize; 2], block: *mut Block, next: *mut Block) -> *mut Block {
    next.map_addr(|a| {
        (a ^ block.addr() ^ keys[0])
            .rotate_left(keys[1] as u32 & 63)
            .wrapping_add(keys[1])
    })
}

/// The inverse of [`encode`].
#[inline(always)]
pub(crate) fn decode(keys: [usize; 2], block: *mut Block, stored: *mut Block) -> *mut Block {
    stored.map_addr(|s| {
        s.wrapping_sub(keys[1]).rotate_right(keys[1] as u32 & 63) ^ block.addr() ^ keys[0]
    })
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

/// The keys of `block`'s page.
///
/// # Safety
/// As for [`page_of`].
#[inline(always)]
pub(crate) unsafe fn keys_of(block: *mut Block) -> [usize; 2] {
    // SAFETY: forwarded; the keys are written at page set-up, before any
    // block of the page is handed out, and never while one is live.
    unsafe { (*page_of(block)).keys.get() }
}

/// The multiplier of the division-free block-boundary test for blocks of
/// `size` bytes in a page of `count` blocks: `offset % size == 0` exactly
/// when `offset · m mod 2^64 < m` with `m = ⌈2^64 / size⌉`, for every
/// `offset < 2^32` (Lemire, Kaser and Kurz, "Faster remainder by direct
/// computation", 2019); page offsets of non-huge pages are below 4 MiB. A
/// page of one block (huge, or large one-block pages) gets `m = 1`: only
/// offset 0 passes.
pub(crate) fn boundary_multiplier(size: usize, count: u32) -> usize {
    if count <= 1 || size == 0 || size > u32::MAX as usize {
        1
    } else {
        usize::MAX / size + 1
    }
}

/// `addr` is the start of one of the first `count` blocks of `page`.
///
/// # Safety
/// `page` is a descriptor of one of our live segments.
#[inline(always)]
unsafe fn on_block_boundary(page: *mut Page, addr: usize, count: u32) -> bool {
    // SAFETY: a live descriptor (caller); only fields fixed while the page
    // holds live blocks are read.
    let (start, size, m) = unsafe {
        (
            (*page).page_start.get().addr(),
            (*page).block_size.get(),
            (*page).boundary_m.get(),
        )
    };
    let offset = addr.wrapping_sub(start);
    offset < (count as usize).wrapping_mul(size) && offset.wrapping_mul(m) < m
}

/// Decodes the link stored in free block `block` and checks that it is null
/// or a block of the same page.
///
/// # Safety
/// `block` is a free block of one of our live pages.
#[inline(always)]
pub(crate) unsafe fn checked_next(block: *mut Block, stored: *mut Block) -> *mut Block {
    // SAFETY: a free block of a live page (caller).
    unsafe { checked_next_in(page_of(block), block, stored) }
}

/// [`checked_next`] when the caller knows the block's page.
///
/// # Safety
/// `block` is a free block of `page`, a live page of ours.
#[inline(always)]
pub(crate) unsafe fn checked_next_in(
    page: *mut Page,
    block: *mut Block,
    stored: *mut Block,
) -> *mut Block {
    // SAFETY: a free block of a live page (caller).
    unsafe {
        let next = decode((*page).keys.get(), block, stored);
        if !next.is_null() && !on_block_boundary(page, next.addr(), (*page).reserved.get()) {
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
        let next = decode(keys_of(block), block, stored);
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

/// See [`find_page`].
///
/// # Safety
/// As for [`find_page`].
#[inline(always)]
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
        if !on_block_boundary(page, ptr.addr(), (*page).reserved.get()) {
            return Found::NotOurs;
        }
        if !(*page).in_use.get() {
            return Found::FreedPage;
        }
        Found::Live(page)
    }
}

/// Checks a pointer handed to `free`/`dealloc` before any header is
/// trusted; returns its segment and page, or aborts with `invalid free`.
///
/// # Safety
/// See [`find_page`].
#[inline(always)]
pub(crate) unsafe fn check_free(ptr: *mut u8) -> (*mut Segment, *mut Page) {
    // SAFETY: forwarded.
    match unsafe { classify(ptr) } {
        Found::Live(page) => (Segment::of(ptr), page),
        Found::FreedPage => misuse("double free", ptr.addr()),
        Found::NotOurs => misuse("invalid free", ptr.addr()),
    }
}

/// Checks a pointer handed to `usable_size`/`realloc`.
///
/// # Safety
/// See [`find_page`].
pub(crate) unsafe fn check_pointer(ptr: *const u8) {
    // SAFETY: forwarded.
    if unsafe { find_page(ptr.cast_mut()) }.is_none() {
        misuse("invalid pointer (not a block of ours)", ptr.addr());
    }
}

/// The canary a freed `block` of `page` carries.
#[inline(always)]
fn canary(keys: [usize; 2], block: *mut Block) -> usize {
    (block.addr() ^ keys[1])
        .rotate_left(29)
        .wrapping_add(keys[0])
        ^ 0xF4EE_D0C5_A11C_5AFE
}

/// A free by the owner thread: aborts with `double free` if `block` already
/// carries its freed canary, or is past the blocks ever handed out; else
/// writes the canary.
///
/// # Safety
/// `page` is a page of the calling thread and `block` passed [`check_free`].
#[inline(always)]
pub(crate) unsafe fn mark_freed_local(page: *mut Page, block: *mut Block) {
    // SAFETY: the page is ours (caller); the canary word lies inside the
    // block (size checked).
    unsafe {
        if block.addr() - (*page).page_start.get().addr()
            >= (*page).capacity.get() as usize * (*page).block_size.get()
        {
            // Never handed out since the page was set up: its slot is still
            // on a free list or untouched.
            misuse("double free", block.addr());
        }
        if (*page).block_size.get() < CANARY_MIN_BLOCK {
            return;
        }
        let word = block.byte_add(CANARY_OFFSET).cast::<usize>();
        let expected = canary((*page).keys.get(), block);
        if word.read() == expected {
            misuse("double free", block.addr());
        }
        word.write(expected);
    }
}

/// A free by another thread: as [`mark_freed_local`], with an atomic swap so
/// that two threads freeing the same block at once cannot both pass.
///
/// # Safety
/// `block` passed [`check_free`] and `page` is its page.
#[inline(always)]
pub(crate) unsafe fn mark_freed_remote(page: *mut Page, block: *mut Block) {
    // SAFETY: the block is a block of the live `page` (caller); the canary
    // word lies inside it (size checked) and is word-aligned.
    unsafe {
        if (*page).block_size.get() < CANARY_MIN_BLOCK {
            return;
        }
        let word = AtomicUsize::from_ptr(block.byte_add(CANARY_OFFSET).cast::<usize>());
        let expected = canary((*page).keys.get(), block);
        // Relaxed: only the value matters; the block itself is published to
        // the owner by the list push's Release CAS that follows.
        if word.swap(expected, Ordering::Relaxed) == expected {
            misuse("double free", block.addr());
        }
    }
}

/// Clears the freed canary of a block about to be handed out.
///
/// # Safety
/// `block` was just taken off a free list of `page`, which the caller owns.
#[inline(always)]
pub(crate) unsafe fn clear_canary(page: *mut Page, block: *mut Block) {
    // SAFETY: the block is ours (caller); the word lies inside it.
    unsafe {
        if (*page).block_size.get() >= CANARY_MIN_BLOCK {
            block.byte_add(CANARY_OFFSET).cast::<usize>().write(0);
        }
    }
}

/// The process-wide map of our segments: one bit per 4 MiB-aligned address
/// below [`ADDRESS_LIMIT`] (2^26 bits: 8 MiB of zero-initialised static
/// memory, of which only the OS pages covering addresses we actually map
/// ever become resident — one 4 KiB page of the map covers 128 GiB).
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

    /// Unmarks a segment about to be unmapped.
    pub(crate) fn remove(segment: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr;

    #[test]
    fn links_round_trip_and_null_is_hidden() {
        let keys = new_keys();
        let block = ptr::without_provenance_mut::<Block>(0x7000_0000_1000);
        for next in [0usize, 0x7000_0000_1040, 0x7fff_ffff_fff0] {
            let next = ptr::without_provenance_mut::<Block>(next);
            let stored = encode(keys, block, next);
            assert_eq!(decode(keys, block, stored), next);
        }
        assert_ne!(encode(keys, block, ptr::null_mut()).addr(), 0);
    }

    #[test]
    fn the_boundary_multiplier_divides_exactly() {
        for &size in crate::size_class::BLOCK_SIZES.iter().filter(|&&s| s > 0) {
            let m = boundary_multiplier(size, 64);
            for offset in (0..(4usize << 20)).step_by(8) {
                assert_eq!(
                    offset.wrapping_mul(m) < m,
                    offset.is_multiple_of(size),
                    "size {size} offset {offset}"
                );
            }
        }
        assert_eq!(boundary_multiplier(5 << 20, 1), 1);
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
