//! One module per binding. Each turns one VMI interface (and the pod interface it takes over)
//! into typed [`Step`]s and an [`IfaceResult`]; the generic engine in `apply.rs` executes and
//! undoes the steps. Adding a binding = adding `<name>.rs` and one arm in [`plan_interface`].

pub mod bridge;
pub mod macvtap;
pub mod masquerade;
pub mod passt;
pub mod tc_redirect;

use std::net::{IpAddr, Ipv4Addr};

use super::discover::{DiscoveredPod, IfAddress, PodInterface};
use super::plan::{IfaceResult, LinkRef, PlanOptions, Step};
use super::{Mac, NetError};
use crate::dhcp::{V4Config, V4Route};
use crate::spec::{BindingKind, Interface, Network};

/// Everything a binding needs to plan one interface.
#[derive(Debug, Clone)]
pub struct IfaceCtx<'a> {
    /// The whole VMI (metadata: annotations, uid, name).
    pub vmi: &'a crate::spec::Vmi,
    /// The interface's position in `spec.domain.devices.interfaces`.
    pub position: usize,
    /// Its JSON path, for errors.
    pub path: String,
    pub iface: &'a Interface,
    pub network: &'a Network,
    /// True for the pod network's `eth0`.
    pub primary: bool,
    pub pod_iface: &'a PodInterface,
    pub pod: &'a DiscoveredPod,
    pub vcpus: u32,
    pub multiqueue: bool,
    pub opts: &'a PlanOptions,
}

/// A binding's contribution to the plan.
#[derive(Debug, Clone)]
pub struct BindingPlan {
    pub steps: Vec<Step>,
    /// Pod-side ports across which DHCP must not pass (one shared nftables table).
    pub dhcp_guard_ports: Vec<String>,
    pub result: IfaceResult,
}

/// Dispatches to the binding's planner.
pub fn plan_interface(kind: &BindingKind, ctx: &IfaceCtx<'_>) -> Result<BindingPlan, NetError> {
    match kind {
        BindingKind::Bridge => bridge::plan(ctx),
        BindingKind::Masquerade => masquerade::plan(ctx),
        BindingKind::Macvtap => macvtap::plan(ctx),
        BindingKind::TcRedirect => tc_redirect::plan(ctx),
        BindingKind::Passt | BindingKind::Slirp => passt::plan(kind, ctx),
        other => Err(NetError::UnsupportedBinding {
            path: ctx.path.clone(),
            binding: match other {
                BindingKind::Plugin(p) => format!("{p:?} plugin"),
                k => serde_json::to_value(k)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{k:?}")),
            },
        }),
    }
}

/// Kernel names for one pod interface, KubeVirt's scheme (operators' tools know them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkNames {
    /// `k6t-eth0`, `k6t-net1`, `k6t-<hash>` for a hashed `pod<hash>` name.
    pub bridge: String,
    /// The renamed pod NIC: `eth0-nic`, `net1-nic`, `<hash>-nic`.
    pub nic: String,
    /// `tap0` for the pod network; `tap` + the name after its first 3 characters for a
    /// secondary network (`net1` → `tap1`, `pod<hash>` → `tap<hash>`).
    pub tap: String,
    /// The veth peer of the stand-in when there is no dummy type: `eth0-sb`, `net1-sb`.
    pub stand_in_peer: String,
}

/// Linux's limit (IFNAMSIZ - 1).
pub const MAX_NAME: usize = 15;

impl LinkNames {
    pub fn for_pod_interface(name: &str, primary: bool) -> Result<Self, String> {
        let trimmed = if name.len() > 3 && name.starts_with("pod") {
            &name[3..]
        } else {
            name
        };
        let tap = if primary {
            "tap0".to_string()
        } else {
            format!("tap{}", name.get(3..).unwrap_or(""))
        };
        let names = LinkNames {
            bridge: format!("k6t-{trimmed}"),
            nic: format!("{trimmed}-nic"),
            tap,
            stand_in_peer: format!("{trimmed}-sb"),
        };
        for n in [&names.bridge, &names.nic, &names.tap, &names.stand_in_peer] {
            if n.len() > MAX_NAME {
                return Err(format!(
                    "the derived link name {n:?} (from pod interface {name:?}) is longer than {MAX_NAME} characters"
                ));
            }
        }
        Ok(names)
    }
}

/// The guest MAC: the spec's `macAddress`, else the pod interface's original MAC.
pub fn guest_mac(ctx: &IfaceCtx<'_>) -> Result<Mac, NetError> {
    match &ctx.iface.mac_address {
        Some(s) => {
            let m: Mac = s.parse().map_err(|e| NetError::InvalidSpec {
                path: format!("{}.macAddress", ctx.path),
                message: e,
            })?;
            if m.0[0] & 1 == 1 {
                return Err(NetError::InvalidSpec {
                    path: format!("{}.macAddress", ctx.path),
                    message: format!("{m} is a multicast address; a NIC needs a unicast MAC"),
                });
            }
            Ok(m)
        }
        None => Ok(ctx.pod_iface.mac),
    }
}

/// virtio queues: one per vCPU (at most 256) with networkInterfaceMultiqueue on a virtio NIC.
pub fn queues(ctx: &IfaceCtx<'_>) -> u32 {
    let virtio = matches!(ctx.iface.model.as_deref(), None | Some("virtio"));
    if ctx.multiqueue && virtio {
        ctx.vcpus.clamp(1, 256)
    } else {
        1
    }
}

