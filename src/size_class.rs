//! Size classes: request size → bin, bin → block size. Stateless.
//!
//! Sizes are counted in 8-byte words `w = ⌈size / 8⌉`:
//!
//! * `w ≤ 8` (up to 64 B): 8 B, then even word counts — 16, 32, 48, 64 B —
//!   because every block of 16 B or more must be 16-byte aligned;
//! * above 64 B: four bins per power of two, at ×1.25, ×1.5, ×1.75 and ×2, so
//!   neighbouring classes are at most 25 % apart (internal waste < 20 %).
//!
//! Every block size from 16 B on is a multiple of 16, and a block size in
//! `[2^k, 2^(k+1))` is a multiple of `2^(k-2)`. Pages place their first block
//! at a multiple of the largest power of two dividing the block size (capped
//! at [`ALIGN_GUARANTEE`]), so every block is aligned to that power of two:
//! this is what lets [`fitting_size`] serve over-aligned requests from
//! ordinary size classes.

/// Bytes per word; the unit of the direct table.
pub(crate) const WORD: usize = 8;

/// Largest size served through the heap's direct table (fast path).
pub(crate) const SMALL_SIZE_MAX: usize = 1024;

/// Number of slots in the direct table: one per word count `0..=128`.
pub(crate) const DIRECT_ENTRIES: usize = SMALL_SIZE_MAX / WORD + 1;

/// Largest block of a small page (64 KiB pages).
pub(crate) const SMALL_BLOCK_MAX: usize = 8 * 1024;
/// Largest block of a medium page (512 KiB pages).
pub(crate) const MEDIUM_BLOCK_MAX: usize = 64 * 1024;
/// Largest size-classed block (large pages span a whole segment); anything
/// bigger is a huge block in its own segment.
pub(crate) const LARGE_BLOCK_MAX: usize = 1024 * 1024;

/// Largest block that shares its page with other blocks; larger (large)
/// blocks get a page — and so a segment — of their own, so freeing one gives
/// its memory back regardless of its neighbours.
pub(crate) const SHARED_PAGE_BLOCK_MAX: usize = 256 * 1024;

/// Alignment below which [`fitting_size`] can use size classes (the cap on
/// the first-block placement inside a page).
pub(crate) const ALIGN_GUARANTEE: usize = 64 * 1024;

/// Alignment every block of 16 B or more has without asking.
pub(crate) const MIN_ALIGN: usize = 16;

/// Number of size-classed bins (`bin_of(LARGE_BLOCK_MAX) + 1`).
pub(crate) const BIN_COUNT: usize = bin_of(LARGE_BLOCK_MAX) + 1;
/// Queue index of the heap's huge pages (one block per segment).
pub(crate) const BIN_HUGE: usize = BIN_COUNT;
/// Queue index of pages found without a free block.
pub(crate) const BIN_FULL: usize = BIN_COUNT + 1;
/// Number of page queues in a heap.
pub(crate) const QUEUE_COUNT: usize = BIN_COUNT + 2;

/// The bin of a request of `size` bytes, `1 ≤ size ≤ LARGE_BLOCK_MAX`
/// (0 is treated as 1).
#[inline]
pub(crate) const fn bin_of(size: usize) -> usize {
    let w = size.div_ceil(WORD);
    if w <= 1 {
        0
    } else if w <= 8 {
        // 2 → 16 B, 3..4 → 32 B, 5..6 → 48 B, 7..8 → 64 B.
        w.div_ceil(2)
    } else {
        // The top three significant bits of (w - 1) pick the bin: the
        // leading 1 gives the power of two, the next two the quarter.
        let v = w - 1;
        let b = (usize::BITS - 1 - v.leading_zeros()) as usize;
        4 * b + ((v >> (b - 2)) & 3) - 7
    }
}

/// Block size in bytes of `bin` (the largest request mapping to it).
pub(crate) const fn bin_block_size(bin: usize) -> usize {
    if bin == 0 {
        WORD
    } else if bin <= 4 {
        bin * 2 * WORD
    } else {
        let b = (bin + 7) / 4;
        let quarter = (bin + 7) % 4;
        ((5 + quarter) << (b - 2)) * WORD
    }
}

/// Block sizes of all bins, indexed by bin.
pub(crate) static BLOCK_SIZES: [usize; BIN_COUNT] = {
    let mut sizes = [0; BIN_COUNT];
    let mut bin = 0;
    while bin < BIN_COUNT {
        sizes[bin] = bin_block_size(bin);
        bin += 1;
    }
    sizes
};

/// The range of direct-table entries (word counts) whose requests map to `bin`,
/// for bins whose blocks are at most [`SMALL_SIZE_MAX`]: `first..=last`.
pub(crate) const fn direct_entries_of(bin: usize) -> (usize, usize) {
    let first = if bin == 0 {
        0
    } else {
        bin_block_size(bin - 1) / WORD + 1
    };
    (first, bin_block_size(bin) / WORD)
}

