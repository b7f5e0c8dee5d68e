//! DHCPv4 option value encoders that need more than a byte copy: the domain search list
//! (option 119, RFC 3397 with RFC 1035 labels) and classless static routes (option 121,
//! RFC 3442), plus the route-list planning that makes a Calico-style on-link gateway reachable.
//!
//! Everything here is pure and allocation-light; it runs once per server start, never per packet.

use std::net::Ipv4Addr;

use super::V4Route;

/// Longest value one option instance can carry.
pub const MAX_OPTION_LEN: usize = 255;

/// Why a search domain was left out of option 119.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchSkip {
    /// Not a valid DNS name (empty label, label over 63 bytes, name over 253 characters,
    /// or a character outside letters, digits, `-` and `_`).
    Invalid {
        domain: String,
        reason: &'static str,
    },
    /// Valid, but the encoded list would exceed 255 bytes (one option instance).
    NoRoom { domain: String },
}

impl std::fmt::Display for SearchSkip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchSkip::Invalid { domain, reason } => {
                write!(
                    f,
                    "search domain {domain:?} left out of option 119: {reason}"
                )
            }
            SearchSkip::NoRoom { domain } => write!(
                f,
                "search domain {domain:?} left out of option 119: the list would exceed 255 bytes"
            ),
        }
    }
}

/// Splits and checks a domain name; returns its labels (without the root).
pub fn domain_labels(domain: &str) -> Result<Vec<&str>, &'static str> {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    let mut labels = Vec::new();
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("character outside letters, digits, '-' and '_'");
        }
        labels.push(label);
    }
    Ok(labels)
}

/// Encodes the domain search list (option 119 value) with RFC 1035 §4.1.4 compression
/// pointers, as RFC 3397 asks. Invalid names are skipped; once a name does not fit into 255
/// bytes, it and every later name are left out (the list keeps its order, so what is sent is
/// a prefix of the valid names). Returns the value and what was skipped, to be logged.
pub fn encode_search_list<S: AsRef<str>>(domains: &[S]) -> (Vec<u8>, Vec<SearchSkip>) {
    let mut out: Vec<u8> = Vec::new();
    let mut skipped = Vec::new();
    // (suffix labels, offset of that suffix in `out`)
    let mut seen: Vec<(Vec<String>, u16)> = Vec::new();
    let mut full = false;
    for d in domains {
        let d = d.as_ref();
        let labels = match domain_labels(d) {
            Ok(l) => l,
            Err(reason) => {
                skipped.push(SearchSkip::Invalid {
                    domain: d.to_string(),
                    reason,
                });
                continue;
            }
        };
        if full {
            skipped.push(SearchSkip::NoRoom {
                domain: d.to_string(),
            });
            continue;
        }
        let start = out.len();
        let seen_before = seen.len();
        let mut terminated = false;
        for i in 0..labels.len() {
            let suffix = &labels[i..];
            if let Some((_, off)) = seen
                .iter()
                .find(|(s, _)| s.len() == suffix.len() && s.iter().zip(suffix).all(|(a, b)| a == b))
            {
                out.extend_from_slice(&(0xC000u16 | off).to_be_bytes());
                terminated = true;
                break;
            }
            if out.len() < 0x3FFF {
                seen.push((
                    suffix.iter().map(|s| s.to_string()).collect(),
                    out.len() as u16,
                ));
            }
            out.push(labels[i].len() as u8);
            out.extend_from_slice(labels[i].as_bytes());
        }
        if !terminated {
            out.push(0);
        }
        if out.len() > MAX_OPTION_LEN {
            out.truncate(start);
            seen.truncate(seen_before);
            full = true;
            skipped.push(SearchSkip::NoRoom {
                domain: d.to_string(),
            });
        }
    }
    (out, skipped)
}

/// Netmask of a prefix length (0..=32).
pub fn prefix_mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - p),
    }
}

fn contains(net: Ipv4Addr, prefix_len: u8, addr: Ipv4Addr) -> bool {
    let m = prefix_mask(prefix_len);
    u32::from(net) & m == u32::from(addr) & m
}

