//! The domain plan: (validated VMI, network result, pod facts) → [`DomainPlan`], pure. Every
//! decision is made here; the templates only lay it out.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::facts::{Hypervisor, PodFacts};
use super::{DomainError, NicAttach, NicInput};
use crate::spec::{self, BindingKind, Vmi, Volume, VolumeKind};

/// Namespace for the name-based UUIDs and MACs this launcher derives (a fixed random UUID).
const LAUNCHER_NS: uuid::Uuid = uuid::Uuid::from_u128(0x6c61_756e_6368_6572_8a1e_0d0c_2b7f_43a9);

/// Everything libvirt is told, decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainPlan {
    /// `kvm` or `qemu`.
    pub hypervisor: Hypervisor,
    /// `<namespace>_<name>`.
    pub name: String,
    pub uuid: String,
    pub metadata: MetadataPlan,
    pub memory_bytes: u64,
    pub memory_backing: Option<MemoryBackingPlan>,
    pub vcpus: u32,
    /// IOThread ids 1..=iothreads.
    pub iothreads: u32,
    pub cputune: Option<CpuTunePlan>,
    pub cpu: CpuPlan,
    pub sysinfo: SysinfoPlan,
    pub os: OsPlan,
    pub features: FeaturesPlan,
    pub clock: ClockPlan,
    pub on_poweroff: String,
    pub on_reboot: String,
    pub on_crash: String,
    pub devices: DevicesPlan,
    /// What `disks::prepare` must do before the domain starts.
    pub prepare: Vec<PrepStep>,
    /// Adaptations worth a log line (e.g. host-model under TCG).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataPlan {
    pub uid: Option<String>,
    pub name: String,
    pub namespace: String,
    pub grace_period_seconds: Option<i64>,
    pub annotations: Vec<KeyValue>,
    pub labels: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackingPlan {
    /// Hugepage size in KiB, if hugepages are used.
    pub hugepage_kib: Option<u64>,
    /// `memfd`.
    pub source: String,
    /// `shared`.
    pub access: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTunePlan {
    pub vcpupins: Vec<VcpuPin>,
    pub emulatorpin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuPin {
    pub vcpu: u32,
    pub cpuset: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPlan {
    /// `host-model`, `host-passthrough`, `maximum` or `custom`.
    pub mode: String,
    /// The named model for `custom`.
    pub model: Option<String>,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    pub features: Vec<CpuFeaturePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFeaturePlan {
    pub name: String,
    pub policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysinfoPlan {
    /// Never empty (uuid is always there).
    pub system: Vec<KeyValue>,
    /// Empty means no `<chassis>` group at all (an empty group fails libvirt's schema).
    pub chassis: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsPlan {
    pub arch: String,
    pub machine: String,
    pub loader: Option<LoaderPlan>,
    pub nvram: Option<NvramPlan>,
    pub bios_use_serial: bool,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderPlan {
    pub path: String,
    /// `yes` / `no`.
    pub secure: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvramPlan {
    pub template: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeaturesPlan {
    pub acpi: bool,
    pub apic: bool,
    /// `<apic eoi='on|off'/>`.
    pub apic_eoi: Option<String>,
    pub smm: bool,
    /// `on` / `off`.
    pub pvspinlock: Option<String>,
    /// `passthrough`, `custom` or none.
    pub hyperv_mode: Option<String>,
    pub hyperv: Vec<HypervFeaturePlan>,
    pub kvm_hidden: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervFeaturePlan {
    /// The libvirt element: relaxed, vapic, spinlocks, vpindex, runtime, synic, stimer, reset,
    /// vendor_id, frequencies, reenlightenment, tlbflush, ipi, evmcs.
    pub name: String,
    /// `on` / `off`.
    pub state: String,
    pub retries: Option<u32>,
    pub value: Option<String>,
    /// Sub-features (`<direct state='on'/>`, `<extended state='on'/>`).
    pub children: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockPlan {
    /// `utc`, `variable` or `timezone`.
    pub offset: String,
    pub adjustment: Option<i64>,
    pub basis: Option<String>,
    pub timezone: Option<String>,
    pub timers: Vec<TimerPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerPlan {
    /// hpet, kvmclock, pit, rtc, hypervclock.
    pub name: String,
    /// `yes` / `no`.
    pub present: Option<String>,
    pub tickpolicy: Option<String>,
    pub track: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevicesPlan {
    pub disks: Vec<DiskPlan>,
    pub controllers: Vec<ControllerPlan>,
    pub interfaces: Vec<InterfacePlan>,
    pub hostdevs: Vec<HostdevPlan>,
    pub serial: Option<SerialPlan>,
    pub guest_agent_socket: String,
    pub vnc_socket: Option<String>,
    /// `vga` or `bochs`, with VNC only.
    pub video_model: Option<String>,
    pub inputs: Vec<InputPlan>,
    pub memballoon_model: String,
    pub memballoon_stats_period: Option<u32>,
    pub rng_model: Option<String>,
    pub watchdog: Option<WatchdogPlan>,
    pub tpm: Option<TpmPlan>,
    pub vsock_model: Option<String>,
    pub sound_model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    /// The VMI disk/volume name (alias `ua-<name>`).
    pub name: String,
    /// disk, cdrom, lun.
    pub device: String,
    /// file, block.
    pub source_type: String,
    pub source: String,
    /// raw, qcow2.
    pub format: String,
    pub cache: String,
    pub io: Option<String>,
    pub error_policy: Option<String>,
    pub discard: Option<String>,
    pub iothread: Option<u32>,
    pub queues: Option<u32>,
    pub target_dev: String,
    /// virtio, sata, scsi, usb.
    pub target_bus: String,
    pub tray: Option<String>,
    /// virtio-non-transitional / virtio-transitional for virtio disks.
    pub model: Option<String>,
    pub readonly: bool,
    pub shareable: bool,
    pub serial: Option<String>,
    pub boot_order: Option<u32>,
    pub logical_block_size: Option<u64>,
    pub physical_block_size: Option<u64>,
    pub pci_address: Option<PciAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerPlan {
    /// usb, scsi, sata, virtio-serial.
    pub kind: String,
    pub index: u32,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciAddress {
    pub domain: String,
    pub bus: String,
    pub slot: String,
    pub function: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfacePlan {
    /// `ethernet` or `user` (passt).
    pub kind: String,
    pub name: String,
    pub mac: String,
    pub model: String,
    pub target_dev: Option<String>,
    pub mtu: Option<u32>,
    /// `vhost` for ethernet; none for passt.
    pub driver_name: Option<String>,
    pub queues: Option<u32>,
    pub boot_order: Option<u32>,
    /// `<rom enabled='no'/>`: no boot ROM when the interface is not a boot device.
    pub rom_off: bool,
    pub link_down: bool,
    pub pci_address: Option<PciAddress>,
    pub acpi_index: Option<u32>,
    pub port_forwards: Vec<PortForwardPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForwardPlan {
    pub proto: String,
    pub ranges: Vec<PortRangePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRangePlan {
    pub start: u16,
    pub end: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostdevPlan {
    pub name: String,
    pub source: PciAddress,
    pub boot_order: Option<u32>,
    pub pci_address: Option<PciAddress>,
    pub acpi_index: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialPlan {
    pub socket: String,
    pub log: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPlan {
    pub name: String,
    pub kind: String,
    pub bus: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogPlan {
    pub model: String,
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmPlan {
    pub model: String,
    pub version: String,
    pub persistent: bool,
}

/// Run-time preparation of one disk source (done by [`super::disks::prepare`], never by render).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum PrepStep {
    /// A directory that must exist before the domain starts (sockets, logs, NVRAM).
    Directory { path: PathBuf },
    /// A qcow2 overlay over a container disk (or an ephemeral PVC), backing format detected.
    Overlay {
        volume: String,
        backing: PathBuf,
        overlay: PathBuf,
    },
    /// A qcow2 disk of `size_bytes` (1 MiB-aligned), created only if missing.
    EmptyDisk {
        volume: String,
        path: PathBuf,
        size_bytes: u64,
    },
    /// A cloud-init NoCloud (`cidata`) or ConfigDrive (`config-2`) ISO.
    CloudInit {
        volume: String,
        iso: PathBuf,
        flavor: CloudInitFlavor,
        instance_id: String,
        hostname: String,
        user_data: DataSource,
        network_data: Option<DataSource>,
    },
    /// An ISO of a directory the pod mounted (configMap, secret, serviceAccount, downwardAPI).
    DirIso {
        volume: String,
        iso: PathBuf,
        source_dir: PathBuf,
        label: String,
    },
    /// A file or block device that must already exist (PVC, DataVolume, hostDisk `Disk`,
    /// kernel-boot artifacts).
    MustExist {
        volume: String,
        path: PathBuf,
        what: String,
    },
    /// A raw hostDisk file created (sparse) if missing.
    HostDiskCreate {
        volume: String,
        path: PathBuf,
        size_bytes: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudInitFlavor {
    NoCloud,
    ConfigDrive,
}

/// cloud-init data: inline (decoded) text, or a file the pod mounted from a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSource {
    Inline(String),
    /// The first of these files that exists (a secret's key, spelled either way).
    File(Vec<PathBuf>),
}

// ---------------------------------------------------------------------------------------------
// Paths (KubeVirt's pod layout; documented in docs/domain.md).

/// Where a block-mode PVC/DataVolume appears in the pod.
pub fn block_device_path(volume: &str) -> PathBuf {
    PathBuf::from("/dev").join(volume)
}

/// A file-mode PVC/DataVolume's image.
pub fn pvc_image_path(run_dir: &Path, volume: &str) -> PathBuf {
    run_dir.join("vmi-disks").join(volume).join("disk.img")
}

/// A container disk as the pod mounts it: `<container-disk-dir>/disk_<volume index>.img`.
pub fn container_disk_path(container_disk_dir: &Path, index: usize) -> PathBuf {
    container_disk_dir.join(format!("disk_{index}.img"))
}

/// The qcow2 overlay of an ephemeral volume (containerDisk, ephemeral PVC).
pub fn overlay_path(run_dir: &Path, volume: &str) -> PathBuf {
    run_dir.join("disk-data").join(volume).join("disk.qcow2")
}

pub fn empty_disk_path(run_dir: &Path, volume: &str) -> PathBuf {
    run_dir.join("empty-disks").join(format!("{volume}.qcow2"))
}

pub fn cloud_init_iso_path(run_dir: &Path, volume: &str, flavor: CloudInitFlavor) -> PathBuf {
    run_dir
        .join("cloud-init-data")
        .join(volume)
        .join(match flavor {
            CloudInitFlavor::NoCloud => "noCloud.iso",
            CloudInitFlavor::ConfigDrive => "configdrive.iso",
        })
}

/// (mounted source dir, ISO) of a configMap / secret / serviceAccount / downwardAPI volume.
pub fn dir_iso_paths(run_dir: &Path, kind: VolumeKind, volume: &str) -> (PathBuf, PathBuf) {
    let (src, disks) = match kind {
        VolumeKind::ConfigMap => ("config-map", "config-map-disks"),
        VolumeKind::Secret => ("secret", "secret-disks"),
        VolumeKind::ServiceAccount => ("service-account", "service-account-disk"),
        _ => ("downwardapi", "downwardapi-disks"),
    };
    (
        run_dir.join(src).join(volume),
        run_dir.join(disks).join(format!("{volume}.iso")),
    )
}

/// The file a volume's disk reads, when it is a file (used by the O_DIRECT probe).
pub fn file_source_path(
    vol: &Volume,
    index: usize,
    run_dir: &Path,
    container_disk_dir: &Path,
) -> Option<PathBuf> {
    let _ = (index, container_disk_dir);
    Some(match vol.kind()? {
        VolumeKind::ContainerDisk | VolumeKind::Ephemeral => overlay_path(run_dir, &vol.name),
        VolumeKind::PersistentVolumeClaim | VolumeKind::DataVolume => {
            pvc_image_path(run_dir, &vol.name)
        }
        VolumeKind::HostDisk => PathBuf::from(&vol.host_disk.as_ref()?.path),
        VolumeKind::EmptyDisk => empty_disk_path(run_dir, &vol.name),
        VolumeKind::CloudInitNoCloud => {
            cloud_init_iso_path(run_dir, &vol.name, CloudInitFlavor::NoCloud)
        }
        VolumeKind::CloudInitConfigDrive => {
            cloud_init_iso_path(run_dir, &vol.name, CloudInitFlavor::ConfigDrive)
        }
        k @ (VolumeKind::ConfigMap
        | VolumeKind::Secret
        | VolumeKind::ServiceAccount
        | VolumeKind::DownwardApi) => dir_iso_paths(run_dir, k, &vol.name).1,
        VolumeKind::Sysprep | VolumeKind::MemoryDump => return None,
    })
}

/// The socket/log directory for this VMI: `<run-dir>/<uid>` (the VMI name without a uid).
pub fn vmi_run_dir(run_dir: &Path, vmi: &Vmi) -> PathBuf {
    let id = vmi
        .metadata
        .uid
        .clone()
        .or_else(|| vmi.metadata.name.clone())
        .unwrap_or_default();
    run_dir.join(id)
}

// ---------------------------------------------------------------------------------------------
// Small pure helpers shared with facts.rs.

/// The vCPU count: sockets × cores × threads (each defaulting to 1).
pub fn vcpu_count(vmi: &Vmi) -> Result<u32, DomainError> {
    let (s, c, t) = topology(vmi)?;
    Ok(s * c * t)
}

fn topology(vmi: &Vmi) -> Result<(u32, u32, u32), DomainError> {
    let cpu = vmi.spec.domain.cpu.clone().unwrap_or_default();
    let get = |v: Option<u32>, f: &str| -> Result<u32, DomainError> {
        match v {
            None => Ok(1),
            Some(0) => Err(DomainError::invalid(
                format!("spec.domain.cpu.{f}"),
                "must be at least 1",
            )),
            Some(n) => Ok(n),
        }
    };
    let (s, c, t) = (
        get(cpu.sockets, "sockets")?,
        get(cpu.cores, "cores")?,
        get(cpu.threads, "threads")?,
    );
    if u64::from(s) * u64::from(c) * u64::from(t) > 1024 {
        return Err(DomainError::invalid(
            "spec.domain.cpu",
            format!(
                "sockets × cores × threads = {} is more than 1024 vCPUs",
                s * c * t
            ),
        ));
    }
    Ok((s, c, t))
}

/// A MAC derived from the VMI (uid, else namespace/name) and the interface name: locally
/// administered, unicast, stable.
pub fn derived_mac(vmi: &Vmi, iface: &str) -> String {
    let id = vmi.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            vmi.metadata.namespace.as_deref().unwrap_or("default"),
            vmi.metadata.name.as_deref().unwrap_or("")
        )
    });
    mac_from_seed(&format!("{id}/{iface}"))
}

/// A locally administered unicast MAC from a seed string (UUIDv5 bytes).
pub fn mac_from_seed(seed: &str) -> String {
    let b = uuid::Uuid::new_v5(&LAUNCHER_NS, seed.as_bytes()).into_bytes();
    let first = (b[0] & 0xfc) | 0x02;
    format!(
        "{first:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[1], b[2], b[3], b[4], b[5]
    )
}

pub fn port_protocol(p: Option<&str>, path: &str) -> Result<String, DomainError> {
    match p.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => Ok("tcp".into()),
        Some("udp") => Ok("udp".into()),
        Some(other) => Err(DomainError::invalid(
            path,
            format!("protocol {other:?} is neither TCP nor UDP"),
        )),
    }
}

pub fn port_number(p: i64, path: &str) -> Result<u16, DomainError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| DomainError::invalid(path, format!("port {p} is not in 1..65535")))
}

/// A Kubernetes quantity in bytes (`1Gi`, `1024M`, `512Mi`, `2`, `1.5Gi`), via
/// [`crate::spec::quantity`].
pub fn quantity_bytes(q: &str) -> Option<u64> {
    spec::quantity::parse_bytes(q).ok()
}

fn parse_pci(s: &str, path: &str) -> Result<PciAddress, DomainError> {
    let bad = || {
        DomainError::invalid(
            path,
            format!("{s:?} is not a PCI address of the form 0000:81:01.0"),
        )
    };
    let (dom, rest) = s.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (slot, func) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |v: &str, len: usize, max: u32| -> Result<String, DomainError> {
        if v.len() != len || !v.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let n = u32::from_str_radix(v, 16).map_err(|_| bad())?;
        if n > max {
            return Err(bad());
        }
        Ok(format!("0x{:0w$x}", n, w = len))
    };
    Ok(PciAddress {
        domain: hex(dom, 4, 0xffff)?,
        bus: hex(bus, 2, 0xff)?,
        slot: hex(slot, 2, 0x1f)?,
        function: hex(func, 1, 7)?,
    })
}

/// Characters XML 1.0 cannot carry at all, not even escaped.
fn check_text(path: &str, s: &str) -> Result<(), DomainError> {
    if let Some(c) = s.chars().find(|c| {
        let c = *c as u32;
        (c < 0x20 && c != 0x9 && c != 0xa && c != 0xd) || c == 0xfffe || c == 0xffff
    }) {
        return Err(DomainError::invalid(
            path,
            format!(
                "contains the control character U+{:04X}, which XML cannot carry",
                c as u32
            ),
        ));
    }
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

fn unsupported_if<T>(v: &Option<T>, path: &str, why: &str) -> Result<(), DomainError> {
    if v.is_some() {
        return Err(DomainError::unsupported(path, why));
    }
    Ok(())
}

fn json_enabled(v: &serde_json::Value) -> bool {
    v.get("enabled").and_then(|e| e.as_bool()).unwrap_or(true)
}

// ---------------------------------------------------------------------------------------------
// The plan.

/// Plans the domain. Assumes a defaulted, validated VMI, but refuses (never panics on) anything
/// it cannot honour, naming the field.
pub fn plan(vmi: &Vmi, nics: &[NicInput], facts: &PodFacts) -> Result<DomainPlan, DomainError> {
    let mut notes = Vec::new();
    let d = &vmi.spec.domain;

    // Identity.
    let name = vmi
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| DomainError::invalid("metadata.name", "is required"))?;
    let namespace = vmi
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    check_text("metadata.name", &name)?;
    check_text("metadata.namespace", &namespace)?;
    if let Some(uid) = &vmi.metadata.uid {
        check_text("metadata.uid", uid)?;
        if uid.contains('/') || uid == "." || uid == ".." {
            return Err(DomainError::invalid(
                "metadata.uid",
                format!("{uid:?} cannot name a directory"),
            ));
        }
    } else if name.contains('/') || name == "." || name == ".." {
        return Err(DomainError::invalid(
            "metadata.name",
            format!("{name:?} cannot name a directory (and there is no metadata.uid)"),
        ));
    }
    let firmware = d.firmware.clone().unwrap_or_default();
    let uuid = match &firmware.uuid {
        Some(u) => uuid::Uuid::parse_str(u)
            .map_err(|e| DomainError::invalid("spec.domain.firmware.uuid", format!("{u:?}: {e}")))?
            .hyphenated()
            .to_string(),
        None => uuid::Uuid::new_v5(&LAUNCHER_NS, format!("{namespace}/{name}").as_bytes())
            .hyphenated()
            .to_string(),
    };
    let mut annotations = Vec::new();
    for (k, v) in &vmi.metadata.annotations {
        check_text(&format!("metadata.annotations[{k:?}]"), k)?;
        check_text(&format!("metadata.annotations[{k:?}]"), v)?;
        annotations.push(KeyValue {
            key: k.clone(),
            value: v.clone(),
        });
    }
    let mut labels = Vec::new();
    for (k, v) in &vmi.metadata.labels {
        check_text(&format!("metadata.labels[{k:?}]"), k)?;
        check_text(&format!("metadata.labels[{k:?}]"), v)?;
        labels.push(KeyValue {
            key: k.clone(),
            value: v.clone(),
        });
    }
    let metadata = MetadataPlan {
        uid: vmi.metadata.uid.clone(),
        name: name.clone(),
        namespace: namespace.clone(),
        grace_period_seconds: vmi.spec.termination_grace_period_seconds,
        annotations,
        labels,
    };

    // Architecture and machine.
    match vmi.spec.architecture.as_deref() {
        None | Some("") | Some("amd64") | Some("x86_64") => {}
        Some(other) => {
            return Err(DomainError::unsupported(
                "spec.architecture",
                format!("{other:?} guests cannot run on this x86_64 launcher"),
            ))
        }
    }
    let machine = d
        .machine
        .as_ref()
        .and_then(|m| m.machine_type.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "q35".into());
    if !(machine == "q35" || machine.starts_with("pc-q35-")) {
        return Err(DomainError::unsupported(
            "spec.domain.machine.type",
            format!("{machine:?}: only q35 machine types (q35, pc-q35-*) are supported"),
        ));
    }
    check_text("spec.domain.machine.type", &machine)?;
    if !facts.machine_types.is_empty() && !facts.machine_types.contains(&machine) {
        return Err(DomainError::unsupported(
            "spec.domain.machine.type",
            format!(
                "{machine:?} is not a machine type of this qemu (it has {})",
                facts
                    .machine_types
                    .iter()
                    .filter(|m| m.contains("q35"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }

    // CPU.
    let cpu_spec = d.cpu.clone().unwrap_or_default();
    unsupported_if(
        &cpu_spec.numa,
        "spec.domain.cpu.numa",
        "guest NUMA passthrough is not supported",
    )?;
    unsupported_if(
        &cpu_spec.realtime,
        "spec.domain.cpu.realtime",
        "realtime vCPUs are not supported",
    )?;
    let (sockets, cores, threads) = topology(vmi)?;
    let vcpus = sockets * cores * threads;
    if let Some(max) = cpu_spec.max_sockets {
        if max != sockets {
            return Err(DomainError::unsupported(
                "spec.domain.cpu.maxSockets",
                "CPU hotplug is not supported (set maxSockets equal to sockets or leave it out)",
            ));
        }
    }
    let model = cpu_spec.model.clone().filter(|m| !m.is_empty());
    let (mut mode, cpu_model) = match model.as_deref() {
        None | Some("host-model") => ("host-model".to_string(), None),
        Some("host-passthrough") => ("host-passthrough".to_string(), None),
        Some(m) => {
            check_text("spec.domain.cpu.model", m)?;
            ("custom".to_string(), Some(m.to_string()))
        }
    };
    if facts.hypervisor == Hypervisor::Qemu && mode != "custom" {
        notes.push(format!(
            "CPU mode {mode} needs hardware virtualisation; under software emulation the guest \
             gets mode='maximum' (every feature TCG can emulate)"
        ));
        mode = "maximum".into();
    }
    let mut cpu_features = Vec::new();
    for (i, f) in cpu_spec.features.iter().enumerate() {
        let path = format!("spec.domain.cpu.features[{i}]");
        if f.name.is_empty()
            || !f
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(DomainError::invalid(
                format!("{path}.name"),
                format!("{:?} is not a CPU feature name", f.name),
            ));
        }
        let policy = f.policy.clone().unwrap_or_else(|| "require".into());
        if !["force", "require", "optional", "disable", "forbid"].contains(&policy.as_str()) {
            return Err(DomainError::invalid(
                format!("{path}.policy"),
                format!("{policy:?} is not one of force, require, optional, disable, forbid"),
            ));
        }
        cpu_features.push(CpuFeaturePlan {
            name: f.name.clone(),
            policy,
        });
    }
    let cpu = CpuPlan {
        mode,
        model: cpu_model,
        sockets,
        cores,
        threads,
        features: cpu_features,
    };
    let dedicated = cpu_spec.dedicated_cpu_placement == Some(true);
    let isolate = cpu_spec.isolate_emulator_thread == Some(true);
    if isolate && !dedicated {
        return Err(DomainError::invalid(
            "spec.domain.cpu.isolateEmulatorThread",
            "needs dedicatedCpuPlacement: true",
        ));
    }
    let cputune = if dedicated {
        let need = vcpus as usize + usize::from(isolate);
        if facts.cpuset.len() < need {
            return Err(DomainError::PodFact {
                what: "the pod's cpuset".into(),
                message: format!(
                    "dedicatedCpuPlacement{} needs {need} CPUs but the pod has {} ({:?}); \
                     request {need} whole CPUs (requests = limits) for the pod",
                    if isolate {
                        " with isolateEmulatorThread"
                    } else {
                        ""
                    },
                    facts.cpuset.len(),
                    facts.cpuset
                ),
            });
        }
        let vcpupins: Vec<VcpuPin> = (0..vcpus)
            .map(|i| VcpuPin {
                vcpu: i,
                cpuset: facts.cpuset[i as usize].to_string(),
            })
            .collect();
        let emulatorpin = if isolate {
            facts.cpuset[vcpus as usize].to_string()
        } else {
            facts.cpuset[..vcpus as usize]
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(CpuTunePlan {
            vcpupins,
            emulatorpin,
        })
    } else {
        None
    };

    // Memory.
    let mem = d.memory.clone().unwrap_or_default();
    let resources = d.resources.clone().unwrap_or_default();
    let (mem_path, mem_text) = if let Some(g) = &mem.guest {
        ("spec.domain.memory.guest", g.clone())
    } else if let Some(r) = resources.requests.get("memory") {
        ("spec.domain.resources.requests.memory", r.clone())
    } else if let Some(l) = resources.limits.get("memory") {
        ("spec.domain.resources.limits.memory", l.clone())
    } else {
        return Err(DomainError::invalid(
            "spec.domain.memory.guest",
            "no guest memory: set memory.guest or resources.requests.memory",
        ));
    };
    let memory_bytes = quantity_bytes(&mem_text)
        .filter(|b| *b >= 1 << 20)
        .ok_or_else(|| {
            DomainError::invalid(
                mem_path,
                format!("{mem_text:?} is not a memory size of at least 1Mi"),
            )
        })?;
    if let Some(max) = &mem.max_guest {
        if quantity_bytes(max) != Some(memory_bytes) {
            return Err(DomainError::unsupported(
                "spec.domain.memory.maxGuest",
                "memory hotplug is not supported (leave maxGuest out or equal to guest)",
            ));
        }
    }
    let memory_backing = match &mem.hugepages {
        Some(h) => {
            let ps = h.page_size.clone().unwrap_or_default();
            let bytes = quantity_bytes(&ps).unwrap_or(0);
            if bytes != 2 << 20 && bytes != 1 << 30 {
                return Err(DomainError::invalid(
                    "spec.domain.memory.hugepages.pageSize",
                    format!("{ps:?}: hugepages are 2Mi or 1Gi"),
                ));
            }
            if memory_bytes % bytes != 0 {
                return Err(DomainError::invalid(
                    mem_path,
                    format!("{mem_text:?} is not a multiple of the hugepage size {ps}"),
                ));
            }
            Some(MemoryBackingPlan {
                hugepage_kib: Some(bytes / 1024),
                source: "memfd".into(),
                access: "shared".into(),
            })
        }
        None => None,
    };

    // Firmware and OS.
    unsupported_if(
        &firmware.acpi,
        "spec.domain.firmware.acpi",
        "custom ACPI tables (SLIC/MSDM) are not supported",
    )?;
    let bootloader = firmware.bootloader.clone().unwrap_or_default();
    if bootloader.bios.is_some() && bootloader.efi.is_some() {
        return Err(DomainError::invalid(
            "spec.domain.firmware.bootloader",
            "set either bios or efi, not both",
        ));
    }
    let features_spec = d.features.clone().unwrap_or_default();
    let mut smm = features_spec
        .smm
        .as_ref()
        .is_some_and(|s| s.enabled != Some(false));
    let (loader, nvram) = match &bootloader.efi {
        Some(efi) => {
            if efi.persistent == Some(true) {
                return Err(DomainError::unsupported(
                    "spec.domain.firmware.bootloader.efi.persistent",
                    "persistent EFI variables need a backend-storage PVC, which this launcher \
                     does not have",
                ));
            }
            let secure = efi.secure_boot != Some(false);
            if secure {
                if features_spec
                    .smm
                    .as_ref()
                    .is_some_and(|s| s.enabled == Some(false))
                {
                    return Err(DomainError::invalid(
                        "spec.domain.features.smm.enabled",
                        "EFI secure boot needs SMM; enable it or set efi.secureBoot: false",
                    ));
                }
                smm = true;
            }
            let ovmf = |f: &str| facts.ovmf_dir.join(f).display().to_string();
            let (code, vars) = if secure {
                ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
            } else {
                ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
            };
            (
                Some(LoaderPlan {
                    path: ovmf(code),
                    secure: yes_no(secure),
                }),
                Some(NvramPlan {
                    template: ovmf(vars),
                    path: facts
                        .run_dir
                        .join("nvram")
                        .join(format!("{name}_VARS.fd"))
                        .display()
                        .to_string(),
                }),
            )
        }
        None => (None, None),
    };
    let bios_use_serial = bootloader
        .bios
        .as_ref()
        .is_some_and(|b| b.use_serial == Some(true));
    let mut prepare = vec![PrepStep::Directory {
        path: vmi_run_dir(&facts.run_dir, vmi),
    }];
    if bootloader.efi.is_some() {
        prepare.push(PrepStep::Directory {
            path: facts.run_dir.join("nvram"),
        });
    }
    let (kernel, initrd, cmdline) = match &firmware.kernel_boot {
        Some(kb) => {
            let kbp = "spec.domain.firmware.kernelBoot";
            if let Some(args) = &kb.kernel_args {
                check_text(&format!("{kbp}.kernelArgs"), args)?;
            }
            let c = kb.container.as_ref().ok_or_else(|| {
                DomainError::invalid(
                    format!("{kbp}.container"),
                    "kernel boot needs a container with kernelPath and/or initrdPath",
                )
            })?;
            if c.kernel_path.is_none() && c.initrd_path.is_none() {
                return Err(DomainError::invalid(
                    format!("{kbp}.container"),
                    "set kernelPath and/or initrdPath",
                ));
            }
            if c.kernel_path.is_none() && kb.kernel_args.is_some() {
                return Err(DomainError::invalid(
                    format!("{kbp}.kernelArgs"),
                    "kernel arguments need a kernelPath",
                ));
            }
            let artifact =
                |p: &Option<String>, field: &str| -> Result<Option<String>, DomainError> {
                    let Some(p) = p else { return Ok(None) };
                    let base = Path::new(p)
                        .file_name()
                        .and_then(|b| b.to_str())
                        .filter(|b| !b.is_empty())
                        .ok_or_else(|| {
                            DomainError::invalid(
                                format!("{kbp}.container.{field}"),
                                format!("{p:?} has no file name"),
                            )
                        })?;
                    check_text(&format!("{kbp}.container.{field}"), base)?;
                    Ok(Some(
                        facts
                            .container_disk_dir
                            .join("kernel-boot")
                            .join(base)
                            .display()
                            .to_string(),
                    ))
                };
            let k = artifact(&c.kernel_path, "kernelPath")?;
            let i = artifact(&c.initrd_path, "initrdPath")?;
            for (p, what) in [(&k, "kernel"), (&i, "initrd")] {
                if let Some(p) = p {
                    prepare.push(PrepStep::MustExist {
                        volume: "kernel-boot".into(),
                        path: p.into(),
                        what: format!("the kernel-boot {what}"),
                    });
                }
            }
            (k, i, kb.kernel_args.clone())
        }
        None => (None, None, None),
    };
    let os = OsPlan {
        arch: "x86_64".into(),
        machine,
        loader,
        nvram,
        bios_use_serial,
        kernel,
        initrd,
        cmdline,
    };

    // SMBIOS.
    if let Some(s) = &firmware.serial {
        check_text("spec.domain.firmware.serial", s)?;
    }
    let mut system = vec![
        KeyValue {
            key: "manufacturer".into(),
            value: "KubeVirt".into(),
        },
        KeyValue {
            key: "product".into(),
            value: "None".into(),
        },
        KeyValue {
            key: "family".into(),
            value: "KubeVirt".into(),
        },
        KeyValue {
            key: "uuid".into(),
            value: uuid.clone(),
        },
    ];
    system.push(KeyValue {
        key: "serial".into(),
        value: firmware.serial.clone().unwrap_or_else(|| uuid.clone()),
    });
    let mut chassis = Vec::new();
    if let Some(c) = &d.chassis {
        for (k, v) in [
            ("manufacturer", &c.manufacturer),
            ("version", &c.version),
            ("serial", &c.serial),
            ("asset", &c.asset),
            ("sku", &c.sku),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                check_text(&format!("spec.domain.chassis.{k}"), v)?;
                chassis.push(KeyValue {
                    key: k.into(),
                    value: v.clone(),
                });
            }
        }
    }
    let sysinfo = SysinfoPlan { system, chassis };

    // Features.
    let fp = "spec.domain.features";
    let acpi = features_spec
        .acpi
        .as_ref()
        .map_or(true, |a| a.enabled != Some(false));
    let apic = features_spec
        .apic
        .as_ref()
        .is_some_and(|a| a.enabled != Some(false));
    let apic_eoi = features_spec
        .apic
        .as_ref()
        .and_then(|a| a.end_of_interrupt)
        .map(on_off);
    let pvspinlock = features_spec
        .pvspinlock
        .as_ref()
        .map(|p| on_off(p.enabled != Some(false)));
    let kvm_hidden = features_spec
        .kvm
        .as_ref()
        .is_some_and(|k| k.hidden == Some(true));
    let passthrough = features_spec
        .hyperv_passthrough
        .as_ref()
        .is_some_and(|p| p.enabled != Some(false));
    let mut hyperv = Vec::new();
    if let Some(h) = &features_spec.hyperv {
        if passthrough {
            return Err(DomainError::invalid(
                format!("{fp}.hypervPassthrough"),
                "cannot be combined with features.hyperv",
            ));
        }
        let simple = |n: &str, s: &Option<spec::FeatureState>| {
            s.as_ref().map(|s| HypervFeaturePlan {
                name: n.into(),
                state: on_off(s.enabled != Some(false)),
                retries: None,
                value: None,
                children: vec![],
            })
        };
        hyperv.extend(simple("relaxed", &h.relaxed));
        hyperv.extend(simple("vapic", &h.vapic));
        if let Some(s) = &h.spinlocks {
            let on = s.enabled != Some(false);
            let retries = if on {
                let r = s.spinlocks.unwrap_or(4096);
                if r < 4095 {
                    return Err(DomainError::invalid(
                        format!("{fp}.hyperv.spinlocks.spinlocks"),
                        format!("{r} is below the minimum of 4095"),
                    ));
                }
                Some(r)
            } else {
                None
            };
            hyperv.push(HypervFeaturePlan {
                name: "spinlocks".into(),
                state: on_off(on),
                retries,
                value: None,
                children: vec![],
            });
        }
        hyperv.extend(simple("vpindex", &h.vpindex));
        hyperv.extend(simple("runtime", &h.runtime));
        hyperv.extend(simple("synic", &h.synic));
        if let Some(st) = &h.synictimer {
            let mut children = vec![];
            if let Some(direct) = st.get("direct") {
                children.push(KeyValue {
                    key: "direct".into(),
                    value: on_off(json_enabled(direct)),
                });
            }
            hyperv.push(HypervFeaturePlan {
                name: "stimer".into(),
                state: on_off(json_enabled(st)),
                retries: None,
                value: None,
                children,
            });
        }
        hyperv.extend(simple("reset", &h.reset));
        if let Some(v) = &h.vendorid {
            let on = v.enabled != Some(false);
            let value = if on {
                let id = v.vendorid.clone().unwrap_or_default();
                if id.is_empty()
                    || id.len() > 12
                    || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(DomainError::invalid(
                        format!("{fp}.hyperv.vendorid.vendorid"),
                        format!("{id:?}: a vendor id is 1 to 12 letters, digits or '_'"),
                    ));
                }
                Some(id)
            } else {
                None
            };
            hyperv.push(HypervFeaturePlan {
                name: "vendor_id".into(),
                state: on_off(on),
                retries: None,
                value,
                children: vec![],
            });
        }
        hyperv.extend(simple("frequencies", &h.frequencies));
        hyperv.extend(simple("reenlightenment", &h.reenlightenment));
        if let Some(t) = &h.tlbflush {
            let mut children = vec![];
            for sub in ["direct", "extended"] {
                if let Some(x) = t.get(sub) {
                    children.push(KeyValue {
                        key: sub.into(),
                        value: on_off(json_enabled(x)),
                    });
                }
            }
            hyperv.push(HypervFeaturePlan {
                name: "tlbflush".into(),
                state: on_off(json_enabled(t)),
                retries: None,
                value: None,
                children,
            });
        }
        hyperv.extend(simple("ipi", &h.ipi));
        hyperv.extend(simple("evmcs", &h.evmcs));
    }
    let hyperv_mode = if passthrough {
        Some("passthrough".to_string())
    } else if features_spec.hyperv.is_some() {
        Some("custom".to_string())
    } else {
        None
    };
    if !acpi && bootloader.efi.is_some() {
        return Err(DomainError::invalid(
            format!("{fp}.acpi.enabled"),
            "EFI firmware needs ACPI on x86_64; enable acpi or boot with BIOS",
        ));
    }
    let features = FeaturesPlan {
        acpi,
        apic,
        apic_eoi,
        smm,
        pvspinlock,
        hyperv_mode,
        hyperv,
        kvm_hidden,
    };

    // Clock and timers.
    let clock_spec = d.clock.clone().unwrap_or_default();
    if clock_spec.utc.is_some() && clock_spec.timezone.is_some() {
        return Err(DomainError::invalid(
            "spec.domain.clock",
            "set either utc or timezone, not both",
        ));
    }
    let mut clock = ClockPlan {
        offset: "utc".into(),
        adjustment: None,
        basis: None,
        timezone: None,
        timers: vec![],
    };
    if let Some(tz) = &clock_spec.timezone {
        if tz.is_empty()
            || !tz
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c))
        {
            return Err(DomainError::invalid(
                "spec.domain.clock.timezone",
                format!("{tz:?} is not a time zone name such as Europe/Berlin"),
            ));
        }
        clock.offset = "timezone".into();
        clock.timezone = Some(tz.clone());
    } else if let Some(off) = clock_spec.utc.as_ref().and_then(|u| u.offset_seconds) {
        clock.offset = "variable".into();
        clock.adjustment = Some(off);
        clock.basis = Some("utc".into());
    }
    if let Some(t) = &clock_spec.timer {
        let tp = "spec.domain.clock.timer";
        for (field, lname, timer) in [
            ("hpet", "hpet", &t.hpet),
            ("kvm", "kvmclock", &t.kvm),
            ("pit", "pit", &t.pit),
            ("rtc", "rtc", &t.rtc),
            ("hyperv", "hypervclock", &t.hyperv),
        ] {
            let Some(timer) = timer else { continue };
            let tickpolicy = match timer.tick_policy.as_deref() {
                None => None,
                Some(p @ ("delay" | "catchup" | "merge" | "discard"))
                    if matches!(field, "pit" | "rtc" | "hpet") =>
                {
                    Some(p.to_string())
                }
                Some(p) => {
                    return Err(DomainError::invalid(
                        format!("{tp}.{field}.tickPolicy"),
                        format!("{p:?} is not a tick policy of the {field} timer"),
                    ))
                }
            };
            let track = match (field, timer.track.as_deref()) {
                (_, None) => None,
                ("rtc", Some(v @ ("guest" | "wall"))) => Some(v.to_string()),
                (_, Some(v)) => {
                    return Err(DomainError::invalid(
                        format!("{tp}.{field}.track"),
                        format!("{v:?}: only the rtc timer tracks, and only guest or wall"),
                    ))
                }
            };
            clock.timers.push(TimerPlan {
                name: lname.into(),
                present: Some(yes_no(timer.present != Some(false))),
                tickpolicy,
                track,
            });
        }
    }

    // Reboot behaviour: `spec.domain.rebootPolicy` (KubeVirt's default `Reboot` restarts).
    let on_reboot = reboot_action(d.reboot_policy.as_deref())?;

    // Devices.
    let dev = &d.devices;
    let dp = "spec.domain.devices";
    if !dev.gpus.is_empty() {
        return Err(DomainError::unsupported(
            format!("{dp}.gpus"),
            "GPUs (device plugins or DRA claims) are not available to this launcher",
        ));
    }
    if !dev.host_devices.is_empty() {
        return Err(DomainError::unsupported(
            format!("{dp}.hostDevices"),
            "host devices (PCI, USB, mediated) are not available to this launcher",
        ));
    }
    if !dev.filesystems.is_empty() {
        return Err(DomainError::unsupported(
            format!("{dp}.filesystems"),
            "virtiofs filesystems are not supported",
        ));
    }
    unsupported_if(
        &dev.client_passthrough,
        &format!("{dp}.clientPassthrough"),
        "USB redirection is not supported",
    )?;
    unsupported_if(
        &d.launch_security,
        "spec.domain.launchSecurity",
        "confidential computing (SEV/TDX) is not supported",
    )?;
    let transitional = dev.use_virtio_transitional == Some(true);
    let virtio_model = if transitional {
        "virtio-transitional"
    } else {
        "virtio-non-transitional"
    }
    .to_string();

    let vmi_dir = vmi_run_dir(&facts.run_dir, vmi);
    let mut usb_needed = false;
    let mut controllers = Vec::new();

    // Disks.
    let (disks, iothreads, disk_prep, disk_usb, scsi, sata) =
        plan_disks(vmi, facts, vcpus, &virtio_model, &mut notes)?;
    prepare.extend(disk_prep);
    usb_needed |= disk_usb;
    if sata {
        controllers.push(ControllerPlan {
            kind: "sata".into(),
            index: 0,
            model: None,
        });
    }
    if scsi {
        controllers.push(ControllerPlan {
            kind: "scsi".into(),
            index: 0,
            model: Some(virtio_model.clone()),
        });
    }

    // Interfaces.
    let mut interfaces = Vec::new();
    let mut hostdevs = Vec::new();
    let by_name: HashMap<&str, &NicInput> = nics.iter().map(|n| (n.name.as_str(), n)).collect();
    for (i, iface) in dev.interfaces.iter().enumerate() {
        let ip = format!("{dp}.interfaces[{i}]");
        check_text(&format!("{ip}.name"), &iface.name)?;
        match iface.state.as_deref() {
            Some("absent") => {
                notes.push(format!(
                    "interface {:?} has state absent and is not attached",
                    iface.name
                ));
                continue;
            }
            None | Some("up") | Some("down") => {}
            Some(s) => {
                return Err(DomainError::invalid(
                    format!("{ip}.state"),
                    format!("{s:?} is not up, down or absent"),
                ))
            }
        }
        let nic = by_name
            .get(iface.name.as_str())
            .ok_or_else(|| DomainError::NicMismatch {
                name: iface.name.clone(),
                message: "the network result has no entry for this interface".into(),
            })?;
        let pci_address = iface
            .pci_address
            .as_deref()
            .map(|p| parse_pci(p, &format!("{ip}.pciAddress")))
            .transpose()?;
        let kind = iface.binding_kind();
        match &nic.attach {
            NicAttach::Hostdev { pci_address: src } => {
                if kind != Some(BindingKind::Sriov) {
                    return Err(DomainError::NicMismatch {
                        name: iface.name.clone(),
                        message: "a hostdev attachment for a binding that is not SR-IOV".into(),
                    });
                }
                let source =
                    parse_pci(src, &format!("network result {:?}", iface.name)).map_err(|e| {
                        DomainError::NicMismatch {
                            name: iface.name.clone(),
                            message: e.to_string(),
                        }
                    })?;
                hostdevs.push(HostdevPlan {
                    name: iface.name.clone(),
                    source,
                    boot_order: iface.boot_order,
                    pci_address,
                    acpi_index: iface.acpi_index,
                });
            }
            attach => {
                let model = match iface.model.as_deref() {
                    None | Some("virtio") => virtio_model.clone(),
                    Some(m @ ("e1000" | "e1000e" | "igb" | "ne2k_pci" | "pcnet" | "rtl8139")) => {
                        m.to_string()
                    }
                    Some(m) => {
                        return Err(DomainError::invalid(
                            format!("{ip}.model"),
                            format!(
                                "{m:?} is not one of virtio, e1000, e1000e, igb, ne2k_pci, \
                                 pcnet, rtl8139"
                            ),
                        ))
                    }
                };
                let is_virtio = model.starts_with("virtio");
                let mac = normalize_mac(&nic.mac).ok_or_else(|| {
                    DomainError::invalid(
                        format!("{ip}.macAddress"),
                        format!("{:?} is not a unicast MAC address", nic.mac),
                    )
                })?;
                // Multiqueue is a tap feature: passt's socket backend has a single queue.
                let queues = nic.queues.filter(|q| {
                    *q > 1 && is_virtio && matches!(attach, NicAttach::Ethernet { .. })
                });
                let (kind_s, target_dev, driver_name, port_forwards) = match attach {
                    NicAttach::Ethernet { device } => {
                        check_text(&format!("network result {:?}", iface.name), device)?;
                        (
                            "ethernet",
                            Some(device.clone()),
                            queues.map(|_| "vhost".to_string()),
                            vec![],
                        )
                    }
                    NicAttach::Passt { ports } => ("user", None, None, port_forwards(ports)),
                    NicAttach::Hostdev { .. } => unreachable!("handled above"),
                };
                interfaces.push(InterfacePlan {
                    kind: kind_s.into(),
                    name: iface.name.clone(),
                    mac,
                    model,
                    target_dev,
                    // passt: no <mtu>. libvirt 11.3 then tries to set the MTU of a host
                    // interface that does not exist ("Cannot set interface MTU on '(null)'")
                    // and refuses to start the domain; passt gives the guest its own MTU
                    // (65520) over DHCP anyway.
                    mtu: nic
                        .mtu
                        .filter(|_| !matches!(attach, NicAttach::Passt { .. })),
                    driver_name,
                    queues,
                    boot_order: iface.boot_order,
                    rom_off: iface.boot_order.is_none(),
                    link_down: iface.state.as_deref() == Some("down"),
                    pci_address,
                    acpi_index: iface.acpi_index,
                    port_forwards,
                });
            }
        }
    }

    // Console, graphics, inputs and the rest.
    let serial = (dev.autoattach_serial_console != Some(false)).then(|| SerialPlan {
        socket: vmi_dir.join("virt-serial0").display().to_string(),
        log: vmi_dir.join("virt-serial0-log").display().to_string(),
    });
    let vnc = dev.autoattach_graphics_device != Some(false);
    let vnc_socket = vnc.then(|| vmi_dir.join("virt-vnc").display().to_string());
    let video_model = vnc.then(|| {
        if bootloader.efi.is_some() {
            "bochs".to_string()
        } else {
            "vga".to_string()
        }
    });
    let mut inputs = Vec::new();
    for (i, inp) in dev.inputs.iter().enumerate() {
        let p = format!("{dp}.inputs[{i}]");
        check_text(&format!("{p}.name"), &inp.name)?;
        if inp.input_type != "tablet" {
            return Err(DomainError::invalid(
                format!("{p}.type"),
                format!("{:?}: only tablet inputs are supported", inp.input_type),
            ));
        }
        let bus = inp.bus.clone().unwrap_or_else(|| "usb".into());
        match bus.as_str() {
            "usb" => usb_needed = true,
            "virtio" => {}
            other => {
                return Err(DomainError::invalid(
                    format!("{p}.bus"),
                    format!("{other:?} is not usb or virtio"),
                ))
            }
        }
        inputs.push(InputPlan {
            name: inp.name.clone(),
            kind: "tablet".into(),
            bus,
        });
    }
    if inputs.is_empty() && dev.autoattach_input_device == Some(true) {
        // KubeVirt's autoattachInputDevice: a USB tablet for graphical consoles.
        usb_needed = true;
        inputs.push(InputPlan {
            name: "default-0".into(),
            kind: "tablet".into(),
            bus: "usb".into(),
        });
    }
    controllers.insert(
        0,
        ControllerPlan {
            kind: "usb".into(),
            index: 0,
            model: Some(if usb_needed { "qemu-xhci" } else { "none" }.into()),
        },
    );
    let balloon = dev.autoattach_mem_balloon != Some(false);
    let memballoon_model = if balloon {
        virtio_model.clone()
    } else {
        "none".to_string()
    };
    let rng_model = dev.rng.as_ref().map(|_| virtio_model.clone());
    let watchdog = match &dev.watchdog {
        None => None,
        Some(w) => {
            let wd = w.i6300esb.as_ref().ok_or_else(|| {
                DomainError::invalid(format!("{dp}.watchdog"), "name a watchdog model (i6300esb)")
            })?;
            let action = match wd.action.as_deref() {
                None | Some("poweroff") => "poweroff",
                Some("reset") => "reset",
                Some("shutdown") => "shutdown",
                Some(a) => {
                    return Err(DomainError::invalid(
                        format!("{dp}.watchdog.i6300esb.action"),
                        format!("{a:?} is not poweroff, reset or shutdown"),
                    ))
                }
            };
            Some(WatchdogPlan {
                model: "i6300esb".into(),
                action: action.into(),
            })
        }
    };
    let tpm = match &dev.tpm {
        Some(t) if t.enabled != Some(false) => {
            if t.persistent == Some(true) {
                return Err(DomainError::unsupported(
                    format!("{dp}.tpm.persistent"),
                    "a persistent TPM needs a backend-storage PVC, which this launcher does not have",
                ));
            }
            Some(TpmPlan {
                model: "tpm-crb".into(),
                version: "2.0".into(),
                persistent: false,
            })
        }
        _ => None,
    };
    let vsock_model = (dev.autoattach_vsock == Some(true)).then(|| virtio_model.clone());
    let sound_model = match &dev.sound {
        None => None,
        Some(s) => match s.get("model").and_then(|m| m.as_str()) {
            None | Some("ich9") => Some("ich9".to_string()),
            Some("ac97") => Some("ac97".to_string()),
            Some(m) => {
                return Err(DomainError::invalid(
                    format!("{dp}.sound.model"),
                    format!("{m:?} is not ich9 or ac97"),
                ))
            }
        },
    };

    let devices = DevicesPlan {
        disks,
        controllers,
        interfaces,
        hostdevs,
        serial,
        guest_agent_socket: vmi_dir.join("org.qemu.guest_agent.0").display().to_string(),
        vnc_socket,
        video_model,
        inputs,
        memballoon_model,
        memballoon_stats_period: balloon.then_some(10),
        rng_model,
        watchdog,
        tpm,
        vsock_model,
        sound_model,
    };

    Ok(DomainPlan {
        hypervisor: facts.hypervisor,
        name: format!("{namespace}_{name}"),
        uuid,
        metadata,
        memory_bytes,
        memory_backing,
        vcpus,
        iothreads,
        cputune,
        cpu,
        sysinfo,
        os,
        features,
        clock,
        on_poweroff: "destroy".into(),
        on_reboot,
        on_crash: "destroy".into(),
        devices,
        prepare,
        notes,
    })
}

/// `on_reboot` from KubeVirt's `rebootPolicy`: `Reboot` (default) restarts the guest,
/// `Terminate` ends the VMI.
pub fn reboot_action(policy: Option<&str>) -> Result<String, DomainError> {
    match policy {
        None | Some("Reboot") => Ok("restart".into()),
        Some("Terminate") => Ok("destroy".into()),
        Some(p) => Err(DomainError::invalid(
            "spec.domain.rebootPolicy",
            format!("{p:?} is not Reboot or Terminate"),
        )),
    }
}

fn normalize_mac(m: &str) -> Option<String> {
    let parts: Vec<&str> = m.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut bytes = [0u8; 6];
    for (b, p) in bytes.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if bytes[0] & 1 == 1 {
        return None;
    }
    Some(
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Groups ports by protocol into contiguous ranges.
fn port_forwards(ports: &[super::PasstPort]) -> Vec<PortForwardPlan> {
    let mut by_proto: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for p in ports {
        by_proto
            .entry(p.protocol.to_ascii_lowercase())
            .or_default()
            .push(p.port);
    }
    by_proto
        .into_iter()
        .map(|(proto, mut ports)| {
            ports.sort_unstable();
            ports.dedup();
            let mut ranges: Vec<PortRangePlan> = Vec::new();
            for p in ports {
                match ranges.last_mut() {
                    Some(r) if r.end.unwrap_or(r.start).checked_add(1) == Some(p) => {
                        r.end = Some(p)
                    }
                    _ => ranges.push(PortRangePlan {
                        start: p,
                        end: None,
                    }),
                }
            }
            PortForwardPlan { proto, ranges }
        })
        .collect()
}

/// Target name: `vd` + letters (a…z, aa…) for virtio, `sd` + letters otherwise.
fn target_name(prefix: &str, mut n: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    letters.reverse();
    format!("{prefix}{}", String::from_utf8(letters).unwrap_or_default())
}

type DiskOutcome = (Vec<DiskPlan>, u32, Vec<PrepStep>, bool, bool, bool);

fn plan_disks(
    vmi: &Vmi,
    facts: &PodFacts,
    vcpus: u32,
    virtio_model: &str,
    notes: &mut Vec<String>,
) -> Result<DiskOutcome, DomainError> {
    let d = &vmi.spec.domain;
    let dp = "spec.domain.devices.disks";
    let volumes: HashMap<&str, (usize, &Volume)> = vmi
        .spec
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), (i, v)))
        .collect();
    let mut counters: HashMap<&str, usize> = HashMap::new();
    let mut disks = Vec::new();
    let mut prepare = Vec::new();
    let (mut usb, mut scsi, mut sata) = (false, false, false);
    let mut boot_orders = HashMap::new();
    for (i, disk) in d.devices.disks.iter().enumerate() {
        let p = format!("{dp}[{i}]");
        check_text(&format!("{p}.name"), &disk.name)?;
        let (vol_index, vol) = *volumes.get(disk.name.as_str()).ok_or_else(|| {
            DomainError::invalid(
                format!("{p}.name"),
                format!("no volume named {:?} in spec.volumes", disk.name),
            )
        })?;
        let vp = format!("spec.volumes[{vol_index}]");
        let kinds = [
            disk.disk.is_some(),
            disk.cdrom.is_some(),
            disk.lun.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return Err(DomainError::invalid(&p, "set only one of disk, cdrom, lun"));
        }
        let (device, bus, readonly, tray, dpath) = if let Some(c) = &disk.cdrom {
            (
                "cdrom",
                c.bus.clone().unwrap_or_else(|| "sata".into()),
                c.readonly != Some(false),
                c.tray.clone(),
                format!("{p}.cdrom"),
            )
        } else if let Some(l) = &disk.lun {
            if l.reservation == Some(true) {
                return Err(DomainError::unsupported(
                    format!("{p}.lun.reservation"),
                    "SCSI persistent reservations need the pr-helper, which this launcher does not run",
                ));
            }
            (
                "lun",
                l.bus.clone().unwrap_or_else(|| "scsi".into()),
                l.readonly == Some(true),
                None,
                format!("{p}.lun"),
            )
        } else {
            let t = disk.disk.clone().unwrap_or_default();
            (
                "disk",
                t.bus.clone().unwrap_or_else(|| "virtio".into()),
                t.readonly == Some(true),
                None,
                format!("{p}.disk"),
            )
        };
        match (device, bus.as_str()) {
            ("disk", "virtio" | "sata" | "scsi" | "usb") => {}
            ("cdrom", "sata" | "scsi" | "usb") => {}
            ("lun", "scsi") => {}
            _ => {
                return Err(DomainError::invalid(
                    format!("{dpath}.bus"),
                    format!("a {device} cannot use bus {bus:?}"),
                ))
            }
        }
        let tray = match tray.as_deref() {
            None | Some("closed") => None,
            Some("open") => Some("open".to_string()),
            Some(t) => {
                return Err(DomainError::invalid(
                    format!("{dpath}.tray"),
                    format!("{t:?} is not open or closed"),
                ))
            }
        };
        let pci_address = disk
            .disk
            .as_ref()
            .and_then(|t| t.pci_address.as_deref())
            .map(|a| {
                if bus != "virtio" {
                    Err(DomainError::invalid(
                        format!("{dpath}.pciAddress"),
                        "only virtio disks have a PCI address",
                    ))
                } else {
                    parse_pci(a, &format!("{dpath}.pciAddress"))
                }
            })
            .transpose()?;
        let prefix = if bus == "virtio" { "vd" } else { "sd" };
        let n = counters.entry(prefix).or_insert(0);
        let target_dev = target_name(prefix, *n);
        *n += 1;
        match bus.as_str() {
            "scsi" => scsi = true,
            "sata" => sata = true,
            "usb" => usb = true,
            _ => {}
        }
        if let Some(s) = &disk.serial {
            if s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.+- ".contains(c))
            {
                return Err(DomainError::invalid(
                    format!("{p}.serial"),
                    format!("{s:?}: a disk serial has only letters, digits, space and _ . + -"),
                ));
            }
        }
        if let Some(b) = disk.boot_order {
            if b == 0 {
                return Err(DomainError::invalid(
                    format!("{p}.bootOrder"),
                    "boot orders start at 1",
                ));
            }
            if let Some(other) = boot_orders.insert(b, p.clone()) {
                return Err(DomainError::invalid(
                    format!("{p}.bootOrder"),
                    format!("boot order {b} is also used by {other}"),
                ));
            }
        }

        // The source.
        let kind = vol.kind().ok_or_else(|| {
            DomainError::invalid(&vp, "needs exactly one source (containerDisk, …)")
        })?;
        let (mut source_type, source, format, ro_forced) = match kind {
            VolumeKind::ContainerDisk => {
                let c = vol.container_disk.as_ref().expect("kind says so");
                if c.path.is_some() {
                    // The image's inner path is resolved by whoever mounts the container disk.
                    check_text(
                        &format!("{vp}.containerDisk.path"),
                        c.path.as_deref().unwrap_or(""),
                    )?;
                }
                let backing = container_disk_path(&facts.container_disk_dir, vol_index);
                let overlay = overlay_path(&facts.run_dir, &vol.name);
                prepare.push(PrepStep::Overlay {
                    volume: vol.name.clone(),
                    backing,
                    overlay: overlay.clone(),
                });
                ("file", overlay, "qcow2", false)
            }
            VolumeKind::Ephemeral => {
                let backing = pvc_image_path(&facts.run_dir, &vol.name);
                let overlay = overlay_path(&facts.run_dir, &vol.name);
                prepare.push(PrepStep::Overlay {
                    volume: vol.name.clone(),
                    backing,
                    overlay: overlay.clone(),
                });
                ("file", overlay, "qcow2", false)
            }
            VolumeKind::PersistentVolumeClaim | VolumeKind::DataVolume => {
                let pvc_ro = vol
                    .persistent_volume_claim
                    .as_ref()
                    .is_some_and(|p| p.read_only == Some(true));
                if facts.block_volumes.contains(&vol.name) || device == "lun" {
                    let dev = block_device_path(&vol.name);
                    prepare.push(PrepStep::MustExist {
                        volume: vol.name.clone(),
                        path: dev.clone(),
                        what: "the block volume".into(),
                    });
                    ("block", dev, "raw", pvc_ro)
                } else {
                    let img = pvc_image_path(&facts.run_dir, &vol.name);
                    prepare.push(PrepStep::MustExist {
                        volume: vol.name.clone(),
                        path: img.clone(),
                        what: "the volume's disk image".into(),
                    });
                    ("file", img, "raw", pvc_ro)
                }
            }
            VolumeKind::HostDisk => {
                let h = vol.host_disk.as_ref().expect("kind says so");
                let hp = format!("{vp}.hostDisk");
                if !h.path.starts_with('/') {
                    return Err(DomainError::invalid(
                        format!("{hp}.path"),
                        format!("{:?} is not an absolute path", h.path),
                    ));
                }
                check_text(&format!("{hp}.path"), &h.path)?;
                match h.disk_type.as_str() {
                    "Disk" => prepare.push(PrepStep::MustExist {
                        volume: vol.name.clone(),
                        path: h.path.clone().into(),
                        what: "the host disk".into(),
                    }),
                    "DiskOrCreate" => {
                        let cap = h.capacity.as_deref().ok_or_else(|| {
                            DomainError::invalid(
                                format!("{hp}.capacity"),
                                "DiskOrCreate needs a capacity",
                            )
                        })?;
                        let size = quantity_bytes(cap).filter(|s| *s > 0).ok_or_else(|| {
                            DomainError::invalid(
                                format!("{hp}.capacity"),
                                format!("{cap:?} is not a size"),
                            )
                        })?;
                        prepare.push(PrepStep::HostDiskCreate {
                            volume: vol.name.clone(),
                            path: h.path.clone().into(),
                            size_bytes: size,
                        });
                    }
                    t => {
                        return Err(DomainError::invalid(
                            format!("{hp}.type"),
                            format!("{t:?} is not Disk or DiskOrCreate"),
                        ))
                    }
                }
                ("file", PathBuf::from(&h.path), "raw", false)
            }
            VolumeKind::EmptyDisk => {
                let cap = &vol.empty_disk.as_ref().expect("kind says so").capacity;
                let size = quantity_bytes(cap)
                    .map(|s| s & !((1 << 20) - 1))
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        DomainError::invalid(
                            format!("{vp}.emptyDisk.capacity"),
                            format!("{cap:?} is not a size of at least 1Mi"),
                        )
                    })?;
                let path = empty_disk_path(&facts.run_dir, &vol.name);
                prepare.push(PrepStep::EmptyDisk {
                    volume: vol.name.clone(),
                    path: path.clone(),
                    size_bytes: size,
                });
                ("file", path, "qcow2", false)
            }
            VolumeKind::CloudInitNoCloud | VolumeKind::CloudInitConfigDrive => {
                let (flavor, src, field) = if kind == VolumeKind::CloudInitNoCloud {
                    (
                        CloudInitFlavor::NoCloud,
                        vol.cloud_init_no_cloud.as_ref().expect("kind says so"),
                        "cloudInitNoCloud",
                    )
                } else {
                    (
                        CloudInitFlavor::ConfigDrive,
                        vol.cloud_init_config_drive.as_ref().expect("kind says so"),
                        "cloudInitConfigDrive",
                    )
                };
                let cp = format!("{vp}.{field}");
                let secret_dir = facts.run_dir.join("secret").join(&vol.name);
                let user_data = cloud_init_data(
                    &cp,
                    ("userData", src.user_data.as_deref()),
                    ("userDataBase64", src.user_data_base64.as_deref()),
                    src.secret_ref
                        .as_ref()
                        .map(|_| vec![secret_dir.join("userdata"), secret_dir.join("userData")]),
                )?
                .unwrap_or(DataSource::Inline(String::new()));
                let network_data = cloud_init_data(
                    &cp,
                    ("networkData", src.network_data.as_deref()),
                    ("networkDataBase64", src.network_data_base64.as_deref()),
                    src.network_data_secret_ref.as_ref().map(|_| {
                        vec![
                            secret_dir.join("networkdata"),
                            secret_dir.join("networkData"),
                        ]
                    }),
                )?;
                let iso = cloud_init_iso_path(&facts.run_dir, &vol.name, flavor);
                let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
                let name = vmi.metadata.name.clone().unwrap_or_default();
                prepare.push(PrepStep::CloudInit {
                    volume: vol.name.clone(),
                    iso: iso.clone(),
                    flavor,
                    instance_id: format!("{name}.{ns}"),
                    hostname: vmi.spec.hostname.clone().unwrap_or(name),
                    user_data,
                    network_data,
                });
                ("file", iso, "raw", true)
            }
            k @ (VolumeKind::ConfigMap
            | VolumeKind::Secret
            | VolumeKind::ServiceAccount
            | VolumeKind::DownwardApi) => {
                let label = match k {
                    VolumeKind::ConfigMap => {
                        vol.config_map.as_ref().and_then(|c| c.volume_label.clone())
                    }
                    VolumeKind::Secret => vol.secret.as_ref().and_then(|c| c.volume_label.clone()),
                    VolumeKind::DownwardApi => vol
                        .downward_api
                        .as_ref()
                        .and_then(|c| c.volume_label.clone()),
                    _ => None,
                }
                .unwrap_or_else(|| "cfgdata".into());
                if label.is_empty()
                    || label.len() > 32
                    || !label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
                {
                    return Err(DomainError::invalid(
                        format!("{vp}.volumeLabel"),
                        format!("{label:?}: an ISO label is 1 to 32 letters, digits, _ or -"),
                    ));
                }
                let (src, iso) = dir_iso_paths(&facts.run_dir, k, &vol.name);
                prepare.push(PrepStep::DirIso {
                    volume: vol.name.clone(),
                    iso: iso.clone(),
                    source_dir: src,
                    label,
                });
                ("file", iso, "raw", true)
            }
            VolumeKind::Sysprep => {
                return Err(DomainError::unsupported(
                    format!("{vp}.sysprep"),
                    "sysprep volumes are not supported",
                ))
            }
            VolumeKind::MemoryDump => {
                return Err(DomainError::unsupported(
                    format!("{vp}.memoryDump"),
                    "memory dump volumes are not supported",
                ))
            }
        };
        if device == "lun" && source_type != "block" {
            return Err(DomainError::invalid(
                format!("{p}.lun"),
                "a lun needs a block-mode PersistentVolumeClaim or DataVolume",
            ));
        }
        if device == "lun" {
            source_type = "block";
        }
        // libvirt refuses read-only SATA hard disks ("readonly sata disks are not supported").
        let readonly = if device == "disk" && bus == "sata" && (readonly || ro_forced) {
            if readonly || kind == VolumeKind::PersistentVolumeClaim {
                return Err(DomainError::unsupported(
                    format!("{dpath}.readonly"),
                    "libvirt cannot make a SATA hard disk read-only; use bus virtio or scsi, or a cdrom",
                ));
            }
            // A generated ISO (cloud-init, config) is rebuilt every start: writable is harmless.
            notes.push(format!(
                "disk {:?} on SATA is attached writable: libvirt has no read-only SATA disks",
                disk.name
            ));
            false
        } else {
            readonly || ro_forced
        };
        let shareable = disk.shareable == Some(true)
            || vol
                .host_disk
                .as_ref()
                .is_some_and(|h| h.shared == Some(true));

        // Cache and I/O.
        let direct = !facts.no_direct_io.contains(&vol.name);
        let cache = match disk.cache.as_deref() {
            None => {
                if direct {
                    "none"
                } else {
                    "writethrough"
                }
            }
            Some("none") if !direct => {
                return Err(DomainError::PodFact {
                    what: format!("{p}.cache"),
                    message: format!(
                        "cache none needs O_DIRECT, which the file of volume {:?} does not support",
                        vol.name
                    ),
                })
            }
            Some(c @ ("none" | "writethrough" | "writeback")) => c,
            Some(c) => {
                return Err(DomainError::invalid(
                    format!("{p}.cache"),
                    format!("{c:?} is not none, writethrough or writeback"),
                ))
            }
        }
        .to_string();
        if shareable && cache != "none" {
            return Err(DomainError::invalid(
                format!("{p}.shareable"),
                "a shareable disk needs cache none (and a file that supports O_DIRECT)",
            ));
        }
        let io = match disk.io.as_deref() {
            None => Some(if source_type == "block" && cache == "none" {
                "native"
            } else {
                "threads"
            }),
            Some("default") => None,
            Some("native") if cache != "none" => {
                return Err(DomainError::invalid(
                    format!("{p}.io"),
                    "io native needs cache none",
                ))
            }
            Some(v @ ("native" | "threads")) => Some(v),
            Some(v) => {
                return Err(DomainError::invalid(
                    format!("{p}.io"),
                    format!("{v:?} is not native, threads or default"),
                ))
            }
        }
        .map(str::to_string);
        let error_policy = match disk.error_policy.as_deref() {
            None => Some("stop"),
            Some(v @ ("stop" | "ignore" | "report" | "enospace")) => Some(v),
            Some(v) => {
                return Err(DomainError::invalid(
                    format!("{p}.errorPolicy"),
                    format!("{v:?} is not stop, ignore, report or enospace"),
                ))
            }
        }
        .map(str::to_string);
        let (logical_block_size, physical_block_size) = match &disk.block_size {
            None => (None, None),
            Some(bs) => {
                let custom = bs.get("custom").ok_or_else(|| {
                    DomainError::unsupported(
                        format!("{p}.blockSize"),
                        "only custom block sizes are supported (matchVolume is not)",
                    )
                })?;
                let get = |k: &str| -> Result<u64, DomainError> {
                    custom
                        .get(k)
                        .and_then(|v| v.as_u64())
                        .filter(|v| v.is_power_of_two() && (512..=65536).contains(v))
                        .ok_or_else(|| {
                            DomainError::invalid(
                                format!("{p}.blockSize.custom.{k}"),
                                "must be a power of two from 512 to 65536",
                            )
                        })
                };
                (Some(get("logical")?), Some(get("physical")?))
            }
        };
        let is_virtio = bus == "virtio";
        let queues =
            (is_virtio && d.devices.block_multi_queue == Some(true) && vcpus > 1).then_some(vcpus);
        disks.push(DiskPlan {
            name: disk.name.clone(),
            device: device.into(),
            source_type: source_type.into(),
            source: source.display().to_string(),
            format: format.into(),
            cache,
            io,
            error_policy,
            discard: None,
            iothread: None,
            queues,
            target_dev,
            target_bus: bus.clone(),
            tray,
            model: is_virtio.then(|| virtio_model.to_string()),
            readonly,
            shareable,
            serial: disk.serial.clone(),
            boot_order: disk.boot_order,
            logical_block_size,
            physical_block_size,
            pci_address,
        });
    }

    // IOThreads (virtio disks only).
    let policy = d.io_threads_policy.as_deref();
    let dedicated: Vec<bool> = d
        .devices
        .disks
        .iter()
        .map(|x| x.dedicated_io_thread == Some(true))
        .collect();
    let mut iothreads = 0u32;
    match policy {
        None | Some("shared") | Some("auto") => {}
        Some("supplementalPool") => {
            return Err(DomainError::unsupported(
                "spec.domain.ioThreadsPolicy",
                "supplementalPool is not supported (use shared or auto)",
            ))
        }
        Some(p) => {
            return Err(DomainError::invalid(
                "spec.domain.ioThreadsPolicy",
                format!("{p:?} is not shared or auto"),
            ))
        }
    }
    if policy.is_some() || dedicated.iter().any(|x| *x) {
        let shared: Vec<usize> = (0..disks.len())
            .filter(|i| disks[*i].target_bus == "virtio" && !dedicated[*i])
            .collect();
        let pool = match policy {
            Some("auto") => (2 * vcpus).min(shared.len() as u32).max(1),
            _ => 1,
        };
        if !shared.is_empty() {
            for (k, i) in shared.iter().enumerate() {
                disks[*i].iothread = Some(1 + (k as u32 % pool));
            }
            iothreads = pool;
        }
        for (i, disk) in disks.iter_mut().enumerate() {
            if dedicated[i] {
                if disk.target_bus != "virtio" {
                    return Err(DomainError::invalid(
                        format!("{dp}[{i}].dedicatedIOThread"),
                        "only virtio disks can have an IOThread",
                    ));
                }
                iothreads += 1;
                disk.iothread = Some(iothreads);
            }
        }
    }
    Ok((disks, iothreads, prepare, usb, scsi, sata))
}

fn cloud_init_data(
    path: &str,
    inline: (&str, Option<&str>),
    b64: (&str, Option<&str>),
    secret: Option<Vec<PathBuf>>,
) -> Result<Option<DataSource>, DomainError> {
    let set = [inline.1.is_some(), b64.1.is_some(), secret.is_some()];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(DomainError::invalid(
            format!("{path}.{}", inline.0),
            format!(
                "set only one of {}, {} or a secret reference",
                inline.0, b64.0
            ),
        ));
    }
    if let Some(t) = inline.1 {
        return Ok(Some(DataSource::Inline(t.to_string())));
    }
    if let Some(b) = b64.1 {
        let bytes = base64_decode(b).ok_or_else(|| {
            DomainError::invalid(format!("{path}.{}", b64.0), "is not valid base64")
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            DomainError::invalid(format!("{path}.{}", b64.0), "does not decode to UTF-8 text")
        })?;
        return Ok(Some(DataSource::Inline(text)));
    }
    Ok(secret.map(DataSource::File))
}

/// Standard base64 (padding optional, whitespace ignored).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    let mut seen_pad = false;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            seen_pad = true;
            continue;
        }
        if seen_pad {
            return None;
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::error::{Classify, ExitKind};

    fn vmi(yaml: &str) -> Vmi {
        let mut v = crate::spec::parse_str(yaml, "t").unwrap().vmi;
        crate::spec::defaults::apply(&mut v);
        v
    }

    fn facts() -> PodFacts {
        PodFacts {
            hypervisor: Hypervisor::Kvm,
            run_dir: "/run/x".into(),
            container_disk_dir: "/cd".into(),
            ovmf_dir: "/usr/share/OVMF".into(),
            cpuset: vec![4, 5, 9],
            block_volumes: Default::default(),
            no_direct_io: Default::default(),
            machine_types: vec![],
        }
    }

    const PINNED: &str = "metadata: {name: p}\nspec:\n  domain:\n    memory: {guest: 64Mi}\n    devices: {autoattachPodInterface: false}\n    cpu: {cores: 2, dedicatedCpuPlacement: true, isolateEmulatorThread: true}\n";

    #[test]
    fn dedicated_cpus_pin_to_the_pod_cpuset_and_isolate_the_emulator() {
        let p = plan(&vmi(PINNED), &[], &facts()).unwrap();
        let t = p.cputune.unwrap();
        assert_eq!(
            t.vcpupins,
            vec![
                VcpuPin {
                    vcpu: 0,
                    cpuset: "4".into()
                },
                VcpuPin {
                    vcpu: 1,
                    cpuset: "5".into()
                }
            ]
        );
        assert_eq!(t.emulatorpin, "9");
        let shared = PINNED.replace(", isolateEmulatorThread: true", "");
        let t = plan(&vmi(&shared), &[], &facts()).unwrap().cputune.unwrap();
        assert_eq!(t.emulatorpin, "4,5");
        let mut small = facts();
        small.cpuset = vec![0, 1];
        let e = plan(&vmi(PINNED), &[], &small).unwrap_err();
        assert_eq!(e.exit_kind(), ExitKind::Precondition);
        assert!(e.to_string().contains("needs 3 CPUs"), "{e}");
    }

    const DISKS: &str = "metadata: {name: d}\nspec:\n  domain:\n    memory: {guest: 64Mi}\n    devices:\n      autoattachPodInterface: false\n      disks:\n      - {name: a, disk: {bus: virtio}}\n  volumes:\n  - {name: a, persistentVolumeClaim: {claimName: c}}\n";

    #[test]
    fn cache_follows_o_direct_and_block_volumes_are_devices() {
        let p = plan(&vmi(DISKS), &[], &facts()).unwrap();
        let d = &p.devices.disks[0];
        assert_eq!((d.cache.as_str(), d.source_type.as_str()), ("none", "file"));
        assert_eq!(d.source, "/run/x/vmi-disks/a/disk.img");
        let mut f = facts();
        f.no_direct_io.insert("a".into());
        let d = plan(&vmi(DISKS), &[], &f).unwrap().devices.disks[0].clone();
        assert_eq!(d.cache, "writethrough");
        let e = plan(
            &vmi(&DISKS.replace("bus: virtio}", "bus: virtio}, cache: none")),
            &[],
            &f,
        )
        .unwrap_err();
        assert!(e.to_string().contains("O_DIRECT"), "{e}");
        let mut f = facts();
        f.block_volumes.insert("a".into());
        let d = plan(&vmi(DISKS), &[], &f).unwrap().devices.disks[0].clone();
        assert_eq!(
            (d.source_type.as_str(), d.source.as_str(), d.io.as_deref()),
            ("block", "/dev/a", Some("native"))
        );
    }

    #[test]
    fn an_interface_without_a_network_result_is_a_bug_not_a_guess() {
        let v = vmi("metadata: {name: n}\nspec:\n  domain:\n    memory: {guest: 64Mi}\n");
        assert!(
            !v.spec.domain.devices.interfaces.is_empty(),
            "defaults add the pod interface"
        );
        let e = plan(&v, &[], &facts()).unwrap_err();
        assert_eq!(e.exit_kind(), ExitKind::Internal);
        assert!(e.to_string().contains("\"default\""), "{e}");
    }

    #[test]
    fn an_undefaulted_vmi_is_refused_with_the_field_not_a_panic() {
        let e = plan(&Vmi::default(), &[], &facts()).unwrap_err();
        assert!(e.to_string().starts_with("metadata.name"), "{e}");
        let mut v = Vmi::default();
        v.metadata.name = Some("x".into());
        let e = plan(&v, &[], &facts()).unwrap_err();
        assert!(e.to_string().starts_with("spec.domain.memory.guest"), "{e}");
        assert_eq!(e.exit_kind(), ExitKind::InvalidSpec);
    }

    #[test]
    fn machine_types_are_checked_against_qemu_when_known() {
        let v = vmi("metadata: {name: m}\nspec:\n  domain:\n    memory: {guest: 64Mi}\n    machine: {type: pc-q35-rhel9.6.0}\n    devices: {autoattachPodInterface: false}\n");
        let mut f = facts();
        assert!(plan(&v, &[], &f).is_ok(), "unknown list: not checked");
        f.machine_types = vec!["q35".into(), "pc-q35-10.0".into()];
        let e = plan(&v, &[], &f).unwrap_err();
        assert!(e.to_string().contains("spec.domain.machine.type"), "{e}");
        assert!(e.to_string().contains("pc-q35-10.0"), "{e}");
    }

    #[test]
    fn reboot_policy_maps_to_on_reboot() {
        assert_eq!(reboot_action(None).unwrap(), "restart");
        assert_eq!(reboot_action(Some("Reboot")).unwrap(), "restart");
        assert_eq!(reboot_action(Some("Terminate")).unwrap(), "destroy");
        assert!(reboot_action(Some("Sometimes")).is_err());
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("1024M"), Some(1_024_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("2"), Some(2));
        assert_eq!(quantity_bytes("x"), None);
        assert_eq!(quantity_bytes("1Zi"), None);
    }

    #[test]
    fn targets_count_like_letters() {
        assert_eq!(target_name("vd", 0), "vda");
        assert_eq!(target_name("vd", 25), "vdz");
        assert_eq!(target_name("vd", 26), "vdaa");
        assert_eq!(target_name("sd", 27), "sdab");
    }

    #[test]
    fn derived_macs_are_local_unicast_and_stable() {
        let a = mac_from_seed("u/default");
        assert_eq!(a, mac_from_seed("u/default"));
        assert_ne!(a, mac_from_seed("u/other"));
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "{a}");
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64_decode("cCZzczx3PnJk").unwrap(), b"p&ss<w>rd");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("a$b").is_none());
    }

    #[test]
    fn pci_addresses_parse_and_refuse() {
        let a = parse_pci("0000:81:01.2", "x").unwrap();
        assert_eq!(
            (
                a.domain.as_str(),
                a.bus.as_str(),
                a.slot.as_str(),
                a.function.as_str()
            ),
            ("0x0000", "0x81", "0x01", "0x2")
        );
        assert!(parse_pci("0000:81:20.0", "x").is_err());
        assert!(parse_pci("81:01.0", "x").is_err());
    }

    #[test]
    fn ports_group_into_ranges() {
        let p = |protocol: &str, port| super::super::PasstPort {
            protocol: protocol.into(),
            port,
        };
        let f = port_forwards(&[
            p("tcp", 80),
            p("tcp", 81),
            p("tcp", 82),
            p("udp", 53),
            p("tcp", 443),
        ]);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].proto, "tcp");
        assert_eq!(
            f[0].ranges,
            vec![
                PortRangePlan {
                    start: 80,
                    end: Some(82)
                },
                PortRangePlan {
                    start: 443,
                    end: None
                }
            ]
        );
    }
}
