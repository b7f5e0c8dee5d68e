//! Router advertisements (RFC 4861 §4.2) for the guest, and router solicitation parsing.
//!
//! The RA carries the Managed and Other flags (the guest takes its address and DNS from
//! DHCPv6), a non-zero router lifetime (so the guest installs a default route through the
//! bridge: KubeVirt sends no RA, its issue #19193), the source link-layer address, the MTU,
//! the on-link prefix with the autonomous flag off (addresses come from DHCPv6, and a /120
//! could not be used for SLAAC anyway), and RDNSS/DNSSL (RFC 8106) for clients without DHCPv6.
//!
//! [`encode_ra`] returns the ICMPv6 message with a zero checksum: a raw ICMPv6 socket has the
//! kernel fill it in (RFC 3542 §3.1). [`checksum`] computes it for other senders and tests.

use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

use super::options;

pub const TYPE_RS: u8 = 133;
pub const TYPE_RA: u8 = 134;
/// All-nodes multicast, the destination of unsolicited RAs.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// What the advertisement says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaConfig {
    /// The bridge's MAC (source link-layer address option).
    pub router_mac: [u8; 6],
    /// MTU option; 0 leaves it out.
    pub mtu: u32,
    /// On-link prefix (Prefix Information, L=1, A=0); `None` leaves it out.
    pub prefix: Option<(Ipv6Addr, u8)>,
    /// Router lifetime in seconds (0 would mean "not a default router"); at most 9000.
    pub router_lifetime_secs: u16,
    /// RDNSS (25).
    pub dns: Vec<Ipv6Addr>,
    /// DNSSL (31).
    pub search: Vec<String>,
}

impl RaConfig {
    /// Router lifetime used by the launcher: 30 minutes, refreshed by periodic RAs (RFC 4861
    /// default MaxRtrAdvInterval is 600 s, router lifetime 3 × that).
    pub const DEFAULT_ROUTER_LIFETIME: u16 = 1800;
}

