//! KubeVirt's admission defaults, applied in one place ([`apply`]).
//!
//! In a cluster, KubeVirt's mutating webhook (virt-api) fills these in before the VMI reaches
//! virt-launcher. This launcher is given the manifest directly, so it applies the same defaults
//! itself. Every default only fills a field that is unset, so [`apply`] is idempotent: applying
//! it twice gives the same VMI as applying it once. Validation runs on the defaulted VMI.
//!
//! Where a default depends on cluster configuration (the KubeVirt CR), the value is the one a
//! stock KubeVirt installation uses on an x86_64 (`amd64`) node.
//!
//! | Field | Default | KubeVirt source |
//! |-------|---------|-----------------|
//! | `spec.architecture` | `amd64` | mutating webhook `setDefaultArchitecture`: the cluster's default architecture, the node's (x86_64 here) |
//! | `spec.domain.machine.type` | `q35` | `setDefaultMachineType`: the cluster's machine type for amd64, `q35` in a stock install |
//! | `spec.domain.resources.requests.cpu` / `.memory` | the limit, when only a limit is given | `setDefaultResourceRequests` (as Kubernetes does for pods) |
//! | `spec.domain.resources.requests.memory` | `memory.guest` (else `hugepages.pageSize`) when unset | `setDefaultResourceRequests` with the default memory overcommit of 100% |
//! | `spec.domain.memory.guest` | `resources.requests.memory`, else `resources.limits.memory`, else `memory.hugepages.pageSize` | `setGuestMemory`; user-guide "Resources requests and limits" (memory must be given in `memory.guest` or `resources.requests.memory`) |
//! | `spec.domain.cpu.{sockets,cores,threads}` | when none of the three is set (or all are 0): `sockets` = the CPU **limit**, else the CPU **request**, rounded **up** to a whole CPU (`500m` → 1); `cores` = `threads` = 1 | `SetDefaultGuestCPUTopology`; user-guide "Dedicated CPU resources" ("if spec.domain.cpu is empty then it takes value from requests.cpu or limits.cpu", sockets for best performance) |
//! | `spec.domain.cpu.{sockets,cores,threads}` | 1 each when otherwise unset (or 0) | the converter's topology (`GetCPUTopology`): an unset count is 1 |
//! | `spec.domain.cpu.model` | **left unset**: unset means `host-model`, KubeVirt's `DefaultCPUModel` | kept unset on purpose so that the domain plan can tell "the user chose host-model" from "nothing chosen" and pick a model software emulation (TCG) can run |
//! | `spec.domain.devices.disks` | a disk named after every volume that has no disk | `SetDefaultVolumeDisk` (this is how the example `vmi-sata.yaml` gets its disk) |
//! | `disks[i]` with none of `disk`/`cdrom`/`lun` | `disk: {}` | API `SetDefaults_DiskDevice` |
//! | `disks[i].disk.bus`, `disks[i].cdrom.bus` | `sata` | amd64 webhook `setDefaultAmd64DisksBus`: SATA "since it is typically supported out of the box by guest operating systems" (q35 has no IDE) |
//! | `disks[i].lun.bus` | `scsi` | **deviation**: KubeVirt writes `sata` here too, but libvirt refuses `device='lun'` on a SATA bus; SCSI is the bus LUN passthrough needs |
//! | `disks[i].cdrom.readonly` / `.tray` | `true` / `closed` | API `SetDefaults_CDRomTarget`; API reference "ReadOnly. Defaults to true", "Tray ... Defaults to closed" |
//! | `spec.networks` + `spec.domain.devices.interfaces` | network `default` (`pod: {}`) and interface `default` with `bridge: {}`, only when **both** lists are empty and `autoattachPodInterface` is not `false` | `vmispec.SetDefaultNetworkInterface`: the binding is the KubeVirt CR's `network.defaultNetworkInterface`, whose default is `bridge` |
//! | `interfaces[i].model` | `virtio` | API reference: "Interface model ... Defaults to virtio" (KubeVirt's converter applies it) |
//! | `interfaces[i].ports[j].protocol`, `portRanges[j].protocol` | `TCP` | API reference for `Port.protocol`: "Defaults to TCP" |
//! | `spec.terminationGracePeriodSeconds` | 30 | `DefaultGracePeriodSeconds = 30` (virt-launcher's grace period) |
//! | `firmware.bootloader.efi.secureBoot` | `true` | API reference for `EFI.secureBoot`: "Defaults to true" |
//! | `features.smm` | `{enabled: true}` when secure boot is on and `smm` is absent | **deviation**: KubeVirt's validating webhook refuses secure boot without `features.smm` ("SecureBoot requires SMM"); the launcher turns SMM on instead, as the domain needs it. An explicit `smm: {enabled: false}` is still refused |
//! | `spec.domain.firmware.uuid` | a name-based (SHA-1, v5) UUID of `metadata.name` in namespace `6a1a24a1-4061-4607-8bf4-a3963d0c5895` | the VM controller's stable firmware UUID (`CalculateLegacyUUID`); for a bare VMI KubeVirt picks a random one, we pick the stable one so that restarts keep the guest's identity |
//! | `features.*` given as `{}` (`acpi`, `smm`, `pvspinlock`, `hypervPassthrough`, `apic`, every `hyperv.*` toggle, `hyperv.vendorid`) | `enabled: true` | API `SetDefaults_FeatureState`, `SetDefaults_FeatureAPIC`, `SetDefaults_FeatureVendorID` |
//! | `features.hyperv.spinlocks.spinlocks` | 4096 when spinlocks are enabled | API `SetDefaults_FeatureSpinlocks` |
//! | `clock.timer.*` given as `{}` | `present: true` | API `SetDefaults_{HPET,PIT,KVM,Hyperv,RTC}Timer` |
//! | `devices.watchdog.i6300esb` | `{}` when the watchdog names no model | API `SetDefaults_Watchdog` |
//! | `devices.watchdog.i6300esb.action` | `reset` | API `SetDefaults_I6300ESBWatchdog` (`WatchdogActionReset`) |
//! | `devices.inputs[i].bus` / `.type` | `usb` / `tablet` | API `setDefaults_Input` |
//! | `volumes[i].containerDisk.imagePullPolicy` | `Always` for a `:latest` or untagged image, else `IfNotPresent` | `setDefaultPullPoliciesOnContainerDisks` (Kubernetes' rule) |
//!
//! Not defaulted here (unset keeps KubeVirt's meaning and the consumer decides): the CPU model
//! (`host-model`), the bootloader (BIOS), interface `state` (`up`), disk `cache`/`io`, the
//! hostname (`metadata.name`), `evictionStrategy` and the cluster-wide CPU request (`100m`),
//! which only matter to the scheduler.

