//! Once-per-process work without a lock, in two shapes:
//!
//! * [`Once`]: a value created by whichever thread gets there first; racing
//!   creators each make one, one CAS publishes the winner's, and the losers
//!   discard theirs. Used for the thread-exit pthread key; the loom model
//!   `publish_once_races` specifies it.
//! * [`RunOnce`]: work with side effects that must happen exactly once (the
//!   `pthread_atfork` registration, reading the options): the first caller
//!   runs it, racing callers wait until it is done, and a call re-entered
//!   from inside the work (the C library's `malloc`, called by libc while
//!   registering) returns at once. The loom model `run_once_races`
//!   specifies it.

use crate::sync::{AtomicUsize, Ordering, spin_hint, yield_thread};

/// A cell holding `value + 1`, or 0 while nothing is published.
pub(crate) struct Once {
    cell: AtomicUsize,
}

impl Once {
    /// An empty cell.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Once {
        Once {
            cell: AtomicUsize::new(0),
        }
    }

    /// An empty cell.
    #[cfg(loom)]
    pub(crate) fn new() -> Once {
        Once {
            cell: AtomicUsize::new(0),
        }
    }

    /// The published value, creating it with `create` if there is none yet.
    /// If another thread publishes first, our value goes to `discard` and
    /// theirs is returned. `None` if `create` fails (nothing is published).
    pub(crate) fn get_or_publish(
        &self,
        create: impl FnOnce() -> Option<usize>,
        discard: impl FnOnce(usize),
    ) -> Option<usize> {
        // Acquire pairs with the Release CAS below: the value is complete.
        let published = self.cell.load(Ordering::Acquire);
        if published != 0 {
            return Some(published - 1);
        }
        let ours = create()?;
        let encoded = ours.checked_add(1)?;
        // Release pairs with the Acquire load above (and with our own
        // failure load); Acquire on failure to read the winner's value.
        match self
            .cell
            .compare_exchange(0, encoded, Ordering::Release, Ordering::Acquire)
        {
            Ok(_) => Some(ours),
            Err(winner) => {
                discard(ours);
                Some(winner - 1)
            }
        }
    }
}

/// [`RunOnce`]'s state: nothing run yet.
const NOT_RUN: usize = 0;
/// [`RunOnce`]'s state: the work is done.
const DONE: usize = 1;
// Any other value: the id (≥ 2) of the thread running the work.

/// Work run exactly once per process. See the module documentation.
pub(crate) struct RunOnce {
    state: AtomicUsize,
}

impl RunOnce {
    /// Work not run yet.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> RunOnce {
        RunOnce {
            state: AtomicUsize::new(NOT_RUN),
        }
    }

    /// Work not run yet.
    #[cfg(loom)]
    pub(crate) fn new() -> RunOnce {
        RunOnce {
            state: AtomicUsize::new(NOT_RUN),
        }
    }

    /// Runs `work` if no thread has run it, or waits until the thread that
    /// is running it is done. `thread_id` (≥ 2, distinct per thread) names
    /// the caller: a call from inside `work` on the same thread returns at
    /// once, without waiting for itself.
    pub(crate) fn call(&self, thread_id: usize, work: impl FnOnce()) {
        // Acquire pairs with the Release store of `DONE` below: the work's
        // effects are visible once we see it done.
        let mut state = self.state.load(Ordering::Acquire);
        if state == NOT_RUN {
            // Acquire on failure: as for the load above.
            match self.state.compare_exchange(
                NOT_RUN,
                thread_id,
                Ordering::Relaxed,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    work();
                    // Release pairs with the Acquire loads of the waiters.
                    self.state.store(DONE, Ordering::Release);
                    return;
                }
                Err(current) => state = current,
            }
        }
        let mut spins = 0u32;
        while state != DONE && state != thread_id {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                spin_hint();
            } else {
                yield_thread();
            }
            // Acquire: as for the first load.
            state = self.state.load(Ordering::Acquire);
        }
    }
}

/// Spins of a waiting `RunOnce` caller before it starts yielding.
const SPINS_BEFORE_YIELD: u32 = 64;
