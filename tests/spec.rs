//! Integration tests for `launcher validate`: the binary, its exit codes and its messages.
//!
//! - every KubeVirt example in `../shared/kubevirt-examples/` is accepted, or refused with
//!   exit 2 and exactly the expected field paths (listed below, checked by hand);
//! - every file in `tests/fixtures/invalid/` is refused with exit 2 and the paths its
//!   `# expect:` lines name;
//! - input from standard input, JSON, VirtualMachines, `LAUNCHER_VMI`, `--strict`, and the
//!   usage errors (no `--vmi`, a missing file).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn launcher() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_launcher"));
    c.env_remove("LAUNCHER_VMI").env_remove("RUST_LOG");
    c
}

/// Runs `launcher validate ARGS` with text logs: a refusal is then printed as a plain report.
fn validate(args: &[&str]) -> Output {
    launcher()
        .args(["validate", "--log-format", "text"])
        .args(args)
        .output()
        .expect("running the launcher binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr without the JSON log lines: what a person reads.
fn human_stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.starts_with('{'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths of the problems listed by a refusal (`  path: message` lines).
fn problem_paths(o: &Output) -> BTreeSet<String> {
    human_stderr(o)
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .filter_map(|l| l.split_once(": ").map(|(p, _)| p.to_string()))
        .collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("launcher/ has a parent")
        .to_path_buf()
}

fn examples_dir() -> PathBuf {
    let dir = repo_root().join("../shared/kubevirt-examples");
    assert!(
        dir.is_dir(),
        "the KubeVirt examples folder {} is missing: these tests need ../shared/kubevirt-examples next to the repository",
        dir.display()
    );
    dir
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// The examples this launcher refuses, with exactly the paths it must name. Checked by hand:
/// - vm-windows-clarge-windows: a VirtualMachine with an instance type and a preference, which
///   only the KubeVirt API server can expand;
/// - vmi-dra-pgpu: a DRA resource claim and the GPU that uses it;
/// - vmi-gpu: a GPU (device plugin);
/// - vmi-usb: a USB host device;
/// - vmi-with-sidecar-hook: a hook sidecar, whose changes to the domain would be silently lost.
const REFUSED_EXAMPLES: &[(&str, &[&str])] = &[
    (
        "vm-windows-clarge-windows.yaml",
        &["spec.instancetype", "spec.preference"],
    ),
    (
        "vmi-dra-pgpu.yaml",
        &["spec.resourceClaims[0]", "spec.domain.devices.gpus[0]"],
    ),
    ("vmi-gpu.yaml", &["spec.domain.devices.gpus[0]"]),
    ("vmi-usb.yaml", &["spec.domain.devices.hostDevices[0]"]),
    (
        "vmi-with-sidecar-hook.yaml",
        &["metadata.annotations[\"hooks.kubevirt.io/hookSidecars\"]"],
    ),
];

/// The examples this launcher accepts (every other file must be listed in one of the lists, so
/// a new example is looked at by hand before it counts).
const ACCEPTED_EXAMPLES: &[&str] = &[
    "vm-alpine-datavolume.yaml",
    "vm-alpine-multipvc.yaml",
    "vm-cirros.yaml",
    "vm-pool-cirros.yaml",
    "vmi-alpine-efi.yaml",
    "vmi-arm.yaml",
    "vmi-ephemeral.yaml",
    "vmi-fedora-isolated.yaml",
    "vmi-fedora.yaml",
    "vmi-host-disk.yaml",
    "vmi-kernel-boot.yaml",
    "vmi-masquerade.yaml",
    "vmi-migratable.yaml",
    "vmi-multus-multiple-net.yaml",
    "vmi-multus-ptp.yaml",
    "vmi-nocloud.yaml",
    "vmi-pvc.yaml",
    "vmi-replicaset-cirros.yaml",
    "vmi-sata.yaml",
    "vmi-secureboot.yaml",
    "vmi-sriov.yaml",
    "vmi-windows.yaml",
];

#[test]
fn every_kubevirt_example_is_accepted_or_refused_precisely() {
    let files = yaml_files(&examples_dir());
    assert!(!files.is_empty(), "no examples found");
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let path = file.to_str().unwrap();
        if let Some((_, expected)) = REFUSED_EXAMPLES.iter().find(|(n, _)| *n == name) {
            let out = validate(&["--vmi", path]);
            let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
            let found = problem_paths(&out);
            if out.status.code() != Some(2) || found != expected {
                failures.push(format!(
                    "{name}: expected exit 2 naming {expected:?}, got {:?} naming {found:?}\n{}",
                    out.status.code(),
                    human_stderr(&out)
                ));
            }
            if !human_stderr(&out).contains("is not supported by this launcher") {
                failures.push(format!("{name}: the refusal does not say why"));
            }
        } else if ACCEPTED_EXAMPLES.contains(&name) {
            // --strict: the examples use no field this launcher does not know.
            let out = validate(&["--strict", "--vmi", path]);
            let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
            if out.status.code() != Some(0)
                || lines.len() != 1
                || !lines[0].contains("valid VirtualMachineInstance")
            {
                failures.push(format!(
                    "{name}: expected exit 0 and one line, got {:?}: {lines:?}\n{}",
                    out.status.code(),
                    human_stderr(&out)
                ));
            }
        } else {
            failures.push(format!(
                "{name}: a new example: check it by hand and add it to ACCEPTED_EXAMPLES or REFUSED_EXAMPLES"
            ));
        }
    }
    for (name, _) in REFUSED_EXAMPLES {
        if !files.iter().any(|f| f.file_name().unwrap() == *name) {
            failures.push(format!("{name} is listed but missing from the examples"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn success_is_one_line_naming_the_vmi() {
    let f = examples_dir().join("vmi-fedora.yaml");
    let out = validate(&["--vmi", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", human_stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "{}: valid VirtualMachineInstance default/vmi-fedora\n",
            f.display()
        )
    );
}

/// Parses the `# expect: PATH :: NEEDLE` lines of a fixture.
fn expectations(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|e| {
            let (p, n) = e.split_once(" :: ").unwrap_or((e, ""));
            (p.trim().to_string(), n.trim().to_string())
        })
        .collect()
}

#[test]
fn every_invalid_fixture_is_refused_with_its_paths() {
    let dir = repo_root().join("tests/fixtures/invalid");
    let files = yaml_files(&dir);
    assert!(
        files.len() >= 10,
        "expected the invalid fixtures in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(file).unwrap();
        let expect = expectations(&text);
        if expect.is_empty() {
            failures.push(format!("{name}: has no `# expect:` line"));
            continue;
        }
        let out = validate(&["--vmi", file.to_str().unwrap()]);
        let err = human_stderr(&out);
        if out.status.code() != Some(2) {
            failures.push(format!(
                "{name}: exit {:?}, expected 2\n{err}",
                out.status.code()
            ));
        }
        if !stdout(&out).is_empty() {
            failures.push(format!("{name}: printed to stdout on failure"));
        }
        for (path, needle) in &expect {
            let ok = err.lines().any(|l| {
                let names_path = path.starts_with('<')
                    || l.trim_start().starts_with(&format!("{path}: "))
                    || l.contains(&format!(": {path}: "));
                names_path && l.contains(needle.as_str())
            });
            if !ok {
                failures.push(format!(
                    "{name}: no line names {path} with {needle:?}\n{err}"
                ));
            }
        }
        // Refusals list exactly what the fixture expects: nothing unexpected.
        let listed = problem_paths(&out);
        let expected: BTreeSet<String> = expect
            .iter()
            .filter(|(p, _)| !p.starts_with('<'))
            .map(|(p, _)| p.clone())
            .collect();
        if !listed.is_empty() && listed != expected {
            failures.push(format!(
                "{name}: listed {listed:?}, but the fixture expects {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn many_problems_are_all_reported_with_a_count() {
    let f = repo_root().join("tests/fixtures/invalid/many-problems.yaml");
    let out = validate(&["--vmi", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = human_stderr(&out);
    assert!(err.contains("the VMI is invalid (14 problems):"), "{err}");
    assert_eq!(problem_paths(&out).len(), 14, "{err}");
}

#[test]
fn yaml_syntax_errors_name_line_and_column() {
    let f = repo_root().join("tests/fixtures/invalid/syntax-error.yaml");
    let out = validate(&["--vmi", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = human_stderr(&out);
    assert!(
        err.contains(&format!(
            "{}: YAML syntax error at line 7, column 22",
            f.display()
        )),
        "{err}"
    );
}

#[test]
fn standard_input_is_read_with_dash() {
    let text = std::fs::read(examples_dir().join("vmi-masquerade.yaml")).unwrap();
    let mut child = launcher()
        .args(["validate", "--log-format", "text", "--vmi", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", human_stderr(&out));
    assert_eq!(
        stdout(&out),
        "<stdin>: valid VirtualMachineInstance default/vmi-masquerade\n"
    );
}

#[test]
fn invalid_standard_input_is_refused() {
    let mut child = launcher()
        .args(["validate", "--log-format", "text", "--vmi", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"metadata: {name: x}\nspec: {domain: {memory: {guest: 1Gi}}, hostname: Bad}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        problem_paths(&out),
        BTreeSet::from(["spec.hostname".to_string()])
    );
}

#[test]
fn json_input_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vmi.json");
    std::fs::write(
        &f,
        r#"{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "from-json", "namespace": "ns1"},
            "spec": {"domain": {"memory": {"guest": "256Mi"},
                     "devices": {"interfaces": [{"name": "default", "masquerade": {},
                                                 "ports": [{"port": 22}]}]}},
                     "networks": [{"name": "default", "pod": {}}]}}"#,
    )
    .unwrap();
    let out = validate(&["--vmi", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", human_stderr(&out));
    assert!(stdout(&out).ends_with("valid VirtualMachineInstance ns1/from-json\n"));
}

#[test]
fn json_problems_are_reported_like_yaml_ones() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vmi.json");
    std::fs::write(
        &f,
        r#"{"metadata": {"name": "j"}, "spec": {"domain": {"memory": {"guest": "1Gi"},
            "devices": {"interfaces": [{"name": "default", "bridge": {}, "macAddress": "01:00:5e:00:00:01"}]}},
            "networks": [{"name": "default", "pod": {}}]}}"#,
    )
    .unwrap();
    let out = validate(&["--vmi", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(human_stderr(&out).contains(
        "  spec.domain.devices.interfaces[0].macAddress: \"01:00:5e:00:00:01\" is a multicast MAC"
    ));
}

#[test]
fn a_virtual_machine_is_validated_through_its_template() {
    let f = examples_dir().join("vm-cirros.yaml");
    let out = validate(&["--vmi", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", human_stderr(&out));
    assert!(stdout(&out).contains("default/vm-cirros"));
    let f = repo_root().join("tests/fixtures/invalid/gpu-in-vm.yaml");
    let out = validate(&["--vmi", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(problem_paths(&out).contains("spec.template.spec.domain.devices.gpus[0]"));
}

#[test]
fn no_vmi_is_a_usage_error() {
    let out = validate(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        human_stderr(&out).contains("no VMI given: pass --vmi FILE"),
        "{}",
        human_stderr(&out)
    );
}

#[test]
fn the_vmi_can_come_from_the_environment() {
    let f = examples_dir().join("vmi-pvc.yaml");
    let out = launcher()
        .args(["validate", "--log-format", "text"])
        .env("LAUNCHER_VMI", &f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", human_stderr(&out));
    assert!(stdout(&out).contains("default/vmi-pvc"));
}

#[test]
fn a_missing_file_is_named() {
    let out = validate(&["--vmi", "/nonexistent/dir/vmi.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = human_stderr(&out);
    assert!(
        err.contains("reading the VMI from /nonexistent/dir/vmi.yaml")
            && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn strict_lists_unknown_fields_as_problems() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vmi.yaml");
    std::fs::write(
        &f,
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: s}\nspec:\n  futureField: 1\n  domain:\n    memory: {guest: 1Gi}\n    devices:\n      disks: [{name: d, disk: {bus: virtio, newKnob: true}}]\n  volumes: [{name: d, containerDisk: {image: 'a:1'}}]\n",
    )
    .unwrap();
    let path = f.to_str().unwrap();
    let lax = validate(&["--vmi", path]);
    assert_eq!(lax.status.code(), Some(0), "{}", human_stderr(&lax));
    assert!(
        String::from_utf8_lossy(&lax.stderr).contains("--strict"),
        "without --strict a warning points at --strict"
    );
    let strict = validate(&["--strict", "--vmi", path]);
    assert_eq!(strict.status.code(), Some(2));
    assert_eq!(
        problem_paths(&strict),
        BTreeSet::from([
            "spec.futureField".to_string(),
            "spec.domain.devices.disks[0].disk.newKnob".to_string()
        ])
    );
    assert!(human_stderr(&strict).contains("is not a field this launcher knows"));
}

#[test]
fn strict_lists_unknown_fields_with_other_problems() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vm.yaml");
    std::fs::write(
        &f,
        "kind: VirtualMachine\nmetadata: {name: v}\nspec:\n  template:\n    spec:\n      extra: 1\n      hostname: Bad\n      domain: {memory: {guest: 1Gi}}\n",
    )
    .unwrap();
    let out = validate(&["--strict", "--vmi", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        problem_paths(&out),
        BTreeSet::from([
            "spec.template.spec.hostname".to_string(),
            "spec.template.spec.extra".to_string()
        ])
    );
}

#[test]
fn defaults_are_idempotent_on_every_example_and_fixture() {
    let mut files = yaml_files(&examples_dir());
    files.extend(yaml_files(&repo_root().join("tests/fixtures/invalid")));
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let Ok(loaded) = launcher::spec::parse_str(&text, "t") else {
            continue; // syntax, type and kind errors have no VMI to default
        };
        let mut once = loaded.vmi.clone();
        launcher::spec::defaults::apply(&mut once);
        let mut twice = once.clone();
        launcher::spec::defaults::apply(&mut twice);
        assert_eq!(once, twice, "{}", f.display());
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} files checked");
}

/// `run --libvirt-uri` with a URI the launcher's own libvirt client cannot reach is a usage
/// error (exit 2) found before anything else: here even before the missing VMI file is read.
#[test]
fn run_refuses_a_remote_libvirt_uri_before_anything_else() {
    let out = launcher()
        .args([
            "run",
            "--libvirt-uri",
            "qemu+tcp://node1/system",
            "--vmi",
            "/nonexistent/vmi.yaml",
        ])
        .output()
        .expect("running the launcher binary");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--libvirt-uri"), "{err}");
    assert!(err.contains("built-in libvirt client"), "{err}");
    assert!(!err.contains("nonexistent"), "{err}");
}
