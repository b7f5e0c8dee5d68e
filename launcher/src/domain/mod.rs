//! The libvirt domain: plan (pure) → render (templates) → check; disk preparation.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cli::{GlobalArgs, RenderArgs};
use crate::error::{Classify, ExitKind};

/// What the network set up for one VMI interface, as plain data: the domain plan's only input
/// from the network side (the supervisor maps the network result into this; `render` makes
/// deterministic stand-ins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInput {
    /// The VMI interface name (`spec.domain.devices.interfaces[].name`).
    pub name: String,
    pub attach: NicAttach,
    /// The guest MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The MTU the guest should use (from the pod interface), if known.
    pub mtu: Option<u32>,
    /// virtio queues (multiqueue), if more than one.
    pub queues: Option<u32>,
    /// The guest's addresses, for status and logs only.
    pub guest_ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum NicAttach {
    /// `<interface type='ethernet'><target dev='tap0' managed='no'/>`: bridge, masquerade,
    /// tc-redirect, and macvtap (whose device is a macvtap link).
    Ethernet { device: String },
    /// `<interface type='user'><backend type='passt'/>` with port forwards.
    Passt { ports: Vec<PasstPort> },
    /// `<hostdev mode='subsystem' type='pci' managed='no'>` with the VF's PCI address.
    Hostdev { pci_address: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasstPort {
    /// `tcp` or `udp`.
    pub protocol: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Other(String),
}

impl Classify for DomainError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Internal
    }
}

pub fn cmd_render(_g: &GlobalArgs, _a: &RenderArgs) -> anyhow::Result<u8> {
    Err(crate::error::not_implemented("render"))
}
