//! The one switch between `core`'s atomics and cells and `loom`'s.
//!
//! Everything in the crate that another thread can observe goes through these
//! names, so that `RUSTFLAGS="--cfg loom"` runs the real page, heap and abandon
//! code under the loom model checker (see `loom-tests/`).

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Tells the processor (or loom's scheduler) that this thread is waiting for
/// another one. Every spin loop in the crate calls it, so loom can explore
/// the other thread's progress instead of spinning forever.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Gives the rest of the time slice away; used by the rare blocking waits of
/// the delayed-free protocol (owner waiting out a remote thread's push).
#[inline]
pub(crate) fn yield_thread() {
    #[cfg(not(loom))]
    // SAFETY: sched_yield has no preconditions; its result is irrelevant.
    unsafe {
        libc::sched_yield();
    }
    #[cfg(loom)]
    loom::thread::yield_now();
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `core::cell::UnsafeCell` with loom's closure API, so the same code compiles
/// against both. Used for the link word inside free blocks.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// A cell holding `value`.
    #[inline(always)]
    pub(crate) const fn new(value: T) -> UnsafeCell<T> {
        UnsafeCell(core::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a shared raw pointer to the contents.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a mutable raw pointer to the contents.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
