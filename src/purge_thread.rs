//! The purge thread: memory goes back when the whole program goes quiet.
//!
//! The decay curve (`decay`) is applied by each heap's owner on its slow
//! paths, and by a reaper running on any other thread's slow path for an
//! owner that has gone quiet (`heap/reap.rs`). Neither runs in a program
//! that makes no allocator call at all after its last frees — a service
//! waiting for its next request. So the process gets one background thread,
//! started lazily on a slow path the first time warm memory exists, that
//! runs the reaper once per epoch while any memory is warm (`decay::WARM`,
//! or a huge block freed to a live owner: `decay::DELAYED_HUGE`) and sleeps
//! on a futex, with no wake-ups, while none is.
//!
//! The thread is an ordinary reaper: it has its own (empty) heap, takes
//! other heaps' locks with `try_lock`, and does nothing an allocating
//! thread's reaper would not (design §4.5, loom model
//! `reaper_races_owner_reuse`). It sleeps on `decay::WARM_WAITER`
//! (`sync::Sleeper`, design §4.7), which every addition to either count
//! wakes.
//!
//! * **Started** from a slow path (`RawHeap::heartbeat_work`, or a free
//!   that emptied a page), outside the heap's lock and with the heap
//!   consistent; the state moves `IDLE → RUNNING` first. `pthread_create`
//!   allocates through the C `malloc`, which in a Rust program is not
//!   ours. In the C library it is, and the allocator never calls `malloc`
//!   from inside itself: the library's load-time constructor calls
//!   [`start_at_load`], which starts the thread if
//!   `SHARDALLOC_PURGE_THREAD=1` asked for it and otherwise turns it off
//!   for good (a thread in every process would, for instance, make
//!   `unshare(CLONE_NEWUSER)` fail). Only warm memory made before that
//!   constructor runs (by objects initialised before the library, libc's
//!   own start-up) could start it from a slow path first.
//! * **Signals**: created with every signal blocked, so process-directed
//!   signals are never delivered on it.
//! * **fork**: the child has no purge thread; its `atfork` handler
//!   ([`after_fork_in_child`]) lets the next slow path start a new one.
//! * **Opt out**: `SHARDALLOC_PURGE_THREAD=0` or
//!   `options::set_purge_thread(false)`; memory then goes back only on
//!   allocator calls (as before the thread existed), and `collect` still
//!   gives everything back at once.

use crate::decay;
use crate::options;
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

/// No purge thread yet (or none in this forked child).
const IDLE: u32 = 0;
/// The thread runs (or is being started).
const RUNNING: u32 = 1;
/// `pthread_create` failed: memory goes back on allocator calls only.
const FAILED: u32 = 2;

/// The purge thread's state.
static STATE: AtomicU32 = AtomicU32::new(IDLE);

/// Starts the purge thread if the process holds warm memory and has none.
/// Cheap when there is nothing to do (one relaxed load).
///
/// Call only where a nested allocation on this thread is safe: outside the
/// heap's lock, with the heap consistent.
#[inline]
pub(crate) fn start_if_needed() {
    // Relaxed: a hint; the CAS below decides.
    if STATE.load(Ordering::Relaxed) != IDLE || decay::reclaimable() == 0 {
        return;
    }
    start();
}

/// Starts the purge thread now if the option allows (the C library calls
/// this from its load-time constructor, outside any allocation).
pub(crate) fn start_at_load() {
    if options::purge_thread_asked_for() {
        start_now();
    } else {
        // Never from inside an allocation here (see the module docs).
        options::set_purge_thread(false);
    }
}

#[cold]
#[inline(never)]
fn start() {
    if !options::purge_thread() {
        return;
    }
    start_now();
}

fn start_now() {
    // Relaxed: only the winner proceeds; the thread's own data is ordered
    // by `pthread_create`.
    if STATE
        .compare_exchange(IDLE, RUNNING, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    if !spawn() {
        // Relaxed: as above.
        STATE.store(FAILED, Ordering::Relaxed);
    }
}

/// Creates the thread, detached, on a small stack, with every signal
/// blocked. False if the OS refuses.
fn spawn() -> bool {
    /// The thread only runs the reaper: no deep recursion, no big frames.
    const STACK_SIZE: usize = 256 << 10;
    // SAFETY: plain libc calls on locals that outlive them; the attribute
    // is destroyed on every path; the signal mask is restored before
    // returning.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_attr_init(&raw mut attr) != 0 {
            return false;
        }
        libc::pthread_attr_setdetachstate(&raw mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&raw mut attr, STACK_SIZE.max(libc::PTHREAD_STACK_MIN));
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&raw mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
        let mut thread: libc::pthread_t = 0;
        let created = libc::pthread_create(
            &raw mut thread,
            &raw const attr,
            purge_main,
            ptr::null_mut(),
        ) == 0;
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const old, ptr::null_mut());
        libc::pthread_attr_destroy(&raw mut attr);
        created
    }
}

/// The thread: a reaper pass per epoch while memory is warm; asleep while
/// none is.
extern "C" fn purge_main(_: *mut c_void) -> *mut c_void {
    // SAFETY: a NUL-terminated name of at most 16 bytes; no allocation.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"shardalloc-purge".as_ptr()) };
    // Never a parked heap: this thread only reaps (`heap/park.rs`).
    let heap = crate::thread::init_current_without_adopting();
    if heap.is_null() {
        // Relaxed: as in `start`.
        STATE.store(FAILED, Ordering::Relaxed);
        return ptr::null_mut();
    }
    let mut idle_passes = 0u32;
    loop {
        if decay::reclaimable() == 0 {
            decay::WARM_WAITER.sleep_while(|| decay::reclaimable() == 0);
            idle_passes = 0;
        }
        let before = decay::reclaimable();
        // SAFETY: our own heap, on its thread.
        unsafe { (*heap).reap_idle_heaps(false) };
        // A pass that gave nothing back (every owner busy, or memory not
        // yet due): back off up to 16 epochs, so memory that stays warm
        // for a while costs few wake-ups.
        idle_passes = if decay::reclaimable() < before {
            0
        } else {
            (idle_passes + 1).min(4)
        };
        let epoch = decay::epoch_ms(options::reset_delay_ms());
        sleep_ms(epoch << idle_passes);
    }
}

/// In a forked child: the parent's purge thread does not exist here; the
/// next slow path that finds warm memory starts one.
pub(crate) fn after_fork_in_child() {
    // Relaxed: the child has one thread.
    if STATE.load(Ordering::Relaxed) == RUNNING {
        STATE.store(IDLE, Ordering::Relaxed);
    }
    decay::WARM_WAITER.reset_after_fork();
}

fn sleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec; an interrupted sleep just ends early.
    unsafe { libc::nanosleep(&raw const ts, ptr::null_mut()) };
}
