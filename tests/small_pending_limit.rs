//! A pending-reset limit below one segment (`SHARDALLOC_PENDING_RESET_KIB` < 4096, a valid
//! setting) must work. It used to crash `Heap::destroy`: the segments a destroyed heap hands to
//! the thread's default heap were read after the pending limit's resets had already freed them
//! (a read of unmapped memory, or a segment cached twice).
//!
//! Run: `cargo test --release --test small_pending_limit`.

use std::alloc::Layout;

use shardalloc::{Heap, options};

#[test]
fn destroy_with_a_pending_limit_below_a_segment() {
    for limit_kib in [0usize, 64, 1024, 3000] {
        options::set_pending_reset_limit(limit_kib * 1024);
        for round in 0..20 {
            let heap = Heap::new();
            for size in [16usize, 1000, 8 * 1024, 40 * 1024, 200 * 1024] {
                let layout = Layout::from_size_align(size, 8).unwrap();
                let blocks: Vec<*mut u8> = (0..200).map(|_| heap.alloc(layout)).collect();
                for &p in &blocks {
                    assert!(!p.is_null(), "limit {limit_kib} KiB round {round}");
                    // SAFETY: a live block of at least `size` bytes.
                    unsafe { p.write_bytes(0x5A, size) };
                }
                for p in blocks.into_iter().step_by(2) {
                    // SAFETY: a live block, freed once.
                    unsafe { heap.dealloc(p) };
                }
            }
            heap.destroy();
        }
    }
}
