//! Shared pieces of the loom models in `tests/`. The models run shardalloc's
//! real code compiled with `--cfg loom`:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shardalloc-loom-tests --release
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS` bounds the exploration (2 in CI; 3 or more for a
//! deeper run, see `scripts/test-all.sh`).
#![cfg(loom)]

/// Thread ids of the model threads (any distinct values other than 0 and 1).
pub const OWNER: usize = 0x1000;
/// A thread that frees blocks it was handed.
pub const REMOTE_A: usize = 0x2000;
/// A second remote thread.
pub const REMOTE_B: usize = 0x3000;

/// A block pointer handed to another model thread (the hand-off a real
/// program makes through its own synchronisation: loom's spawn and join).
#[derive(Clone, Copy, Debug)]
pub struct SendPtr(pub *mut u8);

// SAFETY: the pointer is only used by the thread it is moved to, as the
// block's sole holder.
unsafe impl Send for SendPtr {}

/// A loom model builder: `LOOM_MAX_PREEMPTIONS` from the environment, or 3.
pub fn builder() -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder
}

/// Asserts that every mapping a model made since `baseline` (a reading of
/// `shardalloc::__loom::live_mappings` at its start) was released exactly
/// once.
pub fn assert_all_released(baseline: usize) {
    assert_eq!(
        shardalloc::__loom::live_mappings(),
        baseline,
        "every segment released exactly once"
    );
}
