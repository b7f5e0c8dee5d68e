//! The passt binding (`passt: {}`, `binding: {name: passt}`; `slirp: {}` is an alias): a
//! user-mode network back-end. libvirt starts `passt` for the domain's
//! `<interface type='user'><backend type='passt'/>`; passt translates the guest's L2 frames into
//! ordinary TCP/UDP/ICMP sockets of the pod and answers the guest's ARP, DHCP, NDP and DHCPv6
//! itself with a copy of the pod's addresses and routes. Listed `ports` are forwarded from the
//! pod's addresses to the guest.
//!
//! So the launcher plumbs **nothing**: no steps, no DHCP server of its own, no tap, and the pod
//! needs no capability at all (no NET_ADMIN, no NET_RAW). Teardown has nothing to restore.
//!
//! The result carries:
//! - `tap`: empty (qemu talks to passt over a unix socket libvirt creates);
//! - `mac`: the spec's `macAddress`, else `02:70:74` + the low three bytes of the pod MAC. The
//!   guest's MAC never leaves the pod (passt is L4), and it must differ from the pod
//!   interface's own MAC, which passt may use as its side of the guest link;
//! - `mtu`: [`PASST_MTU`], passt's own default. passt terminates TCP in the pod, so the guest
//!   link is not bound by the pod's MTU (larger frames mean fewer exits);
//! - `guest_ips`: the pod interface's addresses (passt hands them to the guest);
//! - `dhcp`: none (passt serves DHCP).

use super::{BindingPlan, IfaceCtx};
use crate::net::plan::IfaceResult;
use crate::net::{Mac, NetError};
use crate::spec::BindingKind;

/// The guest-side MTU of a passt link: passt's default (65520, the largest frame its stream
/// framing carries).
pub const PASST_MTU: u32 = 65520;

/// The guest MAC when the spec gives none: `02:70:74` ("pt") + the low three bytes of the pod
/// MAC, never the pod MAC itself.
pub fn default_guest_mac(pod_mac: Mac) -> Mac {
    let p = pod_mac.0;
    let m = Mac([0x02, 0x70, 0x74, p[3], p[4], p[5]]);
    if m == pod_mac {
        Mac([0x02, 0x70, 0x74, p[3], p[4], p[5] ^ 1])
    } else {
        m
    }
}

pub fn plan(kind: &BindingKind, ctx: &IfaceCtx<'_>) -> Result<BindingPlan, NetError> {
    if !ctx.primary {
        return Err(NetError::UnsupportedBinding {
            path: ctx.path.clone(),
            binding: "passt on a secondary (Multus) network".into(),
        });
    }
    if matches!(kind, BindingKind::Slirp) {
        tracing::warn!(
            interface = %ctx.iface.name,
            path = %format!("{}.slirp", ctx.path),
            mapped_to = "passt",
            "the slirp binding is deprecated and mapped to passt: the guest gets the pod's \
             addresses from passt instead of slirp's 10.0.2.0/24"
        );
    }
    let pod = ctx.pod_iface;
    let mac = match &ctx.iface.mac_address {
        Some(_) => super::guest_mac(ctx)?,
        None => default_guest_mac(pod.mac),
    };
    Ok(BindingPlan {
        steps: Vec::new(),
        dhcp_guard_ports: Vec::new(),
        result: IfaceResult {
            name: ctx.iface.name.clone(),
            network: ctx.network.name.clone(),
            binding: "passt".into(),
            pod_interface: pod.name.clone(),
            tap: String::new(),
            bridge: None,
            mac,
            mtu: PASST_MTU,
            queues: 1,
            guest_ips: pod.identity_addresses().map(|a| a.address).collect(),
            dhcp: None,
            dhcp6: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mac_is_local_and_never_the_pod_mac() {
        let pod = Mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
        assert_eq!(default_guest_mac(pod).to_string(), "02:70:74:f4:01:05");
        let clash = Mac([0x02, 0x70, 0x74, 1, 2, 3]);
        assert_ne!(default_guest_mac(clash), clash);
        assert_eq!(default_guest_mac(clash).0[0] & 0x03, 0x02, "unicast, local");
    }
}
