//! A value created once per process by whichever thread gets there first,
//! without a lock: racing creators each make one, one CAS publishes the
//! winner's, and the losers discard theirs. Used for the thread-exit
//! pthread key; the loom model `publish_once_races` specifies it.

use crate::sync::{AtomicUsize, Ordering};

/// A slot holding `value + 1`, or 0 while nothing is published.
pub(crate) struct Once {
    slot: AtomicUsize,
}

impl Once {
    /// An empty slot.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Once {
        Once {
            slot: AtomicUsize::new(0),
        }
    }

    /// An empty slot.
    #[cfg(loom)]
    pub(crate) fn new() -> Once {
        Once {
            slot: AtomicUsize::new(0),
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
        let published = self.slot.load(Ordering::Acquire);
        if published != 0 {
            return Some(published - 1);
        }
        let ours = create()?;
        let encoded = ours.checked_add(1)?;
        // Release pairs with the Acquire load above (and with our own
        // failure load); Acquire on failure to read the winner's value.
        match self
            .slot
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
