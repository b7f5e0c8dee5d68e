//! The masquerade binding: the guest sits on a private subnet behind the pod's own address.
//!
//! For the pod network's `eth0` (masquerade is only valid there), with the defaults:
//! - `k6t-eth0`: a bridge with the fixed MAC `02:00:00:00:00:00` (reserved: refused as a user
//!   MAC) and the pod MTU, holding the gateway addresses — the 2nd address of `vmNetworkCIDR`
//!   (`10.0.2.1/24`) and, when the pod has IPv6, of `vmIPv6NetworkCIDR` (`fd10:0:2::1/120`,
//!   `nodad`); `route_localnet=1` (so `127.0.0.1` traffic DNATed to the guest can leave);
//! - `tap0`: persistent, owned by `--tap-owner`, multiqueue when asked, pod MTU, on the bridge;
//! - the pod's `eth0` is left untouched (name, MAC, addresses, routes);
//! - `net.ipv4.ip_forward=1` and, with IPv6, `net.ipv6.conf.all.forwarding=1` (recorded and
//!   restored by the engine);
//! - the NAT ([`crate::net::nat`]): one atomic nftables transaction, applied last.
//!
//! The guest gets the 3rd address (`10.0.2.2`, `fd10:0:2::2`); DHCPv4 serves it with the
//! gateway as router and server id. With IPv6, the bridge also holds the fixed link-local
//! address `fe80::ff:fe00:0` (`nodad`), and the result carries a [`V6Setup`]: DHCPv6 serves
//! `fd10:0:2::2` and router advertisements (from that link-local address) give the guest its
//! default route, the on-link prefix and the MTU (`dhcp::server6`). Without IPv6 in the pod
//! (none on `eth0`, or IPv6 disabled) IPv6 is skipped with one log line and IPv4 works as
//! usual. See `docs/masquerade.md`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{dhcp_config, guest_mac, queues, BindingPlan, IfaceCtx, LinkNames};
use crate::dhcp::ra::RaConfig;
use crate::dhcp::v6::V6Config;
use crate::dhcp::V6Setup;
use crate::net::discover::IfAddress;
use crate::net::nat::{self, NatConfig, NatError, NatFamily, NatPort, NatPortRange};
use crate::net::plan::{IfaceResult, LinkRef, Step};
use crate::net::{Mac, NetError};

/// The bridge's fixed MAC (KubeVirt's; operators' tools know it). No guest may use it.
pub const BRIDGE_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0]);

/// `vmNetworkCIDR` when the VMI does not set it.
pub const DEFAULT_V4_CIDR: &str = "10.0.2.0/24";
/// `vmIPv6NetworkCIDR` when the VMI does not set it.
pub const DEFAULT_V6_CIDR: &str = "fd10:0:2::/120";

/// The bridge's link-local address: the EUI-64 one of [`BRIDGE_MAC`], `fe80::ff:fe00:0`.
pub fn bridge_link_local() -> Ipv6Addr {
    crate::dhcp::v6::eui64_link_local(&BRIDGE_MAC.0)
}

/// `IFA_F_NODAD`: the gateway's IPv6 address is usable at once (the bridge may have no
/// carrier yet, and nobody else can hold the address on our private segment).
pub const IFA_F_NODAD: u32 = 0x02;

/// Same namespace as the domain's stand-in MACs (`domain::plan::derived_mac`), so a masquerade
/// guest without `macAddress` gets the MAC `launcher render` shows (tests/net_masquerade.rs
/// checks they agree). Duplicated because `net` must not depend on `domain`.
const MAC_NS: uuid::Uuid = uuid::Uuid::from_u128(0x6c61_756e_6368_6572_8a1e_0d0c_2b7f_43a9);

/// The guest MAC when the spec sets none: derived from the VMI (uid, else namespace/name) and
/// the interface name — locally administered, unicast, the same on every run, never the
/// bridge's. (The bridge binding hands the guest the pod's MAC; masquerade does not take over
/// the pod's L2 identity, so like KubeVirt it uses a MAC of its own, but a stable one.)
pub fn derived_mac(vmi: &crate::spec::Vmi, iface: &str) -> Mac {
    let id = vmi.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            vmi.metadata.namespace.as_deref().unwrap_or("default"),
            vmi.metadata.name.as_deref().unwrap_or("")
        )
    });
    let b = uuid::Uuid::new_v5(&MAC_NS, format!("{id}/{iface}").as_bytes()).into_bytes();
    let mut m = Mac([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]);
    if m == BRIDGE_MAC {
        m.0[5] = 1;
    }
    m
}

/// The gateway (2nd) and guest (3rd) addresses of a VM network, and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmNet<A> {
    pub gateway: A,
    pub guest: A,
    pub prefix_len: u8,
}

