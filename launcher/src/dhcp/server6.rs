//! The IPv6 side of the masquerade guest's configuration, as socket tasks: a DHCPv6 server
//! (UDP 547) and a router-advertisement sender (raw ICMPv6), both on the bridge (`k6t-eth0`).
//!
//! Contract used by `net` (`network setup --serve`) and `supervise` (`run`), beside
//! [`super::server::Dhcp4Servers`]:
//!
//! ```ignore
//! let v6 = Dhcp6Servers::start(net.dhcp6_configs()).await?; // sockets bound before this returns
//! // ... VM runs ...
//! v6.shutdown().await;
//! ```
//!
//! **DHCPv6**: a UDP socket on `[::]:547` bound to the interface (`SO_BINDTODEVICE`), joined
//! to `ff02::1:2` (All_DHCP_Relay_Agents_and_Servers) on it. Each datagram goes through
//! [`decide_dhcp6`] (decode with dhcproto, answer with [`Prepared6`]); the reply is sent
//! back to the client's link-local address and source port, on the interface. Only the VM is
//! answered: a DUID-LL/LLT carrying its MAC, or (other DUID types) a source address that is
//! the VM's EUI-64 link-local address or the link-local address its router solicitations came
//! from with the VM's MAC in their source link-layer option. Everything else is dropped and
//! counted by reason.
//!
//! **Router advertisements**: a raw ICMPv6 socket bound to the interface, hop limit 255, joined
//! to `ff02::2` (all-routers). It sends the RA of [`super::ra::encode_ra`] to `ff02::1`: three
//! initial ones at [`INITIAL_RA_INTERVAL`], then one every 200–600 s (RFC 4861 defaults, well
//! inside the router lifetime), and one in reply to every valid router solicitation (hop limit
//! 255, code 0, well-formed options; at most one per [`MIN_SOLICITED_GAP`]). The source address
//! is the bridge's link-local address, chosen by the kernel (the masquerade plan puts a fixed,
//! DAD-free one on the bridge: [`crate::net::binding::masquerade`]).
//!
//! Supervision, as for DHCPv4: a receive or send error that means the socket is gone, or the
//! interface re-created under the same name (noticed by a periodic index check), re-creates
//! the socket with exponential backoff (100 ms to 5 s), logging each attempt. A packet that
//! fails to parse is counted and never stops a server.

use std::ffi::OsString;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ra::{self, RaConfig};
use super::v6::{self, Prepared6, V6Config, V6Drop, V6Outcome, V6Reply, V6ReplyKind};
use super::DhcpError;

/// Everything the IPv6 side of one interface needs (built by `net`, served here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V6Setup {
    /// The DHCPv6 server (its `interface` is also where RAs are sent).
    pub dhcp: V6Config,
    /// The router advertisement.
    pub ra: RaConfig,
}

/// Gap between the first three unsolicited RAs (RFC 4861 MAX_INITIAL_RTR_ADVERT_INTERVAL).
pub const INITIAL_RA_INTERVAL: Duration = Duration::from_secs(16);
/// Periodic RAs after the initial ones: uniformly in [MIN, MAX] (RFC 4861 defaults).
pub const MIN_RA_INTERVAL: Duration = Duration::from_secs(200);
pub const MAX_RA_INTERVAL: Duration = Duration::from_secs(600);
/// Solicited RAs closer together than this are not sent (the previous one still answers).
pub const MIN_SOLICITED_GAP: Duration = Duration::from_millis(500);

/// What to do with one datagram received on port 547.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action6 {
    /// Send `reply.bytes` to `dest` (the client's address and port, on the interface).
    Reply {
        dest: SocketAddrV6,
        reply: V6Reply,
    },
    Drop(V6Drop),
}

