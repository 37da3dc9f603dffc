//! The thread's default heap: the thread-local pointer to it, thread start
//! and thread exit.
//!
//! * Every thread's pointer starts at [`EMPTY_HEAP`], a static read-only
//!   heap whose direct table points at the empty page; the first allocation
//!   therefore misses on the fast path with no "initialised?" test, and the
//!   slow path calls [`init_current`].
//! * The heap of a thread is mapped from the OS layer, never from the global
//!   allocator (which is us).
//! * Thread exit runs through a `pthread_key_create` destructor, which glibc
//!   runs after Rust's own thread-local destructors, so frees from those
//!   still find a live heap. It parks a small heap whole for the next
//!   thread to adopt (`heap/park.rs`), or abandons the heap's segments that
//!   still hold blocks. An allocation after that (from a later destructor)
//!   initialises a fresh heap (or adopts a parked one), and glibc runs the
//!   destructor again for it.
//! * A thread's first allocation adopts a parked heap if there is one.
//! * The thread id is a process-wide counter value given at a thread's
//!   first allocation and kept in a second thread-local. It is never reused:
//!   not after a thread exits, and not in a forked child, whose new threads
//!   may get a dead parent thread's stack (and so its thread-local
//!   addresses) but never its id. Blocks of threads that do not exist any
//!   more are therefore always freed as remote frees.

use crate::heap::RawHeap;
use crate::once::{Once, RunOnce};
use crate::os::{self, OS_PAGE_SIZE};
use crate::process::SHARED;
use crate::stats;
use crate::sync::{AtomicUsize, Ordering};
use core::cell::Cell;
use core::ffi::c_void;
use core::ptr::{self, NonNull};

/// The heap of every thread that has not allocated yet. Never written.
static EMPTY_HEAP: RawHeap = RawHeap::empty();

thread_local! {
    /// The calling thread's default heap (or [`EMPTY_HEAP`]).
    static THREAD_HEAP: Cell<*mut RawHeap> = const { Cell::new(empty_heap()) };
    /// The calling thread's id; [`NO_THREAD_ID`] until its first allocation.
    static THREAD_ID: Cell<usize> = const { Cell::new(NO_THREAD_ID) };
    /// The calling thread's live first-class heaps (linked through the
    /// heaps), so `fork` handlers can hold all of the thread's heap locks.
    static FIRST_CLASS_HEAPS: Cell<*mut RawHeap> = const { Cell::new(ptr::null_mut()) };
}

/// The empty heap's address.
#[inline(always)]
pub(crate) const fn empty_heap() -> *mut RawHeap {
    ptr::from_ref(&EMPTY_HEAP).cast_mut()
}

/// The calling thread's default heap; [`empty_heap`] before its first
/// allocation.
#[inline(always)]
pub(crate) fn current_heap() -> *mut RawHeap {
    THREAD_HEAP.with(Cell::get)
}

/// The calling thread's id (see the module documentation).
#[inline(always)]
pub(crate) fn current_thread_id() -> usize {
    THREAD_ID.with(Cell::get)
}

/// The calling thread's id, giving it one if it has none yet.
fn assign_thread_id() -> usize {
    THREAD_ID.with(|cell| {
        if cell.get() == NO_THREAD_ID {
            // Relaxed: ids only need to be distinct.
            cell.set(NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed));
        }
        cell.get()
    })
}

/// The pthread key whose destructor tears a thread's heap down.
static EXIT_KEY: Once = Once::new();

/// Creates the exit key once per process. Returns `None` if the system has
/// no key left.
fn exit_key() -> Option<libc::pthread_key_t> {
    let key = EXIT_KEY.get_or_publish(
        || {
            let mut key: libc::pthread_key_t = 0;
            // SAFETY: `key` is a valid out-pointer; the destructor has the C
            // ABI signature pthread expects.
            let created = unsafe { libc::pthread_key_create(&raw mut key, Some(on_thread_exit)) };
            if created == 0 {
                usize::try_from(key).ok()
            } else {
                None
            }
        },
        |lost| {
            if let Ok(key) = libc::pthread_key_t::try_from(lost) {
                // SAFETY: the losing key is ours and was never used.
                unsafe { libc::pthread_key_delete(key) };
            }
        },
    )?;
    libc::pthread_key_t::try_from(key).ok()
}

