//! Discovery: what the pod gives us, read once over rtnetlink (one shared connection), plus
//! `/etc/resolv.conf` and the hostname. Everything here is plain, serialisable data: the plan
//! is a pure function of it, and the recorded state file stores it as "the original pod".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use super::network_status::{self, NetworkStatus, StatusEntry, StatusError};
use super::{Mac, NetError};

/// The pod as found before any plumbing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredPod {
    /// Every link except loopback, in index order.
    pub interfaces: Vec<PodInterface>,
    pub dns: DnsConfig,
    pub hostname: Option<String>,
    /// The Multus network-status annotation, when one was given (`--network-status FILE` or
    /// the VMI's annotation): recorded with the pod, so a re-run plans the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_status: Option<NetworkStatus>,
}

impl DiscoveredPod {
    pub fn interface(&self, name: &str) -> Option<&PodInterface> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInterface {
    pub index: u32,
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// rtnetlink's `IFLA_INFO_KIND` (`veth`, `bridge`, `tun`, ...), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The index of the link's bridge/bond master, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<u32>,
    pub addresses: Vec<IfAddress>,
    /// Main-table unicast routes whose output interface is this link.
    pub routes: Vec<PodRoute>,
}

impl PodInterface {
    pub fn ipv4(&self) -> impl Iterator<Item = (Ipv4Addr, u8)> + '_ {
        self.addresses.iter().filter_map(|a| match a.address {
            IpAddr::V4(v4) => Some((v4, a.prefix_len)),
            IpAddr::V6(_) => None,
        })
    }

    /// Addresses that belong to the pod's identity (not IPv6 link-local, which the kernel
    /// derives from the MAC by itself).
    pub fn identity_addresses(&self) -> impl Iterator<Item = &IfAddress> + '_ {
        self.addresses.iter().filter(|a| !a.is_ipv6_link_local())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
    /// `IFA_FLAGS` minus transient bits (tentative, DAD failed, deprecated), so that a restored
    /// address carries the same `nodad`/`noprefixroute` as the original.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flags: u32,
    /// IPv4 broadcast (`brd`), only when the original had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<Ipv4Addr>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl IfAddress {
    pub fn is_ipv6_link_local(&self) -> bool {
        matches!(self.address, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
    }
}

/// A main-table unicast route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRoute {
    pub destination: IpAddr,
    pub prefix_len: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pref_src: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// rtnetlink protocol number (2 = kernel, 3 = boot, 4 = static, ...).
    pub protocol: u8,
    /// rtnetlink scope (0 = universe, 253 = link, ...).
    pub scope: u8,
    /// `RTNH_F_ONLINK`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub onlink: bool,
}

impl PodRoute {
    /// Installed by the kernel for an address (the connected route): restored by re-adding the
    /// address, dropped from DHCP option 121.
    pub fn is_kernel(&self) -> bool {
        self.protocol == u8::from(RouteProtocol::Kernel)
    }

    pub fn is_default(&self) -> bool {
        self.prefix_len == 0
    }
}

/// What `/etc/resolv.conf` says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub nameservers_v4: Vec<Ipv4Addr>,
    pub nameservers_v6: Vec<Ipv6Addr>,
    pub search: Vec<String>,
}

/// Parses resolv.conf text. Unknown or malformed lines are ignored (with a debug log): the
/// file is written by kubelet and by humans.
pub fn parse_resolv_conf(text: &str) -> DnsConfig {
    let mut dns = DnsConfig::default();
    let mut domain: Option<String> = None;
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => match words.next().map(|w| w.split('%').next().unwrap_or(w)) {
                Some(w) => match w.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) if !dns.nameservers_v4.contains(&a) => {
                        dns.nameservers_v4.push(a)
                    }
                    Ok(IpAddr::V6(a)) if !dns.nameservers_v6.contains(&a) => {
                        dns.nameservers_v6.push(a)
                    }
                    Ok(_) => {}
                    Err(_) => tracing::debug!(line, "resolv.conf: ignoring a bad nameserver"),
                },
                None => tracing::debug!(line, "resolv.conf: nameserver without an address"),
            },
            // The last `search` line wins (resolver(5)).
            Some("search") => {
                dns.search = words
                    .map(|w| w.trim_end_matches('.').to_string())
                    .filter(|w| !w.is_empty())
                    .collect();
            }
            Some("domain") => domain = words.next().map(|w| w.trim_end_matches('.').to_string()),
            Some(_) | None => {}
        }
    }
    if dns.search.is_empty() {
        if let Some(d) = domain.filter(|d| !d.is_empty()) {
            dns.search.push(d);
        }
    }
    dns
}

