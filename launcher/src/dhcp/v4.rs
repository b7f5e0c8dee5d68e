//! The pure DHCPv4 core: one request in, one [`Outcome`] out (RFC 2131, RFC 2132).
//!
//! [`Prepared::new`] checks a [`V4Config`] and encodes every option value once; then
//! [`Prepared::handle`] answers a packet without touching the network, the clock or the log.
//! Requests are parsed with dhcproto's zero-copy reader (`dhcproto::v4::borrowed`); replies are
//! written directly, because dhcproto's encoder sorts options by code and we must follow the
//! client's Parameter Request List order.
//!
//! What is answered: only BOOTREQUESTs on Ethernet from `client_mac`.
//! - DISCOVER → OFFER of `client_ip`.
//! - REQUEST → ACK when the requested address (option 50, else `ciaddr`) is `client_ip` and the
//!   server identifier (option 54), if present, is `server_ip`; otherwise NAK.
//! - INFORM → ACK with the configuration but no address and no lease time.
//! - RELEASE, DECLINE → no reply (reported as an [`Event`] for the log).
//! - Everything else is dropped with a [`DropReason`].

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::borrowed::Message as RawMessage;
use dhcproto::v4::{MessageType, OptionCode};

use super::options::{self, SearchSkip};
use super::V4Config;

/// BOOTP fixed header (RFC 951) before the magic cookie.
pub const HEADER_LEN: usize = 236;
/// The DHCP magic cookie (RFC 2131 §3).
pub const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// IPv4 (20, no options) + UDP (8) header bytes.
pub const IP_UDP_OVERHEAD: usize = 28;
/// The IP datagram size every DHCP client must accept (RFC 2131 §2); also the smallest legal
/// value of option 57 (RFC 2132 §9.10).
pub const MIN_MAX_MESSAGE: usize = 576;
/// BOOTP-era minimum message length: shorter replies are zero-padded up to it (some old
/// clients and PXE ROMs drop shorter ones).
pub const BOOTP_MIN_LEN: usize = 300;
pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// Why a packet got no reply. Every reason has a counter in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than the BOOTP header and magic cookie, or an option runs past the end.
    Truncated,
    /// Larger than the interface MTU allows.
    Oversized,
    /// A BOOTREPLY (op 2) or unknown op code.
    WrongOpcode,
    /// Not Ethernet (htype 1) with a 6-byte hardware address.
    BadHardware,
    /// `chaddr` is not the VM's MAC.
    ForeignMac,
    /// No DHCP magic cookie (plain BOOTP is not served).
    BadMagic,
    /// The option area has no End option or is otherwise unparsable.
    Malformed,
    /// No option 53 (plain BOOTP is not served).
    NoMessageType,
    /// A message type a server does not answer (OFFER, ACK, NAK, lease queries, unknown).
    UnexpectedType,
    /// The configuration itself is invalid (only reachable through [`handle`]).
    InvalidConfig,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::WrongOpcode,
        DropReason::BadHardware,
        DropReason::ForeignMac,
        DropReason::BadMagic,
        DropReason::Malformed,
        DropReason::NoMessageType,
        DropReason::UnexpectedType,
        DropReason::InvalidConfig,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::WrongOpcode => "wrong_opcode",
            DropReason::BadHardware => "bad_hardware",
            DropReason::ForeignMac => "foreign_mac",
            DropReason::BadMagic => "bad_magic",
            DropReason::Malformed => "malformed",
            DropReason::NoMessageType => "no_message_type",
            DropReason::UnexpectedType => "unexpected_type",
            DropReason::InvalidConfig => "invalid_config",
        }
    }

    /// Position in [`DropReason::ALL`] (for counter arrays).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a REQUEST was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NakReason {
    /// The client asked for an address that is not the VM's (a stale lease, another network).
    NotOurAddress(Ipv4Addr),
    /// The client selected another server's offer (option 54 is not ours).
    NotOurServer(Ipv4Addr),
    /// Neither option 50 nor `ciaddr` carried an address.
    NoAddress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    /// The ACK to an INFORM: configuration only, no address, no lease time.
    InformAck,
    Nak(NakReason),
}

impl ReplyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Offer => "offer",
            ReplyKind::Ack => "ack",
            ReplyKind::InformAck => "inform_ack",
            ReplyKind::Nak(_) => "nak",
        }
    }
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `giaddr` was set: to the relay agent's server port.
    Relay(Ipv4Addr),
    /// `ciaddr` was set: unicast to the client's current address.
    Ciaddr(Ipv4Addr),
    /// The broadcast flag was set, or a NAK without a relay: 255.255.255.255 on the interface.
    Broadcast,
    /// Otherwise unicast to `yiaddr` at `chaddr`; the client has no address yet, so the sender
    /// needs a neighbour entry (or falls back to broadcast).
    Yiaddr { ip: Ipv4Addr, mac: [u8; 6] },
}

