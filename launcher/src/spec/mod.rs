//! The VMI: reading it (YAML or JSON, file or stdin, VMI or VirtualMachine), KubeVirt's
//! defaults, and validation. Nothing here touches the system.
//!
//! The one entry point the rest of the launcher uses is [`load_for_run`]: read → default →
//! validate, returning a [`Vmi`] in which every default has been filled in, or a
//! [`SpecError::Invalid`] listing **every** problem with its JSON path.

pub mod defaults;
pub mod quantity;
pub mod validate;
pub mod vmi;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use vmi::*;

use crate::cli::{GlobalArgs, ValidateArgs};
use crate::error::{Classify, ExitKind};

/// One problem found in the spec: the JSON path and a sentence that names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no VMI given: pass --vmi FILE (or --vmi - for standard input, or set LAUNCHER_VMI)")]
    NoVmi,
    /// `error` is not a `source`: the message already carries it, and `{:#}` would repeat it.
    #[error("reading the VMI from {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {path}: {message}")]
    Type {
        origin: String,
        path: String,
        message: String,
    },
    #[error("{origin}: kind {kind:?} is not a VirtualMachineInstance (or a VirtualMachine, VirtualMachineInstanceReplicaSet or VirtualMachinePool holding one)")]
    WrongKind { origin: String, kind: String },
    #[error("{origin}: the {kind} has no {path}: there is no VirtualMachineInstance to run")]
    NoTemplate {
        origin: String,
        kind: String,
        path: String,
    },
    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

fn format_problems(problems: &[Problem]) -> String {
    let mut s = format!(
        "the VMI is invalid ({} problem{}):",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    s
}

/// Every spec error is the user's input (or its absence): exit 2. A VMI file that cannot be read
/// (missing, unreadable) is a usage error too: the path is named in the message.
impl Classify for SpecError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::InvalidSpec
    }
}

/// A VMI as read, before defaults, with the fields this launcher did not recognise.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub vmi: Vmi,
    /// JSON paths of fields that were present but unknown to this launcher (paths in the file
    /// as given, so `spec.template.spec...` for a VirtualMachine).
    pub unknown_fields: Vec<String>,
    /// Where it came from (`path` or `<stdin>`), for messages.
    pub origin: String,
    /// Where the VMI's own fields sit in the file: `""` for a VMI, `spec.template.` for a
    /// VirtualMachine or a VirtualMachineInstanceReplicaSet, `spec.virtualMachineTemplate.spec.template.`
    /// for a VirtualMachinePool. [`Loaded::file_path`] turns a VMI path into a file path.
    pub path_prefix: String,
    /// Problems found in the wrapper around the VMI (e.g. a VirtualMachine's instance type),
    /// reported together with validation's problems.
    pub wrapper_problems: Vec<Problem>,
}

impl Loaded {
    /// The path of a VMI field (`spec.domain...`) in the file as given. `metadata.*` paths are
    /// kept: a wrapped template's name and namespace come from the wrapper's metadata.
    pub fn file_path(&self, vmi_path: &str) -> String {
        if self.path_prefix.is_empty() || vmi_path.starts_with("metadata") {
            vmi_path.to_string()
        } else {
            format!("{}{vmi_path}", self.path_prefix)
        }
    }

    /// Defaults, then validation; every problem (the wrapper's too) with its path in the file.
    pub fn default_and_validate(&self) -> (Vmi, Vec<Problem>) {
        let mut vmi = self.vmi.clone();
        defaults::apply(&mut vmi);
        let mut problems = self.wrapper_problems.clone();
        if let Err(found) = validate::validate(&vmi) {
            problems.extend(found.into_iter().map(|p| self.in_file(p)));
        }
        (vmi, problems)
    }

    fn in_file(&self, p: Problem) -> Problem {
        Problem {
            path: self.file_path(&p.path),
            message: p.message,
        }
    }
}

/// Reads the VMI named by `--vmi` (a path or `-`).
pub fn load_from_args(g: &GlobalArgs) -> Result<Loaded, SpecError> {
    let path = g.vmi.as_deref().ok_or(SpecError::NoVmi)?;
    load_path(path)
}

