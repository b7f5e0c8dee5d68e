//! Shims for the IPv6 servers (`dhcp::server6`).

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

/// Registers a non-blocking socket (the router-advertisement raw ICMPv6 socket) with the
/// current tokio runtime, for readiness. Must be called inside a tokio runtime.
pub fn async_socket(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is moved into the AsyncFd, which owns it until dropped, so the
    // descriptor stays open and refers to the same socket for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
