//! The network plan: a pure function of (discovered pod, VMI, options). It lists, per VMI
//! interface, the result other modules consume (tap, guest MAC, MTU, queues, DHCP config), and
//! one ordered list of typed [`Step`]s that the generic engine (`apply.rs`) executes and undoes.
//! Bindings (`binding/<name>.rs`) only produce steps; they never touch the system.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::binding::{self, IfaceCtx};
use super::discover::{DiscoveredPod, IfAddress};
use super::{Mac, NetError};
use crate::dhcp::V4Config;
use crate::spec::{BindingKind, Interface, Network, Vmi};

/// Options that are not in the VMI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Owner of the tap devices (`--tap-owner`): `root` or a user name.
    pub tap_owner: String,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            tap_owner: "root".into(),
        }
    }
}

/// The whole plan: results per interface and the steps, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPlan {
    pub interfaces: Vec<IfaceResult>,
    pub steps: Vec<Step>,
}

impl NetPlan {
    pub fn result(&self) -> NetResult {
        NetResult {
            interfaces: self.interfaces.clone(),
        }
    }
}

/// What the network gives the rest of the launcher (the run helper maps each entry into a
/// `domain::NicInput`, and starts one DHCP server per `dhcp` config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetResult {
    pub interfaces: Vec<IfaceResult>,
}

impl NetResult {
    /// One config per interface that has a DHCPv4 server (L2-only interfaces have none).
    pub fn dhcp_configs(&self) -> Vec<V4Config> {
        self.interfaces
            .iter()
            .filter_map(|i| i.dhcp.clone())
            .collect()
    }

    /// One DHCPv6 + router advertisement setup per interface that has one.
    pub fn dhcp6_configs(&self) -> Vec<crate::dhcp::V6Setup> {
        self.interfaces
            .iter()
            .filter_map(|i| i.dhcp6.clone())
            .collect()
    }
}

/// One VMI interface, plumbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceResult {
    /// `spec.domain.devices.interfaces[].name`.
    pub name: String,
    /// `spec.networks[].name`.
    pub network: String,
    /// `bridge` (later: `masquerade`, `macvtap`, `tc-redirect`, `passt`).
    pub binding: String,
    /// The pod interface this VMI interface takes over (`eth0`, `net1`).
    pub pod_interface: String,
    /// The device qemu opens (`<interface type='ethernet'><target dev=…>`); for `sriov`, the
    /// VF's PCI address (`0000:3b:02.1`, a `<hostdev>`).
    pub tap: String,
    /// The in-pod bridge, for bindings that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The guest's MAC.
    pub mac: Mac,
    pub mtu: u32,
    /// virtio queues: vCPUs (at most 256) with networkInterfaceMultiqueue, else 1.
    pub queues: u32,
    /// The guest's addresses (for status and logs).
    pub guest_ips: Vec<IpAddr>,
    /// The DHCPv4 server for this interface; `None` when L2 only (no IPv4 on the pod side).
    pub dhcp: Option<V4Config>,
    /// The DHCPv6 server and router advertisements for this interface (masquerade on a pod
    /// with IPv6); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp6: Option<crate::dhcp::V6Setup>,
}

/// A link the engine acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkRef {
    /// An original pod interface, by index (stable across renames and crashes); `name` is its
    /// original name, for messages.
    Pod { index: u32, name: String },
    /// A link this plan creates, by name.
    Created(String),
}

impl std::fmt::Display for LinkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkRef::Pod { index, name } => write!(f, "pod interface {name:?} (index {index})"),
            LinkRef::Created(n) => write!(f, "{n:?}"),
        }
    }
}

