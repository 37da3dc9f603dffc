//! The one switch between `core`'s atomics and cells and `loom`'s.
//!
//! Everything in the crate that another thread can observe goes through these
//! names, so that `RUSTFLAGS="--cfg loom"` runs the real page, heap and abandon
//! code under the loom model checker (see `loom-tests/`). It also holds the
//! crate's one blocking primitive, [`Sleeper`] (a futex), outside loom.

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

#[cfg(not(any(loom, miri)))]
use core::sync::atomic::{AtomicU32, fence};
#[cfg(loom)]
use loom::sync::atomic::{AtomicU32, fence};

/// A thread's sleep until there is work, and the wake-up from threads that
/// make work: a flag and a futex.
///
/// The sleeper announces itself (`asleep = 1`), then checks for work; a
/// producer publishes work, then checks for a sleeper. A `SeqCst` fence
/// sits between the two steps on both sides, so at least one of them sees
/// the other's first step (store buffering is ruled out): either the
/// sleeper sees the work and does not sleep, or the producer sees `asleep`
/// and wakes it. A wake-up sent before the sleeper reaches `futex_wait`
/// makes the wait return at once (the futex word is no longer 1).
///
/// Under loom the futex is a mutex and a condition variable with the
/// kernel's contract (the wait checks the word and sleeps atomically with
/// respect to a wake), and the loom model `sleeper_never_misses_work`
/// checks that no wake-up is lost.
#[cfg(any(loom, not(miri)))]
pub(crate) struct Sleeper {
    asleep: AtomicU32,
    #[cfg(loom)]
    futex: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

#[cfg(any(loom, not(miri)))]
impl Sleeper {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Sleeper {
        Sleeper {
            asleep: AtomicU32::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Sleeper {
        Sleeper {
            asleep: AtomicU32::new(0),
            futex: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
        }
    }

    /// Sleeps until woken, as long as `no_work()` holds once announced.
    pub(crate) fn sleep_while(&self, no_work: impl Fn() -> bool) {
        // Relaxed store: ordered before the check by the fence below.
        self.asleep.store(1, Ordering::Relaxed);
        // SeqCst: pairs with the fence in `wake` (see the type's documentation).
        fence(Ordering::SeqCst);
        while no_work() {
            self.futex_wait(1);
            // Relaxed: a waker sets it to 0 before its futex_wake.
            if self.asleep.load(Ordering::Relaxed) == 0 {
                return;
            }
        }
        // Relaxed: only the sleeper and wakers touch it; a waker's swap
        // finding 0 skips the system call.
        self.asleep.store(0, Ordering::Relaxed);
    }

    /// Wakes the sleeper, if it sleeps (a fence and a load otherwise).
    #[inline]
    pub(crate) fn wake(&self) {
        // SeqCst: pairs with the fence in `sleep_while`; orders the caller's
        // publication of work before the check of `asleep`.
        fence(Ordering::SeqCst);
        // Relaxed: the fence orders it; the swap decides who wakes.
        if self.asleep.load(Ordering::Relaxed) == 1 && self.asleep.swap(0, Ordering::Relaxed) == 1 {
            self.futex_wake();
        }
    }

    #[cfg(not(loom))]
    pub(crate) fn reset_after_fork(&self) {
        // Relaxed: the child has one thread.
        self.asleep.store(0, Ordering::Relaxed);
    }

    /// Waits while the flag holds `expected` (or until a spurious wake-up).
    #[cfg(not(loom))]
    fn futex_wait(&self, expected: u32) {
        futex_wait(&self.asleep, expected);
    }

    /// Wakes one waiter.
    #[cfg(not(loom))]
    fn futex_wake(&self) {
        futex_wake(&self.asleep);
    }

    /// The kernel's futex wait, as loom sees it: the check of the word and
    /// the sleep are one step against `futex_wake`, which takes the same
    /// lock after the word changed.
    #[cfg(loom)]
    fn futex_wait(&self, expected: u32) {
        let (lock, woken) = &self.futex;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed: the lock orders it after a waker's change of the word.
        if self.asleep.load(Ordering::Relaxed) == expected {
            drop(woken.wait(guard).unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Wakes one waiter (see `futex_wait`).
    #[cfg(loom)]
    fn futex_wake(&self) {
        let (lock, woken) = &self.futex;
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        woken.notify_one();
    }
}

#[cfg(not(any(loom, miri)))]
/// Waits while `word` holds `expected` (or until a spurious wake-up).
fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        )
    };
}

#[cfg(not(any(loom, miri)))]
/// Wakes one waiter on `word`.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    };
}