/// The process-wide start-up work (see [`init_process`]).
static PROCESS_INIT: RunOnce = RunOnce::new();

/// Once per process, at the first heap: reads the `SHARDALLOC_*` options
/// from the environment and registers the fork handlers with
/// `pthread_atfork`. Exactly once: a thread racing the first one waits
/// until it is done (a second registration would run the handlers twice
/// per fork). `thread_id` is the caller's id; a call re-entered from
/// inside the work on the same thread (libc's `pthread_atfork` may call
/// `malloc`, which may be ours) returns at once.
fn init_process(thread_id: usize) {
    PROCESS_INIT.call(thread_id, || {
        crate::options::read_environment();
        // SAFETY: the handlers have the C ABI signature pthread expects and
        // stay valid for the life of the process. On failure the process
        // still works; only fork safety is lost (nothing to do about it).
        let _ = unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_in_parent),
                Some(after_fork_in_child),
            )
        };
    });
}

/// Runs the process start-up at load time, before `main` and before the
/// constructors of the program (and of most libraries): in every program
/// that links shardalloc, used as its global allocator or not (the work
/// allocates nothing; it reads the options and registers the fork
/// handlers). Without it the first allocation does it, and a first
/// allocation made by glibc's own `pthread_atfork` (which grows its list
/// of handlers with `malloc` while it holds its lock) would call
/// `pthread_atfork` again and wait for that lock forever.
extern "C" fn start_up_at_load() {
    init_process(assign_thread_id());
}

// SAFETY: `.init_array` holds pointers to functions the dynamic linker (or
// the C runtime, for a static link) calls once at load time with the C ABI
// and no arguments; `start_up_at_load` is such a function and needs only
// the crate's statics (const-initialised) and libc, which is initialised
// before the constructors of the objects that depend on it. Priority 90
// (sections sort by name): before the priorities programs use (101 and up).
#[used]
#[unsafe(link_section = ".init_array.00090")]
static START_UP_AT_LOAD: extern "C" fn() = start_up_at_load;

/// Runs before `fork` on the forking thread: holds the lock of every
/// registered heap — its own default and first-class heaps (re-entrantly),
/// then every other thread's, waiting a bounded time for each (see
/// `HeapRegistry::lock_all_for_fork`) — so the child never inherits a heap
/// half-way through a slow path or a reaping pass.
extern "C" fn before_fork() {
    SHARED.heaps.lock_all_for_fork(|mark_own| {
        for_each_own_heap(|heap| {
            // SAFETY: our own heaps, outside any heap operation (fork is not
            // called from inside the allocator).
            unsafe { (*heap).lock_for_fork() };
            // SAFETY: as above.
            if let Some(entry) = unsafe { (*heap).entry() } {
                mark_own(entry);
            }
        });
    });
    // Then the abandoned lists' pop lock: no pop half-way in the child.
    SHARED.abandoned.lock_for_fork();
}

/// Runs after `fork` in the parent: ends [`before_fork`].
extern "C" fn after_fork_in_parent() {
    // SAFETY: our own heaps.
    for_each_own_heap(|heap| unsafe { (*heap).unlock_after_fork() });
    SHARED.abandoned.unlock_after_fork();
    SHARED.heaps.unlock_all_after_fork();
}