/// One idempotent operation ("make it so"): re-running any prefix of the list after a crash
/// converges. Each step has an inverse in `apply::undo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Step {
    /// Replace our own nftables table in one atomic `nft -f -` transaction.
    NftTable {
        family: String,
        name: String,
        ruleset: String,
    },
    CreateBridge {
        name: String,
        mac: Mac,
        mtu: u32,
    },
    /// A link that keeps the pod interface's name, MAC and MTU (a `dummy`; a veth pair with
    /// `peer` when the kernel has no dummy type). Left administratively down.
    CreateStandIn {
        name: String,
        peer: String,
        mac: Mac,
        mtu: u32,
    },
    /// A persistent tap (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, IFF_MULTI_QUEUE when queues > 1).
    CreateTap {
        name: String,
        owner: String,
        queues: u32,
    },
    /// Write `/proc/sys/<path>`; the original value is recorded when the file exists at
    /// record time, and restored on teardown.
    SetSysctl {
        path: String,
        value: String,
    },
    LinkDown {
        link: LinkRef,
    },
    LinkUp {
        link: LinkRef,
    },
    Rename {
        link: LinkRef,
        to: String,
    },
    SetMac {
        link: LinkRef,
        mac: Mac,
    },
    SetMtu {
        link: LinkRef,
        mtu: u32,
    },
    SetMaster {
        link: LinkRef,
        master: String,
    },
    SetLearning {
        link: LinkRef,
        learning: bool,
    },
    AddAddresses {
        link: LinkRef,
        addresses: Vec<IfAddress>,
    },
    RemoveAddresses {
        link: LinkRef,
        addresses: Vec<IfAddress>,
    },
    /// Delete every main-table route whose output interface is this link.
    FlushRoutes {
        link: LinkRef,
    },
    /// Replace the masquerade NAT tables (`ip`/`ip6 kubevirt_nat`) in one atomic transaction
    /// (`nat::Nft::apply`); undone by `nat::Nft::teardown`.
    MasqueradeNat {
        config: super::nat::NatConfig,
    },
    /// A macvlan (with `tap`: a macvtap) in bridge mode on `lower`, with `mac` and `mtu`.
    CreateMacvlan {
        name: String,
        lower: LinkRef,
        mac: Mac,
        mtu: u32,
        tap: bool,
    },
    /// A `clsact` qdisc on `link` whose ingress carries exactly `filters` (filter *k* at
    /// preference *k*+1); undone by deleting the qdisc. Used by the tc-redirect binding.
    TcIngress {
        link: LinkRef,
        filters: Vec<TcFilter>,
    },
    /// Nothing to do on apply: `link` is handed to the hypervisor as it is, and libvirt replaces
    /// the root qdisc of every tap/macvtap it opens (`noqueue`). Undone by deleting the root
    /// qdisc, which gives the link back its default one. Used for a Multus macvtap.
    HypervisorRootQdisc {
        link: LinkRef,
    },
}

/// One ingress filter of [`Step::TcIngress`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum TcFilter {
    /// IPv4 UDP to `dport` (from `src_mac` when set) is not redirected: it stays on this link.
    KeepLocalUdp { src_mac: Option<Mac>, dport: u16 },
    /// Everything else goes to the egress of `to` (`mirred egress redirect`).
    RedirectTo { to: LinkRef },
}

impl Step {
    /// "creating bridge \"k6t-eth0\"": the operation and object, for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            Step::NftTable { family, name, .. } => {
                format!("replacing nftables table \"{family} {name}\"")
            }
            Step::CreateBridge { name, .. } => format!("creating bridge {name:?}"),
            Step::CreateStandIn { name, .. } => format!("creating stand-in {name:?}"),
            Step::CreateTap { name, .. } => format!("creating tap {name:?}"),
            Step::SetSysctl { path, value } => format!("setting sysctl {path} = {value}"),
            Step::LinkDown { link } => format!("setting {link} down"),
            Step::LinkUp { link } => format!("setting {link} up"),
            Step::Rename { link, to } => format!("renaming {link} to {to:?}"),
            Step::SetMac { link, mac } => format!("setting the MAC of {link} to {mac}"),
            Step::SetMtu { link, mtu } => format!("setting the MTU of {link} to {mtu}"),
            Step::SetMaster { link, master } => format!("attaching {link} to bridge {master:?}"),
            Step::SetLearning { link, learning } => format!(
                "turning learning {} on bridge port {link}",
                if *learning { "on" } else { "off" }
            ),
            Step::AddAddresses { link, .. } => format!("adding addresses to {link}"),
            Step::RemoveAddresses { link, .. } => format!("removing addresses from {link}"),
            Step::FlushRoutes { link } => format!("removing the routes of {link}"),
            Step::MasqueradeNat { .. } => {
                format!(
                    "applying the masquerade NAT (nftables tables ip/ip6 {})",
                    super::nat::TABLE
                )
            }
            Step::CreateMacvlan {
                name, lower, tap, ..
            } => format!(
                "creating {} {name:?} on {lower}",
                if *tap { "macvtap" } else { "macvlan" }
            ),
            Step::TcIngress { link, .. } => format!("installing the ingress filters of {link}"),
            Step::HypervisorRootQdisc { link } => {
                format!("handing the root qdisc of {link} to the hypervisor")
            }
        }
    }
}

