//! Pod facts: what only the pod knows (the accelerator, the cpuset, which volumes are block
//! devices, which files refuse O_DIRECT), probed at run time or stood in for `launcher render`.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan;
use super::{DomainError, NicAttach, NicInput, PasstPort};
use crate::cli::{Accel, GlobalArgs};
use crate::spec::{BindingKind, Vmi, VolumeKind};

/// Where Debian's `ovmf` package installs the firmware.
pub const OVMF_DIR: &str = "/usr/share/OVMF";

/// The libvirt domain type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hypervisor {
    /// Hardware virtualisation (`<domain type='kvm'>`).
    Kvm,
    /// Software emulation, TCG (`<domain type='qemu'>`).
    Qemu,
}

impl Hypervisor {
    pub fn as_str(self) -> &'static str {
        match self {
            Hypervisor::Kvm => "kvm",
            Hypervisor::Qemu => "qemu",
        }
    }
}

/// The accelerator decision, pure: `kvm` needs /dev/kvm; `tcg` is always emulation; `auto` is
/// kvm when /dev/kvm opens, else emulation only with `--allow-emulation`, else exit 3.
pub fn choose_accel(
    requested: Accel,
    kvm_opens: bool,
    allow_emulation: bool,
) -> Result<Hypervisor, DomainError> {
    match requested {
        Accel::Tcg => Ok(Hypervisor::Qemu),
        Accel::Kvm if kvm_opens => Ok(Hypervisor::Kvm),
        Accel::Kvm => Err(DomainError::NoKvm(
            "--accel kvm: /dev/kvm cannot be opened; give the pod /dev/kvm (the devices.kubevirt.io/kvm \
             resource) or run with --accel tcg"
                .into(),
        )),
        Accel::Auto if kvm_opens => Ok(Hypervisor::Kvm),
        Accel::Auto if allow_emulation => Ok(Hypervisor::Qemu),
        Accel::Auto => Err(DomainError::NoKvm(
            "--accel auto: /dev/kvm cannot be opened and software emulation is not allowed; give \
             the pod /dev/kvm, or pass --allow-emulation (or --accel tcg) to emulate"
                .into(),
        )),
    }
}

/// Whether /dev/kvm opens read-write (the probe behind `--accel auto`).
pub fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// What the plan needs to know about the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodFacts {
    /// The chosen accelerator.
    pub hypervisor: Hypervisor,
    /// `--run-dir`: private state (overlays, ISOs, NVRAM, sockets).
    pub run_dir: PathBuf,
    /// `--container-disk-dir`: container disks and kernel-boot artifacts.
    pub container_disk_dir: PathBuf,
    /// Where the OVMF firmware lives (Debian: /usr/share/OVMF).
    pub ovmf_dir: PathBuf,
    /// The CPUs the pod may use (its cgroup cpuset), ascending.
    pub cpuset: Vec<u32>,
    /// PVC / DataVolume volumes that the pod has as block devices (`/dev/<name>`).
    pub block_volumes: BTreeSet<String>,
    /// Volumes whose file (or directory, for files yet to be created) refuses O_DIRECT: their
    /// disks get `cache='writethrough'` instead of `none`.
    pub no_direct_io: BTreeSet<String>,
    /// The machine types (and aliases) qemu offers; empty means unknown (not checked).
    pub machine_types: Vec<String>,
}

impl PodFacts {
    /// Deterministic stand-ins for `launcher render` (a dry run without a pod): the cpuset is
    /// `0..vcpus+1` (enough for dedicated CPUs and an isolated emulator thread), no volume is a
    /// block device, and every file supports O_DIRECT.
    pub fn stand_in(
        g: &GlobalArgs,
        vmi: &Vmi,
        hypervisor: Hypervisor,
    ) -> Result<Self, DomainError> {
        let vcpus = plan::vcpu_count(vmi)?;
        Ok(PodFacts {
            hypervisor,
            run_dir: g.run_dir.clone(),
            container_disk_dir: g.container_disk_dir.clone(),
            ovmf_dir: PathBuf::from(OVMF_DIR),
            cpuset: (0..=vcpus).collect(),
            block_volumes: BTreeSet::new(),
            no_direct_io: BTreeSet::new(),
            machine_types: Vec::new(),
        })
    }

