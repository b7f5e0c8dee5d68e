//! The tc-redirect binding (`binding: {name: tc-redirect}`): no bridge at all. The tap and the
//! pod interface are joined by `mirred egress redirect` filters on their `clsact` ingress hooks,
//! in both directions, so every frame crosses with one redirect and never enters a stack.
//!
//! For pod interface `eth0` (index *i*, MAC *M*, addresses *A*), guest MAC *G*, tap `tap0`:
//! - `tap0`: persistent tap, owner `--tap-owner`, pod MTU, the link-local /32 of the DHCP
//!   server (only when the pod interface has IPv4), up;
//! - `eth0` keeps its name (no stand-in is needed) but: down, addresses *A* removed (recorded,
//!   handed to the guest over DHCP), routes flushed, MAC changed to `02:6b:36` + the low three
//!   bytes of *M* (so the kernel's own IPv6 link-local and neighbour traffic never claims the
//!   guest's MAC *M*), up;
//! - `tap0` ingress: (pref 1, 2) IPv4 UDP to port 67 / 68, from any MAC, stays on `tap0`
//!   (served by our DHCP server bound to `tap0`, which answers only *G*: a foreign MAC gets no
//!   answer and the guest side's DHCP never reaches the pod network), (pref 3) everything else
//!   is redirected to `eth0`'s egress;
//! - `eth0` ingress: (pref 1, 2) IPv4 UDP to port 67 / 68 stays on `eth0`, where nothing
//!   listens (pod-side DHCP never reaches the guest; our server is bound to `tap0`), (pref 3)
//!   everything else is redirected to `tap0`'s egress.
//!
//! The filters are u32 classifiers with a `mirred` action, installed with the `tc` command
//! (iproute2): see [`tc_ingress_commands`]. "Stays local" is a u32 match with a `classid` and
//! no action, which ends classification with `TC_ACT_OK` (this kernel has neither `gact` nor
//! `flower`/`matchall`, so `action pass`/`drop` are not available).
//!
//! Test hook: `LAUNCHER_TC_REDIRECT_DEVICE=NAME` (test-only, like `LAUNCHER_FAULT_AFTER_STEP`)
//! makes the plan use an existing link `NAME` in place of the tap (no `create-tap` step), so a
//! veth whose peer sits in a guest namespace can stand in for a VM's NIC.

use super::bridge::bridge_mac;
use super::{dhcp_config, guest_mac, queues, release_identity, BindingPlan, IfaceCtx, LinkNames};
use crate::net::discover::IfAddress;
use crate::net::plan::{link_local_avoiding, IfaceResult, LinkRef, Step, TcFilter};
use crate::net::{Mac, NetError};

/// Test-only: the name of an existing link that stands in for the tap.
pub const DEVICE_ENV: &str = "LAUNCHER_TC_REDIRECT_DEVICE";

pub fn plan(ctx: &IfaceCtx<'_>) -> Result<BindingPlan, NetError> {
    let stand_in = std::env::var(DEVICE_ENV).ok().filter(|s| !s.is_empty());
    plan_with_device(ctx, stand_in)
}

/// [`plan`] with the tap stand-in made explicit (pure).
pub fn plan_with_device(
    ctx: &IfaceCtx<'_>,
    stand_in: Option<String>,
) -> Result<BindingPlan, NetError> {
    let pod = ctx.pod_iface;
    let names = LinkNames::for_pod_interface(&pod.name, ctx.primary).map_err(|message| {
        NetError::InvalidSpec {
            path: ctx.path.clone(),
            message,
        }
    })?;
    let mac = guest_mac(ctx)?;
    let nic_mac = bridge_mac(pod.mac, mac);
    let mtu = pod.mtu;
    let queues = queues(ctx);
    let tap_name = stand_in.clone().unwrap_or_else(|| names.tap.clone());
    let nic = LinkRef::Pod {
        index: pod.index,
        name: pod.name.clone(),
    };
    let tap = LinkRef::Created(tap_name.clone());
    let identity: Vec<IfAddress> = pod.identity_addresses().cloned().collect();
    let server_ip = link_local_avoiding(ctx.position, ctx.pod);
    let dhcp = dhcp_config(ctx, &tap_name, server_ip, mac);

    let mut steps = Vec::new();
    if stand_in.is_none() {
        steps.push(Step::CreateTap {
            name: tap_name.clone(),
            owner: ctx.opts.tap_owner.clone(),
            queues,
        });
    }
    steps.push(Step::SetMtu {
        link: tap.clone(),
        mtu,
    });
    if dhcp.is_some() {
        steps.push(Step::AddAddresses {
            link: tap.clone(),
            addresses: vec![IfAddress {
                address: server_ip.into(),
                prefix_len: 32,
                flags: 0,
                broadcast: None,
            }],
        });
    }
    steps.extend(release_identity(&nic, &identity));
    steps.extend([
        Step::SetMac {
            link: nic.clone(),
            mac: nic_mac,
        },
        Step::TcIngress {
            link: tap.clone(),
            filters: guest_side_filters(mac, nic.clone()),
        },
        Step::TcIngress {
            link: nic.clone(),
            filters: pod_side_filters(tap.clone()),
        },
        Step::LinkUp { link: nic },
        Step::LinkUp { link: tap },
    ]);
    Ok(BindingPlan {
        steps,
        dhcp_guard_ports: Vec::new(),
        result: IfaceResult {
            name: ctx.iface.name.clone(),
            network: ctx.network.name.clone(),
            binding: "tc-redirect".into(),
            pod_interface: pod.name.clone(),
            tap: tap_name,
            bridge: None,
            mac,
            mtu,
            queues,
            guest_ips: identity.iter().map(|a| a.address).collect(),
            dhcp,
            dhcp6: None,
        },
    })
}

