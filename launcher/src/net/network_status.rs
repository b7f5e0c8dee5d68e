//! The Multus `k8s.v1.cni.cncf.io/network-status` annotation: what each CNI attachment of the
//! pod produced (the pod interface name, MAC, IPs, and for SR-IOV the VF's PCI address in
//! `device-info`). Pure parsing and matching; the only I/O is [`load`] reading one file.
//!
//! Sources, first match wins:
//! 1. `--network-status FILE`: either the annotation's JSON itself (a downward-API volume item
//!    with `fieldRef: metadata.annotations['k8s.v1.cni.cncf.io/network-status']`), or the whole
//!    downward-API annotations file (`fieldRef: metadata.annotations`, lines `key="Go-quoted
//!    value"`), from which the network-status key is taken;
//! 2. the annotation on the VMI's own metadata;
//! 3. none: secondary interfaces are then found by naming alone, and SR-IOV is refused.
//!
//! The format follows the Network Plumbing Working Group's "Kubernetes Network Custom Resource
//! Definition De-facto Standard" (v1.2: `name`, `interface`, `ips`, `mac`, `default`, `dns`,
//! `device-info`). Fields this launcher does not use (`dns`, `gateway`, ...) are ignored, but
//! the fields it uses are type-checked strictly: a malformed annotation is refused (exit 3)
//! rather than half-trusted.

// The errors carry every name an operator needs; they are built at most once per run, so
// their size does not matter (NetError boxes them).
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Mac;

/// The annotation key (Multus writes it on the pod).
pub const ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";

/// The parsed annotation: one entry per CNI attachment, in the annotation's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// Where it came from (a file path or "the VMI annotation"), for messages.
    pub origin: String,
    pub entries: Vec<StatusEntry>,
}

/// One attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    /// `namespace/name` of the NetworkAttachmentDefinition (or the cluster network's name).
    pub name: String,
    /// The pod interface (`eth0`, `net1`, `pod16477688c0e`); `None` for VFs bound to vfio
    /// that some CNIs report without a netdev name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// The cluster's default network (the pod's `eth0`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info: Option<DeviceInfo>,
}

/// `device-info` (NPWG device-info spec): `{"type": "pci", "version": "1.1.0", "pci":
/// {"pci-address": "0000:3b:02.1", ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `pci`, `vdpa`, `vhost-user`, `memif`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `pci.pci-address`, as written (checked when used, see [`pci_address`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
}

