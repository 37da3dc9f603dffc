//! Huge segments: one block each, mapped for it, and the spares a freed
//! one leaves — reused for a smaller block with the rest split off, gathered
//! with others into a larger one by moving their pages, or pooled for any
//! heap (design §6, "Huge blocks").

use super::*;

/// A spare huge segment reused for a block this much (or a quarter of the
/// spare) smaller gives the difference back to the OS.
const TRIM_MIN: usize = 1 << 20;

/// The unit in which a reused spare of `total` bytes is trimmed
/// (`reuse_huge`): a huge page where the spare is advised for them, since
/// trimming inside one would split it, else an OS page.
fn trim_unit(total: usize) -> usize {
    if total >= HUGE_OS_PAGE && options::huge_os_pages() {
        HUGE_OS_PAGE
    } else {
        OS_PAGE_SIZE
    }
}

/// Whether spare huge segments are reshaped rather than given back: split
/// (`Segment::split_huge_tail`) and gathered into one by moving their pages
/// (`Segment::gather_huge`). Needs real mappings (not the loom and Miri
/// test backend). Secure builds too: a block in a reused spare ends right
/// before the spare's guard page where it can (no `mprotect`), else the
/// guard page moves to its end; a spare split off keeps a guard page that
/// lies in it; a spare's guard page is made read-write again before its
/// pages move.
pub(crate) const RESHAPE_HUGE_SPARES: bool = cfg!(not(any(loom, miri)));

/// Whether a huge block backed by huge pages is placed to end on a 2 MiB
/// boundary (`Segment::huge_block_offset`): with a guard page right after
/// the block (secure builds), a block ending inside a 2 MiB page would
/// split that page's mapping, and its last part would be faulted 4 KiB at a
/// time. Without guard pages the mapping is rounded up to whole huge pages
/// instead (`HugeLayout::map_size`). (Reused and gathered blocks whose end
/// would be a 4 MiB boundary end a page below it instead, when the huge
/// page the guard page then splits is resident: `reuse_huge`.)
pub(super) const END_ON_HUGE_PAGE: bool = GUARD_SIZE != 0;

/// Where a huge block goes in its segment, and how that segment is mapped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HugeLayout {
    /// The block's offset from the segment start.
    block_offset: usize,
    /// How far past its lowest aligned start the block was placed to end on
    /// a 2 MiB boundary (0 unless [`END_ON_HUGE_PAGE`]).
    lead: usize,
    /// The mapping's alignment: `SEGMENT_SIZE`, or the block's alignment
    /// when larger.
    pub(crate) map_align: usize,
    /// What must be aligned is the mapping plus this.
    map_offset: usize,
    /// Header (and lead), block in whole OS pages, and guard: the
    /// segment's `size`.
    total: usize,
    /// `total`, rounded to a huge page when backed by huge pages.
    pub(crate) map_size: usize,
    /// Advised for transparent huge pages.
    huge_pages: bool,
    /// Secure builds: the block's alignment (at least an OS page).
    #[cfg(all(feature = "secure", not(any(loom, miri))))]
    align: usize,
}

impl HugeLayout {
    /// The layout of a huge segment for a block of `size` bytes aligned to
    /// `align`; `None` if it cannot be mapped.
    pub(crate) fn of(size: usize, align: usize) -> Option<HugeLayout> {
        if size > HUGE_SIZE_MAX || align > HUGE_SIZE_MAX {
            return None;
        }
        let align = align.max(OS_PAGE_SIZE);
        // Where the block goes, and how the mapping must be aligned so that
        // (segment + block_offset) is `align`-aligned and the segment itself
        // is SEGMENT_SIZE-aligned.
        let (block_offset, lead, map_align, map_offset) = if align <= SEGMENT_SIZE {
            let (offset, lead) = Segment::huge_block_offset(size, align)?;
            (offset, lead, SEGMENT_SIZE, 0)
        } else {
            // The block sits exactly one segment size in: (block − 1) still
            // masks to the header.
            (SEGMENT_SIZE, 0, align, SEGMENT_SIZE)
        };
        let total = Segment::huge_total(block_offset, size)?;
        let huge_pages = total >= HUGE_OS_PAGE && options::huge_os_pages();
        // Backed by huge pages, the mapping ends on a huge page boundary, so
        // the block's last huge page is a huge page too rather than 4 KiB
        // faults. The slack past `total` is never handed out or counted;
        // it becomes resident only with that last huge page. (Secure: the
        // block itself ends on a huge page boundary where its alignment
        // allows, and the slack after its guard page is never touched; the
        // mapping is still whole huge pages, so that spares moved side by
        // side into one segment keep their huge pages 2 MiB-aligned.)
        let map_size = if huge_pages {
            checked_align_up(total, HUGE_OS_PAGE)?
        } else {
            total
        };
        Some(HugeLayout {
            block_offset,
            lead,
            map_align,
            map_offset,
            total,
            map_size,
            huge_pages,
            #[cfg(all(feature = "secure", not(any(loom, miri))))]
            align,
        })
    }

