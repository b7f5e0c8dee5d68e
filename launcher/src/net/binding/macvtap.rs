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
use super::{dhcp_config, guest_mac, release_identity, BindingPlan, IfaceCtx, LinkNames, MAX_NAME};
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

/// The names of the guest macvtap and of the DHCP sibling for pod interface `pod_name`:
/// `macvtap0`/`mvdhcp0` on the pod network, `macvtap1`/`mvdhcp1` for `net1`, and
/// `mvt<hash>`/`mvd<hash>` for a hashed `pod<hash>` name (15-character limit).
pub fn device_names(pod_name: &str, primary: bool) -> Result<(String, String), String> {
    let names = LinkNames::for_pod_interface(pod_name, primary)?;
    let suffix = &names.tap[3..];
    let (device, sibling) = if "macvtap".len() + suffix.len() <= MAX_NAME {
        (format!("macvtap{suffix}"), format!("mvdhcp{suffix}"))
    } else {
        (format!("mvt{suffix}"), format!("mvd{suffix}"))
    };
    if device.len() > MAX_NAME {
        return Err(format!(
            "the derived link name {device:?} (from pod interface {pod_name:?}) is longer than {MAX_NAME} characters"
        ));
    }
    Ok((device, sibling))
}

/// The netdev-family nftables table that keeps DHCP off pod interface `pod_name`.
pub fn guard_table(pod_name: &str) -> String {
    format!("launcher_dhcp_guard_{}", pod_name.replace('-', "_"))
}

/// The DHCP guard on the macvtap's lower device (`pod_name`), guest MAC `guest`, DHCP
/// sibling's MAC `server` (none when the pod interface has no IPv4, hence no server):
/// - egress: UDP to port 67 or 68 never leaves the pod (the guest's broadcasts and our
///   broadcast replies reach the siblings directly, inside the macvlan driver);
/// - ingress: UDP to port 68 only from our server, UDP to port 67 only from the guest. A
///   macvlan hands unicast frames to a bridge-mode sibling through its lower device's receive
///   path, so our unicast offers and the guest's unicast renewals cross this hook; everything
///   else (offers from a pod-side server, requests of foreign MACs) is dropped before the
///   macvlan receive handler could give it to the guest or to our server.
pub fn guard_ruleset(table: &str, pod_name: &str, guest: Mac, server: Option<Mac>) -> String {
    let head = |hook: &str| {
        format!(
            "\tchain {hook} {{\n\t\ttype filter hook {hook} device \"{pod_name}\" priority filter; policy accept;\n"
        )
    };
    let ingress = match server {
        Some(srv) => format!(
            "\t\tudp dport 67 ether saddr != {guest} drop\n\t\tudp dport 68 ether saddr != {srv} drop\n"
        ),
        None => "\t\tudp dport { 67, 68 } drop\n".to_string(),
    };
    format!(
        "table netdev {table} {{\n{}{ingress}\t}}\n{}\t\tudp dport {{ 67, 68 }} drop\n\t}}\n}}\n",
        head("ingress"),
        head("egress"),
    )
}

