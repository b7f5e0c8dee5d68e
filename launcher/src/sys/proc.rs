//! Process handles the safe crates lack: `pidfd_open(2)`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Opens a pidfd for `pid`: readable once the process has exited, even if it is not our child
/// and even if the pid is later reused.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1; no
    // memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A process to wait for, asynchronously (tokio), by its pidfd.
pub struct PidWatch {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl PidWatch {
    /// Must be called inside a tokio runtime.
    pub fn new(pid: i32) -> io::Result<Self> {
        let fd = pidfd_open(pid)?;
        // SAFETY: the `OwnedFd` is moved into the AsyncFd, which owns it until dropped, so the
        // descriptor stays open and refers to the same pidfd for the AsyncFd's whole life.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(PidWatch { fd })
    }

    /// Returns once the process has exited.
    pub async fn exited(&self) {
        let _ = self.fd.readable().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfd_of_a_child_becomes_readable_when_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        let mut pfd = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fd),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).unwrap();
        assert_eq!(n, 0, "a live process's pidfd must not be readable");
        let n = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(5000u16)).unwrap();
        assert_eq!(
            n, 1,
            "the pidfd must become readable when the process exits"
        );
        child.wait().unwrap();
    }

    #[test]
    fn pidfd_of_a_missing_process_is_an_error() {
        assert!(pidfd_open(i32::MAX - 1).is_err());
    }
}