use super::quantity;
use super::vmi::*;

/// KubeVirt's namespace for stable firmware UUIDs (see the module docs).
pub const FIRMWARE_UUID_NAMESPACE: uuid::Uuid = uuid::uuid!("6a1a24a1-4061-4607-8bf4-a3963d0c5895");

/// The default grace period, in seconds.
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;

/// Fills in every default KubeVirt's admission webhooks would apply (see the module docs).
/// Idempotent. Never fails: a value that cannot be used (an unparsable quantity) is left for
/// validation to report with its path.
pub fn apply(vmi: &mut Vmi) {
    let name = vmi.metadata.name.clone();
    let spec = &mut vmi.spec;

    if spec.architecture.as_deref().unwrap_or("").is_empty() {
        spec.architecture = Some("amd64".into());
    }
    let machine = spec.domain.machine.get_or_insert_with(Machine::default);
    if machine.machine_type.as_deref().unwrap_or("").is_empty() {
        machine.machine_type = Some("q35".into());
    }

    resource_requests(&mut spec.domain);
    guest_memory(&mut spec.domain);
    cpu_topology(&mut spec.domain);

    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(DEFAULT_GRACE_PERIOD_SECONDS);
    }

    firmware(&mut spec.domain, name.as_deref());
    features(&mut spec.domain);
    clock(&mut spec.domain);

    volume_disks(spec);
    for disk in &mut spec.domain.devices.disks {
        disk_device(disk);
    }
    pod_network(spec);
    for iface in &mut spec.domain.devices.interfaces {
        interface(iface);
    }
    if let Some(w) = &mut spec.domain.devices.watchdog {
        let esb = w.i6300esb.get_or_insert_with(WatchdogAction::default);
        if esb.action.as_deref().unwrap_or("").is_empty() {
            esb.action = Some("reset".into());
        }
    }
    for input in &mut spec.domain.devices.inputs {
        if input.bus.as_deref().unwrap_or("").is_empty() {
            input.bus = Some("usb".into());
        }
        if input.input_type.is_empty() {
            input.input_type = "tablet".into();
        }
    }
    for v in &mut spec.volumes {
        if let Some(cd) = &mut v.container_disk {
            if cd.image_pull_policy.as_deref().unwrap_or("").is_empty() {
                cd.image_pull_policy = Some(pull_policy_for(&cd.image).into());
            }
        }
    }
}

/// Kubernetes' default pull policy: `Always` for `:latest` or an image with no tag or digest.
fn pull_policy_for(image: &str) -> &'static str {
    // The tag is after the last '/', so a registry port (`registry:5000/x`) is not a tag.
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.ends_with(":latest") || !(last.contains(':') || image.contains('@')) {
        "Always"
    } else {
        "IfNotPresent"
    }
}

