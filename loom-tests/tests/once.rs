//! loom model of the publish-once cell behind the thread-exit pthread key
//! (`once::Once`, real code under `--cfg loom`).
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use shardalloc::__loom::PublishOnce;
use shardalloc_loom_tests::builder;
use std::sync::Arc;

/// Two threads race to create the value: both end up with the same one,
/// exactly one created value is discarded, and it is not the published one.
#[test]
fn publish_once_races() {
    builder().check(|| {
        let once = Arc::new(PublishOnce::new());
        let discarded = Arc::new(AtomicUsize::new(0));
        let racers: Vec<_> = [10, 20]
            .into_iter()
            .map(|mine| {
                let (once, discarded) = (Arc::clone(&once), Arc::clone(&discarded));
                thread::spawn(move || {
                    once.get_or_publish(
                        || Some(mine),
                        |lost| {
                            assert_eq!(lost, mine, "only our own value is discarded");
                            discarded.fetch_add(lost, Ordering::Relaxed);
                        },
                    )
                })
            })
            .collect();
        let seen: Vec<Option<usize>> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let winner = seen[0].expect("creation succeeds");
        assert_eq!(seen[1], Some(winner), "both threads see one value");
        let lost = discarded.load(Ordering::Relaxed);
        assert!(
            lost == 0 || lost + winner == 30,
            "the loser's value, and only it, is discarded"
        );
        assert_eq!(
            once.get_or_publish(|| None, |_| unreachable!()),
            Some(winner)
        );
    });
}

/// Two threads race to run the start-up work (`once::RunOnce`): it runs
/// exactly once, and both callers return only after its effects are
/// visible to them (the work's write is a plain, loom-tracked one, so a
/// caller that returned before the work was published fails the model). A
/// call from inside the work returns at once.
#[test]
fn run_once_races() {
    use loom::cell::UnsafeCell;
    use shardalloc::__loom::RunOnceGate;
    use shardalloc_loom_tests::{OWNER, REMOTE_A};

    builder().check(|| {
        let gate = Arc::new(RunOnceGate::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let effect = Arc::new(UnsafeCell::new(0usize));
        let racers: Vec<_> = [OWNER, REMOTE_A]
            .into_iter()
            .map(|id| {
                let (gate, runs, effect) =
                    (Arc::clone(&gate), Arc::clone(&runs), Arc::clone(&effect));
                thread::spawn(move || {
                    let inner = Arc::clone(&gate);
                    gate.call(id, || {
                        runs.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: only the thread running the work writes.
                        effect.with_mut(|value| unsafe { *value = 42 });
                        // Re-entered from inside the work: returns at once.
                        inner.call(id, || panic!("the work ran twice"));
                    });
                    // SAFETY: a read after the work is done; loom checks the
                    // ordering.
                    effect.with(|value| unsafe { *value })
                })
            })
            .collect();
        for racer in racers {
            assert_eq!(racer.join().unwrap(), 42, "the work's effect is visible");
        }
        assert_eq!(runs.load(Ordering::Relaxed), 1, "the work ran exactly once");
    });
}
