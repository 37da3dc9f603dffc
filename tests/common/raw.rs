//! Self-describing raw blocks, for tests that pass blocks through atomic slots or check them where
//! nothing may allocate or panic (a forked child, a pthread key destructor).
//!
//! A tagged block is allocated from the global allocator (which the test installs as
//! `ShardAlloc`). Its first word is a header that records the requested size, the alignment, the
//! fill mode and a 16-bit check value derived from (address, size, seed); the rest of the
//! requested size holds the offset-dependent pattern of `common::fill_pattern`, whose fill byte is
//! also derived from (address, size, seed). So a bare pointer is enough to verify, reallocate and
//! free the block, and a block that was handed out twice, moved, shifted or overwritten does not
//! verify.
//!
//! Nothing here allocates or panics: failures come back as a [`Damage`] (plain data, `Copy`), which
//! the caller formats.
//!
//! Include it next to `common` with `#[path = "common/raw.rs"] mod raw;`.
#![allow(dead_code)]

use std::alloc::Layout;
use std::fmt;

use crate::common::{check_pattern, fill_pattern};

/// Size of the header word at the start of every tagged block (also the minimum size).
pub(crate) const HEADER: usize = 8;
/// With [`Fill::Edges`], how much of each end of the block holds the pattern.
pub(crate) const EDGE: usize = 16 * 1024;

/// How much of a block holds the pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// All of the requested size.
    Full,
    /// The first and last [`EDGE`] bytes of the requested size (cheap for large blocks).
    Edges,
    /// Only the first [`HEAD`] bytes (for blocks that must be freed as fast as possible).
    Head,
}

/// With [`Fill::Head`], how many bytes from the start hold the header and the pattern.
pub(crate) const HEAD: usize = 64;

const SIZE_BITS: u32 = 40;
const SIZE_MASK: u64 = (1 << SIZE_BITS) - 1;
const ALIGN_SHIFT: u32 = 40;
const EDGES_BIT: u64 = 1 << 46;
const HEAD_BIT: u64 = 1 << 47;
const CHECK_SHIFT: u32 = 48;

/// splitmix64 finaliser.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn tag(addr: usize, size: usize, seed: u64) -> u64 {
    mix(addr as u64 ^ (size as u64).rotate_left(29) ^ seed.rotate_left(7))
}

/// The fill byte of the block at `addr` of `size` bytes under `seed`.
pub(crate) fn fill_of(addr: usize, size: usize, seed: u64) -> u8 {
    tag(addr, size, seed) as u8
}

fn header(addr: usize, size: usize, align: usize, fill: Fill, seed: u64) -> u64 {
    let check = tag(addr, size, seed) >> CHECK_SHIFT;
    let fill_bits = match fill {
        Fill::Full => 0,
        Fill::Edges => EDGES_BIT,
        Fill::Head => HEAD_BIT,
    };
    (size as u64 & SIZE_MASK)
        | (u64::from(align.trailing_zeros()) << ALIGN_SHIFT)
        | fill_bits
        | (check << CHECK_SHIFT)
}

/// What was wrong with a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// The allocator returned null.
    Null,
    /// The block is not aligned to the requested alignment.
    Misaligned,
    /// `usable_size` is smaller than the requested size (`got` = usable size).
    UsableTooSmall { usable: usize },
    /// The header word does not belong to this address (`got` = the header found).
    Header { found: u64 },
    /// A pattern byte is wrong.
    Byte { offset: usize, got: u8, want: u8 },
    /// `realloc` did not keep the prefix (`offset` into the new block).
    LostByRealloc { offset: usize, got: u8, want: u8 },
}

/// A damaged or failed block: where it was, what it should have been, what was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    pub(crate) addr: usize,
    pub(crate) size: usize,
    pub(crate) align: usize,
    pub(crate) problem: Problem,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block {:#x} (size {}, align {}): ",
            self.addr, self.size, self.align
        )?;
        match self.problem {
            Problem::Null => write!(f, "allocation returned null"),
            Problem::Misaligned => write!(f, "misaligned"),
            Problem::UsableTooSmall { usable } => write!(f, "usable_size is only {usable}"),
            Problem::Header { found } => write!(
                f,
                "header word is {found:#018x}, not this block's (overwritten, or handed out twice)"
            ),
            Problem::Byte { offset, got, want } => {
                write!(f, "byte {offset} is {got:#04x}, expected {want:#04x}")
            }
            Problem::LostByRealloc { offset, got, want } => write!(
                f,
                "realloc lost the contents: byte {offset} is {got:#04x}, expected {want:#04x}"
            ),
        }
    }
}