fn resource_requests(domain: &mut DomainSpec) {
    let r = domain.resources.get_or_insert_with(Resources::default);
    for key in ["cpu", "memory"] {
        let limit_nonzero = r.limits.get(key).is_some_and(|q| !is_zero(q));
        let request_zero = r.requests.get(key).map_or(true, |q| is_zero(q));
        if limit_nonzero && request_zero {
            let limit = r.limits[key].clone();
            r.requests.insert(key.into(), limit);
        }
    }
    if !r.requests.contains_key("memory") {
        let from = domain.memory.as_ref().and_then(|m| {
            m.guest.clone().or_else(|| {
                m.hugepages
                    .as_ref()
                    .and_then(|h| h.page_size.clone())
                    .filter(|p| quantity::parse_bytes(p).is_ok())
            })
        });
        if let Some(q) = from.filter(|q| quantity::parse_bytes(q).is_ok_and(|b| b > 0)) {
            r.requests.insert("memory".into(), q);
        }
    }
}

/// True when `q` parses as zero. An unparsable quantity is not zero (validation reports it).
fn is_zero(q: &str) -> bool {
    quantity::Quantity::parse(q).is_ok_and(|q| q.is_zero())
}

fn guest_memory(domain: &mut DomainSpec) {
    let guest_set = domain.memory.as_ref().is_some_and(|m| m.guest.is_some());
    if guest_set {
        return;
    }
    let r = domain.resources.clone().unwrap_or_default();
    let nonzero = |q: Option<&String>| q.filter(|q| !is_zero(q)).cloned();
    let hugepages = domain
        .memory
        .as_ref()
        .and_then(|m| m.hugepages.as_ref())
        .and_then(|h| h.page_size.clone())
        .filter(|p| quantity::parse_bytes(p).is_ok());
    let guest = nonzero(r.requests.get("memory"))
        .or_else(|| nonzero(r.limits.get("memory")))
        .or(hugepages);
    if let Some(g) = guest {
        domain.memory.get_or_insert_with(Memory::default).guest = Some(g);
    }
}

/// CPU count from a quantity, rounded up like Kubernetes' `Quantity.Value()`.
fn whole_cpus(q: &str) -> Option<u32> {
    let cpus = quantity::Quantity::parse(q).ok()?.to_units_ceil()?;
    u32::try_from(cpus).ok()
}

fn cpu_topology(domain: &mut DomainSpec) {
    let unset = |v: Option<u32>| v.unwrap_or(0) == 0;
    let derive = domain.cpu.as_ref().map_or(true, |c| {
        unset(c.sockets) && unset(c.cores) && unset(c.threads)
    });
    let mut sockets = 1;
    if derive {
        let r = domain.resources.clone().unwrap_or_default();
        let from = r.limits.get("cpu").or_else(|| r.requests.get("cpu"));
        if let Some(n) = from.and_then(|q| whole_cpus(q)) {
            sockets = n.max(1);
        }
    }
    let cpu = domain.cpu.get_or_insert_with(Cpu::default);
    if unset(cpu.sockets) {
        cpu.sockets = Some(sockets);
    }
    if unset(cpu.cores) {
        cpu.cores = Some(1);
    }
    if unset(cpu.threads) {
        cpu.threads = Some(1);
    }
}

fn firmware(domain: &mut DomainSpec, name: Option<&str>) {
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        let fw = domain.firmware.get_or_insert_with(Firmware::default);
        if fw.uuid.as_deref().unwrap_or("").is_empty() {
            fw.uuid =
                Some(uuid::Uuid::new_v5(&FIRMWARE_UUID_NAMESPACE, name.as_bytes()).to_string());
        }
    }
    let efi = domain
        .firmware
        .as_mut()
        .and_then(|f| f.bootloader.as_mut())
        .and_then(|b| b.efi.as_mut());
    let secure = efi.is_some_and(|efi| *efi.secure_boot.get_or_insert(true));
    if secure {
        // Secure boot needs SMM. KubeVirt refuses secure boot when `features.smm` is absent;
        // this launcher turns SMM on instead (an explicit `enabled: false` is still refused).
        let features = domain.features.get_or_insert_with(Features::default);
        features.smm.get_or_insert_with(FeatureState::default);
    }
}

fn enable(f: &mut Option<FeatureState>) {
    if let Some(f) = f {
        f.enabled.get_or_insert(true);
    }
}