/// Encodes the RA (ICMPv6 type 134) with a zero checksum.
pub fn encode_ra(cfg: &RaConfig) -> Vec<u8> {
    let mut b = Vec::with_capacity(128);
    b.push(TYPE_RA);
    b.push(0); // code
    b.extend_from_slice(&[0, 0]); // checksum
    b.push(64); // cur hop limit
    b.push(0x80 | 0x40); // M (managed), O (other configuration)
    b.extend_from_slice(&cfg.router_lifetime_secs.min(9000).to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes()); // reachable time: unspecified
    b.extend_from_slice(&0u32.to_be_bytes()); // retrans timer: unspecified
                                              // Source link-layer address (type 1, 8 bytes).
    b.extend_from_slice(&[1, 1]);
    b.extend_from_slice(&cfg.router_mac);
    if cfg.mtu != 0 {
        b.extend_from_slice(&[5, 1, 0, 0]);
        b.extend_from_slice(&cfg.mtu.to_be_bytes());
    }
    if let Some((prefix, len)) = cfg.prefix {
        let len = len.min(128);
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        let net = Ipv6Addr::from(u128::from(prefix) & mask);
        b.extend_from_slice(&[3, 4, len, 0x80]); // L=1, A=0
        b.extend_from_slice(&u32::MAX.to_be_bytes()); // valid lifetime: infinite
        b.extend_from_slice(&u32::MAX.to_be_bytes()); // preferred lifetime: infinite
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&net.octets());
    }
    // RFC 8106 lifetimes: at least 3 × MaxRtrAdvInterval; use the router lifetime.
    let dns_life = u32::from(cfg.router_lifetime_secs.min(9000)).max(1800);
    if !cfg.dns.is_empty() {
        let n = cfg.dns.len().min(127);
        b.extend_from_slice(&[25, (1 + 2 * n) as u8, 0, 0]);
        b.extend_from_slice(&dns_life.to_be_bytes());
        for a in cfg.dns.iter().take(n) {
            b.extend_from_slice(&a.octets());
        }
    }
    let (names, _) = super::v6::encode_domain_list(&cfg.search);
    if !names.is_empty() {
        // 8 bytes of header, names padded with zeros to a multiple of 8; length ≤ 255 units.
        let mut body = names;
        while (8 + body.len()) % 8 != 0 {
            body.push(0);
        }
        if (8 + body.len()) / 8 <= 255 {
            b.extend_from_slice(&[31, ((8 + body.len()) / 8) as u8, 0, 0]);
            b.extend_from_slice(&dns_life.to_be_bytes());
            b.extend_from_slice(&body);
        }
    }
    b
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of `msg` (whose checksum field is ignored) sent from
/// `src` to `dst`.
pub fn checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for ch in bytes.chunks(2) {
            let w = if ch.len() == 2 {
                u16::from_be_bytes([ch[0], ch[1]])
            } else {
                u16::from_be_bytes([ch[0], 0])
            };
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    let mut m = msg.to_vec();
    if m.len() >= 4 {
        m[2] = 0;
        m[3] = 0;
    }
    add(&m);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Why a packet is not a valid router solicitation (RFC 4861 §6.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsError {
    Truncated,
    NotRs,
    /// An option of length 0 or running past the end.
    BadOption,
}

/// A valid RS and its source link-layer address option, if any.
pub fn parse_rs(packet: &[u8]) -> Result<Option<[u8; 6]>, RsError> {
    if packet.len() < 8 {
        return Err(RsError::Truncated);
    }
    if packet[0] != TYPE_RS || packet[1] != 0 {
        return Err(RsError::NotRs);
    }
    let mut slla = None;
    let mut i = 8;
    while i < packet.len() {
        let (Some(&ty), Some(&len)) = (packet.get(i), packet.get(i + 1)) else {
            return Err(RsError::BadOption);
        };
        let bytes = usize::from(len) * 8;
        if len == 0 || i + bytes > packet.len() {
            return Err(RsError::BadOption);
        }
        if ty == 1 && bytes == 8 {
            slla = packet[i + 2..i + 8].try_into().ok();
        }
        i += bytes;
    }
    Ok(slla)
}

/// The search domains the DNSSL option leaves out (not valid DNS names), for a warning.
pub fn validate_search(search: &[String]) -> Vec<String> {
    search
        .iter()
        .filter(|d| options::domain_labels(d).is_err())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RaConfig {
        RaConfig {
            router_mac: [0x02, 0, 0, 0, 0, 0],
            mtu: 1450,
            prefix: Some(("fd10:0:2::1".parse().unwrap(), 120)),
            router_lifetime_secs: RaConfig::DEFAULT_ROUTER_LIFETIME,
            dns: vec!["fd00::a".parse().unwrap()],
            search: vec!["cluster.local".into()],
        }
    }

    #[test]
    fn ra_byte_exact() {
        let got = encode_ra(&cfg());
        let mut want = vec![
            134, 0, 0, 0, // type, code, checksum
            64, 0xc0, 0x07, 0x08, // hop limit, M|O, lifetime 1800
            0, 0, 0, 0, 0, 0, 0, 0, // reachable, retrans
            1, 1, 2, 0, 0, 0, 0, 0, // SLLA
            5, 1, 0, 0, 0, 0, 0x05, 0xaa, // MTU 1450
            3, 4, 120, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ];
        // prefix fd10:0:2::/120 (host bits cleared)
        want.extend_from_slice(&[0xfd, 0x10, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // RDNSS: len 3, lifetime 1800
        want.extend_from_slice(&[25, 3, 0, 0, 0, 0, 0x07, 0x08]);
        want.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a]);
        // DNSSL: "cluster.local" = 15 bytes, padded to 16, + 8 header = 3 units
        want.extend_from_slice(&[31, 3, 0, 0, 0, 0, 0x07, 0x08, 7]);
        want.extend_from_slice(b"cluster");
        want.push(5);
        want.extend_from_slice(b"local");
        want.extend_from_slice(&[0, 0]);
        assert_eq!(got, want);
        assert_eq!(got.len() % 8, 0);
    }

    #[test]
    fn minimal_ra_has_only_slla() {
        let c = RaConfig {
            mtu: 0,
            prefix: None,
            dns: vec![],
            search: vec![],
            ..cfg()
        };
        assert_eq!(
            encode_ra(&c),
            vec![134, 0, 0, 0, 64, 0xc0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 0]
        );
    }

    /// A known-answer checksum: an RS with no options from fe80::1 to ff02::2.
    #[test]
    fn checksum_known_answer() {
        let rs = [133, 0, 0, 0, 0, 0, 0, 0];
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "ff02::2".parse().unwrap();
        // Sum by hand: fe80 + 0001 + ff02 + 0002 + 0008 (length) + 003a (next header)
        // + 8500 (type 133, code 0) = 0x282c7 → folded 0x82c9; complement 0x7d36.
        assert_eq!(checksum(src, dst, &rs), 0x7d36);
    }

    #[test]
    fn rs_parsing() {
        assert_eq!(parse_rs(&[133, 0, 0, 0, 0, 0, 0, 0]), Ok(None));
        let with = [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x02, 0, 0, 0, 0xaa, 0x01];
        assert_eq!(parse_rs(&with), Ok(Some([0x02, 0, 0, 0, 0xaa, 0x01])));
        assert_eq!(parse_rs(&[133, 0, 0]), Err(RsError::Truncated));
        assert_eq!(parse_rs(&[134, 0, 0, 0, 0, 0, 0, 0]), Err(RsError::NotRs));
        assert_eq!(
            parse_rs(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(RsError::BadOption)
        );
        assert_eq!(
            parse_rs(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0]),
            Err(RsError::BadOption)
        );
    }

    #[test]
    fn invalid_search_domains_are_reported() {
        assert_eq!(
            validate_search(&["ok.example".into(), "bad name".into()]),
            vec!["bad name".to_string()]
        );
    }
}
