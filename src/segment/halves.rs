//! A small or medium segment's two 2 MiB halves and transparent huge
//! pages: which slots share a half, whether giving one back would split a
//! huge page, withdrawing a half's `MADV_HUGEPAGE` advice before a partial
//! give-back, giving back a whole half of unused slots at once, and
//! advising the upper half once the segment is dense.

use super::*;

impl Segment {
    /// The slots that share `page`'s 2 MiB half of a small or medium
    /// segment (a transparent huge page when advised); `None` for a large
    /// or huge segment, whose single page spans both halves.
    ///
    /// # Safety
    /// `page` is a slot of the live `segment`.
    pub(crate) unsafe fn half_of(
        segment: *mut Segment,
        page: *mut Page,
    ) -> Option<core::ops::Range<usize>> {
        // SAFETY: `segment` is live and `page` one of its slots (caller);
        // `page_count` never changes while the segment lives.
        let (count, index) = unsafe { ((*segment).page_count, Segment::page_index(segment, page)) };
        if count < 2 {
            return None;
        }
        let half = count / 2;
        let first = index / half * half;
        Some(first..first + half)
    }

    /// `page`'s 2 MiB half is advised `MADV_HUGEPAGE` and some other slot of
    /// it is in use: giving back `page` alone would split a huge page.
    ///
    /// # Safety
    /// `page` is a slot of the live `segment`, whose slots the caller may
    /// read (owner, or lock holder).
    pub(crate) unsafe fn would_split_huge_page(segment: *mut Segment, page: *mut Page) -> bool {
        // SAFETY: `page` is a slot of the live `segment` and the caller may
        // read its slots (owner or lock holder): no slot changes under us.
        unsafe {
            let Some(half) = Segment::half_of(segment, page) else {
                return false;
            };
            let bit = if half.start == 0 { 0b01 } else { 0b10 };
            (*segment).huge_halves.get() & bit != 0
                && half
                    .into_iter()
                    .any(|index| (*Segment::page(segment, index)).in_use.get())
        }
    }

    /// Memory in `[start, start + len)` of the segment is about to be given
    /// back: each advised 2 MiB half the range touches but does not cover
    /// loses its `MADV_HUGEPAGE` advice first. Such a half keeps resident
    /// pages (slots in use, the header's, a free block's first page), and
    /// khugepaged would collapse it back into a whole huge page at its next
    /// scan, taking back what the reset gave ([`os::advise_no_huge_pages`]):
    /// 6 MiB held for good after 1 s in one `tests/rss.rs` run of twenty.
    /// A whole upper half keeps its advice: none of it stays resident, and
    /// its next fault maps a huge page again, as a dense segment wants. A
    /// half that becomes dense again is advised again
    /// ([`Segment::advise_upper_half_if_dense`]).
    ///
    /// # Safety
    /// `segment` is live and the caller may write its header's cells (owner,
    /// lock holder, or exclusive owner of an abandoned or cached segment);
    /// the range lies inside the segment.
    pub(crate) unsafe fn withdraw_huge_advice(segment: *mut Segment, start: *mut u8, len: usize) {
        // SAFETY: live segment, its cells ours to write (caller).
        let header = unsafe { &*segment };
        let halves = header.huge_halves.get();
        if halves == 0 {
            return;
        }
        let half = SEGMENT_SIZE / 2;
        let from = start.addr() - segment.addr();
        let to = from + len;
        let mut kept = halves;
        for (bit, lo) in [(0b01u8, 0), (0b10, half)] {
            let hi = lo + half;
            let touches = from < hi && to > lo;
            let covers = from <= lo && to >= hi;
            if halves & bit != 0 && touches && !covers {
                // SAFETY: the half lies inside the segment's mapping, which
                // is page-aligned.
                unsafe { os::advise_no_huge_pages(segment.cast::<u8>().add(lo), half) };
                kept &= !bit;
            }
        }
        header.huge_halves.set(kept);
    }

    /// Gives back the memory of the unused slots `range` (one 2 MiB half,
    /// [`Segment::half_of`]) in one call: a huge page backing the upper
    /// half goes back whole instead of being split 64 KiB at a time.
    /// Returns the bytes of the slots that were not zero already.
    ///
    /// # Safety
    /// Every slot in `range` is an unused slot of `segment`, owned by the
    /// caller and on no reset queue.
    pub(crate) unsafe fn reset_slots(
        segment: *mut Segment,
        range: core::ops::Range<usize>,
    ) -> usize {
        // SAFETY: slots of the live segment, unused (caller): nothing lives
        // in their areas, which are contiguous.
        unsafe {
            let (start, _) = Segment::page_memory(segment, Segment::page(segment, range.start));
            let (last, last_len) =
                Segment::page_memory(segment, Segment::page(segment, range.end - 1));
            let len = last.addr() + last_len - start.addr();
            Segment::withdraw_huge_advice(segment, start, len);
            if !os::reset(start, len) {
                return 0;
            }
            let mut dirty = 0;
            for index in range {
                let page = Segment::page(segment, index);
                if !(*page).memory_is_zero.get() {
                    let bytes = Segment::page_memory(segment, page).1;
                    stats::COMMITTED.sub(bytes);
                    dirty += bytes;
                    (*page).memory_is_zero.set(true);
                }
            }
            dirty
        }
    }

    /// A slot of the upper 2 MiB half is being claimed for the first time
    /// while all of it is untouched: the heap has filled the lower half, so
    /// the segment is dense, and the upper half is advised `MADV_HUGEPAGE`
    /// (one fault maps all 2 MiB) where the option allows.
    ///
    /// # Safety
    /// `segment` is live, owned by the caller; `index` a slot of it.
    pub(super) unsafe fn advise_upper_half_if_dense(segment: *mut Segment, index: usize) {
        // SAFETY: owned by the caller; indices below page_count.
        unsafe {
            let count = (*segment).page_count;
            let halves = (*segment).huge_halves.get();
            if count < 2 || index < count / 2 || halves & 0b10 != 0 || !options::huge_os_pages() {
                return;
            }
            if !(count / 2..count).all(|i| (*Segment::page(segment, i)).memory_is_zero.get()) {
                return;
            }
            os::advise_huge_pages(segment.cast::<u8>().add(SEGMENT_SIZE / 2), SEGMENT_SIZE / 2);
            (*segment).huge_halves.set(halves | 0b10);
        }
    }
}