/// What a verified header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Info {
    pub(crate) size: usize,
    pub(crate) align: usize,
    pub(crate) fill: Fill,
}

impl Info {
    fn layout(&self) -> Layout {
        // The header was written from a valid layout.
        Layout::from_size_align(self.size, self.align).unwrap_or(Layout::new::<u64>())
    }

    /// The ranges `[from, to)` that hold the pattern.
    fn ranges(&self) -> [(usize, usize); 2] {
        match self.fill {
            Fill::Edges if self.size > 2 * EDGE + HEADER => {
                [(HEADER, HEADER + EDGE), (self.size - EDGE, self.size)]
            }
            Fill::Head => [(HEADER, self.size.min(HEAD)), (self.size, self.size)],
            _ => [(HEADER, self.size), (self.size, self.size)],
        }
    }
}

/// Writes the header and the pattern of the block at `p`.
///
/// # Safety
/// `p` is a live block of at least `info.size >= HEADER` bytes.
unsafe fn write_tag(p: *mut u8, info: Info, seed: u64) {
    let addr = p.addr();
    let fill = fill_of(addr, info.size, seed);
    // SAFETY: the block is live, 8-aligned (every tagged block is) and at least `HEADER` long.
    unsafe {
        p.cast::<u64>()
            .write(header(addr, info.size, info.align, info.fill, seed))
    };
    for (from, to) in info.ranges() {
        // SAFETY: `[from, to)` lies within the block's `info.size` bytes.
        unsafe { fill_pattern(p, from, to, fill) };
    }
}

/// Allocates a tagged block of `size` bytes (at least [`HEADER`]) aligned to `align` (at least 8)
/// and fills it.
pub(crate) fn alloc(size: usize, align: usize, fill: Fill, seed: u64) -> Result<*mut u8, Damage> {
    let size = size.max(HEADER);
    let align = align.max(8);
    let damage = |addr, problem| Damage {
        addr,
        size,
        align,
        problem,
    };
    let Ok(layout) = Layout::from_size_align(size, align) else {
        return Err(damage(0, Problem::Null));
    };
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        return Err(damage(0, Problem::Null));
    }
    if p.addr() % align != 0 {
        return Err(damage(p.addr(), Problem::Misaligned));
    }
    // SAFETY: a live block of the global allocator, which is `ShardAlloc`.
    let usable = unsafe { shardalloc::usable_size(p) };
    if usable < size {
        return Err(damage(p.addr(), Problem::UsableTooSmall { usable }));
    }
    // SAFETY: a live block of `size >= HEADER` bytes.
    unsafe { write_tag(p, Info { size, align, fill }, seed) };
    Ok(p)
}

/// Checks the tagged block at `p`: header, usable size and pattern.
///
/// # Safety
/// `p` is a live tagged block made under `seed` (its first word at least must be readable).
pub(crate) unsafe fn verify(p: *const u8, seed: u64) -> Result<Info, Damage> {
    let addr = p.addr();
    // SAFETY: a live tagged block starts with its 8-aligned header word (caller).
    let word = unsafe { p.cast::<u64>().read() };
    let size = (word & SIZE_MASK) as usize;
    let align_log2 = (word >> ALIGN_SHIFT) & 0x3f;
    let align = 1usize << align_log2;
    let fill = match (word & EDGES_BIT != 0, word & HEAD_BIT != 0) {
        (false, false) => Fill::Full,
        (true, false) => Fill::Edges,
        _ => Fill::Head,
    };
    let damage = |problem| Damage {
        addr,
        size,
        align,
        problem,
    };
    if size < HEADER || word != header(addr, size, align, fill, seed) {
        return Err(damage(Problem::Header { found: word }));
    }
    // SAFETY: a live block (caller).
    let usable = unsafe { shardalloc::usable_size(p) };
    if usable < size {
        return Err(damage(Problem::UsableTooSmall { usable }));
    }
    let info = Info { size, align, fill };
    let byte = fill_of(addr, size, seed);
    for (from, to) in info.ranges() {
        // SAFETY: `[from, to)` lies within the block's `size` bytes.
        if let Err((offset, got, want)) = unsafe { check_pattern(p, from, to, byte) } {
            return Err(damage(Problem::Byte { offset, got, want }));
        }
    }
    Ok(info)
}

