//! Exact, complete validation of a defaulted VMI.
//!
//! [`validate`] reports **every** problem it finds, never just the first, each as a
//! [`Problem`] with the JSON path of the offending field (`spec.domain.devices.interfaces[1].macAddress`)
//! and a sentence that names the offending value and, where it helps, what to write instead.
//! It runs on the VMI *after* [`super::defaults::apply`], so "unset" has already been replaced
//! by KubeVirt's default wherever KubeVirt has one.
//!
//! Two kinds of problems are reported the same way:
//! - the VMI is invalid (KubeVirt's admission webhook would refuse it too), e.g. an interface
//!   without a network of the same name;
//! - the VMI asks for something this launcher cannot provide inside a pod (GPUs, host devices,
//!   DRA claims, confidential computing, non-amd64 guests, virtiofs, USB redirection, hotplug,
//!   persistent TPM/EFI state, ...). Those messages say "... is not supported by this launcher:
//!   <why>".
//!
//! The full list of rules is in `docs/spec.md`; every rule has a failing and a passing unit
//! test below.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::quantity::{self, Quantity};
use super::vmi::*;
use super::Problem;

/// The plugin binding names this launcher provides (`binding: {name: ...}`).
pub const KNOWN_BINDINGS: &[&str] = &[
    "bridge",
    "masquerade",
    "macvtap",
    "sriov",
    "passt",
    "slirp",
    "tc-redirect",
];

/// The NIC models KubeVirt (and libvirt/QEMU here) accept.
pub const INTERFACE_MODELS: &[&str] = &[
    "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio",
];

/// KubeVirt's annotation for hook sidecars (containers that rewrite the domain).
pub const HOOK_SIDECARS_ANNOTATION: &str = "hooks.kubevirt.io/hookSidecars";

/// The most vCPUs a VMI may have.
pub const MAX_VCPUS: u64 = 1024;

/// The MAC this launcher reserves for its own use (never a guest's).
pub const RESERVED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0];