    /// Secure builds: this layout in a gathered segment at `base` (its
    /// spares moved in), with the block one OS page lower when it ends on
    /// a 4 MiB boundary and the huge page below that boundary is resident
    /// (`os::all_resident`): its guard page is then the last page before
    /// the boundary, and what lies past the boundary splits off as a spare
    /// (`split_huge_tail` at the layout's `map_size`) rather than staying
    /// with the block, as for a reused spare (`huge_offset_before_boundary`).
    ///
    /// # Safety
    /// `[base, base + self.map_size)` is a mapping of ours, read-write,
    /// that nothing uses.
    #[cfg(all(feature = "secure", not(any(loom, miri))))]
    unsafe fn below_boundary_in(self, base: NonNull<u8>) -> HugeLayout {
        let end = self.total - GUARD_SIZE;
        let first = self.block_offset - self.lead;
        let Some(offset) = Segment::huge_offset_before_boundary(
            end - self.block_offset,
            self.align,
            self.block_offset,
            if self.huge_pages {
                HUGE_OS_PAGE
            } else {
                OS_PAGE_SIZE
            },
        ) else {
            return self;
        };
        if offset < first {
            return self;
        }
        let from = end - HUGE_OS_PAGE;
        // SAFETY: the huge page below the block's end lies in the mapping
        // (caller), which holds the block.
        let resident =
            unsafe { os::all_resident(base.as_ptr().add(from), HUGE_OS_PAGE - GUARD_SIZE) };
        if !resident {
            return self;
        }
        HugeLayout {
            block_offset: offset,
            lead: offset - first,
            total: self.total - GUARD_SIZE,
            map_size: end,
            ..self
        }
    }
}

impl Segment {
    /// A spare huge segment (its page unused, its memory dirty) leaves its
    /// heap for the process-wide pool: it belongs to no heap or thread,
    /// counts in the warm budget, and is due for unmapping at `due_ms`.
    ///
    /// # Safety
    /// The caller owns the spare: huge, its page unused, on no list or
    /// queue, unreachable by any other thread.
    pub(crate) unsafe fn pool_huge(segment: *mut Segment, due_ms: u64) {
        // SAFETY: owned by the caller.
        unsafe {
            let header = &*segment;
            header.heap.set(ptr::null_mut());
            // Relaxed: no block of the segment is live, so no free reads it;
            // the pool's Release put publishes it to the next owner.
            header.set_owner(0);
            header.cache_due_ms.set(due_ms);
            Segment::uncount_warm(segment);
            let warm = Segment::committed_len(segment, Segment::page(segment, 0));
            header.warm_bytes.set(warm);
            decay::add_warm(warm);
        }
    }

    /// A pooled huge spare joins heap `heap` of thread `thread_id` (which
    /// counts it in the warm budget its own way).
    ///
    /// # Safety
    /// The caller took the spare from the pool and owns it.
    pub(crate) unsafe fn unpool_huge(segment: *mut Segment, heap: *mut RawHeap, thread_id: usize) {
        // SAFETY: owned by the caller.
        unsafe {
            Segment::uncount_warm(segment);
            (*segment).heap.set(heap);
            // Relaxed: as in `pool_huge`; the page is unused, no free reads it.
            (*segment).set_owner(thread_id);
        }
    }

    /// Maps a huge segment whose single block of at least `size` bytes is
    /// aligned to `align`, and initialises its page for `heap` (queue index
    /// `bin`). Returns the segment and the block.
    pub(crate) fn create_huge(
        size: usize,
        align: usize,
        thread_id: usize,
        heap: *mut RawHeap,
        bin: usize,
    ) -> Option<(NonNull<Segment>, *mut u8)> {
        let layout = HugeLayout::of(size, align)?;
        let base = map_below_limit(layout.map_size, layout.map_align, layout.map_offset)?;
        // SAFETY: a fresh mapping of ours of `layout.map_size` bytes.
        Some(unsafe {
            Segment::init_huge_segment(base, layout.map_size, layout, thread_id, heap, bin)
        })
    }