impl Destination {
    /// The UDP destination of the reply.
    pub fn socket_addr(&self) -> SocketAddrV4 {
        match *self {
            Destination::Relay(ip) => SocketAddrV4::new(ip, SERVER_PORT),
            Destination::Ciaddr(ip) => SocketAddrV4::new(ip, CLIENT_PORT),
            Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
            Destination::Yiaddr { ip, .. } => SocketAddrV4::new(ip, CLIENT_PORT),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub dest: Destination,
    pub xid: u32,
    /// The encoded DHCP message (UDP payload).
    pub bytes: Vec<u8>,
    /// Options left out to respect the size limit, in the order they were dropped.
    pub trimmed: Vec<u8>,
    /// The size limit this reply was fitted to (see [`Prepared::reply_limit`]).
    pub limit: usize,
}

/// A request that needs no reply but is worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Release {
        ciaddr: Ipv4Addr,
    },
    /// The guest found the offered address in use (option 50 holds it).
    Decline {
        addr: Option<Ipv4Addr>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply(Reply),
    NoReply(Event),
    Drop(DropReason),
}

/// A [`V4Config`] that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Order of the options sent without being requested (after 53, 54, 51).
const DEFAULT_ORDER: [u8; 11] = [1, 3, 6, 12, 15, 26, 119, 121, 42, 66, 67];

/// How much an option matters when a reply must shrink: lower goes first; `None` is never
/// dropped (53, 54, 51, 1, 3).
fn keep_rank(code: u8) -> Option<u8> {
    Some(match code {
        53 | 54 | 51 | 1 | 3 => return None,
        121 => 10,
        26 => 9,
        6 => 8,
        119 => 7,
        15 => 6,
        12 => 5,
        249 => 4,
        42 => 3,
        66 => 2,
        67 => 1,
        _ => 0, // private 224–254 and anything else
    })
}

/// A configuration checked and pre-encoded for fast answers.
#[derive(Debug, Clone)]
pub struct Prepared {
    server_ip: Ipv4Addr,
    client_ip: Ipv4Addr,
    client_mac: [u8; 6],
    lease: [u8; 4],
    mtu: u16,
    /// `siaddr` in replies: the TFTP server when option 66 is an IPv4 address.
    siaddr: Ipv4Addr,
    /// The `file` header field (the boot file, for PXE ROMs that read only the header).
    file: Option<Vec<u8>>,
    /// (code, value) in default send order.
    catalog: Vec<(u8, Vec<u8>)>,
    /// Option 249 (Microsoft's pre-standard classless routes): the value of 121, sent only
    /// when requested (Windows asks for it).
    ms_routes: Option<Vec<u8>>,
}

impl Prepared {
    /// Checks `cfg` and encodes every option once. Returns warnings (options left out) that
    /// the caller should log once.
    pub fn new(cfg: &V4Config) -> Result<(Prepared, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        if cfg.prefix_len > 32 {
            return Err(ConfigError(format!(
                "prefix length {} is over 32",
                cfg.prefix_len
            )));
        }
        for (what, ip) in [("client_ip", cfg.client_ip), ("server_ip", cfg.server_ip)] {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return Err(ConfigError(format!("{what} {ip} is not a unicast address")));
            }
        }
        if cfg.client_ip == cfg.server_ip {
            return Err(ConfigError(format!(
                "client_ip and server_ip are both {}",
                cfg.client_ip
            )));
        }
        if cfg.client_mac[0] & 1 == 1 || cfg.client_mac == [0; 6] {
            return Err(ConfigError(format!(
                "client_mac {} is not a unicast MAC",
                fmt_mac(&cfg.client_mac)
            )));
        }
        if usize::from(cfg.mtu) < MIN_MAX_MESSAGE {
            return Err(ConfigError(format!(
                "MTU {} is below 576, the smallest datagram every DHCP client must accept",
                cfg.mtu
            )));
        }
        if cfg.lease_secs == 0 {
            return Err(ConfigError("lease time is 0 seconds".into()));
        }

        let mut catalog: Catalog = Vec::new();
        let mut ms_routes = None;
        catalog.push((
            1,
            options::prefix_mask(cfg.prefix_len).to_be_bytes().to_vec(),
        ));
        if let Some(r) = cfg.router {
            catalog.push((3, r.octets().to_vec()));
        }
        push_ips(&mut catalog, &mut warnings, 6, "DNS", &cfg.dns);
        push_str(&mut catalog, &mut warnings, 12, "hostname", &cfg.hostname);
        push_str(&mut catalog, &mut warnings, 15, "domain name", &cfg.domain);
        catalog.push((26, cfg.mtu.to_be_bytes().to_vec()));
        let (search, skipped) = options::encode_search_list(&cfg.search);
        warnings.extend(skipped.iter().map(SearchSkip::to_string));
        if !search.is_empty() {
            catalog.push((119, search));
        }
        let (routes, bad) =
            options::plan_routes(cfg.client_ip, cfg.prefix_len, cfg.router, &cfg.routes);
        for r in bad {
            warnings.push(format!(
                "route {}/{} via {} left out of option 121: prefix over 32",
                r.dest, r.prefix_len, r.gateway
            ));
        }
        if !routes.is_empty() {
            let v = options::encode_classless_routes(&routes);
            catalog.push((121, v.clone()));
            ms_routes = Some(v);
        }
        push_ips(&mut catalog, &mut warnings, 42, "NTP", &cfg.ntp);
        push_str(
            &mut catalog,
            &mut warnings,
            66,
            "TFTP server",
            &cfg.tftp_server,
        );
        push_str(&mut catalog, &mut warnings, 67, "boot file", &cfg.boot_file);
        for (code, value) in &cfg.private {
            if !(224..=254).contains(code) {
                warnings.push(format!(
                    "private option {code} left out: private options are 224 to 254"
                ));
            } else if value.len() > options::MAX_OPTION_LEN {
                warnings.push(format!(
                    "private option {code} left out: {} bytes is over 255",
                    value.len()
                ));
            } else if catalog.iter().any(|(c, _)| c == code)
                || (*code == 249 && ms_routes.is_some())
            {
                warnings.push(format!(
                    "private option {code} left out: given more than once"
                ));
            } else {
                catalog.push((*code, value.clone()));
            }
        }