    /// Reads the facts from the running pod: opens /dev/kvm (per `--accel`), reads the cgroup
    /// cpuset, looks for block volumes at `/dev/<volume>`, and tries O_DIRECT on every disk's
    /// file (or the nearest existing directory of a file yet to be created).
    pub fn probe(g: &GlobalArgs, vmi: &Vmi) -> Result<Self, DomainError> {
        let hypervisor = choose_accel(g.accel, kvm_opens(), g.allow_emulation)?;
        let cpuset = read_cpuset()?;
        let mut block_volumes = BTreeSet::new();
        let mut no_direct_io = BTreeSet::new();
        for (index, vol) in vmi.spec.volumes.iter().enumerate() {
            let kind = vol.kind();
            if matches!(
                kind,
                Some(VolumeKind::PersistentVolumeClaim | VolumeKind::DataVolume)
            ) {
                let dev = plan::block_device_path(&vol.name);
                if std::fs::metadata(&dev).is_ok_and(|m| m.file_type().is_block_device()) {
                    block_volumes.insert(vol.name.clone());
                    continue;
                }
            }
            let mut paths: Vec<PathBuf> =
                plan::file_source_path(vol, index, &g.run_dir, &g.container_disk_dir)
                    .into_iter()
                    .collect();
            // qemu opens an overlay's backing file with the same cache mode.
            match kind {
                Some(VolumeKind::ContainerDisk) => {
                    paths.push(plan::container_disk_path(&g.container_disk_dir, index))
                }
                Some(VolumeKind::Ephemeral) => {
                    paths.push(plan::pvc_image_path(&g.run_dir, &vol.name))
                }
                _ => {}
            }
            if !paths.iter().all(|p| supports_direct_io(p)) {
                no_direct_io.insert(vol.name.clone());
            }
        }
        Ok(PodFacts {
            hypervisor,
            run_dir: g.run_dir.clone(),
            container_disk_dir: g.container_disk_dir.clone(),
            ovmf_dir: PathBuf::from(OVMF_DIR),
            cpuset,
            block_volumes,
            no_direct_io,
            machine_types: qemu_machine_types(),
        })
    }
}

/// The machine types `qemu-system-x86_64 -machine help` lists (empty when qemu cannot run:
/// libvirt will then report the problem itself).
pub fn qemu_machine_types() -> Vec<String> {
    let Ok(out) = std::process::Command::new("qemu-system-x86_64")
        .args(["-machine", "help"])
        .output()
    else {
        return Vec::new();
    };
    parse_machine_help(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `-machine help`: the first word of each line, plus `(alias of X)` aliases.
pub fn parse_machine_help(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Supported machines"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The pod's cpuset: cgroup v2 `cpuset.cpus.effective`, else `Cpus_allowed_list`.
fn read_cpuset() -> Result<Vec<u32>, DomainError> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/cpuset.cpus.effective")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                        .map(|v| v.trim().to_string())
                })
        })
        .ok_or_else(|| DomainError::PodFact {
            what: "the pod's cpuset".into(),
            message: "neither /sys/fs/cgroup/cpuset.cpus.effective nor Cpus_allowed_list in \
                      /proc/self/status could be read"
                .into(),
        })?;
    parse_cpu_list(text.trim()).ok_or_else(|| DomainError::PodFact {
        what: "the pod's cpuset".into(),
        message: format!("cannot parse the CPU list {:?}", text.trim()),
    })
}

/// Parses a kernel CPU list (`0-3,6,8-9`).
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().ok()?);
            }
        }
    }
    Some(out.into_iter().collect())
}

/// Whether `path` (an existing file), or the nearest existing directory above it, supports
/// O_DIRECT.
pub fn supports_direct_io(path: &Path) -> bool {
    if path.is_file() {
        return std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .is_ok();
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.is_dir() {
            let probe = d.join(format!(".launcher-odirect-probe-{}", std::process::id()));
            let ok = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(&probe)
                .is_ok();
            let _ = std::fs::remove_file(&probe);
            return ok;
        }
        dir = d.parent();
    }
    false
}

