//! Page extension: threading the next run of a page's untouched blocks
//! into its `free` list, about one OS page at a time, when `free` runs dry
//! (secure builds: in a random order, `docs/security.md`, "Randomized
//! layout").

use super::{Block, Page};

/// Minimum number of blocks threaded per extension.
pub(super) const MIN_EXTEND: usize = 4;
/// Bytes of blocks threaded per extension: about one OS page, so page memory
/// becomes resident gradually and freed blocks are reused soon (a larger
/// extension, 16 KiB, made a ring of 64 × 1 KiB 20 % cheaper in callgrind,
/// but kept allocating fresh memory while freed, cache-warm blocks waited).
pub(super) const EXTEND_BYTES: usize = 4096;

/// Most blocks one extension shuffles: 4096 B of 16 B blocks, the smallest
/// secure class (so group indices fit a `u8`).
#[cfg(feature = "secure")]
const SHUFFLE_MAX: usize = EXTEND_BYTES / 16;
/// Most blocks a secure extension shuffles one by one with
/// `Page::extend_few` (an extension of blocks of 1 KiB or more has at most
/// `MIN_EXTEND`).
#[cfg(feature = "secure")]
const SHUFFLE_SMALL: usize = 8;
/// Bytes of consecutive blocks a secure extension keeps in address order
/// with `SHARDALLOC_SECURE_SHUFFLE=groups`; blocks of this size and more are
/// shuffled one by one (see `Page::extend_shuffled`).
#[cfg(feature = "secure")]
const SHUFFLE_GROUP: usize = 1024;

impl Page {
    /// Threads the next run of untouched blocks into `free` (about one OS
    /// page worth). Called only when `free` is empty.
    ///
    /// # Safety
    /// Owner only; the page is initialised.
    pub(crate) unsafe fn extend(&self) {
        let capacity = self.capacity.get() as usize;
        let remaining = self.reserved.get() as usize - capacity;
        if remaining == 0 {
            return;
        }
        let size = self.block_size.get();
        let count = (EXTEND_BYTES / size).max(MIN_EXTEND).min(remaining);
        let start = self.page_start.get();
        #[cfg(feature = "secure")]
        if count <= SHUFFLE_MAX {
            // SAFETY: as below.
            unsafe {
                self.extend_shuffled(start, capacity, count, size);
                self.clear_interior_marks(self.free.get());
            }
            self.capacity.set((capacity + count) as u32);
            self.extent.set(capacity + count);
            return;
        }
        // SAFETY: blocks `capacity .. capacity + count` lie inside the page
        // (count ≤ reserved − capacity) and have never been handed out.
        unsafe {
            let first = start.add(capacity * size).cast::<Block>();
            let mut block = first;
            for _ in 1..count {
                let next = block.byte_add(size);
                Block::init(block, next);
                block = next;
            }
            Block::init(block, self.free.get());
            self.free.set(first);
            // Memory a page of this size class left dirty may hold a
            // block's mark at the same address.
            self.clear_interior_marks(first);
        }
        self.capacity.set((capacity + count) as u32);
        #[cfg(feature = "secure")]
        self.extent.set(capacity + count);
    }