        let siaddr = cfg
            .tftp_server
            .as_deref()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let file = cfg
            .boot_file
            .as_ref()
            .filter(|f| !f.is_empty() && f.len() < 128 && !f.contains('\0'))
            .map(|f| f.as_bytes().to_vec());

        Ok((
            Prepared {
                server_ip: cfg.server_ip,
                client_ip: cfg.client_ip,
                client_mac: cfg.client_mac,
                lease: cfg.lease_secs.to_be_bytes(),
                mtu: cfg.mtu,
                siaddr,
                file,
                catalog,
                ms_routes,
            },
            warnings,
        ))
    }

    /// Largest request accepted: what fits in one frame of the interface.
    pub fn max_request(&self) -> usize {
        usize::from(self.mtu).max(MIN_MAX_MESSAGE) - IP_UDP_OVERHEAD
    }

    fn lookup(&self, code: u8) -> Option<&[u8]> {
        if code == 249 {
            if let Some(v) = &self.ms_routes {
                return Some(v);
            }
        }
        self.catalog
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    /// Answers one UDP payload received on port 67.
    pub fn handle(&self, packet: &[u8]) -> Outcome {
        if packet.len() < HEADER_LEN + MAGIC.len() {
            return Outcome::Drop(DropReason::Truncated);
        }
        if packet.len() > self.max_request() {
            return Outcome::Drop(DropReason::Oversized);
        }
        if packet[0] != 1 {
            return Outcome::Drop(DropReason::WrongOpcode);
        }
        if packet[1] != 1 || packet[2] != 6 {
            return Outcome::Drop(DropReason::BadHardware);
        }
        if packet[28..34] != self.client_mac {
            return Outcome::Drop(DropReason::ForeignMac);
        }
        if packet[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
            return Outcome::Drop(DropReason::BadMagic);
        }
        if let Err(r) = check_options(&packet[HEADER_LEN + 4..]) {
            return Outcome::Drop(r);
        }
        let Ok(msg) = RawMessage::new(packet) else {
            return Outcome::Drop(DropReason::Truncated);
        };

        let mut msg_type = None;
        let mut requested = None;
        let mut server_id = None;
        let mut prl_opt = None;
        let mut max_size = None;
        let mut relay_info: Option<Vec<u8>> = None;
        for opt in msg.opts() {
            let data = opt.data();
            match opt.code() {
                OptionCode::MessageType if data.len() == 1 => {
                    msg_type = Some(MessageType::from(data[0]))
                }
                OptionCode::RequestedIpAddress if data.len() == 4 => {
                    requested = Some(ipv4(data));
                }
                OptionCode::ServerIdentifier if data.len() == 4 => {
                    server_id = Some(ipv4(data));
                }
                OptionCode::ParameterRequestList => {
                    prl_opt = Some(opt);
                }
                OptionCode::MaxMessageSize if data.len() == 2 => {
                    max_size = Some(u16::from_be_bytes([data[0], data[1]]));
                }
                // Echoed back (RFC 3046); a value over 255 bytes is not a valid option 82.
                OptionCode::RelayAgentInformation if data.len() <= options::MAX_OPTION_LEN => {
                    relay_info = Some(data.to_vec())
                }
                _ => {}
            }
        }
        let prl: &[u8] = prl_opt.as_ref().map_or(&[], |o| o.data());
        let Some(msg_type) = msg_type else {
            return Outcome::Drop(DropReason::NoMessageType);
        };
        let req = Request {
            xid: msg.xid(),
            flags: u16::from_be_bytes([packet[10], packet[11]]),
            ciaddr: msg.ciaddr(),
            giaddr: msg.giaddr(),
            chaddr: &packet[28..44],
            prl,
            max_size,
            relay_info: relay_info.as_deref(),
        };
        match msg_type {
            MessageType::Discover => Outcome::Reply(self.reply(&req, ReplyKind::Offer)),
            MessageType::Request => {
                let wanted = requested
                    .or(Some(req.ciaddr).filter(|a| !a.is_unspecified()))
                    .filter(|a| !a.is_unspecified());
                let kind = match (server_id, wanted) {
                    (Some(id), _) if id != self.server_ip => {
                        ReplyKind::Nak(NakReason::NotOurServer(id))
                    }
                    (_, None) => ReplyKind::Nak(NakReason::NoAddress),
                    (_, Some(a)) if a != self.client_ip => {
                        ReplyKind::Nak(NakReason::NotOurAddress(a))
                    }
                    _ => ReplyKind::Ack,
                };
                Outcome::Reply(self.reply(&req, kind))
            }
            MessageType::Inform => Outcome::Reply(self.reply(&req, ReplyKind::InformAck)),
            MessageType::Release => Outcome::NoReply(Event::Release { ciaddr: req.ciaddr }),
            MessageType::Decline => Outcome::NoReply(Event::Decline { addr: requested }),
            _ => Outcome::Drop(DropReason::UnexpectedType),
        }
    }

    /// The size limit of a reply to a request with option 57 = `max_size`: the smaller of the
    /// client's limit (at least 576) and the interface MTU, minus the IP and UDP headers.
    /// Option 57 is read as an IP datagram size, like ISC dhcpd and busybox do: the
    /// conservative reading of RFC 2132 §9.10.
    pub fn reply_limit(&self, max_size: Option<u16>) -> usize {
        let client = max_size
            .map(usize::from)
            .unwrap_or(MIN_MAX_MESSAGE)
            .max(MIN_MAX_MESSAGE);
        client.min(usize::from(self.mtu)) - IP_UDP_OVERHEAD
    }

    fn reply(&self, req: &Request<'_>, kind: ReplyKind) -> Reply {
        let (mt, yiaddr, ciaddr) = match kind {
            ReplyKind::Offer => (MessageType::Offer, self.client_ip, Ipv4Addr::UNSPECIFIED),
            ReplyKind::Ack => (MessageType::Ack, self.client_ip, req.ciaddr),
            ReplyKind::InformAck => (MessageType::Ack, Ipv4Addr::UNSPECIFIED, req.ciaddr),
            ReplyKind::Nak(_) => (
                MessageType::Nak,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
            ),
        };
        let is_nak = matches!(kind, ReplyKind::Nak(_));
        let broadcast = req.flags & 0x8000 != 0;

        // Destination, RFC 2131 §4.1.
        let giaddr = req.giaddr;
        let dest = if !giaddr.is_unspecified() {
            Destination::Relay(giaddr)
        } else if is_nak {
            Destination::Broadcast
        } else if !req.ciaddr.is_unspecified() {
            Destination::Ciaddr(req.ciaddr)
        } else if broadcast || yiaddr.is_unspecified() {
            Destination::Broadcast
        } else {
            Destination::Yiaddr {
                ip: yiaddr,
                mac: self.client_mac,
            }
        };
        // A NAK through a relay asks the relay to broadcast it (§4.3.2).
        let flags = if is_nak && !giaddr.is_unspecified() {
            req.flags | 0x8000
        } else {
            req.flags & 0x8000
        };

        // Options, in send order.
        let mt_byte = [u8::from(mt)];
        let sid = self.server_ip.octets();
        let mut opts: Vec<(u8, &[u8])> = Vec::with_capacity(16 + req.prl.len());
        opts.push((53, &mt_byte));
        opts.push((54, &sid));
        if !is_nak {
            if kind != ReplyKind::InformAck {
                opts.push((51, &self.lease));
            }
            for &code in req.prl {
                if opts.iter().any(|(c, _)| *c == code) {
                    continue;
                }
                if let Some(v) = self.lookup(code) {
                    opts.push((code, v));
                }
            }
            let private = self.catalog.iter().map(|(c, _)| *c).filter(|c| *c >= 224);
            for code in DEFAULT_ORDER.into_iter().chain(private) {
                if opts.iter().any(|(c, _)| *c == code) {
                    continue;
                }
                if let Some(v) = self.lookup(code) {
                    opts.push((code, v));
                }
            }
        }
        let relay_len = req.relay_info.map_or(0, |r| 2 + r.len());

        // Fit into the limit: drop unrequested options first, least important first.
        let limit = self.reply_limit(req.max_size);
        let mut trimmed = Vec::new();
        let wire_len = |opts: &[(u8, &[u8])]| -> usize {
            HEADER_LEN
                + MAGIC.len()
                + opts.iter().map(|(_, v)| tlv_len(v.len())).sum::<usize>()
                + relay_len
                + 1
        };
        while wire_len(&opts) > limit {
            let victim = opts
                .iter()
                .enumerate()
                .filter_map(|(i, (c, _))| {
                    keep_rank(*c).map(|rank| (req.prl.contains(c), rank, std::cmp::Reverse(i)))
                })
                .min()
                .map(|(_, _, std::cmp::Reverse(i))| i);
            match victim {
                Some(i) => trimmed.push(opts.remove(i).0),
                None => break,
            }
        }

        // Encode.
        let total = wire_len(&opts);
        let mut b = Vec::with_capacity(total.max(BOOTP_MIN_LEN));
        b.push(2); // BOOTREPLY
        b.push(1); // Ethernet
        b.push(6);
        b.push(0); // hops
        b.extend_from_slice(&req.xid.to_be_bytes());
        b.extend_from_slice(&[0, 0]); // secs
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&ciaddr.octets());
        b.extend_from_slice(&yiaddr.octets());
        let siaddr = if is_nak {
            Ipv4Addr::UNSPECIFIED
        } else {
            self.siaddr
        };
        b.extend_from_slice(&siaddr.octets());
        b.extend_from_slice(&giaddr.octets());
        b.extend_from_slice(req.chaddr);
        b.resize(44 + 64, 0); // sname
        match (&self.file, is_nak) {
            (Some(f), false) => {
                b.extend_from_slice(f);
                b.resize(HEADER_LEN, 0);
            }
            _ => b.resize(HEADER_LEN, 0),
        }
        b.extend_from_slice(&MAGIC);
        for (code, v) in &opts {
            put_option(&mut b, *code, v);
        }
        if let Some(r) = req.relay_info {
            // RFC 3046 §2.2: echoed unchanged, as the last option.
            put_option(&mut b, 82, r);
        }
        b.push(255);
        if b.len() < BOOTP_MIN_LEN && BOOTP_MIN_LEN <= limit {
            b.resize(BOOTP_MIN_LEN, 0);
        }
        Reply {
            kind,
            dest,
            xid: req.xid,
            bytes: b,
            trimmed,
            limit,
        }
    }
}

