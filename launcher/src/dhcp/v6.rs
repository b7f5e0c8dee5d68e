//! The pure DHCPv6 core (RFC 8415) for one client, the VM: one request in, one [`V6Outcome`]
//! out. Requests are decoded with dhcproto's v6 decoder; replies are written directly
//! (byte-exact tests pin them).
//!
//! | request | answer |
//! |---|---|
//! | SOLICIT | ADVERTISE (preference 255), or REPLY when it carries Rapid Commit |
//! | REQUEST, RENEW, REBIND | REPLY with IA_NA holding the guest address |
//! | CONFIRM | REPLY Success when every address is the guest's, else NotOnLink |
//! | INFORMATION-REQUEST | REPLY with DNS (23) and the search list (24), no IA (no crash without IA_NA: KubeVirt #9843) |
//! | RELEASE, DECLINE | REPLY Success (DECLINE is also reported for the log) |
//!
//! Every answer carries Client ID (1), Server ID (2, DUID-LL of the bridge's MAC), and DNS and
//! the search list when configured. Addresses the client lists in an IA that are not the
//! guest's are returned with lifetimes 0, so a stale address is dropped by the client.
//! Only the VM is answered: its DUID must be DUID-LL or DUID-LLT holding the VM's MAC, or,
//! for other DUID types, the request must come from the EUI-64 link-local address of the VM's
//! MAC. Messages with a server id that is not ours (or one where none is allowed) are dropped,
//! as RFC 8415 §16 requires.

use std::net::Ipv6Addr;

use dhcproto::v6::{DhcpOption, IAAddr, Message, MessageType, IANA};
use dhcproto::{Decodable, Decoder};
use serde::{Deserialize, Serialize};

use super::options;

pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;
/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// "Infinity" for lifetimes and T1/T2 (RFC 8415 §7.7).
pub const INFINITY: u32 = u32::MAX;

const OPT_CLIENTID: u16 = 1;
const OPT_SERVERID: u16 = 2;
const OPT_IA_NA: u16 = 3;
const OPT_IAADDR: u16 = 5;
const OPT_PREFERENCE: u16 = 7;
const OPT_STATUS_CODE: u16 = 13;
const OPT_RAPID_COMMIT: u16 = 14;
const OPT_DNS_SERVERS: u16 = 23;
const OPT_DOMAIN_LIST: u16 = 24;

/// RFC 8415 §21.13 status codes used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success = 0,
    NoAddrsAvail = 2,
    NotOnLink = 4,
}

/// Everything one DHCPv6 server needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V6Config {
    /// The interface the server binds to, e.g. `k6t-eth0`.
    pub interface: String,
    /// The interface's MAC: the server's DUID-LL.
    pub server_mac: [u8; 6],
    /// The only client that gets answers: the VM.
    pub client_mac: [u8; 6],
    /// The address handed to the guest (IA_NA).
    pub client_ip: Ipv6Addr,
    /// Option 23.
    pub dns: Vec<Ipv6Addr>,
    /// Option 24, in order (invalid names are skipped).
    pub search: Vec<String>,
    /// Preferred and valid lifetime of the address, seconds ([`INFINITY`] by default).
    pub lifetime_secs: u32,
}

/// Why a DHCPv6 packet got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum V6Drop {
    /// Shorter than the 4-byte header.
    Truncated,
    /// dhcproto could not decode it.
    Malformed,
    /// Not from the VM (DUID and source address do not match its MAC).
    ForeignClient,
    /// A server id that is not ours, or one where none is allowed (RFC 8415 §16).
    WrongServerId,
    /// Client ID missing where it is required.
    NoClientId,
    /// A server or relay message, or an unknown type.
    UnexpectedType,
    /// CONFIRM without any address: no reply (RFC 8415 §18.3.3).
    NothingToConfirm,
}