    /// Secure mode's extension: the new blocks are threaded in a random
    /// order, so addresses handed out are not predictable from earlier ones
    /// (`docs/security.md`, "Randomized layout"). By default
    /// ([`SecureShuffle::Runs`](crate::options::SecureShuffle)) blocks
    /// below [`SHUFFLE_GROUP`] bytes go to one of two runs by a coin flip
    /// each ([`Page::extend_runs`]); otherwise the run is cut into groups of
    /// [`SHUFFLE_GROUP`] bytes of consecutive blocks (one block a group with
    /// `SHARDALLOC_SECURE_SHUFFLE=blocks`, and for blocks of 1 KiB and
    /// more), threaded in a random order (Fisher–Yates), the blocks of a
    /// group in address order.
    ///
    /// # Safety
    /// As for `extend`'s loop: blocks `capacity .. capacity + count` of the
    /// page (count ≤ `SHUFFLE_MAX`) lie inside it and were never handed out.
    #[cfg(feature = "secure")]
    unsafe fn extend_shuffled(&self, start: *mut u8, capacity: usize, count: usize, size: usize) {
        use crate::options::SecureShuffle;
        let shuffle = crate::options::secure_shuffle();
        if shuffle == SecureShuffle::Runs && size < SHUFFLE_GROUP {
            // SAFETY: forwarded from the caller.
            unsafe { self.extend_runs(start, capacity, count, size) };
            return;
        }
        let per_group = if shuffle == SecureShuffle::Blocks {
            1
        } else {
            (SHUFFLE_GROUP / size).max(1)
        };
        if per_group == 1 && count <= SHUFFLE_SMALL {
            // SAFETY: forwarded from the caller.
            unsafe { self.extend_few(start, capacity, count, size) };
            return;
        }
        let groups = count.div_ceil(per_group);
        let mut order = [0u8; SHUFFLE_MAX];
        for (i, slot) in order.iter_mut().enumerate().take(groups) {
            *slot = i as u8;
        }
        let mut rng = crate::secure::LocalRng::new();
        for i in (1..groups).rev() {
            order.swap(i, rng.below(i + 1));
        }
        // Threaded from the last block handed out to the first.
        let mut next = self.free.get();
        for &group in order[..groups].iter().rev() {
            let first = group as usize * per_group;
            let end = (first + per_group).min(count);
            for i in (first..end).rev() {
                // SAFETY: index below `count` (caller's range).
                let block = unsafe { start.add((capacity + i) * size).cast::<Block>() };
                // SAFETY: a never-used block of this page (caller).
                unsafe { self.link_fresh(block, next) };
                next = block;
            }
        }
        self.free.set(next);
    }

    /// [`Page::extend_shuffled`] for a few blocks shuffled one by one (blocks
    /// of 1 KiB and more: four an extension): Fisher–Yates over a small
    /// array, its choices taken from one 64-bit draw (each is the integer
    /// part of the draw, as a fraction, times the range; the fractional part
    /// serves the next: about 15 of the 64 bits for 8 blocks), the page key
    /// loaded once. The general loop spent about 240 instructions an
    /// extension of four blocks of 1 KiB (zeroing a 256-entry order, nested
    /// group loops, a draw per swap).
    ///
    /// # Safety
    /// As for [`Page::extend_shuffled`]; `count ≤ SHUFFLE_SMALL`.
    #[cfg(feature = "secure")]
    unsafe fn extend_few(&self, start: *mut u8, capacity: usize, count: usize, size: usize) {
        let mut order: [u8; SHUFFLE_SMALL] = core::array::from_fn(|i| i as u8);
        let mut fraction = crate::secure::random_u64();
        for i in (1..count).rev() {
            let wide = u128::from(fraction) * (i as u128 + 1);
            order.swap(i, (wide >> 64) as usize);
            fraction = wide as u64;
        }
        let key = self.key.get();
        // Threaded from the last block handed out to the first.
        let mut next = self.free.get();
        for &i in order[..count].iter().rev() {
            // SAFETY: index below `count` (caller's range): a never-used
            // block of this page (caller), linked once.
            unsafe {
                let block = start.add((capacity + i as usize) * size).cast::<Block>();
                self.link_fresh_keyed(key, block, next);
                next = block;
            }
        }
        self.free.set(next);
    }