/// Reports every problem, each with its JSON path and the offending value.
pub fn validate(vmi: &Vmi) -> Result<(), Vec<Problem>> {
    let mut v = Validator::default();
    v.metadata(&vmi.metadata);
    v.spec(&vmi.spec);
    if v.problems.is_empty() {
        Ok(())
    } else {
        Err(v.problems)
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

/// `"value"` as it appears in messages (quoted, escaped).
fn q(s: &str) -> String {
    format!("{s:?}")
}

fn not_supported(what: &str, why: &str) -> String {
    format!("{what} is not supported by this launcher: {why}")
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    // ---------------------------------------------------------------- metadata and top level

    fn metadata(&mut self, m: &ObjectMeta) {
        if m.annotations.contains_key(HOOK_SIDECARS_ANNOTATION) {
            self.push(
                format!("metadata.annotations[{}]", q(HOOK_SIDECARS_ANNOTATION)),
                not_supported(
                    "a hook sidecar",
                    "it does not run hook sidecars, so the hook's changes to the VM would be silently lost",
                ),
            );
        }
        match m.name.as_deref() {
            None | Some("") => self.push(
                "metadata.name",
                "is required: give the VMI a name (a DNS-1123 name such as \"my-vm\")",
            ),
            Some(n) if !is_dns1123_subdomain(n) => self.push(
                "metadata.name",
                format!(
                    "{} is not a valid DNS-1123 name (lowercase letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit)",
                    q(n)
                ),
            ),
            Some(_) => {}
        }
        if let Some(uid) = m.uid.as_deref() {
            if uid.is_empty()
                || uid == "."
                || uid == ".."
                || uid.contains('/')
                || uid.contains('\0')
            {
                self.push(
                    "metadata.uid",
                    format!(
                        "{} cannot name a directory (no '/', not \".\" or \"..\")",
                        q(uid)
                    ),
                );
            }
        }
        if let Some(ns) = m.namespace.as_deref() {
            if !is_dns1123_label(ns) {
                self.push(
                    "metadata.namespace",
                    format!(
                        "{} is not a valid namespace (a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters)",
                        q(ns)
                    ),
                );
            }
        }
    }

    fn spec(&mut self, s: &VmiSpec) {
        for (field, value) in [("hostname", &s.hostname), ("subdomain", &s.subdomain)] {
            if let Some(h) = value.as_deref() {
                if !is_dns1123_label(h) {
                    self.push(
                        format!("spec.{field}"),
                        format!(
                            "{} is not a valid RFC 1123 label (lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit)",
                            q(h)
                        ),
                    );
                }
            }
        }
        if let Some(g) = s.termination_grace_period_seconds {
            if g < 0 {
                self.push(
                    "spec.terminationGracePeriodSeconds",
                    format!("{g} is negative: give 0 or more seconds"),
                );
            }
        }
        if let Some(arch) = s.architecture.as_deref() {
            if arch != "amd64" {
                self.push(
                    "spec.architecture",
                    not_supported(
                        &q(arch),
                        "it runs amd64 (x86_64) guests only, on this node's hypervisor",
                    ),
                );
            }
        }
        for (i, _) in s.resource_claims.iter().enumerate() {
            self.push(
                format!("spec.resourceClaims[{i}]"),
                not_supported(
                    "a Dynamic Resource Allocation claim",
                    "it has no DRA driver to prepare the claimed device",
                ),
            );
        }
        self.domain(&s.domain);
        self.volumes(s);
        self.disks(s);
        self.networks_and_interfaces(s);
        self.boot_orders(s);
    }

    // ---------------------------------------------------------------- domain

    fn domain(&mut self, d: &DomainSpec) {
        if d.launch_security.is_some() {
            self.push(
                "spec.domain.launchSecurity",
                not_supported(
                    "confidential computing (SEV, SNP, TDX, Secure Execution)",
                    "it needs host firmware and kernel support that a launcher pod cannot provide",
                ),
            );
        }
        if let Some(t) = d.machine.as_ref().and_then(|m| m.machine_type.as_deref()) {
            if !(t == "q35" || t.starts_with("pc-q35-")) {
                self.push(
                    "spec.domain.machine.type",
                    format!(
                        "{} is not a supported machine type: this launcher runs q35 machines only (\"q35\" or \"pc-q35-*\"), like KubeVirt on amd64",
                        q(t)
                    ),
                );
            }
        }
        if let Some(p) = d.io_threads_policy.as_deref() {
            if p == "supplementalPool" {
                self.push(
                    "spec.domain.ioThreadsPolicy",
                    not_supported(
                        "\"supplementalPool\"",
                        "it does not size IOThread pools; use \"shared\" or \"auto\"",
                    ),
                );
            } else {
                one_of(self, "spec.domain.ioThreadsPolicy", p, &["shared", "auto"]);
            }
        }
        if let Some(p) = d.reboot_policy.as_deref() {
            one_of(
                self,
                "spec.domain.rebootPolicy",
                p,
                &["Reboot", "Terminate"],
            );
        }
        self.resources_and_memory(d);
        self.cpu(d);
        self.firmware(d);
        self.features(d);
        self.clock(d);
        self.devices_misc(&d.devices);
    }

    /// Parses `text` at `path`, reporting a problem when it is not a quantity.
    fn quantity(&mut self, path: &str, text: &str) -> Option<Quantity> {
        match Quantity::parse(text) {
            Ok(qty) => Some(qty),
            Err(e) => {
                self.push(path, e.to_string());
                None
            }
        }
    }

    fn bytes(&mut self, path: &str, text: &str) -> Option<u64> {
        match quantity::parse_bytes(text) {
            Ok(b) => Some(b),
            Err(e) => {
                self.push(path, e.to_string());
                None
            }
        }
    }

    fn resources_and_memory(&mut self, d: &DomainSpec) {
        let r = d.resources.clone().unwrap_or_default();
        let mut parsed: BTreeMap<(&str, &str), Quantity> = BTreeMap::new();
        for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (name, text) in map {
                let path = format!("spec.domain.resources.{kind}.{name}");
                if let Some(qty) = self.quantity(&path, text) {
                    parsed.insert((kind, name.as_str()), qty);
                }
            }
        }
        for (name, unit) in [("cpu", "millicores"), ("memory", "bytes")] {
            let (Some(req), Some(lim)) = (
                parsed.get(&("requests", name)),
                parsed.get(&("limits", name)),
            ) else {
                continue;
            };
            let (req_v, lim_v) = if unit == "bytes" {
                (req.to_units_ceil(), lim.to_units_ceil())
            } else {
                (req.to_millis_ceil(), lim.to_millis_ceil())
            };
            if let (Some(a), Some(b)) = (req_v, lim_v) {
                if a > b {
                    self.push(
                        format!("spec.domain.resources.requests.{name}"),
                        format!(
                            "{} is more than the limit {} (spec.domain.resources.limits.{name})",
                            q(&r.requests[name]),
                            q(&r.limits[name])
                        ),
                    );
                }
            }
        }

        let mem = d.memory.clone().unwrap_or_default();
        let guest = match mem.guest.as_deref() {
            None => {
                self.push(
                    "spec.domain.memory.guest",
                    "no guest memory is given: set spec.domain.memory.guest or spec.domain.resources.requests.memory (or limits.memory)",
                );
                None
            }
            Some(g) => self.bytes("spec.domain.memory.guest", g),
        };
        if let (Some(g), Some(text)) = (guest, mem.guest.as_deref()) {
            if g < 1 << 20 {
                self.push(
                    "spec.domain.memory.guest",
                    format!(
                        "{} is too small: a guest needs at least 1Mi of memory",
                        q(text)
                    ),
                );
            }
            if let Some(limit) = r.limits.get("memory") {
                if let Ok(l) = quantity::parse_bytes(limit) {
                    if g > l {
                        self.push(
                            "spec.domain.memory.guest",
                            format!(
                                "{} is more than the memory limit {} (spec.domain.resources.limits.memory)",
                                q(text),
                                q(limit)
                            ),
                        );
                    }
                }
            }
            if let Some(max) = mem.max_guest.as_deref() {
                if let Some(m) = self.bytes("spec.domain.memory.maxGuest", max) {
                    if m != g {
                        self.push(
                            "spec.domain.memory.maxGuest",
                            not_supported(
                                &format!(
                                    "memory hotplug (maxGuest {} with guest {})",
                                    q(max),
                                    q(text)
                                ),
                                "leave maxGuest out or make it equal to guest",
                            ),
                        );
                    }
                }
            }
        }
        if let Some(ps) = mem.hugepages.as_ref().and_then(|h| h.page_size.as_deref()) {
            let path = "spec.domain.memory.hugepages.pageSize";
            if let Some(size) = self.bytes(path, ps) {
                if size != 2 << 20 && size != 1 << 30 {
                    self.push(
                        path,
                        format!("{} is not a huge page size: use \"2Mi\" or \"1Gi\"", q(ps)),
                    );
                } else if let (Some(g), Some(text)) = (guest, mem.guest.as_deref()) {
                    if g % size != 0 {
                        self.push(
                            "spec.domain.memory.guest",
                            format!(
                                "{} is not a multiple of the huge page size {}",
                                q(text),
                                q(ps)
                            ),
                        );
                    }
                }
            }
        }
    }

    fn cpu(&mut self, d: &DomainSpec) {
        let Some(c) = &d.cpu else { return };
        for (field, v) in [
            ("sockets", c.sockets),
            ("cores", c.cores),
            ("threads", c.threads),
        ] {
            if v == Some(0) {
                self.push(
                    format!("spec.domain.cpu.{field}"),
                    "0 is not allowed: give 1 or more",
                );
            }
        }
        if let (Some(max), Some(s)) = (c.max_sockets, c.sockets) {
            if max != s {
                self.push(
                    "spec.domain.cpu.maxSockets",
                    not_supported(
                        &format!("CPU hotplug (maxSockets {max} with {s} sockets)"),
                        "set maxSockets equal to sockets or leave it out",
                    ),
                );
            }
        }
        let vcpus = u64::from(c.sockets.unwrap_or(1))
            * u64::from(c.cores.unwrap_or(1))
            * u64::from(c.threads.unwrap_or(1));
        if vcpus > MAX_VCPUS {
            self.push(
                "spec.domain.cpu",
                format!(
                    "sockets × cores × threads = {vcpus} vCPUs, more than the {MAX_VCPUS} a q35 machine takes"
                ),
            );
        }
        if c.numa.is_some() {
            self.push(
                "spec.domain.cpu.numa",
                not_supported(
                    "guest NUMA passthrough",
                    "it does not map the guest onto host NUMA nodes",
                ),
            );
        }
        if c.realtime.is_some() {
            self.push(
                "spec.domain.cpu.realtime",
                not_supported(
                    "realtime vCPU tuning",
                    "it does not tune realtime scheduling",
                ),
            );
        }
        for (i, f) in c.features.iter().enumerate() {
            let p = format!("spec.domain.cpu.features[{i}]");
            if f.name.is_empty() {
                self.push(format!("{p}.name"), "is required: name the CPU feature");
            }
            if let Some(pol) = f.policy.as_deref() {
                one_of(
                    self,
                    &format!("{p}.policy"),
                    pol,
                    &["force", "require", "optional", "disable", "forbid"],
                );
            }
        }
        let dedicated = c.dedicated_cpu_placement == Some(true);
        if c.isolate_emulator_thread == Some(true) && !dedicated {
            self.push(
                "spec.domain.cpu.isolateEmulatorThread",
                "needs spec.domain.cpu.dedicatedCpuPlacement: true",
            );
        }
        if dedicated {
            let r = d.resources.clone().unwrap_or_default();
            for kind in ["requests", "limits"] {
                let map = if kind == "requests" {
                    &r.requests
                } else {
                    &r.limits
                };
                if let Some(text) = map.get("cpu") {
                    if let Ok(m) = quantity::parse_millis(text) {
                        if m % 1000 != 0 {
                            self.push(
                                format!("spec.domain.resources.{kind}.cpu"),
                                format!(
                                    "{} is not a whole number of CPUs, which dedicatedCpuPlacement needs",
                                    q(text)
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    fn firmware(&mut self, d: &DomainSpec) {
        let Some(fw) = &d.firmware else { return };
        if let Some(u) = fw.uuid.as_deref() {
            if uuid::Uuid::parse_str(u).is_err() {
                self.push(
                    "spec.domain.firmware.uuid",
                    format!(
                        "{} is not a UUID (expected e.g. \"5d307ca9-b3ef-428c-8861-06e72d69f223\")",
                        q(u)
                    ),
                );
            }
        }
        if fw.acpi.is_some() {
            self.push(
                "spec.domain.firmware.acpi",
                not_supported(
                    "a custom ACPI table (SLIC/MSDM)",
                    "it has no volume plumbing for ACPI tables",
                ),
            );
        }
        if let Some(bl) = &fw.bootloader {
            if bl.efi.as_ref().and_then(|e| e.persistent) == Some(true) {
                self.push(
                    "spec.domain.firmware.bootloader.efi.persistent",
                    not_supported(
                        "a persistent EFI variable store",
                        "they need a backend-storage PVC, which a launcher pod does not have",
                    ),
                );
            }
            if bl.bios.is_some() && bl.efi.is_some() {
                self.push(
                    "spec.domain.firmware.bootloader",
                    "sets both bios and efi: choose one",
                );
            }
            let acpi_off = d
                .features
                .as_ref()
                .and_then(|f| f.acpi.as_ref())
                .is_some_and(|a| a.enabled == Some(false));
            if bl.efi.is_some() && acpi_off {
                self.push(
                    "spec.domain.features.acpi.enabled",
                    "is false, but EFI firmware needs ACPI on x86_64: enable ACPI or boot with BIOS",
                );
            }
            if let Some(efi) = &bl.efi {
                let smm_on = d
                    .features
                    .as_ref()
                    .and_then(|f| f.smm.as_ref())
                    .is_some_and(|s| s.enabled != Some(false));
                if efi.secure_boot != Some(false) && !smm_on {
                    self.push(
                        "spec.domain.features.smm.enabled",
                        "is false, but EFI secure boot (on by default with efi) requires SMM: enable SMM or set spec.domain.firmware.bootloader.efi.secureBoot: false",
                    );
                }
            }
        }
        if let Some(kb) = &fw.kernel_boot {
            let p = "spec.domain.firmware.kernelBoot";
            match &kb.container {
                None => {
                    if kb.kernel_args.is_some() {
                        self.push(
                            format!("{p}.kernelArgs"),
                            "needs a kernel: set kernelBoot.container with kernelPath",
                        );
                    }
                }
                Some(c) => {
                    if c.image.is_empty() {
                        self.push(format!("{p}.container.image"), "is required");
                    }
                    if c.kernel_path.is_none() && c.initrd_path.is_none() {
                        self.push(
                            format!("{p}.container"),
                            "needs kernelPath or initrdPath (or both)",
                        );
                    }
                    if kb.kernel_args.is_some() && c.kernel_path.is_none() {
                        self.push(
                            format!("{p}.kernelArgs"),
                            "needs kernelBoot.container.kernelPath: kernel arguments go to a kernel",
                        );
                    }
                    for (field, v) in [
                        ("kernelPath", &c.kernel_path),
                        ("initrdPath", &c.initrd_path),
                    ] {
                        if let Some(path) = v.as_deref() {
                            let fp = format!("{p}.container.{field}");
                            self.abs_path(&fp, path);
                            if path.ends_with('/') {
                                self.push(&fp, format!("{} has no file name", q(path)));
                            }
                        }
                    }
                }
            }
        }
    }

    fn abs_path(&mut self, path: &str, value: &str) {
        if !value.starts_with('/') || value.split('/').any(|c| c == "..") || value.contains('\0') {
            self.push(
                path,
                format!("{} is not an absolute path without \"..\"", q(value)),
            );
        }
    }
    fn features(&mut self, d: &DomainSpec) {
        let Some(f) = &d.features else { return };
        if f.hyperv.is_some()
            && f.hyperv_passthrough
                .as_ref()
                .is_some_and(|p| p.enabled != Some(false))
        {
            self.push(
                "spec.domain.features.hypervPassthrough",
                "cannot be combined with spec.domain.features.hyperv: choose one",
            );
        }
        let Some(h) = &f.hyperv else {
            return;
        };
        if let Some(s) = &h.spinlocks {
            if s.enabled != Some(false) {
                if let Some(n) = s.spinlocks {
                    if n < 4095 {
                        self.push(
                            "spec.domain.features.hyperv.spinlocks.spinlocks",
                            format!(
                                "{n} is less than 4095, the smallest retry count Hyper-V accepts"
                            ),
                        );
                    }
                }
            }
        }
        if let Some(v) = h.vendorid.as_ref().filter(|v| v.enabled != Some(false)) {
            let id = v.vendorid.as_deref().unwrap_or("");
            if id.is_empty()
                || id.len() > 12
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                self.push(
                    "spec.domain.features.hyperv.vendorid.vendorid",
                    format!(
                        "{} is not a vendor id (1 to 12 letters, digits or '_')",
                        q(id)
                    ),
                );
            }
        }
    }

    fn clock(&mut self, d: &DomainSpec) {
        let Some(c) = &d.clock else { return };
        if c.utc.is_some() && c.timezone.is_some() {
            self.push(
                "spec.domain.clock",
                "sets both utc and timezone: choose one",
            );
        }
        if let Some(tz) = c.timezone.as_deref() {
            let ok = !tz.is_empty()
                && !tz.starts_with('/')
                && !tz.split('/').any(|p| p == ".." || p == ".")
                && tz
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
            if !ok {
                self.push(
                    "spec.domain.clock.timezone",
                    format!(
                        "{} is not a time zone name such as \"Europe/Berlin\"",
                        q(tz)
                    ),
                );
            }
        }
        let Some(t) = &c.timer else { return };
        let timers: [(&str, &Option<Timer>, &[&str]); 5] = [
            ("hpet", &t.hpet, &["delay", "catchup", "merge", "discard"]),
            ("pit", &t.pit, &["delay", "catchup", "discard"]),
            ("rtc", &t.rtc, &["delay", "catchup"]),
            ("kvm", &t.kvm, &[]),
            ("hyperv", &t.hyperv, &[]),
        ];
        for (name, timer, policies) in timers {
            let Some(timer) = timer else { continue };
            let p = format!("spec.domain.clock.timer.{name}");
            if let Some(tp) = timer.tick_policy.as_deref() {
                if policies.is_empty() {
                    self.push(
                        format!("{p}.tickPolicy"),
                        format!("{} is set, but the {name} timer has no tick policy", q(tp)),
                    );
                } else {
                    one_of(self, &format!("{p}.tickPolicy"), tp, policies);
                }
            }
            if let Some(track) = timer.track.as_deref() {
                if name == "rtc" {
                    one_of(self, &format!("{p}.track"), track, &["guest", "wall"]);
                } else {
                    self.push(
                        format!("{p}.track"),
                        format!("{} is set, but only the rtc timer has track", q(track)),
                    );
                }
            }
        }
    }

    fn devices_misc(&mut self, dev: &Devices) {
        let base = "spec.domain.devices";
        for (i, _) in dev.gpus.iter().enumerate() {
            self.push(
                format!("{base}.gpus[{i}]"),
                not_supported(
                    "a GPU",
                    "it has no GPU device plugin or VFIO passthrough inside the pod",
                ),
            );
        }
        for (i, _) in dev.host_devices.iter().enumerate() {
            self.push(
                format!("{base}.hostDevices[{i}]"),
                not_supported(
                    "a host device (PCI or USB passthrough)",
                    "it has no device plugin to hand host devices to the pod",
                ),
            );
        }
        if dev.client_passthrough.is_some() {
            self.push(
                format!("{base}.clientPassthrough"),
                not_supported(
                    "USB redirection from a client",
                    "it has no virtctl usbredir endpoint",
                ),
            );
        }
        if let Some(sound) = &dev.sound {
            match sound.get("model") {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(m)) => {
                    one_of(self, &format!("{base}.sound.model"), m, &["ich9", "ac97"]);
                }
                Some(other) => self.push(
                    format!("{base}.sound.model"),
                    format!("{other} is not a sound model: use \"ich9\" or \"ac97\""),
                ),
            }
        }
        for (i, _) in dev.filesystems.iter().enumerate() {
            self.push(
                format!("{base}.filesystems[{i}]"),
                not_supported(
                    "a shared filesystem (virtiofs)",
                    "it does not run virtiofsd; attach the volume as a disk instead",
                ),
            );
        }
        if let Some(tpm) = &dev.tpm {
            if tpm.enabled != Some(false) && tpm.persistent == Some(true) {
                self.push(
                    format!("{base}.tpm.persistent"),
                    not_supported(
                        "a persistent TPM",
                        "it needs a backend-storage PVC, which a launcher pod does not have",
                    ),
                );
            }
        }
        if let Some(w) = &dev.watchdog {
            if w.name.is_empty() {
                self.push(format!("{base}.watchdog.name"), "is required");
            }
            if let Some(a) = w.i6300esb.as_ref().and_then(|e| e.action.as_deref()) {
                one_of(
                    self,
                    &format!("{base}.watchdog.i6300esb.action"),
                    a,
                    &["poweroff", "reset", "shutdown"],
                );
            }
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, input) in dev.inputs.iter().enumerate() {
            let p = format!("{base}.inputs[{i}]");
            self.name(&format!("{p}.name"), &input.name, "inputs", &mut seen, i);
            if input.input_type != "tablet" {
                self.push(
                    format!("{p}.type"),
                    format!(
                        "{} is not an input type KubeVirt supports: use \"tablet\"",
                        q(&input.input_type)
                    ),
                );
            }
            if let Some(b) = input.bus.as_deref() {
                one_of(self, &format!("{p}.bus"), b, &["usb", "virtio"]);
            }
        }
    }

    /// Checks a device name: required and unique within `list` (`seen` maps name → index).
    fn name<'a>(
        &mut self,
        path: &str,
        name: &'a str,
        list: &str,
        seen: &mut HashMap<&'a str, usize>,
        index: usize,
    ) {
        if name.is_empty() {
            self.push(path, "is required");
            return;
        }
        if let Some(first) = seen.get(name) {
            self.push(
                path,
                format!(
                    "{} is already the name of {list}[{first}]: names must be unique",
                    q(name)
                ),
            );
        } else {
            seen.insert(name, index);
        }
    }

    // ---------------------------------------------------------------- storage

    fn volumes(&mut self, s: &VmiSpec) {
        let mut seen = HashMap::new();
        let mut service_accounts = Vec::new();
        for (i, v) in s.volumes.iter().enumerate() {
            let p = format!("spec.volumes[{i}]");
            self.name(&format!("{p}.name"), &v.name, "spec.volumes", &mut seen, i);
            if !v.name.is_empty() && !is_dns1123_label(&v.name) {
                self.push(
                    format!("{p}.name"),
                    format!(
                        "{} is not a valid volume name (a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters)",
                        q(&v.name)
                    ),
                );
            }
            let kinds = v.kinds();
            match kinds.len() {
                0 => self.push(
                    &p,
                    "has no source: set one of containerDisk, cloudInitNoCloud, cloudInitConfigDrive, emptyDisk, persistentVolumeClaim, dataVolume, hostDisk, ephemeral, configMap, secret, serviceAccount, downwardAPI",
                ),
                1 => {}
                _ => self.push(
                    &p,
                    format!(
                        "has more than one source ({}): a volume has exactly one",
                        kinds.iter().map(|k| kind_name(*k)).collect::<Vec<_>>().join(", ")
                    ),
                ),
            }
            if let Some(cd) = &v.container_disk {
                if cd.image.is_empty() {
                    self.push(format!("{p}.containerDisk.image"), "is required");
                }
                if let Some(path) = cd.path.as_deref() {
                    self.abs_path(&format!("{p}.containerDisk.path"), path);
                }
                if let Some(pol) = cd.image_pull_policy.as_deref() {
                    one_of(
                        self,
                        &format!("{p}.containerDisk.imagePullPolicy"),
                        pol,
                        &["Always", "IfNotPresent", "Never"],
                    );
                }
            }
            for (field, ci) in [
                ("cloudInitNoCloud", &v.cloud_init_no_cloud),
                ("cloudInitConfigDrive", &v.cloud_init_config_drive),
            ] {
                if let Some(ci) = ci {
                    self.cloud_init(&format!("{p}.{field}"), ci);
                }
            }
            if let Some(e) = &v.empty_disk {
                let path = format!("{p}.emptyDisk.capacity");
                if e.capacity.is_empty() {
                    self.push(&path, "is required: give a size such as \"2Gi\"");
                } else if let Some(0) = self.bytes(&path, &e.capacity) {
                    self.push(
                        &path,
                        format!("{} is zero: an empty disk needs a size", q(&e.capacity)),
                    );
                }
            }
            if let Some(c) = &v.persistent_volume_claim {
                if c.claim_name.is_empty() {
                    self.push(
                        format!("{p}.persistentVolumeClaim.claimName"),
                        "is required",
                    );
                }
            }
            if let Some(c) = v.ephemeral.as_ref() {
                match &c.persistent_volume_claim {
                    Some(pvc) if !pvc.claim_name.is_empty() => {}
                    _ => self.push(
                        format!("{p}.ephemeral.persistentVolumeClaim.claimName"),
                        "is required",
                    ),
                }
            }
            if let Some(dv) = &v.data_volume {
                if dv.name.is_empty() {
                    self.push(format!("{p}.dataVolume.name"), "is required");
                }
            }
            if let Some(h) = &v.host_disk {
                if h.path.is_empty() {
                    self.push(format!("{p}.hostDisk.path"), "is required");
                } else {
                    self.abs_path(&format!("{p}.hostDisk.path"), &h.path);
                }
                match h.disk_type.as_str() {
                    "Disk" => {}
                    "DiskOrCreate" => match h.capacity.as_deref() {
                        None => self.push(
                            format!("{p}.hostDisk.capacity"),
                            "is required with type DiskOrCreate: give a size such as \"1Gi\"",
                        ),
                        Some(c) => {
                            self.bytes(&format!("{p}.hostDisk.capacity"), c);
                        }
                    },
                    other => self.push(
                        format!("{p}.hostDisk.type"),
                        format!(
                            "{} is not a host disk type: use \"Disk\" or \"DiskOrCreate\"",
                            q(other)
                        ),
                    ),
                }
            }
            if let Some(c) = &v.config_map {
                if c.name.is_empty() {
                    self.push(format!("{p}.configMap.name"), "is required");
                }
            }
            if let Some(c) = &v.secret {
                if c.secret_name.is_empty() {
                    self.push(format!("{p}.secret.secretName"), "is required");
                }
            }
            if v.sysprep.is_some() {
                self.push(
                    format!("{p}.sysprep"),
                    not_supported(
                        "a sysprep volume",
                        "it does not build Windows answer-file media",
                    ),
                );
            }
            if v.memory_dump.is_some() {
                self.push(
                    format!("{p}.memoryDump"),
                    not_supported(
                        "a memory dump volume",
                        "memory dumps are requested through the KubeVirt API, which a launcher pod does not serve",
                    ),
                );
            }
            for (field, label) in [
                (
                    "configMap",
                    v.config_map
                        .as_ref()
                        .and_then(|c| c.volume_label.as_deref()),
                ),
                (
                    "secret",
                    v.secret.as_ref().and_then(|c| c.volume_label.as_deref()),
                ),
                (
                    "downwardAPI",
                    v.downward_api
                        .as_ref()
                        .and_then(|c| c.volume_label.as_deref()),
                ),
            ] {
                if let Some(l) = label {
                    let ok = !l.is_empty()
                        && l.len() <= 32
                        && l.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
                    if !ok {
                        self.push(
                            format!("{p}.{field}.volumeLabel"),
                            format!(
                                "{} is not an ISO label (1 to 32 letters, digits, _ or -)",
                                q(l)
                            ),
                        );
                    }
                }
            }
            if let Some(c) = &v.service_account {
                if c.service_account_name.is_empty() {
                    self.push(
                        format!("{p}.serviceAccount.serviceAccountName"),
                        "is required",
                    );
                }
                service_accounts.push(i);
            }
        }
        if let [first, rest @ ..] = service_accounts.as_slice() {
            for i in rest {
                self.push(
                    format!("spec.volumes[{i}].serviceAccount"),
                    format!("is a second serviceAccount volume (spec.volumes[{first}] is one already): a VMI has at most one"),
                );
            }
        }
    }

    fn cloud_init(&mut self, p: &str, ci: &CloudInitSource) {
        let user: Vec<&str> = [
            ("userData", ci.user_data.is_some()),
            ("userDataBase64", ci.user_data_base64.is_some()),
            ("secretRef", ci.secret_ref.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect();
        let net: Vec<&str> = [
            ("networkData", ci.network_data.is_some()),
            ("networkDataBase64", ci.network_data_base64.is_some()),
            ("networkDataSecretRef", ci.network_data_secret_ref.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect();
        if user.is_empty() && net.is_empty() {
            self.push(
                p,
                "has no data: set userData, userDataBase64 or secretRef (and/or networkData)",
            );
        }
        for list in [&user, &net] {
            if list.len() > 1 {
                self.push(
                    p,
                    format!("sets {}: choose one of them", list.join(" and ")),
                );
            }
        }
        for (field, v) in [
            ("userDataBase64", &ci.user_data_base64),
            ("networkDataBase64", &ci.network_data_base64),
        ] {
            if let Some(b) = v.as_deref() {
                if !is_base64(b) {
                    self.push(format!("{p}.{field}"), "is not valid base64");
                }
            }
        }
        for (field, r) in [
            ("secretRef", &ci.secret_ref),
            ("networkDataSecretRef", &ci.network_data_secret_ref),
        ] {
            if let Some(r) = r {
                if r.name.is_empty() {
                    self.push(format!("{p}.{field}.name"), "is required");
                }
            }
        }
    }

    fn disks(&mut self, s: &VmiSpec) {
        let mut seen = HashMap::new();
        for (i, d) in s.domain.devices.disks.iter().enumerate() {
            let p = format!("spec.domain.devices.disks[{i}]");
            self.name(
                &format!("{p}.name"),
                &d.name,
                "spec.domain.devices.disks",
                &mut seen,
                i,
            );
            if !d.name.is_empty() && !s.volumes.iter().any(|v| v.name == d.name) {
                self.push(
                    format!("{p}.name"),
                    format!(
                        "{} has no volume of the same name in spec.volumes",
                        q(&d.name)
                    ),
                );
            }
            let types: Vec<&str> = [
                ("disk", d.disk.is_some()),
                ("cdrom", d.cdrom.is_some()),
                ("lun", d.lun.is_some()),
            ]
            .iter()
            .filter(|(_, set)| *set)
            .map(|(n, _)| *n)
            .collect();
            match types.len() {
                0 => self.push(&p, "has none of disk, cdrom, lun: set exactly one"),
                1 => {}
                _ => self.push(
                    &p,
                    format!(
                        "sets {}: a disk has exactly one of disk, cdrom, lun",
                        types.join(" and ")
                    ),
                ),
            }
            if let Some(t) = &d.disk {
                self.bus(&format!("{p}.disk.bus"), t.bus.as_deref(), "disk");
                let pvc_read_only = s
                    .volumes
                    .iter()
                    .find(|v| v.name == d.name)
                    .and_then(|v| v.persistent_volume_claim.as_ref())
                    .is_some_and(|c| c.read_only == Some(true));
                if t.bus.as_deref() == Some("sata") && (t.readonly == Some(true) || pvc_read_only) {
                    self.push(
                        format!("{p}.disk.readonly"),
                        format!(
                            "{}: libvirt cannot make a SATA hard disk read-only; use bus virtio or scsi, or a cdrom",
                            if pvc_read_only && t.readonly != Some(true) {
                                "the disk's claim is readOnly"
                            } else {
                                "is true"
                            }
                        ),
                    );
                }
                if let Some(addr) = t.pci_address.as_deref() {
                    self.pci_address(&format!("{p}.disk.pciAddress"), addr);
                    if t.bus.as_deref().is_some_and(|b| b != "virtio") {
                        self.push(
                            format!("{p}.disk.pciAddress"),
                            format!(
                                "is set, but only a virtio disk sits on the PCI bus and this one uses {}",
                                q(t.bus.as_deref().unwrap_or(""))
                            ),
                        );
                    }
                }
            }
            if let Some(t) = &d.cdrom {
                self.bus(&format!("{p}.cdrom.bus"), t.bus.as_deref(), "cdrom");
                if let Some(tray) = t.tray.as_deref() {
                    one_of(self, &format!("{p}.cdrom.tray"), tray, &["open", "closed"]);
                }
            }
            if let Some(t) = &d.lun {
                self.bus(&format!("{p}.lun.bus"), t.bus.as_deref(), "lun");
                if t.reservation == Some(true) {
                    self.push(
                        format!("{p}.lun.reservation"),
                        not_supported(
                            "SCSI persistent reservation",
                            "it does not run qemu-pr-helper",
                        ),
                    );
                }
                let kind = s
                    .volumes
                    .iter()
                    .find(|v| v.name == d.name)
                    .and_then(|v| v.kind());
                if let Some(k) = kind {
                    if !matches!(
                        k,
                        VolumeKind::PersistentVolumeClaim | VolumeKind::DataVolume
                    ) {
                        self.push(
                            format!("{p}.lun"),
                            format!(
                                "needs a block-mode persistentVolumeClaim or dataVolume, and volume {} is a {}",
                                q(&d.name),
                                kind_name(k)
                            ),
                        );
                    }
                }
            }
            if d.shareable == Some(true) && d.cache.as_deref().is_some_and(|c| c != "none") {
                self.push(
                    format!("{p}.shareable"),
                    format!(
                        "needs cache \"none\", and the cache is {}",
                        q(d.cache.as_deref().unwrap_or(""))
                    ),
                );
            }
            if d.io.as_deref() == Some("native") && d.cache.as_deref().is_some_and(|c| c != "none")
            {
                self.push(
                    format!("{p}.io"),
                    format!(
                        "\"native\" needs cache \"none\", and the cache is {}",
                        q(d.cache.as_deref().unwrap_or(""))
                    ),
                );
            }
            if d.dedicated_io_thread == Some(true) {
                let bus = d.disk.as_ref().and_then(|t| t.bus.as_deref());
                if bus != Some("virtio") {
                    self.push(
                        format!("{p}.dedicatedIOThread"),
                        "is only possible for a virtio disk (disk.bus: virtio)",
                    );
                }
            }
            if let Some(bs) = &d.block_size {
                match bs.get("custom") {
                    None => self.push(
                        format!("{p}.blockSize"),
                        not_supported(
                            "a matchVolume block size",
                            "it does not probe the volume; give blockSize.custom",
                        ),
                    ),
                    Some(custom) => {
                        for k in ["logical", "physical"] {
                            let ok = custom
                                .get(k)
                                .and_then(|v| v.as_u64())
                                .is_some_and(|v| v.is_power_of_two() && (512..=65536).contains(&v));
                            if !ok {
                                self.push(
                                    format!("{p}.blockSize.custom.{k}"),
                                    "must be a power of two from 512 to 65536",
                                );
                            }
                        }
                    }
                }
            }
            if let Some(c) = d.cache.as_deref() {
                one_of(
                    self,
                    &format!("{p}.cache"),
                    c,
                    &["none", "writethrough", "writeback"],
                );
            }
            if let Some(io) = d.io.as_deref() {
                one_of(
                    self,
                    &format!("{p}.io"),
                    io,
                    &["native", "threads", "default"],
                );
            }
            if let Some(e) = d.error_policy.as_deref() {
                one_of(
                    self,
                    &format!("{p}.errorPolicy"),
                    e,
                    &["stop", "ignore", "report", "enospace"],
                );
            }
            if let Some(serial) = d.serial.as_deref() {
                let ok = !serial.is_empty()
                    && serial.len() <= 36
                    && serial
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || " _.+-".contains(c));
                if !ok {
                    self.push(
                        format!("{p}.serial"),
                        format!(
                            "{} is not a disk serial (1 to 36 letters, digits, spaces or _ . + -)",
                            q(serial)
                        ),
                    );
                }
            }
        }
    }

    fn bus(&mut self, path: &str, bus: Option<&str>, kind: &str) {
        let Some(b) = bus else { return };
        match (kind, b) {
            ("disk", "virtio" | "sata" | "scsi" | "usb") => {}
            ("cdrom", "sata" | "scsi" | "usb") => {}
            ("cdrom", "virtio") => self.push(
                path,
                "\"virtio\" is not a CD-ROM bus (libvirt refuses it): use \"sata\" or \"scsi\"",
            ),
            ("lun", "scsi" | "virtio") => {}
            ("lun", "sata" | "usb") => self.push(
                path,
                format!(
                    "{} cannot carry a LUN (SCSI passthrough): use \"scsi\"",
                    q(b)
                ),
            ),
            (_, "ide") => self.push(
                path,
                "\"ide\" is not available: q35 machines have no IDE controller; use \"sata\"",
            ),
            _ => self.push(
                path,
                format!(
                    "{} is not a disk bus: use \"virtio\", \"sata\", \"scsi\" or \"usb\"",
                    q(b)
                ),
            ),
        }
    }

    fn pci_address(&mut self, path: &str, addr: &str) {
        if !is_pci_address(addr) {
            self.push(
                path,
                format!(
                    "{} is not a PCI address of the form \"0000:00:00.0\" (domain:bus:slot.function, hex, function 0-7)",
                    q(addr)
                ),
            );
        }
    }

    fn boot_orders(&mut self, s: &VmiSpec) {
        let mut seen: HashMap<u32, String> = HashMap::new();
        let disks = s.domain.devices.disks.iter().enumerate().map(|(i, d)| {
            (
                format!("spec.domain.devices.disks[{i}].bootOrder"),
                d.boot_order,
            )
        });
        let ifaces = s
            .domain
            .devices
            .interfaces
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    format!("spec.domain.devices.interfaces[{i}].bootOrder"),
                    d.boot_order,
                )
            });
        for (path, order) in disks.chain(ifaces) {
            let Some(o) = order else { continue };
            if o == 0 {
                self.push(&path, "0 is not a boot order: boot orders start at 1");
            } else if let Some(first) = seen.get(&o) {
                self.push(
                    &path,
                    format!("{o} is already the boot order of {first}: boot orders must be unique"),
                );
            } else {
                seen.insert(o, path.trim_end_matches(".bootOrder").to_string());
            }
        }
    }

    // ---------------------------------------------------------------- network

    fn networks_and_interfaces(&mut self, s: &VmiSpec) {
        let mut seen = HashMap::new();
        let mut pod_net: Option<usize> = None;
        for (i, n) in s.networks.iter().enumerate() {
            let p = format!("spec.networks[{i}]");
            self.name(&format!("{p}.name"), &n.name, "spec.networks", &mut seen, i);
            self.iface_name_chars(&format!("{p}.name"), &n.name);
            match (&n.pod, &n.multus) {
                (None, None) => {
                    self.push(&p, "has no type: set pod: {} or multus: {networkName: ...}")
                }
                (Some(_), Some(_)) => self.push(&p, "sets both pod and multus: choose one"),
                _ => {}
            }
            let is_primary =
                n.pod.is_some() || n.multus.as_ref().is_some_and(|m| m.default == Some(true));
            if is_primary {
                if let Some(first) = pod_net {
                    self.push(
                        &p,
                        format!("is a second pod network (spec.networks[{first}] is one already): a VMI has at most one pod network (pod, or multus with default: true)"),
                    );
                } else {
                    pod_net = Some(i);
                }
            }
            if let Some(m) = &n.multus {
                if m.network_name.is_empty() {
                    self.push(
                        format!("{p}.multus.networkName"),
                        "is required: name the NetworkAttachmentDefinition",
                    );
                }
            }
            if let Some(pod) = &n.pod {
                if let Some(c) = pod.vm_network_cidr.as_deref() {
                    self.cidr(&format!("{p}.pod.vmNetworkCIDR"), c, false);
                }
                if let Some(c) = pod.vm_ipv6_network_cidr.as_deref() {
                    self.cidr(&format!("{p}.pod.vmIPv6NetworkCIDR"), c, true);
                }
            }
            if !n.name.is_empty() && !s.domain.devices.interfaces.iter().any(|f| f.name == n.name) {
                self.push(
                    format!("{p}.name"),
                    format!(
                        "{} has no interface of the same name in spec.domain.devices.interfaces",
                        q(&n.name)
                    ),
                );
            }
        }

        let mut seen = HashMap::new();
        let mut macs: HashMap<[u8; 6], usize> = HashMap::new();
        let mut acpi: HashMap<u32, usize> = HashMap::new();
        for (i, f) in s.domain.devices.interfaces.iter().enumerate() {
            let p = format!("spec.domain.devices.interfaces[{i}]");
            self.name(
                &format!("{p}.name"),
                &f.name,
                "spec.domain.devices.interfaces",
                &mut seen,
                i,
            );
            self.iface_name_chars(&format!("{p}.name"), &f.name);
            let network = s.networks.iter().find(|n| n.name == f.name);
            if network.is_none() && !f.name.is_empty() {
                self.push(
                    format!("{p}.name"),
                    format!(
                        "{} has no network of the same name in spec.networks",
                        q(&f.name)
                    ),
                );
            }
            self.binding(&p, f, network);
            self.sriov_fields(&p, f);
            if let Some(m) = f.model.as_deref() {
                if !INTERFACE_MODELS.contains(&m) {
                    self.push(
                        format!("{p}.model"),
                        format!(
                            "{} is not a NIC model: use one of {}",
                            q(m),
                            INTERFACE_MODELS.join(", ")
                        ),
                    );
                }
            }
            if let Some(mac) = f.mac_address.as_deref() {
                let path = format!("{p}.macAddress");
                if let Some(bytes) = self.mac(&path, mac) {
                    if let Some(first) = macs.get(&bytes) {
                        self.push(
                            &path,
                            format!("{} is already the MAC of spec.domain.devices.interfaces[{first}]: MACs must be unique", q(mac)),
                        );
                    } else {
                        macs.insert(bytes, i);
                    }
                }
            }
            if let Some(addr) = f.pci_address.as_deref() {
                self.pci_address(&format!("{p}.pciAddress"), addr);
            }
            self.ports(&p, f);
            if let Some(o) = &f.dhcp_options {
                self.dhcp_options(&format!("{p}.dhcpOptions"), o);
            }
            if let Some(state) = f.state.as_deref() {
                let path = format!("{p}.state");
                if one_of(self, &path, state, &["up", "down", "absent"]) && state == "absent" {
                    let on_pod = network.is_some_and(|n| n.pod.is_some());
                    let bridge = f.binding_kind() == Some(BindingKind::Bridge);
                    if on_pod || !bridge {
                        self.push(
                            &path,
                            "\"absent\" is only supported for a bridge interface on a secondary (multus) network",
                        );
                    }
                }
            }
            if let Some(a) = f.acpi_index {
                let path = format!("{p}.acpiIndex");
                if a == 0 || a > 16383 {
                    self.push(&path, format!("{a} is out of range 1-16383"));
                } else if let Some(first) = acpi.get(&a) {
                    self.push(
                        &path,
                        format!("{a} is already the acpiIndex of spec.domain.devices.interfaces[{first}]: it must be unique"),
                    );
                } else {
                    acpi.insert(a, i);
                }
            }
        }
    }

    fn iface_name_chars(&mut self, path: &str, name: &str) {
        if name
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            self.push(
                path,
                format!("{} contains '/', whitespace or control characters", q(name)),
            );
        }
    }

    fn binding(&mut self, p: &str, f: &Interface, network: Option<&Network>) {
        let bindings = f.bindings();
        if bindings.is_empty() {
            self.push(
                p,
                "has no binding: set one of bridge, masquerade, macvtap, sriov, passt, slirp or binding: {name: ...}",
            );
            return;
        }
        if bindings.len() > 1 {
            self.push(
                p,
                format!(
                    "sets more than one binding ({}): an interface has exactly one",
                    bindings
                        .iter()
                        .map(binding_name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return;
        }
        let b = &bindings[0];
        // The field that set the binding, for the path.
        let field = if f.binding.is_some() {
            format!("{p}.binding.name")
        } else {
            format!("{p}.{}", binding_name(b))
        };
        if let BindingKind::Plugin(name) = b {
            self.push(
                field,
                format!(
                    "{} is not a network binding this launcher provides (it provides: {})",
                    q(name),
                    KNOWN_BINDINGS.join(", ")
                ),
            );
            return;
        }
        let Some(n) = network else { return };
        let kind = if n.pod.is_some() {
            "the pod network"
        } else {
            "a multus network"
        };
        match b {
            BindingKind::Masquerade | BindingKind::Passt | BindingKind::Slirp
                if n.pod.is_none() =>
            {
                self.push(
                    field,
                    format!(
                        "{} is only supported on the pod network, and network {} is {kind}",
                        binding_name(b),
                        q(&n.name)
                    ),
                );
            }
            BindingKind::Passt | BindingKind::Slirp if f.dhcp_options.is_some() => {
                self.push(
                    format!("{p}.dhcpOptions"),
                    format!(
                        "the {} binding cannot honour it: passt answers the guest's DHCP \
                         itself, with the pod's addresses and no custom options (remove \
                         dhcpOptions, or use the bridge or masquerade binding)",
                        binding_name(b)
                    ),
                );
            }
            // macvtap works on both: on the pod network it is planted on eth0 (net/binding/
            // macvtap.rs); on a Multus network it attaches to (or is planted on) net<N>.
            BindingKind::Sriov if n.multus.is_none() => {
                self.push(
                    field,
                    format!(
                        "{} needs a multus network (it attaches a node device), and network {} is {kind}",
                        binding_name(b),
                        q(&n.name)
                    ),
                );
            }
            _ => {}
        }
    }

    fn mac(&mut self, path: &str, mac: &str) -> Option<[u8; 6]> {
        let Some(b) = parse_mac(mac) else {
            self.push(
                path,
                format!("{} is not a MAC address (expected six hex octets such as \"02:00:00:00:00:01\")", q(mac)),
            );
            return None;
        };
        if b == [0; 6] {
            self.push(path, format!("{} is the all-zero MAC", q(mac)));
        } else if b[0] & 1 == 1 {
            self.push(path, format!("{} is a multicast MAC", q(mac)));
        } else if b == RESERVED_MAC {
            self.push(
                path,
                format!(
                    "{} is reserved by this launcher: choose another MAC",
                    q(mac)
                ),
            );
        } else {
            return Some(b);
        }
        None
    }

    fn cidr(&mut self, path: &str, text: &str, v6: bool) {
        let parsed = if text.contains('/') {
            ipnet::IpNet::from_str(text).ok()
        } else {
            None
        };
        let net = match parsed {
            Some(n) => n,
            None => {
                self.push(
                    path,
                    format!(
                        "{} is not a CIDR (expected e.g. {})",
                        q(text),
                        if v6 {
                            "\"fd10:0:2::/120\""
                        } else {
                            "\"10.0.2.0/24\""
                        }
                    ),
                );
                return;
            }
        };
        match (net, v6) {
            (ipnet::IpNet::V4(n), false) if n.prefix_len() > 30 => self.push(
                path,
                format!(
                    "{} holds {} addresses; a VM network needs at least 4 (a prefix of /30 or shorter)",
                    q(text),
                    1u64 << (32 - n.prefix_len())
                ),
            ),
            (ipnet::IpNet::V6(n), true) if n.prefix_len() > 126 => self.push(
                path,
                format!(
                    "{} holds {} addresses; a VM network needs at least 4 (a prefix of /126 or shorter)",
                    q(text),
                    1u64 << (128 - n.prefix_len())
                ),
            ),
            (ipnet::IpNet::V6(_), false) => self.push(
                path,
                format!("{} is an IPv6 network; vmNetworkCIDR is IPv4 (use vmIPv6NetworkCIDR)", q(text)),
            ),
            (ipnet::IpNet::V4(_), true) => self.push(
                path,
                format!("{} is an IPv4 network; vmIPv6NetworkCIDR is IPv6 (use vmNetworkCIDR)", q(text)),
            ),
            _ => {}
        }
    }

    /// SR-IOV hands the VF itself to the guest (a PCI `<hostdev>`): fields that configure an
    /// emulated NIC, its link, or this launcher's DHCP server cannot take effect there.
    fn sriov_fields(&mut self, p: &str, f: &Interface) {
        if f.binding_kind() != Some(BindingKind::Sriov) {
            return;
        }
        // `virtio` is the admission default for every interface; it means nothing for a VF.
        if let Some(m) = f.model.as_deref().filter(|m| *m != "virtio") {
            self.push(
                format!("{p}.model"),
                format!(
                    "{} cannot be set with sriov: the guest sees the VF's own PCI device",
                    q(m)
                ),
            );
        }
        if f.dhcp_options.is_some() {
            self.push(
                format!("{p}.dhcpOptions"),
                "cannot be set with sriov: this launcher serves no DHCP on a VF (the VF's network does)",
            );
        }
        if f.state.as_deref() == Some("down") {
            self.push(
                format!("{p}.state"),
                "\"down\" cannot be set with sriov: a passed-through VF has no link state this launcher controls",
            );
        }
        if !f.ports.is_empty() || !f.port_ranges.is_empty() {
            self.push(
                format!("{p}.ports"),
                "cannot be set with sriov: ports are forwarded only by masquerade and passt",
            );
        }
    }

    fn ports(&mut self, p: &str, f: &Interface) {
        let mut seen: HashMap<(i64, String), usize> = HashMap::new();
        for (j, port) in f.ports.iter().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            let proto = self.protocol(&format!("{pp}.protocol"), port.protocol.as_deref());
            if !(1..=65535).contains(&port.port) {
                self.push(
                    format!("{pp}.port"),
                    format!("{} is out of range 1-65535", port.port),
                );
                continue;
            }
            if let Some(proto) = proto {
                if let Some(first) = seen.get(&(port.port, proto.clone())) {
                    self.push(
                        &pp,
                        format!(
                            "{}/{proto} is already forwarded by {p}.ports[{first}]",
                            port.port
                        ),
                    );
                } else {
                    seen.insert((port.port, proto), j);
                }
            }
        }
        for (j, r) in f.port_ranges.iter().enumerate() {
            let pp = format!("{p}.portRanges[{j}]");
            self.protocol(&format!("{pp}.protocol"), r.protocol.as_deref());
            let mut ok = true;
            for (field, v) in [("start", r.start), ("end", r.end)] {
                if !(1..=65535).contains(&v) {
                    self.push(
                        format!("{pp}.{field}"),
                        format!("{v} is out of range 1-65535"),
                    );
                    ok = false;
                }
            }
            if ok && r.start > r.end {
                self.push(&pp, format!("start {} is after end {}", r.start, r.end));
            }
        }
    }

    /// Checks a port protocol; returns it upper-cased when valid.
    fn protocol(&mut self, path: &str, proto: Option<&str>) -> Option<String> {
        let proto = proto.unwrap_or("TCP");
        let upper = proto.to_ascii_uppercase();
        if upper == "TCP" || upper == "UDP" {
            Some(upper)
        } else {
            self.push(
                path,
                format!("{} is not a protocol: use \"TCP\" or \"UDP\"", q(proto)),
            );
            None
        }
    }

    fn dhcp_options(&mut self, p: &str, o: &DhcpOptions) {
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for (j, opt) in o.private_options.iter().enumerate() {
            let path = format!("{p}.privateOptions[{j}].option");
            if !(224..=254).contains(&opt.option) {
                self.push(
                    &path,
                    format!(
                        "{} is not a private DHCP option: private options are 224-254",
                        opt.option
                    ),
                );
            } else if let Some(first) = seen.get(&opt.option) {
                self.push(
                    &path,
                    format!(
                        "{} is already set by {p}.privateOptions[{first}]",
                        opt.option
                    ),
                );
            } else {
                seen.insert(opt.option, j);
            }
        }
        for (j, ntp) in o.ntp_servers.iter().enumerate() {
            if Ipv4Addr::from_str(ntp).is_err() {
                self.push(
                    format!("{p}.ntpServers[{j}]"),
                    format!(
                        "{} is not an IPv4 address (DHCPv4 option 42 carries IPv4 addresses only)",
                        q(ntp)
                    ),
                );
            }
        }
    }
}

/// Reports a problem unless `value` is one of `allowed`; returns whether it was.
fn one_of(v: &mut Validator, path: &str, value: &str, allowed: &[&str]) -> bool {
    if allowed.contains(&value) {
        return true;
    }
    let list = allowed.iter().map(|a| q(a)).collect::<Vec<_>>().join(", ");
    v.push(
        path,
        format!("{} is not allowed: use one of {list}", q(value)),
    );
    false
}

fn binding_name(b: &BindingKind) -> &str {
    match b {
        BindingKind::Bridge => "bridge",
        BindingKind::Masquerade => "masquerade",
        BindingKind::Macvtap => "macvtap",
        BindingKind::Sriov => "sriov",
        BindingKind::Passt => "passt",
        BindingKind::Slirp => "slirp",
        BindingKind::TcRedirect => "tc-redirect",
        BindingKind::Plugin(n) => n,
    }
}

fn kind_name(k: VolumeKind) -> &'static str {
    match k {
        VolumeKind::ContainerDisk => "containerDisk",
        VolumeKind::CloudInitNoCloud => "cloudInitNoCloud",
        VolumeKind::CloudInitConfigDrive => "cloudInitConfigDrive",
        VolumeKind::EmptyDisk => "emptyDisk",
        VolumeKind::PersistentVolumeClaim => "persistentVolumeClaim",
        VolumeKind::DataVolume => "dataVolume",
        VolumeKind::HostDisk => "hostDisk",
        VolumeKind::Ephemeral => "ephemeral",
        VolumeKind::ConfigMap => "configMap",
        VolumeKind::Secret => "secret",
        VolumeKind::ServiceAccount => "serviceAccount",
        VolumeKind::DownwardApi => "downwardAPI",
        VolumeKind::Sysprep => "sysprep",
        VolumeKind::MemoryDump => "memoryDump",
    }
}

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending with an alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: at most 253 characters of dot-separated labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let sep = if s.contains('-') { '-' } else { ':' };
    let parts: Vec<&str> = s.split(sep).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

/// `dddd:bb:ss.f` in hex, function 0-7.
pub fn is_pci_address(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let Some((head, func)) = s.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = head.split(':').collect();
    parts.len() == 3
        && hex(parts[0], 4)
        && hex(parts[1], 2)
        && hex(parts[2], 2)
        && func.len() == 1
        && matches!(func.as_bytes()[0], b'0'..=b'7')
}

fn is_base64(s: &str) -> bool {
    let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let body = s.trim_end_matches('=');
    let pad = s.len() - body.len();
    s.len() % 4 == 0
        && pad <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A valid VMI; every test merges a patch into it (JSON merge patch: objects merge,
    /// arrays and scalars replace, null deletes).
    fn base() -> Value {
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "t"},
            "spec": {
                "domain": {
                    "memory": {"guest": "128Mi"},
                    "devices": {
                        "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                        "interfaces": [{"name": "default", "masquerade": {}}]
                    }
                },
                "networks": [{"name": "default", "pod": {}}],
                "volumes": [{"name": "root", "containerDisk": {"image": "img:1"}}]
            }
        })
    }

    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p,
        }
    }

    fn problems(patch: Value) -> Vec<Problem> {
        let mut v = base();
        merge(&mut v, patch);
        let text = serde_json::to_string(&v).unwrap();
        let mut vmi = crate::spec::parse_str(&text, "test").unwrap().vmi;
        crate::spec::defaults::apply(&mut vmi);
        validate(&vmi).err().unwrap_or_default()
    }

    #[track_caller]
    fn bad(patch: Value, path: &str, needle: &str) {
        let found = problems(patch);
        assert!(
            found
                .iter()
                .any(|p| p.path == path && p.message.contains(needle)),
            "expected a problem at {path} containing {needle:?}, got {found:#?}"
        );
    }

    #[track_caller]
    fn good(patch: Value) {
        let found = problems(patch);
        assert!(found.is_empty(), "expected no problems, got {found:#?}");
    }

    fn ifaces(list: Value) -> Value {
        json!({"spec": {"domain": {"devices": {"interfaces": list}}}})
    }
    fn iface(extra: Value) -> Value {
        let mut i = json!({"name": "default", "masquerade": {}});
        merge(&mut i, extra);
        ifaces(json!([i]))
    }
    fn disk0(extra: Value) -> Value {
        let mut d = json!({"name": "root"});
        merge(&mut d, extra);
        json!({"spec": {"domain": {"devices": {"disks": [d]}}}})
    }
    fn vol0(v: Value) -> Value {
        let mut vol = json!({"name": "root"});
        merge(&mut vol, v);
        json!({"spec": {"volumes": [vol]}})
    }

    #[test]
    fn the_base_is_valid() {
        good(json!({}));
    }

    #[test]
    fn all_problems_are_reported_not_just_the_first() {
        let found = problems(json!({
            "metadata": {"name": "Bad_Name"},
            "spec": {"hostname": "-x", "domain": {"devices": {"interfaces": [
                {"name": "default", "masquerade": {}, "macAddress": "01:00:5e:00:00:01"}
            ]}}}
        }));
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "metadata.name",
                "spec.hostname",
                "spec.domain.devices.interfaces[0].macAddress"
            ]
        );
        assert_eq!(
            found[2].to_string(),
            "spec.domain.devices.interfaces[0].macAddress: \"01:00:5e:00:00:01\" is a multicast MAC"
        );
    }

    // ------------------------------------------------------------ metadata, top level

    #[test]
    fn metadata_name_is_required_and_dns1123() {
        bad(
            json!({"metadata": {"name": null}}),
            "metadata.name",
            "is required",
        );
        bad(
            json!({"metadata": {"name": "My_VM"}}),
            "metadata.name",
            "\"My_VM\" is not a valid DNS-1123 name",
        );
        bad(
            json!({"metadata": {"name": "a".repeat(254)}}),
            "metadata.name",
            "not a valid",
        );
        good(json!({"metadata": {"name": "vm-1.example"}}));
    }

    #[test]
    fn namespace_is_a_dns1123_label() {
        bad(
            json!({"metadata": {"namespace": "a.b"}}),
            "metadata.namespace",
            "\"a.b\"",
        );
        good(json!({"metadata": {"namespace": "kube-virt"}}));
    }

    #[test]
    fn hostname_and_subdomain_are_rfc1123_labels_of_63() {
        bad(
            json!({"spec": {"hostname": "a".repeat(64)}}),
            "spec.hostname",
            "RFC 1123 label",
        );
        bad(
            json!({"spec": {"hostname": "my.host"}}),
            "spec.hostname",
            "\"my.host\"",
        );
        bad(
            json!({"spec": {"subdomain": "Sub"}}),
            "spec.subdomain",
            "\"Sub\"",
        );
        bad(
            json!({"spec": {"subdomain": "x-"}}),
            "spec.subdomain",
            "\"x-\"",
        );
        good(json!({"spec": {"hostname": "a".repeat(63), "subdomain": "my-sub"}}));
    }

    #[test]
    fn termination_grace_is_not_negative() {
        bad(
            json!({"spec": {"terminationGracePeriodSeconds": -1}}),
            "spec.terminationGracePeriodSeconds",
            "-1 is negative",
        );
        good(json!({"spec": {"terminationGracePeriodSeconds": 0}}));
    }

    #[test]
    fn architecture_other_than_amd64_is_refused() {
        bad(
            json!({"spec": {"architecture": "arm64"}}),
            "spec.architecture",
            "\"arm64\" is not supported by this launcher",
        );
        good(json!({"spec": {"architecture": "amd64"}}));
    }

    #[test]
    fn dra_claims_are_refused() {
        bad(
            json!({"spec": {"resourceClaims": [{"name": "c"}]}}),
            "spec.resourceClaims[0]",
            "not supported by this launcher",
        );
        good(json!({"spec": {"resourceClaims": []}}));
    }

    #[test]
    fn launch_security_is_refused() {
        bad(
            json!({"spec": {"domain": {"launchSecurity": {"sev": {}}}}}),
            "spec.domain.launchSecurity",
            "not supported by this launcher",
        );
    }

    #[test]
    fn hook_sidecars_are_refused() {
        bad(
            json!({"metadata": {"annotations": {"hooks.kubevirt.io/hookSidecars": "[]"}}}),
            "metadata.annotations[\"hooks.kubevirt.io/hookSidecars\"]",
            "a hook sidecar is not supported by this launcher",
        );
        good(json!({"metadata": {"annotations": {"other": "x"}}}));
    }

    // ------------------------------------------------------------ domain

    #[test]
    fn machine_type_must_be_q35() {
        bad(
            json!({"spec": {"domain": {"machine": {"type": "pc"}}}}),
            "spec.domain.machine.type",
            "\"pc\" is not a supported machine type",
        );
        good(json!({"spec": {"domain": {"machine": {"type": "pc-q35-rhel9.6.0"}}}}));
    }

    #[test]
    fn reboot_policy_values() {
        bad(
            json!({"spec": {"domain": {"rebootPolicy": "Sometimes"}}}),
            "spec.domain.rebootPolicy",
            "\"Sometimes\" is not allowed",
        );
        good(json!({"spec": {"domain": {"rebootPolicy": "Reboot"}}}));
        good(json!({"spec": {"domain": {"rebootPolicy": "Terminate"}}}));
    }

    #[test]
    fn io_threads_policy_values() {
        bad(
            json!({"spec": {"domain": {"ioThreadsPolicy": "many"}}}),
            "spec.domain.ioThreadsPolicy",
            "\"many\" is not allowed",
        );
        bad(
            json!({"spec": {"domain": {"ioThreadsPolicy": "supplementalPool"}}}),
            "spec.domain.ioThreadsPolicy",
            "is not supported by this launcher",
        );
        good(json!({"spec": {"domain": {"ioThreadsPolicy": "auto"}}}));
        good(json!({"spec": {"domain": {"ioThreadsPolicy": "shared"}}}));
    }

    #[test]
    fn resource_quantities_parse() {
        bad(
            json!({"spec": {"domain": {"resources": {"requests": {"memory": "1Gb"}}}}}),
            "spec.domain.resources.requests.memory",
            "\"1Gb\" is not a Kubernetes quantity",
        );
        bad(
            json!({"spec": {"domain": {"resources": {"limits": {"cpu": "-1"}}}}}),
            "spec.domain.resources.limits.cpu",
            "negative",
        );
        bad(
            json!({"spec": {"domain": {"resources": {"requests": {"nvidia.com/gpu": "x"}}}}}),
            "spec.domain.resources.requests.nvidia.com/gpu",
            "not a Kubernetes quantity",
        );
        good(
            json!({"spec": {"domain": {"resources": {"requests": {"memory": "1Gi", "cpu": "500m"}, "limits": {"cpu": 2}}}}}),
        );
    }

    #[test]
    fn requests_are_at_most_limits() {
        bad(
            json!({"spec": {"domain": {"resources": {"requests": {"cpu": "3"}, "limits": {"cpu": "2"}}}}}),
            "spec.domain.resources.requests.cpu",
            "\"3\" is more than the limit \"2\"",
        );
        bad(
            json!({"spec": {"domain": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}}}),
            "spec.domain.resources.requests.memory",
            "more than the limit",
        );
        good(
            json!({"spec": {"domain": {"resources": {"requests": {"cpu": "1500m"}, "limits": {"cpu": "2"}}}}}),
        );
    }

    #[test]
    fn guest_memory_is_required_parses_and_is_big_enough() {
        bad(
            json!({"spec": {"domain": {"memory": null}}}),
            "spec.domain.memory.guest",
            "no guest memory is given",
        );
        bad(
            json!({"spec": {"domain": {"memory": {"guest": "lots"}}}}),
            "spec.domain.memory.guest",
            "\"lots\" is not a Kubernetes quantity",
        );
        bad(
            json!({"spec": {"domain": {"memory": {"guest": "512Ki"}}}}),
            "spec.domain.memory.guest",
            "too small",
        );
        good(
            json!({"spec": {"domain": {"memory": null, "resources": {"requests": {"memory": "64M"}}}}}),
        );
    }

    #[test]
    fn guest_memory_is_at_most_the_limit() {
        bad(
            json!({"spec": {"domain": {"memory": {"guest": "2Gi"}, "resources": {"limits": {"memory": "1Gi"}}}}}),
            "spec.domain.memory.guest",
            "\"2Gi\" is more than the memory limit \"1Gi\"",
        );
        good(
            json!({"spec": {"domain": {"memory": {"guest": "1Gi"}, "resources": {"limits": {"memory": "1Gi"}}}}}),
        );
    }

    #[test]
    fn memory_hotplug_is_refused() {
        bad(json!({"spec": {"domain": {"memory": {"guest": "1Gi", "maxGuest": "4Gi"}}}}), "spec.domain.memory.maxGuest", "memory hotplug (maxGuest \"4Gi\" with guest \"1Gi\") is not supported by this launcher");
        good(json!({"spec": {"domain": {"memory": {"guest": "1Gi", "maxGuest": "1024Mi"}}}}));
    }

    #[test]
    fn hugepages_size_and_multiple() {
        bad(
            json!({"spec": {"domain": {"memory": {"hugepages": {"pageSize": "4Ki"}}}}}),
            "spec.domain.memory.hugepages.pageSize",
            "not a huge page size",
        );
        bad(
            json!({"spec": {"domain": {"memory": {"hugepages": {"pageSize": "huge"}}}}}),
            "spec.domain.memory.hugepages.pageSize",
            "not a Kubernetes quantity",
        );
        bad(
            json!({"spec": {"domain": {"memory": {"guest": "1025Mi", "hugepages": {"pageSize": "2Mi"}}}}}),
            "spec.domain.memory.guest",
            "not a multiple of the huge page size",
        );
        good(
            json!({"spec": {"domain": {"memory": {"guest": "1Gi", "hugepages": {"pageSize": "2Mi"}}}}}),
        );
    }

    #[test]
    fn cpu_counts_are_positive_and_cpu_hotplug_is_refused() {
        // 0 means unset for defaults; validation alone (no defaults) refuses it.
        let mut vmi = Vmi::default();
        vmi.spec.domain.cpu = Some(Cpu {
            cores: Some(0),
            ..Cpu::default()
        });
        let p = validate(&vmi).unwrap_err();
        assert!(
            p.iter().any(|p| p.path == "spec.domain.cpu.cores"),
            "{p:#?}"
        );
        bad(
            json!({"spec": {"domain": {"cpu": {"sockets": 4, "maxSockets": 8}}}}),
            "spec.domain.cpu.maxSockets",
            "CPU hotplug (maxSockets 8 with 4 sockets) is not supported by this launcher",
        );
        good(
            json!({"spec": {"domain": {"cpu": {"sockets": 2, "maxSockets": 2, "cores": 2, "threads": 2}}}}),
        );
    }

    #[test]
    fn cpu_feature_policy_values() {
        bad(
            json!({"spec": {"domain": {"cpu": {"features": [{"name": "vmx", "policy": "maybe"}]}}}}),
            "spec.domain.cpu.features[0].policy",
            "\"maybe\" is not allowed",
        );
        bad(
            json!({"spec": {"domain": {"cpu": {"features": [{"name": ""}]}}}}),
            "spec.domain.cpu.features[0].name",
            "is required",
        );
        good(
            json!({"spec": {"domain": {"cpu": {"features": [{"name": "vmx", "policy": "forbid"}, {"name": "pcid"}]}}}}),
        );
    }

    #[test]
    fn isolate_emulator_thread_needs_dedicated_cpus() {
        bad(
            json!({"spec": {"domain": {"cpu": {"isolateEmulatorThread": true}}}}),
            "spec.domain.cpu.isolateEmulatorThread",
            "dedicatedCpuPlacement",
        );
        good(
            json!({"spec": {"domain": {"cpu": {"isolateEmulatorThread": true, "dedicatedCpuPlacement": true}}}}),
        );
    }

    #[test]
    fn dedicated_cpus_need_whole_cpu_counts() {
        bad(
            json!({"spec": {"domain": {"cpu": {"dedicatedCpuPlacement": true}, "resources": {"requests": {"cpu": "1500m"}}}}}),
            "spec.domain.resources.requests.cpu",
            "not a whole number of CPUs",
        );
        good(
            json!({"spec": {"domain": {"cpu": {"dedicatedCpuPlacement": true}, "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "2000m"}}}}}),
        );
    }

    #[test]
    fn firmware_uuid_is_a_uuid() {
        bad(
            json!({"spec": {"domain": {"firmware": {"uuid": "not-a-uuid"}}}}),
            "spec.domain.firmware.uuid",
            "\"not-a-uuid\" is not a UUID",
        );
        good(
            json!({"spec": {"domain": {"firmware": {"uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223"}}}}),
        );
    }

    #[test]
    fn bootloader_is_bios_or_efi_not_both() {
        bad(
            json!({"spec": {"domain": {"firmware": {"bootloader": {"bios": {}, "efi": {"secureBoot": false}}}}}}),
            "spec.domain.firmware.bootloader",
            "both bios and efi",
        );
        good(
            json!({"spec": {"domain": {"firmware": {"bootloader": {"bios": {"useSerial": true}}}}}}),
        );
    }

    #[test]
    fn secure_boot_requires_smm() {
        bad(
            json!({"spec": {"domain": {"firmware": {"bootloader": {"efi": {"secureBoot": true}}}, "features": {"smm": {"enabled": false}}}}}),
            "spec.domain.features.smm.enabled",
            "requires SMM",
        );
        bad(
            json!({"spec": {"domain": {"firmware": {"bootloader": {"efi": {}}}, "features": {"smm": {"enabled": false}}}}}),
            "spec.domain.features.smm.enabled",
            "on by default with efi",
        );
        // SMM absent: turned on by the defaults.
        good(json!({"spec": {"domain": {"firmware": {"bootloader": {"efi": {}}}}}}));
        good(
            json!({"spec": {"domain": {"firmware": {"bootloader": {"efi": {}}}, "features": {"smm": {}}}}}),
        );
        good(
            json!({"spec": {"domain": {"firmware": {"bootloader": {"efi": {"secureBoot": false}}}, "features": {"smm": {"enabled": false}}}}}),
        );
        // Validation alone (no defaults) refuses secure boot without SMM, as KubeVirt does.
        let mut vmi = Vmi::default();
        vmi.spec.domain.firmware = Some(Firmware {
            bootloader: Some(Bootloader {
                efi: Some(Efi::default()),
                bios: None,
            }),
            ..Firmware::default()
        });
        let p = validate(&vmi).unwrap_err();
        assert!(
            p.iter()
                .any(|p| p.path == "spec.domain.features.smm.enabled"),
            "{p:#?}"
        );
    }

    #[test]
    fn kernel_boot_needs_an_image_and_a_kernel_or_initrd() {
        let kb = |c: Value, args: Value| json!({"spec": {"domain": {"firmware": {"kernelBoot": {"container": c, "kernelArgs": args}}}}});
        bad(
            kb(json!({"kernelPath": "/boot/vmlinuz"}), Value::Null),
            "spec.domain.firmware.kernelBoot.container.image",
            "is required",
        );
        bad(
            kb(json!({"image": "k:1"}), Value::Null),
            "spec.domain.firmware.kernelBoot.container",
            "needs kernelPath or initrdPath",
        );
        bad(
            kb(
                json!({"image": "k:1", "initrdPath": "/boot/initrd"}),
                json!("console=ttyS0"),
            ),
            "spec.domain.firmware.kernelBoot.kernelArgs",
            "needs kernelBoot.container.kernelPath",
        );
        bad(
            kb(
                json!({"image": "k:1", "kernelPath": "boot/vmlinuz"}),
                Value::Null,
            ),
            "spec.domain.firmware.kernelBoot.container.kernelPath",
            "not an absolute path",
        );
        bad(
            kb(
                json!({"image": "k:1", "kernelPath": "/boot/../../etc/shadow"}),
                Value::Null,
            ),
            "spec.domain.firmware.kernelBoot.container.kernelPath",
            "without \"..\"",
        );
        bad(
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"kernelArgs": "x"}}}}}),
            "spec.domain.firmware.kernelBoot.kernelArgs",
            "needs a kernel",
        );
        bad(
            kb(json!({"image": "k:1", "kernelPath": "/boot/"}), Value::Null),
            "spec.domain.firmware.kernelBoot.container.kernelPath",
            "has no file name",
        );
        good(kb(
            json!({"image": "k:1", "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initrd"}),
            json!("console=ttyS0"),
        ));
    }

    #[test]
    fn hyperv_spinlocks_and_vendorid() {
        bad(
            json!({"spec": {"domain": {"features": {"hyperv": {"spinlocks": {"spinlocks": 100}}}}}}),
            "spec.domain.features.hyperv.spinlocks.spinlocks",
            "100 is less than 4095",
        );
        bad(
            json!({"spec": {"domain": {"features": {"hyperv": {"vendorid": {"vendorid": "abcdefghijklm"}}}}}}),
            "spec.domain.features.hyperv.vendorid.vendorid",
            "is not a vendor id",
        );
        good(
            json!({"spec": {"domain": {"features": {"hyperv": {"spinlocks": {"spinlocks": 8191}, "vendorid": {"vendorid": "KubeVirt"}}}}}}),
        );
    }

    #[test]
    fn clock_is_utc_or_timezone_not_both() {
        bad(
            json!({"spec": {"domain": {"clock": {"utc": {}, "timezone": "Europe/Berlin"}}}}),
            "spec.domain.clock",
            "both utc and timezone",
        );
        good(json!({"spec": {"domain": {"clock": {"timezone": "Europe/Berlin"}}}}));
        good(json!({"spec": {"domain": {"clock": {"utc": {"offsetSeconds": 3600}}}}}));
    }

    #[test]
    fn timezones_are_zone_names() {
        bad(
            json!({"spec": {"domain": {"clock": {"timezone": ""}}}}),
            "spec.domain.clock.timezone",
            "\"\" is not a time zone name",
        );
        bad(
            json!({"spec": {"domain": {"clock": {"timezone": "../../etc/passwd"}}}}),
            "spec.domain.clock.timezone",
            "is not a time zone name",
        );
        bad(
            json!({"spec": {"domain": {"clock": {"timezone": "Europe/Berlin time"}}}}),
            "spec.domain.clock.timezone",
            "is not a time zone name",
        );
        good(
            json!({"spec": {"domain": {"clock": {"timezone": "America/Argentina/Buenos_Aires"}}}}),
        );
        good(json!({"spec": {"domain": {"clock": {"timezone": "Etc/GMT+3"}}}}));
    }

    #[test]
    fn timer_tick_policies_and_track() {
        bad(
            json!({"spec": {"domain": {"clock": {"utc": {}, "timer": {"rtc": {"tickPolicy": "merge"}}}}}}),
            "spec.domain.clock.timer.rtc.tickPolicy",
            "\"merge\" is not allowed",
        );
        bad(
            json!({"spec": {"domain": {"clock": {"utc": {}, "timer": {"kvm": {"tickPolicy": "delay"}}}}}}),
            "spec.domain.clock.timer.kvm.tickPolicy",
            "has no tick policy",
        );
        bad(
            json!({"spec": {"domain": {"clock": {"utc": {}, "timer": {"rtc": {"track": "host"}}}}}}),
            "spec.domain.clock.timer.rtc.track",
            "\"host\" is not allowed",
        );
        bad(
            json!({"spec": {"domain": {"clock": {"utc": {}, "timer": {"pit": {"track": "wall"}}}}}}),
            "spec.domain.clock.timer.pit.track",
            "only the rtc timer",
        );
        good(
            json!({"spec": {"domain": {"clock": {"utc": {}, "timer": {"hpet": {"present": false}, "pit": {"tickPolicy": "delay"}, "rtc": {"tickPolicy": "catchup", "track": "guest"}, "hyperv": {}}}}}}),
        );
    }

    // ------------------------------------------------------------ hardware refusals

    #[test]
    fn gpus_are_refused_with_their_index() {
        bad(
            json!({"spec": {"domain": {"devices": {"gpus": [{"name": "g", "deviceName": "nvidia.com/X"}, {"name": "h", "deviceName": "y"}]}}}}),
            "spec.domain.devices.gpus[1]",
            "is not supported by this launcher: it has no GPU device plugin",
        );
    }

    #[test]
    fn host_devices_are_refused() {
        bad(
            json!({"spec": {"domain": {"devices": {"hostDevices": [{"name": "u", "deviceName": "kubevirt.io/storage"}]}}}}),
            "spec.domain.devices.hostDevices[0]",
            "not supported by this launcher",
        );
    }

    #[test]
    fn client_passthrough_is_refused() {
        bad(
            json!({"spec": {"domain": {"devices": {"clientPassthrough": {}}}}}),
            "spec.domain.devices.clientPassthrough",
            "USB redirection",
        );
    }

    #[test]
    fn sound_models_are_ich9_or_ac97() {
        bad(
            json!({"spec": {"domain": {"devices": {"sound": {"name": "s", "model": "sb16"}}}}}),
            "spec.domain.devices.sound.model",
            "\"sb16\" is not allowed",
        );
        bad(
            json!({"spec": {"domain": {"devices": {"sound": {"name": "s", "model": 3}}}}}),
            "spec.domain.devices.sound.model",
            "is not a sound model",
        );
        good(json!({"spec": {"domain": {"devices": {"sound": {"name": "s"}}}}}));
        good(json!({"spec": {"domain": {"devices": {"sound": {"name": "s", "model": "ac97"}}}}}));
    }

    #[test]
    fn numa_and_realtime_are_refused() {
        bad(
            json!({"spec": {"domain": {"cpu": {"numa": {"guestMappingPassthrough": {}}}}}}),
            "spec.domain.cpu.numa",
            "is not supported by this launcher",
        );
        bad(
            json!({"spec": {"domain": {"cpu": {"realtime": {}}}}}),
            "spec.domain.cpu.realtime",
            "is not supported by this launcher",
        );
    }

    #[test]
    fn vcpus_are_capped() {
        bad(
            json!({"spec": {"domain": {"cpu": {"sockets": 64, "cores": 32}}}}),
            "spec.domain.cpu",
            "2048 vCPUs",
        );
        good(json!({"spec": {"domain": {"cpu": {"sockets": 32, "cores": 32}}}}));
    }

    #[test]
    fn custom_acpi_tables_and_persistent_efi_are_refused() {
        bad(
            json!({"spec": {"domain": {"firmware": {"acpi": {"slicNameRef": "x"}}}}}),
            "spec.domain.firmware.acpi",
            "is not supported by this launcher",
        );
        bad(
            json!({"spec": {"domain": {"features": {"smm": {}}, "firmware": {"bootloader": {"efi": {"persistent": true}}}}}}),
            "spec.domain.firmware.bootloader.efi.persistent",
            "is not supported by this launcher",
        );
        good(
            json!({"spec": {"domain": {"features": {"smm": {}}, "firmware": {"bootloader": {"efi": {"persistent": false}}}}}}),
        );
    }

    #[test]
    fn hyperv_and_hyperv_passthrough_do_not_mix() {
        bad(
            json!({"spec": {"domain": {"features": {"hyperv": {"relaxed": {}}, "hypervPassthrough": {}}}}}),
            "spec.domain.features.hypervPassthrough",
            "cannot be combined",
        );
        good(json!({"spec": {"domain": {"features": {"hypervPassthrough": {}}}}}));
        good(
            json!({"spec": {"domain": {"features": {"hyperv": {"relaxed": {}}, "hypervPassthrough": {"enabled": false}}}}}),
        );
    }

    #[test]
    fn metadata_uid_can_name_a_directory() {
        bad(
            json!({"metadata": {"uid": "../x"}}),
            "metadata.uid",
            "cannot name a directory",
        );
        good(json!({"metadata": {"uid": "2a9b6c3e-0000-4000-8000-000000000001"}}));
    }

    #[test]
    fn filesystems_are_refused() {
        bad(
            json!({"spec": {"domain": {"devices": {"filesystems": [{"name": "root", "virtiofs": {}}]}}}}),
            "spec.domain.devices.filesystems[0]",
            "virtiofs",
        );
    }

    #[test]
    fn only_a_persistent_tpm_is_refused() {
        bad(
            json!({"spec": {"domain": {"devices": {"tpm": {"persistent": true}}}}}),
            "spec.domain.devices.tpm.persistent",
            "is not supported by this launcher",
        );
        good(json!({"spec": {"domain": {"devices": {"tpm": {}}}}}));
        good(
            json!({"spec": {"domain": {"devices": {"tpm": {"enabled": false, "persistent": true}}}}}),
        );
    }

    #[test]
    fn usb_tablet_is_fine() {
        good(
            json!({"spec": {"domain": {"devices": {"inputs": [{"name": "t", "type": "tablet", "bus": "usb"}]}}}}),
        );
    }

    // ------------------------------------------------------------ other devices

    #[test]
    fn watchdog_name_and_action() {
        bad(
            json!({"spec": {"domain": {"devices": {"watchdog": {"name": "w", "i6300esb": {"action": "explode"}}}}}}),
            "spec.domain.devices.watchdog.i6300esb.action",
            "\"explode\" is not allowed",
        );
        bad(
            json!({"spec": {"domain": {"devices": {"watchdog": {"i6300esb": {}}}}}}),
            "spec.domain.devices.watchdog.name",
            "is required",
        );
        good(
            json!({"spec": {"domain": {"devices": {"watchdog": {"name": "w", "i6300esb": {"action": "poweroff"}}}}}}),
        );
    }

    #[test]
    fn inputs_are_tablets_on_usb_or_virtio() {
        bad(
            json!({"spec": {"domain": {"devices": {"inputs": [{"name": "k", "type": "keyboard"}]}}}}),
            "spec.domain.devices.inputs[0].type",
            "\"keyboard\" is not an input type",
        );
        bad(
            json!({"spec": {"domain": {"devices": {"inputs": [{"name": "k", "bus": "ps2"}]}}}}),
            "spec.domain.devices.inputs[0].bus",
            "\"ps2\" is not allowed",
        );
        bad(
            json!({"spec": {"domain": {"devices": {"inputs": [{"name": "k"}, {"name": "k"}]}}}}),
            "spec.domain.devices.inputs[1].name",
            "already the name of",
        );
        good(
            json!({"spec": {"domain": {"devices": {"inputs": [{"name": "k", "bus": "virtio"}]}}}}),
        );
    }

    // ------------------------------------------------------------ disks and volumes

    #[test]
    fn every_disk_has_a_volume() {
        bad(
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "root"}, {"name": "data"}]}}}}),
            "spec.domain.devices.disks[1].name",
            "\"data\" has no volume of the same name",
        );
        good(json!({"spec": {"domain": {"devices": {"disks": [{"name": "root"}]}}}}));
    }

    #[test]
    fn disk_names_are_unique() {
        bad(
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "root"}, {"name": "root", "cdrom": {}}]}}}}),
            "spec.domain.devices.disks[1].name",
            "\"root\" is already the name of spec.domain.devices.disks[0]",
        );
    }

    #[test]
    fn volume_names_are_unique_dns_labels() {
        bad(
            json!({"spec": {"volumes": [{"name": "root", "containerDisk": {"image": "a"}}, {"name": "root", "emptyDisk": {"capacity": "1Gi"}}]}}),
            "spec.volumes[1].name",
            "already the name of spec.volumes[0]",
        );
        bad(
            json!({"spec": {"volumes": [{"name": "root", "containerDisk": {"image": "a"}}, {"name": "../x", "emptyDisk": {"capacity": "1Gi"}}]}}),
            "spec.volumes[1].name",
            "not a valid volume name",
        );
        good(
            json!({"spec": {"volumes": [{"name": "root", "containerDisk": {"image": "a"}}, {"name": "scratch-1", "emptyDisk": {"capacity": "1Gi"}}]}}),
        );
    }

    #[test]
    fn a_disk_has_exactly_one_of_disk_cdrom_lun() {
        bad(
            disk0(json!({"disk": {}, "cdrom": {}})),
            "spec.domain.devices.disks[0]",
            "sets disk and cdrom",
        );
        let mut vmi = Vmi::default();
        vmi.spec.domain.devices.disks.push(Disk {
            name: "x".into(),
            ..Disk::default()
        });
        let p = validate(&vmi).unwrap_err();
        assert!(
            p.iter()
                .any(|p| p.path == "spec.domain.devices.disks[0]"
                    && p.message.contains("none of disk")),
            "{p:#?}"
        );
        let mut p = disk0(json!({"lun": {}}));
        merge(&mut p, vol0(json!({"dataVolume": {"name": "dv"}})));
        good(p);
    }

    #[test]
    fn disk_buses_are_known() {
        bad(
            disk0(json!({"disk": {"bus": "nvme"}})),
            "spec.domain.devices.disks[0].disk.bus",
            "\"nvme\" is not a disk bus",
        );
        bad(
            disk0(json!({"disk": {"bus": "ide"}})),
            "spec.domain.devices.disks[0].disk.bus",
            "no IDE controller",
        );
        for b in ["virtio", "sata", "scsi", "usb"] {
            good(disk0(json!({"disk": {"bus": b}})));
        }
    }

    #[test]
    fn a_sata_disk_cannot_be_read_only() {
        bad(
            disk0(json!({"disk": {"bus": "sata", "readonly": true}})),
            "spec.domain.devices.disks[0].disk.readonly",
            "cannot make a SATA hard disk read-only",
        );
        let mut p = disk0(json!({})); // the default bus is sata
        merge(
            &mut p,
            vol0(json!({"persistentVolumeClaim": {"claimName": "c", "readOnly": true}})),
        );
        bad(
            p,
            "spec.domain.devices.disks[0].disk.readonly",
            "the disk's claim is readOnly",
        );
        good(disk0(json!({"disk": {"bus": "virtio", "readonly": true}})));
        good(disk0(json!({"disk": {"bus": "sata", "readonly": false}})));
    }

    #[test]
    fn efi_needs_acpi() {
        bad(
            json!({"spec": {"domain": {"features": {"acpi": {"enabled": false}}, "firmware": {"bootloader": {"efi": {"secureBoot": false}}}}}}),
            "spec.domain.features.acpi.enabled",
            "EFI firmware needs ACPI",
        );
        good(
            json!({"spec": {"domain": {"features": {"acpi": {"enabled": false}}, "firmware": {"bootloader": {"bios": {}}}}}}),
        );
        good(
            json!({"spec": {"domain": {"features": {"acpi": {}}, "firmware": {"bootloader": {"efi": {"secureBoot": false}}}}}}),
        );
    }

    #[test]
    fn cdrom_cannot_use_virtio() {
        bad(
            disk0(json!({"cdrom": {"bus": "virtio"}})),
            "spec.domain.devices.disks[0].cdrom.bus",
            "not a CD-ROM bus",
        );
        good(disk0(json!({"cdrom": {"bus": "scsi"}})));
    }

    #[test]
    fn lun_needs_scsi() {
        bad(
            disk0(json!({"lun": {"bus": "sata"}})),
            "spec.domain.devices.disks[0].lun.bus",
            "cannot carry a LUN",
        );
        let mut p = disk0(json!({"lun": {"bus": "scsi"}}));
        merge(
            &mut p,
            vol0(json!({"persistentVolumeClaim": {"claimName": "blk"}})),
        );
        good(p);
    }

    #[test]
    fn cdrom_tray_values() {
        bad(
            disk0(json!({"cdrom": {"tray": "ajar"}})),
            "spec.domain.devices.disks[0].cdrom.tray",
            "\"ajar\"",
        );
        good(disk0(json!({"cdrom": {"tray": "open"}})));
    }

    #[test]
    fn disk_pci_address_format_and_bus() {
        bad(
            disk0(json!({"disk": {"bus": "virtio", "pciAddress": "00:05.0"}})),
            "spec.domain.devices.disks[0].disk.pciAddress",
            "\"00:05.0\" is not a PCI address",
        );
        bad(
            disk0(json!({"disk": {"bus": "virtio", "pciAddress": "0000:00:05.8"}})),
            "spec.domain.devices.disks[0].disk.pciAddress",
            "not a PCI address",
        );
        bad(
            disk0(json!({"disk": {"bus": "sata", "pciAddress": "0000:00:05.0"}})),
            "spec.domain.devices.disks[0].disk.pciAddress",
            "only a virtio disk",
        );
        good(disk0(
            json!({"disk": {"bus": "virtio", "pciAddress": "0000:0a:1F.7"}}),
        ));
    }

    #[test]
    fn disk_cache_io_error_policy_serial() {
        bad(
            disk0(json!({"cache": "unsafe"})),
            "spec.domain.devices.disks[0].cache",
            "\"unsafe\" is not allowed",
        );
        bad(
            disk0(json!({"io": "uring"})),
            "spec.domain.devices.disks[0].io",
            "\"uring\"",
        );
        bad(
            disk0(json!({"errorPolicy": "panic"})),
            "spec.domain.devices.disks[0].errorPolicy",
            "\"panic\"",
        );
        bad(
            disk0(json!({"serial": "a/b"})),
            "spec.domain.devices.disks[0].serial",
            "not a disk serial",
        );
        bad(
            disk0(json!({"serial": "x".repeat(37)})),
            "spec.domain.devices.disks[0].serial",
            "not a disk serial",
        );
        good(disk0(
            json!({"cache": "none", "io": "native", "errorPolicy": "report", "serial": "D-1.x_2+ 3"}),
        ));
    }

    #[test]
    fn shareable_and_native_io_need_cache_none() {
        bad(
            disk0(json!({"shareable": true, "cache": "writeback"})),
            "spec.domain.devices.disks[0].shareable",
            "needs cache \"none\"",
        );
        bad(
            disk0(json!({"io": "native", "cache": "writethrough"})),
            "spec.domain.devices.disks[0].io",
            "needs cache \"none\"",
        );
        good(disk0(
            json!({"shareable": true, "cache": "none", "io": "native"}),
        ));
    }

    #[test]
    fn dedicated_io_threads_are_for_virtio_disks() {
        bad(
            disk0(json!({"dedicatedIOThread": true, "disk": {"bus": "sata"}})),
            "spec.domain.devices.disks[0].dedicatedIOThread",
            "virtio disk",
        );
        good(disk0(
            json!({"dedicatedIOThread": true, "disk": {"bus": "virtio"}}),
        ));
    }

    #[test]
    fn block_sizes_are_custom_powers_of_two() {
        bad(
            disk0(json!({"blockSize": {"matchVolume": {}}})),
            "spec.domain.devices.disks[0].blockSize",
            "is not supported by this launcher",
        );
        bad(
            disk0(json!({"blockSize": {"custom": {"logical": 500, "physical": 4096}}})),
            "spec.domain.devices.disks[0].blockSize.custom.logical",
            "power of two",
        );
        good(disk0(
            json!({"blockSize": {"custom": {"logical": 512, "physical": 4096}}}),
        ));
    }

    #[test]
    fn lun_reservation_is_refused_and_a_lun_needs_a_claim() {
        let mut with_pvc = disk0(json!({"lun": {"reservation": true}}));
        merge(
            &mut with_pvc,
            vol0(json!({"persistentVolumeClaim": {"claimName": "blk"}})),
        );
        bad(
            with_pvc,
            "spec.domain.devices.disks[0].lun.reservation",
            "is not supported by this launcher",
        );
        bad(disk0(json!({"lun": {}})), "spec.domain.devices.disks[0].lun", "needs a block-mode persistentVolumeClaim or dataVolume, and volume \"root\" is a containerDisk");
        let mut p = disk0(json!({"lun": {}}));
        merge(&mut p, vol0(json!({"dataVolume": {"name": "dv"}})));
        good(p);
    }

    #[test]
    fn boot_orders_start_at_one_and_are_unique_across_disks_and_interfaces() {
        bad(
            disk0(json!({"bootOrder": 0})),
            "spec.domain.devices.disks[0].bootOrder",
            "0 is not a boot order",
        );
        let mut p = disk0(json!({"bootOrder": 1}));
        merge(&mut p, iface(json!({"bootOrder": 1})));
        bad(
            p,
            "spec.domain.devices.interfaces[0].bootOrder",
            "1 is already the boot order of spec.domain.devices.disks[0]",
        );
        let mut p = disk0(json!({"bootOrder": 1}));
        merge(&mut p, iface(json!({"bootOrder": 2})));
        good(p);
    }

    #[test]
    fn a_volume_has_exactly_one_source() {
        bad(
            vol0(json!({"containerDisk": {"image": "a"}, "emptyDisk": {"capacity": "1Gi"}})),
            "spec.volumes[0]",
            "more than one source (containerDisk, emptyDisk)",
        );
        bad(
            json!({"spec": {"volumes": [{"name": "root"}]}}),
            "spec.volumes[0]",
            "has no source",
        );
    }

    #[test]
    fn container_disk_fields() {
        bad(
            vol0(json!({"containerDisk": {"image": ""}})),
            "spec.volumes[0].containerDisk.image",
            "is required",
        );
        bad(
            vol0(json!({"containerDisk": {"image": "a", "path": "disk/x.img"}})),
            "spec.volumes[0].containerDisk.path",
            "not an absolute path",
        );
        bad(
            vol0(json!({"containerDisk": {"image": "a", "imagePullPolicy": "Sometimes"}})),
            "spec.volumes[0].containerDisk.imagePullPolicy",
            "\"Sometimes\"",
        );
        good(vol0(
            json!({"containerDisk": {"image": "a", "path": "/disk/x.img", "imagePullPolicy": "Never"}}),
        ));
    }

    #[test]
    fn cloud_init_needs_data_one_of_each_kind_and_valid_base64() {
        let ci = |v: Value| json!({"spec": {"volumes": [{"name": "root", "containerDisk": {"image": "a"}}, {"name": "ci", "cloudInitNoCloud": v}]}});
        bad(
            ci(json!({})),
            "spec.volumes[1].cloudInitNoCloud",
            "has no data",
        );
        bad(
            ci(json!({"userData": "x", "userDataBase64": "eA=="})),
            "spec.volumes[1].cloudInitNoCloud",
            "sets userData and userDataBase64",
        );
        bad(
            ci(json!({"userDataBase64": "not base64!"})),
            "spec.volumes[1].cloudInitNoCloud.userDataBase64",
            "not valid base64",
        );
        bad(
            ci(json!({"secretRef": {"name": ""}})),
            "spec.volumes[1].cloudInitNoCloud.secretRef.name",
            "is required",
        );
        good(ci(
            json!({"userDataBase64": "I2Nsb3VkLWNvbmZpZwo=", "networkData": "version: 2"}),
        ));
        let cd = json!({"spec": {"volumes": [{"name": "root", "containerDisk": {"image": "a"}}, {"name": "ci", "cloudInitConfigDrive": {"networkData": "x", "networkDataBase64": "eA=="}}]}});
        bad(
            cd,
            "spec.volumes[1].cloudInitConfigDrive",
            "sets networkData and networkDataBase64",
        );
    }

    #[test]
    fn empty_disk_capacity_parses_and_is_positive() {
        bad(
            vol0(json!({"emptyDisk": {"capacity": "big"}})),
            "spec.volumes[0].emptyDisk.capacity",
            "\"big\" is not a Kubernetes quantity",
        );
        bad(
            vol0(json!({"emptyDisk": {"capacity": "0"}})),
            "spec.volumes[0].emptyDisk.capacity",
            "is zero",
        );
        bad(
            vol0(json!({"emptyDisk": {}})),
            "spec.volumes[0].emptyDisk.capacity",
            "is required",
        );
        good(vol0(json!({"emptyDisk": {"capacity": "2Gi"}})));
    }

    #[test]
    fn claim_backed_volumes_name_their_claim() {
        bad(
            vol0(json!({"persistentVolumeClaim": {"claimName": ""}})),
            "spec.volumes[0].persistentVolumeClaim.claimName",
            "is required",
        );
        bad(
            vol0(json!({"ephemeral": {}})),
            "spec.volumes[0].ephemeral.persistentVolumeClaim.claimName",
            "is required",
        );
        bad(
            vol0(json!({"dataVolume": {}})),
            "spec.volumes[0].dataVolume.name",
            "is required",
        );
        good(vol0(json!({"persistentVolumeClaim": {"claimName": "c"}})));
        good(vol0(
            json!({"ephemeral": {"persistentVolumeClaim": {"claimName": "c"}}}),
        ));
        good(vol0(json!({"dataVolume": {"name": "dv"}})));
    }

    #[test]
    fn host_disk_fields() {
        bad(
            vol0(json!({"hostDisk": {"path": "rel/disk.img", "type": "Disk"}})),
            "spec.volumes[0].hostDisk.path",
            "not an absolute path",
        );
        bad(
            vol0(json!({"hostDisk": {"path": "/d.img", "type": "File"}})),
            "spec.volumes[0].hostDisk.type",
            "\"File\" is not a host disk type",
        );
        bad(
            vol0(json!({"hostDisk": {"path": "/d.img", "type": "DiskOrCreate"}})),
            "spec.volumes[0].hostDisk.capacity",
            "is required",
        );
        bad(
            vol0(
                json!({"hostDisk": {"path": "/d.img", "type": "DiskOrCreate", "capacity": "1GB"}}),
            ),
            "spec.volumes[0].hostDisk.capacity",
            "not a Kubernetes quantity",
        );
        good(vol0(
            json!({"hostDisk": {"path": "/var/data/d.img", "type": "DiskOrCreate", "capacity": "1Gi"}}),
        ));
    }

    #[test]
    fn sysprep_and_memory_dump_volumes_are_refused() {
        bad(
            vol0(json!({"sysprep": {"configMap": {"name": "x"}}})),
            "spec.volumes[0].sysprep",
            "is not supported by this launcher",
        );
        bad(
            vol0(json!({"memoryDump": {"claimName": "x"}})),
            "spec.volumes[0].memoryDump",
            "is not supported by this launcher",
        );
    }

    #[test]
    fn volume_labels_are_iso_labels() {
        let two = |v: Value| json!({"spec": {"volumes": [{"name": "root", "containerDisk": {"image": "a"}}, v]}});
        bad(
            two(json!({"name": "cm", "configMap": {"name": "c", "volumeLabel": "has space"}})),
            "spec.volumes[1].configMap.volumeLabel",
            "not an ISO label",
        );
        bad(
            two(json!({"name": "s", "secret": {"secretName": "c", "volumeLabel": "x".repeat(33)}})),
            "spec.volumes[1].secret.volumeLabel",
            "not an ISO label",
        );
        good(two(
            json!({"name": "cm", "configMap": {"name": "c", "volumeLabel": "CFG_data-1"}}),
        ));
    }

    #[test]
    fn config_volumes_name_their_source_and_one_service_account() {
        let two = |a: Value, b: Value| json!({"spec": {"volumes": [{"name": "root", "containerDisk": {"image": "a"}}, a, b]}});
        bad(
            two(
                json!({"name": "cm", "configMap": {}}),
                json!({"name": "s", "secret": {}}),
            ),
            "spec.volumes[1].configMap.name",
            "is required",
        );
        bad(
            two(
                json!({"name": "cm", "configMap": {}}),
                json!({"name": "s", "secret": {}}),
            ),
            "spec.volumes[2].secret.secretName",
            "is required",
        );
        bad(
            two(
                json!({"name": "sa", "serviceAccount": {"serviceAccountName": "a"}}),
                json!({"name": "sb", "serviceAccount": {"serviceAccountName": "b"}}),
            ),
            "spec.volumes[2].serviceAccount",
            "second serviceAccount volume",
        );
        bad(
            two(
                json!({"name": "sa", "serviceAccount": {}}),
                json!({"name": "d", "downwardAPI": {}}),
            ),
            "spec.volumes[1].serviceAccount.serviceAccountName",
            "is required",
        );
        good(two(
            json!({"name": "cm", "configMap": {"name": "c"}}),
            json!({"name": "sa", "serviceAccount": {"serviceAccountName": "a"}}),
        ));
    }

    // ------------------------------------------------------------ networks and interfaces

    fn two_nets(ifaces_list: Value) -> Value {
        json!({"spec": {
            "domain": {"devices": {"interfaces": ifaces_list}},
            "networks": [{"name": "default", "pod": {}}, {"name": "sec", "multus": {"networkName": "nad"}}]
        }})
    }

    #[test]
    fn every_interface_has_a_network_and_vice_versa() {
        bad(
            ifaces(json!([{"name": "default", "masquerade": {}}, {"name": "other", "bridge": {}}])),
            "spec.domain.devices.interfaces[1].name",
            "\"other\" has no network of the same name",
        );
        bad(
            two_nets(json!([{"name": "default", "masquerade": {}}])),
            "spec.networks[1].name",
            "\"sec\" has no interface of the same name",
        );
        good(two_nets(
            json!([{"name": "default", "masquerade": {}}, {"name": "sec", "bridge": {}}]),
        ));
    }

    #[test]
    fn interface_and_network_names_are_unique() {
        bad(
            ifaces(
                json!([{"name": "default", "masquerade": {}}, {"name": "default", "bridge": {}}]),
            ),
            "spec.domain.devices.interfaces[1].name",
            "already the name of spec.domain.devices.interfaces[0]",
        );
        bad(
            json!({"spec": {"networks": [{"name": "default", "pod": {}}, {"name": "default", "multus": {"networkName": "x"}}]}}),
            "spec.networks[1].name",
            "already the name of spec.networks[0]",
        );
        bad(
            json!({"spec": {"networks": [{"name": "default/x", "pod": {}}]}}),
            "spec.networks[0].name",
            "contains '/'",
        );
    }

    #[test]
    fn at_most_one_pod_network() {
        let nets = json!({"spec": {
            "domain": {"devices": {"interfaces": [{"name": "a", "masquerade": {}}, {"name": "b", "bridge": {}}]}},
            "networks": [{"name": "a", "pod": {}}, {"name": "b", "pod": {}}]
        }});
        bad(nets, "spec.networks[1]", "second pod network");
        let multus_default = json!({"spec": {
            "domain": {"devices": {"interfaces": [{"name": "a", "masquerade": {}}, {"name": "b", "bridge": {}}]}},
            "networks": [{"name": "a", "pod": {}}, {"name": "b", "multus": {"networkName": "x", "default": true}}]
        }});
        bad(multus_default, "spec.networks[1]", "second pod network");
    }

    #[test]
    fn a_network_is_pod_or_multus() {
        bad(
            json!({"spec": {"networks": [{"name": "default"}]}}),
            "spec.networks[0]",
            "has no type",
        );
        bad(
            json!({"spec": {"networks": [{"name": "default", "pod": {}, "multus": {"networkName": "x"}}]}}),
            "spec.networks[0]",
            "both pod and multus",
        );
        bad(
            two_nets(json!([{"name": "default", "masquerade": {}}, {"name": "sec", "bridge": {}}]))
                .pipe(|mut v| {
                    v["spec"]["networks"][1]["multus"]["networkName"] = json!("");
                    v
                }),
            "spec.networks[1].multus.networkName",
            "is required",
        );
    }

    trait Pipe: Sized {
        fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
            f(self)
        }
    }
    impl Pipe for Value {}

    #[test]
    fn exactly_one_binding_per_interface() {
        bad(
            iface(json!({"masquerade": null})),
            "spec.domain.devices.interfaces[0]",
            "has no binding",
        );
        bad(
            iface(json!({"bridge": {}})),
            "spec.domain.devices.interfaces[0]",
            "more than one binding (bridge, masquerade)",
        );
        bad(
            iface(json!({"masquerade": null, "passt": {}, "binding": {"name": "passt"}})),
            "spec.domain.devices.interfaces[0]",
            "more than one binding",
        );
    }

    #[test]
    fn plugin_bindings_must_be_known() {
        bad(
            iface(json!({"masquerade": null, "binding": {"name": "l2bridge"}})),
            "spec.domain.devices.interfaces[0].binding.name",
            "\"l2bridge\" is not a network binding this launcher provides",
        );
        for known in ["bridge", "masquerade", "passt", "slirp", "tc-redirect"] {
            good(iface(
                json!({"masquerade": null, "binding": {"name": known}}),
            ));
        }
        good(two_nets(
            json!([{"name": "default", "masquerade": {}}, {"name": "sec", "binding": {"name": "macvtap"}}]),
        ));
        good(two_nets(
            json!([{"name": "default", "masquerade": {}}, {"name": "sec", "binding": {"name": "sriov"}}]),
        ));
    }

    #[test]
    fn masquerade_only_on_the_pod_network() {
        bad(two_nets(json!([{"name": "default", "bridge": {}}, {"name": "sec", "masquerade": {}}])), "spec.domain.devices.interfaces[1].masquerade", "masquerade is only supported on the pod network, and network \"sec\" is a multus network");
        bad(
            two_nets(
                json!([{"name": "default", "bridge": {}}, {"name": "sec", "binding": {"name": "masquerade"}}]),
            ),
            "spec.domain.devices.interfaces[1].binding.name",
            "only supported on the pod network",
        );
        good(iface(json!({})));
    }

    #[test]
    fn passt_and_slirp_only_on_the_pod_network() {
        bad(
            two_nets(json!([{"name": "default", "bridge": {}}, {"name": "sec", "passt": {}}])),
            "spec.domain.devices.interfaces[1].passt",
            "only supported on the pod network",
        );
        bad(
            two_nets(json!([{"name": "default", "bridge": {}}, {"name": "sec", "slirp": {}}])),
            "spec.domain.devices.interfaces[1].slirp",
            "only supported on the pod network",
        );
        good(iface(json!({"masquerade": null, "passt": {}})));
        good(iface(json!({"masquerade": null, "slirp": {}})));
    }

    #[test]
    fn passt_refuses_dhcp_options_it_cannot_send() {
        for b in [
            json!({"passt": {}}),
            json!({"slirp": {}}),
            json!({"binding": {"name": "passt"}}),
        ] {
            let mut i = json!({"masquerade": null, "dhcpOptions": {"ntpServers": ["10.0.0.1"]}});
            i.as_object_mut()
                .unwrap()
                .extend(b.as_object().unwrap().clone());
            bad(
                iface(i),
                "spec.domain.devices.interfaces[0].dhcpOptions",
                "passt answers the guest's DHCP itself",
            );
        }
        good(iface(
            json!({"masquerade": null, "binding": {"name": "passt"}, "ports": [{"port": 8080}]}),
        ));
    }

    #[test]
    fn sriov_only_on_multus_macvtap_on_both() {
        bad(
            iface(json!({"masquerade": null, "sriov": {}})),
            "spec.domain.devices.interfaces[0].sriov",
            "needs a multus network",
        );
        good(iface(json!({"masquerade": null, "macvtap": {}})));
        good(iface(
            json!({"masquerade": null, "binding": {"name": "macvtap"}}),
        ));
        good(two_nets(
            json!([{"name": "default", "masquerade": {}}, {"name": "sec", "macvtap": {}}]),
        ));
        good(two_nets(
            json!([{"name": "default", "masquerade": {}}, {"name": "sec", "sriov": {}}]),
        ));
    }

    #[test]
    fn sriov_refuses_fields_a_vf_cannot_honour() {
        let sriov = |extra: Value| {
            let mut i = json!({"name": "sec", "sriov": {}});
            for (k, v) in extra.as_object().unwrap() {
                i[k] = v.clone();
            }
            two_nets(json!([{"name": "default", "masquerade": {}}, i]))
        };
        let p = "spec.domain.devices.interfaces[1]";
        bad(
            sriov(json!({"model": "e1000"})),
            &format!("{p}.model"),
            "VF's own PCI device",
        );
        bad(
            sriov(json!({"dhcpOptions": {"bootFileName": "x"}})),
            &format!("{p}.dhcpOptions"),
            "no DHCP on a VF",
        );
        bad(
            sriov(json!({"state": "down"})),
            &format!("{p}.state"),
            "no link state",
        );
        bad(
            sriov(json!({"ports": [{"port": 80}]})),
            &format!("{p}.ports"),
            "masquerade and passt",
        );
        good(sriov(
            json!({"macAddress": "02:00:00:00:00:09", "pciAddress": "0000:00:0a.0",
                          "bootOrder": 1, "acpiIndex": 3}),
        ));
    }

    #[test]
    fn bridge_works_on_both_networks() {
        good(two_nets(
            json!([{"name": "default", "bridge": {}}, {"name": "sec", "bridge": {}}]),
        ));
    }

    #[test]
    fn interface_models_are_known() {
        bad(
            iface(json!({"model": "vmxnet3"})),
            "spec.domain.devices.interfaces[0].model",
            "\"vmxnet3\" is not a NIC model",
        );
        for m in INTERFACE_MODELS {
            good(iface(json!({"model": m})));
        }
    }

    #[test]
    fn macs_are_valid_unicast_and_not_reserved() {
        let path = "spec.domain.devices.interfaces[0].macAddress";
        bad(
            iface(json!({"macAddress": "02:00:00:00:00"})),
            path,
            "\"02:00:00:00:00\" is not a MAC address",
        );
        bad(
            iface(json!({"macAddress": "zz:00:00:00:00:01"})),
            path,
            "not a MAC address",
        );
        bad(
            iface(json!({"macAddress": "01:00:5e:00:00:01"})),
            path,
            "\"01:00:5e:00:00:01\" is a multicast MAC",
        );
        bad(
            iface(json!({"macAddress": "ff:ff:ff:ff:ff:ff"})),
            path,
            "multicast",
        );
        bad(
            iface(json!({"macAddress": "00:00:00:00:00:00"})),
            path,
            "all-zero",
        );
        bad(
            iface(json!({"macAddress": "02:00:00:00:00:00"})),
            path,
            "reserved",
        );
        good(iface(json!({"macAddress": "02:00:00:00:00:01"})));
        good(iface(json!({"macAddress": "DE-AD-BE-EF-00-02"})));
    }

    #[test]
    fn macs_are_unique() {
        bad(
            two_nets(
                json!([{"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}, {"name": "sec", "bridge": {}, "macAddress": "02:00:00:00:00:01"}]),
            ),
            "spec.domain.devices.interfaces[1].macAddress",
            "already the MAC of spec.domain.devices.interfaces[0]",
        );
    }

    #[test]
    fn pod_cidrs_are_valid_right_family_and_hold_four_addresses() {
        let net = |pod: Value| json!({"spec": {"networks": [{"name": "default", "pod": pod}]}});
        let v4 = "spec.networks[0].pod.vmNetworkCIDR";
        let v6 = "spec.networks[0].pod.vmIPv6NetworkCIDR";
        bad(
            net(json!({"vmNetworkCIDR": "10.0.2.0"})),
            v4,
            "\"10.0.2.0\" is not a CIDR",
        );
        bad(
            net(json!({"vmNetworkCIDR": "10.0.2.0/33"})),
            v4,
            "not a CIDR",
        );
        bad(
            net(json!({"vmNetworkCIDR": "10.0.2.0/31"})),
            v4,
            "holds 2 addresses; a VM network needs at least 4",
        );
        bad(
            net(json!({"vmNetworkCIDR": "fd10::/64"})),
            v4,
            "is an IPv6 network",
        );
        bad(
            net(json!({"vmIPv6NetworkCIDR": "10.0.2.0/24"})),
            v6,
            "is an IPv4 network",
        );
        bad(
            net(json!({"vmIPv6NetworkCIDR": "fd10::/127"})),
            v6,
            "holds 2 addresses",
        );
        good(net(
            json!({"vmNetworkCIDR": "10.11.12.0/30", "vmIPv6NetworkCIDR": "fd10:0:2::/120"}),
        ));
    }

    #[test]
    fn ports_are_in_range_with_tcp_or_udp_and_no_duplicates() {
        let p = |ports: Value| iface(json!({"ports": ports}));
        bad(
            p(json!([{"port": 0}])),
            "spec.domain.devices.interfaces[0].ports[0].port",
            "0 is out of range 1-65535",
        );
        bad(
            p(json!([{"port": 65536}])),
            "spec.domain.devices.interfaces[0].ports[0].port",
            "65536 is out of range",
        );
        bad(
            p(json!([{"port": 80, "protocol": "SCTP"}])),
            "spec.domain.devices.interfaces[0].ports[0].protocol",
            "\"SCTP\" is not a protocol",
        );
        bad(
            p(json!([{"port": 80}, {"port": 80, "protocol": "tcp"}])),
            "spec.domain.devices.interfaces[0].ports[1]",
            "80/TCP is already forwarded by spec.domain.devices.interfaces[0].ports[0]",
        );
        good(p(
            json!([{"port": 80}, {"port": 80, "protocol": "udp"}, {"port": 65535, "protocol": "UDP", "name": "x"}]),
        ));
    }

    #[test]
    fn port_ranges_are_ordered_and_in_range() {
        let r = |ranges: Value| iface(json!({"portRanges": ranges}));
        bad(
            r(json!([{"start": 100, "end": 10}])),
            "spec.domain.devices.interfaces[0].portRanges[0]",
            "start 100 is after end 10",
        );
        bad(
            r(json!([{"start": 0, "end": 10}])),
            "spec.domain.devices.interfaces[0].portRanges[0].start",
            "out of range",
        );
        bad(
            r(json!([{"start": 1, "end": 70000}])),
            "spec.domain.devices.interfaces[0].portRanges[0].end",
            "out of range",
        );
        bad(
            r(json!([{"start": 1, "end": 2, "protocol": "icmp"}])),
            "spec.domain.devices.interfaces[0].portRanges[0].protocol",
            "not a protocol",
        );
        good(r(
            json!([{"start": 10, "end": 10}, {"start": 1, "end": 65535, "protocol": "UDP"}]),
        ));
    }

    #[test]
    fn interface_pci_address() {
        bad(
            iface(json!({"pciAddress": "0000:00:1g.0"})),
            "spec.domain.devices.interfaces[0].pciAddress",
            "not a PCI address",
        );
        good(iface(json!({"pciAddress": "0000:81:00.1"})));
    }

    #[test]
    fn dhcp_private_options_are_224_to_254_and_unique() {
        let o = |opts: Value| iface(json!({"dhcpOptions": {"privateOptions": opts}}));
        bad(
            o(json!([{"option": 223, "value": "x"}])),
            "spec.domain.devices.interfaces[0].dhcpOptions.privateOptions[0].option",
            "223 is not a private DHCP option",
        );
        bad(
            o(json!([{"option": 255, "value": "x"}])),
            "spec.domain.devices.interfaces[0].dhcpOptions.privateOptions[0].option",
            "224-254",
        );
        bad(
            o(json!([{"option": 240, "value": "x"}, {"option": 240, "value": "y"}])),
            "spec.domain.devices.interfaces[0].dhcpOptions.privateOptions[1].option",
            "already set",
        );
        good(o(
            json!([{"option": 224, "value": "x"}, {"option": 254, "value": "y"}]),
        ));
    }

    #[test]
    fn ntp_servers_are_ipv4() {
        let n = |s: Value| iface(json!({"dhcpOptions": {"ntpServers": s}}));
        bad(
            n(json!(["pool.ntp.org"])),
            "spec.domain.devices.interfaces[0].dhcpOptions.ntpServers[0]",
            "\"pool.ntp.org\" is not an IPv4 address",
        );
        bad(
            n(json!(["10.0.0.1", "fd00::1"])),
            "spec.domain.devices.interfaces[0].dhcpOptions.ntpServers[1]",
            "not an IPv4 address",
        );
        good(n(json!(["10.0.0.1", "192.168.1.1"])));
    }

    #[test]
    fn interface_state_values_and_absent_rule() {
        bad(
            iface(json!({"state": "sleeping"})),
            "spec.domain.devices.interfaces[0].state",
            "\"sleeping\" is not allowed",
        );
        bad(
            iface(json!({"state": "absent"})),
            "spec.domain.devices.interfaces[0].state",
            "only supported for a bridge interface on a secondary",
        );
        good(iface(json!({"state": "down"})));
        good(two_nets(
            json!([{"name": "default", "masquerade": {}}, {"name": "sec", "bridge": {}, "state": "absent"}]),
        ));
    }

    #[test]
    fn acpi_index_range_and_uniqueness() {
        bad(
            iface(json!({"acpiIndex": 16384})),
            "spec.domain.devices.interfaces[0].acpiIndex",
            "out of range",
        );
        bad(
            two_nets(
                json!([{"name": "default", "masquerade": {}, "acpiIndex": 3}, {"name": "sec", "bridge": {}, "acpiIndex": 3}]),
            ),
            "spec.domain.devices.interfaces[1].acpiIndex",
            "must be unique",
        );
        good(iface(json!({"acpiIndex": 1})));
    }

    #[test]
    fn the_default_pod_interface_is_valid() {
        good(json!({"spec": {"domain": {"devices": {"interfaces": null}}, "networks": null}}));
    }

    #[test]
    fn helpers() {
        assert!(is_dns1123_label("a-1"));
        assert!(!is_dns1123_label("A"));
        assert!(!is_dns1123_label(""));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert_eq!(
            parse_mac("02:AB:cd:00:00:01"),
            Some([2, 0xab, 0xcd, 0, 0, 1])
        );
        assert_eq!(parse_mac("2:ab:cd:00:00:01"), None);
        assert!(is_pci_address("0000:00:00.0"));
        assert!(!is_pci_address("0000:00:00"));
        assert!(is_base64("aGVsbG8=\n"));
        assert!(!is_base64("aGVsbG8"));
    }
}
