//! Tap devices through `/dev/net/tun` ioctls (the only way to make a persistent, owned,
//! multiqueue tap). Everything else about links goes over rtnetlink in `net::apply`.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

const TUN_IOC_MAGIC: u8 = b'T';
const TUNSETIFF_NR: u8 = 202;
const TUNSETPERSIST_NR: u8 = 203;
const TUNSETOWNER_NR: u8 = 204;
const TUNSETOFFLOAD_NR: u8 = 208;

nix::ioctl_write_ptr_bad!(
    tunsetiff,
    nix::request_code_write!(
        TUN_IOC_MAGIC,
        TUNSETIFF_NR,
        std::mem::size_of::<libc::c_int>()
    ),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tunsetpersist,
    nix::request_code_write!(
        TUN_IOC_MAGIC,
        TUNSETPERSIST_NR,
        std::mem::size_of::<libc::c_int>()
    )
);
nix::ioctl_write_int_bad!(
    tunsetowner,
    nix::request_code_write!(
        TUN_IOC_MAGIC,
        TUNSETOWNER_NR,
        std::mem::size_of::<libc::c_int>()
    )
);

nix::ioctl_write_int_bad!(
    tunsetoffload,
    nix::request_code_write!(
        TUN_IOC_MAGIC,
        TUNSETOFFLOAD_NR,
        std::mem::size_of::<libc::c_uint>()
    )
);

/// How to create a tap device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec<'a> {
    pub name: &'a str,
    /// `IFF_MULTI_QUEUE`: qemu opens one queue per vCPU.
    pub multi_queue: bool,
    /// `TUNSETOWNER`: the uid allowed to open the device (None: leave it to root).
    pub owner: Option<u32>,
}

/// Builds an `ifreq` with the interface name and the tap flags.
fn ifreq_for(name: &str, multi_queue: bool) -> Result<libc::ifreq, Errno> {
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    ifreq_with_flags(name, flags)
}

/// Builds an `ifreq` with the interface name and exactly `flags`.
fn ifreq_with_flags(name: &str, flags: libc::c_int) -> Result<libc::ifreq, Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers and
    // arrays); the all-zero bit pattern is a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(req)
}

/// Opens `/dev/net/tun` and attaches it to (or creates) the tap `name`.
fn attach(name: &str, multi_queue: bool) -> Result<std::fs::File, Errno> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let req = ifreq_for(name, multi_queue)?;
    // SAFETY: the fd is an open /dev/net/tun descriptor owned by `file`, which outlives the
    // call; `req` is a fully initialised ifreq that the kernel only reads (and may write the
    // name back into, which is fine for a local).
    unsafe { tunsetiff(file.as_raw_fd(), &req) }?;
    Ok(file)
}

/// Creates a persistent tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, plus `IFF_MULTI_QUEUE`),
/// optionally owned by `owner`. The device stays after this returns (TUNSETPERSIST), down, for
/// qemu/libvirt to open later.
pub fn create_persistent_tap(spec: &TapSpec<'_>) -> Result<(), Errno> {
    let file = attach(spec.name, spec.multi_queue)?;
    let fd = file.as_raw_fd();
    if let Some(uid) = spec.owner {
        // SAFETY: `fd` is a valid tun descriptor attached to our device; TUNSETOWNER takes
        // the uid by value.
        unsafe { tunsetowner(fd, uid as libc::c_int) }?;
    }
    // SAFETY: `fd` is a valid tun descriptor attached to our device; TUNSETPERSIST takes a
    // boolean int by value.
    unsafe { tunsetpersist(fd, 1) }?;
    Ok(())
}

/// Removes a persistent tap by clearing its persist flag (the device disappears when the last
/// descriptor closes). Used only when netlink `RTM_DELLINK` is refused.
pub fn delete_persistent_tap(name: &str, multi_queue: bool) -> Result<(), Errno> {
    let file = attach(name, multi_queue)?;
    // SAFETY: `file` holds a valid tun descriptor attached to `name`; TUNSETPERSIST takes a
    // boolean int by value.
    unsafe { tunsetpersist(file.as_raw_fd(), 0) }?;
    Ok(())
}

/// Opens a queue on the existing single-queue tap `name` in the calling thread's network
/// namespace (`IFF_TAP | IFF_NO_PI`, plus `IFF_VNET_HDR` when `vnet_hdr`: then every frame is
/// preceded by a 10-byte `virtio_net_hdr`, as qemu sees it). Creates a non-persistent tap when
/// none exists. Used by the binding benchmark's frame pump (`launcher/examples/tap_pump.rs`),
/// which stands in for qemu.
pub fn open_tap_queue(name: &str, vnet_hdr: bool) -> Result<std::fs::File, Errno> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    let req = ifreq_with_flags(name, flags)?;
    // SAFETY: the fd is an open /dev/net/tun descriptor owned by `file`, which outlives the
    // call; `req` is a fully initialised ifreq that the kernel reads and may write the name
    // back into (a local).
    unsafe { tunsetiff(file.as_raw_fd(), &req) }?;
    Ok(file)
}

/// Sets whether an open macvtap character device (`/dev/tapN`, whose queues start with
/// `IFF_VNET_HDR`) prefixes frames with a `virtio_net_hdr`.
pub fn macvtap_set_vnet_hdr(file: &std::fs::File, vnet_hdr: bool) -> Result<(), Errno> {
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    // macvtap ignores the name; it checks that the flags are IFF_TAP | IFF_NO_PI [| VNET_HDR].
    let req = ifreq_with_flags("macvtap", flags)?;
    // SAFETY: `file` is an open macvtap character device that outlives the call; `req` is a
    // fully initialised ifreq that the kernel reads and may write the name back into (a
    // local).
    unsafe { tunsetiff(file.as_raw_fd(), &req) }?;
    Ok(())
}

/// `TUNSETOFFLOAD` with checksum and TSO (IPv4, IPv6) offloads, as qemu sets them for a
/// virtio-net guest: the queue then reads and writes GSO frames of up to 64 KiB, described by
/// the `virtio_net_hdr`. Needs a queue opened with the vnet header; works on taps and macvtaps.
pub fn set_tso_offload(file: &std::fs::File) -> Result<(), Errno> {
    const TUN_F_CSUM: libc::c_int = 0x01;
    const TUN_F_TSO4: libc::c_int = 0x02;
    const TUN_F_TSO6: libc::c_int = 0x04;
    // SAFETY: `file` is an open tun/macvtap queue that outlives the call; TUNSETOFFLOAD takes
    // the flag word by value.
    unsafe { tunsetoffload(file.as_raw_fd(), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_rejects_bad_names_and_sets_flags() {
        assert_eq!(ifreq_for("", false).unwrap_err(), Errno::EINVAL);
        assert_eq!(
            ifreq_for("sixteen-chars-xx", false).unwrap_err(),
            Errno::EINVAL
        );
        let r = ifreq_for("tap0", true).unwrap();
        // SAFETY: reading the union member this test just wrote.
        let flags = unsafe { r.ifr_ifru.ifru_flags } as libc::c_int;
        assert_eq!(flags & libc::IFF_TAP, libc::IFF_TAP);
        assert_eq!(flags & libc::IFF_MULTI_QUEUE, libc::IFF_MULTI_QUEUE);
        assert_eq!(flags & libc::IFF_VNET_HDR, libc::IFF_VNET_HDR);
        assert_eq!(r.ifr_name[3] as u8, b'0');
        assert_eq!(r.ifr_name[4], 0);
    }
}