    /// The default secure extension order: each new block joins run 0 or
    /// run 1 by a coin flip (one bit of a 64-bit draw per block); run 0 is
    /// handed out first, then run 1, each in address order.
    ///
    /// Why two runs: the block handed out after a given one is its neighbour
    /// in memory only half of the time (1 KiB groups: 95 %), yet a program
    /// that walks its objects in allocation order still sweeps each run
    /// upwards, which the hardware prefetcher follows, and the second
    /// sweep finds the lines the first brought in (`rebuild` t=1, CPU time
    /// of `perf stat -r 3` on a loaded machine: plain build 234–272 ms,
    /// two runs 337–344, 1 KiB groups 423–449, no shuffle at all 301–329;
    /// four runs 555–569, slower than groups: a line visited four times,
    /// far apart, leaves the L1 cache in between).
    ///
    /// Threaded front to back, in the order the blocks will be handed out:
    /// run 0's blocks upwards, then run 1's, then what `free` held; a
    /// block's link is written once its successor is known. The coin flips
    /// of 64 blocks are one 64-bit draw (bit `i` of word `w`: block
    /// `64 w + i` joins run 1), and a run's blocks in that word are its set
    /// bits (run 1) or clear bits (run 0), taken from the lowest: per block
    /// one bit scan and one encoded store, with no test of which run it
    /// joins (14 instructions a block in the loop). The stores go up
    /// through memory as the hand-outs will. The former loop threaded back
    /// to front (each run from its highest block down) with as many
    /// instructions (`Page::extend` on `rebuild` t=1 `--scale 0.5` under
    /// callgrind: 121 M, now 126 M), but spent most of its time waiting on
    /// those stores, into memory that is usually cold (a reset page faulted
    /// in again): it held 22 % of `rebuild` t=1's CPU samples (`perf record
    /// -e cpu-clock`), about 10 % now, and the whole run takes 0.82–0.93 of
    /// the time it took (11 interleaved rounds, three series).
    ///
    /// # Safety
    /// As for [`Page::extend_shuffled`].
    #[cfg(feature = "secure")]
    unsafe fn extend_runs(&self, start: *mut u8, capacity: usize, count: usize, size: usize) {
        const WORDS: usize = SHUFFLE_MAX / 64;
        let words = count.div_ceil(64);
        // `runs[r][w]`: the blocks of word `w` (blocks `64 w ..`) in run `r`.
        let mut runs = [[0u64; WORDS]; 2];
        let mut rng = crate::secure::LocalRng::new();
        let [run0, run1] = &mut runs;
        for (w, (zero, one)) in run0.iter_mut().zip(run1).enumerate().take(words) {
            let coin = rng.next_u64();
            let here = count - 64 * w;
            let exists = if here >= 64 { !0 } else { (1u64 << here) - 1 };
            *zero = !coin & exists;
            *one = coin & exists;
        }
        let key = self.key.get();
        let first = start.wrapping_add(capacity * size);
        // The head (the first block handed out): the lowest of run 0, or of
        // run 1 if run 0 drew no block. It leaves its run's mask, so that
        // every block the loop meets has a predecessor (`tail`).
        let Some((run, w)) = (0..2)
            .flat_map(|run| (0..words).map(move |w| (run, w)))
            .find(|&(run, w)| runs[run][w] != 0)
        else {
            return; // (`count ≥ 1`: never.)
        };
        let lowest = runs[run][w].trailing_zeros() as usize;
        runs[run][w] &= runs[run][w] - 1;
        let head = first.wrapping_add((64 * w + lowest) * size).cast::<Block>();
        let mut tail = head;
        for run in &runs {
            for (w, &word) in run.iter().enumerate().take(words) {
                let mut mask = word;
                let base = first.wrapping_add(64 * w * size);
                while mask != 0 {
                    let i = mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    let block = base.wrapping_add(i * size).cast::<Block>();
                    // SAFETY: `tail` is block `< count` of the extension, a
                    // never-used block of this page (caller), linked once.
                    unsafe { self.link_fresh_keyed(key, tail, block) };
                    tail = block;
                }
            }
        }
        // SAFETY: `tail`, the last block threaded, is block `< count` of
        // the extension, never used and not linked yet (caller's range).
        unsafe { self.link_fresh_keyed(key, tail, self.free.get()) };
        self.free.set(head);
    }

    /// Writes the link of a never-used block of this page being threaded by
    /// a secure extension (loom needs the block's cell built).
    ///
    /// # Safety
    /// `block` is a block of this page that was never handed out, not on any
    /// list, and written by nobody else.
    #[cfg(feature = "secure")]
    #[inline(always)]
    unsafe fn link_fresh(&self, block: *mut Block, next: *mut Block) {
        #[cfg(loom)]
        // SAFETY: a never-used block of this page (caller).
        unsafe {
            Block::init(block, next)
        };
        #[cfg(not(loom))]
        // SAFETY: a never-used block of this page (caller), ours to write.
        unsafe {
            Block::set_next_in(self, block, next)
        };
    }

    /// [`Page::link_fresh`] with the page's key already loaded (the
    /// extension loop loads it once: a store into a block may alias the
    /// descriptor for all the compiler knows).
    ///
    /// # Safety
    /// As for [`Page::link_fresh`]; `key` is this page's key.
    #[cfg(feature = "secure")]
    #[inline(always)]
    unsafe fn link_fresh_keyed(&self, key: usize, block: *mut Block, next: *mut Block) {
        #[cfg(loom)]
        {
            let _ = key;
            // SAFETY: a never-used block of this page (caller).
            unsafe { Block::init(block, next) };
        }
        #[cfg(not(loom))]
        // SAFETY: a never-used block of this page (caller), ours to write.
        unsafe {
            (*block)
                .next
                .with_mut(|p| *p = crate::secure::encode(key, block, next))
        };
    }
}
