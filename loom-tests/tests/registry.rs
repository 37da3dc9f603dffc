//! loom model of the heap registry's growth and its free stack of entries
//! (`src/registry.rs`), on shardalloc's real code (`--cfg loom`: chunks of
//! 2, 4 and 8 entries).
#![cfg(loom)]

use loom::sync::{Arc, Mutex};
use loom::thread;
use shardalloc::__loom::{self as model, RegistryModel};
use shardalloc_loom_tests::{assert_all_released, builder};

/// Claims an entry and records it as held, asserting nobody else holds it.
fn claim(registry: &RegistryModel, held: &Mutex<Vec<usize>>) -> usize {
    let index = registry.claim().expect("an entry");
    let mut held = held.lock().unwrap();
    assert!(!held.contains(&index), "entry {index} claimed twice");
    held.push(index);
    index
}

fn release(registry: &RegistryModel, held: &Mutex<Vec<usize>>, index: usize) {
    held.lock().unwrap().retain(|&i| i != index);
    registry.release(index);
}

/// Entries 0 and 1 (the first chunk) wait on the free stack. Thread 1
/// claims one and releases it; thread 2 claims two and releases the first
/// (the pops and the push that make ABA possible: a stale pop whose CAS
/// succeeded would put an entry in use back on top); with three held at
/// once a claim takes a never-used entry, which maps the second chunk.
/// No entry is ever held twice, and afterwards the free stack holds every
/// entry ever used exactly once, `entries()` visits them all, and the
/// second chunk is unmapped with the registry.
#[test]
fn registry_claims_race_releases_and_growth() {
    builder().check(|| {
        let baseline = model::live_mappings();
        let registry = Arc::new(RegistryModel::new());
        let held = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (claim(&registry, &held), claim(&registry, &held));
        release(&registry, &held, b);
        release(&registry, &held, a);
        let one = {
            let (registry, held) = (Arc::clone(&registry), Arc::clone(&held));
            thread::spawn(move || {
                let x = claim(&registry, &held);
                release(&registry, &held, x);
            })
        };
        let two = {
            let (registry, held) = (Arc::clone(&registry), Arc::clone(&held));
            thread::spawn(move || {
                let y = claim(&registry, &held);
                let z = claim(&registry, &held);
                release(&registry, &held, y);
                z
            })
        };
        one.join().unwrap();
        let z = two.join().unwrap();
        release(&registry, &held, z);
        assert_eq!(registry.heaps(), 0);
        let used = registry.entries();
        assert!((2..=3).contains(&used), "{used} entries used");
        let mut free = registry.free_stack();
        free.sort_unstable();
        assert_eq!(
            free,
            (0..used).collect::<Vec<_>>(),
            "every entry free exactly once"
        );
        drop(registry);
        assert_all_released(baseline);
    });
}