    /// Builds a huge segment for a block of `layout` out of spare huge
    /// segments: maps `map_size` bytes (at least `layout.map_size` and the
    /// spares' mappings together), moves each spare's pages into it side by
    /// side, in the order given (`os::move_pages`: page tables move, the
    /// memory is neither copied nor faulted again), and splits the memory
    /// past what the block needs off into a spare (`split_huge_tail`). A
    /// spare that cannot move is unmapped, its part left fresh. Returns the
    /// segment, its block (whose memory is not zero) and the new spare or
    /// null; `None` when the OS refuses the mapping (the spares are then
    /// unmapped: their memory was free).
    ///
    /// # Safety
    /// The caller owns every spare: huge, no page in use, on no list and no
    /// queue, unreachable by any other thread; `layout.map_align` is
    /// `SEGMENT_SIZE` and `map_size` is at least the spares' `map_size`s
    /// together and at least `layout.map_size`. [`RESHAPE_HUGE_SPARES`] holds.
    pub(crate) unsafe fn gather_huge(
        spares: &[*mut Segment],
        map_size: usize,
        layout: HugeLayout,
        thread_id: usize,
        heap: *mut RawHeap,
        bin: usize,
    ) -> Option<(NonNull<Segment>, *mut u8, *mut Segment)> {
        let dest = map_below_limit(map_size, SEGMENT_SIZE, 0);
        let mut offset = 0;
        let mut whole = dest.is_some();
        for &spare in spares {
            // SAFETY: exclusively ours (caller); read before it moves.
            let (len, align) = unsafe { ((*spare).map_size, (*spare).map_align) };
            // SAFETY: as above: its accounting leaves with it.
            unsafe {
                if !(*spare).pages_zero.get() {
                    Segment::forget_committed(spare);
                }
                Segment::uncount_warm(spare);
            }
            // Secure: the spare's pages move with their protection, so its
            // guard page must be read-write before they do (else it would
            // sit inside the new block); one that stays `PROT_NONE` keeps
            // its spare from moving. The spare leaves the segment map,
            // moved or unmapped.
            #[cfg(feature = "secure")]
            // SAFETY: the spare is ours alone, mapped, unused (caller).
            let movable = unsafe {
                crate::secure::segment_map::remove(spare.addr());
                Segment::lift_huge_guard(spare)
            };
            #[cfg(not(feature = "secure"))]
            let movable = true;
            let moved = match dest {
                // SAFETY: the spare's whole mapping, unused, into the part of
                // our fresh mapping that nothing else is moved to.
                Some(dest) if whole && movable => unsafe {
                    os::move_pages(spare.cast(), len, dest.as_ptr().add(offset))
                },
                _ => os::Moved::No,
            };
            match moved {
                os::Moved::Yes => stats::MOVED_TOTAL.add(len),
                os::Moved::No => {
                    // SAFETY: still the spare's own mapping, which nothing uses.
                    unsafe { os::unmap(NonNull::new_unchecked(spare.cast()), len, align) }
                }
                os::Moved::Broken => {
                    // SAFETY: as above.
                    unsafe { os::unmap(NonNull::new_unchecked(spare.cast()), len, align) };
                    whole = false;
                }
            }
            offset += len;
        }
        let dest = dest?;
        if !whole {
            // SAFETY: our mapping, holding nothing anyone uses.
            unsafe { os::unmap(dest, map_size, SEGMENT_SIZE) };
            return None;
        }
        // Secure: the block a page lower where that keeps the next 4 MiB
        // out of its segment.
        #[cfg(all(feature = "secure", not(any(loom, miri))))]
        // SAFETY: our mapping, at least `layout.map_size` bytes (caller),
        // read-write (the guard pages of the spares were lifted), unused.
        let layout = unsafe { layout.below_boundary_in(dest) };
        // SAFETY: our mapping of `map_size` bytes, holding nothing anyone
        // uses; the block's memory is not zero, which `init_huge` records.
        let (segment, block) =
            unsafe { Segment::init_huge_segment(dest, map_size, layout, thread_id, heap, bin) };
        // SAFETY: our new segment; the block and its guard page end within
        // `layout.map_size`, and what lies past it is moved memory nobody
        // uses, read-write (what the split leaves stays with the block,
        // counted in its committed length).
        let tail = unsafe { Segment::split_huge_tail(segment.as_ptr(), layout.map_size) };
        Some((segment, block, tail))
    }

