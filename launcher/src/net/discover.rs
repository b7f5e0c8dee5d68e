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

use super::{Mac, NetError};

/// The pod as found before any plumbing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredPod {
    /// Every link except loopback, in index order.
    pub interfaces: Vec<PodInterface>,
    pub dns: DnsConfig,
    pub hostname: Option<String>,
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
}