/// Runs in a forked child, on its only thread.
///
/// * The forking thread's heaps: their locks go, and every `Freeing` that a
///   parent thread (gone in the child) left on their pages ends, so the
///   owner never waits for it.
/// * The heaps of the parent's other threads (locked by [`before_fork`]):
///   torn down as their threads' exits would have, so their empty pages go
///   back, their live blocks stay valid in abandoned segments that the
///   child's threads adopt, and their registry entries are free again. A heap
///   whose lock `before_fork` could not get is left as it is (leaked).
extern "C" fn after_fork_in_child() {
    // Secure: the child's randomness must not repeat its parent's.
    #[cfg(feature = "secure")]
    crate::secure::reseed_after_fork();
    crate::purge_thread::after_fork_in_child();
    SHARED.abandoned.unlock_after_fork();
    for_each_own_heap(|heap| {
        // SAFETY: our own heap, and no other thread exists.
        unsafe {
            (*heap).unlock_after_fork();
            (*heap).forget_parent_threads();
        }
    });
    // Parked heaps are heaps of vanished threads too: torn down below (or
    // left as they are if `before_fork` could not lock them), never adopted.
    SHARED.parked.forget_after_fork();
    SHARED.heaps.take_heaps_after_fork(|heap| {
        // SAFETY: the only thread; we hold the heap's lock, taken before the
        // fork, and its thread does not exist here.
        unsafe { (*heap).abandon_after_fork() };
    });
}

/// Thread ids handed out so far (0 means "abandoned", 1 the empty heap).
static NEXT_THREAD_ID: AtomicUsize = AtomicUsize::new(FIRST_THREAD_ID);
/// The first id a thread can get.
const FIRST_THREAD_ID: usize = 2;
/// The id of a thread that has not allocated yet: matches no segment.
const NO_THREAD_ID: usize = 1;

/// Bytes mapped for one thread's heap.
const HEAP_MAP_SIZE: usize = match os::checked_align_up(size_of::<RawHeap>(), OS_PAGE_SIZE) {
    Some(size) => size,
    None => panic!("heap size overflows"),
};

/// Gives the calling thread a real default heap. Returns null if the OS
/// refuses memory (the allocation then fails with null).
#[cold]
#[inline(never)]
pub(crate) fn init_current() -> *mut RawHeap {
    init_current_adopting(true)
}

/// [`init_current`] for the purge thread: a heap of its own, never a parked
/// one (it allocates nothing and sleeps: an adopted heap's pages would wait
/// there, unused, while the next thread maps fresh ones).
#[cfg(not(any(loom, miri)))]
pub(crate) fn init_current_without_adopting() -> *mut RawHeap {
    init_current_adopting(false)
}

/// [`init_current`], adopting a parked heap only if `adopt`.
fn init_current_adopting(adopt: bool) -> *mut RawHeap {
    let current = current_heap();
    if current != empty_heap() {
        return current;
    }
    let thread_id = assign_thread_id();
    init_process(thread_id);
    // The start-up work may have allocated on this thread (libc's
    // `pthread_atfork` calls `malloc`, which is ours when preloaded), and
    // so made this thread's heap already.
    let current = current_heap();
    if current != empty_heap() {
        return current;
    }
    // A heap an exited thread parked, with its pages set up, or a new one.
    let mut heap = if adopt {
        crate::heap::adopt_parked(&SHARED, thread_id)
    } else {
        ptr::null_mut()
    };
    if heap.is_null() {
        heap = new_heap(thread_id);
    }
    if heap.is_null() {
        return heap;
    }
    THREAD_HEAP.with(|cell| cell.set(heap));
    // SAFETY: the key exists; the heap stays valid until the destructor.
    let hooked = exit_key()
        .is_some_and(|key| unsafe { libc::pthread_setspecific(key, heap.cast::<c_void>()) } == 0);
    if !hooked {
        // No key left in the process (or no memory for its value): the
        // thread allocates all the same, but its heap is never torn down at
        // exit — its segments are not abandoned for other threads, a leak
        // rather than a fault. Counted, so it is visible.
        stats::THREADS_WITHOUT_EXIT_HOOK.add(1);
    }
    heap
}