/// The route list sent in option 121, in wire order:
/// 1. on-link host routes (`gw/32` via 0.0.0.0) for every gateway that is neither inside the
///    client's own subnet nor covered by an on-link route of the list (the Calico case: a /32
///    pod address with gateway 169.254.1.1), so that the guest can reach its gateway;
/// 2. the other routes, in the given order, destinations masked to their prefix;
/// 3. the default route last (added from `router` when `routes` has none).
///
/// Routes with a prefix over 32 are dropped (returned in the second list for a warning).
pub fn plan_routes(
    client_ip: Ipv4Addr,
    prefix_len: u8,
    router: Option<Ipv4Addr>,
    routes: &[V4Route],
) -> (Vec<V4Route>, Vec<V4Route>) {
    let mut invalid = Vec::new();
    let mut middle = Vec::new();
    let mut default: Option<V4Route> = None;
    for r in routes {
        if r.prefix_len > 32 {
            invalid.push(r.clone());
            continue;
        }
        let dest = Ipv4Addr::from(u32::from(r.dest) & prefix_mask(r.prefix_len));
        let r = V4Route {
            dest,
            prefix_len: r.prefix_len,
            gateway: r.gateway,
        };
        if r.prefix_len == 0 {
            // Only one default route makes sense; keep the first.
            if default.is_none() {
                default = Some(r);
            }
        } else if !middle.contains(&r) {
            middle.push(r);
        }
    }
    if default.is_none() {
        if let Some(gw) = router {
            default = Some(V4Route {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: gw,
            });
        }
    }
    let mut onlink: Vec<V4Route> = Vec::new();
    for r in middle.iter().chain(default.iter()) {
        let gw = r.gateway;
        if gw.is_unspecified() || contains(client_ip, prefix_len, gw) {
            continue;
        }
        let covered = middle
            .iter()
            .chain(onlink.iter())
            .any(|o| o.gateway.is_unspecified() && contains(o.dest, o.prefix_len, gw));
        if !covered {
            onlink.push(V4Route {
                dest: gw,
                prefix_len: 32,
                gateway: Ipv4Addr::UNSPECIFIED,
            });
        }
    }
    let mut all = onlink;
    all.extend(middle);
    all.extend(default);
    (all, invalid)
}

