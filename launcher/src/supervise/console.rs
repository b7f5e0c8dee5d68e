//! `launcher console`: the terminal attached to the VM's serial socket, raw mode, detach with
//! Ctrl-] (0x1d). The terminal is restored on every path (a guard restores it on drop, which
//! also runs on error returns and panics that unwind).

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};

/// The detach key: Ctrl-].
pub const DETACH: u8 = 0x1d;

struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    fn enter(fd: BorrowedFd<'a>) -> Option<Self> {
        let saved = termios::tcgetattr(fd).ok()?; // not a terminal: nothing to do
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// Splits input at the detach key: (bytes to forward, detach?).
pub fn split_detach(buf: &[u8]) -> (&[u8], bool) {
    match buf.iter().position(|&b| b == DETACH) {
        Some(i) => (&buf[..i], true),
        None => (buf, false),
    }
}

/// Attaches stdin/stdout to `socket` until Ctrl-], end of input, or the VM closes the socket.
pub fn attach(socket: &Path) -> anyhow::Result<()> {
    let mut sock = UnixStream::connect(socket).map_err(|e| {
        crate::error::precondition(format!(
            "connecting to the serial console {}: {e} (is the VM running? `launcher status`)",
            socket.display()
        ))
    })?;
    let stdin = std::io::stdin();
    let stdin_fd = stdin.as_fd();
    let is_tty = nix::unistd::isatty(stdin_fd).unwrap_or(false);
    if is_tty {
        eprint!(
            "Connected to {} (escape character is ^])\r\n",
            socket.display()
        );
    }
    let _raw = if is_tty {
        RawMode::enter(stdin_fd)
    } else {
        None
    };
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    loop {
        let sock_fd = sock.as_fd();
        let mut fds = vec![PollFd::new(sock_fd, PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(anyhow::anyhow!("waiting for console input: {e}")),
        }
        let sock_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let stdin_ready = stdin_open && fds[1].revents().is_some_and(|r| !r.is_empty());
        if sock_ready {
            let n = sock.read(&mut buf)?;
            if n == 0 {
                break; // the VM went away
            }
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
        }
        if stdin_ready {
            let n = nix::unistd::read(stdin_fd, &mut buf)?;
            if n == 0 {
                stdin_open = false; // keep printing until the socket closes
                let _ = sock.shutdown(std::net::Shutdown::Write);
                continue;
            }
            let (fwd, detach) = split_detach(&buf[..n]);
            sock.write_all(fwd)?;
            if detach {
                break;
            }
        }
    }
    drop(_raw);
    if is_tty {
        eprintln!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_close_bracket_detaches_and_bytes_before_it_are_sent() {
        assert_eq!(split_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_detach(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_detach(b"\x1d"), (&b""[..], true));
    }
}