/// The nftables table (bridge family) that keeps DHCP on the VM's own port.
pub const NFT_TABLE: &str = "launcher_dhcp_guard";

/// First link-local server address: interface position `i` gets 169.254.75.10 + i.
pub const LINK_LOCAL_BASE: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);

/// Most interfaces one VMI may have (keeps the link-local scheme inside 169.254.0.0/16).
pub const MAX_INTERFACES: usize = 256;

/// The DHCP server's link-local /32 for the VMI interface at `position`, computed as a number
/// (KubeVirt pastes strings and breaks from the 10th interface).
pub fn link_local_for(position: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(LINK_LOCAL_BASE) + position as u32)
}

/// Like [`link_local_for`], but steps by 1000 while the address is already used in the pod
/// (as an address or a gateway), so the server never shadows a pod address.
pub fn link_local_avoiding(position: usize, pod: &DiscoveredPod) -> Ipv4Addr {
    let used = |ip: Ipv4Addr| {
        pod.interfaces.iter().any(|i| {
            i.addresses.iter().any(|a| a.address == IpAddr::V4(ip))
                || i.routes.iter().any(|r| {
                    r.gateway == Some(IpAddr::V4(ip))
                        || (r.prefix_len == 32 && r.destination == IpAddr::V4(ip))
                })
        })
    };
    let mut ip = link_local_for(position);
    while used(ip) {
        ip = Ipv4Addr::from(u32::from(ip) + 1000);
    }
    ip
}

/// The VM's vCPU count: sockets × cores × threads (each defaulting to 1), else the CPU
/// request/limit rounded up, else 1.
pub fn vcpus(vmi: &Vmi) -> u32 {
    let d = &vmi.spec.domain;
    if let Some(cpu) = &d.cpu {
        if cpu.cores.is_some() || cpu.sockets.is_some() || cpu.threads.is_some() {
            return cpu.sockets.unwrap_or(1).max(1)
                * cpu.cores.unwrap_or(1).max(1)
                * cpu.threads.unwrap_or(1).max(1);
        }
    }
    if let Some(res) = &d.resources {
        for map in [&res.limits, &res.requests] {
            if let Some(v) = map.get("cpu") {
                if let Some(n) = cpu_quantity(v) {
                    return n;
                }
            }
        }
    }
    1
}

fn cpu_quantity(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Some(m) = s.strip_suffix('m') {
        let milli: u64 = m.parse().ok()?;
        return Some(milli.div_ceil(1000).max(1) as u32);
    }
    let f: f64 = s.parse().ok()?;
    Some((f.ceil() as u32).max(1))
}

/// The VMI's (interface, network) pairs, with KubeVirt's default (a bridge-bound `default`
/// interface on the pod network) when the VMI lists none and autoattach is not disabled.
pub fn interfaces_of(vmi: &Vmi) -> Vec<(Interface, Option<Network>)> {
    let devices = &vmi.spec.domain.devices;
    if devices.interfaces.is_empty()
        && vmi.spec.networks.is_empty()
        && devices.autoattach_pod_interface != Some(false)
    {
        let iface = Interface {
            name: "default".into(),
            bridge: Some(serde_json::json!({})),
            ..Default::default()
        };
        let net = Network {
            name: "default".into(),
            pod: Some(Default::default()),
            multus: None,
        };
        return vec![(iface, Some(net))];
    }
    devices
        .interfaces
        .iter()
        .map(|i| {
            let net = vmi.spec.networks.iter().find(|n| n.name == i.name).cloned();
            (i.clone(), net)
        })
        .collect()
}

