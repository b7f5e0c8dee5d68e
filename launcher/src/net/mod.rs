//! The pod network: discover → plan (pure) → apply → teardown, one binding module each.
//!
//! The public API other modules use:
//! - [`setup`] (discover, plan, record, apply; returns a [`NetResult`]),
//! - [`teardown`] (restore the pod from the recorded state),
//! - [`show`] (discover and plan; changes nothing),
//! - [`NetResult`] / [`IfaceResult`]: per VMI interface, the tap, guest MAC, MTU, queues,
//!   guest IPs and the [`crate::dhcp::V4Config`] of its DHCP server, as plain data.
//!
//! See `docs/net.md` for the exact plumbing and the guarantees.

pub mod apply;
pub mod binding;
pub mod discover;
pub mod nat;
pub mod network_status;
pub mod plan;
pub mod state;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::cli::{GlobalArgs, NetworkSetupArgs};
use crate::error::{Classify, ExitKind};
use crate::spec::Vmi;

pub use plan::{IfaceResult, NetPlan, NetResult, PlanOptions, Step};

/// The file, inside `--run-dir`, that records the original pod state and the plan.
pub const STATE_FILE: &str = "network-state.json";

/// Test-only: `LAUNCHER_FAULT_AFTER_STEP=N` makes `network setup` SIGKILL itself right after
/// apply step N (0 = right after the state file is written). Never set it in production.
pub const FAULT_ENV: &str = "LAUNCHER_FAULT_AFTER_STEP";

/// Test hook: read this file instead of `/etc/resolv.conf`.
pub const RESOLV_CONF_ENV: &str = "LAUNCHER_RESOLV_CONF";

/// A MAC address, serialised as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff` (KubeVirt accepts both).
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a MAC address (want aa:bb:cc:dd:ee:ff)"
            ));
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!(
                    "{s:?} is not a MAC address (want aa:bb:cc:dd:ee:ff)"
                ));
            }
            m[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (want aa:bb:cc:dd:ee:ff)"))?;
        }
        Ok(Mac(m))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Errors of the network module. Each names the object and the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("VMI interface {vmi_interface:?} (network {network:?}) needs the pod interface {pod_interface:?}, which does not exist in this pod (found: {found}); check the pod's network attachments")]
    MissingPodInterface {
        vmi_interface: String,
        network: String,
        pod_interface: String,
        found: String,
    },
    #[error(
        "{operation}: the tool {tool:?} is missing ({detail}); install it in the launcher image"
    )]
    MissingTool {
        tool: String,
        operation: String,
        detail: String,
    },
    #[error("{path}: {message}")]
    InvalidSpec { path: String, message: String },
    #[error("{path}: the {binding} binding is not supported by this launcher yet")]
    UnsupportedBinding { path: String, binding: String },
    #[error("{operation} {object}: {detail}")]
    Netlink {
        operation: String,
        object: String,
        errno: Option<Errno>,
        detail: String,
    },
    #[error("{operation} {object}: {errno}")]
    Sys {
        operation: String,
        object: String,
        errno: Errno,
    },
    #[error("{operation} {object}: {source}")]
    Io {
        operation: String,
        object: String,
        source: std::io::Error,
    },
    #[error("{operation}: nft failed: {detail}")]
    Nft { operation: String, detail: String },
    #[error("{object}: {message}")]
    Conflict { object: String, message: String },
    #[error("the pod network is already plumbed ({evidence}) but {state} does not exist, so the original pod state is unknown; refusing to guess. Recreate the pod (or restore the state file)")]
    PlumbedWithoutState { evidence: String, state: PathBuf },
    #[error("{state} was recorded for a different network plan (the VMI or the options changed since setup); run `launcher network teardown` first")]
    StateMismatch { state: PathBuf },
    #[error("tap owner {user:?} (--tap-owner) is not a known user: {detail}")]
    UnknownUser { user: String, detail: String },
    #[error("{source}; rolled back{}", rollback_text(.rollback))]
    ApplyFailed {
        source: Box<NetError>,
        rollback: Vec<NetError>,
    },
    #[error("{} teardown error(s): {}", .0.len(), join_errors(.0))]
    Teardown(Vec<NetError>),
    /// A sysctl that has no netlink equivalent could not be written because `/proc/sys` is
    /// mounted read-only (what container runtimes do for non-privileged pods).
    #[error("setting sysctl {name}={value}: /proc/sys is read-only in this pod (EROFS); {hint}")]
    ReadOnlySysctl {
        name: String,
        value: String,
        hint: String,
    },
    /// The Multus network-status annotation is malformed, or disagrees with the VMI or the
    /// pod (see `network_status.rs`).
    #[error(transparent)]
    NetworkStatus(Box<network_status::StatusError>),
    #[error("{0}")]
    Other(String),
}

fn rollback_text(errors: &[NetError]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(
            " with {} error(s), the pod may be half-plumbed: {}",
            errors.len(),
            join_errors(errors)
        )
    }
}