/// The DHCPv6 receive path without sockets: decode, check the client, answer. `learned_ll` is
/// the link-local address the VM's router solicitations came from, if any (for clients whose
/// DUID does not carry the MAC and whose link-local address is not EUI-64).
pub fn decide_dhcp6(
    p: &Prepared6,
    from: SocketAddrV6,
    learned_ll: Option<Ipv6Addr>,
    packet: &[u8],
) -> Action6 {
    match p.handle_from(*from.ip(), learned_ll, packet) {
        V6Outcome::Drop(d) => Action6::Drop(d),
        V6Outcome::Reply(reply) => Action6::Reply {
            dest: SocketAddrV6::new(*from.ip(), from.port(), 0, from.scope_id()),
            reply,
        },
    }
}

/// Why an ICMPv6 packet received on the RA socket gets no RA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsIgnore {
    /// Another ICMPv6 type (neighbour discovery, echo, our own RAs): not counted as a drop.
    NotRs,
    /// Hop limit not 255: it did not originate on this link (RFC 4861 §6.1.1).
    HopLimit,
    /// Truncated, non-zero code or bad options.
    Malformed,
    /// The unspecified source with a source link-layer option (RFC 4861 §6.1.1).
    UnspecifiedWithSlla,
}

impl RsIgnore {
    pub const ALL: [RsIgnore; 4] = [
        RsIgnore::NotRs,
        RsIgnore::HopLimit,
        RsIgnore::Malformed,
        RsIgnore::UnspecifiedWithSlla,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RsIgnore::NotRs => "not_rs",
            RsIgnore::HopLimit => "hop_limit",
            RsIgnore::Malformed => "malformed",
            RsIgnore::UnspecifiedWithSlla => "unspecified_with_slla",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// What to do with one ICMPv6 packet received on the RA socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsDecision {
    /// A valid router solicitation: answer with an RA. `vm_ll` is the sender's link-local
    /// address when its source link-layer option carries the VM's MAC.
    Answer {
        vm_ll: Option<Ipv6Addr>,
    },
    Ignore(RsIgnore),
}

/// The RS receive path without sockets. `hop_limit` is the packet's hop limit (`None` when
/// the kernel did not report it: then it is not checked).
pub fn decide_rs(
    client_mac: &[u8; 6],
    src: Ipv6Addr,
    hop_limit: Option<i32>,
    packet: &[u8],
) -> RsDecision {
    if packet.first() != Some(&ra::TYPE_RS) {
        return RsDecision::Ignore(RsIgnore::NotRs);
    }
    if hop_limit.is_some_and(|h| h != 255) {
        return RsDecision::Ignore(RsIgnore::HopLimit);
    }
    let slla = match ra::parse_rs(packet) {
        Ok(s) => s,
        Err(_) => return RsDecision::Ignore(RsIgnore::Malformed),
    };
    if src.is_unspecified() && slla.is_some() {
        return RsDecision::Ignore(RsIgnore::UnspecifiedWithSlla);
    }
    let link_local = src.segments()[0] & 0xffc0 == 0xfe80;
    let vm_ll = (link_local && slla.as_ref() == Some(client_mac)).then_some(src);
    RsDecision::Answer { vm_ll }
}

/// Counters of one interface's DHCPv6 server and RA sender (monotonic).
#[derive(Debug, Default)]
pub struct Stats6 {
    advertises: AtomicU64,
    replies: AtomicU64,
    confirms: AtomicU64,
    info_replies: AtomicU64,
    releases: AtomicU64,
    declines: AtomicU64,
    dropped: [AtomicU64; V6Drop::ALL.len()],
    ra_unsolicited: AtomicU64,
    ra_solicited: AtomicU64,
    rs_ignored: [AtomicU64; RsIgnore::ALL.len()],
    send_errors: AtomicU64,
    socket_restarts: AtomicU64,
}

/// A copy of one interface's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats6Snapshot {
    pub interface: String,
    pub advertises: u64,
    /// REPLYs carrying the address (Rapid Commit SOLICIT, REQUEST, RENEW, REBIND).
    pub replies: u64,
    pub confirms: u64,
    pub info_replies: u64,
    pub releases: u64,
    pub declines: u64,
    /// (reason, count) for every [`V6Drop`], zeros included.
    pub dropped: Vec<(&'static str, u64)>,
    pub ra_unsolicited: u64,
    pub ra_solicited: u64,
    /// (reason, count) for every [`RsIgnore`] but `not_rs`.
    pub rs_ignored: Vec<(&'static str, u64)>,
    pub send_errors: u64,
    pub socket_restarts: u64,
}

impl Stats6Snapshot {
    pub fn served(&self) -> u64 {
        self.advertises
            + self.replies
            + self.confirms
            + self.info_replies
            + self.releases
            + self.declines
    }
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }
    pub fn dropped(&self, reason: V6Drop) -> u64 {
        self.dropped
            .iter()
            .find(|(r, _)| *r == reason.as_str())
            .map_or(0, |(_, n)| *n)
    }
}

fn drop_index(d: V6Drop) -> usize {
    V6Drop::ALL.iter().position(|x| *x == d).unwrap_or(0)
}

impl Stats6 {
    fn snapshot(&self, interface: &str) -> Stats6Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats6Snapshot {
            interface: interface.to_string(),
            advertises: l(&self.advertises),
            replies: l(&self.replies),
            confirms: l(&self.confirms),
            info_replies: l(&self.info_replies),
            releases: l(&self.releases),
            declines: l(&self.declines),
            dropped: V6Drop::ALL
                .iter()
                .map(|r| (r.as_str(), l(&self.dropped[drop_index(*r)])))
                .collect(),
            ra_unsolicited: l(&self.ra_unsolicited),
            ra_solicited: l(&self.ra_solicited),
            rs_ignored: RsIgnore::ALL
                .iter()
                .filter(|r| **r != RsIgnore::NotRs)
                .map(|r| (r.as_str(), l(&self.rs_ignored[r.index()])))
                .collect(),
            send_errors: l(&self.send_errors),
            socket_restarts: l(&self.socket_restarts),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Running IPv6 servers: per [`V6Setup`], one DHCPv6 task and one RA task.
pub struct Dhcp6Servers {
    servers: Vec<Running>,
    stop: watch::Sender<bool>,
}

struct Running {
    interface: String,
    stats: Arc<Stats6>,
    tasks: Vec<JoinHandle<()>>,
}

impl Dhcp6Servers {
    /// Checks every config and binds every socket (so an error is returned here, naming the
    /// interface), then serves in background tasks on the current tokio runtime.
    pub async fn start(setups: Vec<V6Setup>) -> Result<Self, DhcpError> {
        let mut ready = Vec::with_capacity(setups.len());
        for s in &setups {
            let iface = &s.dhcp.interface;
            let (prepared, warnings) =
                Prepared6::new(&s.dhcp).map_err(|e| DhcpError::InvalidConfig {
                    interface: iface.clone(),
                    reason: format!("DHCPv6: {}", e.0),
                })?;
            for w in warnings {
                tracing::warn!(interface = %iface, "{w}");
            }
            let udp = open_udp(iface)?;
            let icmp = open_icmp(iface)?;
            ready.push((s.clone(), prepared, udp, icmp));
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut servers = Vec::with_capacity(ready.len());
        for (s, prepared, udp, icmp) in ready {
            let iface = s.dhcp.interface.clone();
            let stats = Arc::new(Stats6::default());
            let learned = Arc::new(Mutex::new(None));
            let dhcp = tokio::spawn(serve_dhcp6(Dhcp6Task {
                interface: iface.clone(),
                prepared,
                bound: udp,
                stats: stats.clone(),
                learned: learned.clone(),
                stop: stop_rx.clone(),
            }));
            let ra_task = tokio::spawn(serve_ra(RaTask {
                interface: iface.clone(),
                ra: ra::encode_ra(&s.ra),
                client_mac: s.dhcp.client_mac,
                bound: icmp,
                stats: stats.clone(),
                learned,
                stop: stop_rx.clone(),
            }));
            tracing::info!(
                interface = %iface,
                client_mac = %super::v4::fmt_mac(&s.dhcp.client_mac),
                client_ip = %s.dhcp.client_ip,
                prefix = ?s.ra.prefix,
                router_lifetime_secs = s.ra.router_lifetime_secs,
                mtu = s.ra.mtu,
                "DHCPv6 server and router advertisements running"
            );
            servers.push(Running {
                interface: iface,
                stats,
                tasks: vec![dhcp, ra_task],
            });
        }
        Ok(Dhcp6Servers { servers, stop })
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Current counters, one entry per interface, in start order.
    pub fn stats(&self) -> Vec<Stats6Snapshot> {
        self.servers
            .iter()
            .map(|s| s.stats.snapshot(&s.interface))
            .collect()
    }

    /// Stops every task and waits for it; logs the counters.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for s in self.servers {
            for t in s.tasks {
                if let Err(e) = t.await {
                    tracing::error!(interface = %s.interface, "DHCPv6/RA task failed: {e}");
                }
            }
            let st = s.stats.snapshot(&s.interface);
            let dropped: Vec<String> = st
                .dropped
                .iter()
                .chain(st.rs_ignored.iter())
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            tracing::info!(
                interface = %st.interface,
                served = st.served(),
                advertises = st.advertises,
                replies = st.replies,
                confirms = st.confirms,
                info_replies = st.info_replies,
                releases = st.releases,
                declines = st.declines,
                dropped = st.dropped_total(),
                dropped_by_reason = %dropped.join(","),
                ra_unsolicited = st.ra_unsolicited,
                ra_solicited = st.ra_solicited,
                send_errors = st.send_errors,
                socket_restarts = st.socket_restarts,
                "DHCPv6 server and router advertisements stopped"
            );
        }
    }
}

fn sock_err(interface: &str, op: &'static str) -> impl FnOnce(std::io::Error) -> DhcpError {
    let interface = interface.to_string();
    move |source| DhcpError::Socket6 {
        interface,
        op,
        source,
    }
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// A bound UDP socket and the interface index it was bound to.
struct BoundUdp {
    sock: UdpSocket,
    ifindex: u32,
}

/// The bound, non-blocking raw ICMPv6 socket.
struct BoundIcmp {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
}

fn ifindex(interface: &str) -> Result<u32, DhcpError> {
    nix::net::if_::if_nametoindex(interface)
        .map_err(errno)
        .map_err(sock_err(
            interface,
            "looking up the interface (does it exist?)",
        ))
}

fn open_udp(interface: &str) -> Result<BoundUdp, DhcpError> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6,
    };
    let idx = ifindex(interface)?;
    let e = |op| move |x: nix::errno::Errno| sock_err(interface, op)(errno(x));
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(e("creating the UDP socket (is IPv6 disabled?)"))?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(e("setting IPV6_V6ONLY"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(e("setting SO_REUSEADDR"))?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(interface))
        .map_err(e("setting SO_BINDTODEVICE"))?;
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
    bind(
        fd.as_raw_fd(),
        &SockaddrIn6::from(SocketAddrV6::new(
            Ipv6Addr::UNSPECIFIED,
            v6::SERVER_PORT,
            0,
            0,
        )),
    )
    .map_err(e("binding [::]:547"))?;
    socket2::SockRef::from(&fd)
        .join_multicast_v6(&v6::ALL_SERVERS, idx)
        .map_err(sock_err(interface, "joining ff02::1:2"))?;
    let sock = UdpSocket::from_std(std::net::UdpSocket::from(fd))
        .map_err(sock_err(interface, "registering the socket with tokio"))?;
    Ok(BoundUdp { sock, ifindex: idx })
}

fn open_icmp(interface: &str) -> Result<BoundIcmp, DhcpError> {
    use nix::sys::socket::{
        setsockopt, socket, sockopt, AddressFamily, SockFlag, SockProtocol, SockType,
    };
    let idx = ifindex(interface)?;
    let e = |op| move |x: nix::errno::Errno| sock_err(interface, op)(errno(x));
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::IcmpV6,
    )
    .map_err(e("creating the raw ICMPv6 socket (needs CAP_NET_RAW)"))?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(interface))
        .map_err(e("setting SO_BINDTODEVICE"))?;
    setsockopt(&fd, sockopt::Ipv6MulticastHops, &255).map_err(e("setting IPV6_MULTICAST_HOPS"))?;
    setsockopt(&fd, sockopt::Ipv6Ttl, &255).map_err(e("setting IPV6_UNICAST_HOPS"))?;
    setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true).map_err(e("setting IPV6_RECVHOPLIMIT"))?;
    let s = socket2::SockRef::from(&fd);
    s.set_multicast_loop_v6(false)
        .map_err(sock_err(interface, "setting IPV6_MULTICAST_LOOP"))?;
    s.join_multicast_v6(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), idx)
        .map_err(sock_err(interface, "joining ff02::2"))?;
    let fd = crate::sys::v6::async_socket(fd)
        .map_err(sock_err(interface, "registering the socket with tokio"))?;
    Ok(BoundIcmp { fd, ifindex: idx })
}

