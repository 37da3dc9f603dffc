//! A watchdog for tests whose failure mode may be a hang (a thread spinning forever in the
//! allocator, a deadlock): if the guarded part is still running after its time limit, it writes a
//! message (with the seed and replay command the test gives it) straight to file descriptor 2 —
//! past the test harness's output capture, which an abort would discard — and aborts the process,
//! so that a hang fails in minutes instead of running into the CI time limit.
//!
//! Include it next to `common` with `#[path = "common/watchdog.rs"] mod watchdog;`.
#![allow(dead_code)]

use std::ptr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Aborts the process if it is not dropped within its limit.
pub(crate) struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts a watchdog for `limit`. On expiry it writes `"[name] ... {context()}"` to fd 2 and
    /// aborts; `context` should name the seed, what was still running, and how to replay.
    pub(crate) fn start(
        name: &str,
        limit: Duration,
        context: impl FnOnce() -> String + Send + 'static,
    ) -> Watchdog {
        let (done, rx) = mpsc::channel::<()>();
        let name = name.to_owned();
        let thread = thread::Builder::new()
            .name(format!("{name}-watchdog"))
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    let msg = format!(
                        "\n[{name}] WATCHDOG: still running after {limit:?}, probably hung: {}; \
                         aborting\n",
                        context()
                    );
                    write_stderr(msg.as_bytes());
                    std::process::abort();
                }
            })
            .expect("spawn the watchdog thread");
        Watchdog {
            done: Some(done),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `bytes` to fd 2 with `libc::write` (no locks, no capture).
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Joins `thread` if it exits completely — its thread-local and pthread key destructors included,
/// which `JoinHandle::is_finished` does not cover — within `limit`; false if it does not (it is
/// then left running). Take `thread` from a `JoinHandle` with
/// `std::os::unix::thread::JoinHandleExt::into_pthread_t`.
pub(crate) fn exited_within(thread: libc::pthread_t, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        // SAFETY: `thread` is a joinable thread that nobody else joins (the caller took it from
        // its `JoinHandle`).
        let r = unsafe { libc::pthread_tryjoin_np(thread, ptr::null_mut()) };
        if r == 0 {
            return true;
        }
        assert_eq!(r, libc::EBUSY, "pthread_tryjoin_np");
        if t0.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_micros(200));
    }
}