/// Problems with the annotation, or between it and the VMI or the pod. All are a missing
/// precondition (exit 3): the pod's attachments are not what the VMI needs.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading the network-status file {path:?} (--network-status): {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {ANNOTATION} is not valid JSON ({detail}); expected a JSON list such as [{{\"name\": \"default/blue\", \"interface\": \"net1\", \"ips\": [\"10.1.1.5\"], \"mac\": \"0a:58:0a:01:01:05\"}}]")]
    NotJson { origin: String, detail: String },
    #[error("{origin}: {ANNOTATION}{at}: {message}")]
    Malformed {
        origin: String,
        /// A JSON path inside the annotation, e.g. `[1].ips[0]` (empty for the whole value).
        at: String,
        message: String,
    },
    #[error("{origin}: the downward-API annotations file has no {ANNOTATION} line (it has: {keys}); mount the annotation the Multus CNI writes on the pod")]
    NoAnnotation { origin: String, keys: String },
    #[error("network {network:?} (multus networkName {network_name:?}): {origin} has no entry named {network_name:?} (it lists: {listed}); expected the pod interface {expected:?}. Check that the pod's k8s.v1.cni.cncf.io/networks annotation requests this network")]
    NoEntry {
        network: String,
        network_name: String,
        origin: String,
        listed: String,
        expected: String,
    },
    #[error("network {network:?} (multus networkName {network_name:?}): by the {scheme} Multus naming its pod interface is {expected:?}, but {origin} says {found}. The VMI's spec.networks and the pod's attachments disagree (order or names); fix the pod's k8s.v1.cni.cncf.io/networks annotation or the VMI")]
    Mismatch {
        network: String,
        network_name: String,
        scheme: &'static str,
        expected: String,
        origin: String,
        found: String,
    },
    #[error("network {network:?}: {origin} says pod interface {interface:?} has {what} {status}, but the pod's {interface:?} has {pod}; the annotation is stale or belongs to another pod")]
    AddressMismatch {
        network: String,
        interface: String,
        origin: String,
        what: &'static str,
        status: String,
        pod: String,
    },
    #[error("SR-IOV network {network:?} (multus networkName {network_name:?}) needs the VF's PCI address from the {ANNOTATION} annotation's device-info, and no network status was given: pass --network-status FILE (a downward-API file of the pod's annotation) or copy the annotation onto the VMI")]
    NoStatus {
        network: String,
        network_name: String,
    },
    #[error("SR-IOV network {network:?} (multus networkName {network_name:?}): the {ANNOTATION} entry in {origin} has {problem}; expected \"device-info\": {{\"type\": \"pci\", \"version\": \"1.1.0\", \"pci\": {{\"pci-address\": \"0000:3b:02.1\"}}}} (written by the SR-IOV CNI with device-info support)")]
    NoDeviceInfo {
        network: String,
        network_name: String,
        origin: String,
        problem: String,
    },
    #[error("SR-IOV network {network:?}: the spec's macAddress is {spec}, but {ANNOTATION} shows the VF has {vf}. A VF is passed to the guest as a PCI <hostdev>, which cannot set a MAC: the SR-IOV CNI must apply it (put \"mac\": \"{spec}\" in the pod's k8s.v1.cni.cncf.io/networks selection for this network)")]
    SriovMac {
        network: String,
        spec: String,
        vf: String,
    },
    #[error("SR-IOV network {network:?}: the VF {pci_address} (from {ANNOTATION} device-info) is not present in this pod ({sysfs} does not exist); the pod needs the VF from the SR-IOV device plugin")]
    VfMissing {
        network: String,
        pci_address: String,
        sysfs: String,
    },
}

impl From<StatusError> for super::NetError {
    fn from(e: StatusError) -> Self {
        super::NetError::NetworkStatus(Box::new(e))
    }
}

/// Reads the network status: `--network-status FILE` first, else the VMI's annotation, else
/// `None`.
pub fn load(
    file: Option<&Path>,
    vmi_annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Option<NetworkStatus>, StatusError> {
    if let Some(path) = file {
        let origin = format!("--network-status {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| StatusError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        return parse_file(&text, &origin).map(Some);
    }
    match vmi_annotations.get(ANNOTATION) {
        Some(v) => parse_json(v, "the VMI's annotation").map(Some),
        None => Ok(None),
    }
}

/// The content of a `--network-status` file: the annotation's JSON, or a downward-API
/// annotations file (`key="value"` lines, values quoted as Go's `strconv.Quote` does).
pub fn parse_file(text: &str, origin: &str) -> Result<NetworkStatus, StatusError> {
    let t = text.trim_start_matches('\u{feff}').trim();
    if t.starts_with('[') || t.starts_with('{') || t.is_empty() {
        return parse_json(t, origin);
    }
    let mut keys = Vec::new();
    for (n, line) in t.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(StatusError::Malformed {
                origin: origin.to_string(),
                at: String::new(),
                message: format!(
                    "line {} is neither JSON nor a downward-API `key=\"value\"` line",
                    n + 1
                ),
            });
        };
        if key == ANNOTATION {
            let json = go_unquote(value).ok_or_else(|| StatusError::Malformed {
                origin: origin.to_string(),
                at: String::new(),
                message: format!(
                    "line {}: the value is not a double-quoted string with Go escapes",
                    n + 1
                ),
            })?;
            return parse_json(&json, origin);
        }
        keys.push(key.to_string());
    }
    Err(StatusError::NoAnnotation {
        origin: origin.to_string(),
        keys: if keys.is_empty() {
            "nothing".into()
        } else {
            keys.join(", ")
        },
    })
}

