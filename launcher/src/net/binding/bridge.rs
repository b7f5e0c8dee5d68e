//! The bridge binding: the guest takes over the pod interface's MAC and IP on an in-pod bridge.
//!
//! For pod interface `eth0` (secondary networks use their own names, see [`LinkNames`]):
//! - `k6t-eth0`: a bridge with its own MAC (never the guest's), the pod MTU, `arp_ignore=1`,
//!   and (when the pod interface has IPv4) the link-local /32 that identifies the DHCP server;
//! - `eth0` → `eth0-nic`: down, addresses and routes removed, renamed, given the bridge's MAC,
//!   made a bridge port with learning off, up;
//! - a stand-in named `eth0` with the original MAC, MTU and addresses (kubelet/CNI CHECK),
//!   left down so it takes no traffic and installs no routes;
//! - `tap0`: persistent, owned by `--tap-owner`, multiqueue when asked, pod MTU, on the
//!   bridge, up.

use super::{dhcp_config, guest_mac, queues, BindingPlan, IfaceCtx, LinkNames};
use crate::net::discover::IfAddress;
use crate::net::plan::{link_local_avoiding, IfaceResult, LinkRef, Step};
use crate::net::{Mac, NetError};

/// The bridge's (and the renamed NIC's) MAC: locally administered, `02:6b:36` ("k6") + the low
/// three bytes of the pod MAC, never equal to the guest's.
pub fn bridge_mac(pod_mac: Mac, guest: Mac) -> Mac {
    let p = pod_mac.0;
    (0u8..=2)
        .map(|k| Mac([0x02, 0x6b, 0x36, p[3], p[4], p[5] ^ k]))
        .find(|m| *m != guest && *m != pod_mac)
        .unwrap_or(Mac([0x02, 0x6b, 0x36, 0, 0, 0]))
}

pub fn plan(ctx: &IfaceCtx<'_>) -> Result<BindingPlan, NetError> {
    let pod = ctx.pod_iface;
    let names = LinkNames::for_pod_interface(&pod.name, ctx.primary).map_err(|message| {
        NetError::InvalidSpec {
            path: ctx.path.clone(),
            message,
        }
    })?;
    let mac = guest_mac(ctx)?;
    let bmac = bridge_mac(pod.mac, mac);
    let mtu = pod.mtu;
    let queues = queues(ctx);
    let nic = LinkRef::Pod {
        index: pod.index,
        name: pod.name.clone(),
    };
    let bridge = LinkRef::Created(names.bridge.clone());
    let tap = LinkRef::Created(names.tap.clone());
    let identity: Vec<IfAddress> = pod.identity_addresses().cloned().collect();
    let server_ip = link_local_avoiding(ctx.position, ctx.pod);
    let dhcp = dhcp_config(ctx, &names.bridge, server_ip, mac);

    let mut steps = vec![
        Step::CreateBridge {
            name: names.bridge.clone(),
            mac: bmac,
            mtu,
        },
        Step::SetSysctl {
            path: format!("net/ipv4/conf/{}/arp_ignore", names.bridge),
            value: "1".into(),
        },
    ];
    if dhcp.is_some() {
        steps.push(Step::AddAddresses {
            link: bridge.clone(),
            addresses: vec![IfAddress {
                address: server_ip.into(),
                prefix_len: 32,
                flags: 0,
                broadcast: None,
            }],
        });
    }
    steps.extend([
        Step::LinkDown { link: nic.clone() },
        Step::RemoveAddresses {
            link: nic.clone(),
            addresses: identity.clone(),
        },
        Step::FlushRoutes { link: nic.clone() },
        Step::Rename {
            link: nic.clone(),
            to: names.nic.clone(),
        },
        Step::SetMac {
            link: nic.clone(),
            mac: bmac,
        },
        Step::CreateStandIn {
            name: pod.name.clone(),
            peer: names.stand_in_peer.clone(),
            mac: pod.mac,
            mtu,
        },
    ]);
    if !identity.is_empty() {
        steps.push(Step::AddAddresses {
            link: LinkRef::Created(pod.name.clone()),
            addresses: identity.clone(),
        });
    }
    steps.extend([
        Step::SetMaster {
            link: nic.clone(),
            master: names.bridge.clone(),
        },
        Step::SetLearning {
            link: nic.clone(),
            learning: false,
        },
        Step::LinkUp { link: nic },
        Step::CreateTap {
            name: names.tap.clone(),
            owner: ctx.opts.tap_owner.clone(),
            queues,
        },
        Step::SetMtu {
            link: tap.clone(),
            mtu,
        },
        Step::SetMaster {
            link: tap.clone(),
            master: names.bridge.clone(),
        },
        Step::LinkUp { link: tap },
        Step::LinkUp { link: bridge },
    ]);

    let dhcp_guard_ports = if dhcp.is_some() {
        vec![names.nic.clone()]
    } else {
        Vec::new()
    };
    Ok(BindingPlan {
        steps,
        dhcp_guard_ports,
        result: IfaceResult {
            name: ctx.iface.name.clone(),
            network: ctx.network.name.clone(),
            binding: "bridge".into(),
            pod_interface: pod.name.clone(),
            tap: names.tap,
            bridge: Some(names.bridge),
            mac,
            mtu,
            queues,
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
    fn bridge_mac_never_equals_guest_or_pod_mac() {
        let pod = Mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
        let m = bridge_mac(pod, pod);
        assert_eq!(m, Mac([0x02, 0x6b, 0x36, 0xf4, 0x01, 0x05]));
        let guest = Mac([0x02, 0x6b, 0x36, 0xf4, 0x01, 0x05]);
        let m2 = bridge_mac(pod, guest);
        assert_ne!(m2, guest);
        assert_ne!(m2, pod);
        let pod_k6 = Mac([0x02, 0x6b, 0x36, 0, 0, 1]);
        assert_ne!(bridge_mac(pod_k6, pod_k6), pod_k6);
    }
}