impl V6Drop {
    pub const ALL: [V6Drop; 7] = [
        V6Drop::Truncated,
        V6Drop::Malformed,
        V6Drop::ForeignClient,
        V6Drop::WrongServerId,
        V6Drop::NoClientId,
        V6Drop::UnexpectedType,
        V6Drop::NothingToConfirm,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            V6Drop::Truncated => "truncated",
            V6Drop::Malformed => "malformed",
            V6Drop::ForeignClient => "foreign_client",
            V6Drop::WrongServerId => "wrong_server_id",
            V6Drop::NoClientId => "no_client_id",
            V6Drop::UnexpectedType => "unexpected_type",
            V6Drop::NothingToConfirm => "nothing_to_confirm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V6ReplyKind {
    Advertise,
    /// REPLY to SOLICIT with Rapid Commit, REQUEST, RENEW or REBIND: carries the address.
    ReplyWithAddress,
    ReplyConfirm(Status),
    ReplyInformation,
    ReplyRelease,
    ReplyDecline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6Reply {
    pub kind: V6ReplyKind,
    /// The UDP payload, to be sent to the request's source address, port 546.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V6Outcome {
    Reply(V6Reply),
    Drop(V6Drop),
}

/// DUID-LL (RFC 8415 §11.4) of an Ethernet MAC.
pub fn duid_ll(mac: &[u8; 6]) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(mac);
    d
}

/// The Ethernet MAC inside a DUID-LLT or DUID-LL, if any.
pub fn duid_mac(duid: &[u8]) -> Option<[u8; 6]> {
    let (ty, hw) = (
        u16::from_be_bytes([*duid.first()?, *duid.get(1)?]),
        u16::from_be_bytes([*duid.get(2)?, *duid.get(3)?]),
    );
    let mac = match (ty, hw) {
        (1, 1) if duid.len() == 14 => &duid[8..14],
        (3, 1) if duid.len() == 10 => &duid[4..10],
        _ => return None,
    };
    mac.try_into().ok()
}

/// The EUI-64 link-local address (fe80::/64) of a MAC (RFC 4291 appendix A).
pub fn eui64_link_local(mac: &[u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// Encodes a domain list without compression (DHCPv6 forbids it, RFC 8415 §10). Invalid
/// names are skipped and returned.
pub fn encode_domain_list<S: AsRef<str>>(domains: &[S]) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for d in domains {
        match options::domain_labels(d.as_ref()) {
            Ok(labels) => {
                for l in labels {
                    out.push(l.len() as u8);
                    out.extend_from_slice(l.as_bytes());
                }
                out.push(0);
            }
            Err(reason) => skipped.push(format!(
                "search domain {:?} left out of DHCPv6 option 24: {reason}",
                d.as_ref()
            )),
        }
    }
    (out, skipped)
}

/// A [`V6Config`] checked and pre-encoded.
#[derive(Debug, Clone)]
pub struct Prepared6 {
    client_mac: [u8; 6],
    client_ll: Ipv6Addr,
    client_ip: Ipv6Addr,
    server_duid: Vec<u8>,
    lifetime: u32,
    dns: Vec<u8>,
    domains: Vec<u8>,
}

impl Prepared6 {
    /// Returns the prepared server and warnings (left-out search domains) to log once.
    pub fn new(cfg: &V6Config) -> Result<(Prepared6, Vec<String>), super::v4::ConfigError> {
        let ip = cfg.client_ip;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            return Err(super::v4::ConfigError(format!(
                "client_ip {ip} is not a unicast address"
            )));
        }
        if cfg.lifetime_secs == 0 {
            return Err(super::v4::ConfigError("lifetime is 0 seconds".into()));
        }
        let (domains, warnings) = encode_domain_list(&cfg.search);
        Ok((
            Prepared6 {
                client_mac: cfg.client_mac,
                client_ll: eui64_link_local(&cfg.client_mac),
                client_ip: ip,
                server_duid: duid_ll(&cfg.server_mac),
                lifetime: cfg.lifetime_secs,
                dns: cfg.dns.iter().flat_map(|a| a.octets()).collect(),
                domains,
            },
            warnings,
        ))
    }

    /// Answers one UDP payload received on port 547 from `src`.
    pub fn handle(&self, src: Ipv6Addr, packet: &[u8]) -> V6Outcome {
        self.handle_from(src, None, packet)
    }

    /// [`Self::handle`], where `vm_ll` is another link-local address known to be the VM's
    /// (learned from its router solicitations, whose source link-layer option carries its
    /// MAC): a client whose DUID does not carry the MAC is also the VM when it sends from there.
    pub fn handle_from(&self, src: Ipv6Addr, vm_ll: Option<Ipv6Addr>, packet: &[u8]) -> V6Outcome {
        if packet.len() < 4 {
            return V6Outcome::Drop(V6Drop::Truncated);
        }
        if !check_options(&packet[4..], 0) {
            return V6Outcome::Drop(V6Drop::Malformed);
        }
        let Ok(msg) = Message::decode(&mut Decoder::new(packet)) else {
            return V6Outcome::Drop(V6Drop::Malformed);
        };
        let mt = msg.msg_type();
        let client_id = msg.opts().get(dhcproto::v6::OptionCode::ClientId);
        let client_id: Option<&[u8]> = match client_id {
            Some(DhcpOption::ClientId(d)) => Some(d),
            _ => None,
        };
        let server_id: Option<&[u8]> = match msg.opts().get(dhcproto::v6::OptionCode::ServerId) {
            Some(DhcpOption::ServerId(d)) => Some(d),
            _ => None,
        };
        match mt {
            MessageType::Solicit
            | MessageType::Request
            | MessageType::Confirm
            | MessageType::Renew
            | MessageType::Rebind
            | MessageType::Release
            | MessageType::Decline
            | MessageType::InformationRequest => {}
            _ => return V6Outcome::Drop(V6Drop::UnexpectedType),
        }
        // Whose request is it?
        let ours = match client_id.and_then(duid_mac) {
            Some(mac) => mac == self.client_mac,
            None => src == self.client_ll || Some(src) == vm_ll,
        };
        if !ours {
            return V6Outcome::Drop(V6Drop::ForeignClient);
        }
        if client_id.is_none() && mt != MessageType::InformationRequest {
            return V6Outcome::Drop(V6Drop::NoClientId);
        }
        // RFC 8415 §16: which messages must, may or must not carry our server id.
        let sid_ok = match mt {
            MessageType::Solicit | MessageType::Confirm | MessageType::Rebind => {
                server_id.is_none()
            }
            MessageType::Request
            | MessageType::Renew
            | MessageType::Release
            | MessageType::Decline => server_id == Some(&self.server_duid[..]),
            _ => server_id.map_or(true, |s| s == self.server_duid),
        };
        if !sid_ok {
            return V6Outcome::Drop(V6Drop::WrongServerId);
        }

        let ianas: Vec<&IANA> = msg
            .opts()
            .iter()
            .filter_map(|o| match o {
                DhcpOption::IANA(ia) => Some(ia),
                _ => None,
            })
            .collect();
        let rapid = msg
            .opts()
            .get(dhcproto::v6::OptionCode::RapidCommit)
            .is_some();

        let mut out = Vec::with_capacity(256);
        let reply_type = |t: u8, out: &mut Vec<u8>| {
            out.push(t);
            out.extend_from_slice(&msg.xid());
        };
        let kind = match mt {
            MessageType::Solicit if rapid => {
                reply_type(7, &mut out);
                V6ReplyKind::ReplyWithAddress
            }
            MessageType::Solicit => {
                reply_type(2, &mut out);
                V6ReplyKind::Advertise
            }
            MessageType::Request | MessageType::Renew | MessageType::Rebind => {
                reply_type(7, &mut out);
                V6ReplyKind::ReplyWithAddress
            }
            MessageType::Confirm => {
                let addrs: Vec<Ipv6Addr> = ianas.iter().flat_map(|ia| ia_addrs(ia)).collect();
                if addrs.is_empty() {
                    return V6Outcome::Drop(V6Drop::NothingToConfirm);
                }
                reply_type(7, &mut out);
                let st = if addrs.iter().all(|a| *a == self.client_ip) {
                    Status::Success
                } else {
                    Status::NotOnLink
                };
                V6ReplyKind::ReplyConfirm(st)
            }
            MessageType::InformationRequest => {
                reply_type(7, &mut out);
                V6ReplyKind::ReplyInformation
            }
            MessageType::Release => {
                reply_type(7, &mut out);
                V6ReplyKind::ReplyRelease
            }
            _ => {
                reply_type(7, &mut out);
                V6ReplyKind::ReplyDecline
            }
        };
        if let Some(c) = client_id {
            put6(&mut out, OPT_CLIENTID, c);
        }
        put6(&mut out, OPT_SERVERID, &self.server_duid);
        match kind {
            V6ReplyKind::Advertise | V6ReplyKind::ReplyWithAddress => {
                if ianas.is_empty() {
                    put_status(&mut out, Status::NoAddrsAvail, "only IA_NA is served");
                }
                for ia in &ianas {
                    self.put_iana(&mut out, ia);
                }
                if kind == V6ReplyKind::Advertise {
                    put6(&mut out, OPT_PREFERENCE, &[255]);
                }
                if rapid && mt == MessageType::Solicit {
                    put6(&mut out, OPT_RAPID_COMMIT, &[]);
                }
            }
            V6ReplyKind::ReplyConfirm(st) => put_status(
                &mut out,
                st,
                if st == Status::Success {
                    "on link"
                } else {
                    "not on link"
                },
            ),
            V6ReplyKind::ReplyRelease | V6ReplyKind::ReplyDecline => {
                put_status(&mut out, Status::Success, "")
            }
            V6ReplyKind::ReplyInformation => {}
        }
        if !matches!(kind, V6ReplyKind::ReplyRelease | V6ReplyKind::ReplyDecline) {
            if !self.dns.is_empty() {
                put6(&mut out, OPT_DNS_SERVERS, &self.dns);
            }
            if !self.domains.is_empty() {
                put6(&mut out, OPT_DOMAIN_LIST, &self.domains);
            }
        }
        V6Outcome::Reply(V6Reply { kind, bytes: out })
    }

    /// IA_NA with the guest address; other addresses the client listed get lifetimes 0.
    fn put_iana(&self, out: &mut Vec<u8>, ia: &IANA) {
        let mut body = Vec::with_capacity(12 + 28 * 2);
        let (t1, t2) = if self.lifetime == INFINITY {
            (INFINITY, INFINITY)
        } else {
            (self.lifetime / 2, self.lifetime / 8 * 7)
        };
        body.extend_from_slice(&ia.id.to_be_bytes());
        body.extend_from_slice(&t1.to_be_bytes());
        body.extend_from_slice(&t2.to_be_bytes());
        put_iaaddr(&mut body, self.client_ip, self.lifetime);
        for a in ia_addrs(ia) {
            if a != self.client_ip {
                put_iaaddr(&mut body, a, 0);
            }
        }
        put6(out, OPT_IA_NA, &body);
    }
}

/// Walks the option list (and the options nested in IA_NA, IA_TA, IAADDR, IA_PD, IAPREFIX and
/// vendor options) and rejects what dhcproto 0.15 would mis-decode: an option shorter than its
/// fixed part makes its decoder subtract with overflow (found by fuzzing: a 2-byte Vendor
/// Options), and a fixed-size option with another length desynchronises it. Relay messages
/// (option 9) are not served and are rejected here too.
fn check_options(mut b: &[u8], depth: u8) -> bool {
    if depth > 4 {
        return false;
    }
    while !b.is_empty() {
        if b.len() < 4 {
            return false;
        }
        let code = u16::from_be_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let Some(v) = b.get(4..4 + len) else {
            return false;
        };
        let fixed = match code {
            9 => return false,
            3 | 25 => 12,
            4 | 16 | 17 => 4,
            5 => 24,
            26 => 25,
            11 => 11,
            13 => 2,
            _ => 0,
        };
        if len < fixed {
            return false;
        }
        // dhcproto reads these fixed-size values without looking at the length, so any other
        // length would desynchronise it from the option list (also found by fuzzing).
        let exact = match code {
            7 | 19 => Some(1),
            8 => Some(2),
            12 => Some(16),
            14 | 20 => Some(0),
            32 => Some(4),
            _ => None,
        };
        if exact.is_some_and(|n| n != len) {
            return false;
        }
        if matches!(code, 3 | 4 | 5 | 17 | 25 | 26) && !check_options(&v[fixed..], depth + 1) {
            return false;
        }
        b = &b[4 + len..];
    }
    true
}

fn ia_addrs(ia: &IANA) -> impl Iterator<Item = Ipv6Addr> + '_ {
    ia.opts.iter().filter_map(|o| match o {
        DhcpOption::IAAddr(IAAddr { addr, .. }) => Some(*addr),
        _ => None,
    })
}