type Catalog = Vec<(u8, Vec<u8>)>;

fn push_ips(
    catalog: &mut Catalog,
    warnings: &mut Vec<String>,
    code: u8,
    name: &str,
    ips: &[Ipv4Addr],
) {
    let max = options::MAX_OPTION_LEN / 4;
    if ips.len() > max {
        warnings.push(format!(
            "option {code} ({name}): only the first {max} of {} addresses fit",
            ips.len()
        ));
    }
    if !ips.is_empty() {
        let v: Vec<u8> = ips.iter().take(max).flat_map(|ip| ip.octets()).collect();
        catalog.push((code, v));
    }
}

fn push_str(
    catalog: &mut Catalog,
    warnings: &mut Vec<String>,
    code: u8,
    name: &str,
    s: &Option<String>,
) {
    if let Some(s) = s {
        if s.is_empty() || s.len() > options::MAX_OPTION_LEN || s.contains('\0') {
            warnings.push(format!(
                "option {code} ({name}) {s:?} left out: it must be 1 to 255 bytes without NUL"
            ));
        } else {
            catalog.push((code, s.as_bytes().to_vec()));
        }
    }
}

struct Request<'a> {
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: &'a [u8],
    prl: &'a [u8],
    max_size: Option<u16>,
    relay_info: Option<&'a [u8]>,
}

