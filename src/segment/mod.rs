//! Segments: regions aligned to their size (4 MiB), split into pages of one
//! kind, whose header holds the page descriptors.
//!
//! ```text
//!  segment (4 MiB, 4 MiB-aligned)
//!  ┌────────────┬──────────────┬──────────────┬─────┬──────────────┐
//!  │ header     │ page 0 area  │ page 1       │ ... │ page 63      │  small: 64 × 64 KiB
//!  │ (Segment,  │ (rest of the │              │     │              │  medium: 8 × 512 KiB
//!  │  [Page;64])│  first page) │              │     │              │  large: 1 × 4 MiB
//!  └────────────┴──────────────┴──────────────┴─────┴──────────────┘
//! ```
//!
//! Pointer → segment is a mask of `p − 1`; pointer → page is a shift of the
//! offset into the segment. Neither touches global data. (`p − 1` matters
//! only for a huge block placed exactly one segment size past its segment's
//! start, which is how alignments above 4 MiB are served.)
//!
//! A huge segment holds one block and may be larger than 4 MiB; its block
//! always starts within the first `SEGMENT_SIZE` bytes (plus one), so the
//! mask still finds the header.

mod halves;
mod huge;

pub(crate) use huge::{HugeLayout, RESHAPE_HUGE_SPARES};

use crate::decay;
use crate::heap::RawHeap;
use crate::options;
use crate::os::{self, OS_PAGE_SIZE, checked_align_up};
use crate::page::{ADDRESS_LIMIT, Page};
use crate::size_class::PageKind;
use crate::stats;
use crate::sync::{AtomicUsize, OwnerCell, UnsafeCell};
use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

/// log2 of the segment size.
pub(crate) const SEGMENT_SHIFT: usize = 22;
/// Size and alignment of a (non-huge) segment: 4 MiB.
pub(crate) const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
const SEGMENT_MASK: usize = SEGMENT_SIZE - 1;

/// Page descriptors per segment (small segments use all of them).
pub(crate) const MAX_PAGES: usize = 64;

const SMALL_PAGE_SHIFT: usize = 16;
const MEDIUM_PAGE_SHIFT: usize = 19;
/// A large page spans the segment, so every offset maps to page 0.
const LARGE_PAGE_SHIFT: usize = SEGMENT_SHIFT;
/// Offsets into a huge segment that the page lookup sees are at most
/// `SEGMENT_SIZE`, so this shift maps them all to page 0.
const HUGE_PAGE_SHIFT: usize = SEGMENT_SHIFT + 1;

/// Bytes reserved at the start of every segment for its header.
pub(crate) const HEADER_SIZE: usize = match checked_align_up(size_of::<Segment>(), OS_PAGE_SIZE) {
    Some(size) => size,
    None => panic!("segment header size overflows"),
};

/// Secure builds end every segment with a guard page (`PROT_NONE`): an
/// overflow running off the last block of a segment faults before it
/// reaches the next segment. Not under loom or Miri (no real mappings).
///
/// A huge segment's guard follows its block, inside its `size`. A small,
/// medium or large segment's guard is the OS page right after its
/// `SEGMENT_SIZE` bytes ([`SEGMENT_MAP_SIZE`]), outside the aligned 4 MiB,
/// so that both 2 MiB halves stay whole: a `PROT_NONE` page inside a half
/// splits its mapping, and the kernel then never backs that half with a
/// transparent huge page (a guard at the end of the 4 MiB cost the upper
/// halves their huge pages: `rebuild` took 21 000 page faults instead of
/// 2 100). The 4 MiB-aligned region after a segment can then hold no
/// segment of ours; address space is plentiful, and other mappings may
/// still use it.
#[cfg(all(feature = "secure", not(any(loom, miri))))]
const GUARD_SIZE: usize = OS_PAGE_SIZE;
#[cfg(not(all(feature = "secure", not(any(loom, miri)))))]
const GUARD_SIZE: usize = 0;

/// Bytes mapped for a small, medium or large segment: its `SEGMENT_SIZE`
/// bytes, then (secure builds) its guard page.
const SEGMENT_MAP_SIZE: usize = SEGMENT_SIZE + GUARD_SIZE;

/// Secure builds: the guard page at the end of `[base, base + size)`, and
/// the segment entered in the segment map. Returns whether the guard page
/// is in place (guard pages on, and the OS agreed).
#[cfg(feature = "secure")]
fn secure_new_segment(base: NonNull<u8>, size: usize) -> bool {
    crate::secure::segment_map::insert(base.as_ptr().addr());
    #[cfg(not(any(loom, miri)))]
    if crate::options::secure_guard_pages() {
        // SAFETY: the last OS page of `[base, base + size)`, memory of ours
        // that no page area or block reaches (they end GUARD_SIZE before
        // it). A refused mprotect only loses the guard.
        return unsafe { os::protect_none(base.as_ptr().add(size - GUARD_SIZE), GUARD_SIZE) };
    }
    #[cfg(any(loom, miri))]
    let _ = size;
    false
}

