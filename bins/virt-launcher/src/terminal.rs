//! The direct mode's console: stdout unbuffered, and the terminal on stdin in raw-ish mode while
//! the VM runs.

/// An unbuffered writer on stdout, so prompts without a newline appear at once.
pub(crate) struct RawStdout;
impl std::io::Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: writes from a valid buffer of the given length to fd 1, which this process owns.
        let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Puts a terminal on stdin into non-canonical, no-echo mode while the VM runs; restores it on drop.
pub(crate) struct TermGuard(Option<libc::termios>);
impl TermGuard {
    pub(crate) fn new() -> Self {
        // SAFETY: isatty only inspects fd 0.
        if unsafe { libc::isatty(0) } != 1 {
            return Self(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0 and we check its result.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: see above; `t` is a valid, writable termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Self(None);
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: sets fd 0's attributes from a valid termios.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        Self(Some(saved))
    }
}
impl Drop for TermGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores fd 0's attributes saved by `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}
