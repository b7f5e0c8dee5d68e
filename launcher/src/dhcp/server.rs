//! The socket side of the DHCP servers: one supervised tokio task per interface.
//!
//! Contract used by `net` (`network setup --serve`) and `supervise` (`run`):
//!
//! ```ignore
//! let servers = Dhcp4Servers::start(configs).await?; // sockets bound before this returns
//! // ... VM runs ...
//! servers.shutdown().await;
//! ```
//!
//! Each server owns a UDP socket on 0.0.0.0:67 bound to its interface (`SO_BINDTODEVICE`,
//! `SO_BROADCAST`, `SO_REUSEADDR`, so several servers share a host, one per interface). Replies
//! leave from the interface's address (the link-local `server_ip`) to port 68 (or 67 for a
//! relay). A reply unicast to an address the client does not have yet (RFC 2131 §4.1, `yiaddr`)
//! needs a neighbour entry: the server installs a permanent one (`client_ip` → `client_mac` on
//! the interface) at start and removes it at shutdown; if that fails, such replies are
//! broadcast instead, which every client accepts.
//!
//! Supervision: a receive or send error that means the socket is gone (or the interface was
//! re-created under the same name, noticed by a periodic index check) re-creates the socket
//! with exponential backoff (100 ms to 5 s), logging each attempt. A packet that fails to parse
//! is counted and never stops the server.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::v4::{self, Destination, DropReason, Event, Outcome, Prepared, ReplyKind};
use super::{DhcpError, V4Config};

/// Running DHCPv4 servers, one per [`V4Config`].
pub struct Dhcp4Servers {
    servers: Vec<Running>,
    stop: watch::Sender<bool>,
}

struct Running {
    interface: String,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
    neighbour: Option<Neighbour>,
}

/// Counters of one server (monotonic; read with [`Dhcp4Servers::stats`]).
#[derive(Debug, Default)]
pub struct Stats {
    offers: AtomicU64,
    acks: AtomicU64,
    inform_acks: AtomicU64,
    naks: AtomicU64,
    releases: AtomicU64,
    declines: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    send_errors: AtomicU64,
    socket_restarts: AtomicU64,
}

/// A copy of one server's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub interface: String,
    pub offers: u64,
    pub acks: u64,
    pub inform_acks: u64,
    pub naks: u64,
    pub releases: u64,
    pub declines: u64,
    /// (reason, count) for every [`DropReason`], zeros included.
    pub dropped: Vec<(&'static str, u64)>,
    pub send_errors: u64,
    pub socket_restarts: u64,
}

impl StatsSnapshot {
    /// Replies sent (offers, ACKs, INFORM ACKs and NAKs).
    pub fn served(&self) -> u64 {
        self.offers + self.acks + self.inform_acks + self.naks
    }
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped
            .iter()
            .find(|(r, _)| *r == reason.as_str())
            .map_or(0, |(_, n)| *n)
    }
}

impl Stats {
    fn snapshot(&self, interface: &str) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            interface: interface.to_string(),
            offers: l(&self.offers),
            acks: l(&self.acks),
            inform_acks: l(&self.inform_acks),
            naks: l(&self.naks),
            releases: l(&self.releases),
            declines: l(&self.declines),
            dropped: DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), l(&self.dropped[r.index()])))
                .collect(),
            send_errors: l(&self.send_errors),
            socket_restarts: l(&self.socket_restarts),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl Dhcp4Servers {
    /// Binds every server's socket (so a bind error is returned here, naming the interface),
    /// then serves in background tasks on the current tokio runtime.
    pub async fn start(configs: Vec<V4Config>) -> Result<Self, DhcpError> {
        // Check and bind everything first: nothing runs unless everything can.
        let mut ready = Vec::with_capacity(configs.len());
        for cfg in &configs {
            let (prepared, warnings) =
                Prepared::new(cfg).map_err(|e| DhcpError::InvalidConfig {
                    interface: cfg.interface.clone(),
                    reason: e.0,
                })?;
            for w in warnings {
                tracing::warn!(interface = %cfg.interface, "{w}");
            }
            let bound = open_socket(&cfg.interface)?;
            ready.push((cfg.clone(), prepared, bound));
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut servers = Vec::with_capacity(ready.len());
        for (cfg, prepared, bound) in ready {
            let neighbour = match Neighbour::add(bound.ifindex, cfg.client_ip, cfg.client_mac).await
            {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(
                        interface = %cfg.interface,
                        client_ip = %cfg.client_ip,
                        "adding the neighbour entry for the guest failed ({e}); \
                         replies to a client without an address will be broadcast"
                    );
                    None
                }
            };
            let stats = Arc::new(Stats::default());
            let task = tokio::spawn(serve(Task {
                interface: cfg.interface.clone(),
                prepared,
                bound,
                stats: stats.clone(),
                unicast_yiaddr: neighbour.is_some(),
                stop: stop_rx.clone(),
            }));
            tracing::info!(
                interface = %cfg.interface,
                server_ip = %cfg.server_ip,
                client_mac = %v4::fmt_mac(&cfg.client_mac),
                client_ip = %cfg.client_ip,
                prefix_len = cfg.prefix_len,
                "DHCPv4 server listening"
            );
            servers.push(Running {
                interface: cfg.interface.clone(),
                stats,
                task,
                neighbour,
            });
        }
        Ok(Dhcp4Servers { servers, stop })
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Current counters, one entry per server, in start order.
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.servers
            .iter()
            .map(|s| s.stats.snapshot(&s.interface))
            .collect()
    }

    /// Stops every server and waits for its task to end; logs the counters.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for s in self.servers {
            if let Err(e) = s.task.await {
                tracing::error!(interface = %s.interface, "DHCPv4 server task failed: {e}");
            }
            if let Some(n) = s.neighbour {
                if let Err(e) = n.remove().await {
                    tracing::warn!(interface = %s.interface, "removing the guest's neighbour entry: {e}");
                }
            }
            let st = s.stats.snapshot(&s.interface);
            let dropped: Vec<String> = st
                .dropped
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            tracing::info!(
                interface = %st.interface,
                served = st.served(),
                offers = st.offers,
                acks = st.acks,
                inform_acks = st.inform_acks,
                naks = st.naks,
                releases = st.releases,
                declines = st.declines,
                dropped = st.dropped_total(),
                dropped_by_reason = %dropped.join(","),
                send_errors = st.send_errors,
                socket_restarts = st.socket_restarts,
                "DHCPv4 server stopped"
            );
        }
    }
}

