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

/// Reports a detected heap misuse: writes `shardalloc: <what> of 0x<addr>;
/// aborting` to standard error (no allocation) and aborts.
#[cfg(feature = "secure")]
#[cold]
#[inline(never)]
pub(crate) fn misuse(what: &str, addr: usize) -> ! {
    let mut hex = [0u8; 18];
    hex[0] = b'0';
    hex[1] = b'x';
    let digits = (usize::BITS - addr.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in hex[2..2 + digits].iter_mut().enumerate() {
        let nibble = (addr >> (4 * (digits - 1 - i))) & 0xF;
        *slot = b"0123456789abcdef"[nibble];
    }
    write_stderr(b"shardalloc: ");
    write_stderr(what.as_bytes());
    write_stderr(b" of ");
    write_stderr(&hex[..2 + digits]);
    write_stderr(b"; aborting\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `fatal` in a forked child: the message reaches stderr and the child
    /// dies of SIGABRT.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot fork")]
    fn fatal_writes_its_message_and_aborts() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only calls async-signal-safe functions (dup2,
        // write, abort) before it dies.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: valid descriptors from `pipe`.
            unsafe { libc::dup2(fds[1], 2) };
            fatal("corrupted test fixture");
        }
        let mut buf = [0u8; 256];
        let mut len = 0;
        // SAFETY: our write end is closed so the read ends at the child's exit.
        unsafe { libc::close(fds[1]) };
        loop {
            let rest = &mut buf[len..];
            // SAFETY: our read end of the pipe; `rest` is writable.
            let n = unsafe { libc::read(fds[0], rest.as_mut_ptr().cast(), rest.len()) };
            if n <= 0 {
                break;
            }
            len += usize::try_from(n).unwrap();
        }
        let mut status = 0;
        // SAFETY: `pid` is our child.
        unsafe { libc::waitpid(pid, &raw mut status, 0) };
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert_eq!(text, "shardalloc: fatal: corrupted test fixture\n");
    }
}
