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

/// A value only one thread at a time may touch: the owner of its heap, or
/// the holder of the heap's lock (see `registry`). A `Cell` in normal
/// builds; under loom a tracked cell, so the models check that whoever
/// touches it is ordered after whoever touched it last.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct OwnerCell<T: Copy>(core::cell::Cell<T>);

#[cfg(not(loom))]
impl<T: Copy> OwnerCell<T> {
    /// A cell holding `value`.
    #[inline(always)]
    pub(crate) const fn new(value: T) -> OwnerCell<T> {
        OwnerCell(core::cell::Cell::new(value))
    }

    /// The value.
    #[inline(always)]
    pub(crate) fn get(&self) -> T {
        self.0.get()
    }

    /// Replaces the value.
    #[inline(always)]
    pub(crate) fn set(&self, value: T) {
        self.0.set(value);
    }
}

/// See the normal build's `OwnerCell`.
#[cfg(loom)]
pub(crate) struct OwnerCell<T: Copy>(loom::cell::UnsafeCell<T>);

#[cfg(loom)]
impl<T: Copy> OwnerCell<T> {
    /// A cell holding `value`.
    pub(crate) fn new(value: T) -> OwnerCell<T> {
        OwnerCell(loom::cell::UnsafeCell::new(value))
    }

    /// The value.
    pub(crate) fn get(&self) -> T {
        // SAFETY: one thread at a time (the type's contract), which is
        // exactly what loom checks here.
        self.0.with(|value| unsafe { *value })
    }

    /// Replaces the value.
    pub(crate) fn set(&self, value: T) {
        // SAFETY: as in `get`.
        self.0.with_mut(|slot| unsafe { *slot = value });
    }
}