/// A bound socket and the interface index it was bound to.
struct Bound {
    sock: UdpSocket,
    ifindex: u32,
}

fn open_socket(interface: &str) -> Result<Bound, DhcpError> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let err = |op: &'static str| {
        let interface = interface.to_string();
        move |e: nix::errno::Errno| DhcpError::Socket {
            interface,
            op,
            source: std::io::Error::from(e),
        }
    };
    let ifindex = nix::net::if_::if_nametoindex(interface)
        .map_err(err("looking up the interface (does it exist?)"))?;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err("creating the UDP socket"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err("setting SO_REUSEADDR"))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(err("setting SO_BROADCAST"))?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(interface))
        .map_err(err("setting SO_BINDTODEVICE"))?;
    // Room for bursts; the kernel caps it at net.core.rmem_max. Not fatal.
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::new(0, 0, 0, 0, v4::SERVER_PORT),
    )
    .map_err(err("binding 0.0.0.0:67"))?;
    let sock =
        UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(|e| DhcpError::Socket {
            interface: interface.to_string(),
            op: "registering the socket with tokio",
            source: e,
        })?;
    Ok(Bound { sock, ifindex })
}

struct Task {
    interface: String,
    prepared: Prepared,
    bound: Bound,
    stats: Arc<Stats>,
    unicast_yiaddr: bool,
    stop: watch::Receiver<bool>,
}

/// Allows one log line per interval, counting what it suppressed.
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    const EVERY: Duration = Duration::from_secs(1);
    fn new() -> Self {
        RateLimit {
            last: None,
            suppressed: 0,
        }
    }
    /// `Some(suppressed since last time)` when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Self::EVERY => {
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

/// Is this error a sign that the socket (or its interface) is gone?
fn socket_is_dead(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::EBADF) | Some(libc::ENOTSOCK)
    )
}

async fn serve(mut t: Task) {
    let mut buf = vec![0u8; 65536];
    let mut notice = RateLimit::new();
    let mut errors = RateLimit::new();
    let mut first_ack = true;
    let mut check = tokio::time::interval(Duration::from_secs(2));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let broken: Option<String> = tokio::select! {
            _ = t.stop.changed() => return,
            _ = check.tick() => {
                match nix::net::if_::if_nametoindex(t.interface.as_str()) {
                    Ok(i) if i == t.bound.ifindex => None,
                    Ok(i) => Some(format!("the interface was re-created (index {} → {i})", t.bound.ifindex)),
                    Err(e) => Some(format!("the interface is gone ({e})")),
                }
            }
            r = t.bound.sock.recv_from(&mut buf) => match r {
                Ok((n, _from)) => {
                    handle_packet(&mut t, &buf[..n], &mut notice, &mut errors, &mut first_ack).await
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
                Err(e) => Some(format!("receiving failed: {e}")),
            },
        };
        if let Some(why) = broken {
            if !reopen(&mut t, &why).await {
                return;
            }
        }
    }
}