/// A heap for thread `thread_id`, registered (see `registry`) if the
/// registry has room; its memory is a former heap's, kept by the registry
/// entry, or fresh from the OS. Null if the OS refuses memory.
fn new_heap(thread_id: usize) -> *mut RawHeap {
    let entry = SHARED.heaps.claim();
    let mut heap = entry.map_or(ptr::null_mut(), |entry| entry.spare_memory());
    if heap.is_null() {
        let Some(memory) = os::map(HEAP_MAP_SIZE, OS_PAGE_SIZE, 0) else {
            if let Some(entry) = entry {
                SHARED.heaps.release(entry);
            }
            return ptr::null_mut();
        };
        heap = memory.cast::<RawHeap>().as_ptr();
    }
    // SAFETY: memory large enough and aligned for a `RawHeap`, which nobody
    // else uses: fresh, or the spare of a entry we hold (its former heap was
    // torn down before the entry was released).
    unsafe {
        heap.write(RawHeap::new(thread_id, ptr::from_ref(&SHARED)));
        if let Some(entry) = entry {
            (*heap).register(entry);
        }
    }
    heap
}

/// A first-class heap for the calling thread (see `shardalloc::Heap`);
/// null if the OS refuses memory.
pub(crate) fn new_first_class_heap() -> *mut RawHeap {
    let thread_id = assign_thread_id();
    init_process(thread_id);
    let heap = new_heap(thread_id);
    if heap.is_null() {
        return heap;
    }
    // The thread's default heap takes the heap's segments when it is
    // destroyed (and hands empty ones back), so request after request
    // reuses the same memory.
    let heir = init_current();
    // SAFETY: our own fresh heap; the list holds only live heaps of this
    // thread; the heir is this thread's default heap, and `on_thread_exit`
    // clears it before tearing that heap down.
    unsafe {
        (*heap).set_first_class();
        (*heap).set_heir(heir);
        let first = FIRST_CLASS_HEAPS.with(Cell::get);
        (*heap).next_first_class.set(first);
        if !first.is_null() {
            (*first).prev_first_class.set(heap);
        }
    }
    FIRST_CLASS_HEAPS.with(|cell| cell.set(heap));
    heap
}

/// Tears a first-class heap down: with `destroy`, releasing its memory and
/// every block in it; otherwise abandoning it as thread exit would (its
/// live blocks stay valid, see `docs/design.md`). Its memory goes back.
///
/// # Safety
/// `heap` came from [`new_first_class_heap`] on this thread and is not used
/// again; with `destroy`, no block of it is used again either.
pub(crate) unsafe fn drop_first_class_heap(heap: *mut RawHeap, destroy: bool) {
    // SAFETY: a live first-class heap of this thread (caller); the list
    // links are cells of this thread's live heaps.
    let raw = unsafe { &*heap };
    let (prev, next) = (raw.prev_first_class.get(), raw.next_first_class.get());
    if prev.is_null() {
        FIRST_CLASS_HEAPS.with(|cell| cell.set(next));
    } else {
        // SAFETY: the thread's list holds only its live heaps.
        unsafe { (*prev).next_first_class.set(next) };
    }
    if !next.is_null() {
        // SAFETY: as above.
        unsafe { (*next).prev_first_class.set(prev) };
    }
    let registered = raw.is_registered();
    // SAFETY: owner thread; the heap is off the thread's list and used no
    // more (caller); with `destroy`, neither are its blocks.
    unsafe {
        if destroy {
            raw.destroy();
        } else {
            raw.abandon();
        }
        drop_heap(heap, registered);
    }
}

/// Calls `f` on each of the calling thread's real heaps.
fn for_each_own_heap(mut f: impl FnMut(*mut RawHeap)) {
    let heap = current_heap();
    if heap != empty_heap() {
        f(heap);
    }
    let mut heap = FIRST_CLASS_HEAPS.with(Cell::get);
    while !heap.is_null() {
        f(heap);
        // SAFETY: the list holds live heaps of this thread.
        heap = unsafe { (*heap).next_first_class.get() };
    }
}

/// The calling thread's heap registered in `entry`, if one of its heaps is.
pub(crate) fn own_heap_of(entry: &crate::registry::Entry) -> Option<*mut RawHeap> {
    let mut found = None;
    for_each_own_heap(|heap| {
        // SAFETY: our own live heap.
        if unsafe { (*heap).entry() }.is_some_and(|own| ptr::eq(own, entry)) {
            found = Some(heap);
        }
    });
    found
}