    /// Cuts the memory of huge segment `segment` from the first
    /// `SEGMENT_SIZE` boundary at or past `keep` (where its block ends, or
    /// later) off into a spare huge segment of its own, when that leaves at
    /// least a huge page. Returns the new spare (unused page, same owner and
    /// heap, on no list; the two are separate mappings from then on), or
    /// null with nothing changed.
    ///
    /// Secure builds: a guard page of the segment past the cut goes with
    /// the new spare as its own guard page when it lies past the spare's
    /// header (a block of the spare may end right before it,
    /// `huge_offset_at_guard`); one inside that header is made read-write
    /// again first. (Either way the segment is left without one: its block
    /// ends before `keep`, and the caller places its guard page.)
    ///
    /// # Safety
    /// The caller owns `segment`, mapped at `SEGMENT_SIZE`; nothing uses
    /// its memory past `keep`, which is read-write but (secure) for the
    /// segment's guard page; [`RESHAPE_HUGE_SPARES`] holds.
    pub(crate) unsafe fn split_huge_tail(segment: *mut Segment, keep: usize) -> *mut Segment {
        // SAFETY: ours (caller).
        let header = unsafe { &mut *segment };
        let map_size = header.map_size;
        let cut = checked_align_up(keep, SEGMENT_SIZE).filter(|&cut| {
            cut.checked_add(HUGE_OS_PAGE)
                .is_some_and(|end| end <= map_size)
        });
        let Some(cut) = cut else {
            return ptr::null_mut();
        };
        let tail_len = map_size - cut;
        // Secure: the segment's guard page past the cut, as the tail's (its
        // offset there), or 0.
        #[cfg(feature = "secure")]
        let tail_guard = match header.huge_guard.get() {
            guard if guard >= cut + HEADER_SIZE => {
                header.huge_guard.set(0);
                guard - cut
            }
            guard if guard >= cut => {
                // SAFETY: a live huge segment the caller owns exclusively.
                if !unsafe { Segment::lift_huge_guard(segment) } {
                    // Our own page, whose protection only we changed:
                    // lifting it merges mappings and cannot need more.
                    crate::fatal::fatal("a huge spare's guard page cannot be made writable again");
                }
                0
            }
            _ => 0,
        };
        // Relaxed: the owner reads the id it stored itself; pairs with nothing.
        let thread_id = header.thread_id.load(Ordering::Relaxed);
        // SAFETY: our segment's page (caller); its committed length changes
        // with the mapping, so it is counted again.
        unsafe {
            let page = Segment::page(segment, 0);
            let counted = !(*page).memory_is_zero.get();
            if counted {
                stats::COMMITTED.sub(Segment::committed_len(segment, page));
            }
            header.map_size = cut;
            header.size = header.size.min(cut);
            if counted {
                stats::COMMITTED.add(Segment::committed_len(segment, page));
            }
        }
        // SAFETY: the part past `cut`: SEGMENT_SIZE-aligned memory of ours,
        // unused, at least a huge page (above, and caller), read-write but
        // for a guard page past its header (above), now a mapping of its
        // own (secure: in the segment map; it holds no block, so it needs
        // no guard page, but keeps the one it has).
        unsafe {
            let tail = segment.cast::<u8>().add(cut).cast::<Segment>();
            #[cfg(feature = "secure")]
            crate::secure::segment_map::insert(tail.addr());
            Segment::init_header(
                tail,
                PageKind::Huge,
                HUGE_PAGE_SHIFT,
                1,
                tail_len,
                SEGMENT_SIZE,
                thread_id,
                header.heap.get(),
                false,
            );
            #[cfg(feature = "secure")]
            (*tail).huge_guard.set(tail_guard);
            stats::COMMITTED.add(Segment::committed_len(tail, Segment::page(tail, 0)));
            tail
        }
    }

    /// Sets up a huge segment in the mapping `[base, base + map_size)`:
    /// its guard and huge-page advice, header and page, for a block of
    /// `layout`. Returns the segment and the block.
    ///
    /// # Safety
    /// The mapping is ours, `map_size ≥ layout.map_size` bytes, aligned as
    /// `layout` asks, and nothing else uses it.
    unsafe fn init_huge_segment(
        base: NonNull<u8>,
        map_size: usize,
        layout: HugeLayout,
        thread_id: usize,
        heap: *mut RawHeap,
        bin: usize,
    ) -> (NonNull<Segment>, *mut u8) {
        let HugeLayout {
            block_offset,
            total,
            ..
        } = layout;
        // The guard page right after the block: `total` ends with it.
        #[cfg(feature = "secure")]
        let guarded = secure_new_segment(base, total);
        if layout.huge_pages {
            // SAFETY: our mapping (caller).
            unsafe { os::advise_huge_pages(base.as_ptr(), map_size) };
        }
        let segment = base.cast::<Segment>();
        // SAFETY: exclusively ours (caller), large enough for header and block.
        unsafe {
            Segment::init_header(
                segment.as_ptr(),
                PageKind::Huge,
                HUGE_PAGE_SHIFT,
                1,
                total,
                layout.map_align,
                thread_id,
                heap,
                true,
            );
            (*segment.as_ptr()).map_size = map_size;
            #[cfg(feature = "secure")]
            {
                let header = &*segment.as_ptr();
                header
                    .huge_guard
                    .set(if guarded { total - GUARD_SIZE } else { 0 });
                header.huge_lead.set(layout.lead);
            }
            #[cfg(not(feature = "secure"))]
            let _ = layout.lead;
            let block = base.as_ptr().add(block_offset);
            let page = Segment::page(segment.as_ptr(), 0);
            Segment::note_page_committed(segment.as_ptr(), page);
            (*page).init_huge(heap, bin, block, total - block_offset - GUARD_SIZE);
            stats::HUGE_LIVE.add(total - block_offset - GUARD_SIZE);
            (*segment.as_ptr()).used_pages.set(1);
            (segment, block)
        }
    }