fn parse_v4(text: &str, path: &str) -> Result<VmNet<Ipv4Addr>, NetError> {
    let invalid = |message: String| NetError::InvalidSpec {
        path: path.to_string(),
        message,
    };
    let net: ipnet::Ipv4Net = text.parse().map_err(|_| {
        invalid(format!(
            "{text:?} is not an IPv4 CIDR such as \"10.0.2.0/24\""
        ))
    })?;
    if net.prefix_len() > 30 {
        return Err(invalid(format!(
            "{text:?} is too small: a VM network needs a prefix of /30 or shorter"
        )));
    }
    let base = u32::from(net.network());
    Ok(VmNet {
        gateway: Ipv4Addr::from(base + 1),
        guest: Ipv4Addr::from(base + 2),
        prefix_len: net.prefix_len(),
    })
}

fn parse_v6(text: &str, path: &str) -> Result<VmNet<Ipv6Addr>, NetError> {
    let invalid = |message: String| NetError::InvalidSpec {
        path: path.to_string(),
        message,
    };
    let net: ipnet::Ipv6Net = text.parse().map_err(|_| {
        invalid(format!(
            "{text:?} is not an IPv6 CIDR such as \"fd10:0:2::/120\""
        ))
    })?;
    if net.prefix_len() > 126 {
        return Err(invalid(format!(
            "{text:?} is too small: a VM network needs a prefix of /126 or shorter"
        )));
    }
    let base = u128::from(net.network());
    Ok(VmNet {
        gateway: Ipv6Addr::from(base + 1),
        guest: Ipv6Addr::from(base + 2),
        prefix_len: net.prefix_len(),
    })
}