/// Where discovery looks (tests point these elsewhere).
#[derive(Debug, Clone)]
pub struct DiscoverSources<'a> {
    pub resolv_conf: &'a Path,
    /// The pod's hostname; `None` reads `gethostname(2)`.
    pub hostname: Option<String>,
}

/// Reads the pod: links, addresses, main-table routes (one netlink connection), resolv.conf
/// and the hostname. A missing resolv.conf is not an error (no DNS is served).
pub async fn discover(
    handle: &Handle,
    src: &DiscoverSources<'_>,
) -> Result<DiscoveredPod, NetError> {
    let mut interfaces = read_links(handle).await?;
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("listing", "addresses", e))?;
    for a in &addrs {
        if let Some(iface) = interfaces.iter_mut().find(|i| i.index == a.header.index) {
            if let Some(addr) = address_of(a) {
                iface.addresses.push(addr);
            }
        }
    }
    for v6 in [false, true] {
        let req = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let routes: Vec<RouteMessage> = handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::netlink("listing", "routes", e))?;
        for r in &routes {
            if let Some((oif, route)) = route_of(r) {
                if let Some(iface) = interfaces.iter_mut().find(|i| i.index == oif) {
                    iface.routes.push(route);
                }
            }
        }
    }
    let dns = match std::fs::read_to_string(src.resolv_conf) {
        Ok(t) => parse_resolv_conf(&t),
        Err(e) => {
            tracing::warn!(path = %src.resolv_conf.display(), error = %e, "cannot read resolv.conf; the guest gets no DNS settings");
            DnsConfig::default()
        }
    };
    let hostname = match &src.hostname {
        Some(h) => Some(h.clone()),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty()),
    };
    Ok(DiscoveredPod {
        interfaces,
        dns,
        hostname,
        network_status: None,
    })
}

/// Every non-loopback link, without addresses or routes.
pub async fn read_links(handle: &Handle) -> Result<Vec<PodInterface>, NetError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("listing", "links", e))?;
    let mut out: Vec<PodInterface> = links
        .iter()
        .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
        .map(link_of)
        .collect();
    out.sort_by_key(|i| i.index);
    Ok(out)
}

/// The facts of one link message.
pub fn link_of(l: &LinkMessage) -> PodInterface {
    let mut iface = PodInterface {
        index: l.header.index,
        name: String::new(),
        mac: Mac([0; 6]),
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        kind: None,
        master: None,
        addresses: Vec::new(),
        routes: Vec::new(),
    };
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => iface.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                iface.mac = Mac([a[0], a[1], a[2], a[3], a[4], a[5]])
            }
            LinkAttribute::Mtu(m) => iface.mtu = *m,
            LinkAttribute::Controller(m) => iface.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        iface.kind = Some(kind_name(k));
                    }
                }
            }
            _ => {}
        }
    }
    iface
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Other(s) => s.clone(),
        other => other.to_string(),
    }
}