    /// Where a huge block of `size` bytes aligned to `align` (at most
    /// `SEGMENT_SIZE`) starts in a huge segment mapped at `SEGMENT_SIZE`
    /// alignment, and its lead: how far past the lowest aligned start after
    /// the header it was placed. With [`END_ON_HUGE_PAGE`] and huge pages
    /// on, a block that reaches the first 2 MiB boundary is moved up so that
    /// its end, rounded up to OS pages, falls on a 2 MiB boundary (as close
    /// as its alignment allows): the guard page after it then splits no
    /// huge page of the block. It still starts within the first
    /// `SEGMENT_SIZE` bytes (the lead is under 2 MiB), so the mask of
    /// `Segment::of` finds the header. Fresh blocks, gathered ones, reused
    /// spares and the checks before them all take their place from here.
    fn huge_block_offset(size: usize, align: usize) -> Option<(usize, usize)> {
        let align = align.max(OS_PAGE_SIZE);
        let first = checked_align_up(HEADER_SIZE, align)?;
        if !END_ON_HUGE_PAGE || !options::huge_os_pages() {
            return Some((first, 0));
        }
        let len = checked_align_up(size, OS_PAGE_SIZE)?;
        let end = first.checked_add(len)?;
        if end < HUGE_OS_PAGE {
            return Some((first, 0));
        }
        // At least `first` (the end rounded up, less `len`, is at least
        // `first`, a multiple of `align`), under `first + 2 MiB`.
        let offset = (checked_align_up(end, HUGE_OS_PAGE)? - len) & !(align - 1);
        Some((offset, offset - first))
    }

    /// The lead of huge segment `segment`'s block (see
    /// `Segment::huge_block_offset`): 0 but in secure builds.
    ///
    /// # Safety
    /// `segment` is a live segment.
    #[inline]
    pub(super) unsafe fn huge_lead(segment: *mut Segment) -> usize {
        #[cfg(feature = "secure")]
        // SAFETY: a live segment (caller).
        return unsafe { (*segment).huge_lead.get() };
        #[cfg(not(feature = "secure"))]
        {
            let _ = segment;
            0
        }
    }

    /// The bytes a huge block of `size` bytes aligned to `align` counts for
    /// in its heap's page bytes (`page_bytes` of its segment), or `None`
    /// if it cannot be mapped: its OS pages and the padding its alignment
    /// needs after the header, not the lead (`huge_block_offset`).
    pub(crate) fn huge_footprint(size: usize, align: usize) -> Option<usize> {
        let (block_offset, lead) = if align <= SEGMENT_SIZE {
            Segment::huge_block_offset(size, align)?
        } else {
            (SEGMENT_SIZE, 0)
        };
        let total = Segment::huge_total(block_offset, size)?;
        Some(total - HEADER_SIZE - GUARD_SIZE - lead)
    }

    /// The mapping size of a huge segment whose block of `size` bytes starts
    /// at `block_offset`: whole OS pages, and the guard.
    fn huge_total(block_offset: usize, size: usize) -> Option<usize> {
        checked_align_up(block_offset.checked_add(size)?, OS_PAGE_SIZE)?.checked_add(GUARD_SIZE)
    }

    /// Whether the huge segment (a spare) can hold a block of `size` bytes
    /// aligned to `align`.
    ///
    /// # Safety
    /// `segment` is a live huge segment.
    pub(crate) unsafe fn huge_fits(segment: *mut Segment, size: usize, align: usize) -> bool {
        // SAFETY: a live segment (caller).
        let (total, map_size, map_align) =
            unsafe { ((*segment).size, (*segment).map_size, (*segment).map_align) };
        // Reshaped, a spare offers its whole mapping; otherwise its old
        // block's. The block, and (secure) its guard page, must fit.
        let limit = if RESHAPE_HUGE_SPARES { map_size } else { total };
        // Secure: where `reuse_huge` would place it (`huge_spare_offset`).
        #[cfg(all(feature = "secure", not(any(loom, miri))))]
        if align <= SEGMENT_SIZE && map_align == SEGMENT_SIZE {
            return Segment::huge_block_offset(size, align)
                // SAFETY: a live huge segment (caller): its header is
                // mapped and its guard offset only changes under its owner.
                .map(|(offset, lead)| unsafe {
                    Segment::huge_spare_offset(segment, size, align, offset, lead).0
                })
                .and_then(|offset| Segment::huge_total(offset, size))
                .is_some_and(|end| end <= limit);
        }
        align <= SEGMENT_SIZE
            && map_align == SEGMENT_SIZE
            && Segment::huge_block_offset(size, align)
                .and_then(|(offset, _)| Segment::huge_total(offset, size))
                .is_some_and(|end| end <= limit)
    }