pub fn load_path(path: &Path) -> Result<Loaded, SpecError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|error| SpecError::Read {
                path: "<stdin>".into(),
                error,
            })?;
        parse_str(&text, "<stdin>")
    } else {
        let text = std::fs::read_to_string(path).map_err(|error| SpecError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        parse_str(&text, &path.display().to_string())
    }
}

/// Parses YAML or JSON text (JSON is YAML). A VirtualMachine's `spec.template` is unwrapped,
/// carrying the VM's name/namespace/uid where the template has none.
pub fn parse_str(text: &str, origin: &str) -> Result<Loaded, SpecError> {
    let value: serde_json::Value =
        serde_yaml_ng::from_str(text).map_err(|e| SpecError::Syntax {
            origin: origin.to_string(),
            message: match e.location() {
                Some(loc) => format!(
                    "YAML syntax error at line {}, column {}: {}",
                    loc.line(),
                    loc.column(),
                    strip_location(&e.to_string())
                ),
                None if e.to_string().contains("more than one document") => {
                    "holds more than one YAML document: give one VirtualMachineInstance per file"
                        .to_string()
                }
                None => format!("YAML syntax error: {e}"),
            },
        })?;
    let Unwrapped {
        value,
        prefix,
        problems,
    } = unwrap_vm(value, origin)?;
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result: Result<Vmi, _> = serde_ignored::deserialize(
        serde_path_to_error::Deserializer::new(&value, &mut track),
        |p| unknown.push(ignored_path(&p)),
    );
    let prefixed = |p: String| {
        if prefix.is_empty() || p.starts_with("metadata") {
            p
        } else {
            format!("{prefix}{p}")
        }
    };
    let vmi = result.map_err(|e| SpecError::Type {
        origin: origin.to_string(),
        path: prefixed(json_path(&track.path().to_string())),
        message: humanize_type_error(&e.to_string()),
    })?;
    Ok(Loaded {
        vmi,
        unknown_fields: unknown.into_iter().map(prefixed).collect(),
        origin: origin.to_string(),
        path_prefix: prefix,
        wrapper_problems: problems,
    })
}