/// Secure builds: a fresh page takes one of this many lowest unused slots
/// of its segment, at random ([`Segment::claim_slot`]).
#[cfg(feature = "secure")]
const SLOT_CANDIDATES: usize = 4;

/// Largest huge request (128 TiB); anything larger is reported as out of
/// memory without asking the OS.
pub(crate) const HUGE_SIZE_MAX: usize = 1 << 47;

/// Maps segment memory, refusing (as out of memory) a mapping that reaches
/// above [`ADDRESS_LIMIT`]: the thread-free word keeps a list length in the
/// address bits above it. Linux never maps there unless asked to.
fn map_below_limit(size: usize, align: usize, offset: usize) -> Option<NonNull<u8>> {
    let base = os::map(size, align, offset)?;
    if base
        .as_ptr()
        .addr()
        .checked_add(size)
        .is_some_and(|end| end <= ADDRESS_LIMIT)
    {
        return Some(base);
    }
    // SAFETY: just mapped by us with these parameters, never used.
    unsafe { os::unmap(base, size, align) };
    None
}

/// Links of a segment in one of its heap's segment lists (the heap's owner,
/// or the holder of its lock).
pub(crate) struct Links {
    pub(crate) next: OwnerCell<*mut Segment>,
    pub(crate) prev: OwnerCell<*mut Segment>,
}

impl Links {
    pub(crate) fn new() -> Links {
        Links {
            next: OwnerCell::new(ptr::null_mut()),
            prev: OwnerCell::new(ptr::null_mut()),
        }
    }
}

/// A transparent huge page (x86-64, aarch64 with 4 KiB pages).
const HUGE_OS_PAGE: usize = 2 << 20;

/// A segment header.
///
/// `thread_id` is read by every free (relaxed, compared with the caller's
/// own id); everything else is owner-only, or immutable after
/// [`Segment::create`].
#[repr(C)]
pub(crate) struct Segment {
    /// Owner thread id; 0 while the segment is abandoned.
    pub(crate) thread_id: AtomicUsize,
    /// Immutable: the segment's page kind.
    pub(crate) kind: PageKind,
    /// Immutable: shift from an offset to a page index.
    pub(crate) page_shift: usize,
    /// Immutable: number of page slots.
    pub(crate) page_count: usize,
    /// Immutable: bytes of the segment from its start (header, block or
    /// pages, guard).
    pub(crate) size: usize,
    /// Immutable: bytes mapped from the segment start: `size`, or for a
    /// huge segment backed by huge pages `size` rounded up to whole huge
    /// pages (the slack is never handed out).
    pub(crate) map_size: usize,
    /// Immutable: the alignment the mapping was requested with.
    pub(crate) map_align: usize,
    /// Page slots in use.
    pub(crate) used_pages: Cell<usize>,
    /// The owning heap (null while abandoned).
    pub(crate) heap: Cell<*mut RawHeap>,
    /// Membership in the heap's list of all its segments.
    pub(crate) all: Links,
    /// Membership in the heap's list of segments with a free page slot.
    pub(crate) with_free_slot: Links,
    /// The segment is on the heap's `with_free_slot` list.
    pub(crate) in_free_slot_list: Cell<bool>,
    /// Set by [`Segment::reset_pages`]: every page area reads as zeros.
    pages_zero: Cell<bool>,
    /// Unused slots on the owning heap's reset queue.
    pub(crate) pending_pages: Cell<usize>,
    /// While abandoned: the bytes of its live blocks counted in
    /// `stats::ABANDONED_LIVE` (as of the last look at the segment).
    pub(crate) abandoned_live: Cell<usize>,
    /// While the segment belongs to no heap (abandoned or cached): the bytes
    /// of its unused slots not known to be zero, counted in `decay::WARM`
    /// on its behalf ([`Segment::count_warm`]).
    warm_bytes: Cell<usize>,
    /// Next segment on the abandoned list (written before publication).
    abandoned_next: UnsafeCell<*mut Segment>,
    /// While in the segment cache with its memory not given back yet: when
    /// it is due for the reset (`os::now_ms`). Written before the cache's
    /// Release `put`, read after its Acquire `take`.
    cache_due_ms: Cell<u64>,
    /// Which 2 MiB halves of the mapping were advised `MADV_HUGEPAGE` (bit
    /// 0: the lower, bit 1: the upper): the advice belongs to the mapping,
    /// so it survives the segment's reuse from the cache.
    huge_halves: Cell<u8>,
    /// Secure builds, huge segments: the offset from the segment start of
    /// the guard page made `PROT_NONE` right after the block (its end
    /// rounded up to OS pages; a spare's: after its last block, where the
    /// next may end too), or 0 when there is none (guard pages off, a
    /// refused `mprotect`, a spare split off another segment short of that
    /// segment's guard page). Owner-only.
    #[cfg(feature = "secure")]
    huge_guard: Cell<usize>,
    /// Secure builds, huge segments: how far past its lowest aligned start
    /// the block was placed so that it ends on a 2 MiB boundary
    /// (`Segment::huge_block_offset`), or a page below a 4 MiB one, or
    /// right before a reused spare's guard page (`Segment::reuse_huge`);
    /// under `SEGMENT_SIZE`, not counted in the heap's page bytes.
    /// Owner-only.
    #[cfg(feature = "secure")]
    huge_lead: Cell<usize>,
    /// Page descriptors; only the first `page_count` are initialised.
    pages: [Page; MAX_PAGES],
}