    /// Secure builds: whether spare `segment` would take a block of `size`
    /// bytes aligned to `align` right before its guard page, which then
    /// stays where it is (`huge_offset_at_guard`): a reuse without any
    /// `mprotect`, which `RawHeap::best_huge_spare` prefers.
    ///
    /// # Safety
    /// `segment` is a live huge segment.
    #[cfg(all(feature = "secure", not(any(loom, miri))))]
    pub(crate) unsafe fn huge_keeps_guard(
        segment: *mut Segment,
        size: usize,
        align: usize,
    ) -> bool {
        let Some((offset, _)) = Segment::huge_block_offset(size, align) else {
            return false;
        };
        // SAFETY: a live huge segment (caller): its header is mapped.
        let unit = trim_unit(unsafe { (*segment).size });
        // SAFETY: a live huge segment (caller), which is all that
        // `huge_offset_at_guard` reads (its header's guard offset).
        unsafe { Segment::huge_offset_at_guard(segment, size, align, offset, unit) }.is_some()
    }

    /// Secure builds: where a block of `size` bytes aligned to `align`
    /// (usually at `offset`, with `lead`: `huge_block_offset`) goes in spare
    /// `segment`, its lead there, and whether its guard page splits its
    /// last huge page: right before the spare's guard page where it can end
    /// there (`huge_offset_at_guard`: no `mprotect`), else a page below a
    /// usual end on a 4 MiB boundary (`huge_offset_before_boundary`: the
    /// guard page splits that huge page), else as usual. `huge_fits` checks
    /// this place (or, `huge_reuse_offset`, the usual one when it fits too).
    ///
    /// # Safety
    /// `segment` is a live huge segment.
    #[cfg(all(feature = "secure", not(any(loom, miri))))]
    unsafe fn huge_spare_offset(
        segment: *mut Segment,
        size: usize,
        align: usize,
        offset: usize,
        lead: usize,
    ) -> (usize, usize, bool) {
        // SAFETY: a live huge segment (caller): its header is mapped.
        let total = unsafe { (*segment).size };
        let unit = trim_unit(total);
        let first = offset - lead;
        // SAFETY: as the caller requires of `huge_offset_at_guard`: a live
        // huge segment.
        let at_guard = unsafe { Segment::huge_offset_at_guard(segment, size, align, offset, unit) };
        if let Some(at) = at_guard {
            return (at, at - first, false);
        }
        match Segment::huge_offset_before_boundary(size, align, offset, unit) {
            Some(at) => (at, at - first, true),
            None => (offset, lead, false),
        }
    }

    /// Secure builds: where `reuse_huge` puts a block of `size` bytes
    /// aligned to `align` in spare `segment` (usually at `offset`, with
    /// `lead`), its lead there, and whether the huge page its guard page
    /// splits must be faulted in first: as `huge_spare_offset` says, but a
    /// block ending a page below a 4 MiB boundary, whose last huge page the
    /// guard page splits, goes there only when that huge page is resident
    /// (`os::all_resident`, one `mincore`), or when the usual place does not
    /// fit (then it is faulted in first: `place_huge_guard`). Otherwise
    /// the touches of its untouched part would fault 4 KiB at a time.
    ///
    /// # Safety
    /// `segment` is a live huge segment, ours, and `huge_fits(segment,
    /// size, align)` holds.
    #[cfg(all(feature = "secure", not(any(loom, miri))))]
    unsafe fn huge_reuse_offset(
        segment: *mut Segment,
        size: usize,
        align: usize,
        offset: usize,
        lead: usize,
    ) -> (usize, usize, bool) {
        // SAFETY: a live huge segment (caller), as `huge_spare_offset` needs.
        let placed = unsafe { Segment::huge_spare_offset(segment, size, align, offset, lead) };
        let (at, _, splits) = placed;
        if !splits {
            return placed;
        }
        // The block ends a page below a 4 MiB boundary (so `end` does not
        // overflow: the spare fits it).
        let end = at + size.next_multiple_of(OS_PAGE_SIZE);
        let from = end & !(HUGE_OS_PAGE - 1);
        // SAFETY: the block's last huge page up to its end lies inside the
        // spare's mapping, which fits the block (caller).
        if unsafe { os::all_resident(segment.cast::<u8>().add(from), end - from) } {
            return (placed.0, placed.1, false);
        }
        // SAFETY: a live huge segment (caller): its header is mapped.
        let map_size = unsafe { (*segment).map_size };
        if Segment::huge_total(offset, size).is_some_and(|total| total <= map_size) {
            (offset, lead, false)
        } else {
            placed
        }
    }