/// Deterministic network stand-ins for `launcher render`: taps `tap0`, `tap1`, … in interface
/// order for tap-based bindings; passt with the spec's ports; SR-IOV with the placeholder VF
/// address `0000:ff:00.<n>`; the spec's MAC, else one derived from the VMI uid (or
/// namespace/name) and the interface name ([`plan::derived_mac`]); multiqueue (taps only) with
/// one queue per vCPU when `networkInterfaceMultiqueue` is set; no MTU; absent interfaces are
/// skipped.
pub fn stand_in_nics(vmi: &Vmi) -> Result<Vec<NicInput>, DomainError> {
    let vcpus = plan::vcpu_count(vmi)?;
    let multiqueue = vmi.spec.domain.devices.network_interface_multiqueue == Some(true);
    let mut out = Vec::new();
    let (mut taps, mut vfs) = (0u32, 0u32);
    for (i, iface) in vmi.spec.domain.devices.interfaces.iter().enumerate() {
        let path = format!("spec.domain.devices.interfaces[{i}]");
        if iface.state.as_deref() == Some("absent") {
            continue;
        }
        let kind = iface.binding_kind().ok_or_else(|| {
            DomainError::invalid(
                &path,
                "needs exactly one binding (bridge, masquerade, passt, …)",
            )
        })?;
        let attach = match kind {
            BindingKind::Bridge
            | BindingKind::Masquerade
            | BindingKind::Macvtap
            | BindingKind::TcRedirect => {
                let device = format!("tap{taps}");
                taps += 1;
                NicAttach::Ethernet { device }
            }
            BindingKind::Passt | BindingKind::Slirp => {
                let mut ports = Vec::new();
                for (j, p) in iface.ports.iter().enumerate() {
                    ports.push(PasstPort {
                        protocol: plan::port_protocol(
                            p.protocol.as_deref(),
                            &format!("{path}.ports[{j}].protocol"),
                        )?,
                        port: plan::port_number(p.port, &format!("{path}.ports[{j}].port"))?,
                    });
                }
                for (j, r) in iface.port_ranges.iter().enumerate() {
                    let proto = plan::port_protocol(
                        r.protocol.as_deref(),
                        &format!("{path}.portRanges[{j}].protocol"),
                    )?;
                    let start =
                        plan::port_number(r.start, &format!("{path}.portRanges[{j}].start"))?;
                    let end = plan::port_number(r.end, &format!("{path}.portRanges[{j}].end"))?;
                    if end < start {
                        return Err(DomainError::invalid(
                            format!("{path}.portRanges[{j}]"),
                            format!("end {end} is below start {start}"),
                        ));
                    }
                    ports.extend((start..=end).map(|port| PasstPort {
                        protocol: proto.clone(),
                        port,
                    }));
                }
                NicAttach::Passt { ports }
            }
            BindingKind::Sriov => {
                let pci_address = format!("0000:ff:00.{}", vfs % 8);
                vfs += 1;
                NicAttach::Hostdev { pci_address }
            }
            BindingKind::Plugin(name) => {
                return Err(DomainError::unsupported(
                    format!("{path}.binding.name"),
                    format!("the network binding plugin {name:?} is not known to this launcher"),
                ))
            }
        };
        let mac = match &iface.mac_address {
            Some(m) => m.clone(),
            None => plan::derived_mac(vmi, &iface.name),
        };
        let queues = match (&attach, multiqueue, vcpus) {
            (NicAttach::Ethernet { .. }, true, n) if n > 1 => Some(n),
            _ => None,
        };
        out.push(NicInput {
            name: iface.name.clone(),
            attach,
            mac,
            mtu: None,
            queues,
            guest_ips: Vec::new(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_choice_follows_the_documented_table() {
        assert_eq!(
            choose_accel(Accel::Tcg, false, false).unwrap(),
            Hypervisor::Qemu
        );
        assert_eq!(
            choose_accel(Accel::Tcg, true, false).unwrap(),
            Hypervisor::Qemu
        );
        assert_eq!(
            choose_accel(Accel::Kvm, true, false).unwrap(),
            Hypervisor::Kvm
        );
        assert_eq!(
            choose_accel(Accel::Auto, true, false).unwrap(),
            Hypervisor::Kvm
        );
        assert_eq!(
            choose_accel(Accel::Auto, false, true).unwrap(),
            Hypervisor::Qemu
        );
        for (a, allow) in [(Accel::Auto, false), (Accel::Kvm, true)] {
            let e = choose_accel(a, false, allow).unwrap_err();
            assert!(e.to_string().contains("/dev/kvm"), "{e}");
            assert_eq!(
                crate::error::Classify::exit_kind(&e),
                crate::error::ExitKind::Precondition
            );
        }
    }

    #[test]
    fn machine_help_parses() {
        let text = "Supported machines are:\nq35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)\npc-q35-10.0          Standard PC (Q35 + ICH9, 2009) (default)\nnone                 empty machine\n";
        assert_eq!(parse_machine_help(text), vec!["q35", "pc-q35-10.0", "none"]);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn direct_io_probe_answers_for_a_missing_file_via_its_directory() {
        let d = tempfile::tempdir().unwrap();
        // Whatever the filesystem says, the probe must not leave its probe file behind.
        let _ = supports_direct_io(&d.path().join("a/b/c.img"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
