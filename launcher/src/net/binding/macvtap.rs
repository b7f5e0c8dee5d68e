//! The macvtap binding on the pod network (`macvtap: {}` or `binding: {name: macvtap}`): no
//! bridge, no tap; the VM's NIC is a macvtap in bridge mode directly on the pod interface.
//!
//! For pod interface `eth0` (index *i*, MAC *M*, addresses *A*), guest MAC *G* (the spec's
//! `macAddress`, else *M*):
//! - `eth0` keeps its name: down, addresses *A* removed (recorded, handed to the guest over
//!   DHCP), routes flushed, MAC changed to `02:6b:36` + the low three bytes of *M* (a macvlan
//!   refuses its lower device's address), up;
//! - `mvdhcp0`: a macvlan in bridge mode on `eth0` with MAC `02:6b:64` + the low three bytes
//!   of *M*, the pod MTU, the link-local /32 of the DHCP server (a lower device cannot talk to
//!   its own macvtap child, a bridge-mode sibling can), up — only when `eth0` has IPv4;
//! - `macvtap0`: a macvtap in bridge mode on `eth0` with MAC *G* and the pod MTU, up. The
//!   domain gets `<interface type='ethernet'><target dev='macvtap0' managed='no'/>` (the
//!   `tap` field of the result); libvirt opens its `/dev/tapN`.
//!
//! Test hook: `LAUNCHER_MACVTAP_STAND_IN=1` (test-only) creates `macvtap0` as a macvlan
//! instead, which a test moves into a guest namespace as the VM's NIC (qemu would otherwise
//! be the reader of `/dev/tapN`). Everything else is the production plan.

use super::bridge::bridge_mac;
use super::{dhcp_config, guest_mac, BindingPlan, IfaceCtx};
use crate::net::discover::IfAddress;
use crate::net::plan::{link_local_avoiding, IfaceResult, LinkRef, Step};
use crate::net::{Mac, NetError};

/// Test-only: create the guest device as a macvlan (see the module docs).
pub const STAND_IN_ENV: &str = "LAUNCHER_MACVTAP_STAND_IN";

/// The DHCP sibling's MAC: `02:6b:64` + the low three bytes of the pod MAC, never equal to the
/// guest's or the NIC's.
pub fn dhcp_mac(pod_mac: Mac, avoid: &[Mac]) -> Mac {
    let p = pod_mac.0;
    (0u8..=3)
        .map(|k| Mac([0x02, 0x6b, 0x64, p[3], p[4], p[5] ^ k]))
        .find(|m| !avoid.contains(m) && *m != pod_mac)
        .unwrap_or(Mac([0x02, 0x6b, 0x64, 0, 0, 0]))
}

pub fn plan(ctx: &IfaceCtx<'_>) -> Result<BindingPlan, NetError> {
    let stand_in = std::env::var(STAND_IN_ENV).is_ok_and(|v| v == "1");
    plan_with(ctx, stand_in)
}

/// [`plan`] with the test hook made explicit (pure).
pub fn plan_with(ctx: &IfaceCtx<'_>, stand_in: bool) -> Result<BindingPlan, NetError> {
    let pod = ctx.pod_iface;
    if !ctx.primary {
        return Err(NetError::UnsupportedBinding {
            path: ctx.path.clone(),
            binding: "macvtap on a secondary (Multus) network".into(),
        });
    }
    let mac = guest_mac(ctx)?;
    let nic_mac = bridge_mac(pod.mac, mac);
    let srv_mac = dhcp_mac(pod.mac, &[mac, nic_mac]);
    let mtu = pod.mtu;
    let device = "macvtap0".to_string();
    let sibling = "mvdhcp0".to_string();
    let nic = LinkRef::Pod {
        index: pod.index,
        name: pod.name.clone(),
    };
    let identity: Vec<IfAddress> = pod.identity_addresses().cloned().collect();
    let server_ip = link_local_avoiding(ctx.position, ctx.pod);
    let dhcp = dhcp_config(ctx, &sibling, server_ip, mac);

    let mut steps = vec![
        Step::LinkDown { link: nic.clone() },
        Step::RemoveAddresses {
            link: nic.clone(),
            addresses: identity.clone(),
        },
        Step::FlushRoutes { link: nic.clone() },
        Step::SetMac {
            link: nic.clone(),
            mac: nic_mac,
        },
        Step::LinkUp { link: nic.clone() },
    ];
    if dhcp.is_some() {
        let s = LinkRef::Created(sibling.clone());
        steps.extend([
            Step::CreateMacvlan {
                name: sibling.clone(),
                lower: nic.clone(),
                mac: srv_mac,
                mtu,
                tap: false,
            },
            Step::AddAddresses {
                link: s.clone(),
                addresses: vec![IfAddress {
                    address: server_ip.into(),
                    prefix_len: 32,
                    flags: 0,
                    broadcast: None,
                }],
            },
            Step::LinkUp { link: s },
        ]);
    }
    steps.extend([
        Step::CreateMacvlan {
            name: device.clone(),
            lower: nic,
            mac,
            mtu,
            tap: !stand_in,
        },
        Step::LinkUp {
            link: LinkRef::Created(device.clone()),
        },
    ]);
    Ok(BindingPlan {
        steps,
        dhcp_guard_ports: Vec::new(),
        result: IfaceResult {
            name: ctx.iface.name.clone(),
            network: ctx.network.name.clone(),
            binding: "macvtap".into(),
            pod_interface: pod.name.clone(),
            tap: device,
            bridge: None,
            mac,
            mtu,
            queues: 1,
            guest_ips: identity.iter().map(|a| a.address).collect(),
            dhcp,
            dhcp6: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhcp_mac_differs_from_guest_nic_and_pod() {
        let pod = Mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
        let nic = bridge_mac(pod, pod);
        let m = dhcp_mac(pod, &[pod, nic]);
        assert_eq!(m, Mac([0x02, 0x6b, 0x64, 0xf4, 0x01, 0x05]));
        let taken = Mac([0x02, 0x6b, 0x64, 0xf4, 0x01, 0x05]);
        let m2 = dhcp_mac(pod, &[taken, nic]);
        assert_ne!(m2, taken);
        assert_ne!(m2, nic);
    }
}