/// Answers one packet. Returns `Some(reason)` when the socket must be re-created.
async fn handle_packet(
    t: &mut Task,
    packet: &[u8],
    notice: &mut RateLimit,
    errors: &mut RateLimit,
    first_ack: &mut bool,
) -> Option<String> {
    let s = &t.stats;
    match t.prepared.handle(packet) {
        Outcome::Drop(reason) => {
            inc(&s.dropped[reason.index()]);
            tracing::debug!(interface = %t.interface, reason = reason.as_str(), len = packet.len(), "DHCPv4 packet dropped");
            None
        }
        Outcome::NoReply(ev) => {
            match ev {
                Event::Release { ciaddr } => {
                    inc(&s.releases);
                    if let Some(n) = notice.allow() {
                        tracing::info!(interface = %t.interface, %ciaddr, suppressed = n, "DHCPRELEASE from the guest");
                    }
                }
                Event::Decline { addr } => {
                    inc(&s.declines);
                    if let Some(n) = notice.allow() {
                        tracing::warn!(interface = %t.interface, addr = ?addr, suppressed = n,
                            "DHCPDECLINE: the guest says its address is already in use on the link");
                    }
                }
            }
            None
        }
        Outcome::Reply(reply) => {
            let counter = match reply.kind {
                ReplyKind::Offer => &s.offers,
                ReplyKind::Ack => &s.acks,
                ReplyKind::InformAck => &s.inform_acks,
                ReplyKind::Nak(_) => &s.naks,
            };
            let dest = match reply.dest {
                Destination::Yiaddr { .. } if !t.unicast_yiaddr => Destination::Broadcast,
                d => d,
            };
            if let ReplyKind::Nak(why) = reply.kind {
                if let Some(n) = notice.allow() {
                    tracing::info!(interface = %t.interface, reason = ?why, suppressed = n, "DHCPNAK sent");
                }
            }
            if reply.kind == ReplyKind::Ack && *first_ack {
                *first_ack = false;
                tracing::info!(interface = %t.interface, "DHCPACK: the guest has its address");
            }
            if !reply.trimmed.is_empty() {
                if let Some(n) = notice.allow() {
                    tracing::warn!(interface = %t.interface, options_left_out = ?reply.trimmed, suppressed = n,
                        "reply trimmed to the client's maximum message size / the MTU");
                }
            }
            match t.bound.sock.send_to(&reply.bytes, dest.socket_addr()).await {
                Ok(_) => {
                    inc(counter);
                    tracing::debug!(interface = %t.interface, kind = reply.kind.as_str(), xid = reply.xid, dest = ?dest, "DHCPv4 reply sent");
                    None
                }
                Err(e) => {
                    inc(&s.send_errors);
                    if let Some(n) = errors.allow() {
                        tracing::warn!(interface = %t.interface, kind = reply.kind.as_str(), dest = %dest.socket_addr(), suppressed = n, "sending the DHCPv4 reply failed: {e}");
                    }
                    socket_is_dead(&e).then(|| format!("sending failed: {e}"))
                }
            }
        }
    }
}

/// Re-creates the socket with backoff until it works or the server is stopped.
/// Returns false when stopped.
async fn reopen(t: &mut Task, why: &str) -> bool {
    let mut delay = Duration::from_millis(100);
    tracing::error!(interface = %t.interface, "DHCPv4 socket broken: {why}; re-creating it");
    loop {
        tokio::select! {
            _ = t.stop.changed() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        match open_socket(&t.interface) {
            Ok(b) => {
                inc(&t.stats.socket_restarts);
                if t.unicast_yiaddr && b.ifindex != t.bound.ifindex {
                    // The interface is new: its neighbour table is empty.
                    t.unicast_yiaddr = false;
                    tracing::warn!(interface = %t.interface,
                        "interface re-created: replies to a client without an address are now broadcast");
                }
                t.bound = b;
                tracing::info!(interface = %t.interface, "DHCPv4 socket re-created");
                return true;
            }
            Err(e) => {
                tracing::error!(interface = %t.interface, retry_in_ms = delay.as_millis() as u64, "{e}");
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A permanent neighbour entry `ip → mac` on an interface, so that replies can be unicast to
/// an address the guest does not hold yet.
struct Neighbour {
    handle: rtnetlink::Handle,
    conn: JoinHandle<()>,
    ifindex: u32,
    ip: Ipv4Addr,
}

impl Neighbour {
    async fn add(ifindex: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<Self, String> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("opening netlink: {e}"))?;
        let conn = tokio::spawn(conn);
        let res = handle
            .neighbours()
            .add(ifindex, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(netlink_packet_route::neighbour::NeighbourState::Permanent)
            .replace()
            .execute()
            .await;
        match res {
            Ok(()) => Ok(Neighbour {
                handle,
                conn,
                ifindex,
                ip,
            }),
            Err(e) => {
                conn.abort();
                Err(e.to_string())
            }
        }
    }

    async fn remove(self) -> Result<(), String> {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = netlink_packet_route::AddressFamily::Inet;
        msg.header.ifindex = self.ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                self.ip,
            )));
        let res = self.handle.neighbours().del(msg).execute().await;
        self.conn.abort();
        match res {
            Ok(()) => Ok(()),
            // Gone with its interface: nothing to undo.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| c.get().abs()) == Some(libc::ENOENT)
                    || e.code.map(|c| c.get().abs()) == Some(libc::ENODEV) =>
            {
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}
