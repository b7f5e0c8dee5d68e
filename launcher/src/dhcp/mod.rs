//! The embedded DHCP servers: pure request → reply functions (`v4`), and the socket tasks
//! (`server`). The network module builds a [`V4Config`] per interface from its plan; the
//! server answers only `client_mac`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cli::{DhcpServeArgs, GlobalArgs};
use crate::error::{Classify, ExitKind};

pub mod server;

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
    #[error("{0}")]
    Other(String),
}

impl Classify for DhcpError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Internal
    }
}

/// `launcher dhcp serve --config FILE` (hidden): serve DHCPv4 alone, for tests and benchmarks.
pub fn cmd_serve(_g: &GlobalArgs, _a: &DhcpServeArgs) -> anyhow::Result<u8> {
    Err(crate::error::not_implemented("dhcp serve"))
}