fn join_errors(errors: &[NetError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl NetError {
    /// `operation object: EXXX: text` from an rtnetlink error.
    pub fn netlink(
        operation: impl Into<String>,
        object: impl Into<String>,
        e: rtnetlink::Error,
    ) -> Self {
        let errno = errno_of(&e);
        let detail = match errno {
            Some(n) => n.to_string(),
            None => e.to_string(),
        };
        NetError::Netlink {
            operation: operation.into(),
            object: object.into(),
            errno,
            detail,
        }
    }

    pub fn errno(&self) -> Option<Errno> {
        match self {
            NetError::Netlink { errno, .. } => *errno,
            NetError::Sys { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The errno inside an rtnetlink error, if it is a kernel NACK.
pub fn errno_of(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

impl Classify for NetError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            NetError::MissingPodInterface { .. }
            | NetError::MissingTool { .. }
            | NetError::Nft { .. }
            | NetError::PlumbedWithoutState { .. }
            | NetError::UnknownUser { .. }
            | NetError::ReadOnlySysctl { .. }
            | NetError::NetworkStatus(_) => ExitKind::Precondition,
            NetError::InvalidSpec { .. }
            | NetError::UnsupportedBinding { .. }
            | NetError::StateMismatch { .. } => ExitKind::InvalidSpec,
            NetError::ApplyFailed { source, .. } => source.exit_kind(),
            _ => ExitKind::Internal,
        }
    }
}

/// Where and how to plumb (everything but the VMI).
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// `--run-dir`: the state file lives here.
    pub run_dir: PathBuf,
    /// `--tap-owner`: `root` or a user name.
    pub tap_owner: String,
    /// The pod's resolv.conf (`/etc/resolv.conf`; tests: `LAUNCHER_RESOLV_CONF`).
    pub resolv_conf: PathBuf,
    /// The pod's hostname; `None` reads `gethostname(2)`.
    pub hostname: Option<String>,
    /// `--network-status FILE` (Multus network-status JSON or downward-API annotations file).
    pub network_status: Option<PathBuf>,
}

impl SetupOptions {
    pub fn from_global(g: &GlobalArgs) -> Self {
        SetupOptions {
            run_dir: g.run_dir.clone(),
            tap_owner: g.tap_owner.clone(),
            resolv_conf: std::env::var_os(RESOLV_CONF_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf")),
            hostname: None,
            network_status: g.network_status.clone(),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.run_dir.join(STATE_FILE)
    }

    fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            tap_owner: self.tap_owner.clone(),
        }
    }
}

/// One rtnetlink connection for the whole operation, driven on the current tokio runtime.
pub fn connect() -> Result<rtnetlink::Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetError::Io {
        operation: "opening".into(),
        object: "the rtnetlink socket".into(),
        source: e,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Discovers the pod and plans (changes nothing). Uses the recorded original state when the
/// pod is already plumbed by us, so `show` prints the same plan before and after setup.
pub async fn show(opts: &SetupOptions, vmi: &Vmi) -> Result<NetPlan, NetError> {
    if let Some(st) = state::load(&opts.state_path())? {
        return plan::plan(&st.pod, vmi, &opts.plan_options());
    }
    let handle = connect()?;
    let mut pod = discover::discover(&handle, &discover_sources(opts)).await?;
    pod.network_status =
        network_status::load(opts.network_status.as_deref(), &vmi.metadata.annotations)?;
    plan::plan(&pod, vmi, &opts.plan_options())
}

fn discover_sources(opts: &SetupOptions) -> discover::DiscoverSources<'_> {
    discover::DiscoverSources {
        resolv_conf: &opts.resolv_conf,
        hostname: opts.hostname.clone(),
    }
}

/// Plumbs the pod for the VMI: records the original state first (or reuses the recorded one
/// after a crash), then applies every step. Converges when re-run; rolls back on failure.
pub async fn setup(opts: &SetupOptions, vmi: &Vmi) -> Result<NetResult, NetError> {
    let handle = connect()?;
    let state_path = opts.state_path();
    let recorded = match state::load(&state_path)? {
        Some(st) => {
            let plan = plan::plan(&st.pod, vmi, &opts.plan_options())?;
            if plan != st.plan {
                return Err(NetError::StateMismatch { state: state_path });
            }
            tracing::info!(state = %state_path.display(), "found recorded network state: converging on it");
            st
        }
        None => {
            let t = std::time::Instant::now();
            let mut pod = discover::discover(&handle, &discover_sources(opts)).await?;
            pod.network_status =
                network_status::load(opts.network_status.as_deref(), &vmi.metadata.annotations)?;
            tracing::debug!(
                elapsed_us = t.elapsed().as_micros() as u64,
                "discovered the pod"
            );
            let plan = match plan::plan(&pod, vmi, &opts.plan_options()) {
                Ok(p) => p,
                Err(e) => {
                    // A crash between renaming eth0 and creating its stand-in leaves no eth0:
                    // report the traces rather than a misleading "no eth0".
                    state::refuse_if_plumbed(&pod, None, &state_path)?;
                    return Err(e);
                }
            };
            state::refuse_if_plumbed(&pod, Some(&plan), &state_path)?;
            discover::check_vfs_present(&plan, Path::new(discover::SYSFS_PCI_DEVICES))?;
            let st = state::RecordedState::new(pod, plan);
            state::save(&opts.run_dir, &st)?;
            tracing::debug!(
                elapsed_us = t.elapsed().as_micros() as u64,
                "planned and recorded"
            );
            st
        }
    };
    let fault = std::env::var(FAULT_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if let Err(e) = apply::apply(&handle, &recorded, fault).await {
        tracing::error!(error = %e, "network setup failed; rolling back");
        let rollback = apply::undo(&handle, &recorded).await;
        if rollback.is_empty() {
            state::remove(&state_path)?;
        }
        return Err(NetError::ApplyFailed {
            source: Box::new(e),
            rollback,
        });
    }
    Ok(recorded.plan.result())
}

/// Restores the pod from `<run_dir>/network-state.json`, collecting every error. Without a
/// state file there is nothing to undo (Ok). The state file is removed only when everything
/// was restored, so a failed teardown can be retried.
pub async fn teardown(run_dir: &Path) -> Result<(), NetError> {
    let path = run_dir.join(STATE_FILE);
    let Some(st) = state::load(&path)? else {
        tracing::info!(state = %path.display(), "no recorded network state: nothing to tear down");
        return Ok(());
    };
    let handle = connect()?;
    let errors = apply::undo(&handle, &st).await;
    if !errors.is_empty() {
        return Err(NetError::Teardown(errors));
    }
    state::remove(&path)?;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `launcher network setup [--serve]`.
pub fn cmd_setup(g: &GlobalArgs, a: &NetworkSetupArgs) -> anyhow::Result<u8> {
    let vmi = crate::spec::load_for_run(g)?;
    let opts = SetupOptions::from_global(g);
    runtime()?.block_on(async {
        let started = std::time::Instant::now();
        let result = setup(&opts, &vmi).await?;
        tracing::info!(
            elapsed_us = started.elapsed().as_micros() as u64,
            interfaces = result.interfaces.len(),
            "network setup done"
        );
        println!("{}", serde_json::to_string_pretty(&result)?);
        if !a.serve {
            return Ok(0);
        }
        serve_until_signal(&opts, result).await
    })
}

async fn serve_until_signal(opts: &SetupOptions, result: NetResult) -> anyhow::Result<u8> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let servers = match crate::dhcp::server::Dhcp4Servers::start(result.dhcp_configs()).await {
        Ok(s) => s,
        Err(e) => {
            let td = teardown(&opts.run_dir).await;
            if let Err(t) = td {
                tracing::error!(error = %t, "teardown after a DHCP start failure");
            }
            return Err(anyhow::Error::new(e).context("starting the DHCP servers"));
        }
    };
    let servers6 = match crate::dhcp::server6::Dhcp6Servers::start(result.dhcp6_configs()).await {
        Ok(s) => s,
        Err(e) => {
            servers.shutdown().await;
            if let Err(t) = teardown(&opts.run_dir).await {
                tracing::error!(error = %t, "teardown after a DHCPv6 start failure");
            }
            return Err(anyhow::Error::new(e).context("starting the DHCPv6 servers"));
        }
    };
    tracing::info!("serving DHCP until SIGTERM or SIGINT");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    servers6.shutdown().await;
    servers.shutdown().await;
    teardown(&opts.run_dir).await?;
    Ok(0)
}

/// `launcher network teardown`.
pub fn cmd_teardown(g: &GlobalArgs) -> anyhow::Result<u8> {
    runtime()?.block_on(teardown(&g.run_dir))?;
    Ok(0)
}

/// `launcher network show`.
pub fn cmd_show(g: &GlobalArgs) -> anyhow::Result<u8> {
    let vmi = crate::spec::load_for_run(g)?;
    let opts = SetupOptions::from_global(g);
    let plan = runtime()?.block_on(show(&opts, &vmi))?;
    println!("{}", serde_json::to_string_pretty(&plan)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_junk() {
        let m: Mac = "02:AB:cd:00:11:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:cd:00:11:ff");
        assert_eq!("02-ab-cd-00-11-ff".parse::<Mac>().unwrap(), m);
        assert!("02:ab:cd:00:11".parse::<Mac>().is_err());
        assert!("02:ab:cd:00:11:fff".parse::<Mac>().is_err());
        assert!("zz:ab:cd:00:11:ff".parse::<Mac>().is_err());
    }

    #[test]
    fn missing_pod_interface_is_exit_3() {
        let e = NetError::MissingPodInterface {
            vmi_interface: "default".into(),
            network: "default".into(),
            pod_interface: "eth0".into(),
            found: "lo".into(),
        };
        assert_eq!(e.exit_kind(), ExitKind::Precondition);
        let wrapped = NetError::ApplyFailed {
            source: Box::new(NetError::MissingTool {
                tool: "nft".into(),
                operation: "x".into(),
                detail: "y".into(),
            }),
            rollback: vec![],
        };
        assert_eq!(wrapped.exit_kind(), ExitKind::Precondition);
    }
}
