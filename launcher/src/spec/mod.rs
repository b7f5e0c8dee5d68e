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
    #[error("reading the VMI from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {path}: {message}")]
    Type {
        origin: String,
        path: String,
        message: String,
    },
    #[error("{origin}: kind {kind:?} is not a VirtualMachineInstance or a VirtualMachine")]
    WrongKind { origin: String, kind: String },
    #[error("{origin}: the VirtualMachine has no spec.template")]
    NoTemplate { origin: String },
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

impl Classify for SpecError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            SpecError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ExitKind::InvalidSpec
            }
            _ => ExitKind::InvalidSpec,
        }
    }
}

/// A VMI as read, before defaults, with the fields this launcher did not recognise.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub vmi: Vmi,
    /// JSON paths of fields that were present but unknown to this launcher.
    pub unknown_fields: Vec<String>,
    /// Where it came from (`path` or `<stdin>`), for messages.
    pub origin: String,
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
            .map_err(|source| SpecError::Read {
                path: "<stdin>".into(),
                source,
            })?;
        parse_str(&text, "<stdin>")
    } else {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
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
                None => format!("YAML syntax error: {e}"),
            },
        })?;
    let value = unwrap_vm(value, origin)?;
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result: Result<Vmi, _> = serde_ignored::deserialize(
        serde_path_to_error::Deserializer::new(&value, &mut track),
        |p| unknown.push(ignored_path(&p)),
    );
    let vmi = result.map_err(|e| SpecError::Type {
        origin: origin.to_string(),
        path: json_path(&track.path().to_string()),
        message: e.to_string(),
    })?;
    Ok(Loaded {
        vmi,
        unknown_fields: unknown,
        origin: origin.to_string(),
    })
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn unwrap_vm(mut value: serde_json::Value, origin: &str) -> Result<serde_json::Value, SpecError> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    match kind.as_str() {
        "" | "VirtualMachineInstance" => Ok(value),
        "VirtualMachine" => {
            let vm_meta = value.get("metadata").cloned().unwrap_or_default();
            let mut template = value
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .map(serde_json::Value::take)
                .filter(|t| !t.is_null())
                .ok_or_else(|| SpecError::NoTemplate {
                    origin: origin.to_string(),
                })?;
            let obj = template.as_object_mut().ok_or_else(|| SpecError::Type {
                origin: origin.to_string(),
                path: "spec.template".into(),
                message: "must be an object".into(),
            })?;
            let meta = obj
                .entry("metadata")
                .or_insert_with(|| serde_json::json!({}));
            if let (Some(meta), Some(vm_meta)) = (meta.as_object_mut(), vm_meta.as_object()) {
                for key in ["name", "namespace", "uid"] {
                    if !meta.contains_key(key) {
                        if let Some(v) = vm_meta.get(key) {
                            meta.insert(key.to_string(), v.clone());
                        }
                    }
                }
            }
            obj.insert(
                "apiVersion".into(),
                value.get("apiVersion").cloned().unwrap_or_default(),
            );
            obj.insert("kind".into(), "VirtualMachineInstance".into());
            Ok(template)
        }
        other => Err(SpecError::WrongKind {
            origin: origin.to_string(),
            kind: other.to_string(),
        }),
    }
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
    let mut vmi = loaded.vmi;
    defaults::apply(&mut vmi);
    validate::validate(&vmi).map_err(SpecError::Invalid)?;
    Ok(vmi)
}

/// `launcher validate [--strict]`.
pub fn cmd_validate(g: &GlobalArgs, args: &ValidateArgs) -> anyhow::Result<u8> {
    let loaded = load_from_args(g)?;
    let mut vmi = loaded.vmi;
    defaults::apply(&mut vmi);
    let mut problems = match validate::validate(&vmi) {
        Ok(()) => Vec::new(),
        Err(p) => p,
    };
    if args.strict {
        for f in &loaded.unknown_fields {
            problems.push(Problem {
                path: f.clone(),
                message: "is not a field this launcher knows (listed by --strict)".into(),
            });
        }
    } else if !loaded.unknown_fields.is_empty() {
        tracing::warn!(
            count = loaded.unknown_fields.len(),
            "the VMI has fields this launcher does not know; `launcher validate --strict` lists them"
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
        assert!(msg.contains("spec.domain.cpu.cores"), "{msg}");
    }
}
