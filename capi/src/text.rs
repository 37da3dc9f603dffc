//! Text formatted on the stack, for the reports that must not allocate
//! (`malloc_stats`, `malloc_info`).

/// A fixed-size text buffer on the stack; text beyond its capacity is
/// dropped (the reports written with it are far shorter).
pub(crate) struct Text {
    buf: [u8; 2048],
    len: usize,
}

impl Text {
    pub(crate) const fn new() -> Text {
        Text {
            buf: [0; 2048],
            len: 0,
        }
    }

    /// Appends `text`.
    pub(crate) fn push(&mut self, text: &str) -> &mut Text {
        for &b in text.as_bytes() {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        self
    }

    /// Appends `n` in decimal, right-aligned in `width` columns (as
    /// printf's `%10zu` for width 10; 0 for no padding).
    pub(crate) fn number(&mut self, mut n: usize, width: usize) -> &mut Text {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        let used = digits.len() - i;
        for _ in used..width {
            self.push(" ");
        }
        for &d in digits.get(i..).unwrap_or(&[]) {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = d;
                self.len += 1;
            }
        }
        self
    }

    /// The text so far.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Writes the text to file descriptor `fd` with `write(2)`.
    pub(crate) fn write_to_fd(&self, fd: core::ffi::c_int) {
        let mut rest = self.as_bytes();
        while !rest.is_empty() {
            // SAFETY: `rest` is a valid byte slice for its whole length.
            let written = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            match usize::try_from(written) {
                Ok(n) if n > 0 => rest = rest.get(n..).unwrap_or(&[]),
                _ => {
                    // SAFETY: reading errno has no preconditions.
                    if written < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
                        continue;
                    }
                    return;
                }
            }
        }
    }
}