    /// Secure builds: makes huge segment `segment`'s guard page (if it has
    /// one) read-write again, and records that it has none. Returns whether
    /// the segment is now read-write throughout (false: the OS refused, and
    /// the guard page stays).
    ///
    /// # Safety
    /// The caller owns `segment`, a live huge segment.
    #[cfg(feature = "secure")]
    unsafe fn lift_huge_guard(segment: *mut Segment) -> bool {
        // SAFETY: ours (caller).
        let header = unsafe { &*segment };
        let guard = header.huge_guard.get();
        if guard == 0 {
            return true;
        }
        #[cfg(not(any(loom, miri)))]
        // SAFETY: the guard page, an OS page inside the segment's mapping:
        // `huge_guard` is only set right after a block that fits the
        // mapping, and the mapping only shrinks (`split_huge_tail`) past
        // the guard.
        if !unsafe { os::protect_read_write(segment.cast::<u8>().add(guard), GUARD_SIZE) } {
            return false;
        }
        header.huge_guard.set(0);
        true
    }

    /// Secure builds: moves huge segment `segment`'s guard page to offset
    /// `at` (right after its new block): the old one is made read-write
    /// again, the new one `PROT_NONE` when guard pages are on. With
    /// `fault_in`, the memory of the huge page the new guard page lands in,
    /// up to it, is faulted in first (`os::populate_write`): the block ends
    /// there, and once the guard page splits that huge page's mapping, what
    /// was not resident would be faulted 4 KiB at a time.
    ///
    /// # Safety
    /// The caller owns `segment`, a live huge segment whose page is unused;
    /// `[at, at + GUARD_SIZE)` lies inside its mapping and holds no block;
    /// with `fault_in`, neither does the rest of that huge page below `at`
    /// hold one yet.
    #[cfg(all(feature = "secure", not(any(loom, miri))))]
    unsafe fn place_huge_guard(segment: *mut Segment, at: usize, fault_in: bool) {
        // SAFETY: ours (caller).
        let header = unsafe { &*segment };
        if header.huge_guard.get() == at {
            return;
        }
        // SAFETY: ours (caller).
        if !unsafe { Segment::lift_huge_guard(segment) } {
            // Our own page, whose protection only we changed: lifting it
            // merges mappings and cannot need more of them.
            crate::fatal::fatal("a huge spare's guard page cannot be made writable again");
        }
        if !options::secure_guard_pages() {
            return;
        }
        let from = at & !(HUGE_OS_PAGE - 1);
        if fault_in && from < at {
            // SAFETY: read-write memory of the mapping (its only guard page
            // was lifted above), below `at` in the same huge page, which
            // holds no block yet (caller). A refusal costs 4 KiB faults only.
            unsafe { os::populate_write(segment.cast::<u8>().add(from), at - from) };
        }
        // SAFETY: an OS page inside the mapping holding no block (caller).
        if unsafe { os::protect_none(segment.cast::<u8>().add(at), GUARD_SIZE) } {
            header.huge_guard.set(at);
        }
    }

    /// Secure builds: where a block of `size` bytes aligned to `align`
    /// starts in spare `segment` if it ends right before the spare's guard
    /// page, which then stays where it is (no `mprotect` to lift it and
    /// place another). `None` when the spare has no guard page, when the
    /// block would not start on its alignment between the header and
    /// `SEGMENT_SIZE` (the mask of `Segment::of` must find the header), or
    /// when the guard page would split the block's last huge page where
    /// `offset` (the usual placement, `huge_block_offset`) splits none
    /// (`unit`, the trimming unit of `reuse_huge`, is a huge page).
    ///
    /// The block may then keep more of the spare than the usual placement
    /// (up to the next 4 MiB boundary past the guard page, where the rest
    /// splits off): measured on `malloc-large`, that memory is resident
    /// already and peak RSS did not move (docs/security.md, "Huge blocks").
    ///
    /// # Safety
    /// `segment` is a live huge segment.
    #[cfg(all(feature = "secure", not(any(loom, miri))))]
    unsafe fn huge_offset_at_guard(
        segment: *mut Segment,
        size: usize,
        align: usize,
        offset: usize,
        unit: usize,
    ) -> Option<usize> {
        // SAFETY: a live huge segment (caller): its header is mapped.
        let guard = unsafe { (*segment).huge_guard.get() };
        let align = align.max(OS_PAGE_SIZE);
        let len = checked_align_up(size, OS_PAGE_SIZE)?;
        let at = guard.checked_sub(len)?;
        let first = checked_align_up(HEADER_SIZE, align)?;
        if guard == 0 || !at.is_multiple_of(align) || at < first || at > SEGMENT_SIZE {
            return None;
        }
        let splits_none = (offset + len).is_multiple_of(HUGE_OS_PAGE);
        // (A guard page right before a 2 MiB boundary was placed there by
        // `huge_offset_before_boundary`, the huge page it splits faulted in.)
        let on_huge_page =
            guard.is_multiple_of(HUGE_OS_PAGE) || (guard + GUARD_SIZE).is_multiple_of(HUGE_OS_PAGE);
        if unit == HUGE_OS_PAGE && splits_none && !on_huge_page {
            return None;
        }
        Some(at)
    }