/// The size to request from a size class so that the block is aligned to
/// `align` (a power of two), or `None` when no size class can promise it and
/// the request must go to its own (huge) segment.
#[inline]
pub(crate) const fn fitting_size(size: usize, align: usize) -> Option<usize> {
    if align <= MIN_ALIGN {
        // 8-byte blocks are only 8-aligned; everything from 16 B is 16-aligned.
        let size = if size > align { size } else { align };
        if size <= LARGE_BLOCK_MAX {
            Some(size)
        } else {
            None
        }
    } else if align <= ALIGN_GUARANTEE {
        // A multiple of `align` always lands in a class that is itself a
        // multiple of `align` (see the module docs); its blocks are then
        // `align`-aligned.
        let rounded = (size + align - 1) & !(align - 1);
        if rounded <= LARGE_BLOCK_MAX {
            Some(rounded)
        } else {
            None
        }
    } else {
        None
    }
}

/// The largest power of two dividing `block_size`, capped at
/// [`ALIGN_GUARANTEE`]: where a page puts its first block.
#[inline]
pub(crate) const fn block_alignment(block_size: usize) -> usize {
    let natural = 1 << block_size.trailing_zeros();
    if natural < ALIGN_GUARANTEE {
        natural
    } else {
        ALIGN_GUARANTEE
    }
}

/// Which kind of page holds blocks of `block_size`.
#[inline]
pub(crate) const fn page_kind_of(block_size: usize) -> PageKind {
    if block_size <= SMALL_BLOCK_MAX {
        PageKind::Small
    } else if block_size <= MEDIUM_BLOCK_MAX {
        PageKind::Medium
    } else if block_size <= LARGE_BLOCK_MAX {
        PageKind::Large
    } else {
        PageKind::Huge
    }
}

/// The kinds of page, and so of segment (a segment holds pages of one kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageKind {
    /// 64 pages of 64 KiB per segment; blocks up to 8 KiB.
    Small,
    /// 8 pages of 512 KiB per segment; blocks up to 64 KiB.
    Medium,
    /// One page spanning the segment; blocks up to 1 MiB.
    Large,
    /// One block in a segment of its own size.
    Huge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_with_bounded_waste() {
        let mut previous_bin = 0;
        for size in 1..=LARGE_BLOCK_MAX {
            let bin = bin_of(size);
            let block = BLOCK_SIZES[bin];
            assert!(block >= size, "size {size} → bin {bin} of {block} B");
            assert!(
                bin == previous_bin || bin == previous_bin + 1,
                "bins are dense at {size}"
            );
            if bin > 0 {
                assert!(
                    BLOCK_SIZES[bin - 1] < size,
                    "size {size} fits the smaller bin"
                );
            }
            if size > 64 {
                // Neighbouring classes at most 25 % apart.
                assert!(block * 4 <= BLOCK_SIZES[bin - 1] * 5, "bin {bin} spacing");
            }
            previous_bin = bin;
        }
        assert_eq!(BLOCK_SIZES[BIN_COUNT - 1], LARGE_BLOCK_MAX);
    }

    #[test]
    fn known_class_sizes() {
        let expect = [
            (1, 8),
            (8, 8),
            (9, 16),
            (17, 32),
            (33, 48),
            (65, 80),
            (100, 112),
            (129, 160),
            (1024, 1024),
            (1025, 1280),
            (8193, 10240),
        ];
        for (size, block) in expect {
            assert_eq!(BLOCK_SIZES[bin_of(size)], block, "size {size}");
        }
    }

    #[test]
    fn blocks_from_16_bytes_are_16_aligned_multiples() {
        for (bin, &block) in BLOCK_SIZES.iter().enumerate().skip(1) {
            assert_eq!(block % MIN_ALIGN, 0, "bin {bin}");
        }
    }

    #[test]
    fn direct_slots_partition_the_small_sizes() {
        let mut next_slot = 0;
        let mut bin = 0;
        while BLOCK_SIZES[bin] <= SMALL_SIZE_MAX {
            let (first, last) = direct_entries_of(bin);
            assert_eq!(first, next_slot, "bin {bin}");
            for slot in first.max(1)..=last {
                assert_eq!(bin_of(slot * WORD), bin, "slot {slot}");
            }
            next_slot = last + 1;
            bin += 1;
        }
        assert_eq!(next_slot, DIRECT_ENTRIES);
    }

    /// The promise behind `fitting_size`: for every size and every alignment
    /// it accepts, the chosen class's blocks are aligned (block alignment is
    /// a multiple of the request's alignment) and big enough.
    #[test]
    fn fitting_size_gives_aligned_classes() {
        let mut align = 1;
        while align <= 2 * ALIGN_GUARANTEE {
            let mut size = 1;
            while size <= LARGE_BLOCK_MAX + 1 {
                if let Some(fit) = fitting_size(size, align) {
                    let block = BLOCK_SIZES[bin_of(fit)];
                    assert!(block >= size);
                    let block_align = if block == WORD {
                        WORD
                    } else {
                        block_alignment(block)
                    };
                    assert_eq!(
                        block_align % align,
                        0,
                        "size {size} align {align} → {block}"
                    );
                } else {
                    assert!(
                        align > ALIGN_GUARANTEE || size.next_multiple_of(align) > LARGE_BLOCK_MAX
                    );
                }
                size += if size < 4096 { 1 } else { 61 };
            }
            align *= 2;
        }
    }
}