fn put_iaaddr(out: &mut Vec<u8>, addr: Ipv6Addr, lifetime: u32) {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&addr.octets());
    v.extend_from_slice(&lifetime.to_be_bytes());
    v.extend_from_slice(&lifetime.to_be_bytes());
    put6(out, OPT_IAADDR, &v);
}

fn put_status(out: &mut Vec<u8>, st: Status, msg: &str) {
    let mut v = (st as u16).to_be_bytes().to_vec();
    v.extend_from_slice(msg.as_bytes());
    put6(out, OPT_STATUS_CODE, &v);
}

fn put6(out: &mut Vec<u8>, code: u16, v: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(v.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(&v[..v.len().min(usize::from(u16::MAX))]);
}

/// One-shot form of [`Prepared6::handle`].
pub fn handle(cfg: &V6Config, src: Ipv6Addr, packet: &[u8]) -> V6Outcome {
    match Prepared6::new(cfg) {
        Ok((p, _)) => p.handle(src, packet),
        Err(_) => V6Outcome::Drop(V6Drop::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v6::{OptionCode, ORO};
    use dhcproto::{Encodable, Encoder};

    const VM: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
    const BR: [u8; 6] = [0x02, 0, 0, 0, 0, 0];

    fn cfg() -> V6Config {
        V6Config {
            interface: "k6t-eth0".into(),
            server_mac: BR,
            client_mac: VM,
            client_ip: "fd10:0:2::2".parse().unwrap(),
            dns: vec!["fd00::a".parse().unwrap()],
            search: vec!["svc.cluster.local".into(), "bad name".into()],
            lifetime_secs: INFINITY,
        }
    }

    fn msg(mt: MessageType, opts: Vec<DhcpOption>) -> Vec<u8> {
        let mut m = Message::new_with_id(mt, [0xab, 0xcd, 0xef]);
        for o in opts {
            m.opts_mut().insert(o);
        }
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        b
    }

    fn iana(id: u32, addrs: &[&str]) -> DhcpOption {
        let mut opts = dhcproto::v6::DhcpOptions::new();
        for a in addrs {
            opts.insert(DhcpOption::IAAddr(IAAddr {
                addr: a.parse().unwrap(),
                preferred_life: 0,
                valid_life: 0,
                opts: Default::default(),
            }));
        }
        DhcpOption::IANA(IANA {
            id,
            t1: 0,
            t2: 0,
            opts,
        })
    }

    fn ll() -> Ipv6Addr {
        "fe80::1234".parse().unwrap()
    }

    fn reply(o: V6Outcome) -> V6Reply {
        match o {
            V6Outcome::Reply(r) => r,
            d => panic!("expected a reply, got {d:?}"),
        }
    }

    /// The common tail: server id, DNS, domain list.
    fn sid() -> Vec<u8> {
        vec![0, 2, 0, 10, 0, 3, 0, 1, 2, 0, 0, 0, 0, 0]
    }
    fn dns_and_domains() -> Vec<u8> {
        let mut v = vec![
            0, 23, 0, 16, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
        ];
        v.extend_from_slice(&[0, 24, 0, 19, 3]);
        v.extend_from_slice(b"svc");
        v.push(7);
        v.extend_from_slice(b"cluster");
        v.push(5);
        v.extend_from_slice(b"local");
        v.push(0);
        v
    }
    fn client_id() -> Vec<u8> {
        let mut v = vec![0, 1, 0, 10];
        v.extend_from_slice(&duid_ll(&VM));
        v
    }
    fn iana_bytes(id: u32) -> Vec<u8> {
        let mut v = vec![0, 3, 0, 40];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&[0xff; 8]); // T1, T2 infinite
        v.extend_from_slice(&[0, 5, 0, 24]);
        v.extend_from_slice(&"fd10:0:2::2".parse::<Ipv6Addr>().unwrap().octets());
        v.extend_from_slice(&[0xff; 8]); // lifetimes infinite
        v
    }

    #[test]
    fn solicit_gets_an_advertise_byte_exact() {
        let p = msg(
            MessageType::Solicit,
            vec![DhcpOption::ClientId(duid_ll(&VM)), iana(7, &[])],
        );
        let r = reply(handle(&cfg(), ll(), &p));
        assert_eq!(r.kind, V6ReplyKind::Advertise);
        let mut want = vec![2, 0xab, 0xcd, 0xef];
        want.extend(client_id());
        want.extend(sid());
        want.extend(iana_bytes(7));
        want.extend_from_slice(&[0, 7, 0, 1, 255]);
        want.extend(dns_and_domains());
        assert_eq!(r.bytes, want);
        // dhcproto reads it back.
        let m = Message::decode(&mut Decoder::new(&r.bytes)).unwrap();
        assert_eq!(m.msg_type(), MessageType::Advertise);
    }

    #[test]
    fn rapid_commit_solicit_gets_a_reply() {
        let p = msg(
            MessageType::Solicit,
            vec![
                DhcpOption::ClientId(duid_ll(&VM)),
                iana(1, &[]),
                DhcpOption::RapidCommit,
            ],
        );
        let r = reply(handle(&cfg(), ll(), &p));
        assert_eq!(r.kind, V6ReplyKind::ReplyWithAddress);
        assert_eq!(r.bytes[0], 7);
        let mut want = vec![7, 0xab, 0xcd, 0xef];
        want.extend(client_id());
        want.extend(sid());
        want.extend(iana_bytes(1));
        want.extend_from_slice(&[0, 14, 0, 0]);
        want.extend(dns_and_domains());
        assert_eq!(r.bytes, want);
    }

    #[test]
    fn request_renew_rebind_get_the_address() {
        let s = duid_ll(&BR);
        for (mt, with_sid) in [
            (MessageType::Request, true),
            (MessageType::Renew, true),
            (MessageType::Rebind, false),
        ] {
            let mut o = vec![
                DhcpOption::ClientId(duid_ll(&VM)),
                iana(9, &["fd10:0:2::2"]),
            ];
            if with_sid {
                o.push(DhcpOption::ServerId(s.clone()));
            }
            let r = reply(handle(&cfg(), ll(), &msg(mt, o)));
            assert_eq!(r.kind, V6ReplyKind::ReplyWithAddress, "{mt:?}");
            let mut want = vec![7, 0xab, 0xcd, 0xef];
            want.extend(client_id());
            want.extend(sid());
            want.extend(iana_bytes(9));
            want.extend(dns_and_domains());
            assert_eq!(r.bytes, want, "{mt:?}");
        }
    }

    #[test]
    fn stale_address_is_returned_with_zero_lifetimes() {
        let p = msg(
            MessageType::Request,
            vec![
                DhcpOption::ClientId(duid_ll(&VM)),
                DhcpOption::ServerId(duid_ll(&BR)),
                iana(9, &["fd10:0:2::99"]),
            ],
        );
        let r = reply(handle(&cfg(), ll(), &p));
        let m = Message::decode(&mut Decoder::new(&r.bytes)).unwrap();
        let Some(DhcpOption::IANA(ia)) = m.opts().get(OptionCode::IANA) else {
            panic!("no IA_NA");
        };
        let addrs: Vec<(Ipv6Addr, u32)> = ia
            .opts
            .iter()
            .filter_map(|o| match o {
                DhcpOption::IAAddr(a) => Some((a.addr, a.valid_life)),
                _ => None,
            })
            .collect();
        assert_eq!(
            addrs,
            vec![
                ("fd10:0:2::2".parse().unwrap(), INFINITY),
                ("fd10:0:2::99".parse().unwrap(), 0)
            ]
        );
    }

    #[test]
    fn information_request_without_ia_is_answered() {
        // KubeVirt crashed on this (#9843).
        let p = msg(
            MessageType::InformationRequest,
            vec![
                DhcpOption::ClientId(duid_ll(&VM)),
                DhcpOption::ORO(ORO {
                    opts: vec![OptionCode::DomainNameServers],
                }),
            ],
        );
        let r = reply(handle(&cfg(), ll(), &p));
        assert_eq!(r.kind, V6ReplyKind::ReplyInformation);
        let mut want = vec![7, 0xab, 0xcd, 0xef];
        want.extend(client_id());
        want.extend(sid());
        want.extend(dns_and_domains());
        assert_eq!(r.bytes, want);
        // Without a client id, from the VM's EUI-64 link-local address.
        let p = msg(MessageType::InformationRequest, vec![]);
        let r = reply(handle(&cfg(), eui64_link_local(&VM), &p));
        assert_eq!(r.kind, V6ReplyKind::ReplyInformation);
        // ... and not from another address.
        assert_eq!(
            handle(&cfg(), ll(), &p),
            V6Outcome::Drop(V6Drop::ForeignClient)
        );
    }

    #[test]
    fn confirm_success_and_not_on_link() {
        let p = |a: &str| {
            msg(
                MessageType::Confirm,
                vec![DhcpOption::ClientId(duid_ll(&VM)), iana(1, &[a])],
            )
        };
        let r = reply(handle(&cfg(), ll(), &p("fd10:0:2::2")));
        assert_eq!(r.kind, V6ReplyKind::ReplyConfirm(Status::Success));
        let r = reply(handle(&cfg(), ll(), &p("2001:db8::5")));
        assert_eq!(r.kind, V6ReplyKind::ReplyConfirm(Status::NotOnLink));
        let tail = &r.bytes[4 + 14 + 14..];
        let mut want = vec![0, 13, 0, 13, 0, 4];
        want.extend_from_slice(b"not on link");
        assert_eq!(&tail[..want.len()], &want[..]);
        let empty = msg(
            MessageType::Confirm,
            vec![DhcpOption::ClientId(duid_ll(&VM)), iana(1, &[])],
        );
        assert_eq!(
            handle(&cfg(), ll(), &empty),
            V6Outcome::Drop(V6Drop::NothingToConfirm)
        );
    }

    #[test]
    fn release_and_decline_get_success() {
        for (mt, kind) in [
            (MessageType::Release, V6ReplyKind::ReplyRelease),
            (MessageType::Decline, V6ReplyKind::ReplyDecline),
        ] {
            let p = msg(
                mt,
                vec![
                    DhcpOption::ClientId(duid_ll(&VM)),
                    DhcpOption::ServerId(duid_ll(&BR)),
                    iana(1, &["fd10:0:2::2"]),
                ],
            );
            let r = reply(handle(&cfg(), ll(), &p));
            assert_eq!(r.kind, kind);
            let mut want = vec![7, 0xab, 0xcd, 0xef];
            want.extend(client_id());
            want.extend(sid());
            want.extend_from_slice(&[0, 13, 0, 2, 0, 0]);
            assert_eq!(r.bytes, want);
        }
    }

    #[test]
    fn foreign_clients_and_wrong_server_ids_are_dropped() {
        let other = [0x02, 0, 0, 0, 0xbb, 0x02];
        let p = msg(
            MessageType::Solicit,
            vec![DhcpOption::ClientId(duid_ll(&other)), iana(1, &[])],
        );
        assert_eq!(
            handle(&cfg(), ll(), &p),
            V6Outcome::Drop(V6Drop::ForeignClient)
        );
        // DUID-LLT with the VM's MAC is ours.
        let mut llt = vec![0, 1, 0, 1, 0x12, 0x34, 0x56, 0x78];
        llt.extend_from_slice(&VM);
        let p = msg(
            MessageType::Solicit,
            vec![DhcpOption::ClientId(llt), iana(1, &[])],
        );
        assert!(matches!(handle(&cfg(), ll(), &p), V6Outcome::Reply(_)));
        // A DUID-EN is ours only from the VM's EUI-64 link-local address.
        let en = vec![0, 2, 0, 0, 0x7f, 0x1f, 1, 2, 3];
        let p = msg(
            MessageType::Solicit,
            vec![DhcpOption::ClientId(en), iana(1, &[])],
        );
        assert!(matches!(
            handle(&cfg(), eui64_link_local(&VM), &p),
            V6Outcome::Reply(_)
        ));
        assert_eq!(
            handle(&cfg(), ll(), &p),
            V6Outcome::Drop(V6Drop::ForeignClient)
        );
        // SOLICIT must not carry a server id; REQUEST must carry ours.
        let p = msg(
            MessageType::Solicit,
            vec![
                DhcpOption::ClientId(duid_ll(&VM)),
                DhcpOption::ServerId(duid_ll(&BR)),
            ],
        );
        assert_eq!(
            handle(&cfg(), ll(), &p),
            V6Outcome::Drop(V6Drop::WrongServerId)
        );
        let p = msg(
            MessageType::Request,
            vec![
                DhcpOption::ClientId(duid_ll(&VM)),
                DhcpOption::ServerId(duid_ll(&other)),
            ],
        );
        assert_eq!(
            handle(&cfg(), ll(), &p),
            V6Outcome::Drop(V6Drop::WrongServerId)
        );
    }

    #[test]
    fn junk_is_dropped() {
        assert_eq!(
            handle(&cfg(), ll(), &[1, 2]),
            V6Outcome::Drop(V6Drop::Truncated)
        );
        let p = msg(
            MessageType::Advertise,
            vec![DhcpOption::ClientId(duid_ll(&VM))],
        );
        assert_eq!(
            handle(&cfg(), ll(), &p),
            V6Outcome::Drop(V6Drop::UnexpectedType)
        );
        // An option longer than the packet.
        assert!(matches!(
            handle(&cfg(), ll(), &[1, 0, 0, 1, 0, 1, 0, 50, 0]),
            V6Outcome::Drop(_)
        ));
    }

    /// Found by `cargo fuzz` (dhcp_v6): a Vendor Options option shorter than its 4-byte
    /// enterprise number made dhcproto's decoder subtract with overflow.
    #[test]
    fn short_fixed_part_options_are_malformed_not_a_panic() {
        for code in [16u8, 17] {
            let p = [1, 0, 0, 1, 0, code, 0, 2, 0xaa, 0xbb, 0, 0, 0, 0, 0, 0];
            assert_eq!(handle(&cfg(), ll(), &p), V6Outcome::Drop(V6Drop::Malformed));
        }
        // A status code of 1 byte inside an IA_NA.
        let mut p = vec![3, 0, 0, 1, 0, 3, 0, 17];
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&[0, 13, 0, 1, 0]);
        assert_eq!(handle(&cfg(), ll(), &p), V6Outcome::Drop(V6Drop::Malformed));
    }

    #[test]
    fn eui64_and_duid_helpers() {
        assert_eq!(
            eui64_link_local(&VM),
            "fe80::ff:fe00:aa01".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(duid_mac(&duid_ll(&VM)), Some(VM));
        assert_eq!(duid_mac(&[0, 3, 0, 1, 1]), None);
    }
}