/// Allows one log line per interval, counting what it suppressed.
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    fn new() -> Self {
        RateLimit {
            last: None,
            suppressed: 0,
        }
    }
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

fn socket_is_dead(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::EBADF) | Some(libc::ENOTSOCK)
    )
}

/// `Some(why)` when `interface` no longer has index `bound`.
fn index_changed(interface: &str, bound: u32) -> Option<String> {
    match nix::net::if_::if_nametoindex(interface) {
        Ok(i) if i == bound => None,
        Ok(i) => Some(format!(
            "the interface was re-created (index {bound} → {i})"
        )),
        Err(e) => Some(format!("the interface is gone ({e})")),
    }
}

/// Waits `delay`, doubling up to 5 s, unless stopped. Returns false when stopped.
async fn backoff(stop: &mut watch::Receiver<bool>, delay: &mut Duration) -> bool {
    let d = *delay;
    *delay = (d * 2).min(Duration::from_secs(5));
    tokio::select! {
        _ = stop.changed() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

struct Dhcp6Task {
    interface: String,
    prepared: Prepared6,
    bound: BoundUdp,
    stats: Arc<Stats6>,
    learned: Arc<Mutex<Option<Ipv6Addr>>>,
    stop: watch::Receiver<bool>,
}

async fn serve_dhcp6(mut t: Dhcp6Task) {
    let mut buf = vec![0u8; 65536];
    let mut errors = RateLimit::new();
    let mut first_address = true;
    let mut check = tokio::time::interval(Duration::from_secs(2));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let broken: Option<String> = tokio::select! {
            _ = t.stop.changed() => return,
            _ = check.tick() => index_changed(&t.interface, t.bound.ifindex),
            r = t.bound.sock.recv_from(&mut buf) => match r {
                Ok((n, std::net::SocketAddr::V6(from))) => {
                    let learned = *t.learned.lock().unwrap_or_else(|p| p.into_inner());
                    let action = decide_dhcp6(&t.prepared, from, learned, &buf[..n]);
                    send_dhcp6(&t, action, &mut errors, &mut first_address).await
                }
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
                Err(e) => Some(format!("receiving failed: {e}")),
            },
        };
        if let Some(why) = broken {
            tracing::error!(interface = %t.interface, "DHCPv6 socket broken: {why}; re-creating it");
            let mut delay = Duration::from_millis(100);
            loop {
                if !backoff(&mut t.stop, &mut delay).await {
                    return;
                }
                match open_udp(&t.interface) {
                    Ok(b) => {
                        t.bound = b;
                        inc(&t.stats.socket_restarts);
                        tracing::info!(interface = %t.interface, "DHCPv6 socket re-created");
                        break;
                    }
                    Err(e) => tracing::error!(interface = %t.interface,
                        retry_in_ms = delay.as_millis() as u64, "{e}"),
                }
            }
        }
    }
}

/// Sends what [`decide_dhcp6`] decided. Returns `Some(reason)` when the socket must be
/// re-created.
async fn send_dhcp6(
    t: &Dhcp6Task,
    action: Action6,
    errors: &mut RateLimit,
    first_address: &mut bool,
) -> Option<String> {
    let s = &t.stats;
    let (dest, reply) = match action {
        Action6::Drop(d) => {
            inc(&s.dropped[drop_index(d)]);
            tracing::debug!(interface = %t.interface, reason = d.as_str(), "DHCPv6 packet dropped");
            return None;
        }
        Action6::Reply { dest, reply } => (dest, reply),
    };
    let counter = match reply.kind {
        V6ReplyKind::Advertise => &s.advertises,
        V6ReplyKind::ReplyWithAddress => &s.replies,
        V6ReplyKind::ReplyConfirm(_) => &s.confirms,
        V6ReplyKind::ReplyInformation => &s.info_replies,
        V6ReplyKind::ReplyRelease => &s.releases,
        V6ReplyKind::ReplyDecline => &s.declines,
    };
    // The client's address is link-local: the reply must leave on our interface.
    let dest = if dest.scope_id() == 0 {
        SocketAddrV6::new(*dest.ip(), dest.port(), 0, t.bound.ifindex)
    } else {
        dest
    };
    match t.bound.sock.send_to(&reply.bytes, dest).await {
        Ok(_) => {
            inc(counter);
            if reply.kind == V6ReplyKind::ReplyWithAddress && *first_address {
                *first_address = false;
                tracing::info!(interface = %t.interface, client = %dest, "DHCPv6 REPLY: the guest has its address");
            }
            if reply.kind == V6ReplyKind::ReplyDecline {
                tracing::warn!(interface = %t.interface, "DHCPv6 DECLINE: the guest says its address is in use on the link");
            }
            tracing::debug!(interface = %t.interface, kind = ?reply.kind, %dest, "DHCPv6 reply sent");
            None
        }
        Err(e) => {
            inc(&s.send_errors);
            if let Some(n) = errors.allow() {
                tracing::warn!(interface = %t.interface, %dest, suppressed = n, "sending the DHCPv6 reply failed: {e}");
            }
            socket_is_dead(&e).then(|| format!("sending failed: {e}"))
        }
    }
}

struct RaTask {
    interface: String,
    ra: Vec<u8>,
    client_mac: [u8; 6],
    bound: BoundIcmp,
    stats: Arc<Stats6>,
    learned: Arc<Mutex<Option<Ipv6Addr>>>,
    stop: watch::Receiver<bool>,
}

/// A pseudo-random duration in [lo, hi] (no RNG crate: the clock's nanoseconds suffice to
/// de-synchronise routers, which is all RFC 4861 asks for).
fn jitter(lo: Duration, hi: Duration) -> Duration {
    let span = hi.saturating_sub(lo).as_millis() as u64;
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    lo + Duration::from_millis(if span == 0 { 0 } else { n % (span + 1) })
}

/// One received ICMPv6 packet: (length, source, hop limit).
fn recv_icmp(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<(usize, Ipv6Addr, Option<i32>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn6};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::c_int);
    let msg = recvmsg::<SockaddrIn6>(
        fd.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(errno)?;
    let mut hop = None;
    if let Ok(cms) = msg.cmsgs() {
        for c in cms {
            if let ControlMessageOwned::Ipv6HopLimit(h) = c {
                hop = Some(h);
            }
        }
    }
    let src = msg.address.map_or(Ipv6Addr::UNSPECIFIED, |a| a.ip());
    Ok((msg.bytes, src, hop))
}

fn send_ra_now(b: &BoundIcmp, ra: &[u8]) -> std::io::Result<()> {
    use nix::sys::socket::{sendto, MsgFlags, SockaddrIn6};
    let dest = SockaddrIn6::from(SocketAddrV6::new(ra::ALL_NODES, 0, 0, b.ifindex));
    sendto(
        b.fd.get_ref().as_raw_fd(),
        ra,
        &dest,
        MsgFlags::MSG_DONTWAIT,
    )
    .map(drop)
    .map_err(errno)
}

async fn serve_ra(mut t: RaTask) {
    let mut buf = vec![0u8; 2048];
    let mut errors = RateLimit::new();
    let mut initial_left = 3u32;
    let mut next = tokio::time::Instant::now();
    let mut last_sent: Option<Instant> = None;
    let mut check = tokio::time::interval(Duration::from_secs(2));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // (send now?, solicited?) or a broken socket.
        let event: Result<Option<bool>, String> = tokio::select! {
            _ = t.stop.changed() => return,
            _ = check.tick() => match index_changed(&t.interface, t.bound.ifindex) {
                Some(why) => Err(why),
                None => Ok(None),
            },
            _ = tokio::time::sleep_until(next) => {
                next = tokio::time::Instant::now() + if initial_left > 1 {
                    initial_left -= 1;
                    INITIAL_RA_INTERVAL
                } else {
                    initial_left = 0;
                    jitter(MIN_RA_INTERVAL, MAX_RA_INTERVAL)
                };
                Ok(Some(false))
            }
            r = t.bound.fd.readable() => match r {
                Err(e) => Err(format!("waiting for the socket failed: {e}")),
                Ok(mut guard) => match guard.try_io(|fd| recv_icmp(fd.get_ref(), &mut buf)) {
                    Err(_would_block) => Ok(None),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
                    Ok(Err(e)) if socket_is_dead(&e) => Err(format!("receiving failed: {e}")),
                    Ok(Err(e)) => {
                        tracing::debug!(interface = %t.interface, "ICMPv6 receive error: {e}");
                        Ok(None)
                    }
                    Ok(Ok((n, src, hop))) => match decide_rs(&t.client_mac, src, hop, &buf[..n]) {
                        RsDecision::Ignore(RsIgnore::NotRs) => Ok(None),
                        RsDecision::Ignore(why) => {
                            inc(&t.stats.rs_ignored[why.index()]);
                            tracing::debug!(interface = %t.interface, %src, reason = why.as_str(), "router solicitation ignored");
                            Ok(None)
                        }
                        RsDecision::Answer { vm_ll } => {
                            if let Some(ll) = vm_ll {
                                let mut l = t.learned.lock().unwrap_or_else(|p| p.into_inner());
                                if *l != Some(ll) {
                                    tracing::debug!(interface = %t.interface, %ll, "the VM's link-local address");
                                    *l = Some(ll);
                                }
                            }
                            let recent = last_sent.is_some_and(|l| l.elapsed() < MIN_SOLICITED_GAP);
                            Ok((!recent).then_some(true))
                        }
                    },
                },
            },
        };
        let why = match event {
            Ok(None) => continue,
            Ok(Some(solicited)) => match send_ra_now(&t.bound, &t.ra) {
                Ok(()) => {
                    last_sent = Some(Instant::now());
                    inc(if solicited {
                        &t.stats.ra_solicited
                    } else {
                        &t.stats.ra_unsolicited
                    });
                    tracing::debug!(interface = %t.interface, solicited, "router advertisement sent");
                    continue;
                }
                Err(e) => {
                    inc(&t.stats.send_errors);
                    // No carrier yet (the VM has not opened its tap): expected before boot.
                    if let Some(n) = errors.allow() {
                        tracing::debug!(interface = %t.interface, suppressed = n, "sending the router advertisement failed: {e}");
                    }
                    if !socket_is_dead(&e) {
                        continue;
                    }
                    format!("sending failed: {e}")
                }
            },
            Err(why) => why,
        };
        tracing::error!(interface = %t.interface, "router advertisement socket broken: {why}; re-creating it");
        let mut delay = Duration::from_millis(100);
        loop {
            if !backoff(&mut t.stop, &mut delay).await {
                return;
            }
            match open_icmp(&t.interface) {
                Ok(b) => {
                    t.bound = b;
                    inc(&t.stats.socket_restarts);
                    initial_left = 3;
                    next = tokio::time::Instant::now();
                    tracing::info!(interface = %t.interface, "router advertisement socket re-created");
                    break;
                }
                Err(e) => tracing::error!(interface = %t.interface,
                    retry_in_ms = delay.as_millis() as u64, "{e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];

    fn ll(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn rs_from_the_vm_is_answered_and_its_link_local_learned() {
        let mut rs = vec![133, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        rs.extend_from_slice(&VM);
        assert_eq!(
            decide_rs(&VM, ll("fe80::1234"), Some(255), &rs),
            RsDecision::Answer {
                vm_ll: Some(ll("fe80::1234"))
            }
        );
        // Another MAC: answered (RAs are for the whole link) but nothing learned.
        let mut other = rs.clone();
        other[15] = 0x02;
        assert_eq!(
            decide_rs(&VM, ll("fe80::1234"), Some(255), &other),
            RsDecision::Answer { vm_ll: None }
        );
        // Not from a link-local address: nothing learned.
        assert_eq!(
            decide_rs(&VM, ll("fd10:0:2::2"), Some(255), &rs),
            RsDecision::Answer { vm_ll: None }
        );
        assert_eq!(
            decide_rs(&VM, ll("fe80::1234"), Some(64), &rs),
            RsDecision::Ignore(RsIgnore::HopLimit)
        );
        assert_eq!(
            decide_rs(&VM, Ipv6Addr::UNSPECIFIED, Some(255), &rs),
            RsDecision::Ignore(RsIgnore::UnspecifiedWithSlla)
        );
        assert_eq!(
            decide_rs(&VM, Ipv6Addr::UNSPECIFIED, None, &rs[..8]),
            RsDecision::Answer { vm_ll: None }
        );
        assert_eq!(
            decide_rs(&VM, ll("fe80::1"), Some(255), &[135, 0, 0, 0]),
            RsDecision::Ignore(RsIgnore::NotRs)
        );
        assert_eq!(
            decide_rs(&VM, ll("fe80::1"), Some(255), &[133, 1, 0, 0, 0, 0, 0, 0]),
            RsDecision::Ignore(RsIgnore::Malformed)
        );
    }

    fn prepared() -> Prepared6 {
        Prepared6::new(&V6Config {
            interface: "k6t-eth0".into(),
            server_mac: [2, 0, 0, 0, 0, 0],
            client_mac: VM,
            client_ip: ll("fd10:0:2::2"),
            dns: vec![],
            search: vec![],
            lifetime_secs: v6::INFINITY,
        })
        .unwrap()
        .0
    }

    /// An INFORMATION-REQUEST without a client id (allowed) from a stable-privacy link-local
    /// address: answered only once the VM's router solicitation showed that address.
    #[test]
    fn learned_link_local_identifies_the_vm() {
        let p = prepared();
        let from = SocketAddrV6::new(ll("fe80::5eed:1:2:3"), 546, 0, 7);
        let info_req = [11, 1, 2, 3];
        assert_eq!(
            decide_dhcp6(&p, from, None, &info_req),
            Action6::Drop(V6Drop::ForeignClient)
        );
        match decide_dhcp6(&p, from, Some(*from.ip()), &info_req) {
            Action6::Reply { dest, reply } => {
                assert_eq!(
                    dest, from,
                    "the reply goes back where the request came from"
                );
                assert_eq!(reply.kind, V6ReplyKind::ReplyInformation);
                assert_eq!(&reply.bytes[..4], &[7, 1, 2, 3]);
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let j = jitter(MIN_RA_INTERVAL, MAX_RA_INTERVAL);
            assert!(j >= MIN_RA_INTERVAL && j <= MAX_RA_INTERVAL, "{j:?}");
        }
    }
}
