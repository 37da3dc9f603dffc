//! The allocator's only way to fail loudly.
//!
//! Code inside the allocator may not panic (unwinding out of `GlobalAlloc` is
//! undefined behaviour) and may not allocate (no `format!`). When an invariant
//! is found broken, [`fatal`] writes one line to standard error with
//! `libc::write` and aborts the process.

/// Writes `shardalloc: <message>` to standard error and aborts.
#[cold]
#[inline(never)]
pub(crate) fn fatal(message: &str) -> ! {
    write_stderr(b"shardalloc: fatal: ");
    write_stderr(message.as_bytes());
    write_stderr(b"\n");
    // SAFETY: abort has no preconditions and never returns.
    unsafe { libc::abort() }
}

/// Writes `bytes` to file descriptor 2, retrying short writes; errors are
/// ignored (there is nowhere left to report them).
pub(crate) fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid, initialised byte slice for its whole length.
        let written = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if written <= 0 {
            return;
        }
        rest = rest.get(written.unsigned_abs()..).unwrap_or(&[]);
    }
}
