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
//! slots and huge spares). While it is above the floor
//! (`options::pending_reset_limit`, 32 MiB by default), the memory in use
//! (`stats::COMMITTED − WARM`) and the most memory in use in pages within the
//! last decay time, the heap that adds to it gives back its own oldest slots
//! at once ([`over_budget`]). So a program that drops a structure as large
//! as the one it keeps finds all of it warm for the next build, and one that
//! drops everything keeps at most the floor once that window has passed.

use crate::stats::{COMMITTED, Counter, HUGE_LIVE};
// core atomics even under loom, as in `stats`: a statistic, read on its own.
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes of unused, dirty page memory that heaps keep warm: slots on their
/// reset queues and huge spares. Statistics ordering (`Relaxed`): a budget,
/// read on its own.
pub(crate) static WARM: Counter = Counter::new();

/// Whoever waits for warm memory to appear (the purge thread, asleep
/// while [`WARM`] is 0).
#[cfg(not(any(loom, miri)))]
pub(crate) static WARM_WAITER: crate::sync::Sleeper = crate::sync::Sleeper::new();

/// Bytes of huge blocks that other threads freed while their owner lives:
/// on the owner's delayed list with their memory, for the owner's next huge
/// block to reuse warm, until the owner takes them or a reaper gives their
/// memory back (`heap/reset.rs`, "remote huge"). Not in [`WARM`] (they are
/// still live blocks to the owner's heap, in `stats::HUGE_LIVE`), but the
/// purge thread wakes for them too. Statistics ordering, as [`WARM`].
pub(crate) static DELAYED_HUGE: Counter = Counter::new();

/// Memory a reaper may give back: [`WARM`] and [`DELAYED_HUGE`]. The purge
/// thread sleeps while it is 0.
pub(crate) fn reclaimable() -> usize {
    WARM.get().saturating_add(DELAYED_HUGE.get())
}

/// Adds `bytes` to [`DELAYED_HUGE`], and wakes [`WARM_WAITER`] if it sleeps.
pub(crate) fn add_delayed_huge(bytes: usize) {
    DELAYED_HUGE.add(bytes);
    #[cfg(not(any(loom, miri)))]
    WARM_WAITER.wake();
}

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

/// The process keeps more warm memory than it may: above the floor, above
/// the memory in use, and above the most memory in use in pages (huge
/// blocks left out) within the last decay time.
///
/// The recent peak, not only the memory in use at this instant: a program
/// that builds a structure beside the one it is about to drop holds both
/// for a moment, then frees the old one while the new one is still smaller
/// than it; measured against the instant, that warm memory (which the next
/// build takes back) would go back at once and be faulted in again
/// (`rebuild` at two threads: 120–270 MiB reset and faulted back a run).
/// Huge blocks stay out of the peak: one counts its whole mapping, touched
/// or not, and a spare kept because a block as large was live a moment ago
/// could be far larger than the memory the program ever touched.
pub(crate) fn over_budget(floor: usize) -> bool {
    let warm = WARM.get();
    if warm <= floor {
        return false;
    }
    let in_use = COMMITTED.get().saturating_sub(warm);
    // Sampled on every call above the floor, so that the peak is seen.
    let in_pages = in_use.saturating_sub(HUGE_LIVE.get());
    let peak = PEAK_IN_PAGES.sample(
        in_pages,
        crate::os::now_ms(),
        crate::options::reset_delay_ms(),
    );
    warm > in_use.max(peak)
}

/// The most memory in use in pages within a sliding window: a sample above
/// the peak, or one taken after the window has passed since the peak was
/// seen, becomes the peak. Statistics ordering (`Relaxed`): a racing update
/// loses a sample, which at worst gives back warm memory a little early or
/// keeps it until its decay.
struct RecentPeak {
    bytes: AtomicUsize,
    at_ms: AtomicU64,
}

impl RecentPeak {
    const fn new() -> RecentPeak {
        RecentPeak {
            bytes: AtomicUsize::new(0),
            at_ms: AtomicU64::new(0),
        }
    }

    /// Records `bytes` seen at `now_ms` and returns the peak of the last
    /// `window_ms` (at least `bytes`).
    fn sample(&self, bytes: usize, now_ms: u64, window_ms: u64) -> usize {
        // Relaxed: see the type.
        let peak = self.bytes.load(Ordering::Relaxed);
        let at = self.at_ms.load(Ordering::Relaxed);
        if bytes >= peak || now_ms.saturating_sub(at) > window_ms {
            // Relaxed: see the type.
            self.bytes.store(bytes, Ordering::Relaxed);
            self.at_ms.store(now_ms, Ordering::Relaxed);
            return bytes;
        }
        peak
    }
}

/// The peak that [`over_budget`] measures warm memory against.
static PEAK_IN_PAGES: RecentPeak = RecentPeak::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_peak_holds_for_a_window_then_follows_the_samples() {
        let peak = RecentPeak::new();
        assert_eq!(peak.sample(100, 1_000, 500), 100);
        // Lower samples within the window: the peak holds.
        assert_eq!(peak.sample(40, 1_200, 500), 100);
        assert_eq!(peak.sample(60, 1_500, 500), 100);
        // A higher one replaces it at once.
        assert_eq!(peak.sample(150, 1_501, 500), 150);
        // Past the window since the peak was seen: the sample is the peak.
        assert_eq!(peak.sample(30, 2_002, 500), 30);
        assert_eq!(peak.sample(20, 2_100, 500), 30);
    }

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