    /// Secure builds: where a block of `size` bytes aligned to `align`
    /// starts in a reused spare when its usual end (`offset` plus its OS
    /// pages, from `huge_block_offset`) is a 4 MiB boundary: one OS page
    /// lower, so that its guard page is the last page before the boundary
    /// and the spare splits off there (`split_huge_tail`), as in the plain
    /// build, rather than 4 MiB further (the guard page past the boundary
    /// would keep the whole next 4 MiB with the block). The guard page then
    /// splits the block's last huge page, which `place_huge_guard` faults
    /// in first. `None` when the usual end is not such a boundary, huge
    /// pages are off (`unit`), guard pages are off, or the block would start
    /// below the header or off its alignment.
    #[cfg(all(feature = "secure", not(any(loom, miri))))]
    fn huge_offset_before_boundary(
        size: usize,
        align: usize,
        offset: usize,
        unit: usize,
    ) -> Option<usize> {
        let align = align.max(OS_PAGE_SIZE);
        let end = offset.checked_add(checked_align_up(size, OS_PAGE_SIZE)?)?;
        if unit != HUGE_OS_PAGE
            || !end.is_multiple_of(SEGMENT_SIZE)
            || !options::secure_guard_pages()
        {
            return None;
        }
        let at = offset.checked_sub(GUARD_SIZE)?;
        (at.is_multiple_of(align) && at >= checked_align_up(HEADER_SIZE, align)?).then_some(at)
    }

    /// Sets a spare huge segment's page up again for a block of `size` bytes
    /// aligned to `align`, owned by `heap`; returns the block, and the spare
    /// split off its tail (`split_huge_tail`) or null. When the spare is
    /// much larger than the block and cannot be split, the tail's memory
    /// goes back.
    ///
    /// # Safety
    /// The caller owns the spare `segment` and `page` (its only page,
    /// unused), and `huge_fits(segment, size, align)` holds.
    pub(crate) unsafe fn reuse_huge(
        segment: *mut Segment,
        size: usize,
        align: usize,
        heap: *mut RawHeap,
        bin: usize,
    ) -> (*mut u8, *mut Segment) {
        // SAFETY: an unused page of our spare, which fits (caller).
        unsafe {
            let (offset, lead) =
                Segment::huge_block_offset(size, align).unwrap_or((HEADER_SIZE, 0));
            // Secure: right before the spare's guard page where the block
            // can end there, or a page below a 4 MiB boundary
            // (`huge_reuse_offset`).
            #[cfg(all(feature = "secure", not(any(loom, miri))))]
            let (offset, lead, fault_in) =
                Segment::huge_reuse_offset(segment, size, align, offset, lead);
            let total = (*segment).size;
            let block = segment.cast::<u8>().add(offset);
            let page = Segment::page(segment, 0);
            // A spare advised for huge pages is trimmed at a 2 MiB boundary:
            // trimming inside a huge page would split it, and the next
            // touch of the trimmed part would fault it back 4 KiB at a time.
            let unit = trim_unit(total);
            let tail = if RESHAPE_HUGE_SPARES {
                // The block takes what it needs, in whole units; the rest of
                // the mapping becomes a spare of its own where it can (kept
                // warm for the next huge block), else stays with the block.
                // The block's own size is tight (what its heap's page bytes
                // and limit count); the rest up to the cut stays mapped and
                // resident with it, counted as committed. Secure: the old
                // guard page goes with the tail when it lies there (past
                // the tail's header), and the block's goes right after the
                // block (where the old one already is when the block was
                // placed to end before it: no `mprotect` at all).
                let map_size = (*segment).map_size;
                let keep = checked_align_up(offset + size + GUARD_SIZE, unit)
                    .map_or(map_size, |k| k.min(map_size));
                (*segment).size = Segment::huge_total(offset, size).map_or(keep, |t| t.min(keep));
                let tail = Segment::split_huge_tail(segment, keep);
                #[cfg(all(feature = "secure", not(any(loom, miri))))]
                Segment::place_huge_guard(segment, (*segment).size - GUARD_SIZE, fault_in);
                tail
            } else {
                // (A partial huge page at the end stays: it is 4 KiB pages,
                // faulted in one by one if it ever went back.)
                let keep = checked_align_up(offset + size, unit).unwrap_or(total);
                let end = (total - GUARD_SIZE) & !(unit - 1);
                let tail = end.saturating_sub(keep);
                if tail >= TRIM_MIN.max(total / 2) {
                    os::reset(segment.cast::<u8>().add(keep), tail);
                }
                ptr::null_mut()
            };
            #[cfg(feature = "secure")]
            (*segment).huge_lead.set(lead);
            #[cfg(not(feature = "secure"))]
            let _ = lead;
            let total = (*segment).size;
            (*page).init_huge(heap, bin, block, total - offset - GUARD_SIZE);
            (*segment).used_pages.set(1);
            stats::HUGE_LIVE.add(total - offset - GUARD_SIZE);
            (block, tail)
        }
    }
}