fn features(domain: &mut DomainSpec) {
    let Some(f) = &mut domain.features else {
        return;
    };
    enable(&mut f.acpi);
    enable(&mut f.smm);
    enable(&mut f.pvspinlock);
    enable(&mut f.hyperv_passthrough);
    if let Some(apic) = &mut f.apic {
        apic.enabled.get_or_insert(true);
    }
    if let Some(h) = &mut f.hyperv {
        for s in [
            &mut h.relaxed,
            &mut h.vapic,
            &mut h.vpindex,
            &mut h.runtime,
            &mut h.synic,
            &mut h.reset,
            &mut h.frequencies,
            &mut h.reenlightenment,
            &mut h.ipi,
            &mut h.evmcs,
        ] {
            enable(s);
        }
        if let Some(s) = &mut h.spinlocks {
            if *s.enabled.get_or_insert(true) && s.spinlocks.is_none() {
                s.spinlocks = Some(4096);
            }
        }
        if let Some(v) = &mut h.vendorid {
            v.enabled.get_or_insert(true);
        }
    }
}

fn clock(domain: &mut DomainSpec) {
    let Some(timers) = domain.clock.as_mut().and_then(|c| c.timer.as_mut()) else {
        return;
    };
    for t in [
        &mut timers.hpet,
        &mut timers.kvm,
        &mut timers.pit,
        &mut timers.rtc,
        &mut timers.hyperv,
    ]
    .into_iter()
    .flatten()
    {
        t.present.get_or_insert(true);
    }
}

/// Every volume without a disk (or filesystem) of the same name gets a plain disk.
fn volume_disks(spec: &mut VmiSpec) {
    let devices = &mut spec.domain.devices;
    for v in &spec.volumes {
        let has_disk = devices.disks.iter().any(|d| d.name == v.name);
        let has_fs = devices
            .filesystems
            .iter()
            .any(|f| f.get("name").and_then(|n| n.as_str()) == Some(v.name.as_str()));
        if !has_disk && !has_fs {
            devices.disks.push(Disk {
                name: v.name.clone(),
                ..Disk::default()
            });
        }
    }
}

fn disk_device(disk: &mut Disk) {
    if disk.disk.is_none() && disk.cdrom.is_none() && disk.lun.is_none() {
        disk.disk = Some(DiskTarget::default());
    }
    fn bus(b: &mut Option<String>, default: &str) {
        if b.as_deref().unwrap_or("").is_empty() {
            *b = Some(default.into());
        }
    }
    if let Some(d) = &mut disk.disk {
        bus(&mut d.bus, "sata");
    }
    if let Some(c) = &mut disk.cdrom {
        bus(&mut c.bus, "sata");
        c.readonly.get_or_insert(true);
        if c.tray.as_deref().unwrap_or("").is_empty() {
            c.tray = Some("closed".into());
        }
    }
    if let Some(l) = &mut disk.lun {
        bus(&mut l.bus, "scsi");
    }
}

fn pod_network(spec: &mut VmiSpec) {
    if spec.domain.devices.autoattach_pod_interface == Some(false) {
        return;
    }
    if !spec.networks.is_empty() || !spec.domain.devices.interfaces.is_empty() {
        return;
    }
    spec.networks.push(Network {
        name: "default".into(),
        pod: Some(PodNetwork::default()),
        multus: None,
    });
    spec.domain.devices.interfaces.push(Interface {
        name: "default".into(),
        bridge: Some(serde_json::json!({})),
        ..Interface::default()
    });
}

