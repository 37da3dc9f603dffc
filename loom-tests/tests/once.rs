//! loom model of the publish-once slot behind the thread-exit pthread key
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
