//! `<run-dir>/status.json`: what the launcher is doing, rewritten atomically at each phase
//! change, and `launcher status`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const STATUS_FILE: &str = "status.json";

/// The phases of `launcher run`, in order. `Running` is the only one in which `launcher status`
/// exits 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Validating,
    Cleanup,
    /// Discover + plumb (net::setup does both).
    Plumbing,
    DhcpUp,
    PreparingDisks,
    Rendering,
    LibvirtUp,
    Defining,
    Starting,
    Running,
    Stopping,
    TearingDown,
    Stopped,
    Failed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// The VMI interface name.
    pub name: String,
    pub mac: String,
    pub guest_ips: Vec<String>,
    /// The tap (or other host-side device), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    /// `namespace/name` of the VMI.
    pub vmi: String,
    /// The libvirt domain name.
    pub domain: String,
    pub launcher_pid: u32,
    #[serde(default)]
    pub qemu_pid: Option<i32>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceStatus>,
    #[serde(default)]
    pub serial_socket: Option<PathBuf>,
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
    #[serde(default)]
    pub qemu_log: Option<PathBuf>,
    #[serde(default)]
    pub libvirt_uri: Option<String>,
    #[serde(default)]
    pub accel: Option<String>,
    /// Microseconds each finished phase took, in order.
    #[serde(default)]
    pub phase_us: Vec<(Phase, u64)>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The exit code, once decided.
    #[serde(default)]
    pub exit_code: Option<u8>,
    /// Seconds since the epoch.
    pub updated_at: u64,
}

impl Status {
    pub fn new(vmi: String, domain: String) -> Self {
        Status {
            phase: Phase::Validating,
            vmi,
            domain,
            launcher_pid: std::process::id(),
            qemu_pid: None,
            interfaces: Vec::new(),
            serial_socket: None,
            serial_log: None,
            qemu_log: None,
            libvirt_uri: None,
            accel: None,
            phase_us: Vec::new(),
            last_error: None,
            exit_code: None,
            updated_at: 0,
        }
    }
}

/// Writes status.json at each change, and logs each phase with its duration.
pub struct StatusWriter {
    path: PathBuf,
    pub status: Status,
    phase_started: Instant,
}

impl StatusWriter {
    pub fn new(run_dir: &Path, status: Status) -> Self {
        let w = StatusWriter {
            path: run_dir.join(STATUS_FILE),
            status,
            phase_started: Instant::now(),
        };
        w.write();
        w
    }

    /// Ends the current phase (logging its duration) and starts `next`.
    pub fn phase(&mut self, next: Phase) {
        let prev = self.status.phase;
        let us = self.phase_started.elapsed().as_micros() as u64;
        tracing::info!(
            phase = ?prev,
            duration_ms = us / 1000,
            duration_us = us,
            next = ?next,
            "phase done"
        );
        self.status.phase_us.push((prev, us));
        self.status.phase = next;
        self.phase_started = Instant::now();
        self.write();
    }

    /// Rewrites the file (after changing `status` directly).
    pub fn write(&self) {
        let mut s = self.status.clone();
        s.updated_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Err(e) = write_atomic(&self.path, &s) {
            tracing::warn!(path = %self.path.display(), error = %e, "writing status.json");
        }
    }
}

/// Write to a temporary file in the same directory, then rename over the old one.
pub fn write_atomic(path: &Path, status: &Status) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer_pretty(&mut f, status)?;
        f.write_all(b"\n")?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

pub fn read(run_dir: &Path) -> std::io::Result<Status> {
    let text = std::fs::read_to_string(run_dir.join(STATUS_FILE))?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// Whether a status read from disk means "the domain is running now": phase `running`, and the
/// launcher and qemu that wrote it are still alive (a SIGKILLed launcher leaves `running`).
pub fn is_running(s: &Status, alive: impl Fn(i32) -> bool) -> bool {
    s.phase == Phase::Running
        && alive(s.launcher_pid as i32)
        && s.qemu_pid.map(&alive).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = StatusWriter::new(dir.path(), Status::new("ns/vm".into(), "ns_vm".into()));
        w.phase(Phase::Plumbing);
        w.status.qemu_pid = Some(42);
        w.phase(Phase::Running);
        let s = read(dir.path()).unwrap();
        assert_eq!(s.phase, Phase::Running);
        assert_eq!(s.qemu_pid, Some(42));
        assert_eq!(s.phase_us.len(), 2);
        assert_eq!(s.phase_us[0].0, Phase::Validating);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATUS_FILE)]);
    }

    #[test]
    fn running_needs_live_launcher_and_qemu() {
        let mut s = Status::new("a/b".into(), "a_b".into());
        s.phase = Phase::Running;
        s.qemu_pid = Some(7);
        assert!(is_running(&s, |_| true));
        assert!(!is_running(&s, |p| p != 7));
        s.qemu_pid = None;
        assert!(!is_running(&s, |_| true));
        s.qemu_pid = Some(7);
        s.phase = Phase::Stopping;
        assert!(!is_running(&s, |_| true));
    }
}
