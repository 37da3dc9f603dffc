//! loom model of the cache of empty segments (`segment_cache::SegmentCache`,
//! real code under `--cfg loom`).
#![cfg(loom)]

use loom::thread;
use shardalloc::__loom::{self as model, SegmentCacheModel};
use shardalloc_loom_tests::{assert_all_released, builder};
use std::sync::Arc;

/// Two threads offer segments to a one-slot cache while a third takes:
/// every cached segment is taken exactly once, no segment is both cached and
/// released, and nothing leaks.
#[test]
fn segment_cache_put_races_take() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let cache = Arc::new(SegmentCacheModel::new());
        let putters: Vec<_> = (0..2)
            .map(|_| {
                let cache = Arc::clone(&cache);
                thread::spawn(move || cache.put_new(1))
            })
            .collect();
        let mut taken: Vec<usize> = cache.take().into_iter().collect();
        let cached: Vec<usize> = putters
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        while let Some(address) = cache.take() {
            taken.push(address);
        }
        taken.sort_unstable();
        let mut expected = cached;
        expected.sort_unstable();
        assert_eq!(taken, expected, "each cached segment taken exactly once");
        assert_all_released(baseline);
    });
}