/// Encodes routes as RFC 3442 destination descriptors (prefix length, the significant octets
/// of the destination) followed by the router, in the given order.
pub fn encode_classless_routes(routes: &[V4Route]) -> Vec<u8> {
    let mut out = Vec::with_capacity(routes.len() * 9);
    for r in routes {
        let p = r.prefix_len.min(32);
        out.push(p);
        let significant = usize::from(p).div_ceil(8);
        let dest = (u32::from(r.dest) & prefix_mask(p)).to_be_bytes();
        out.extend_from_slice(&dest[..significant]);
        out.extend_from_slice(&r.gateway.octets());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn route(d: &str, p: u8, g: &str) -> V4Route {
        V4Route {
            dest: ip(d),
            prefix_len: p,
            gateway: ip(g),
        }
    }

    /// RFC 3397 §3 example: "eng.apple.com." and "marketing.apple.com.", the second name
    /// compressed with a pointer to "apple.com." at offset 4.
    #[test]
    fn search_list_rfc3397_example() {
        let (v, skipped) = encode_search_list(&["eng.apple.com.", "marketing.apple.com."]);
        assert!(skipped.is_empty());
        let mut want = vec![3];
        want.extend_from_slice(b"eng");
        want.push(5);
        want.extend_from_slice(b"apple");
        want.push(3);
        want.extend_from_slice(b"com");
        want.push(0);
        want.push(9);
        want.extend_from_slice(b"marketing");
        want.extend_from_slice(&[0xC0, 0x04]);
        assert_eq!(v, want);
        assert_eq!(v.len(), 27);
    }

    /// The Kubernetes search list: every later name shares a suffix with an earlier one.
    #[test]
    fn search_list_kubernetes_names_compress() {
        let (v, _) = encode_search_list(&[
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
        ]);
        let mut want = vec![7];
        want.extend_from_slice(b"default");
        want.push(3);
        want.extend_from_slice(b"svc");
        want.push(7);
        want.extend_from_slice(b"cluster");
        want.push(5);
        want.extend_from_slice(b"local");
        want.push(0);
        // "svc.cluster.local" starts at offset 8, "cluster.local" at 12.
        want.extend_from_slice(&[0xC0, 8, 0xC0, 12]);
        assert_eq!(v, want);
    }

    #[test]
    fn search_list_skips_invalid_names_and_keeps_going() {
        let long_label = "a".repeat(64);
        let (v, skipped) = encode_search_list(&[
            "bad domain.com",
            "",
            "a..b",
            long_label.as_str(),
            "ok.example",
            "über.example",
        ]);
        let mut want = vec![2];
        want.extend_from_slice(b"ok");
        want.push(7);
        want.extend_from_slice(b"example");
        want.push(0);
        assert_eq!(v, want);
        assert_eq!(skipped.len(), 5);
        assert!(skipped
            .iter()
            .all(|s| matches!(s, SearchSkip::Invalid { .. })));
    }

    #[test]
    fn search_list_never_exceeds_255_bytes() {
        let names: Vec<String> = (0..40)
            .map(|i| format!("zone{i:02}.distinct{i:02}.example{i:02}"))
            .collect();
        let (v, skipped) = encode_search_list(&names);
        assert!(v.len() <= 255, "{}", v.len());
        assert!(!skipped.is_empty());
        // What was kept is a prefix of the list, what was dropped is the rest.
        assert!(skipped
            .iter()
            .all(|s| matches!(s, SearchSkip::NoRoom { .. })));
        let kept = names.len() - skipped.len();
        assert_eq!(
            skipped[0],
            SearchSkip::NoRoom {
                domain: names[kept].clone()
            }
        );
    }

    /// RFC 3442 §2 destination descriptor examples.
    #[test]
    fn classless_routes_rfc3442_descriptors() {
        let gw = "10.0.0.1";
        let cases: [(&str, u8, &[u8]); 7] = [
            ("0.0.0.0", 0, &[0]),
            ("10.0.0.0", 8, &[8, 10]),
            ("10.0.0.0", 24, &[24, 10, 0, 0]),
            ("10.17.0.0", 16, &[16, 10, 17]),
            ("10.27.129.0", 24, &[24, 10, 27, 129]),
            ("10.229.0.128", 25, &[25, 10, 229, 0, 128]),
            ("10.198.122.47", 32, &[32, 10, 198, 122, 47]),
        ];
        for (d, p, desc) in cases {
            let mut want = desc.to_vec();
            want.extend_from_slice(&[10, 0, 0, 1]);
            assert_eq!(encode_classless_routes(&[route(d, p, gw)]), want, "{d}/{p}");
        }
    }

    #[test]
    fn classless_routes_mask_host_bits() {
        assert_eq!(
            encode_classless_routes(&[route("10.17.99.7", 16, "10.0.0.1")]),
            vec![16, 10, 17, 10, 0, 0, 1]
        );
    }

    /// Calico: 10.244.1.5/32, gateway 169.254.1.1 outside the /32 → an on-link host route to
    /// the gateway first, then the default route through it.
    #[test]
    fn calico_onlink_gateway() {
        let (routes, bad) = plan_routes(
            ip("10.244.1.5"),
            32,
            Some(ip("169.254.1.1")),
            &[route("0.0.0.0", 0, "169.254.1.1")],
        );
        assert!(bad.is_empty());
        assert_eq!(
            encode_classless_routes(&routes),
            vec![32, 169, 254, 1, 1, 0, 0, 0, 0, 0, 169, 254, 1, 1]
        );
        // Same when only option 3's router is known.
        let (routes2, _) = plan_routes(ip("10.244.1.5"), 32, Some(ip("169.254.1.1")), &[]);
        assert_eq!(routes, routes2);
    }

    #[test]
    fn default_route_is_last_and_in_subnet_gateway_needs_no_host_route() {
        let (routes, _) = plan_routes(
            ip("10.244.1.5"),
            24,
            Some(ip("10.244.1.1")),
            &[
                route("0.0.0.0", 0, "10.244.1.1"),
                route("10.244.0.0", 16, "10.244.1.1"),
                route("192.168.7.0", 24, "0.0.0.0"),
            ],
        );
        assert_eq!(
            encode_classless_routes(&routes),
            vec![
                16, 10, 244, 10, 244, 1, 1, // 10.244.0.0/16 via 10.244.1.1
                24, 192, 168, 7, 0, 0, 0, 0, // 192.168.7.0/24 on-link
                0, 10, 244, 1, 1, // default last
            ]
        );
    }

    #[test]
    fn gateway_covered_by_an_onlink_route_needs_no_host_route() {
        let (routes, _) = plan_routes(
            ip("10.244.1.5"),
            32,
            None,
            &[
                route("0.0.0.0", 0, "169.254.1.1"),
                route("169.254.0.0", 16, "0.0.0.0"),
            ],
        );
        assert_eq!(
            routes,
            vec![
                route("169.254.0.0", 16, "0.0.0.0"),
                route("0.0.0.0", 0, "169.254.1.1")
            ]
        );
    }

    #[test]
    fn invalid_prefix_is_dropped() {
        let (routes, bad) = plan_routes(
            ip("10.0.0.5"),
            24,
            None,
            &[
                route("10.1.0.0", 33, "10.0.0.1"),
                route("10.2.0.0", 16, "10.0.0.1"),
            ],
        );
        assert_eq!(routes, vec![route("10.2.0.0", 16, "10.0.0.1")]);
        assert_eq!(bad.len(), 1);
    }
}
