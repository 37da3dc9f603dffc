//! loom model of the purge thread's sleep (`sync::Sleeper`, design §4.7):
//! the purge thread sleeps while no memory is warm, and every thread that
//! makes memory warm publishes it, then wakes the sleeper. Under loom the
//! futex is a mutex and a condition variable with the kernel's contract.
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use shardalloc::__loom::ModelSleeper;
use shardalloc_loom_tests::builder;

/// The purge thread's loop around the sleep: sleep while nothing is warm,
/// then take what there is; stop once `total` units were taken.
fn purge_loop(sleeper: &ModelSleeper, warm: &AtomicUsize, total: usize) {
    let mut taken = 0;
    while taken < total {
        // Relaxed: the Sleeper's fences order the check (see its documentation).
        sleeper.sleep_while(|| warm.load(Ordering::Relaxed) == 0);
        // Relaxed: a counter; the sleeper only needs to see it nonzero.
        taken += warm.swap(0, Ordering::Relaxed);
    }
}

/// Two threads each make memory warm once, at any point of the sleeper's
/// announce–check–wait sequence (before it, between its fence and its
/// wait, while it sleeps, after it woke for the other one): the sleeper
/// always ends up taking both. A lost wake-up leaves it asleep with work
/// published and every other thread finished, which loom reports as a
/// deadlock.
#[test]
fn sleeper_never_misses_work() {
    builder().check(|| {
        let sleeper = Arc::new(ModelSleeper::new());
        let warm = Arc::new(AtomicUsize::new(0));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (sleeper, warm) = (Arc::clone(&sleeper), Arc::clone(&warm));
                thread::spawn(move || {
                    // Relaxed: `wake`'s fence orders it before the check of
                    // the sleeper's flag.
                    warm.fetch_add(1, Ordering::Relaxed);
                    sleeper.wake();
                })
            })
            .collect();
        purge_loop(&sleeper, &warm, 2);
        for producer in producers {
            producer.join().expect("producer");
        }
    });
}
