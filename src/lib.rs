//! # shardalloc
//!
//! A general-purpose memory allocator in pure Rust, in the mimalloc family:
//! free lists sharded per page, a heap per thread, lock-free frees from other
//! threads, and memory that goes back to the OS as pages empty.
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;
//!
//! let v: Vec<u64> = (0..1000).collect();
//! assert_eq!(v.iter().sum::<u64>(), 499_500);
//! ```
//!
//! ## How it is built
//!
//! From the call downward (each a module, see `docs/design.md`):
//!
//! * `global` — [`ShardAlloc`] and [`usable_size`]: routing only;
//! * `thread` — the thread's default heap behind a thread-local pointer,
//!   thread start and exit;
//! * `heap` — page queues per size class, the direct table, the delayed-free
//!   list;
//! * `page` — blocks of one size with three free lists (`free`,
//!   `local_free`, atomic `thread_free`);
//! * `segment` — 4 MiB-aligned regions split into pages; pointer → page in O(1);
//! * `abandon` — segments of exited threads and their reclaim;
//! * `size_class`, `os`, `sync` (the loom switch), `fatal`.
//!
//! ## Rules for code inside the allocator
//!
//! No allocation, no locks, no panics (one `fatal` that writes with
//! `libc::write` and aborts), strict-provenance pointer arithmetic, and a
//! `// SAFETY:` comment on every `unsafe` block.

#![cfg_attr(loom, allow(dead_code, unreachable_pub))]

mod abandon;
mod fatal;
#[cfg(not(loom))]
mod first_class;
#[cfg(not(loom))]
mod global;
mod heap;
mod once;
pub mod options;
mod os;
mod page;
mod registry;
mod segment;
mod segment_cache;
mod size_class;
mod stats;
mod sync;
#[cfg(not(loom))]
mod thread;

#[cfg(not(loom))]
pub use first_class::{Heap, HeapError, HeapStats};
#[cfg(not(loom))]
pub use global::{ShardAlloc, collect, free, usable_size};
#[cfg(not(loom))]
pub use stats::{Stats, print_stats, stats};

#[cfg(not(any(loom, miri)))]
pub use os::resident_bytes;

#[cfg(loom)]
#[doc(hidden)]
pub mod __loom;