/// Refuses a VM network that overlaps an address or route of the pod: the guest would shadow
/// it (or be shadowed).
fn check_overlap(ctx: &IfaceCtx<'_>, net: ipnet::IpNet, path: &str) -> Result<(), NetError> {
    for i in &ctx.pod.interfaces {
        for a in i.identity_addresses() {
            if net.contains(&a.address) {
                return Err(NetError::InvalidSpec {
                    path: path.to_string(),
                    message: format!(
                        "{net} contains the pod address {} (on {:?}); choose a VM network that \
                         does not overlap the pod's network",
                        a.address, i.name
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Plans the masquerade binding for one interface (pure).
pub fn plan(ctx: &IfaceCtx<'_>) -> Result<BindingPlan, NetError> {
    let pod = ctx.pod_iface;
    let invalid = |path: String, message: String| NetError::InvalidSpec { path, message };
    if !ctx.primary {
        return Err(invalid(
            ctx.path.clone(),
            format!(
                "masquerade is only supported on the pod network, and pod interface {:?} is a \
                 secondary network",
                pod.name
            ),
        ));
    }
    let names = LinkNames::for_pod_interface(&pod.name, ctx.primary)
        .map_err(|message| invalid(ctx.path.clone(), message))?;
    let mac = match &ctx.iface.mac_address {
        Some(_) => guest_mac(ctx)?,
        None => derived_mac(ctx.vmi, &ctx.iface.name),
    };
    if mac == BRIDGE_MAC {
        return Err(invalid(
            format!("{}.macAddress", ctx.path),
            format!("{mac} is reserved for the masquerade bridge k6t-eth0: choose another MAC"),
        ));
    }
    let pod_net = ctx.network.pod.clone().unwrap_or_default();
    let net_path = format!("spec.networks[name={:?}].pod", ctx.network.name);

    let pod_v4: Vec<Ipv4Addr> = pod.ipv4().map(|(a, _)| a).collect();
    let pod_v6: Vec<Ipv6Addr> = pod
        .identity_addresses()
        .filter_map(|a| match a.address {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
        .collect();
    if pod_v4.is_empty() && pod_v6.is_empty() {
        return Err(invalid(
            ctx.path.clone(),
            format!(
                "the masquerade binding needs an IPv4 or IPv6 address on pod interface {:?}, \
                 which has none",
                pod.name
            ),
        ));
    }

    let v4 = if pod_v4.is_empty() {
        tracing::info!(
            pod_interface = %pod.name,
            "masquerade: IPv4 skipped: the pod interface has no IPv4 address"
        );
        None
    } else {
        let text = pod_net
            .vm_network_cidr
            .as_deref()
            .unwrap_or(DEFAULT_V4_CIDR);
        let path = format!("{net_path}.vmNetworkCIDR");
        let n = parse_v4(text, &path)?;
        check_overlap(
            ctx,
            ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(n.gateway, n.prefix_len)
                    .expect("checked prefix")
                    .trunc(),
            ),
            &path,
        )?;
        Some(n)
    };
    let v6 = if pod_v6.is_empty() {
        tracing::info!(
            pod_interface = %pod.name,
            "masquerade: IPv6 skipped: the pod interface has no global IPv6 address (the pod \
             has no IPv6, or IPv6 is disabled in the pod: net.ipv6.conf.all.disable_ipv6=1); \
             IPv4 is unaffected"
        );
        None
    } else {
        let text = pod_net
            .vm_ipv6_network_cidr
            .as_deref()
            .unwrap_or(DEFAULT_V6_CIDR);
        let path = format!("{net_path}.vmIPv6NetworkCIDR");
        let n = parse_v6(text, &path)?;
        check_overlap(
            ctx,
            ipnet::IpNet::V6(
                ipnet::Ipv6Net::new(n.gateway, n.prefix_len)
                    .expect("checked prefix")
                    .trunc(),
            ),
            &path,
        )?;
        Some(n)
    };

    let nat_err = |e: NatError| invalid(format!("{}.ports", ctx.path), e.to_string());
    let config = NatConfig {
        pod_interface: pod.name.clone(),
        bridge: names.bridge.clone(),
        v4: v4.map(|n| NatFamily {
            guest: n.guest,
            gateway: n.gateway,
            pod_ips: pod_v4.clone(),
        }),
        v6: v6.map(|n| NatFamily {
            guest: n.guest,
            gateway: n.gateway,
            pod_ips: pod_v6.clone(),
        }),
        ports: ctx
            .iface
            .ports
            .iter()
            .map(NatPort::from_spec)
            .collect::<Result<_, _>>()
            .map_err(nat_err)?,
        port_ranges: ctx
            .iface
            .port_ranges
            .iter()
            .map(NatPortRange::from_spec)
            .collect::<Result<_, _>>()
            .map_err(nat_err)?,
        istio: nat::istio_injected(&ctx.vmi.metadata.annotations),
    };
    // Refuse at plan time what the NAT generator would refuse mid-apply (exit 2, nothing done).
    config.validate().map_err(nat_err)?;

    let mtu = pod.mtu;
    let queues = queues(ctx);
    let bridge = LinkRef::Created(names.bridge.clone());
    let tap = LinkRef::Created(names.tap.clone());

    let mut addresses = Vec::new();
    if let Some(n) = v4 {
        let host_bits = 32 - u32::from(n.prefix_len);
        let broadcast = Ipv4Addr::from(u32::from(n.gateway) | ((1u64 << host_bits) - 1) as u32);
        addresses.push(IfAddress {
            address: n.gateway.into(),
            prefix_len: n.prefix_len,
            flags: 0,
            broadcast: Some(broadcast),
        });
    }
    if let Some(n) = v6 {
        addresses.push(IfAddress {
            address: n.gateway.into(),
            prefix_len: n.prefix_len,
            flags: IFA_F_NODAD,
            broadcast: None,
        });
        // The router's link-local address (the source of its RAs and DHCPv6 replies, and the
        // guest's default gateway), fixed and DAD-free so that it is usable before the tap
        // has carrier; the kernel would derive the same one from the bridge MAC later.
        addresses.push(IfAddress {
            address: bridge_link_local().into(),
            prefix_len: 64,
            flags: IFA_F_NODAD,
            broadcast: None,
        });
    }

    let mut steps = vec![Step::CreateBridge {
        name: names.bridge.clone(),
        mac: BRIDGE_MAC,
        mtu,
    }];
    if v6.is_some() {
        // A pod whose CNI enabled IPv6 on eth0 only may have default.disable_ipv6=1; a link we
        // create would then refuse the gateway address. (Per-link: vanishes with the bridge.)
        steps.push(Step::SetSysctl {
            path: format!("net/ipv6/conf/{}/disable_ipv6", names.bridge),
            value: "0".into(),
        });
    }
    if v4.is_some() {
        steps.push(Step::SetSysctl {
            path: format!("net/ipv4/conf/{}/route_localnet", names.bridge),
            value: "1".into(),
        });
    }
    steps.extend([
        Step::AddAddresses {
            link: bridge.clone(),
            addresses: addresses.clone(),
        },
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
    if v4.is_some() {
        steps.push(Step::SetSysctl {
            path: "net/ipv4/ip_forward".into(),
            value: "1".into(),
        });
    }
    if v6.is_some() {
        steps.push(Step::SetSysctl {
            path: "net/ipv6/conf/all/forwarding".into(),
            value: "1".into(),
        });
    }
    steps.push(Step::MasqueradeNat { config });

    let dhcp = match v4 {
        Some(n) => dhcp_config(ctx, &names.bridge, n.gateway, mac).map(|mut c| {
            c.client_ip = n.guest;
            c.prefix_len = n.prefix_len;
            c.router = Some(n.gateway);
            // The guest's only route is its default route (option 3); the pod's routes are
            // the pod's business, reached through the NAT.
            c.routes = Vec::new();
            c
        }),
        None => None,
    };
    let dhcp6 = v6.map(|n| V6Setup {
        dhcp: V6Config {
            interface: names.bridge.clone(),
            server_mac: BRIDGE_MAC.0,
            client_mac: mac.0,
            client_ip: n.guest,
            dns: ctx.pod.dns.nameservers_v6.clone(),
            search: ctx.pod.dns.search.clone(),
            lifetime_secs: crate::dhcp::v6::INFINITY,
        },
        ra: RaConfig {
            router_mac: BRIDGE_MAC.0,
            mtu,
            prefix: Some((n.gateway, n.prefix_len)),
            router_lifetime_secs: RaConfig::DEFAULT_ROUTER_LIFETIME,
            dns: ctx.pod.dns.nameservers_v6.clone(),
            search: ctx.pod.dns.search.clone(),
        },
    });
    let mut guest_ips: Vec<IpAddr> = Vec::new();
    if let Some(n) = v4 {
        guest_ips.push(n.guest.into());
    }
    if let Some(n) = v6 {
        guest_ips.push(n.guest.into());
    }
    Ok(BindingPlan {
        steps,
        dhcp_guard_ports: Vec::new(),
        result: IfaceResult {
            name: ctx.iface.name.clone(),
            network: ctx.network.name.clone(),
            binding: "masquerade".into(),
            pod_interface: pod.name.clone(),
            tap: names.tap,
            bridge: Some(names.bridge),
            mac,
            mtu,
            queues,
            guest_ips,
            dhcp,
            dhcp6,
        },
    })
}

/// The engine's `MasqueradeNat` step: one atomic transaction replacing our tables.
pub fn apply_nat(config: &NatConfig) -> Result<(), NetError> {
    nat::Nft::new().apply(config).map_err(nat_to_net)
}

/// The engine's undo of `MasqueradeNat`: delete our tables (missing tables are fine).
pub fn teardown_nat() -> Result<(), NetError> {
    nat::Nft::new().teardown().map_err(nat_to_net)
}

/// Keeps nft's own text and the exit code class (missing/failing nft: 3; invalid: 2).
fn nat_to_net(e: NatError) -> NetError {
    match e {
        NatError::Invalid(message) => NetError::InvalidSpec {
            path: "masquerade NAT".into(),
            message,
        },
        NatError::NftMissing {
            program,
            operation,
            source,
        } => NetError::MissingTool {
            tool: program,
            operation,
            detail: source.to_string(),
        },
        NatError::NftFailed {
            program,
            operation,
            status,
            stderr,
            first_rejected,
        } => NetError::Nft {
            operation,
            detail: format!(
                "{program:?} ({status}): {stderr}{}",
                first_rejected
                    .map(|c| format!("\nfirst rejected command: {c}"))
                    .unwrap_or_default()
            ),
        },
        e @ NatError::Encode(_) => NetError::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_and_guest_are_the_second_and_third_addresses() {
        let n = parse_v4("10.0.2.0/24", "p").unwrap();
        assert_eq!(n.gateway, Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(n.guest, Ipv4Addr::new(10, 0, 2, 2));
        // A host address inside the network still counts from the network address.
        let n = parse_v4("172.16.5.77/28", "p").unwrap();
        assert_eq!(n.gateway, Ipv4Addr::new(172, 16, 5, 65));
        assert_eq!(n.prefix_len, 28);
        let n = parse_v6("fd10:0:2::/120", "p").unwrap();
        assert_eq!(n.gateway, "fd10:0:2::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(n.guest, "fd10:0:2::2".parse::<Ipv6Addr>().unwrap());
        assert!(parse_v4("10.0.2.0/31", "p").is_err());
        assert!(parse_v4("fd10::/64", "p").is_err());
        assert!(parse_v6("10.0.2.0/24", "p").is_err());
        assert!(parse_v6("fd10::/127", "p").is_err());
    }

    #[test]
    fn nat_errors_keep_their_exit_class() {
        use crate::error::Classify;
        let e = nat_to_net(NatError::NftMissing {
            program: "nft".into(),
            operation: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(e.exit_kind().code(), 3);
        let e = nat_to_net(NatError::NftFailed {
            program: "nft".into(),
            operation: "applying".into(),
            status: "exit status: 1".into(),
            stderr: "Error: boom".into(),
            first_rejected: Some("{\"add\":1}".into()),
        });
        assert_eq!(e.exit_kind().code(), 3);
        assert!(e.to_string().contains("Error: boom"), "{e}");
        assert!(e.to_string().contains("first rejected command"), "{e}");
        assert_eq!(
            nat_to_net(NatError::Invalid("x".into())).exit_kind().code(),
            2
        );
    }
}