/// The pod interface name for a network: `eth0` for the pod network (or a default Multus
/// network), `net<N>` for the N-th secondary Multus network (KubeVirt's ordinal scheme).
pub fn pod_interface_name(vmi: &Vmi, network: &Network) -> String {
    let is_primary = network.pod.is_some()
        || network
            .multus
            .as_ref()
            .is_some_and(|m| m.default == Some(true));
    if is_primary {
        return "eth0".into();
    }
    let ordinal = vmi
        .spec
        .networks
        .iter()
        .filter(|n| n.multus.as_ref().is_some_and(|m| m.default != Some(true)))
        .position(|n| n.name == network.name)
        .unwrap_or(0);
    format!("net{}", ordinal + 1)
}

/// Plans the network for the VMI. Pure: no system access.
pub fn plan(pod: &DiscoveredPod, vmi: &Vmi, opts: &PlanOptions) -> Result<NetPlan, NetError> {
    let pairs = interfaces_of(vmi);
    if pairs.len() > MAX_INTERFACES {
        return Err(NetError::InvalidSpec {
            path: "spec.domain.devices.interfaces".into(),
            message: format!(
                "{} interfaces; at most {MAX_INTERFACES} are supported",
                pairs.len()
            ),
        });
    }
    let vcpus = vcpus(vmi);
    let multiqueue = vmi.spec.domain.devices.network_interface_multiqueue == Some(true);
    let mut interfaces = Vec::new();
    let mut steps = Vec::new();
    let mut guarded_ports = Vec::new();
    for (position, (iface, network)) in pairs.iter().enumerate() {
        let path = format!("spec.domain.devices.interfaces[{position}]");
        if iface.state.as_deref() == Some("absent") {
            continue;
        }
        let Some(network) = network else {
            return Err(NetError::InvalidSpec {
                path: format!("{path}.name"),
                message: format!(
                    "interface {:?} has no network of the same name in spec.networks",
                    iface.name
                ),
            });
        };
        let kind = iface.binding_kind().ok_or_else(|| NetError::InvalidSpec {
            path: path.clone(),
            message: format!(
                "interface {:?} must set exactly one binding method",
                iface.name
            ),
        })?;
        // Multus naming (ordinal or hashed), cross-checked with the network status if any.
        let sriov = kind == BindingKind::Sriov;
        let resolved = super::discover::resolve_pod_interface(pod, vmi, network, sriov)?;
        if sriov {
            interfaces.push(sriov_result(iface, network, &resolved, &path)?);
            continue;
        }
        let pod_name = resolved.name;
        let pod_iface = pod
            .interface(&pod_name)
            .ok_or_else(|| NetError::MissingPodInterface {
                vmi_interface: iface.name.clone(),
                network: network.name.clone(),
                pod_interface: pod_name.clone(),
                found: pod
                    .interfaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let ctx = IfaceCtx {
            vmi,
            position,
            path,
            iface,
            network,
            primary: pod_name == "eth0",
            pod_iface,
            pod,
            vcpus,
            multiqueue,
            opts,
        };
        let bp = binding::plan_interface(&kind, &ctx)?;
        steps.extend(bp.steps);
        guarded_ports.extend(bp.dhcp_guard_ports);
        interfaces.push(bp.result);
    }
    if !guarded_ports.is_empty() {
        steps.insert(
            0,
            Step::NftTable {
                family: "bridge".into(),
                name: NFT_TABLE.into(),
                ruleset: dhcp_guard_ruleset(&guarded_ports),
            },
        );
    }
    Ok(NetPlan { interfaces, steps })
}

/// SR-IOV: nothing to plumb in the pod (the SR-IOV CNI moved the VF in and bound it to
/// vfio-pci). The result's `tap` is the VF's PCI address from the network status's
/// device-info (the device qemu is given, as a `<hostdev>`); `mtu` is 0 (unknown: the VF's own).
/// The guest MAC is the spec's `macAddress`, else the VF's MAC from the status, else
/// 00:00:00:00:00:00 (unknown). A `<hostdev>` cannot set a MAC (see docs/multus.md), so a spec
/// MAC that the status shows was not applied to the VF is refused.
fn sriov_result(
    iface: &Interface,
    network: &Network,
    resolved: &super::discover::ResolvedInterface,
    path: &str,
) -> Result<IfaceResult, NetError> {
    use super::network_status::StatusError;
    let entry = resolved.status.as_ref();
    let pci = resolved.pci_address.clone().ok_or_else(|| {
        NetError::Other(format!(
            "{path}: SR-IOV interface {:?} resolved without a PCI address",
            iface.name
        ))
    })?;
    let status_mac = entry.and_then(|e| e.mac);
    let mac = match &iface.mac_address {
        Some(m) => {
            let m: Mac = m.parse().map_err(|e| NetError::InvalidSpec {
                path: format!("{path}.macAddress"),
                message: e,
            })?;
            if let Some(vf) = status_mac.filter(|vf| *vf != m) {
                return Err(StatusError::SriovMac {
                    network: network.name.clone(),
                    spec: m.to_string(),
                    vf: vf.to_string(),
                }
                .into());
            }
            m
        }
        None => status_mac.unwrap_or(Mac([0; 6])),
    };
    Ok(IfaceResult {
        name: iface.name.clone(),
        network: network.name.clone(),
        binding: "sriov".into(),
        pod_interface: resolved.name.clone(),
        tap: pci,
        bridge: None,
        mac,
        mtu: 0,
        queues: 1,
        guest_ips: entry.map(|e| e.ips.clone()).unwrap_or_default(),
        dhcp: None,
        dhcp6: None,
    })
}

/// The bridge-family table that drops DHCP (UDP 67/68) between the pod NIC and the bridge in
/// both directions: nothing from the pod side reaches our server or the guest (input,
/// forward), and neither our offers nor the guest's requests leave through the pod NIC
/// (output, forward).
pub fn dhcp_guard_ruleset(ports: &[String]) -> String {
    let set = ports
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table bridge {NFT_TABLE} {{\n\
         \tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname {{ {set} }} udp dport {{ 67, 68 }} drop\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname {{ {set} }} udp dport {{ 67, 68 }} drop\n\
         \t\toifname {{ {set} }} udp dport {{ 67, 68 }} drop\n\t}}\n\
         \tchain output {{\n\t\ttype filter hook output priority filter; policy accept;\n\
         \t\toifname {{ {set} }} udp dport {{ 67, 68 }} drop\n\t}}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_arithmetic_past_the_tenth_interface() {
        assert_eq!(link_local_for(0), Ipv4Addr::new(169, 254, 75, 10));
        assert_eq!(link_local_for(9), Ipv4Addr::new(169, 254, 75, 19));
        assert_eq!(link_local_for(10), Ipv4Addr::new(169, 254, 75, 20));
        assert_eq!(link_local_for(245), Ipv4Addr::new(169, 254, 75, 255));
        assert_eq!(link_local_for(246), Ipv4Addr::new(169, 254, 76, 0));
        let all: std::collections::BTreeSet<_> = (0..MAX_INTERFACES).map(link_local_for).collect();
        assert_eq!(all.len(), MAX_INTERFACES);
    }

    #[test]
    fn cpu_quantities_round_up() {
        assert_eq!(cpu_quantity("1500m"), Some(2));
        assert_eq!(cpu_quantity("4"), Some(4));
        assert_eq!(cpu_quantity("0.5"), Some(1));
        assert_eq!(cpu_quantity("100m"), Some(1));
        assert_eq!(cpu_quantity("lots"), None);
    }
}
