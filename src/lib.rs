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
//! ## Per-subsystem heaps
//!
//! A [`Heap`] is a heap of one's own — for a request, a connection, a
//! compiler pass — with the global allocator's speed, single frees, and a
//! wholesale [`Heap::destroy`]. Collections take it through
//! `allocator-api2` (default feature), and borrow it, so nothing allocated
//! from it can outlive `destroy`:
//!
//! ```
//! use allocator_api2::vec::Vec;
//! use hashbrown::HashMap;
//! use shardalloc::Heap;
//!
//! let heap = Heap::new();
//! heap.set_limit(Some(64 << 20)); // allocations beyond 64 MiB fail cleanly
//! {
//!     let mut seen: HashMap<u64, u64, _, &Heap> = HashMap::new_in(&heap);
//!     let mut order: Vec<u64, &Heap> = Vec::new_in(&heap);
//!     for key in 0..10_000u64 {
//!         *seen.entry(key % 1000).or_insert(0) += 1;
//!         order.push(key);
//!     }
//!     assert_eq!(seen.len(), 1000);
//!     assert!(heap.contains(order.as_ptr().cast()));
//!     assert!(heap.stats().live_blocks >= 2);
//! }
//! heap.destroy(); // every page at once, in time proportional to the pages
//! ```
//!
//! The guide is in the README ("Per-subsystem heaps"); the rules for threads
//! and for `destroy` are on [`Heap`].
//!
//! ## How it is built
//!
//! From the call downward (each a module, see `docs/design.md` §1):
//!
//! * `global` — [`ShardAlloc`] and [`collect`]: routing only;
//! * `free` — [`free()`] and [`usable_size`]: the whole free path;
//! * `first_class` — [`Heap`], first-class heaps;
//! * `report` — [`stats()`] and [`print_stats`];
//! * `thread` — the thread's default heap behind a thread-local pointer,
//!   thread start and exit, the fork handlers;
//! * `heap` — `RawHeap`, the heap behind both, in child modules: page
//!   queues and the direct table, the generic allocation path, segment
//!   lists, the reset queue, the reaper, abandon and reclaim, the delayed
//!   list;
//! * `process` — process-wide state: the abandoned-segment list, the
//!   segment cache, the heap registry;
//! * `page` — blocks of one size with three free lists (`free`,
//!   `local_free`, atomic `thread_free`);
//! * `segment` — 4 MiB-aligned regions split into pages; pointer → page in O(1);
//! * `registry` — an entry and a lock per live heap, through which other
//!   threads give back an idle heap's memory and `stats()` counts it;
//! * leaves: `os`, `stats` (counters), `options`, `size_class`, `once`,
//!   `sync` (the loom switch), `fatal`.

//! ## Rules for code inside the allocator
//!
//! No allocation, no locks but each heap's own (held on its slow paths,
//! never on the fast paths), no panics (one `fatal` that writes with
//! `libc::write` and aborts), strict-provenance pointer arithmetic, and a
//! `// SAFETY:` comment on every `unsafe` block.

#![cfg_attr(loom, allow(dead_code, unreachable_pub))]

mod decay;
mod fatal;
#[cfg(not(loom))]
mod first_class;
mod free;
#[cfg(not(loom))]
mod global;
mod heap;
mod once;
pub mod options;
mod os;
mod page;
mod process;
#[cfg(not(any(loom, miri)))]
mod purge_thread;
mod registry;
#[cfg(not(loom))]
mod report;
#[cfg(feature = "secure")]
mod secure;
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
pub use free::{free, usable_size};
#[cfg(not(loom))]
pub use global::{ShardAlloc, collect};
#[cfg(not(loom))]
pub use report::{Stats, print_stats, stats};

#[cfg(not(any(loom, miri)))]
pub use os::resident_bytes;

/// Starts the purge thread if `SHARDALLOC_PURGE_THREAD` (or
/// `options::set_purge_thread`) allows it and none runs: for the C library's
/// load-time constructor, which must not start it from inside `malloc`.
/// A Rust program never needs it (the thread starts by itself).
#[cfg(not(any(loom, miri)))]
#[doc(hidden)]
pub fn start_purge_thread() {
    purge_thread::start_at_load();
}

#[cfg(loom)]
#[doc(hidden)]
pub mod __loom;