fn interface(iface: &mut Interface) {
    if iface.model.as_deref().unwrap_or("").is_empty() {
        iface.model = Some("virtio".into());
    }
    for p in &mut iface.ports {
        if p.protocol.as_deref().unwrap_or("").is_empty() {
            p.protocol = Some("TCP".into());
        }
    }
    for p in &mut iface.port_ranges {
        if p.protocol.as_deref().unwrap_or("").is_empty() {
            p.protocol = Some("TCP".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(yaml: &str) -> Vmi {
        crate::spec::parse_str(yaml, "test").unwrap().vmi
    }
    fn defaulted(yaml: &str) -> Vmi {
        let mut v = vmi(yaml);
        apply(&mut v);
        v
    }
    const MINIMAL: &str = "metadata: {name: t}\nspec: {domain: {devices: {}}}\n";

    fn cpu(v: &Vmi) -> (u32, u32, u32) {
        let c = v.spec.domain.cpu.as_ref().unwrap();
        (c.sockets.unwrap(), c.cores.unwrap(), c.threads.unwrap())
    }
    fn guest(v: &Vmi) -> Option<&str> {
        v.spec.domain.memory.as_ref()?.guest.as_deref()
    }

    #[test]
    fn architecture_defaults_to_amd64_and_keeps_a_given_one() {
        assert_eq!(
            defaulted(MINIMAL).spec.architecture.as_deref(),
            Some("amd64")
        );
        let v = defaulted("spec: {architecture: arm64}");
        assert_eq!(v.spec.architecture.as_deref(), Some("arm64"));
    }

    #[test]
    fn machine_type_defaults_to_q35() {
        let v = defaulted(MINIMAL);
        assert_eq!(
            v.spec.domain.machine.unwrap().machine_type.as_deref(),
            Some("q35")
        );
        let v = defaulted("spec: {domain: {machine: {type: pc-q35-rhel9.4.0}}}");
        assert_eq!(
            v.spec.domain.machine.unwrap().machine_type.as_deref(),
            Some("pc-q35-rhel9.4.0")
        );
        let v = defaulted("spec: {domain: {machine: {type: ''}}}");
        assert_eq!(
            v.spec.domain.machine.unwrap().machine_type.as_deref(),
            Some("q35")
        );
    }

    #[test]
    fn requests_default_to_limits() {
        let v = defaulted("spec: {domain: {resources: {limits: {cpu: 2, memory: 1Gi}}}}");
        let r = v.spec.domain.resources.unwrap();
        assert_eq!(r.requests["cpu"], "2");
        assert_eq!(r.requests["memory"], "1Gi");
        // A given request is kept.
        let v = defaulted("spec: {domain: {resources: {limits: {cpu: 2}, requests: {cpu: 500m}}}}");
        assert_eq!(v.spec.domain.resources.unwrap().requests["cpu"], "500m");
    }

    #[test]
    fn memory_request_defaults_to_guest_memory() {
        let v = defaulted("spec: {domain: {memory: {guest: 512Mi}}}");
        assert_eq!(v.spec.domain.resources.unwrap().requests["memory"], "512Mi");
        let v = defaulted("spec: {domain: {memory: {hugepages: {pageSize: 2Mi}}}}");
        assert_eq!(v.spec.domain.resources.unwrap().requests["memory"], "2Mi");
    }

    #[test]
    fn guest_memory_is_kept_when_given() {
        let v = defaulted(
            "spec: {domain: {memory: {guest: 1Gi}, resources: {requests: {memory: 2Gi}}}}",
        );
        assert_eq!(guest(&v), Some("1Gi"));
    }

    #[test]
    fn guest_memory_comes_from_requests_first() {
        let v = defaulted(
            "spec: {domain: {resources: {requests: {memory: 1Gi}, limits: {memory: 2Gi}}}}",
        );
        assert_eq!(guest(&v), Some("1Gi"));
    }

    #[test]
    fn guest_memory_comes_from_limits_when_no_request() {
        let v = defaulted("spec: {domain: {resources: {limits: {memory: 3Gi}}}}");
        assert_eq!(guest(&v), Some("3Gi"));
    }

    #[test]
    fn guest_memory_comes_from_hugepages_last() {
        let v = defaulted("spec: {domain: {memory: {hugepages: {pageSize: 1Gi}}}}");
        assert_eq!(guest(&v), Some("1Gi"));
    }

    #[test]
    fn no_memory_anywhere_stays_unset_for_validation_to_report() {
        assert_eq!(guest(&defaulted(MINIMAL)), None);
    }

    #[test]
    fn cpu_topology_defaults_to_one_of_each() {
        assert_eq!(cpu(&defaulted(MINIMAL)), (1, 1, 1));
    }

    #[test]
    fn cpu_sockets_come_from_the_limit_first() {
        let v = defaulted("spec: {domain: {resources: {requests: {cpu: 2}, limits: {cpu: 4}}}}");
        assert_eq!(cpu(&v), (4, 1, 1));
    }

    #[test]
    fn cpu_sockets_come_from_the_request_without_a_limit() {
        let v = defaulted("spec: {domain: {resources: {requests: {cpu: 3}}}}");
        assert_eq!(cpu(&v), (3, 1, 1));
    }

    #[test]
    fn cpu_sockets_round_fractional_cpus_up() {
        let v = defaulted("spec: {domain: {resources: {requests: {cpu: 500m}}}}");
        assert_eq!(cpu(&v), (1, 1, 1));
        let v = defaulted("spec: {domain: {resources: {requests: {cpu: 2500m}}}}");
        assert_eq!(cpu(&v), (3, 1, 1));
        let v = defaulted("spec: {domain: {resources: {requests: {cpu: '0'}}}}");
        assert_eq!(cpu(&v), (1, 1, 1), "never zero sockets");
    }

    #[test]
    fn an_explicit_topology_is_not_derived_from_resources() {
        let v = defaulted("spec: {domain: {cpu: {cores: 2}, resources: {requests: {cpu: 8}}}}");
        assert_eq!(cpu(&v), (1, 2, 1));
        let v = defaulted("spec: {domain: {cpu: {sockets: 0, cores: 0, threads: 2}}}");
        assert_eq!(cpu(&v), (1, 1, 2), "0 means unset, as in KubeVirt");
    }

    #[test]
    fn cpu_model_is_left_unset() {
        let v = defaulted(MINIMAL);
        assert_eq!(v.spec.domain.cpu.unwrap().model, None);
    }

    #[test]
    fn termination_grace_defaults_to_30_and_keeps_zero() {
        assert_eq!(
            defaulted(MINIMAL).spec.termination_grace_period_seconds,
            Some(30)
        );
        let v = defaulted("spec: {terminationGracePeriodSeconds: 0}");
        assert_eq!(v.spec.termination_grace_period_seconds, Some(0));
    }

    #[test]
    fn efi_secure_boot_defaults_to_true() {
        let v = defaulted("spec: {domain: {firmware: {bootloader: {efi: {}}}}}");
        let efi = v
            .spec
            .domain
            .firmware
            .unwrap()
            .bootloader
            .unwrap()
            .efi
            .unwrap();
        assert_eq!(efi.secure_boot, Some(true));
        let v = defaulted("spec: {domain: {firmware: {bootloader: {efi: {secureBoot: false}}}}}");
        let efi = v
            .spec
            .domain
            .firmware
            .unwrap()
            .bootloader
            .unwrap()
            .efi
            .unwrap();
        assert_eq!(efi.secure_boot, Some(false));
        // BIOS stays BIOS: no EFI is invented.
        let v = defaulted(MINIMAL);
        assert!(v.spec.domain.firmware.unwrap().bootloader.is_none());
    }

    #[test]
    fn secure_boot_turns_smm_on_unless_explicitly_off() {
        let v = defaulted("spec: {domain: {firmware: {bootloader: {efi: {}}}}}");
        let smm = v.spec.domain.features.unwrap().smm.unwrap();
        assert_eq!(smm.enabled, Some(true));
        let v = defaulted("spec: {domain: {firmware: {bootloader: {efi: {}}}, features: {smm: {enabled: false}}}}");
        assert_eq!(
            v.spec.domain.features.unwrap().smm.unwrap().enabled,
            Some(false)
        );
        let v = defaulted("spec: {domain: {firmware: {bootloader: {efi: {secureBoot: false}}}}}");
        assert!(
            v.spec.domain.features.is_none(),
            "no SMM without secure boot"
        );
    }

    #[test]
    fn firmware_uuid_is_stable_and_name_based() {
        let a = defaulted(MINIMAL);
        let b = defaulted(MINIMAL);
        let ua = a.spec.domain.firmware.unwrap().uuid.unwrap();
        assert_eq!(ua, b.spec.domain.firmware.unwrap().uuid.unwrap());
        let expected = uuid::Uuid::new_v5(&FIRMWARE_UUID_NAMESPACE, b"t").to_string();
        assert_eq!(ua, expected);
        let v = defaulted("metadata: {name: t}\nspec: {domain: {firmware: {uuid: 5d307ca9-b3ef-428c-8861-06e72d69f223}}}");
        assert_eq!(
            v.spec.domain.firmware.unwrap().uuid.as_deref(),
            Some("5d307ca9-b3ef-428c-8861-06e72d69f223")
        );
        // No name, no UUID (validation reports the missing name).
        let v = defaulted("spec: {}");
        assert!(v.spec.domain.firmware.is_none());
    }

    #[test]
    fn every_volume_without_a_disk_gets_one() {
        let v = defaulted(
            "spec:\n  domain: {devices: {disks: [{name: a, cdrom: {}}]}}\n  volumes:\n  - {name: a, containerDisk: {image: x}}\n  - {name: b, emptyDisk: {capacity: 1Gi}}\n",
        );
        let d = &v.spec.domain.devices.disks;
        assert_eq!(d.len(), 2);
        assert!(d[0].cdrom.is_some(), "an existing disk is kept");
        assert_eq!(d[1].name, "b");
        assert_eq!(d[1].disk.as_ref().unwrap().bus.as_deref(), Some("sata"));
    }

    #[test]
    fn a_volume_used_by_a_filesystem_gets_no_disk() {
        let v = defaulted(
            "spec:\n  domain: {devices: {filesystems: [{name: fs, virtiofs: {}}]}}\n  volumes:\n  - {name: fs, persistentVolumeClaim: {claimName: c}}\n",
        );
        assert!(v.spec.domain.devices.disks.is_empty());
    }

    #[test]
    fn a_disk_with_no_type_becomes_a_sata_disk() {
        let v = defaulted("spec: {domain: {devices: {disks: [{name: a}]}}}");
        let d = &v.spec.domain.devices.disks[0];
        assert_eq!(d.disk.as_ref().unwrap().bus.as_deref(), Some("sata"));
        assert!(d.cdrom.is_none() && d.lun.is_none());
    }

    #[test]
    fn a_given_bus_is_kept() {
        let v = defaulted("spec: {domain: {devices: {disks: [{name: a, disk: {bus: virtio}}]}}}");
        let d = &v.spec.domain.devices.disks[0];
        assert_eq!(d.disk.as_ref().unwrap().bus.as_deref(), Some("virtio"));
    }

    #[test]
    fn cdrom_defaults_to_sata_readonly_closed() {
        let v = defaulted("spec: {domain: {devices: {disks: [{name: a, cdrom: {}}]}}}");
        let c = v.spec.domain.devices.disks[0].cdrom.clone().unwrap();
        assert_eq!(c.bus.as_deref(), Some("sata"));
        assert_eq!(c.readonly, Some(true));
        assert_eq!(c.tray.as_deref(), Some("closed"));
        let v = defaulted(
            "spec: {domain: {devices: {disks: [{name: a, cdrom: {readonly: false, bus: scsi}}]}}}",
        );
        let c = v.spec.domain.devices.disks[0].cdrom.clone().unwrap();
        assert_eq!((c.bus.as_deref(), c.readonly), (Some("scsi"), Some(false)));
    }

    #[test]
    fn lun_defaults_to_scsi() {
        let v = defaulted("spec: {domain: {devices: {disks: [{name: a, lun: {}}]}}}");
        let l = v.spec.domain.devices.disks[0].lun.clone().unwrap();
        assert_eq!(l.bus.as_deref(), Some("scsi"));
    }

    #[test]
    fn the_pod_network_is_added_when_nothing_is_given() {
        let v = defaulted(MINIMAL);
        assert_eq!(v.spec.networks.len(), 1);
        assert_eq!(v.spec.networks[0].name, "default");
        assert!(v.spec.networks[0].pod.is_some());
        let i = &v.spec.domain.devices.interfaces;
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].name, "default");
        assert_eq!(i[0].binding_kind(), Some(BindingKind::Bridge));
        assert_eq!(i[0].model.as_deref(), Some("virtio"));
    }

    #[test]
    fn no_pod_network_when_autoattach_is_false() {
        let v = defaulted("spec: {domain: {devices: {autoattachPodInterface: false}}}");
        assert!(v.spec.networks.is_empty());
        assert!(v.spec.domain.devices.interfaces.is_empty());
    }

    #[test]
    fn no_pod_network_added_when_networks_or_interfaces_are_given() {
        let v = defaulted("spec: {networks: [{name: n, multus: {networkName: x}}]}");
        assert_eq!(v.spec.networks.len(), 1);
        assert!(v.spec.domain.devices.interfaces.is_empty());
        let v = defaulted("spec: {domain: {devices: {interfaces: [{name: i, masquerade: {}}]}}}");
        assert!(v.spec.networks.is_empty());
    }

    #[test]
    fn interface_model_defaults_to_virtio_and_keeps_a_given_one() {
        let v = defaulted(
            "spec: {domain: {devices: {interfaces: [{name: a, bridge: {}}, {name: b, bridge: {}, model: e1000}]}}}",
        );
        let i = &v.spec.domain.devices.interfaces;
        assert_eq!(i[0].model.as_deref(), Some("virtio"));
        assert_eq!(i[1].model.as_deref(), Some("e1000"));
    }

    #[test]
    fn port_protocol_defaults_to_tcp() {
        let v = defaulted(
            "spec: {domain: {devices: {interfaces: [{name: a, masquerade: {}, ports: [{port: 80}, {port: 53, protocol: UDP}], portRanges: [{start: 1, end: 2}]}]}}}",
        );
        let i = &v.spec.domain.devices.interfaces[0];
        assert_eq!(i.ports[0].protocol.as_deref(), Some("TCP"));
        assert_eq!(i.ports[1].protocol.as_deref(), Some("UDP"));
        assert_eq!(i.port_ranges[0].protocol.as_deref(), Some("TCP"));
    }

    #[test]
    fn feature_toggles_given_as_empty_objects_are_enabled() {
        let v = defaulted(
            "spec: {domain: {features: {acpi: {}, smm: {enabled: false}, apic: {}, pvspinlock: {}, hyperv: {relaxed: {}, vapic: {}, spinlocks: {}, vendorid: {vendorid: x}}}}}",
        );
        let f = v.spec.domain.features.unwrap();
        assert_eq!(f.acpi.unwrap().enabled, Some(true));
        assert_eq!(
            f.smm.unwrap().enabled,
            Some(false),
            "explicit false is kept"
        );
        assert_eq!(f.apic.unwrap().enabled, Some(true));
        assert_eq!(f.pvspinlock.unwrap().enabled, Some(true));
        let h = f.hyperv.unwrap();
        assert_eq!(h.relaxed.unwrap().enabled, Some(true));
        assert_eq!(h.vapic.unwrap().enabled, Some(true));
        assert_eq!(h.vendorid.unwrap().enabled, Some(true));
        let s = h.spinlocks.unwrap();
        assert_eq!((s.enabled, s.spinlocks), (Some(true), Some(4096)));
        assert!(h.synic.is_none(), "absent toggles stay absent");
    }

    #[test]
    fn disabled_spinlocks_get_no_retry_count() {
        let v = defaulted("spec: {domain: {features: {hyperv: {spinlocks: {enabled: false}}}}}");
        let s = v
            .spec
            .domain
            .features
            .unwrap()
            .hyperv
            .unwrap()
            .spinlocks
            .unwrap();
        assert_eq!(s.spinlocks, None);
    }

    #[test]
    fn timers_given_are_present() {
        let v = defaulted(
            "spec: {domain: {clock: {utc: {}, timer: {hpet: {present: false}, pit: {tickPolicy: delay}, rtc: {}}}}}",
        );
        let t = v.spec.domain.clock.unwrap().timer.unwrap();
        assert_eq!(t.hpet.unwrap().present, Some(false));
        assert_eq!(t.pit.unwrap().present, Some(true));
        assert_eq!(t.rtc.unwrap().present, Some(true));
        assert!(t.kvm.is_none());
    }

    #[test]
    fn watchdog_defaults_to_i6300esb_reset() {
        let v = defaulted("spec: {domain: {devices: {watchdog: {name: w}}}}");
        let w = v.spec.domain.devices.watchdog.unwrap();
        assert_eq!(w.i6300esb.unwrap().action.as_deref(), Some("reset"));
        let v = defaulted(
            "spec: {domain: {devices: {watchdog: {name: w, i6300esb: {action: poweroff}}}}}",
        );
        let w = v.spec.domain.devices.watchdog.unwrap();
        assert_eq!(w.i6300esb.unwrap().action.as_deref(), Some("poweroff"));
    }

    #[test]
    fn inputs_default_to_usb_tablet() {
        let v = defaulted("spec: {domain: {devices: {inputs: [{name: i}, {name: j, bus: virtio, type: tablet}]}}}");
        let i = &v.spec.domain.devices.inputs;
        assert_eq!(
            (i[0].bus.as_deref(), i[0].input_type.as_str()),
            (Some("usb"), "tablet")
        );
        assert_eq!(i[1].bus.as_deref(), Some("virtio"));
    }

    #[test]
    fn container_disk_pull_policy_follows_kubernetes() {
        assert_eq!(pull_policy_for("quay.io/x/y:latest"), "Always");
        assert_eq!(pull_policy_for("quay.io/x/y"), "Always");
        assert_eq!(pull_policy_for("registry:5000/x/y"), "Always");
        assert_eq!(pull_policy_for("registry:5000/x/y:devel"), "IfNotPresent");
        assert_eq!(pull_policy_for("x@sha256:abc"), "IfNotPresent");
        let v = defaulted("spec: {volumes: [{name: a, containerDisk: {image: 'x:1'}}, {name: b, containerDisk: {image: x, imagePullPolicy: Never}}]}");
        let p: Vec<_> = v
            .spec
            .volumes
            .iter()
            .map(|v| v.container_disk.as_ref().unwrap().image_pull_policy.clone())
            .collect();
        assert_eq!(p, vec![Some("IfNotPresent".into()), Some("Never".into())]);
    }

    #[test]
    fn defaults_are_idempotent() {
        let rich = "metadata: {name: t}\nspec:\n  domain:\n    resources: {limits: {cpu: 2, memory: 1Gi}}\n    firmware: {bootloader: {efi: {}}}\n    features: {acpi: {}, smm: {}, hyperv: {spinlocks: {}}}\n    clock: {timer: {rtc: {}}}\n    devices:\n      disks: [{name: a}, {name: c, cdrom: {}}, {name: l, lun: {}}]\n      watchdog: {name: w}\n      inputs: [{name: i}]\n  volumes:\n  - {name: a, containerDisk: {image: x}}\n  - {name: c, containerDisk: {image: y}}\n  - {name: l, persistentVolumeClaim: {claimName: p}}\n  - {name: extra, emptyDisk: {capacity: 1Gi}}\n";
        for text in [MINIMAL, rich, "spec: {}", "spec: {domain: {firmware: {bootloader: {efi: {}}}}}", "spec: {domain: {devices: {interfaces: [{name: a, masquerade: {}, ports: [{port: 1}]}]}}, networks: [{name: a, pod: {}}]}"] {
            let once = defaulted(text);
            let mut twice = once.clone();
            apply(&mut twice);
            assert_eq!(once, twice, "defaults must be idempotent for {text}");
        }
    }
}