/// Undoes Go's `strconv.Quote` (what the kubelet writes into downward-API annotation files):
/// `"..."` with `\" \\ \n \t \r \a \b \f \v \xNN \NNN \uXXXX \UXXXXXXXX`.
pub fn go_unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut bytes: Vec<u8> = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => {
                let e = chars.next()?;
                let mut push = |ch: char| {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                };
                match e {
                    '"' => push('"'),
                    '\'' => push('\''),
                    '\\' => push('\\'),
                    'n' => push('\n'),
                    't' => push('\t'),
                    'r' => push('\r'),
                    'a' => push('\u{7}'),
                    'b' => push('\u{8}'),
                    'f' => push('\u{c}'),
                    'v' => push('\u{b}'),
                    'x' => {
                        let h: String = (0..2).filter_map(|_| chars.next()).collect();
                        if h.len() != 2 {
                            return None;
                        }
                        bytes.push(u8::from_str_radix(&h, 16).ok()?);
                    }
                    '0'..='7' => {
                        let rest: String = (0..2).filter_map(|_| chars.next()).collect();
                        if rest.len() != 2 {
                            return None;
                        }
                        let v = u32::from_str_radix(&format!("{e}{rest}"), 8).ok()?;
                        bytes.push(u8::try_from(v).ok()?);
                    }
                    'u' | 'U' => {
                        let n = if e == 'u' { 4 } else { 8 };
                        let h: String = (0..n).filter_map(|_| chars.next()).collect();
                        if h.len() != n {
                            return None;
                        }
                        push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
                    }
                    _ => return None,
                }
            }
            c => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// Parses the annotation's JSON (a list of attachment objects).
