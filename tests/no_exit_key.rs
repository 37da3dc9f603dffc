//! Review defect 6: when the process has no pthread key left for
//! shardalloc's thread-exit hook, a thread must still allocate (its heap is
//! then never torn down at exit), and `Stats::threads_without_exit_hook`
//! says so.
//!
//! This binary keeps the system allocator as its global allocator, so
//! shardalloc is untouched (and its exit key not yet created) until the test
//! uses it, after taking every pthread key the process has.
//!
//! Run: `cargo test --release --test no_exit_key`.

use shardalloc::ShardAlloc;
use std::alloc::{GlobalAlloc, Layout};

#[test]
fn threads_allocate_when_no_pthread_key_is_left() {
    // Take every key left.
    let mut keys = Vec::new();
    loop {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: a valid out-pointer, no destructor.
        if unsafe { libc::pthread_key_create(&raw mut key, None) } != 0 {
            break;
        }
        keys.push(key);
        assert!(keys.len() < 1 << 20, "pthread keys seem unlimited");
    }
    let layout = Layout::from_size_align(100, 8).unwrap();
    let allocate_and_free = move || {
        // SAFETY: a nonzero layout; the block is freed once.
        unsafe {
            let p = ShardAlloc.alloc(layout);
            assert!(!p.is_null(), "allocation failed without an exit key");
            p.write_bytes(0x5A, 100);
            assert_eq!(p.add(99).read(), 0x5A);
            ShardAlloc.dealloc(p, layout);
        }
    };
    allocate_and_free();
    std::thread::spawn(allocate_and_free).join().unwrap();
    let without = shardalloc::stats().threads_without_exit_hook;
    for key in keys {
        // SAFETY: our own keys.
        unsafe { libc::pthread_key_delete(key) };
    }
    assert_eq!(without, 2, "both threads counted");
}
