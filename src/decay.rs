//! Decay: how long unused page memory stays warm before it goes back to the
//! OS, and how much of it the process keeps.
//!
//! Memory that empties is not given back at once (the next burst would fault
//! it in again, 4 KiB at a time) nor after a fixed delay (a cliff: everything
//! freed together goes together). A heap's unused slots go back along a
//! smooth curve over the *decay time* `T` (`options::reset_delay_ms`,
//! 500 ms by default): of the bytes that have been unused for `age`, the
//! share `smootherstep(age / T)` is due, so almost nothing goes in the first
//! tenth of `T`, half by `T / 2`, all by `T`. A slot reused before then is
//! simply taken off the queue: memory reused within the decay time is never
//! given back. The heap's owner applies the curve on its slow paths once per
//! [`epoch_ms`], a reaper (another thread's slow path, or the purge thread
//! when the whole program is quiet) for an owner that has gone quiet
//! (`heap/reap.rs`, `purge_thread.rs`).
//!
//! The warm memory is also bounded process-wide, not per heap: [`WARM`]
//! counts the bytes every heap keeps unused and dirty (its reset queue's
//! slots and huge spares). While it is above both the floor
//! (`options::pending_reset_limit`, 32 MiB by default) and the memory in use
//! (`stats::COMMITTED − WARM`), the heap that adds to it gives back its own
//! oldest slots at once. So a program that drops a structure as large as the
//! one it keeps finds all of it warm for the next build, and one that drops
//! everything keeps at most the floor while the curve runs.

use crate::stats::{COMMITTED, Counter};

/// Bytes of unused, dirty page memory that heaps keep warm: slots on their
/// reset queues and huge spares. Statistics ordering (`Relaxed`): a budget,
/// read on its own.
pub(crate) static WARM: Counter = Counter::new();

/// Whoever waits for warm memory to appear (the purge thread, asleep
/// while [`WARM`] is 0).
#[cfg(not(any(loom, miri)))]
pub(crate) static WARM_WAITER: crate::sync::Sleeper = crate::sync::Sleeper::new();

/// Adds `bytes` to [`WARM`], and wakes [`WARM_WAITER`] if it sleeps.
#[inline]
pub(crate) fn add_warm(bytes: usize) {
    WARM.add(bytes);
    #[cfg(not(any(loom, miri)))]
    WARM_WAITER.wake();
}

/// Fixed-point one: shares are in `0..=ONE`.
pub(crate) const ONE: u64 = 1 << 16;

/// Epochs per decay time: how often an owner (or reaper) applies the curve.
const EPOCHS: u64 = 16;

/// How often the curve is applied, in ms, for a decay time of `decay_ms`.
pub(crate) fn epoch_ms(decay_ms: u64) -> u64 {
    (decay_ms / EPOCHS).max(1)
}

/// The share (`0..=ONE`) of memory unused for `age_ms` that is due to go
/// back under a decay time of `decay_ms`: `6x⁵ − 15x⁴ + 10x³` with
/// `x = age / decay`, clamped to `[0, 1]` (jemalloc's smootherstep: the
/// rate starts and ends at zero, so a burst freed together leaves over the
/// whole window rather than at one instant).
pub(crate) fn due_share(age_ms: u64, decay_ms: u64) -> u64 {
    if age_ms >= decay_ms {
        return ONE;
    }
    // x in 0..ONE (16 bits): x⁵ fits in 80 bits, so u128 holds the exact
    // polynomial, and its floor is as monotone as the curve.
    let x = u128::from(age_ms * ONE / decay_ms);
    let one = u128::from(ONE);
    let x3 = x * x * x;
    let scaled = 10 * x3 * one * one + 6 * x3 * x * x - 15 * x3 * x * one;
    (scaled / (one * one * one * one)) as u64
}

/// The bytes of a slot of `bytes` unused for `age_ms` that are due.
pub(crate) fn due_bytes(bytes: usize, age_ms: u64, decay_ms: u64) -> usize {
    let share = due_share(age_ms, decay_ms);
    // u128: bytes × share cannot overflow.
    ((bytes as u128 * u128::from(share)) >> 16) as usize
}

/// The process keeps more warm memory than it may: above the floor and
/// above the memory in use.
pub(crate) fn over_budget(floor: usize) -> bool {
    let warm = WARM.get();
    warm > floor && warm > COMMITTED.get().saturating_sub(warm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_starts_flat_is_half_at_the_middle_and_ends_at_one() {
        assert_eq!(due_share(0, 500), 0);
        // Under 0.2 % in the first 5 % of the window: a burst that
        // returns quickly finds its pages warm.
        assert!(due_share(25, 500) < ONE / 500, "{}", due_share(25, 500));
        let half = due_share(250, 500);
        assert!(half.abs_diff(ONE / 2) < ONE / 100, "{half}");
        assert!(due_share(475, 500) > ONE - ONE / 500);
        assert_eq!(due_share(500, 500), ONE);
        assert_eq!(due_share(u64::MAX, 500), ONE);
    }

    #[test]
    fn the_curve_never_decreases() {
        for decay in [1, 7, 100, 500, 60_000] {
            let mut last = 0;
            for age in 0..=decay + 1 {
                let share = due_share(age, decay);
                assert!(share >= last, "decay {decay} age {age}: {share} < {last}");
                assert!(share <= ONE);
                last = share;
            }
        }
    }

    #[test]
    fn due_bytes_scale_with_the_share() {
        assert_eq!(due_bytes(64 << 10, 0, 500), 0);
        assert_eq!(due_bytes(64 << 10, 500, 500), 64 << 10);
        let half = due_bytes(1 << 20, 250, 500);
        assert!(half.abs_diff(1 << 19) < (1 << 20) / 100, "{half}");
        assert_eq!(due_bytes(usize::MAX, 1000, 500), usize::MAX);
    }

    #[test]
    fn epochs_are_a_sixteenth_of_the_decay_time_and_never_zero() {
        assert_eq!(epoch_ms(500), 31);
        assert_eq!(epoch_ms(10), 1);
        assert_eq!(epoch_ms(0), 1);
    }
}