/// serde's type errors name Rust types (`expected u32`, `expected struct Cpu`); say what a
/// manifest author would call them.
fn humanize_type_error(msg: &str) -> String {
    let mut out = msg.to_string();
    for (rust, human) in [
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected an object"),
    ] {
        out = out.replace(rust, human);
    }
    if let Some(i) = out.find("expected struct ") {
        out.truncate(i);
        out.push_str("expected an object");
    }
    out
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

struct Unwrapped {
    value: serde_json::Value,
    prefix: String,
    problems: Vec<Problem>,
}

/// Finds the VMI in what was given: a VirtualMachineInstance itself, or the template of a
/// VirtualMachine, a VirtualMachineInstanceReplicaSet or a VirtualMachinePool. The template
/// gets the wrapper's name, namespace and uid where it has none (one launcher runs one VMI).
fn unwrap_vm(mut value: serde_json::Value, origin: &str) -> Result<Unwrapped, SpecError> {
    if !value.is_object() {
        return Err(SpecError::Type {
            origin: origin.to_string(),
            path: "(top level)".into(),
            message: format!(
                "expected a VirtualMachineInstance object, found {}",
                match &value {
                    serde_json::Value::Null => "an empty document",
                    serde_json::Value::Array(_) => "a list",
                    serde_json::Value::String(_) => "a string",
                    _ => "a scalar",
                }
            ),
        });
    }
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let template_path: &[&str] = match kind.as_str() {
        "" | "VirtualMachineInstance" => {
            return Ok(Unwrapped {
                value,
                prefix: String::new(),
                problems: Vec::new(),
            })
        }
        "VirtualMachine" | "VirtualMachineInstanceReplicaSet" => &["spec", "template"],
        "VirtualMachinePool" => &["spec", "virtualMachineTemplate", "spec", "template"],
        other => {
            return Err(SpecError::WrongKind {
                origin: origin.to_string(),
                kind: other.to_string(),
            })
        }
    };
    let prefix = format!("{}.", template_path.join("."));
    let mut problems = Vec::new();
    // A VirtualMachine's instance type and preference are expanded by the KubeVirt API server.
    let vm_spec_path = if kind == "VirtualMachinePool" {
        "spec.virtualMachineTemplate.spec"
    } else {
        "spec"
    };
    let vm_spec = vm_spec_path.split('.').try_fold(&value, |v, k| v.get(k));
    for field in ["instancetype", "preference"] {
        if vm_spec
            .and_then(|s| s.get(field))
            .is_some_and(|v| !v.is_null())
        {
            problems.push(Problem {
                path: format!("{vm_spec_path}.{field}"),
                message: format!(
                    "a VirtualMachine {} is not supported by this launcher: it is expanded by the KubeVirt API server, which a launcher pod does not talk to; give the expanded VirtualMachineInstance instead",
                    if field == "instancetype" { "instance type" } else { "preference" }
                ),
            });
        }
    }
    let wrapper_meta = value.get("metadata").cloned().unwrap_or_default();
    let mut template = template_path
        .iter()
        .try_fold(&mut value, |v, k| v.get_mut(*k))
        .map(serde_json::Value::take)
        .filter(|t| !t.is_null())
        .ok_or_else(|| SpecError::NoTemplate {
            origin: origin.to_string(),
            kind: kind.clone(),
            path: template_path.join("."),
        })?;
    let obj = template.as_object_mut().ok_or_else(|| SpecError::Type {
        origin: origin.to_string(),
        path: template_path.join("."),
        message: "must be an object".into(),
    })?;
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    if let (Some(meta), Some(wrapper_meta)) = (meta.as_object_mut(), wrapper_meta.as_object()) {
        for key in ["name", "namespace", "uid"] {
            if !meta.contains_key(key) {
                if let Some(v) = wrapper_meta.get(key) {
                    meta.insert(key.to_string(), v.clone());
                }
            }
        }
    }
    obj.insert("apiVersion".into(), "kubevirt.io/v1".into());
    obj.insert("kind".into(), "VirtualMachineInstance".into());
    Ok(Unwrapped {
        value: template,
        prefix,
        problems,
    })
}

/// serde_ignored's path (`spec.domain.devices.disks.0.foo`) as a JSON path (`...disks[0].foo`).
fn ignored_path(p: &serde_ignored::Path) -> String {
    json_path(&p.to_string())
}

/// Turns `a.b.3.c` into `a.b[3].c`.
pub fn json_path(dotted: &str) -> String {
    let mut out = String::new();
    for seg in dotted.split('.').filter(|s| !s.is_empty() && *s != "?") {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Read → default → validate. What every subcommand that acts on a VMI uses.
pub fn load_for_run(g: &GlobalArgs) -> Result<Vmi, SpecError> {
    let loaded = load_from_args(g)?;
    for f in &loaded.unknown_fields {
        tracing::debug!(field = %f, "ignoring a field this launcher does not know");
    }
    let (vmi, problems) = loaded.default_and_validate();
    if !problems.is_empty() {
        return Err(SpecError::Invalid(problems));
    }
    Ok(vmi)
}

/// `launcher validate [--strict]`: exit 0 with one line, or exit 2 listing every problem.
/// `--strict` also lists the fields this launcher does not know (otherwise ignored).
pub fn cmd_validate(g: &GlobalArgs, args: &ValidateArgs) -> anyhow::Result<u8> {
    let loaded = load_from_args(g)?;
    let (vmi, mut problems) = loaded.default_and_validate();
    if args.strict {
        for f in &loaded.unknown_fields {
            problems.push(Problem {
                path: f.clone(),
                message: "is not a field this launcher knows (listed because of --strict)".into(),
            });
        }
    } else if !loaded.unknown_fields.is_empty() {
        tracing::warn!(
            count = loaded.unknown_fields.len(),
            "the VMI has fields this launcher does not know and ignores; `launcher validate --strict` lists them"
        );
    }
    if !problems.is_empty() {
        return Err(SpecError::Invalid(problems).into());
    }
    println!(
        "{}: valid VirtualMachineInstance {}/{}",
        loaded.origin,
        vmi.metadata.namespace.as_deref().unwrap_or("default"),
        vmi.metadata.name.as_deref().unwrap_or("")
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_use_brackets_for_indices() {
        assert_eq!(
            json_path("spec.domain.devices.interfaces.1.macAddress"),
            "spec.domain.devices.interfaces[1].macAddress"
        );
    }

    #[test]
    fn yaml_syntax_errors_carry_line_and_column() {
        let err = parse_str("metadata:\n  name: [x\n", "t.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line "), "{msg}");
        assert!(msg.contains("column "), "{msg}");
    }

    #[test]
    fn a_virtual_machine_is_unwrapped_to_its_template() {
        let text = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: vm1, namespace: ns}\nspec:\n  template:\n    spec:\n      domain: {devices: {}}\n";
        let l = parse_str(text, "t").unwrap();
        assert_eq!(l.vmi.metadata.name.as_deref(), Some("vm1"));
        assert_eq!(l.vmi.metadata.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn unknown_fields_are_collected_not_fatal() {
        let text = "kind: VirtualMachineInstance\nspec:\n  futureField: 1\n  domain:\n    devices:\n      disks:\n      - name: d\n        newThing: true\n";
        let l = parse_str(text, "t").unwrap();
        assert_eq!(
            l.unknown_fields,
            vec!["spec.futureField", "spec.domain.devices.disks[0].newThing"]
        );
    }

    #[test]
    fn type_errors_name_the_path() {
        let text = "spec:\n  domain:\n    cpu:\n      cores: many\n";
        let msg = parse_str(text, "t").unwrap_err().to_string();
        assert_eq!(
            msg,
            "t: spec.domain.cpu.cores: invalid type: string \"many\", expected a whole number (0 or more)"
        );
        let msg = parse_str("spec: {domain: {cpu: 3}}", "t")
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "t: spec.domain.cpu: invalid type: integer `3`, expected an object"
        );
        let msg = parse_str("spec: {volumes: {}}", "t")
            .unwrap_err()
            .to_string();
        assert!(msg.ends_with("expected a list"), "{msg}");
    }

    #[test]
    fn several_documents_are_refused_plainly() {
        let msg = parse_str(
            "---\nkind: VirtualMachineInstance\n---\nkind: VirtualMachineInstance\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            msg,
            "t: holds more than one YAML document: give one VirtualMachineInstance per file"
        );
    }

    #[test]
    fn read_errors_name_the_path_once() {
        let err = load_path(Path::new("/nonexistent/v.yaml")).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
        assert!(
            chain.starts_with("reading the VMI from /nonexistent/v.yaml: "),
            "{chain}"
        );
    }

    #[test]
    fn an_empty_document_is_refused_plainly() {
        let msg = parse_str("", "t").unwrap_err().to_string();
        assert!(msg.contains("found an empty document"), "{msg}");
    }

    /// Every field KubeVirt users write, spelled as KubeVirt spells it: none may be "unknown"
    /// (a misspelt rename would silently drop the field).
    #[test]
    fn kubevirt_field_names_are_all_known() {
        let text = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: full, generateName: f-, namespace: ns, uid: u, labels: {a: b}, annotations: {c: d}}
spec:
  hostname: h
  subdomain: s
  terminationGracePeriodSeconds: 5
  evictionStrategy: None
  nodeSelector: {a: b}
  affinity: {}
  tolerations: []
  schedulerName: x
  priorityClassName: x
  livenessProbe: {}
  readinessProbe: {}
  dnsPolicy: ClusterFirst
  dnsConfig: {}
  accessCredentials: []
  architecture: amd64
  resourceClaims: []
  domain:
    ioThreadsPolicy: auto
    chassis: {manufacturer: m, version: v, serial: s, asset: a, sku: k}
    launchSecurity: {}
    resources: {requests: {cpu: 1}, limits: {memory: 1Gi}, overcommitGuestOverhead: true}
    cpu: {cores: 1, sockets: 1, threads: 1, maxSockets: 2, model: host-model, features: [{name: x, policy: require}], dedicatedCpuPlacement: false, isolateEmulatorThread: false, numa: {}, realtime: {}}
    memory: {guest: 1Gi, maxGuest: 2Gi, hugepages: {pageSize: 2Mi}}
    machine: {type: q35}
    firmware:
      uuid: 5d307ca9-b3ef-428c-8861-06e72d69f223
      serial: s
      acpi: {}
      bootloader: {bios: {useSerial: true}, efi: {secureBoot: true, persistent: true}}
      kernelBoot: {kernelArgs: a, container: {image: i, kernelPath: /k, initrdPath: /i, imagePullPolicy: Always, imagePullSecret: s}}
    clock:
      utc: {offsetSeconds: 1}
      timezone: UTC
      timer: {hpet: {present: true, tickPolicy: delay}, kvm: {present: true}, pit: {present: true}, rtc: {present: true, track: guest}, hyperv: {present: true}}
    features:
      acpi: {enabled: true}
      apic: {enabled: true, endOfInterrupt: false}
      smm: {enabled: true}
      pvspinlock: {enabled: true}
      hypervPassthrough: {enabled: false}
      kvm: {hidden: true}
      hyperv: {relaxed: {}, vapic: {}, spinlocks: {enabled: true, spinlocks: 4096}, vpindex: {}, runtime: {}, synic: {}, synictimer: {}, reset: {}, vendorid: {enabled: true, vendorid: v}, frequencies: {}, reenlightenment: {}, tlbflush: {}, ipi: {}, evmcs: {}}
    devices:
      networkInterfaceMultiqueue: true
      autoattachPodInterface: true
      autoattachGraphicsDevice: true
      autoattachSerialConsole: true
      autoattachMemBalloon: true
      autoattachInputDevice: true
      autoattachVSOCK: true
      useVirtioTransitional: false
      blockMultiQueue: true
      disableHotplug: false
      rng: {}
      tpm: {enabled: true, persistent: false}
      watchdog: {name: w, i6300esb: {action: reset}}
      inputs: [{name: t, type: tablet, bus: usb}]
      clientPassthrough: {}
      sound: {name: s}
      gpus: [{name: g, deviceName: d, claimName: c, requestName: r, virtualGPUOptions: {}}]
      hostDevices: [{name: h, deviceName: d, claimName: c, requestName: r}]
      filesystems: [{name: f, virtiofs: {}}]
      disks:
      - {name: a, disk: {bus: virtio, readonly: true, pciAddress: "0000:00:05.0"}, bootOrder: 1, serial: s, dedicatedIOThread: true, cache: none, io: native, shareable: false, errorPolicy: stop, blockSize: {}, tag: t}
      - {name: b, cdrom: {bus: sata, readonly: true, tray: closed}}
      - {name: c, lun: {bus: scsi, readonly: false, reservation: false}}
      interfaces:
      - name: default
        bridge: {}
        model: virtio
        macAddress: "02:00:00:00:00:01"
        ports: [{name: http, protocol: TCP, port: 80}]
        pciAddress: "0000:00:06.0"
        bootOrder: 2
        dhcpOptions: {bootFileName: b, tftpServerName: t, ntpServers: [10.0.0.1], privateOptions: [{option: 240, value: v}]}
        state: up
        acpiIndex: 1
        tag: t
      - {name: m, masquerade: {}}
      - {name: v, macvtap: {}}
      - {name: s, sriov: {}}
      - {name: p, passt: {}}
      - {name: l, slirp: {}}
      - {name: x, binding: {name: tc-redirect}}
  networks:
  - {name: default, pod: {vmNetworkCIDR: 10.0.2.0/24, vmIPv6NetworkCIDR: "fd10::/120"}}
  - {name: m, multus: {networkName: n, default: false}}
  volumes:
  - {name: a, containerDisk: {image: i, imagePullPolicy: Always, imagePullSecret: s, path: /p}}
  - {name: b, cloudInitNoCloud: {userData: u, userDataBase64: dQ==, networkData: n, networkDataBase64: bg==, secretRef: {name: s}, networkDataSecretRef: {name: s}}}
  - {name: c, cloudInitConfigDrive: {userData: u}}
  - {name: d, emptyDisk: {capacity: 1Gi}}
  - {name: e, persistentVolumeClaim: {claimName: c, readOnly: true, hotpluggable: false}}
  - {name: f, dataVolume: {name: d, hotpluggable: false}}
  - {name: g, hostDisk: {path: /p, type: Disk, capacity: 1Gi, shared: false}}
  - {name: h, ephemeral: {persistentVolumeClaim: {claimName: c}}}
  - {name: i, configMap: {name: c, optional: true, volumeLabel: l}}
  - {name: j, secret: {secretName: s, optional: true, volumeLabel: l}}
  - {name: k, serviceAccount: {serviceAccountName: s}}
  - {name: l, downwardAPI: {fields: [], volumeLabel: l}}
  - {name: m, sysprep: {}}
  - {name: n, memoryDump: {}}
"#;
        let l = parse_str(text, "full").unwrap();
        assert_eq!(l.unknown_fields, Vec::<String>::new());
        let net = &l.vmi.spec.networks[0].pod.as_ref().unwrap();
        assert_eq!(net.vm_network_cidr.as_deref(), Some("10.0.2.0/24"));
        assert_eq!(net.vm_ipv6_network_cidr.as_deref(), Some("fd10::/120"));
        assert_eq!(
            l.vmi.spec.domain.devices.disks[0].dedicated_io_thread,
            Some(true)
        );
        assert_eq!(l.vmi.spec.domain.devices.autoattach_vsock, Some(true));
    }

    #[test]
    fn replica_sets_and_pools_are_unwrapped_with_file_paths() {
        let rs = "kind: VirtualMachineInstanceReplicaSet\nmetadata: {name: rs}\nspec:\n  template:\n    spec:\n      domain: {devices: {gpus: [{name: g}]}}\n";
        let l = parse_str(rs, "t").unwrap();
        assert_eq!(l.vmi.metadata.name.as_deref(), Some("rs"));
        let (_, problems) = l.default_and_validate();
        assert!(
            problems
                .iter()
                .any(|p| p.path == "spec.template.spec.domain.devices.gpus[0]"),
            "{problems:#?}"
        );
        let pool = "kind: VirtualMachinePool\nmetadata: {name: pool}\nspec:\n  virtualMachineTemplate:\n    spec:\n      template:\n        spec:\n          domain: {devices: {}, memory: {guest: 1Gi}}\n";
        let l = parse_str(pool, "t").unwrap();
        assert_eq!(l.path_prefix, "spec.virtualMachineTemplate.spec.template.");
        let (vmi, problems) = l.default_and_validate();
        assert_eq!(problems, vec![]);
        assert_eq!(vmi.metadata.name.as_deref(), Some("pool"));
    }

    #[test]
    fn a_vm_instancetype_is_refused_at_the_vm_path() {
        let vm = "kind: VirtualMachine\nmetadata: {name: vm}\nspec:\n  instancetype: {name: u1.small}\n  template:\n    spec:\n      domain: {devices: {}, memory: {guest: 1Gi}}\n";
        let (_, problems) = parse_str(vm, "t").unwrap().default_and_validate();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].path, "spec.instancetype");
        assert!(problems[0]
            .message
            .contains("not supported by this launcher"));
    }

    #[test]
    fn vm_type_errors_and_unknown_fields_use_file_paths() {
        let vm = "kind: VirtualMachine\nmetadata: {name: vm}\nspec:\n  template:\n    spec:\n      newThing: 1\n      domain: {devices: {}}\n";
        let l = parse_str(vm, "t").unwrap();
        assert_eq!(l.unknown_fields, vec!["spec.template.spec.newThing"]);
        let bad = "kind: VirtualMachine\nspec:\n  template:\n    spec:\n      domain: {cpu: {cores: many}}\n";
        let msg = parse_str(bad, "t").unwrap_err().to_string();
        assert!(msg.contains("spec.template.spec.domain.cpu.cores"), "{msg}");
    }

    #[test]
    fn other_kinds_and_non_objects_are_refused() {
        let e = parse_str("kind: Pod\n", "t").unwrap_err();
        assert!(matches!(e, SpecError::WrongKind { .. }), "{e}");
        let e = parse_str("- a\n- b\n", "t").unwrap_err();
        assert!(e.to_string().contains("found a list"), "{e}");
        let e = parse_str("kind: VirtualMachine\nspec: {}\n", "t").unwrap_err();
        assert!(e.to_string().contains("has no spec.template"), "{e}");
    }
}