/// Gives a torn-down heap's memory back: to its registry entry (which keeps
/// it for the next heap) or, for an unregistered heap, to the OS.
///
/// # Safety
/// `heap` came from [`new_heap`] and `abandon` has run on it.
unsafe fn drop_heap(heap: *mut RawHeap, was_registered: bool) {
    if !was_registered {
        // SAFETY: an unregistered heap's own mapping (caller).
        unsafe {
            os::unmap(
                NonNull::new_unchecked(heap.cast()),
                HEAP_MAP_SIZE,
                OS_PAGE_SIZE,
            )
        };
    }
}

/// The exit-key destructor: parks the exiting thread's heap for the next
/// thread (`heap/park.rs`), or abandons it.
unsafe extern "C" fn on_thread_exit(value: *mut c_void) {
    let heap = value.cast::<RawHeap>();
    if heap.is_null() {
        return;
    }
    // From here on this thread allocates from a fresh heap, if at all.
    THREAD_HEAP.with(|cell| {
        if cell.get() == heap {
            cell.set(empty_heap());
        }
    });
    // SAFETY: the key holds only heaps made by `init_current` on this very
    // thread; nothing else can reach the heap once its pages are abandoned.
    unsafe {
        if (*heap).thread_id() != current_thread_id() {
            return;
        }
        let registered = (*heap).is_registered();
        // First-class heaps that outlive this point (leaked ones) lose their
        // heir: the default heap is going away.
        let mut first_class = FIRST_CLASS_HEAPS.with(Cell::get);
        while !first_class.is_null() {
            (*first_class).set_heir(ptr::null_mut());
            first_class = (*first_class).next_first_class.get();
        }
        if (*heap).park() {
            return;
        }
        (*heap).abandon();
        drop_heap(heap, registered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_starts_on_the_empty_heap_and_gets_its_own() {
        std::thread::spawn(|| {
            assert_eq!(
                current_heap(),
                empty_heap(),
                "no heap before the first allocation"
            );
            let heap = init_current();
            assert!(!heap.is_null() && heap != empty_heap());
            assert_eq!(init_current(), heap, "initialisation is idempotent");
            // SAFETY: our own heap.
            assert_eq!(unsafe { (*heap).thread_id() }, current_thread_id());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn threads_get_distinct_ids_at_their_first_allocation() {
        let barrier = std::sync::Barrier::new(8);
        let ids: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        assert_eq!(current_thread_id(), NO_THREAD_ID);
                        init_current();
                        barrier.wait();
                        let id = current_thread_id();
                        barrier.wait();
                        id
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.iter().all(|&id| id >= FIRST_THREAD_ID));
    }

    #[test]
    fn thread_exit_abandons_segments_with_live_blocks() {
        let (block, exited) = std::thread::spawn(|| {
            let heap = init_current();
            // SAFETY: our own real heap.
            let p = unsafe { (*heap).malloc_generic(100, false) };
            assert!(!p.is_null());
            (p.expose_provenance(), current_thread_id())
        })
        .join()
        .unwrap();
        // The exit destructor ran: the block's segment no longer belongs to
        // the exited thread. It belongs to nobody (abandoned, or parked with
        // its heap), or, if another test's thread has adopted the parked
        // heap meanwhile, to that thread.
        let segment = crate::segment::Segment::of(ptr::with_exposed_provenance(block));
        // SAFETY: the block is live, so its segment is.
        let owner = unsafe { (*segment).thread_id.load(Ordering::Relaxed) };
        assert_ne!(owner, exited, "an exited thread's segments keep no owner");
        // Freeing it from here is a remote free into the abandoned segment.
        // SAFETY: a live block, given up.
        unsafe {
            crate::free::free_block(ptr::with_exposed_provenance_mut(block), current_thread_id())
        };
    }
}