/// Bytes an option of `len` value bytes takes on the wire (split into 255-byte instances,
/// RFC 3396, when longer).
fn tlv_len(len: usize) -> usize {
    if len == 0 {
        2
    } else {
        len + 2 * len.div_ceil(options::MAX_OPTION_LEN)
    }
}

fn put_option(b: &mut Vec<u8>, code: u8, v: &[u8]) {
    if v.is_empty() {
        b.extend_from_slice(&[code, 0]);
        return;
    }
    for chunk in v.chunks(options::MAX_OPTION_LEN) {
        b.push(code);
        b.push(chunk.len() as u8);
        b.extend_from_slice(chunk);
    }
}

/// Walks the option area: every option must fit and the list must end with End (255).
fn check_options(area: &[u8]) -> Result<(), DropReason> {
    let mut i = 0;
    while i < area.len() {
        match area[i] {
            0 => i += 1,
            255 => return Ok(()),
            _ => {
                let Some(&len) = area.get(i + 1) else {
                    return Err(DropReason::Truncated);
                };
                i += 2 + usize::from(len);
                if i > area.len() {
                    return Err(DropReason::Truncated);
                }
            }
        }
    }
    Err(DropReason::Malformed)
}

fn ipv4(d: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(d[0], d[1], d[2], d[3])
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Answers one packet for `cfg` (checks and encodes the configuration on every call: use
/// [`Prepared`] in a loop).
pub fn handle(cfg: &V4Config, packet: &[u8]) -> Outcome {
    match Prepared::new(cfg) {
        Ok((p, _)) => p.handle(packet),
        Err(_) => Outcome::Drop(DropReason::InvalidConfig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::V4Route;
    use dhcproto::v4::{DhcpOption, Flags, Message, Opcode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn cfg() -> V4Config {
        V4Config {
            interface: "k6t-eth0".into(),
            server_ip: ip("169.254.75.10"),
            client_mac: MAC,
            client_ip: ip("10.244.1.5"),
            prefix_len: 24,
            router: Some(ip("10.244.1.1")),
            routes: vec![V4Route {
                dest: ip("0.0.0.0"),
                prefix_len: 0,
                gateway: ip("10.244.1.1"),
            }],
            dns: vec![ip("10.96.0.10")],
            search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            domain: Some("default.svc.cluster.local".into()),
            hostname: Some("vm1".into()),
            mtu: 1450,
            lease_secs: 86400,
            ntp: vec![],
            tftp_server: None,
            boot_file: None,
            private: vec![],
        }
    }

    fn request(mt: MessageType, mac: &[u8], extra: Vec<DhcpOption>) -> Message {
        let mut m = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(mt));
        for o in extra {
            m.opts_mut().insert(o);
        }
        m
    }

    fn encode(m: &Message) -> Vec<u8> {
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        b
    }

    fn run(c: &V4Config, m: &Message) -> Outcome {
        handle(c, &encode(m))
    }

    fn reply(o: Outcome) -> Reply {
        match o {
            Outcome::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// (code, value) of every option in wire order, with RFC 3396 pieces kept apart.
    fn raw_options(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = HEADER_LEN + 4;
        while i < b.len() && b[i] != 255 {
            if b[i] == 0 {
                i += 1;
                continue;
            }
            let len = b[i + 1] as usize;
            out.push((b[i], b[i + 2..i + 2 + len].to_vec()));
            i += 2 + len;
        }
        assert_eq!(b.get(i), Some(&255), "no End option");
        out
    }

    fn codes(b: &[u8]) -> Vec<u8> {
        raw_options(b).into_iter().map(|(c, _)| c).collect()
    }

    fn decode(b: &[u8]) -> Message {
        Message::decode(&mut Decoder::new(b)).unwrap()
    }

    #[test]
    fn discover_gets_an_offer_with_every_option() {
        let r = reply(run(&cfg(), &request(MessageType::Discover, &MAC, vec![])));
        assert_eq!(r.kind, ReplyKind::Offer);
        assert_eq!(
            r.dest,
            Destination::Yiaddr {
                ip: ip("10.244.1.5"),
                mac: MAC
            }
        );
        let m = decode(&r.bytes);
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), 0x1234_5678);
        assert_eq!(m.yiaddr(), ip("10.244.1.5"));
        assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.chaddr(), &MAC);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        // 53, 54, 51 first, then the default order; 249 only when asked.
        assert_eq!(
            codes(&r.bytes),
            vec![53, 54, 51, 1, 3, 6, 12, 15, 26, 119, 121]
        );
        let o = raw_options(&r.bytes);
        let get = |c: u8| o.iter().find(|(k, _)| *k == c).unwrap().1.clone();
        assert_eq!(get(54), vec![169, 254, 75, 10]);
        assert_eq!(get(51), 86400u32.to_be_bytes());
        assert_eq!(get(1), vec![255, 255, 255, 0]);
        assert_eq!(get(3), vec![10, 244, 1, 1]);
        assert_eq!(get(6), vec![10, 96, 0, 10]);
        assert_eq!(get(12), b"vm1".to_vec());
        assert_eq!(get(26), 1450u16.to_be_bytes());
        assert_eq!(get(121), vec![0, 10, 244, 1, 1]);
        assert!(r.bytes.len() >= BOOTP_MIN_LEN);
        assert!(r.trimmed.is_empty());
    }

    #[test]
    fn parameter_request_list_order_is_honoured() {
        let prl = vec![
            OptionCode::DomainSearch,
            OptionCode::InterfaceMtu,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::SubnetMask,
            OptionCode::Unknown(249),
            OptionCode::Hostname,
        ];
        let r = reply(run(
            &cfg(),
            &request(
                MessageType::Discover,
                &MAC,
                vec![DhcpOption::ParameterRequestList(prl)],
            ),
        ));
        assert_eq!(
            codes(&r.bytes),
            vec![53, 54, 51, 119, 26, 3, 6, 1, 249, 12, 15, 121]
        );
    }

    #[test]
    fn request_for_our_address_is_acked() {
        let r = reply(run(
            &cfg(),
            &request(
                MessageType::Request,
                &MAC,
                vec![
                    DhcpOption::RequestedIpAddress(ip("10.244.1.5")),
                    DhcpOption::ServerIdentifier(ip("169.254.75.10")),
                ],
            ),
        ));
        assert_eq!(r.kind, ReplyKind::Ack);
        let m = decode(&r.bytes);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(m.yiaddr(), ip("10.244.1.5"));
    }

    #[test]
    fn renewal_from_ciaddr_is_acked_by_unicast() {
        let mut m = request(MessageType::Request, &MAC, vec![]);
        m.set_ciaddr(ip("10.244.1.5"));
        let r = reply(run(&cfg(), &m));
        assert_eq!(r.kind, ReplyKind::Ack);
        assert_eq!(r.dest, Destination::Ciaddr(ip("10.244.1.5")));
        assert_eq!(decode(&r.bytes).ciaddr(), ip("10.244.1.5"));
    }

    #[test]
    fn nak_for_a_stale_address() {
        // KubeVirt ACKs this (its issue #13601); the guest would keep a wrong address.
        let r = reply(run(
            &cfg(),
            &request(
                MessageType::Request,
                &MAC,
                vec![DhcpOption::RequestedIpAddress(ip("10.244.9.9"))],
            ),
        ));
        assert_eq!(
            r.kind,
            ReplyKind::Nak(NakReason::NotOurAddress(ip("10.244.9.9")))
        );
        assert_eq!(r.dest, Destination::Broadcast);
        let m = decode(&r.bytes);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        // A NAK carries only 53 and 54 (RFC 2131 table 3).
        assert_eq!(codes(&r.bytes), vec![53, 54]);
    }

    #[test]
    fn nak_for_a_stale_ciaddr_and_for_another_server() {
        let mut m = request(MessageType::Request, &MAC, vec![]);
        m.set_ciaddr(ip("192.168.1.50"));
        let r = reply(run(&cfg(), &m));
        assert_eq!(
            r.kind,
            ReplyKind::Nak(NakReason::NotOurAddress(ip("192.168.1.50")))
        );
        // NAKs are broadcast even when ciaddr is set (§4.1).
        assert_eq!(r.dest, Destination::Broadcast);

        let r = reply(run(
            &cfg(),
            &request(
                MessageType::Request,
                &MAC,
                vec![
                    DhcpOption::RequestedIpAddress(ip("10.244.1.5")),
                    DhcpOption::ServerIdentifier(ip("10.0.0.2")),
                ],
            ),
        ));
        assert_eq!(
            r.kind,
            ReplyKind::Nak(NakReason::NotOurServer(ip("10.0.0.2")))
        );

        let r = reply(run(&cfg(), &request(MessageType::Request, &MAC, vec![])));
        assert_eq!(r.kind, ReplyKind::Nak(NakReason::NoAddress));
    }

    #[test]
    fn nak_through_a_relay_sets_the_broadcast_bit() {
        let mut m = request(
            MessageType::Request,
            &MAC,
            vec![DhcpOption::RequestedIpAddress(ip("10.9.9.9"))],
        );
        m.set_giaddr(ip("10.244.1.254"));
        let r = reply(run(&cfg(), &m));
        assert_eq!(r.dest, Destination::Relay(ip("10.244.1.254")));
        assert_eq!(r.dest.socket_addr().port(), 67);
        let d = decode(&r.bytes);
        assert!(d.flags().broadcast());
        assert_eq!(d.giaddr(), ip("10.244.1.254"));
    }

    #[test]
    fn inform_gets_configuration_without_lease() {
        let mut m = request(MessageType::Inform, &MAC, vec![]);
        m.set_ciaddr(ip("10.244.1.5"));
        let r = reply(run(&cfg(), &m));
        assert_eq!(r.kind, ReplyKind::InformAck);
        assert_eq!(r.dest, Destination::Ciaddr(ip("10.244.1.5")));
        let d = decode(&r.bytes);
        assert_eq!(d.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(d.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(d.ciaddr(), ip("10.244.1.5"));
        let c = codes(&r.bytes);
        assert!(!c.contains(&51), "{c:?}");
        assert!(c.contains(&1) && c.contains(&3) && c.contains(&6));
    }

    #[test]
    fn broadcast_flag_means_broadcast() {
        let mut m = request(MessageType::Discover, &MAC, vec![]);
        m.set_flags(Flags::default().set_broadcast());
        let r = reply(run(&cfg(), &m));
        assert_eq!(r.dest, Destination::Broadcast);
        assert!(decode(&r.bytes).flags().broadcast());
    }

    #[test]
    fn release_and_decline_get_no_reply() {
        let mut m = request(MessageType::Release, &MAC, vec![]);
        m.set_ciaddr(ip("10.244.1.5"));
        assert_eq!(
            run(&cfg(), &m),
            Outcome::NoReply(Event::Release {
                ciaddr: ip("10.244.1.5")
            })
        );
        let m = request(
            MessageType::Decline,
            &MAC,
            vec![DhcpOption::RequestedIpAddress(ip("10.244.1.5"))],
        );
        assert_eq!(
            run(&cfg(), &m),
            Outcome::NoReply(Event::Decline {
                addr: Some(ip("10.244.1.5"))
            })
        );
    }

    #[test]
    fn foreign_mac_is_ignored() {
        let other = [0x02, 0, 0, 0, 0xbb, 0x02];
        for mt in [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Inform,
        ] {
            assert_eq!(
                run(&cfg(), &request(mt, &other, vec![])),
                Outcome::Drop(DropReason::ForeignMac)
            );
        }
    }

    #[test]
    fn bad_packets_are_dropped_with_their_reason() {
        let good = encode(&request(MessageType::Discover, &MAC, vec![]));
        let c = cfg();
        assert_eq!(handle(&c, &[]), Outcome::Drop(DropReason::Truncated));
        assert_eq!(
            handle(&c, &good[..239]),
            Outcome::Drop(DropReason::Truncated)
        );
        assert_eq!(
            handle(&c, &vec![1u8; 1500]),
            Outcome::Drop(DropReason::Oversized)
        );
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(handle(&c, &b), Outcome::Drop(DropReason::WrongOpcode));
        let mut b = good.clone();
        b[2] = 16;
        assert_eq!(handle(&c, &b), Outcome::Drop(DropReason::BadHardware));
        let mut b = good.clone();
        b[236] = 0;
        assert_eq!(handle(&c, &b), Outcome::Drop(DropReason::BadMagic));
        // An option that runs past the end.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 55, 20, 1, 3]);
        assert_eq!(handle(&c, &b), Outcome::Drop(DropReason::Truncated));
        // No End option.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1]);
        assert_eq!(handle(&c, &b), Outcome::Drop(DropReason::Malformed));
        // No message type: plain BOOTP.
        let mut b = good[..240].to_vec();
        b.push(255);
        assert_eq!(handle(&c, &b), Outcome::Drop(DropReason::NoMessageType));
        // A server's message type.
        let m = request(MessageType::Offer, &MAC, vec![]);
        assert_eq!(run(&c, &m), Outcome::Drop(DropReason::UnexpectedType));
    }

    fn big_cfg() -> V4Config {
        let mut c = cfg();
        c.search = (0..12).map(|i| format!("zone{i}.example{i}.org")).collect();
        c.routes = (0..20)
            .map(|i| V4Route {
                dest: Ipv4Addr::new(10, 100 + i, 0, 0),
                prefix_len: 16,
                gateway: ip("10.244.1.1"),
            })
            .collect();
        c.ntp = vec![ip("10.0.0.1"), ip("10.0.0.2")];
        c.private = (224..240).map(|code| (code, vec![code; 20])).collect();
        c
    }

    #[test]
    fn reply_respects_the_576_default_and_keeps_essentials() {
        let c = big_cfg();
        let r = reply(run(&c, &request(MessageType::Discover, &MAC, vec![])));
        assert!(r.bytes.len() <= 576 - 28, "{}", r.bytes.len());
        assert!(!r.trimmed.is_empty());
        let got = codes(&r.bytes);
        for must in [53, 54, 51, 1, 3] {
            assert!(got.contains(&must), "{must} missing from {got:?}");
        }
        // Private options go before anything standard.
        assert!(
            r.trimmed.iter().take(3).all(|c| *c >= 224),
            "{:?}",
            r.trimmed
        );
        assert!(decode(&r.bytes).opts().msg_type() == Some(MessageType::Offer));
    }

    #[test]
    fn reply_grows_up_to_option_57_and_the_mtu() {
        let c = big_cfg();
        let m = request(
            MessageType::Discover,
            &MAC,
            vec![DhcpOption::MaxMessageSize(1500)],
        );
        let r = reply(run(&c, &m));
        assert!(r.trimmed.is_empty(), "{:?}", r.trimmed);
        assert!(r.bytes.len() > 548 && r.bytes.len() <= 1450 - 28);
        // With a small MTU the MTU wins over option 57.
        let mut small = big_cfg();
        small.mtu = 600;
        assert!(Prepared::new(&V4Config {
            mtu: 575,
            ..big_cfg()
        })
        .is_err());
        let r = reply(run(&small, &m));
        assert!(r.bytes.len() <= 600 - 28, "{}", r.bytes.len());
        assert!(!r.trimmed.is_empty());
        // Option 57 below 576 is read as 576.
        let m = request(
            MessageType::Discover,
            &MAC,
            vec![DhcpOption::MaxMessageSize(300)],
        );
        let r = reply(run(&c, &m));
        assert!(r.bytes.len() <= 548 && r.bytes.len() > 400);
    }

    #[test]
    fn requested_options_outlive_unrequested_ones() {
        let c = big_cfg();
        let m = request(
            MessageType::Discover,
            &MAC,
            vec![DhcpOption::ParameterRequestList(vec![OptionCode::Unknown(
                239,
            )])],
        );
        let r = reply(run(&c, &m));
        let got = codes(&r.bytes);
        assert_eq!(got[3], 239);
        assert!(!r.trimmed.contains(&239));
    }

    #[test]
    fn long_option_121_is_split_per_rfc3396() {
        let mut c = big_cfg();
        c.search.clear();
        c.private.clear();
        c.routes = (0..40)
            .map(|i| V4Route {
                dest: Ipv4Addr::new(10, 100 + i, 0, 0),
                prefix_len: 16,
                gateway: ip("10.244.1.1"),
            })
            .collect();
        let m = request(
            MessageType::Discover,
            &MAC,
            vec![DhcpOption::MaxMessageSize(1500)],
        );
        let r = reply(run(&c, &m));
        let pieces: Vec<_> = raw_options(&r.bytes)
            .into_iter()
            .filter(|(k, _)| *k == 121)
            .collect();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].1.len(), 255);
        let joined: Vec<u8> = pieces.iter().flat_map(|(_, v)| v.clone()).collect();
        assert_eq!(joined.len(), 40 * 7 + 5);
        assert_eq!(&joined[joined.len() - 5..], &[0, 10, 244, 1, 1]);
    }

    #[test]
    fn calico_reply_has_onlink_host_route_then_default_and_keeps_option_3() {
        let mut c = cfg();
        c.prefix_len = 32;
        c.router = Some(ip("169.254.1.1"));
        c.routes = vec![V4Route {
            dest: ip("0.0.0.0"),
            prefix_len: 0,
            gateway: ip("169.254.1.1"),
        }];
        let r = reply(run(&c, &request(MessageType::Discover, &MAC, vec![])));
        let o = raw_options(&r.bytes);
        let get = |k: u8| o.iter().find(|(c, _)| *c == k).unwrap().1.clone();
        assert_eq!(get(1), vec![255, 255, 255, 255]);
        assert_eq!(get(3), vec![169, 254, 1, 1]);
        assert_eq!(
            get(121),
            vec![32, 169, 254, 1, 1, 0, 0, 0, 0, 0, 169, 254, 1, 1]
        );
    }

    #[test]
    fn relay_agent_information_is_echoed_last() {
        let mut b = encode(&request(MessageType::Discover, &MAC, vec![]));
        // Append option 82 before End.
        let end = b.iter().rposition(|x| *x == 255).unwrap();
        b.truncate(end);
        b.extend_from_slice(&[82, 4, 1, 2, 0xab, 0xcd, 255]);
        let r = reply(handle(&cfg(), &b));
        let o = raw_options(&r.bytes);
        assert_eq!(o.last().unwrap(), &(82, vec![1, 2, 0xab, 0xcd]));
    }

    #[test]
    fn tftp_and_boot_file_fill_the_header_too() {
        let mut c = cfg();
        c.tftp_server = Some("10.0.0.7".into());
        c.boot_file = Some("pxelinux.0".into());
        let r = reply(run(&c, &request(MessageType::Discover, &MAC, vec![])));
        let d = decode(&r.bytes);
        assert_eq!(d.siaddr(), ip("10.0.0.7"));
        // (dhcproto keeps the terminating NUL.)
        assert!(d.fname().unwrap().starts_with(b"pxelinux.0\0"));
        let c = codes(&r.bytes);
        assert!(c.contains(&66) && c.contains(&67));
    }

    #[test]
    fn invalid_config_is_refused_and_bad_optional_values_warn() {
        let mut c = cfg();
        c.prefix_len = 33;
        assert!(Prepared::new(&c).is_err());
        let mut c = cfg();
        c.client_ip = c.server_ip;
        assert!(Prepared::new(&c).is_err());
        let mut c = cfg();
        c.search = vec!["bad name".into(), "ok.example".into()];
        c.private = vec![(100, vec![1]), (230, vec![1])];
        c.hostname = Some(String::new());
        let (p, warnings) = Prepared::new(&c).unwrap();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(p.lookup(230).is_some() && p.lookup(100).is_none() && p.lookup(12).is_none());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn header() -> Vec<u8> {
            let mut h = vec![0u8; HEADER_LEN];
            h[0] = 1;
            h[1] = 1;
            h[2] = 6;
            h[28..34].copy_from_slice(&MAC);
            h.extend_from_slice(&MAGIC);
            h
        }

        proptest! {
            /// Any option bytes after a valid header from the VM: no panic; any reply decodes
            /// with dhcproto, is a BOOTREPLY and fits its limit.
            #[test]
            fn any_options_never_panic_and_replies_fit(
                opts in proptest::collection::vec(any::<u8>(), 0..1400),
                mt in 1u8..9,
                mtu in 576u16..9000,
            ) {
                let mut c = big_cfg();
                c.mtu = mtu;
                let p = Prepared::new(&c).unwrap().0;
                let mut pkt = header();
                pkt.extend_from_slice(&[53, 1, mt]);
                pkt.extend_from_slice(&opts);
                pkt.push(255);
                if let Outcome::Reply(r) = p.handle(&pkt) {
                    prop_assert!(r.bytes.len() <= r.limit);
                    let m = decode(&r.bytes);
                    prop_assert_eq!(m.opcode(), Opcode::BootReply);
                    prop_assert!(m.opts().msg_type().is_some());
                }
            }

            /// Completely arbitrary bytes never panic.
            #[test]
            fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
                let _ = handle(&cfg(), &bytes);
            }
        }
    }
}