/// [`plan`] with the test hook made explicit (pure).
pub fn plan_with(ctx: &IfaceCtx<'_>, stand_in: bool) -> Result<BindingPlan, NetError> {
    let pod = ctx.pod_iface;
    if !ctx.primary && pod.kind.as_deref() == Some("macvtap") {
        return attach_existing(ctx);
    }
    let (device, sibling) =
        device_names(&pod.name, ctx.primary).map_err(|message| NetError::InvalidSpec {
            path: ctx.path.clone(),
            message,
        })?;
    let mac = guest_mac(ctx)?;
    let nic_mac = bridge_mac(pod.mac, mac);
    let srv_mac = dhcp_mac(pod.mac, &[mac, nic_mac]);
    let mtu = pod.mtu;
    let nic = LinkRef::Pod {
        index: pod.index,
        name: pod.name.clone(),
    };
    let identity: Vec<IfAddress> = pod.identity_addresses().cloned().collect();
    let server_ip = link_local_avoiding(ctx.position, ctx.pod);
    let dhcp = dhcp_config(ctx, &sibling, server_ip, mac);
    let table = guard_table(&pod.name);

    let mut steps = vec![
        // The guard first: no DHCP crosses eth0 from the moment a child exists.
        Step::NftTable {
            family: "netdev".into(),
            name: table.clone(),
            ruleset: guard_ruleset(&table, &pod.name, mac, dhcp.as_ref().map(|_| srv_mac)),
        },
    ];
    steps.extend(release_identity(&nic, &identity));
    steps.extend([
        Step::SetMac {
            link: nic.clone(),
            mac: nic_mac,
        },
        Step::LinkUp { link: nic.clone() },
    ]);
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

/// A Multus network whose pod interface already is a macvtap (the macvtap CNI made it): the
/// guest attaches to that device (libvirt opens its `/dev/tapN`). Its MAC becomes the guest's
/// (the spec's `macAddress` when given; restored on teardown); it is brought up when down;
/// the root qdisc libvirt puts on it is deleted on teardown (the default one comes back).
/// Nothing else is touched: its L2 network is the guest's, DHCP (if any) comes from that
/// network, and the launcher serves none (it has no foothold on the lower device, which is
/// outside the pod).
fn attach_existing(ctx: &IfaceCtx<'_>) -> Result<BindingPlan, NetError> {
    let pod = ctx.pod_iface;
    let mac = guest_mac(ctx)?;
    let link = LinkRef::Pod {
        index: pod.index,
        name: pod.name.clone(),
    };
    // libvirt sets the root qdisc of the macvtap it opens; teardown gives back the default.
    let mut steps = vec![Step::HypervisorRootQdisc { link: link.clone() }];
    if mac != pod.mac {
        steps.extend([
            Step::LinkDown { link: link.clone() },
            Step::SetMac {
                link: link.clone(),
                mac,
            },
        ]);
    }
    if mac != pod.mac || !pod.up {
        steps.push(Step::LinkUp { link });
    }
    Ok(BindingPlan {
        steps,
        dhcp_guard_ports: Vec::new(),
        result: IfaceResult {
            name: ctx.iface.name.clone(),
            network: ctx.network.name.clone(),
            binding: "macvtap".into(),
            pod_interface: pod.name.clone(),
            tap: pod.name.clone(),
            bridge: None,
            mac,
            mtu: pod.mtu,
            queues: 1,
            guest_ips: Vec::new(),
            dhcp: None,
            dhcp6: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_follow_the_pod_interface() {
        assert_eq!(
            device_names("eth0", true).unwrap(),
            ("macvtap0".into(), "mvdhcp0".into())
        );
        assert_eq!(
            device_names("net3", false).unwrap(),
            ("macvtap3".into(), "mvdhcp3".into())
        );
        assert_eq!(
            device_names("pod16477688c0e", false).unwrap(),
            ("mvt16477688c0e".into(), "mvd16477688c0e".into())
        );
    }

    #[test]
    fn guard_drops_dhcp_both_ways_on_the_lower_device() {
        let g = Mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
        let srv = Mac([0x02, 0x6b, 0x64, 0xf4, 0x01, 0x05]);
        let r = guard_ruleset(&guard_table("eth0"), "eth0", g, Some(srv));
        assert_eq!(
            r,
            "table netdev launcher_dhcp_guard_eth0 {\n\
             \tchain ingress {\n\t\ttype filter hook ingress device \"eth0\" priority filter; policy accept;\n\
             \t\tudp dport 67 ether saddr != 0a:58:0a:f4:01:05 drop\n\
             \t\tudp dport 68 ether saddr != 02:6b:64:f4:01:05 drop\n\t}\n\
             \tchain egress {\n\t\ttype filter hook egress device \"eth0\" priority filter; policy accept;\n\t\tudp dport { 67, 68 } drop\n\t}\n}\n"
        );
        let r = guard_ruleset(&guard_table("eth0"), "eth0", g, None);
        assert!(r.contains("hook ingress device \"eth0\" priority filter; policy accept;\n\t\tudp dport { 67, 68 } drop\n"), "{r}");
    }

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
