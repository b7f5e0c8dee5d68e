//! The embedded DHCP servers: pure request → reply functions (`v4`), and the socket tasks
//! (`server`). The network module builds a [`V4Config`] per interface from its plan; the
//! server answers only `client_mac`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cli::{DhcpServeArgs, GlobalArgs};
use crate::error::{Classify, ExitKind};

pub mod options;
pub mod ra;
pub mod server;
pub mod server6;
pub mod v4;
pub mod v6;

pub use server6::V6Setup;

/// The lease time the network module should put into [`V4Config::lease_secs`]: infinite
/// (0xffffffff, RFC 2131 §3.3). The address is the pod's own and cannot change while the pod
/// lives, and the server dies with the pod, so a lease that expires could only ever take the
/// address away from a guest whose launcher is briefly not serving (for example while it
/// restarts). An infinite lease also means no renewal traffic. Every client we test (busybox
/// udhcpc, ISC dhclient) accepts it.
pub const DEFAULT_LEASE_SECS: u32 = u32::MAX;

/// Everything one DHCPv4 server needs, as plain data (built by `net`, served by `dhcp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V4Config {
    /// The interface the server binds to (`SO_BINDTODEVICE`), e.g. `k6t-eth0`.
    pub interface: String,
    /// The server's own address on that interface (option 54, and the reply source).
    pub server_ip: Ipv4Addr,
    /// The only MAC that gets answers: the VM's.
    pub client_mac: [u8; 6],
    /// The address handed to the guest.
    pub client_ip: Ipv4Addr,
    /// Prefix length for option 1 (32 is valid: Calico).
    pub prefix_len: u8,
    /// Option 3. `None` when there is no default route.
    pub router: Option<Ipv4Addr>,
    /// Option 121 (and 249): (destination, prefix, gateway); the default route is included when
    /// there is one, and encoded last. A gateway of 0.0.0.0 means on-link.
    pub routes: Vec<V4Route>,
    /// Option 6 (IPv4 nameservers only).
    pub dns: Vec<Ipv4Addr>,
    /// Option 119: search domains in order.
    pub search: Vec<String>,
    /// Option 15 (KubeVirt uses the longest search domain).
    pub domain: Option<String>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 26. Replies are never larger than this.
    pub mtu: u16,
    /// Option 51, seconds.
    pub lease_secs: u32,
    /// Option 42.
    pub ntp: Vec<Ipv4Addr>,
    /// Option 66.
    pub tftp_server: Option<String>,
    /// Option 67.
    pub boot_file: Option<String>,
    /// Private options 224–254: (code, raw value bytes).
    pub private: Vec<(u8, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V4Route {
    pub dest: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The configuration built by the network module cannot be served (a bug upstream, or a
    /// hand-written `dhcp serve` config).
    #[error("DHCPv4 server for {interface:?}: invalid configuration: {reason}")]
    InvalidConfig { interface: String, reason: String },
    /// The server's socket could not be set up, e.g. the interface does not exist.
    #[error("DHCPv4 server for {interface:?}: {op}")]
    Socket {
        interface: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The DHCPv6 or router-advertisement socket could not be set up.
    #[error("DHCPv6/RA server for {interface:?}: {op}: {source}")]
    Socket6 {
        interface: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl Classify for DhcpError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            DhcpError::Socket { .. } | DhcpError::Socket6 { .. } => ExitKind::Precondition,
            DhcpError::InvalidConfig { .. } | DhcpError::Other(_) => ExitKind::Internal,
        }
    }
}

/// `launcher dhcp serve --config FILE` (hidden): serve DHCPv4 alone, for tests and benchmarks.
/// Serves until SIGTERM or SIGINT, logs the counters, exits 0.
pub fn cmd_serve(_g: &GlobalArgs, a: &DhcpServeArgs) -> anyhow::Result<u8> {
    use anyhow::Context;
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading DHCP config {}", a.config.display()))?;
    let configs: Vec<V4Config> =
        serde_json::from_str(&text).map_err(|e| crate::error::Classified {
            kind: ExitKind::InvalidSpec,
            message: format!(
                "parsing DHCP config {} (a JSON list of V4Config): {e}",
                a.config.display()
            ),
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        // Install the handlers before binding, so a signal right after "ready" is not lost.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("installing the SIGINT handler")?;
        let servers = server::Dhcp4Servers::start(configs).await?;
        tracing::info!(servers = servers.len(), "DHCPv4 ready");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        servers.shutdown().await;
        anyhow::Ok(0)
    })
}
