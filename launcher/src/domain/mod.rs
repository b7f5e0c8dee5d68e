//! The libvirt domain: plan (pure) → render (templates) → check; disk preparation.
//!
//! The run helper's API:
//! - [`PodFacts::probe`] reads what only the pod knows (accelerator, cpuset, block volumes,
//!   O_DIRECT support); [`choose_accel`] is the pure accelerator decision it uses.
//! - [`plan::plan`] turns (validated VMI, [`NicInput`]s, [`PodFacts`]) into a [`plan::DomainPlan`].
//! - [`render::render`] renders the plan through `domxml-templates/` and checks the result
//!   ([`check::check`]).
//! - [`disks::prepare`] performs the plan's [`plan::PrepStep`]s (overlays, empty disks, ISOs).
//!
//! `launcher render` ([`cmd_render`]) does the same without a pod, with deterministic stand-ins
//! ([`PodFacts::stand_in`], [`stand_in_nics`]).

pub mod check;
pub mod disks;
pub mod facts;
pub mod plan;
pub mod render;

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cli::{GlobalArgs, RenderArgs};
use crate::error::{Classify, ExitKind};

pub use facts::{choose_accel, kvm_opens, stand_in_nics, Hypervisor, PodFacts};

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

/// Everything that can go wrong in planning, rendering, checking and preparing disks.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A field we cannot honour or whose value is wrong (exit 2). `path` is the JSON path.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// A field this launcher cannot honour on this machine (exit 2).
    #[error("{path}: {message} (this launcher refuses it rather than ignoring it)")]
    Unsupported { path: String, message: String },
    /// The network result does not match the spec: a bug in the caller (exit 1).
    #[error("interface {name:?}: {message}")]
    NicMismatch { name: String, message: String },
    /// No usable /dev/kvm (exit 3).
    #[error("{0}")]
    NoKvm(String),
    /// A pod fact the plan needs is missing or too small, e.g. the cpuset (exit 3).
    #[error("{what}: {message}")]
    PodFact { what: String, message: String },
    /// A template failed to load or render (exit 2 for an operator override, else 1).
    #[error("rendering template {template:?}: {message}")]
    Template {
        template: String,
        message: String,
        overridden: bool,
    },
    /// The rendered XML is not well-formed (exit 2 when an override is to blame, else 1).
    #[error("checking the XML rendered by template {template:?}: {message}")]
    Check {
        template: String,
        message: String,
        overridden: bool,
    },
    /// A file or device the domain needs is missing (exit 3).
    #[error("{what} {path:?} is missing: {hint}")]
    Missing {
        what: String,
        path: PathBuf,
        hint: String,
    },
    /// A file operation failed (exit 3).
    #[error("{op} {path:?}: {source}")]
    Io {
        op: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A tool (qemu-img, xorriso) failed (exit 4) or is missing (exit 3).
    #[error("{tool} failed for {path:?}: {message}")]
    Tool {
        tool: String,
        path: PathBuf,
        message: String,
        missing: bool,
    },
}

impl DomainError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
    pub(crate) fn unsupported(path: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Unsupported {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl Classify for DomainError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            DomainError::Invalid { .. } | DomainError::Unsupported { .. } => ExitKind::InvalidSpec,
            DomainError::NicMismatch { .. } => ExitKind::Internal,
            DomainError::NoKvm(_) | DomainError::PodFact { .. } => ExitKind::Precondition,
            DomainError::Template { overridden, .. } | DomainError::Check { overridden, .. } => {
                if *overridden {
                    ExitKind::InvalidSpec
                } else {
                    ExitKind::Internal
                }
            }
            DomainError::Missing { .. } | DomainError::Io { .. } => ExitKind::Precondition,
            DomainError::Tool { missing, .. } => {
                if *missing {
                    ExitKind::Precondition
                } else {
                    ExitKind::Hypervisor
                }
            }
        }
    }
}

/// `launcher render`: the domain XML for the VMI, without a pod (see [`PodFacts::stand_in`]).
pub fn cmd_render(g: &GlobalArgs, _a: &RenderArgs) -> anyhow::Result<u8> {
    let vmi = crate::spec::load_for_run(g)?;
    let xml = render_dry_run(g, &vmi)?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(xml.as_bytes())?;
    out.flush()?;
    Ok(0)
}

/// The dry run behind `launcher render`, as a library call (tests use it).
pub fn render_dry_run(g: &GlobalArgs, vmi: &crate::spec::Vmi) -> Result<String, DomainError> {
    let hv = match g.accel {
        // Only `auto` looks at /dev/kvm in a dry run: an explicit choice is rendered as asked.
        crate::cli::Accel::Auto => choose_accel(g.accel, kvm_opens(), g.allow_emulation)?,
        other => choose_accel(other, true, g.allow_emulation)?,
    };
    let facts = PodFacts::stand_in(g, vmi, hv)?;
    let mut nics = stand_in_nics(vmi)?;
    // SR-IOV: the VFs' real PCI addresses when a network status is given (else stand-ins).
    let vfs = crate::net::discover::sriov_pci_addresses(vmi, g.network_status.as_deref()).map_err(
        |e| DomainError::PodFact {
            what: "the Multus network status".into(),
            message: e.to_string(),
        },
    )?;
    for nic in &mut nics {
        if let (NicAttach::Hostdev { pci_address }, Some(vfs)) = (&mut nic.attach, &vfs) {
            if let Some(real) = vfs.get(&nic.name) {
                *pci_address = real.clone();
            }
        }
    }
    let plan = plan::plan(vmi, &nics, &facts)?;
    for note in &plan.notes {
        tracing::info!(note = %note, "domain plan");
    }
    render::render(&plan, g.template_dir.as_deref())
}