pub fn parse_json(text: &str, origin: &str) -> Result<NetworkStatus, StatusError> {
    let v: Value = serde_json::from_str(text).map_err(|e| StatusError::NotJson {
        origin: origin.to_string(),
        detail: e.to_string(),
    })?;
    let bad = |at: String, message: String| StatusError::Malformed {
        origin: origin.to_string(),
        at,
        message,
    };
    let Value::Array(items) = v else {
        return Err(bad(
            String::new(),
            format!("is a JSON {}, not a list of attachments", kind_of(&v)),
        ));
    };
    let mut entries = Vec::with_capacity(items.len());
    let mut seen_ifaces = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = |f: &str| format!("[{i}]{f}");
        let Value::Object(o) = item else {
            return Err(bad(
                at(""),
                format!("is a JSON {}, not an object", kind_of(item)),
            ));
        };
        let name = match o.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) => return Err(bad(at(".name"), "is empty".into())),
            Some(other) => {
                return Err(bad(
                    at(".name"),
                    format!("is a JSON {}, not a string", kind_of(other)),
                ))
            }
            None => return Err(bad(at(""), "has no \"name\"".into())),
        };
        let interface = match o.get("interface") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                if s.len() > 15 || s.contains(['/', ' ', '\t', '\n', ':']) || s == "." || s == ".."
                {
                    return Err(bad(
                        at(".interface"),
                        format!("{s:?} is not a Linux interface name"),
                    ));
                }
                if !seen_ifaces.insert(s.clone()) {
                    return Err(bad(
                        at(".interface"),
                        format!("{s:?} is claimed by more than one entry"),
                    ));
                }
                Some(s.clone())
            }
            Some(other) => {
                return Err(bad(
                    at(".interface"),
                    format!("is a JSON {}, not a string", kind_of(other)),
                ))
            }
        };
        let ips = match o.get("ips") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => {
                let mut ips = Vec::with_capacity(list.len());
                for (j, ip) in list.iter().enumerate() {
                    let Value::String(s) = ip else {
                        return Err(bad(
                            at(&format!(".ips[{j}]")),
                            format!("is a JSON {}, not a string", kind_of(ip)),
                        ));
                    };
                    // Some CNIs write CIDR notation; the address is what matters.
                    let addr = s.split_once('/').map_or(s.as_str(), |(a, _)| a);
                    ips.push(addr.parse::<IpAddr>().map_err(|_| {
                        bad(
                            at(&format!(".ips[{j}]")),
                            format!("{s:?} is not an IP address"),
                        )
                    })?);
                }
                ips
            }
            Some(other) => {
                return Err(bad(
                    at(".ips"),
                    format!("is a JSON {}, not a list", kind_of(other)),
                ))
            }
        };
        let mac = match o.get("mac") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.parse::<Mac>().map_err(|e| bad(at(".mac"), e))?),
            Some(other) => {
                return Err(bad(
                    at(".mac"),
                    format!("is a JSON {}, not a string", kind_of(other)),
                ))
            }
        };
        let default = match o.get("default") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(bad(
                    at(".default"),
                    format!("is a JSON {}, not true or false", kind_of(other)),
                ))
            }
        };
        let device_info = match o.get("device-info") {
            None | Some(Value::Null) => None,
            Some(Value::Object(d)) => {
                let kind = match d.get("type") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(other) if !other.is_string() => {
                        return Err(bad(
                            at(".device-info.type"),
                            format!("is a JSON {}, not a string", kind_of(other)),
                        ))
                    }
                    _ => return Err(bad(at(".device-info"), "has no \"type\"".into())),
                };
                let version = match d.get("version") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(bad(
                            at(".device-info.version"),
                            format!("is a JSON {}, not a string", kind_of(other)),
                        ))
                    }
                };
                let pci_address = match d.get("pci") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(p)) => match p.get("pci-address") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(other) => {
                            return Err(bad(
                                at(".device-info.pci.pci-address"),
                                format!("is a JSON {}, not a string", kind_of(other)),
                            ))
                        }
                    },
                    Some(other) => {
                        return Err(bad(
                            at(".device-info.pci"),
                            format!("is a JSON {}, not an object", kind_of(other)),
                        ))
                    }
                };
                Some(DeviceInfo {
                    kind,
                    version,
                    pci_address,
                })
            }
            Some(other) => {
                return Err(bad(
                    at(".device-info"),
                    format!("is a JSON {}, not an object", kind_of(other)),
                ))
            }
        };
        entries.push(StatusEntry {
            name,
            interface,
            ips,
            mac,
            default,
            device_info,
        });
    }
    Ok(NetworkStatus {
        origin: origin.to_string(),
        entries,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// Whether a VMI's `multus.networkName` (`name` or `namespace/name`, the namespace defaulting
/// to the VMI's) names the status entry `status_name` (Multus writes `namespace/name`).
pub fn names_match(network_name: &str, vmi_namespace: Option<&str>, status_name: &str) -> bool {
    let split = |s: &str| -> (Option<String>, String) {
        match s.split_once('/') {
            Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
            None => (None, s.to_string()),
        }
    };
    let (want_ns, want) = split(network_name);
    let want_ns = want_ns.or_else(|| vmi_namespace.map(str::to_string));
    let (got_ns, got) = split(status_name);
    if want != got {
        return false;
    }
    match (want_ns, got_ns) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl NetworkStatus {
    /// The entries for a VMI network's `networkName`.
    pub fn entries_for(
        &self,
        network_name: &str,
        vmi_namespace: Option<&str>,
    ) -> Vec<&StatusEntry> {
        self.entries
            .iter()
            .filter(|e| names_match(network_name, vmi_namespace, &e.name))
            .collect()
    }

    /// KubeVirt's rule for which naming a pod uses: ordinal when any attachment is named
    /// `net<N>`, hashed otherwise.
    pub fn has_ordinal_interface(&self) -> bool {
        self.entries
            .iter()
            .filter_map(|e| e.interface.as_deref())
            .any(is_ordinal_name)
    }

    /// Every entry's name, for messages.
    pub fn listed(&self) -> String {
        if self.entries.is_empty() {
            return "no entries".into();
        }
        self.entries
            .iter()
            .map(|e| match &e.interface {
                Some(i) => format!("{:?} on {i:?}", e.name),
                None => format!("{:?}", e.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `net<N>` with N ≥ 1 digits (the ordinal Multus naming).
pub fn is_ordinal_name(name: &str) -> bool {
    name.strip_prefix("net")
        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
}

/// The VF's PCI address from an entry's device-info, normalised to `dddd:bb:ss.f` (lower
/// case); `Err` says what is wrong, for [`StatusError::NoDeviceInfo`].
pub fn pci_address(entry: &StatusEntry) -> Result<String, String> {
    let Some(d) = &entry.device_info else {
        return Err("no \"device-info\"".into());
    };
    if d.kind != "pci" {
        return Err(format!("device-info of type {:?}, not \"pci\"", d.kind));
    }
    let Some(a) = &d.pci_address else {
        return Err("device-info without \"pci\": {\"pci-address\": ...}".into());
    };
    normalize_pci(a).ok_or_else(|| {
        format!("device-info pci-address {a:?}, which is not of the form 0000:3b:02.1")
    })
}

/// `DDDD:BB:SS.F` (hex; slot ≤ 0x1f, function ≤ 7), lower-cased; a missing domain is `0000`.
pub fn normalize_pci(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (dom, bus, sf) = match parts.as_slice() {
        [d, b, sf] => (*d, *b, *sf),
        [b, sf] => ("0000", *b, *sf),
        _ => return None,
    };
    let (slot, func) = sf.split_once('.')?;
    let hex = |v: &str, len: usize, max: u32| -> Option<u32> {
        if v.len() != len || !v.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(v, 16).ok().filter(|n| *n <= max)
    };
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        hex(dom, 4, 0xffff)?,
        hex(bus, 2, 0xff)?,
        hex(slot, 2, 0x1f)?,
        hex(func, 1, 7)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPICAL: &str = r#"[
      {"name": "kindnet", "interface": "eth0", "ips": ["10.244.0.7", "fd00:10:244::7"],
       "mac": "0a:58:0a:f4:00:07", "default": true, "dns": {}},
      {"name": "default/blue-net", "interface": "net1", "ips": ["10.245.1.5"],
       "mac": "0a:58:0a:f5:01:05", "dns": {}},
      {"name": "default/sriov-net", "interface": "net2", "dns": {},
       "device-info": {"type": "pci", "version": "1.1.0",
                       "pci": {"pci-address": "0000:3B:02.1", "pf-pci-address": "0000:3b:00.0"}}}
    ]"#;

    fn err(text: &str) -> String {
        parse_json(text, "test").unwrap_err().to_string()
    }

    #[test]
    fn parses_the_typical_annotation() {
        let s = parse_json(TYPICAL, "test").unwrap();
        assert_eq!(s.entries.len(), 3);
        let e = &s.entries[0];
        assert!(e.default);
        assert_eq!(e.interface.as_deref(), Some("eth0"));
        assert_eq!(e.ips.len(), 2);
        assert_eq!(e.mac.unwrap().to_string(), "0a:58:0a:f4:00:07");
        let e = &s.entries[1];
        assert!(!e.default);
        assert_eq!(e.ips, vec!["10.245.1.5".parse::<IpAddr>().unwrap()]);
        let e = &s.entries[2];
        assert_eq!(e.mac, None);
        assert_eq!(pci_address(e).unwrap(), "0000:3b:02.1");
        assert!(s.has_ordinal_interface());
        assert_eq!(s.entries_for("blue-net", Some("default")).len(), 1);
        assert_eq!(s.entries_for("default/blue-net", None).len(), 1);
        assert_eq!(s.entries_for("blue-net", Some("other")).len(), 0);
        assert_eq!(s.entries_for("other/blue-net", Some("default")).len(), 0);
        assert_eq!(s.entries_for("blue", Some("default")).len(), 0);
    }

    #[test]
    fn hashed_names_are_not_ordinal() {
        let s = parse_json(
            r#"[{"name":"k","interface":"eth0","default":true},{"name":"ns/a","interface":"pod16477688c0e"}]"#,
            "t",
        )
        .unwrap();
        assert!(!s.has_ordinal_interface());
        assert!(is_ordinal_name("net1") && is_ordinal_name("net12"));
        assert!(!is_ordinal_name("net") && !is_ordinal_name("net1a") && !is_ordinal_name("eth0"));
    }

    #[test]
    fn malformed_inputs_are_refused_with_their_path() {
        let cases: &[(&str, &str)] = &[
            ("", "not valid JSON"),
            ("[", "not valid JSON"),
            ("nonsense", "not valid JSON"),
            ("{}", "is a JSON object, not a list"),
            ("\"x\"", "is a JSON string, not a list"),
            ("null", "is a JSON null, not a list"),
            ("[1]", "[0]: is a JSON number, not an object"),
            ("[[]]", "[0]: is a JSON list, not an object"),
            ("[{}]", "[0]: has no \"name\""),
            (r#"[{"name": ""}]"#, "[0].name: is empty"),
            (r#"[{"name": "  "}]"#, "[0].name: is empty"),
            (r#"[{"name": 7}]"#, "[0].name: is a JSON number"),
            (
                r#"[{"name": "a", "interface": 3}]"#,
                "[0].interface: is a JSON number",
            ),
            (
                r#"[{"name": "a", "interface": "averyveryverylongname"}]"#,
                "is not a Linux interface name",
            ),
            (
                r#"[{"name": "a", "interface": "a/b"}]"#,
                "is not a Linux interface name",
            ),
            (
                r#"[{"name": "a", "interface": "net1"}, {"name": "b", "interface": "net1"}]"#,
                "[1].interface: \"net1\" is claimed by more than one entry",
            ),
            (
                r#"[{"name": "a", "ips": "10.0.0.1"}]"#,
                "[0].ips: is a JSON string, not a list",
            ),
            (
                r#"[{"name": "a", "ips": [5]}]"#,
                "[0].ips[0]: is a JSON number",
            ),
            (
                r#"[{"name": "a", "ips": ["10.0.0.1", "10.0.0.300"]}]"#,
                "[0].ips[1]: \"10.0.0.300\" is not an IP address",
            ),
            (
                r#"[{"name": "a", "ips": ["fe80::1%eth0"]}]"#,
                "is not an IP address",
            ),
            (r#"[{"name": "a", "mac": "zz:00:00:00:00:00"}]"#, "[0].mac:"),
            (r#"[{"name": "a", "mac": "02:00:00:00:00"}]"#, "[0].mac:"),
            (r#"[{"name": "a", "mac": 12}]"#, "[0].mac: is a JSON number"),
            (
                r#"[{"name": "a", "default": "yes"}]"#,
                "[0].default: is a JSON string",
            ),
            (
                r#"[{"name": "a", "device-info": "pci"}]"#,
                "[0].device-info: is a JSON string",
            ),
            (
                r#"[{"name": "a", "device-info": {}}]"#,
                "[0].device-info: has no \"type\"",
            ),
            (
                r#"[{"name": "a", "device-info": {"type": 1}}]"#,
                "[0].device-info.type: is a JSON number",
            ),
            (
                r#"[{"name": "a", "device-info": {"type": "pci", "pci": []}}]"#,
                "[0].device-info.pci: is a JSON list",
            ),
            (
                r#"[{"name": "a", "device-info": {"type": "pci", "pci": {"pci-address": 5}}}]"#,
                "[0].device-info.pci.pci-address: is a JSON number",
            ),
            (
                r#"[{"name": "a", "device-info": {"type": "pci", "version": 1}}]"#,
                "[0].device-info.version: is a JSON number",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(
                e.contains(want),
                "input {text:?}: error {e:?} lacks {want:?}"
            );
            assert!(
                e.contains(ANNOTATION),
                "input {text:?}: {e:?} names no annotation"
            );
        }
    }

    #[test]
    fn lenient_where_the_standard_is_loose() {
        let s = parse_json(
            r#"[{"name": "a", "interface": "", "mac": "", "ips": ["10.1.1.5/24"], "default": null,
                 "device-info": null, "gateway": ["10.1.1.1"], "extra": {"x": 1}}]"#,
            "t",
        )
        .unwrap();
        let e = &s.entries[0];
        assert_eq!(e.interface, None);
        assert_eq!(e.mac, None);
        assert_eq!(e.ips, vec!["10.1.1.5".parse::<IpAddr>().unwrap()]);
        assert!(parse_json("[]", "t").unwrap().entries.is_empty());
    }

    #[test]
    fn pci_addresses_from_device_info() {
        let entry = |di: Option<DeviceInfo>| StatusEntry {
            name: "a".into(),
            interface: None,
            ips: vec![],
            mac: None,
            default: false,
            device_info: di,
        };
        let di = |kind: &str, a: Option<&str>| {
            Some(DeviceInfo {
                kind: kind.into(),
                version: Some("1.1.0".into()),
                pci_address: a.map(str::to_string),
            })
        };
        assert_eq!(
            pci_address(&entry(di("pci", Some("0000:af:06.7")))).unwrap(),
            "0000:af:06.7"
        );
        assert_eq!(
            pci_address(&entry(di("pci", Some("3b:02.1")))).unwrap(),
            "0000:3b:02.1"
        );
        assert!(pci_address(&entry(None))
            .unwrap_err()
            .contains("no \"device-info\""));
        assert!(pci_address(&entry(di("vdpa", Some("0000:3b:02.1"))))
            .unwrap_err()
            .contains("\"vdpa\""));
        assert!(pci_address(&entry(di("pci", None)))
            .unwrap_err()
            .contains("pci-address"));
        for bad in [
            "0000:3b:02.8",
            "0000:3b:20.1",
            "000:3b:02.1",
            "0000:3b:02",
            "0000:3g:02.1",
            "1:2:3:4.5",
            "",
        ] {
            assert!(
                pci_address(&entry(di("pci", Some(bad)))).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn downward_api_annotations_file() {
        let json = r#"[{"name":"default/blue-net","interface":"net1","ips":["10.245.1.5"]}]"#;
        // What the kubelet writes: sorted `key="Go-quoted value"` lines.
        let quoted = format!("\"{}\"", json.replace('\\', "\\\\").replace('"', "\\\""));
        let file = format!(
            "kubernetes.io/config.seen=\"2024-01-01T00:00:00Z\"\n{ANNOTATION}={quoted}\nk8s.v1.cni.cncf.io/networks=\"blue-net\"\n"
        );
        let s = parse_file(&file, "f").unwrap();
        assert_eq!(s.entries[0].interface.as_deref(), Some("net1"));
        // Raw JSON with a BOM and surrounding whitespace.
        let s = parse_file(&format!("\u{feff}\n {json}\n"), "f").unwrap();
        assert_eq!(s.entries.len(), 1);
        // No network-status key: named, with the keys that are there.
        let e = parse_file("a=\"1\"\nb=\"2\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has no k8s.v1.cni.cncf.io/network-status") && e.contains("a, b"),
            "{e}"
        );
        let e = parse_file("just words\n", "f").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_file(&format!("{ANNOTATION}=[]\n"), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Go escapes"), "{e}");
    }

    #[test]
    fn go_unquote_handles_every_escape() {
        assert_eq!(go_unquote(r#""a\"b\\c\n\t""#).unwrap(), "a\"b\\c\n\t");
        assert_eq!(
            go_unquote(r#""\x41\101\u00e9\U0001F600""#).unwrap(),
            "AAé😀"
        );
        assert_eq!(go_unquote(r#""""#).unwrap(), "");
        assert!(go_unquote("abc").is_none());
        assert!(go_unquote(r#""a"b""#).is_none());
        assert!(go_unquote(r#""\q""#).is_none());
        assert!(go_unquote(r#""\x4""#).is_none());
        assert!(go_unquote(r#""\u12""#).is_none());
        assert!(go_unquote(r#""\xff""#).is_none(), "not UTF-8");
    }

    #[test]
    fn load_prefers_the_file_then_the_vmi_annotation() {
        let mut ann = std::collections::BTreeMap::new();
        assert!(load(None, &ann).unwrap().is_none());
        ann.insert(ANNOTATION.to_string(), TYPICAL.to_string());
        let s = load(None, &ann).unwrap().unwrap();
        assert_eq!(s.entries.len(), 3);
        assert_eq!(s.origin, "the VMI's annotation");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ns");
        std::fs::write(&f, r#"[{"name": "x"}]"#).unwrap();
        let s = load(Some(&f), &ann).unwrap().unwrap();
        assert_eq!(s.entries.len(), 1);
        assert!(s.origin.contains("--network-status"));
        let e = load(Some(&dir.path().join("missing")), &ann).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