// SAFETY: the only field written by threads other than the owner is the
// atomic `thread_id`; the `Cell` fields are owner-only (or touched by the
// thread that took the segment off the abandoned list, which then owns it
// exclusively); pages carry their own `Sync` argument.
unsafe impl Sync for Segment {}

impl Segment {
    /// The segment holding `p` (a block start handed out by this allocator).
    #[inline(always)]
    pub(crate) fn of(p: *const u8) -> *mut Segment {
        p.wrapping_byte_sub(1)
            .map_addr(|a| a & !SEGMENT_MASK)
            .cast_mut()
            .cast()
    }

    /// Page descriptor `index` of `segment`.
    ///
    /// # Safety
    /// `segment` is a live segment and `index < MAX_PAGES`.
    #[inline(always)]
    pub(crate) unsafe fn page(segment: *mut Segment, index: usize) -> *mut Page {
        // SAFETY: in bounds of the header (caller), no reference is created
        // to the possibly uninitialised rest of the array.
        unsafe {
            ptr::addr_of_mut!((*segment).pages)
                .cast::<Page>()
                .add(index)
        }
    }

    /// Hands the segment to thread `thread_id` (0: to no thread). Every
    /// change of a segment's owner goes through here or through
    /// [`Segment::init_header`]: secure builds first invalidate every
    /// thread's owner cache (`secure::owner_cache`), which lets a
    /// free skip the owner test only while no segment changed hands.
    #[inline]
    pub(crate) fn set_owner(&self, thread_id: usize) {
        #[cfg(feature = "secure")]
        crate::secure::owner_cache::invalidate();
        // Relaxed: a free only compares the owner with its own id, and only
        // the owner's thread stores that id; each caller says how the
        // hand-off itself is ordered.
        self.thread_id.store(thread_id, Ordering::Relaxed);
    }

    /// The page holding block `p` of `segment`.
    ///
    /// # Safety
    /// `p` is the start of a block of `segment`, or for a non-huge segment
    /// any address in its page area. (A huge segment's page shift only
    /// covers where its block can start, at most `SEGMENT_SIZE` in: an
    /// address deep inside a huge block maps past its one page.)
    #[inline(always)]
    pub(crate) unsafe fn page_of(segment: *mut Segment, p: *const u8) -> *mut Page {
        // SAFETY: `p` lies where the shifted offset is a valid page index
        // (caller).
        unsafe {
            let index = (p.addr() - segment.addr()) >> (*segment).page_shift;
            Segment::page(segment, index)
        }
    }

    /// The next segment on the abandoned list.
    ///
    /// # Safety
    /// `segment` is live and the caller owns it (took it off the list, or
    /// is about to publish it).
    #[inline]
    pub(crate) unsafe fn abandoned_next(segment: *mut Segment) -> *mut Segment {
        // SAFETY: owned (caller); a loom cell, so loom checks the hand-off.
        unsafe { (*segment).abandoned_next.with(|next| *next) }
    }

    /// Sets the next segment on the abandoned list.
    ///
    /// # Safety
    /// As [`Segment::abandoned_next`].
    #[inline]
    pub(crate) unsafe fn set_abandoned_next(segment: *mut Segment, next: *mut Segment) {
        // SAFETY: owned (caller).
        unsafe { (*segment).abandoned_next.with_mut(|slot| *slot = next) }
    }

    /// Index of `page` in its segment.
    ///
    /// # Safety
    /// `page` is a descriptor inside `segment`'s header.
    pub(crate) unsafe fn page_index(segment: *mut Segment, page: *const Page) -> usize {
        // SAFETY: both point into the same header (caller).
        let base = unsafe { Segment::page(segment, 0) };
        (page.addr() - base.addr()) / size_of::<Page>()
    }

    /// Maps and initialises a segment of `kind` (not huge) owned by `heap`
    /// on thread `thread_id`. A `dense` segment (its heap already filled
    /// one of this kind) is backed by transparent huge pages from the start
    /// where the option allows (both halves advised `MADV_HUGEPAGE` before
    /// the header's first write; see `halves.rs` for the rest). Returns
    /// `None` when the OS refuses.
    pub(crate) fn create(
        kind: PageKind,
        thread_id: usize,
        heap: *mut RawHeap,
        dense: bool,
    ) -> Option<NonNull<Segment>> {
        let (page_shift, page_count) = Segment::layout_of(kind)?;
        let base = map_below_limit(SEGMENT_MAP_SIZE, SEGMENT_SIZE, 0)?;
        #[cfg(feature = "secure")]
        let _ = secure_new_segment(base, SEGMENT_MAP_SIZE);
        // Advised before the header's first write, so its fault already
        // maps a huge page.
        let halves = if dense && options::huge_os_pages() {
            // SAFETY: the whole fresh mapping, ours and page-aligned.
            unsafe { os::advise_huge_pages(base.as_ptr(), SEGMENT_SIZE) };
            0b11
        } else {
            0
        };
        let segment = base.cast::<Segment>();
        // SAFETY: fresh, exclusively ours, large enough for the header.
        unsafe {
            Segment::init_header(
                segment.as_ptr(),
                kind,
                page_shift,
                page_count,
                SEGMENT_MAP_SIZE,
                SEGMENT_SIZE,
                thread_id,
                heap,
                true,
            );
            (*segment.as_ptr()).huge_halves.set(halves);
        };
        Some(segment)
    }