/// The tap's ingress: DHCP from the guest side stays local whatever its source MAC (our
/// server on the tap answers only the VM's MAC, so a foreign MAC gets no answer, and no DHCP
/// from the guest side ever reaches the pod network), the rest goes to the pod NIC.
pub fn guest_side_filters(_guest: Mac, nic: LinkRef) -> Vec<TcFilter> {
    vec![
        TcFilter::KeepLocalUdp {
            src_mac: None,
            dport: 67,
        },
        TcFilter::KeepLocalUdp {
            src_mac: None,
            dport: 68,
        },
        TcFilter::RedirectTo { to: nic },
    ]
}

/// The pod NIC's ingress: pod-side DHCP stays on the NIC (nothing listens there), the rest
/// goes to the tap.
pub fn pod_side_filters(tap: LinkRef) -> Vec<TcFilter> {
    vec![
        TcFilter::KeepLocalUdp {
            src_mac: None,
            dport: 67,
        },
        TcFilter::KeepLocalUdp {
            src_mac: None,
            dport: 68,
        },
        TcFilter::RedirectTo { to: tap },
    ]
}

/// The `tc` invocations (argument lists, without the leading `tc`) that make `dev`'s ingress
/// carry exactly `filters` (filter *k* gets preference *k*+1). `name_of` gives the current
/// name of a redirect target. Idempotent: the qdisc is replaced and old filters are flushed.
pub fn tc_ingress_commands(
    dev: &str,
    filters: &[TcFilter],
    name_of: impl Fn(&LinkRef) -> String,
) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut out = vec![
        s(&["qdisc", "replace", "dev", dev, "clsact"]),
        s(&["filter", "del", "dev", dev, "ingress"]),
    ];
    for (k, f) in filters.iter().enumerate() {
        let pref = (k + 1).to_string();
        let mut c = s(&["filter", "add", "dev", dev, "ingress", "pref", &pref]);
        match f {
            TcFilter::KeepLocalUdp { src_mac, dport } => {
                c.extend(s(&["protocol", "ip", "u32"]));
                if let Some(m) = src_mac {
                    c.extend(s(&["match", "ether", "src", &m.to_string()]));
                }
                // UDP, first fragment (offset 0: later fragments carry no UDP header, and
                // their payload must not be mistaken for a port), then the port.
                c.extend(s(&[
                    "match",
                    "ip",
                    "protocol",
                    "17",
                    "0xff",
                    "match",
                    "u16",
                    "0",
                    "0x1fff",
                    "at",
                    "6",
                    "match",
                    "ip",
                    "dport",
                    &dport.to_string(),
                    "0xffff",
                    "classid",
                    "1:1",
                ]));
            }
            TcFilter::RedirectTo { to } => {
                c.extend(s(&[
                    "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred",
                    "egress", "redirect", "dev",
                ]));
                c.push(name_of(to));
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_flush_then_add_in_preference_order() {
        let g = Mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
        let nic = LinkRef::Pod {
            index: 2,
            name: "eth0".into(),
        };
        let cmds = tc_ingress_commands("tap0", &guest_side_filters(g, nic), |l| match l {
            LinkRef::Pod { name, .. } => name.clone(),
            LinkRef::Created(n) => n.clone(),
        });
        let text: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            text,
            vec![
                "qdisc replace dev tap0 clsact",
                "filter del dev tap0 ingress",
                "filter add dev tap0 ingress pref 1 protocol ip u32 match ip protocol 17 0xff match u16 0 0x1fff at 6 match ip dport 67 0xffff classid 1:1",
                "filter add dev tap0 ingress pref 2 protocol ip u32 match ip protocol 17 0xff match u16 0 0x1fff at 6 match ip dport 68 0xffff classid 1:1",
                "filter add dev tap0 ingress pref 3 protocol all u32 match u32 0 0 action mirred egress redirect dev eth0",
            ]
        );
    }
}
