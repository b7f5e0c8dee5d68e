//! tap_pump: stands in for qemu in `scripts/bench-bindings.sh` ("tap path").
//!
//! It opens the VM side of a binding the way a hypervisor would (the launcher's tap by name,
//! a macvtap's `/dev/tapN` character device, or passt's qemu socket) and copies Ethernet
//! frames to and from a tap in a "guest" network namespace, which carries the guest's MAC and
//! IP. So traffic from the node to the guest stand-in crosses the binding's real character
//! device (or socket) path, plus one more tap in the guest namespace.
//!
//! usage: tap_pump (--tap NAME | --chardev /dev/tapN | --qemu-socket PATH)
//!                 --guest-netns /run/netns/NS --guest-tap NAME [--no-offload]
//!
//! With a tap or macvtap, both queues are opened with the vnet header and checksum/TSO
//! offloads, as qemu does for a virtio-net guest, and frames (up to 64 KiB GSO frames) cross
//! with their `virtio_net_hdr` unchanged; `--no-offload` pumps plain MTU-sized frames instead.
//! passt's socket carries plain frames (passt gives the guest MTU 65520 instead).
//!
//! Run it in the pod's network namespace (for `--tap`). It prints `ready` on stdout when both
//! sides are open, then pumps until killed. One thread per direction, blocking I/O, one frame
//! per read; frames that cannot be written (a link going down) are dropped, as a NIC would.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use anyhow::{bail, Context};
use nix::sched::{setns, CloneFlags};

/// The VM side of the binding.
enum PodSide {
    /// A tap or macvtap queue: one read or write is one frame.
    Frames(File),
    /// qemu's stream socket protocol (passt): a 4-byte big-endian length, then the frame.
    Stream(UnixStream),
}

struct Args {
    pod: String,
    kind: &'static str,
    guest_netns: String,
    guest_tap: String,
    offload: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut pod = None;
    let mut guest_netns = None;
    let mut guest_tap = None;
    let mut offload = true;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--tap" => pod = Some(("tap", val()?)),
            "--chardev" => pod = Some(("chardev", val()?)),
            "--qemu-socket" => pod = Some(("socket", val()?)),
            "--guest-netns" => guest_netns = Some(val()?),
            "--guest-tap" => guest_tap = Some(val()?),
            "--no-offload" => offload = false,
            _ => bail!("unknown argument {a}; usage: tap_pump (--tap NAME | --chardev /dev/tapN | --qemu-socket PATH) --guest-netns PATH --guest-tap NAME [--no-offload]"),
        }
    }
    let (kind, pod) = pod.context("give one of --tap, --chardev or --qemu-socket")?;
    Ok(Args {
        pod,
        kind,
        guest_netns: guest_netns.context("--guest-netns is required")?,
        guest_tap: guest_tap.context("--guest-tap is required")?,
        offload,
    })
}

fn offload(f: &File, on: bool, what: &str) -> anyhow::Result<()> {
    if on {
        launcher::sys::net::set_tso_offload(f)
            .with_context(|| format!("cannot set checksum/TSO offloads on {what}"))?;
    }
    Ok(())
}

fn open_pod_side(a: &Args) -> anyhow::Result<PodSide> {
    Ok(match a.kind {
        "tap" => {
            let f = launcher::sys::net::open_tap_queue(&a.pod, a.offload)
                .with_context(|| format!("cannot attach to tap {}", a.pod))?;
            offload(&f, a.offload, &a.pod)?;
            PodSide::Frames(f)
        }
        "chardev" => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&a.pod)
                .with_context(|| format!("cannot open {}", a.pod))?;
            launcher::sys::net::macvtap_set_vnet_hdr(&f, a.offload)
                .with_context(|| format!("cannot set the vnet header on {}", a.pod))?;
            offload(&f, a.offload, &a.pod)?;
            PodSide::Frames(f)
        }
        _ => PodSide::Stream(
            UnixStream::connect(&a.pod).with_context(|| format!("cannot connect to {}", a.pod))?,
        ),
    })
}

/// Copies frames from `src` (one read = one frame) to `dst` until `src` fails.
fn frames_to(mut src: impl Read, mut dst: impl FnMut(&[u8]) -> std::io::Result<()>) {
    let mut buf = vec![0u8; 65536 + 4];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let _ = dst(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("tap_pump: read failed: {e}");
                return;
            }
        }
    }
}

fn run() -> anyhow::Result<()> {
    let a = parse()?;
    let pod = open_pod_side(&a)?;
    let ns =
        File::open(&a.guest_netns).with_context(|| format!("cannot open {}", a.guest_netns))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter {}", a.guest_netns))?;
    let guest_offload = a.offload && matches!(pod, PodSide::Frames(_));
    let guest = launcher::sys::net::open_tap_queue(&a.guest_tap, guest_offload)
        .with_context(|| format!("cannot attach to tap {} in {}", a.guest_tap, a.guest_netns))?;
    offload(&guest, guest_offload, &a.guest_tap)?;
    let mut guest_w = guest.try_clone()?;
    println!("ready");
    std::io::stdout().flush()?;
    match pod {
        PodSide::Frames(f) => {
            let mut pod_w = f.try_clone()?;
            let t = std::thread::spawn(move || frames_to(f, |b| guest_w.write(b).map(drop)));
            frames_to(guest, |b| pod_w.write(b).map(drop));
            let _ = t.join();
        }
        PodSide::Stream(s) => {
            let mut pod_r = s.try_clone()?;
            let mut pod_w = s;
            let t = std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    let mut len = [0u8; 4];
                    if pod_r.read_exact(&mut len).is_err() {
                        return;
                    }
                    let n = u32::from_be_bytes(len) as usize;
                    if n > buf.len() || pod_r.read_exact(&mut buf[..n]).is_err() {
                        return;
                    }
                    let _ = guest_w.write(&buf[..n]);
                }
            });
            let mut out = Vec::with_capacity(65536 + 4);
            frames_to(guest, |b| {
                out.clear();
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
                pod_w.write_all(&out)
            });
            let _ = t.join();
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tap_pump: {e:#}");
            ExitCode::FAILURE
        }
    }
}