    /// Turns a cached empty segment (from [`SegmentCache`]) into a fresh one
    /// of `kind`.
    ///
    /// # Safety
    /// The caller exclusively owns `segment`, an empty non-huge segment taken
    /// from the cache: reset by [`Segment::reset_pages`], or still holding
    /// its memory ([`Segment::cache_dirty`]).
    ///
    /// [`SegmentCache`]: crate::segment_cache::SegmentCache
    pub(crate) unsafe fn reuse(
        segment: *mut Segment,
        kind: PageKind,
        thread_id: usize,
        heap: *mut RawHeap,
    ) -> Option<NonNull<Segment>> {
        let (page_shift, page_count) = Segment::layout_of(kind)?;
        // SAFETY: exclusively ours (caller); the header is rewritten in place.
        unsafe {
            // Cached with its memory (or its reset failed): the old layout's
            // dirty slots stop counting — exactly what `cache_dirty` counted
            // as warm (every slot of a cached segment is unused) —, and the
            // new layout's all count: its page areas tile the segment past
            // the header. One update of the counter, no walk of the slots
            // (a thread start takes a cached segment).
            let old_committed = (*segment).warm_bytes.get();
            Segment::uncount_warm(segment);
            let zero = (*segment).pages_zero.get();
            let halves = (*segment).huge_halves.get();
            Segment::init_header(
                segment,
                kind,
                page_shift,
                page_count,
                SEGMENT_MAP_SIZE,
                SEGMENT_SIZE,
                thread_id,
                heap,
                zero,
            );
            (*segment).huge_halves.set(halves);
            if !zero {
                let new_committed = SEGMENT_SIZE - HEADER_SIZE;
                if new_committed >= old_committed {
                    stats::COMMITTED.add(new_committed - old_committed);
                } else {
                    stats::COMMITTED.sub(old_committed - new_committed);
                }
            }
        }
        NonNull::new(segment)
    }

    /// The size of a page of a non-huge `kind` (for a huge kind: 0).
    pub(crate) fn page_size(kind: PageKind) -> usize {
        Segment::layout_of(kind).map_or(0, |(shift, _)| 1 << shift.min(SEGMENT_SHIFT))
    }

    /// Page shift and page count of a non-huge segment kind.
    fn layout_of(kind: PageKind) -> Option<(usize, usize)> {
        match kind {
            PageKind::Small => Some((SMALL_PAGE_SHIFT, SEGMENT_SIZE >> SMALL_PAGE_SHIFT)),
            PageKind::Medium => Some((MEDIUM_PAGE_SHIFT, SEGMENT_SIZE >> MEDIUM_PAGE_SHIFT)),
            PageKind::Large => Some((LARGE_PAGE_SHIFT, 1)),
            PageKind::Huge => None,
        }
    }

    /// The whole OS pages inside slot `page`'s area: what a reset gives back.
    ///
    /// # Safety
    /// `page` is a slot of the live `segment`.
    pub(crate) unsafe fn page_memory(segment: *mut Segment, page: *mut Page) -> (*mut u8, usize) {
        // SAFETY: forwarded from the caller.
        let (area, len) =
            unsafe { Segment::page_area(segment, Segment::page_index(segment, page)) };
        let end = (area.addr() + len) & !(OS_PAGE_SIZE - 1);
        let start = area.map_addr(|a| (a + OS_PAGE_SIZE - 1) & !(OS_PAGE_SIZE - 1));
        (start, end.saturating_sub(start.addr()))
    }