fn address_of(a: &AddressMessage) -> Option<IfAddress> {
    let mut local = None;
    let mut address = None;
    let mut flags: u32 = u32::from(a.header.flags.bits());
    let mut broadcast = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Broadcast(b) => broadcast = Some(*b),
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    // IFA_F_SECONDARY 0x01, IFA_F_DADFAILED 0x08, IFA_F_DEPRECATED 0x20, IFA_F_TENTATIVE 0x40,
    // IFA_F_PERMANENT 0x80: state, not configuration.
    flags &= !(0x01 | 0x08 | 0x20 | 0x40 | 0x80);
    Some(IfAddress {
        address: local.or(address)?,
        prefix_len: a.header.prefix_len,
        flags,
        broadcast,
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table unicast route and its output interface.
fn route_of(r: &RouteMessage) -> Option<(u32, PodRoute)> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let mut oif = None;
    let mut destination = None;
    let mut gateway = None;
    let mut pref_src = None;
    let mut metric = None;
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(d) => destination = ip_of(d),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => pref_src = ip_of(s),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let v6 = r.header.address_family == netlink_packet_route::AddressFamily::Inet6;
    let destination = destination.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    // IPv6 multicast and link-local prefix routes come back by themselves when the link is up.
    if let IpAddr::V6(d) = destination {
        if d.is_multicast() || (d.segments()[0] & 0xffc0) == 0xfe80 {
            return None;
        }
    }
    Some((
        oif?,
        PodRoute {
            destination,
            prefix_len: r.header.destination_prefix_length,
            gateway,
            pref_src,
            metric,
            protocol: u8::from(r.header.protocol),
            scope: u8::from(r.header.scope),
            onlink: r
                .header
                .flags
                .contains(netlink_packet_route::route::RouteFlags::Onlink),
        },
    ))
}

// ------------------------------------------------------------------------------------------
// Secondary (Multus) pod interfaces: naming and the network-status cross-check.

/// Where the kernel lists PCI devices (a VF handed to the pod shows up here).
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// How a VMI network's pod interface is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamingScheme {
    /// `eth0`: the pod network, or a Multus network with `default: true`.
    Primary,
    /// `net1`, `net2`, …: the N-th non-default Multus network in `spec.networks` order.
    Ordinal,
    /// `pod` + the first 11 hex digits of SHA-256 of the VMI network's name.
    Hashed,
}

impl NamingScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            NamingScheme::Primary => "primary",
            NamingScheme::Ordinal => "ordinal",
            NamingScheme::Hashed => "hashed",
        }
    }
}

/// A VMI network's pod interface, and its network-status entry when a status was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedInterface {
    pub name: String,
    pub scheme: NamingScheme,
    pub status: Option<StatusEntry>,
    /// SR-IOV only: the VF's PCI address (`0000:3b:02.1`) from the entry's device-info.
    pub pci_address: Option<String>,
}