/// Verifies and frees the tagged block at `p`. A damaged block is not freed (its header may be
/// garbage), and the damage is returned.
///
/// # Safety
/// `p` is a live tagged block made under `seed`; the caller gives it up.
pub(crate) unsafe fn free(p: *mut u8, seed: u64) -> Result<Info, Damage> {
    // SAFETY: forwarded from the caller.
    let info = unsafe { verify(p, seed) }?;
    // SAFETY: the block was allocated with this layout (its verified header says so).
    unsafe { std::alloc::dealloc(p, info.layout()) };
    Ok(info)
}

/// Verifies the tagged block at `p`, reallocates it to `new_size` bytes (at least [`HEADER`]),
/// checks that the prefix survived and the alignment held, and tags the result again. On a failed
/// reallocation the old block is still live and verified again.
///
/// # Safety
/// `p` is a live tagged block made under `seed`; on success the caller gives it up for the result.
pub(crate) unsafe fn realloc(p: *mut u8, new_size: usize, seed: u64) -> Result<*mut u8, Damage> {
    // SAFETY: forwarded from the caller.
    let old = unsafe { verify(p, seed) }?;
    let new_size = new_size.max(HEADER);
    let damage = |addr, problem| Damage {
        addr,
        size: new_size,
        align: old.align,
        problem,
    };
    // Bytes of the old pattern the new block must still hold.
    let kept = old.size.min(new_size);
    let old_fill = fill_of(p.addr(), old.size, seed);
    let old_header = {
        // SAFETY: the block is live and verified.
        unsafe { p.cast::<u64>().read() }
    };
    // SAFETY: the block is live and was allocated with `old.layout()`; `new_size` is non-zero and
    // far below `isize::MAX`.
    let q = unsafe { std::alloc::realloc(p, old.layout(), new_size) };
    if q.is_null() {
        return Err(damage(p.addr(), Problem::Null));
    }
    if q.addr() % old.align != 0 {
        return Err(damage(q.addr(), Problem::Misaligned));
    }
    // SAFETY: a live block.
    let usable = unsafe { shardalloc::usable_size(q) };
    if usable < new_size {
        return Err(damage(q.addr(), Problem::UsableTooSmall { usable }));
    }
    // SAFETY: the new block is live and at least `HEADER` bytes long.
    let moved_header = unsafe { q.cast::<u64>().read() };
    if moved_header != old_header {
        return Err(damage(
            q.addr(),
            Problem::Header {
                found: moved_header,
            },
        ));
    }
    let old_ranges = old.ranges();
    for (from, to) in old_ranges {
        let to = to.min(kept);
        if from < to {
            // SAFETY: `[from, to)` lies within the new block's `new_size` bytes.
            if let Err((offset, got, want)) = unsafe { check_pattern(q, from, to, old_fill) } {
                return Err(damage(
                    q.addr(),
                    Problem::LostByRealloc { offset, got, want },
                ));
            }
        }
    }
    let info = Info {
        size: new_size,
        align: old.align,
        fill: old.fill,
    };
    // SAFETY: a live block of at least `new_size` bytes.
    unsafe { write_tag(q, info, seed) };
    Ok(q)
}

/// The size of the tagged block at `p`, as its header says (no check).
///
/// # Safety
/// `p` is a live tagged block.
pub(crate) unsafe fn size_of_block(p: *const u8) -> usize {
    // SAFETY: a live tagged block starts with its header word (caller).
    (unsafe { p.cast::<u64>().read() } & SIZE_MASK) as usize
}

/// A fixed-size text buffer for formatting without allocating (for a forked child or a pthread key
/// destructor); output that does not fit is cut off.
pub(crate) struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    pub(crate) const fn new() -> Self {
        StackText {
            buf: [0; N],
            len: 0,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the text to the file descriptor `fd` with `libc::write` (no locks, no allocation).
    pub(crate) fn write_to(&self, fd: i32) {
        let mut rest = self.as_bytes();
        while !rest.is_empty() {
            // SAFETY: `rest` is valid for reads of its length.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                return;
            }
            rest = &rest[n as usize..];
        }
    }
}

impl<const N: usize> fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