    /// The bytes a slot counts for in its heap's page bytes while in use
    /// (what a heap's limit bounds): a huge segment's block, or the slot's
    /// page memory.
    ///
    /// # Safety
    /// `page` is a slot of the live `segment`.
    pub(crate) unsafe fn page_bytes(segment: *mut Segment, page: *mut Page) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe {
            if (*segment).kind == PageKind::Huge {
                // (Secure: the guard page never holds a block, and the lead
                // before a block placed to end on a huge page is not the
                // block's.)
                (*segment).size - HEADER_SIZE - GUARD_SIZE - Segment::huge_lead(segment)
            } else {
                Segment::page_memory(segment, page).1
            }
        }
    }

    /// The bytes a slot counts for in `stats::COMMITTED` while its memory is
    /// not known to be zero: [`Segment::page_bytes`], but a huge segment's
    /// whole mapping (a reshaped spare's mapping holds more than its block,
    /// and the last huge page of any is faulted whole).
    ///
    /// # Safety
    /// `page` is a slot of the live `segment`.
    pub(crate) unsafe fn committed_len(segment: *mut Segment, page: *mut Page) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe {
            if (*segment).kind == PageKind::Huge {
                // The whole mapping: its last huge page is faulted whole.
                // (Secure: the guard page never holds memory, and the
                // mapping ends with it.)
                (*segment).map_size - HEADER_SIZE - GUARD_SIZE
            } else {
                Segment::page_memory(segment, page).1
            }
        }
    }

    /// A page is being set up in a slot: if its memory was known to be zero,
    /// it now counts as committed. Call before `Page::init`.
    ///
    /// # Safety
    /// `page` is an unused slot of the live `segment`, owned by the caller.
    pub(crate) unsafe fn note_page_committed(segment: *mut Segment, page: *mut Page) {
        // SAFETY: forwarded from the caller.
        unsafe {
            if (*page).memory_is_zero.get() {
                stats::COMMITTED.add(Segment::committed_len(segment, page));
            }
        }
    }

    /// Takes every slot whose memory is not known to be zero out of
    /// `stats::COMMITTED` (the segment goes away or its memory was reset).
    ///
    /// # Safety
    /// `segment` is live and owned by the caller.
    unsafe fn forget_committed(segment: *mut Segment) {
        // SAFETY: forwarded from the caller; indices below page_count.
        unsafe {
            for index in 0..(*segment).page_count {
                let page = Segment::page(segment, index);
                if !(*page).memory_is_zero.get() {
                    stats::COMMITTED.sub(Segment::committed_len(segment, page));
                }
            }
        }
    }

    /// Bytes in live blocks of the segment's pages (blocks freed by other
    /// threads and not yet collected still count).
    ///
    /// # Safety
    /// `segment` is a live non-huge segment whose slots the caller may read
    /// (its owner, or the holder of its heap's lock).
    pub(crate) unsafe fn live_bytes(segment: *mut Segment) -> usize {
        let mut live = 0;
        // SAFETY: forwarded from the caller; indices below page_count.
        unsafe {
            for index in 0..(*segment).page_count {
                let page = Segment::page(segment, index);
                if (*page).in_use.get() {
                    live += (*page).used.get() as usize * (*page).block_size.get();
                }
            }
        }
        live
    }

    /// Gives an unused slot's memory back to the OS (if it is not known to
    /// be zero already).
    ///
    /// # Safety
    /// `page` is an unused slot of `segment`, owned by the caller.
    pub(crate) unsafe fn reset_page(segment: *mut Segment, page: *mut Page) {
        // SAFETY: an unused slot of ours (caller): nothing lives in its area.
        unsafe {
            if (*page).memory_is_zero.get() {
                return;
            }
            let (start, len) = Segment::page_memory(segment, page);
            Segment::withdraw_huge_advice(segment, start, len);
            if os::reset(start, len) {
                (*page).memory_is_zero.set(true);
                stats::COMMITTED.sub(len);
            }
        }
    }

    /// An empty segment goes into the cache with its memory still there,
    /// to be given back when due (`cache_due_ms`) unless it is reused first.
    ///
    /// # Safety
    /// `segment` is live, empty, non-huge and owned by the caller.
    pub(crate) unsafe fn cache_dirty(segment: *mut Segment, due_ms: u64) {
        // SAFETY: owned by the caller.
        unsafe {
            (*segment).pages_zero.set(false);
            (*segment).cache_due_ms.set(due_ms);
            Segment::count_warm(segment);
        }
    }

    /// Counts the memory of the segment's unused, dirty slots in the
    /// process's warm budget (`decay::WARM`) while it belongs to no heap
    /// (abandoned or cached); replaces what it counted before.
    ///
    /// # Safety
    /// `segment` is live, non-huge, and exclusively owned by the caller.
    pub(crate) unsafe fn count_warm(segment: *mut Segment) {
        // SAFETY: owned by the caller; indices below page_count.
        unsafe {
            Segment::uncount_warm(segment);
            let mut warm = 0;
            for index in 0..(*segment).page_count {
                let page = Segment::page(segment, index);
                if !(*page).in_use.get() && !(*page).memory_is_zero.get() {
                    warm += Segment::page_memory(segment, page).1;
                }
            }
            (*segment).warm_bytes.set(warm);
            decay::add_warm(warm);
        }
    }

    /// Takes what [`Segment::count_warm`] counted out of the warm budget
    /// (the segment goes to a heap, is reset, or goes away).
    ///
    /// # Safety
    /// `segment` is live and exclusively owned by the caller.
    pub(crate) unsafe fn uncount_warm(segment: *mut Segment) {
        // SAFETY: owned by the caller.
        decay::WARM.sub(unsafe { (*segment).warm_bytes.replace(0) });
    }

    /// A cached segment whose memory is still there and due for its reset
    /// by `now_ms`: gives the memory back. Returns whether the segment is
    /// worth keeping cached (a pooled huge spare that is due is not: its
    /// memory is all it is).
    ///
    /// # Safety
    /// The caller took `segment` from the cache and owns it.
    pub(crate) unsafe fn reset_cached_if_due(segment: *mut Segment, now_ms: u64) -> bool {
        // SAFETY: owned by the caller.
        unsafe {
            let due = (*segment).cache_due_ms.get() <= now_ms;
            if (*segment).kind == PageKind::Huge {
                return !due;
            }
            if !(*segment).pages_zero.get() && due {
                Segment::reset_pages(segment);
            }
            true
        }
    }

    /// A cached non-huge segment that still holds its memory and is not due
    /// for its reset by `now_ms` (cached by [`Segment::cache_dirty`]).
    ///
    /// # Safety
    /// `segment` is live and owned by the caller.
    pub(crate) unsafe fn is_warm_cached(segment: *mut Segment, now_ms: u64) -> bool {
        // SAFETY: owned by the caller; header fields are cells.
        unsafe {
            (*segment).kind != PageKind::Huge
                && !(*segment).pages_zero.get()
                && (*segment).cache_due_ms.get() > now_ms
        }
    }

    /// Every page slot's memory is known to read as zeros.
    ///
    /// # Safety
    /// `segment` is live and owned by the caller.
    pub(crate) unsafe fn all_pages_zero(segment: *mut Segment) -> bool {
        // SAFETY: forwarded from the caller; indices below page_count.
        unsafe {
            (0..(*segment).page_count)
                .all(|index| (*Segment::page(segment, index)).memory_is_zero.get())
        }
    }

    /// Gives the memory of every page area of an empty segment back to the
    /// OS in one call (before the segment is cached).
    ///
    /// # Safety
    /// `segment` is an empty, non-huge segment owned by the caller.
    pub(crate) unsafe fn reset_pages(segment: *mut Segment) {
        // SAFETY: no page of the segment is in use (caller).
        unsafe {
            let start = segment.cast::<u8>().add(HEADER_SIZE);
            Segment::withdraw_huge_advice(segment, start, SEGMENT_SIZE - HEADER_SIZE);
            let zero = os::reset(start, SEGMENT_SIZE - HEADER_SIZE);
            if zero {
                Segment::forget_committed(segment);
                for index in 0..(*segment).page_count {
                    (*Segment::page(segment, index)).memory_is_zero.set(true);
                }
                Segment::uncount_warm(segment);
            }
            (*segment).pages_zero.set(zero);
        }
    }

    /// # Safety
    /// `segment` is fresh zeroed memory of at least `HEADER_SIZE` bytes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn init_header(
        segment: *mut Segment,
        kind: PageKind,
        page_shift: usize,
        page_count: usize,
        size: usize,
        map_align: usize,
        thread_id: usize,
        heap: *mut RawHeap,
        memory_is_zero: bool,
    ) {
        // A new owner for whatever segment was at this address before (see
        // `Segment::set_owner`).
        #[cfg(feature = "secure")]
        crate::secure::owner_cache::invalidate();
        // SAFETY: the memory is ours and writable (caller); fields are
        // written in place so no reference to the uninitialised header exists.
        unsafe {
            ptr::addr_of_mut!((*segment).thread_id).write(AtomicUsize::new(thread_id));
            ptr::addr_of_mut!((*segment).kind).write(kind);
            ptr::addr_of_mut!((*segment).page_shift).write(page_shift);
            ptr::addr_of_mut!((*segment).page_count).write(page_count);
            ptr::addr_of_mut!((*segment).size).write(size);
            ptr::addr_of_mut!((*segment).map_size).write(size);
            ptr::addr_of_mut!((*segment).map_align).write(map_align);
            ptr::addr_of_mut!((*segment).used_pages).write(Cell::new(0));
            ptr::addr_of_mut!((*segment).heap).write(Cell::new(heap));
            ptr::addr_of_mut!((*segment).all).write(Links::new());
            ptr::addr_of_mut!((*segment).with_free_slot).write(Links::new());
            ptr::addr_of_mut!((*segment).in_free_slot_list).write(Cell::new(false));
            ptr::addr_of_mut!((*segment).pages_zero).write(Cell::new(false));
            ptr::addr_of_mut!((*segment).pending_pages).write(Cell::new(0));
            ptr::addr_of_mut!((*segment).abandoned_live).write(Cell::new(0));
            ptr::addr_of_mut!((*segment).warm_bytes).write(Cell::new(0));
            ptr::addr_of_mut!((*segment).cache_due_ms).write(Cell::new(0));
            ptr::addr_of_mut!((*segment).huge_halves).write(Cell::new(0));
            #[cfg(feature = "secure")]
            {
                ptr::addr_of_mut!((*segment).huge_guard).write(Cell::new(0));
                ptr::addr_of_mut!((*segment).huge_lead).write(Cell::new(0));
            }
            ptr::addr_of_mut!((*segment).abandoned_next).write(UnsafeCell::new(ptr::null_mut()));
            for index in 0..page_count {
                let page = Page::new();
                page.memory_is_zero.set(memory_is_zero);
                Segment::page(segment, index).write(page);
            }
        }
    }

    /// Returns the segment's memory to the OS.
    ///
    /// # Safety
    /// The segment holds no live block, is on no list, and no thread can
    /// reach it any more.
    pub(crate) unsafe fn release(segment: *mut Segment) {
        // SAFETY: the caller guarantees nothing uses the segment; the
        // mapping parameters are the ones it was created with.
        unsafe {
            let page = Segment::page(segment, 0);
            if (*segment).kind == PageKind::Huge && (*page).in_use.get() {
                // Released with its block (an orphan's free, or `destroy`);
                // a freed block was uncounted when its page was freed.
                stats::HUGE_LIVE.sub((*page).block_size.get());
            }
            if !(*segment).pages_zero.get() {
                Segment::forget_committed(segment);
            }
            Segment::uncount_warm(segment);
            let size = (*segment).map_size;
            let align = (*segment).map_align;
            #[cfg(feature = "secure")]
            crate::secure::segment_map::remove(segment.addr());
            os::unmap(NonNull::new_unchecked(segment.cast()), size, align);
        }
    }

    /// The page area of slot `index`: its start and length.
    ///
    /// # Safety
    /// `segment` is live and `index < page_count`.
    pub(crate) unsafe fn page_area(segment: *mut Segment, index: usize) -> (*mut u8, usize) {
        // SAFETY: the computed range lies inside the segment mapping.
        unsafe {
            let shift = (*segment).page_shift.min(SEGMENT_SHIFT);
            let page_size = 1usize << shift;
            let start = index << shift;
            let begin = start.max(HEADER_SIZE);
            let end = (start + page_size).min((*segment).size - GUARD_SIZE);
            (segment.cast::<u8>().add(begin), end - begin)
        }
    }

    /// The segment has an unused page slot.
    ///
    /// # Safety
    /// `segment` is live; owner only.
    #[inline]
    pub(crate) unsafe fn has_free_slot(segment: *mut Segment) -> bool {
        // SAFETY: live segment (caller).
        unsafe { (*segment).used_pages.get() < (*segment).page_count }
    }

    /// Takes an unused page slot; the caller initialises the page.
    ///
    /// # Safety
    /// `segment` is live, owned by the caller, and has a free slot.
    pub(crate) unsafe fn claim_slot(segment: *mut Segment) -> *mut Page {
        // SAFETY: owner only (caller); indices are below page_count.
        unsafe {
            // Secure: one of the lowest unused slots, at random.
            #[cfg(feature = "secure")]
            if let Some(index) = Segment::random_low_slot(segment) {
                (*segment).used_pages.set((*segment).used_pages.get() + 1);
                Segment::advise_upper_half_if_dense(segment, index);
                return Segment::page(segment, index);
            }
            #[cfg(not(feature = "secure"))]
            for index in 0..(*segment).page_count {
                let page = Segment::page(segment, index);
                if !(*page).in_use.get() {
                    (*segment).used_pages.set((*segment).used_pages.get() + 1);
                    Segment::advise_upper_half_if_dense(segment, index);
                    return page;
                }
            }
        }
        crate::fatal::fatal("segment bookkeeping: no free page slot")
    }

    /// Secure builds: a random one of the [`SLOT_CANDIDATES`] lowest unused
    /// slots (fewer if the segment has fewer, or if fewer are left in the
    /// lower half while any is), so which page of a segment serves a size
    /// class is not predictable.
    ///
    /// Why not any unused slot: the plain build takes the lowest one, which
    /// is usually a slot just emptied, its memory still resident (its reset
    /// pending), and keeps the segment dense from its start, as the huge-page
    /// advice expects. A slot drawn from the whole segment was usually cold:
    /// a page fault per 4 KiB touched again, the warm slot given back
    /// instead, and RSS spread over both halves (xmalloc: 958 faults and
    /// 6.7 MiB peak against the plain build's 208 and 3.7 MiB; 4 candidates:
    /// 256 and 3.9 MiB).
    ///
    /// # Safety
    /// `segment` is live and owned by the caller.
    #[cfg(feature = "secure")]
    unsafe fn random_low_slot(segment: *mut Segment) -> Option<usize> {
        let mut candidates = [0usize; SLOT_CANDIDATES];
        let mut found = 0;
        // SAFETY: owner only (caller); indices are below page_count.
        unsafe {
            let count = (*segment).page_count;
            for index in 0..count {
                // Not past the middle while a lower slot is free: the lower
                // 2 MiB half fills first, as in the plain build, so the upper
                // half is advised huge pages only once the segment is dense
                // (`advise_upper_half_if_dense`), not 2 MiB made resident for
                // one early page.
                if found > 0 && index == count / 2 {
                    break;
                }
                if !(*Segment::page(segment, index)).in_use.get() {
                    candidates[found] = index;
                    found += 1;
                    if found == SLOT_CANDIDATES {
                        break;
                    }
                }
            }
        }
        match found {
            0 => None,
            1 => Some(candidates[0]),
            _ => Some(candidates[crate::secure::LocalRng::new().below(found)]),
        }
    }

    /// Gives a page slot back to its segment.
    ///
    /// # Safety
    /// `page` is an in-use page of `segment` with no live block; owner only.
    pub(crate) unsafe fn release_slot(segment: *mut Segment, page: *mut Page) {
        // SAFETY: owner only (caller).
        unsafe {
            (*page).in_use.set(false);
            // Secure: no pointer passes either block-boundary test of a
            // page not in use, the owner's (bounded by the extension) or
            // another thread's (by `live_blocks`): a free of one of its
            // blocks is a double free.
            #[cfg(feature = "secure")]
            {
                (*page).live_blocks.set(0);
                (*page).extent.set(0);
            }
            (*page).memory_is_zero.set(false);
            (*page).flags.set(0);
            (*page).free.set(ptr::null_mut());
            (*page).local_free.set(ptr::null_mut());
            (*segment).used_pages.set((*segment).used_pages.get() - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::PageKind;

    #[test]
    fn pointer_to_segment_and_page_is_a_mask_and_a_shift() {
        for (kind, pages) in [
            (PageKind::Small, 64),
            (PageKind::Medium, 8),
            (PageKind::Large, 1),
        ] {
            let segment = Segment::create(kind, 42, ptr::null_mut(), false)
                .expect("segment")
                .as_ptr();
            assert_eq!(segment.addr() % SEGMENT_SIZE, 0);
            // SAFETY: the segment is ours; indices are below its page count.
            unsafe {
                assert_eq!((*segment).page_count, pages);
                for index in 0..pages {
                    let (area, len) = Segment::page_area(segment, index);
                    assert!(area.addr() >= segment.addr() + HEADER_SIZE);
                    for p in [area, area.add(len / 2), area.add(len - 1)] {
                        assert_eq!(Segment::of(p), segment, "{kind:?} page {index}");
                        assert_eq!(Segment::page_of(segment, p), Segment::page(segment, index));
                    }
                }
                Segment::release(segment);
            }
        }
    }

    #[test]
    fn huge_blocks_are_aligned_and_find_their_header() {
        for (size, align) in [
            (5 << 20, 16),
            (100, 1 << 20),
            (100, 1 << 22),
            (3 << 20, 1 << 23),
            (10, 1 << 30),
        ] {
            let (segment, block) =
                Segment::create_huge(size, align, 42, ptr::null_mut(), 0).expect("huge");
            let segment = segment.as_ptr();
            assert_eq!(block.addr() % align, 0, "size {size} align {align}");
            assert_eq!(segment.addr() % SEGMENT_SIZE, 0);
            assert_eq!(Segment::of(block), segment, "size {size} align {align}");
            // SAFETY: the huge segment and its block are ours.
            unsafe {
                let page = Segment::page_of(segment, block);
                assert_eq!(page, Segment::page(segment, 0));
                assert!((*page).block_size.get() >= size);
                block.write_bytes(0x5A, size);
                Segment::release(segment);
            }
        }
    }

    /// Secure builds place a huge block to end on a 2 MiB boundary, its guard page right
    /// after it, so the block's last huge page is whole; its usable size and the page bytes
    /// its heap counts are those of a block placed right after the header.
    #[test]
    fn huge_blocks_end_on_a_huge_page_before_their_guard() {
        if !huge::END_ON_HUGE_PAGE || !options::huge_os_pages() {
            return;
        }
        for (size, align) in [
            (3 << 20, 16),
            ((5 << 20) + 100, 16),
            ((2 << 20) - 4096, 4096),
        ] {
            let (segment, block) =
                Segment::create_huge(size, align, 42, ptr::null_mut(), 0).expect("huge");
            let segment = segment.as_ptr();
            let len = size.next_multiple_of(OS_PAGE_SIZE);
            let offset = block.addr() - segment.addr();
            // SAFETY: the huge segment and its page are ours.
            unsafe {
                let page = Segment::page(segment, 0);
                assert_eq!((*page).block_size.get(), len, "size {size}");
                assert_eq!(
                    (offset + len) % HUGE_OS_PAGE,
                    0,
                    "size {size}: ends mid huge page"
                );
                assert!((HEADER_SIZE..HEADER_SIZE + HUGE_OS_PAGE).contains(&offset));
                assert_eq!((*segment).size, offset + len + GUARD_SIZE);
                assert_eq!(Segment::page_bytes(segment, page), len, "size {size}");
                assert_eq!(Segment::huge_footprint(size, align), Some(len));
                assert_eq!(Segment::of(block), segment);
                block.write_bytes(0x5A, len);
                Segment::release(segment);
            }
        }
    }

    #[test]
    fn absurd_huge_requests_fail_cleanly() {
        assert!(Segment::create_huge(usize::MAX / 2, 16, 42, ptr::null_mut(), 0).is_none());
        assert!(Segment::create_huge(16, 1 << 60, 42, ptr::null_mut(), 0).is_none());
    }
}