/// The hashed pod interface name of a secondary network: `pod` followed by the first 11 hex
/// digits of SHA-256 over the VMI network's name (`spec.networks[].name`, not the
/// NetworkAttachmentDefinition's). 3 + 11 = 14 characters, so `<hash>-nic` fits 15.
pub fn hashed_pod_interface_name(network_name: &str) -> String {
    let digest = sha256(network_name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("pod{}", &hex[..11])
}

/// Which scheme the pod uses for its secondary interfaces. With a network status: ordinal when
/// any attachment is named `net<N>`, else hashed (KubeVirt decides the same way). Without one:
/// hashed when a hashed name of one of the VMI's secondary networks exists in the pod, else
/// ordinal.
pub fn secondary_scheme(pod: &DiscoveredPod, vmi: &crate::spec::Vmi) -> NamingScheme {
    match &pod.network_status {
        Some(s) if s.has_ordinal_interface() => NamingScheme::Ordinal,
        Some(_) => NamingScheme::Hashed,
        None => {
            let hashed_present = vmi
                .spec
                .networks
                .iter()
                .filter(|n| n.multus.as_ref().is_some_and(|m| m.default != Some(true)))
                .any(|n| pod.interface(&hashed_pod_interface_name(&n.name)).is_some());
            if hashed_present {
                NamingScheme::Hashed
            } else {
                NamingScheme::Ordinal
            }
        }
    }
}

/// Finds the pod interface of a VMI network and cross-checks it with the network status.
///
/// - pod network: `eth0`, no checks;
/// - Multus network: the name by [`secondary_scheme`] (`eth0` for `default: true`). With a
///   network status, the entry whose `name` is the network's `networkName` must exist and
///   carry that interface name, and its `mac`/`ips` must be on the pod's link of that name
///   (when the link exists: a missing link is reported by the caller);
/// - `sriov`: a network status is required, and the entry's device-info must give the VF's
///   PCI address (no link is looked up: a VF bound to vfio-pci has no netdev).
pub fn resolve_pod_interface(
    pod: &DiscoveredPod,
    vmi: &crate::spec::Vmi,
    network: &crate::spec::Network,
    sriov: bool,
) -> Result<ResolvedInterface, NetError> {
    let Some(multus) = network.multus.as_ref().filter(|_| network.pod.is_none()) else {
        return Ok(ResolvedInterface {
            name: "eth0".into(),
            scheme: NamingScheme::Primary,
            status: None,
            pci_address: None,
        });
    };
    let scheme = if multus.default == Some(true) {
        NamingScheme::Primary
    } else {
        secondary_scheme(pod, vmi)
    };
    let expected = match scheme {
        NamingScheme::Primary => "eth0".to_string(),
        NamingScheme::Ordinal => super::plan::pod_interface_name(vmi, network),
        NamingScheme::Hashed => hashed_pod_interface_name(&network.name),
    };
    let Some(status) = &pod.network_status else {
        if sriov {
            return Err(StatusError::NoStatus {
                network: network.name.clone(),
                network_name: multus.network_name.clone(),
            }
            .into());
        }
        return Ok(ResolvedInterface {
            name: expected,
            scheme,
            status: None,
            pci_address: None,
        });
    };
    let candidates = status.entries_for(&multus.network_name, vmi.metadata.namespace.as_deref());
    if candidates.is_empty() {
        return Err(StatusError::NoEntry {
            network: network.name.clone(),
            network_name: multus.network_name.clone(),
            origin: status.origin.clone(),
            listed: status.listed(),
            expected,
        }
        .into());
    }
    let entry = candidates
        .iter()
        .find(|e| e.interface.as_deref() == Some(expected.as_str()))
        .or_else(|| {
            // An entry without an interface name (some CNIs omit it) can only be taken when
            // it is the only one for this network.
            (candidates.len() == 1 && candidates[0].interface.is_none()).then(|| &candidates[0])
        })
        .copied()
        .ok_or_else(|| StatusError::Mismatch {
            network: network.name.clone(),
            network_name: multus.network_name.clone(),
            scheme: scheme.as_str(),
            expected: expected.clone(),
            origin: status.origin.clone(),
            found: candidates
                .iter()
                .map(|e| match &e.interface {
                    Some(i) => format!("{:?} is on {i:?}", e.name),
                    None => format!("{:?} has no interface name", e.name),
                })
                .collect::<Vec<_>>()
                .join(" and "),
        })?;
    let mut pci = None;
    if sriov {
        pci = Some(network_status::pci_address(entry).map_err(|problem| {
            StatusError::NoDeviceInfo {
                network: network.name.clone(),
                network_name: multus.network_name.clone(),
                origin: status.origin.clone(),
                problem,
            }
        })?);
    } else if let Some(link) = pod.interface(&expected) {
        if let Some(mac) = entry.mac {
            if mac != link.mac {
                return Err(StatusError::AddressMismatch {
                    network: network.name.clone(),
                    interface: expected,
                    origin: status.origin.clone(),
                    what: "MAC",
                    status: mac.to_string(),
                    pod: link.mac.to_string(),
                }
                .into());
            }
        }
        for ip in &entry.ips {
            if !link.addresses.iter().any(|a| a.address == *ip) {
                let on_link: Vec<String> = link
                    .identity_addresses()
                    .map(|a| a.address.to_string())
                    .collect();
                return Err(StatusError::AddressMismatch {
                    network: network.name.clone(),
                    interface: expected,
                    origin: status.origin.clone(),
                    what: "address",
                    status: ip.to_string(),
                    pod: if on_link.is_empty() {
                        "no address".into()
                    } else {
                        on_link.join(", ")
                    },
                }
                .into());
            }
        }
    }
    Ok(ResolvedInterface {
        name: entry.interface.clone().unwrap_or(expected),
        scheme,
        status: Some(entry.clone()),
        pci_address: pci,
    })
}

/// For `launcher render` (no pod): the VF PCI address of every SR-IOV interface of the VMI,
/// by interface name, from a network status alone (`--network-status FILE` or the VMI's
/// annotation). `Ok(None)` when there is no status (render then uses stand-ins).
pub fn sriov_pci_addresses(
    vmi: &crate::spec::Vmi,
    status_file: Option<&Path>,
) -> Result<Option<std::collections::BTreeMap<String, String>>, NetError> {
    let Some(status) = network_status::load(status_file, &vmi.metadata.annotations)? else {
        return Ok(None);
    };
    let pod = DiscoveredPod {
        interfaces: Vec::new(),
        dns: DnsConfig::default(),
        hostname: None,
        network_status: Some(status),
    };
    let mut out = std::collections::BTreeMap::new();
    for iface in &vmi.spec.domain.devices.interfaces {
        if iface.binding_kind() != Some(crate::spec::BindingKind::Sriov) {
            continue;
        }
        let Some(net) = vmi.spec.networks.iter().find(|n| n.name == iface.name) else {
            continue;
        };
        let r = resolve_pod_interface(&pod, vmi, net, true)?;
        if let Some(pci) = r.pci_address {
            out.insert(iface.name.clone(), pci);
        }
    }
    Ok(Some(out))
}

/// Before anything is touched: every SR-IOV interface's VF (its PCI address is in the result's
/// `tap`) must be present under `sysfs_pci` (`/sys/bus/pci/devices`).
pub fn check_vfs_present(plan: &super::NetPlan, sysfs_pci: &Path) -> Result<(), NetError> {
    for i in plan.interfaces.iter().filter(|i| i.binding == "sriov") {
        let p = sysfs_pci.join(&i.tap);
        if !p.exists() {
            return Err(StatusError::VfMissing {
                network: i.network.clone(),
                pci_address: i.tap.clone(),
                sysfs: p.display().to_string(),
            }
            .into());
        }
    }
    Ok(())
}

/// SHA-256 (FIPS 180-4), for the hashed interface names only: a few bytes per interface, so a
/// small straightforward implementation beats a dependency.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (t, word) in block.chunks_exact(4).enumerate() {
            w[t] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for t in 16..64 {
            let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
            let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16]
                .wrapping_add(s0)
                .wrapping_add(w[t - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for t in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[t])
                .wrapping_add(w[t]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(v);
        }
    }
    let mut out = [0u8; 32];
    for (i, v) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_tolerates_junk_and_keeps_both_families() {
        let text = "\
# generated by kubelet
nameserver 10.96.0.10
nameserver fd00:10:96::a
nameserver fe80::1%eth0
nameserver not-an-ip
nameserver
search ns1.svc.cluster.local svc.cluster.local cluster.local.
options ndots:5
garbage line here
\u{0}\u{1}binary
domain ignored.example
nameserver 10.96.0.10
";
        let d = parse_resolv_conf(text);
        assert_eq!(d.nameservers_v4, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(
            d.nameservers_v6,
            vec![
                "fd00:10:96::a".parse::<Ipv6Addr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(
            d.search,
            vec![
                "ns1.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
    }

    #[test]
    fn domain_is_the_search_list_when_there_is_none() {
        let d = parse_resolv_conf("domain example.org\nnameserver 1.1.1.1 # comment\n");
        assert_eq!(d.search, vec!["example.org"]);
        assert_eq!(d.nameservers_v4, vec![Ipv4Addr::new(1, 1, 1, 1)]);
    }

    #[test]
    fn sha256_matches_the_fips_vectors() {
        let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // Multi-block input (checked with coreutils' sha256sum).
        assert_eq!(
            hex(sha256(&[b'a'; 1000])),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
    }

    #[test]
    fn hashed_names_follow_kubevirt() {
        // `printf blue | sha256sum | cut -c1-11` = 16477688c0e (KubeVirt's docs use "blue").
        assert_eq!(hashed_pod_interface_name("blue"), "pod16477688c0e");
        assert_eq!(hashed_pod_interface_name("red"), "podb1f51a511f1");
        assert_eq!(hashed_pod_interface_name("blue").len(), 14);
    }

    fn fixture_pod(links: &[(&str, &str, Option<&str>)], status: Option<&str>) -> DiscoveredPod {
        let interfaces = links
            .iter()
            .enumerate()
            .map(|(i, (name, mac, ip))| PodInterface {
                index: i as u32 + 2,
                name: name.to_string(),
                mac: mac.parse().unwrap(),
                mtu: 1500,
                up: true,
                kind: Some("veth".into()),
                master: None,
                addresses: ip
                    .map(|ip| IfAddress {
                        address: ip.parse().unwrap(),
                        prefix_len: 24,
                        flags: 0,
                        broadcast: None,
                    })
                    .into_iter()
                    .collect(),
                routes: vec![],
            })
            .collect();
        DiscoveredPod {
            interfaces,
            dns: DnsConfig::default(),
            hostname: None,
            network_status: status
                .map(|s| network_status::parse_json(s, "the test status").unwrap()),
        }
    }

    fn fixture_vmi() -> crate::spec::Vmi {
        crate::spec::parse_str(
            "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: v, namespace: default}
spec:
  domain:
    devices:
      interfaces: [{name: default, bridge: {}}, {name: blue, bridge: {}}, {name: red, sriov: {}}]
  networks:
  - {name: default, pod: {}}
  - {name: blue, multus: {networkName: blue-net}}
  - {name: red, multus: {networkName: default/sriov-net}}
",
            "fixture",
        )
        .unwrap()
        .vmi
    }

    fn resolve(pod: &DiscoveredPod, net: usize) -> Result<ResolvedInterface, NetError> {
        let vmi = fixture_vmi();
        let n = vmi.spec.networks[net].clone();
        resolve_pod_interface(pod, &vmi, &n, net == 2)
    }

    const ETH0: (&str, &str, Option<&str>) = ("eth0", "0a:58:0a:f4:01:05", Some("10.244.1.5"));

    #[test]
    fn ordinal_and_hashed_names_without_a_status() {
        let pod = fixture_pod(
            &[ETH0, ("net1", "0a:58:0a:f5:01:05", Some("10.245.1.5"))],
            None,
        );
        assert_eq!(resolve(&pod, 0).unwrap().name, "eth0");
        let r = resolve(&pod, 1).unwrap();
        assert_eq!((r.name.as_str(), r.scheme), ("net1", NamingScheme::Ordinal));
        let pod = fixture_pod(&[ETH0, ("pod16477688c0e", "0a:58:0a:f5:01:05", None)], None);
        let r = resolve(&pod, 1).unwrap();
        assert_eq!(
            (r.name.as_str(), r.scheme),
            ("pod16477688c0e", NamingScheme::Hashed)
        );
        // SR-IOV without a status: refused, naming the network and the annotation.
        let e = resolve(&pod, 2).unwrap_err();
        let t = e.to_string();
        assert!(
            t.contains("\"red\"") && t.contains(network_status::ANNOTATION),
            "{t}"
        );
        assert_eq!(
            crate::error::Classify::exit_kind(&e),
            crate::error::ExitKind::Precondition
        );
    }

    const STATUS_ORDINAL: &str = r#"[
        {"name": "kindnet", "interface": "eth0", "default": true},
        {"name": "default/blue-net", "interface": "net1", "ips": ["10.245.1.5"], "mac": "0a:58:0a:f5:01:05"},
        {"name": "default/sriov-net", "interface": "net2",
         "device-info": {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.1"}}}
    ]"#;

    #[test]
    fn status_confirms_ordinal_names_and_gives_the_vf() {
        let pod = fixture_pod(
            &[ETH0, ("net1", "0a:58:0a:f5:01:05", Some("10.245.1.5"))],
            Some(STATUS_ORDINAL),
        );
        let r = resolve(&pod, 1).unwrap();
        assert_eq!(r.name, "net1");
        assert_eq!(r.status.unwrap().name, "default/blue-net");
        let r = resolve(&pod, 2).unwrap();
        assert_eq!(r.name, "net2");
        assert_eq!(r.pci_address.as_deref(), Some("0000:3b:02.1"));
    }

    #[test]
    fn status_with_hashed_names_selects_the_hashed_scheme() {
        let status = r#"[
            {"name": "default/blue-net", "interface": "pod16477688c0e", "ips": ["10.245.1.5"]},
            {"name": "default/sriov-net", "interface": "podb1f51a511f1",
             "device-info": {"type": "pci", "pci": {"pci-address": "0000:3b:02.1"}}}]"#;
        let pod = fixture_pod(
            &[
                ETH0,
                ("pod16477688c0e", "0a:58:0a:f5:01:05", Some("10.245.1.5")),
            ],
            Some(status),
        );
        let r = resolve(&pod, 1).unwrap();
        assert_eq!(
            (r.name.as_str(), r.scheme),
            ("pod16477688c0e", NamingScheme::Hashed)
        );
        assert_eq!(resolve(&pod, 2).unwrap().name, "podb1f51a511f1");
    }

    #[test]
    fn disagreements_are_exit_3_and_name_the_network() {
        let net1 = ("net1", "0a:58:0a:f5:01:05", Some("10.245.1.5"));
        let cases: &[(&str, &[&str])] = &[
            // No entry for blue-net.
            (
                r#"[{"name": "kindnet", "interface": "eth0", "default": true},
                    {"name": "default/other", "interface": "net1"}]"#,
                &[
                    "\"blue\"",
                    "no entry named \"blue-net\"",
                    "\"default/other\" on \"net1\"",
                    "\"net1\"",
                ],
            ),
            // The entry is in another namespace.
            (
                r#"[{"name": "prod/blue-net", "interface": "net1"}]"#,
                &["no entry named \"blue-net\""],
            ),
            // Ordinal scheme (net2 exists) but blue-net is on net2: order mismatch.
            (
                r#"[{"name": "default/blue-net", "interface": "net2"}, {"name": "default/x", "interface": "net1"}]"#,
                &["ordinal", "\"net1\"", "\"default/blue-net\" is on \"net2\""],
            ),
            // Hashed scheme expected (no net<N> in the status) but the entry names another.
            (
                r#"[{"name": "default/blue-net", "interface": "podffffffffff0"}]"#,
                &["hashed", "\"pod16477688c0e\"", "\"podffffffffff0\""],
            ),
            // MAC differs from the pod's link.
            (
                r#"[{"name": "default/blue-net", "interface": "net1", "mac": "0a:58:0a:f5:01:06"}]"#,
                &["MAC 0a:58:0a:f5:01:06", "0a:58:0a:f5:01:05"],
            ),
            // An IP that is not on the link.
            (
                r#"[{"name": "default/blue-net", "interface": "net1", "ips": ["10.245.9.9"]}]"#,
                &["address 10.245.9.9", "10.245.1.5"],
            ),
        ];
        for (status, wants) in cases {
            let pod = fixture_pod(&[ETH0, net1], Some(status));
            let e = resolve(&pod, 1).unwrap_err();
            assert_eq!(
                crate::error::Classify::exit_kind(&e),
                crate::error::ExitKind::Precondition,
                "{e}"
            );
            let t = e.to_string();
            for w in *wants {
                assert!(t.contains(w), "status {status}: error {t:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn sriov_needs_pci_device_info() {
        let cases: &[(&str, &str)] = &[
            (
                r#"[{"name": "default/sriov-net", "interface": "net2"}]"#,
                "no \"device-info\"",
            ),
            (
                r#"[{"name": "default/sriov-net", "interface": "net2", "device-info": {"type": "vdpa"}}]"#,
                "type \"vdpa\"",
            ),
            (
                r#"[{"name": "default/sriov-net", "interface": "net2", "device-info": {"type": "pci"}}]"#,
                "without \"pci\"",
            ),
            (
                r#"[{"name": "default/sriov-net", "interface": "net2", "device-info": {"type": "pci", "pci": {"pci-address": "3b:02"}}}]"#,
                "not of the form",
            ),
        ];
        for (status, want) in cases {
            let pod = fixture_pod(&[ETH0], Some(status));
            let t = resolve(&pod, 2).unwrap_err().to_string();
            assert!(
                t.contains(want) && t.contains("\"red\"") && t.contains(network_status::ANNOTATION),
                "status {status}: {t:?} lacks {want:?}"
            );
        }
    }
}