/// Lease time handed to guests: one year. The address is the pod's for the pod's lifetime, so
/// renewals carry no information; a finite value keeps clients that mishandle "infinite" sane.
pub const LEASE_SECS: u32 = 365 * 24 * 3600;

/// The DHCPv4 server config for a guest that takes over `pod_iface`'s IPv4 identity, or
/// `None` when the pod interface has no IPv4 address (L2 only).
pub fn dhcp_config(
    ctx: &IfaceCtx<'_>,
    interface: &str,
    server_ip: Ipv4Addr,
    client_mac: Mac,
) -> Option<V4Config> {
    let (client_ip, prefix_len) = ctx.pod_iface.ipv4().next()?;
    let v4_routes: Vec<_> = ctx
        .pod_iface
        .routes
        .iter()
        .filter(|r| r.destination.is_ipv4() && !r.is_kernel())
        .collect();
    let gw4 = |g: &Option<IpAddr>| match g {
        Some(IpAddr::V4(g)) => *g,
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let router = v4_routes
        .iter()
        .filter(|r| r.is_default() && r.gateway.is_some())
        .min_by_key(|r| r.metric.unwrap_or(0))
        .map(|r| gw4(&r.gateway));
    let mut routes: Vec<V4Route> = v4_routes
        .iter()
        .filter(|r| !r.is_default())
        .filter_map(|r| match r.destination {
            IpAddr::V4(dest) => Some(V4Route {
                dest,
                prefix_len: r.prefix_len,
                gateway: gw4(&r.gateway),
            }),
            IpAddr::V6(_) => None,
        })
        .collect();
    if let Some(gw) = router {
        routes.push(V4Route {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: gw,
        });
    }
    let dns = &ctx.pod.dns;
    let opts = ctx.iface.dhcp_options.clone().unwrap_or_default();
    let ntp = opts
        .ntp_servers
        .iter()
        .filter_map(|s| match s.parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => {
                tracing::warn!(server = %s, "dhcpOptions.ntpServers: not an IPv4 address; skipped");
                None
            }
        })
        .collect();
    let private = opts
        .private_options
        .iter()
        .filter_map(|p| match u8::try_from(p.option) {
            Ok(code) if (224..=254).contains(&code) => Some((code, p.value.as_bytes().to_vec())),
            _ => {
                tracing::warn!(
                    option = p.option,
                    "dhcpOptions.privateOptions: not in 224–254; skipped"
                );
                None
            }
        })
        .collect();
    Some(V4Config {
        interface: interface.to_string(),
        server_ip,
        client_mac: client_mac.0,
        client_ip,
        prefix_len,
        router,
        routes,
        dns: dns.nameservers_v4.clone(),
        search: dns.search.clone(),
        domain: dns
            .search
            .iter()
            .fold(None::<&String>, |best, d| match best {
                Some(b) if b.len() >= d.len() => Some(b),
                _ => Some(d),
            })
            .cloned(),
        // The VMI's `spec.hostname` when the user wrote one (KubeVirt gives its pod that
        // hostname, so in KubeVirt the two agree); otherwise the pod's own hostname.
        hostname: ctx
            .vmi
            .spec
            .hostname
            .clone()
            .or_else(|| ctx.pod.hostname.clone()),
        mtu: u16::try_from(ctx.pod_iface.mtu).unwrap_or(u16::MAX),
        lease_secs: LEASE_SECS,
        ntp,
        tftp_server: opts.tftp_server_name.clone(),
        boot_file: opts.boot_file_name.clone(),
        private,
    })
}

/// The steps that take a pod interface's IPv4/IPv6 identity away from it (the guest gets it):
/// down, its identity addresses removed (recorded in the plan), its routes flushed. Shared by
/// the bindings that keep the pod interface as their uplink (tc-redirect, macvtap; the
/// bridge binding renames in between and keeps its own copy).
pub fn release_identity(nic: &LinkRef, identity: &[IfAddress]) -> [Step; 3] {
    [
        Step::LinkDown { link: nic.clone() },
        Step::RemoveAddresses {
            link: nic.clone(),
            addresses: identity.to_vec(),
        },
        Step::FlushRoutes { link: nic.clone() },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubevirt() {
        let n = LinkNames::for_pod_interface("eth0", true).unwrap();
        assert_eq!(
            (n.bridge.as_str(), n.nic.as_str(), n.tap.as_str()),
            ("k6t-eth0", "eth0-nic", "tap0")
        );
        let n = LinkNames::for_pod_interface("net12", false).unwrap();
        assert_eq!(
            (n.bridge.as_str(), n.nic.as_str(), n.tap.as_str()),
            ("k6t-net12", "net12-nic", "tap12")
        );
        let n = LinkNames::for_pod_interface("pod16477688c0e", false).unwrap();
        assert_eq!(
            (n.bridge.as_str(), n.nic.as_str(), n.tap.as_str()),
            ("k6t-16477688c0e", "16477688c0e-nic", "tap16477688c0e")
        );
        assert!(LinkNames::for_pod_interface("averylongname12", false).is_err());
    }
}
