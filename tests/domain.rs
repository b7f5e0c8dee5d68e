//! Integration tests: the domain plan → render → check, disk preparation, and libvirt's word.
//!
//! - `goldens`: every `tests/fixtures/*.yaml` (except `refuse-*`) renders to exactly
//!   `tests/golden/<name>.xml` (regenerate with `UPDATE_GOLDEN=1`), and every golden passes
//!   `virt-xml-validate <file> domain`.
//! - `kubevirt_examples`: every manifest in `../shared/kubevirt-examples/` renders to XML that
//!   validates, or is refused with exit 2 naming the field.
//! - `refusals`: `refuse-*.yaml` fixtures exit 2 naming the field in their header.
//! - property tests: spec text with XML metacharacters round-trips through render + parse.
//! - `prepare_*`: overlays, empty disks and ISOs are created for real and inspected with
//!   `qemu-img info` and `xorriso`.
//! - `libvirt_accepts_rendered_domains`: a private `libvirtd` (own mount + network namespace)
//!   `virsh define`s the rendered fixtures (`--accel tcg`). Needs root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use launcher::cli::{Cli, GlobalArgs};
use launcher::domain::plan::{self, PrepStep};
use launcher::domain::{self, disks, render, DomainError, NicAttach, PodFacts};
use launcher::error::{Classify, ExitKind};
use proptest::prelude::*;
use quick_xml::events::Event;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/fixtures"))
        .expect("tests/fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures found");
    v
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().to_string()
}

/// A `# key: value` header line of a fixture.
fn header(p: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(p).unwrap();
    let prefix = format!("# {key}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
}

fn global_for(p: &Path, extra: &[&str]) -> GlobalArgs {
    let mut args = vec!["launcher".to_string()];
    if let Some(a) = header(p, "launcher-args") {
        let mut it = a.split_whitespace();
        while let Some(x) = it.next() {
            if extra.contains(&x) {
                it.next(); // the caller overrides this option
            } else {
                args.push(x.to_string());
            }
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--vmi".into(), p.display().to_string(), "render".into()]);
    Cli::try_parse_from(&args).expect("fixture args").global
}

/// Renders a fixture through the library, as `launcher render` does, plus `# test-mtu:`.
fn render_fixture(p: &Path, extra: &[&str]) -> Result<String, DomainError> {
    let g = global_for(p, extra);
    let vmi = launcher::spec::load_for_run(&g).expect("fixture loads");
    let hv = domain::choose_accel(g.accel, true, g.allow_emulation)?;
    let facts = PodFacts::stand_in(&g, &vmi, hv)?;
    let mut nics = domain::stand_in_nics(&vmi)?;
    if let Some(mtu) = header(p, "test-mtu") {
        for n in &mut nics {
            if !matches!(n.attach, NicAttach::Hostdev { .. }) {
                n.mtu = Some(mtu.parse().unwrap());
            }
        }
    }
    let plan = plan::plan(&vmi, &nics, &facts)?;
    render::render(&plan, g.template_dir.as_deref())
}

fn validate(file: &Path) {
    let out = Command::new("virt-xml-validate")
        .arg(file)
        .arg("domain")
        .output()
        .expect("virt-xml-validate must be installed (libvirt-clients, libxml2-utils)");
    assert!(
        out.status.success(),
        "virt-xml-validate {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn goldens() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let golden_dir = repo().join("tests/golden");
    let mut expected = Vec::new();
    let mut failures = Vec::new();
    for f in fixtures()
        .iter()
        .filter(|f| !stem(f).starts_with("refuse-"))
    {
        let name = stem(f);
        let xml = render_fixture(f, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let golden = golden_dir.join(format!("{name}.xml"));
        expected.push(format!("{name}.xml"));
        if update {
            std::fs::write(&golden, &xml).unwrap();
        } else {
            let want = std::fs::read_to_string(&golden).unwrap_or_default();
            if want != xml {
                failures.push(format!(
                    "{name}: rendered XML differs from {} (UPDATE_GOLDEN=1 regenerates; review with git diff)",
                    golden.display()
                ));
            }
        }
        validate(&golden);
    }
    // No stale goldens.
    for e in std::fs::read_dir(&golden_dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.ends_with(".xml") {
            assert!(expected.contains(&n), "golden {n} has no fixture");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn launcher(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_launcher"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fixtures_use_only_fields_the_launcher_knows() {
    for f in fixtures() {
        let text = std::fs::read_to_string(&f).unwrap();
        let loaded = launcher::spec::parse_str(&text, &f.display().to_string()).unwrap();
        // An unknown field is a fixture typo (or a model gap) that would silently drop coverage.
        assert!(
            loaded.unknown_fields.is_empty(),
            "{}: unknown fields {:?}",
            f.display(),
            loaded.unknown_fields
        );
    }
}

#[test]
fn refusals() {
    let mut n = 0;
    for f in fixtures().iter().filter(|f| stem(f).starts_with("refuse-")) {
        let field = header(f, "expect-refusal").expect("refuse-* fixtures name the field");
        let (code, out, err) = launcher(&[
            "render",
            "--accel",
            "tcg",
            "--log-format",
            "text",
            "--vmi",
            f.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{}: {err}", f.display());
        assert!(out.is_empty(), "nothing on stdout when refused");
        assert!(
            err.contains(&field),
            "{}: {err} should name {field}",
            f.display()
        );
        n += 1;
    }
    assert!(n >= 4);
}

#[test]
fn kubevirt_examples() {
    let dir = repo().join("../shared/kubevirt-examples");
    assert!(
        dir.is_dir(),
        "{} is missing: the real-world manifests are part of this test",
        dir.display()
    );
    // Examples that need hardware this launcher refuses, with the field it must name.
    let refused: BTreeMap<&str, &str> = [
        ("vmi-gpu.yaml", "spec.domain.devices.gpus"),
        ("vmi-dra-pgpu.yaml", "spec.domain.devices.gpus"),
        ("vmi-usb.yaml", "spec.domain.devices.hostDevices"),
        // Not hardware, but refused by validation with the field named: instance types need
        // the KubeVirt API server, hook sidecars a hook protocol.
        ("vm-windows-clarge-windows.yaml", "spec.instancetype"),
        (
            "vmi-with-sidecar-hook.yaml",
            "hooks.kubevirt.io/hookSidecars",
        ),
    ]
    .into();
    // Kinds the loader does not unwrap (not a VMI or VM): refused with the kind named.
    let other_kinds: BTreeMap<&str, &str> = [
        ("vm-pool-cirros.yaml", "VirtualMachinePool"),
        (
            "vmi-replicaset-cirros.yaml",
            "VirtualMachineInstanceReplicaSet",
        ),
    ]
    .into();
    let out_dir = tempfile::tempdir().unwrap();
    let mut rendered = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 20, "expected the 27 KubeVirt examples");
    for p in entries {
        let file = p.file_name().unwrap().to_string_lossy().to_string();
        let (code, out, err) = launcher(&[
            "render",
            "--accel",
            "tcg",
            "--log-format",
            "text",
            "--vmi",
            p.to_str().unwrap(),
        ]);
        if let Some(field) = refused.get(file.as_str()) {
            assert_eq!(code, 2, "{file} must be refused: {err}");
            assert!(err.contains(field), "{file}: {err} should name {field}");
            continue;
        }
        if code == 2 {
            if let Some(kind) = other_kinds.get(file.as_str()) {
                assert!(err.contains(kind), "{file}: {err}");
                continue;
            }
        }
        assert_eq!(code, 0, "{file}: {err}");
        let x = out_dir.path().join(file.replace(".yaml", ".xml"));
        std::fs::write(&x, out).unwrap();
        validate(&x);
        rendered += 1;
    }
    assert!(rendered >= 18, "only {rendered} examples rendered");
}

#[test]
fn render_cli_prints_the_golden_and_template_dir_overrides() {
    let f = repo().join("tests/fixtures/identity-bios.yaml");
    let (code, out, err) = launcher(&["render", "--accel", "kvm", "--vmi", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let golden = std::fs::read_to_string(repo().join("tests/golden/identity-bios.xml")).unwrap();
    assert_eq!(out, golden);

    // An operator override of one template (layout only) takes effect.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("extra.xml"),
        "  <qemu:commandline>\n    <qemu:arg value='-no-hpet'/>\n  </qemu:commandline>\n",
    )
    .unwrap();
    let (code, out, err) = launcher(&[
        "render",
        "--accel",
        "kvm",
        "--template-dir",
        d.path().to_str().unwrap(),
        "--vmi",
        f.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("<qemu:arg value='-no-hpet'/>"), "{out}");
    let x = d.path().join("out.xml");
    std::fs::write(&x, &out).unwrap();
    validate(&x);

    // A malformed override is refused (exit 2) naming the template.
    std::fs::remove_file(d.path().join("extra.xml")).unwrap();
    std::fs::write(
        d.path().join("devices.xml"),
        "    <memballoon model='none'>\n",
    )
    .unwrap();
    let (code, _, err) = launcher(&[
        "render",
        "--accel",
        "kvm",
        "--template-dir",
        d.path().to_str().unwrap(),
        "--vmi",
        f.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("devices.xml"), "{err}");

    // A template syntax error too.
    std::fs::write(d.path().join("devices.xml"), "{% if %}\n").unwrap();
    let (code, _, err) = launcher(&[
        "render",
        "--accel",
        "kvm",
        "--template-dir",
        d.path().to_str().unwrap(),
        "--vmi",
        f.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("devices.xml"), "{err}");
}

#[test]
fn accel_tcg_gives_qemu_type_and_kvm_gives_kvm() {
    let f = repo().join("tests/fixtures/identity-bios.yaml");
    let tcg = render_fixture(&f, &["--accel", "tcg"]).unwrap();
    assert!(tcg.starts_with("<domain type='qemu'"), "{tcg}");
    assert!(tcg.contains("<cpu mode='maximum'>"));
    let kvm = render_fixture(&f, &["--accel", "kvm"]).unwrap();
    assert!(kvm.starts_with("<domain type='kvm'"));
    assert!(kvm.contains("<cpu mode='host-model'>"));
}

// ---------------------------------------------------------------------------------------------
// Round trips.

/// (element path, attributes, text) of every element.
type Elem = (String, BTreeMap<String, String>, String);

fn elements(xml: &str) -> Vec<Elem> {
    let mut r = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<usize> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut out: Vec<Elem> = Vec::new();
    loop {
        match r.read_event().expect("well-formed") {
            Event::Start(s) => {
                path.push(String::from_utf8_lossy(s.name().as_ref()).into_owned());
                let attrs = s
                    .attributes()
                    .map(|a| {
                        let a = a.unwrap();
                        (
                            String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                            a.unescape_value().unwrap().into_owned(),
                        )
                    })
                    .collect();
                out.push((path.join("/"), attrs, String::new()));
                stack.push(out.len() - 1);
            }
            Event::Empty(s) => {
                let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
                let attrs = s
                    .attributes()
                    .map(|a| {
                        let a = a.unwrap();
                        (
                            String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                            a.unescape_value().unwrap().into_owned(),
                        )
                    })
                    .collect();
                out.push((format!("{}/{name}", path.join("/")), attrs, String::new()));
            }
            Event::Text(t) => {
                if let Some(i) = stack.last() {
                    out[*i].2.push_str(&t.unescape().unwrap());
                }
            }
            Event::End(_) => {
                path.pop();
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

fn text_of(els: &[Elem], path: &str) -> Vec<String> {
    els.iter()
        .filter(|e| e.0 == path)
        .map(|e| e.2.clone())
        .collect()
}

fn base_vmi() -> launcher::spec::Vmi {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/kernel-boot.yaml")).unwrap();
    let mut vmi = launcher::spec::parse_str(&text, "t").unwrap().vmi;
    launcher::spec::defaults::apply(&mut vmi);
    vmi
}

fn stand_in_render(vmi: &launcher::spec::Vmi) -> Result<(plan::DomainPlan, String), DomainError> {
    let g = Cli::try_parse_from(["launcher", "render"]).unwrap().global;
    let facts = PodFacts::stand_in(&g, vmi, domain::Hypervisor::Qemu)?;
    let nics = domain::stand_in_nics(vmi)?;
    let p = plan::plan(vmi, &nics, &facts)?;
    let xml = render::render(&p, None)?;
    Ok((p, xml))
}

#[test]
fn a_cloud_init_password_and_quoted_annotations_come_out_intact() {
    let mut vmi = base_vmi();
    vmi.metadata
        .annotations
        .insert("say".into(), r#"he said "hi" & 'bye' <x>"#.into());
    let (p, xml) = stand_in_render(&vmi).unwrap();
    let els = elements(&xml);
    assert_eq!(
        text_of(&els, "domain/metadata/launcher/annotation"),
        vec![r#"he said "hi" & 'bye' <x>"#.to_string()]
    );
    assert_eq!(
        text_of(&els, "domain/os/cmdline"),
        vec![r#"console=ttyS0 quiet "x=a&b<c>""#.to_string()]
    );
    assert!(xml.contains("&quot;x=a&amp;b&lt;c&gt;&quot;"));
    // The cloud-init data of the disks-all fixture is carried verbatim to the ISO step.
    let f = repo().join("tests/fixtures/disks-all.yaml");
    let g = global_for(&f, &[]);
    let vmi = launcher::spec::load_for_run(&g).unwrap();
    let facts = PodFacts::stand_in(&g, &vmi, domain::Hypervisor::Qemu).unwrap();
    let nics = domain::stand_in_nics(&vmi).unwrap();
    let p2 = plan::plan(&vmi, &nics, &facts).unwrap();
    let mut seen = 0;
    for s in &p2.prepare {
        if let PrepStep::CloudInit { user_data, .. } = s {
            match user_data {
                plan::DataSource::Inline(t) => assert!(
                    t.contains("password: \"p&ss<w>rd\"") || t.contains("password: p&ss<w>rd"),
                    "{t}"
                ),
                other => panic!("{other:?}"),
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 2);
    drop(p);
}

fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn spec_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[ -~\\n\\t\u{e9}\u{4e2d}\u{1f600}<>&\"']{1,40}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn spec_text_round_trips_through_render_and_parse(
        name in spec_text(),
        key in "[a-z0-9./-]{1,20}",
        value in spec_text(),
        args in spec_text(),
        serial in spec_text(),
        chassis in spec_text(),
        label in spec_text(),
    ) {
        let mut vmi = base_vmi();
        vmi.metadata.name = Some(name.clone());
        vmi.metadata.uid = Some("u-1".into());
        vmi.metadata.annotations.insert(key.clone(), value.clone());
        vmi.metadata.labels.insert("l".into(), label.clone());
        vmi.spec.domain.firmware.as_mut().unwrap().kernel_boot.as_mut().unwrap().kernel_args = Some(args.clone());
        vmi.spec.domain.firmware.as_mut().unwrap().serial = Some(serial.clone());
        vmi.spec.domain.chassis = Some(launcher::spec::Chassis { manufacturer: Some(chassis.clone()), ..Default::default() });
        let (_, xml) = stand_in_render(&vmi).unwrap();
        let els = elements(&xml);
        prop_assert_eq!(text_of(&els, "domain/metadata/launcher/name"), vec![name.clone()]);
        prop_assert_eq!(text_of(&els, "domain/name"), vec![format!("default_{name}")]);
        let ann: Vec<&Elem> = els.iter().filter(|e| e.0 == "domain/metadata/launcher/annotation").collect();
        prop_assert_eq!(ann.len(), 1);
        prop_assert_eq!(&ann[0].1["key"], &key);
        prop_assert_eq!(&ann[0].2, &value);
        let lab: Vec<&Elem> = els.iter().filter(|e| e.0 == "domain/metadata/launcher/label").collect();
        prop_assert_eq!(&lab[0].2, &label);
        prop_assert_eq!(text_of(&els, "domain/os/cmdline"), vec![args.clone()]);
        let entries: Vec<&Elem> = els.iter().filter(|e| e.0 == "domain/sysinfo/system/entry" && e.1["name"] == "serial").collect();
        prop_assert_eq!(&entries[0].2, &serial);
        let ch: Vec<&Elem> = els.iter().filter(|e| e.0 == "domain/sysinfo/chassis/entry").collect();
        prop_assert_eq!(&ch[0].2, &chassis);
    }

    #[test]
    fn cloud_init_text_round_trips_inline_and_base64(data in spec_text()) {
        for encoded in [false, true] {
            let mut vmi = base_vmi();
            vmi.spec.domain.devices.disks.push(launcher::spec::Disk { name: "ci".into(), disk: Some(Default::default()), ..Default::default() });
            let src = if encoded {
                launcher::spec::CloudInitSource { user_data_base64: Some(b64(data.as_bytes())), network_data: Some(data.clone()), ..Default::default() }
            } else {
                launcher::spec::CloudInitSource { user_data: Some(data.clone()), network_data_base64: Some(b64(data.as_bytes())), ..Default::default() }
            };
            vmi.spec.volumes.push(launcher::spec::Volume { name: "ci".into(), cloud_init_no_cloud: Some(src), ..Default::default() });
            let (p, xml) = stand_in_render(&vmi).unwrap();
            prop_assert!(xml.contains("noCloud.iso"));
            let step = p.prepare.iter().find_map(|s| match s {
                PrepStep::CloudInit { user_data, network_data, .. } => Some((user_data.clone(), network_data.clone())),
                _ => None,
            }).unwrap();
            prop_assert_eq!(step.0, plan::DataSource::Inline(data.clone()));
            prop_assert_eq!(step.1, Some(plan::DataSource::Inline(data.clone())));
        }
    }
}

#[test]
fn xml_forbidden_control_characters_are_refused_with_the_field() {
    let mut vmi = base_vmi();
    vmi.metadata
        .annotations
        .insert("a".into(), "bell\u{7}".into());
    let e = stand_in_render(&vmi).unwrap_err();
    assert_eq!(e.exit_kind(), ExitKind::InvalidSpec);
    assert!(e.to_string().contains("metadata.annotations"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Disk preparation, for real.

fn qemu_img_info(p: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(p)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Extracts an ISO with xorriso; returns (volume id, files relative → content).
fn read_iso(iso: &Path) -> (String, BTreeMap<String, Vec<u8>>) {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", "/"])
        .arg(d.path())
        .output()
        .expect("xorriso");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let volid = log
        .lines()
        .find_map(|l| {
            l.split_once("Volume id    :")
                .map(|x| x.1.trim().trim_matches('\'').to_string())
        })
        .unwrap_or_default();
    let mut files = BTreeMap::new();
    let mut stack = vec![d.path().to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let ep = e.path();
            if ep.is_dir() {
                stack.push(ep);
            } else {
                let rel = ep.strip_prefix(d.path()).unwrap().display().to_string();
                files.insert(rel, std::fs::read(&ep).unwrap());
            }
        }
    }
    (volid, files)
}

#[test]
fn prepare_builds_every_disk_of_a_plan_for_real() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    let cdd = t.path().join("cd");
    let host = t.path().join("host");
    std::fs::create_dir_all(&cdd).unwrap();
    std::fs::create_dir_all(&host).unwrap();
    let yaml = format!(
        r##"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: prep, namespace: ns, uid: p-1}}
spec:
  hostname: prep-host
  domain:
    memory: {{guest: 128Mi}}
    devices:
      disks:
      - {{name: cd0, disk: {{bus: virtio}}}}
      - {{name: cd1, disk: {{bus: virtio}}}}
      - {{name: scratch, disk: {{bus: virtio}}}}
      - {{name: hd, disk: {{bus: virtio}}}}
      - {{name: ci, disk: {{bus: virtio}}}}
      - {{name: drive, disk: {{bus: virtio}}}}
      - {{name: cfg, disk: {{bus: virtio}}}}
  volumes:
  - {{name: cd0, containerDisk: {{image: a}}}}
  - {{name: cd1, containerDisk: {{image: b}}}}
  - name: scratch
    emptyDisk: {{capacity: "10485883"}}
  - name: hd
    hostDisk: {{path: "{host}/new.img", type: DiskOrCreate, capacity: 64Mi}}
  - name: ci
    cloudInitNoCloud:
      userData: "#cloud-config\npassword: p&ss<w>rd\n"
      networkData: "version: 2\n"
  - name: drive
    cloudInitConfigDrive:
      userDataBase64: {ud64}
  - name: cfg
    configMap: {{name: app, volumeLabel: APPCFG}}
"##,
        host = host.display(),
        ud64 = b64(b"#!/bin/sh\necho p&ss<w>rd\n"),
    );
    let vmi_path = t.path().join("vmi.yaml");
    std::fs::write(&vmi_path, yaml).unwrap();
    let g = Cli::try_parse_from([
        "launcher",
        "--vmi",
        vmi_path.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--container-disk-dir",
        cdd.to_str().unwrap(),
        "--accel",
        "tcg",
        "render",
    ])
    .unwrap()
    .global;
    let vmi = launcher::spec::load_for_run(&g).unwrap();
    let facts = PodFacts::stand_in(&g, &vmi, domain::Hypervisor::Qemu).unwrap();
    let nics = domain::stand_in_nics(&vmi).unwrap();
    let p = plan::plan(&vmi, &nics, &facts).unwrap();

    // Nothing exists yet: the first missing image is named, exit 3.
    let e = disks::prepare(&p.prepare).unwrap_err();
    assert_eq!(e.exit_kind(), ExitKind::Precondition, "{e}");
    assert!(
        e.to_string()
            .contains(&cdd.join("disk_0.img").display().to_string()),
        "{e}"
    );

    // The pod's mounts: a raw and a qcow2 container disk, a configMap directory.
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(cdd.join("disk_0.img"))
        .arg("8M")
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(cdd.join("disk_1.img"))
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let cfg_dir = run.join("config-map/cfg");
    std::fs::create_dir_all(cfg_dir.join("sub")).unwrap();
    std::fs::write(cfg_dir.join("app.conf"), "k=<v>&\n").unwrap();
    std::fs::write(cfg_dir.join("sub/x"), "y").unwrap();
    std::fs::create_dir_all(cfg_dir.join("..2024_01_01")).unwrap();

    disks::prepare(&p.prepare).unwrap();
    assert!(
        run.join("p-1").is_dir(),
        "the socket directory <run-dir>/<uid>"
    );

    // Overlays over the container disks, backing format detected.
    for (vol, idx, fmt) in [("cd0", 0, "raw"), ("cd1", 1, "qcow2")] {
        let info = qemu_img_info(&plan::overlay_path(&run, vol));
        assert_eq!(info["format"], "qcow2");
        assert_eq!(
            info["backing-filename"],
            cdd.join(format!("disk_{idx}.img")).display().to_string()
        );
        assert_eq!(info["backing-filename-format"], fmt);
    }
    // The empty disk: 1 MiB-aligned (10 MiB + 123 bytes → 10 MiB), created only if missing.
    let empty = plan::empty_disk_path(&run, "scratch");
    let info = qemu_img_info(&empty);
    assert_eq!(info["virtual-size"], 10 << 20);
    // The hostDisk: created sparse at its capacity.
    assert_eq!(
        std::fs::metadata(host.join("new.img")).unwrap().len(),
        64 << 20
    );

    // NoCloud.
    let (volid, files) = read_iso(&plan::cloud_init_iso_path(
        &run,
        "ci",
        plan::CloudInitFlavor::NoCloud,
    ));
    assert_eq!(volid, "cidata");
    assert_eq!(files["user-data"], b"#cloud-config\npassword: p&ss<w>rd\n");
    assert_eq!(files["network-config"], b"version: 2\n");
    let meta = String::from_utf8(files["meta-data"].clone()).unwrap();
    assert_eq!(
        meta,
        "instance-id: \"prep.ns\"\nlocal-hostname: \"prep-host\"\n"
    );
    // ConfigDrive.
    let (volid, files) = read_iso(&plan::cloud_init_iso_path(
        &run,
        "drive",
        plan::CloudInitFlavor::ConfigDrive,
    ));
    assert_eq!(volid, "config-2");
    assert_eq!(
        files["openstack/latest/user_data"],
        b"#!/bin/sh\necho p&ss<w>rd\n"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&files["openstack/latest/meta_data.json"]).unwrap();
    assert_eq!(meta["uuid"], "prep.ns");
    assert_eq!(meta["hostname"], "prep-host");
    assert!(!files.contains_key("openstack/latest/network_data.json"));
    // The configMap ISO, without Kubernetes' ..data bookkeeping.
    let (volid, files) =
        read_iso(&plan::dir_iso_paths(&run, launcher::spec::VolumeKind::ConfigMap, "cfg").1);
    assert_eq!(volid, "APPCFG");
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        vec!["app.conf", "sub/x"]
    );
    assert_eq!(files["app.conf"], b"k=<v>&\n");

    // Idempotent, and existing disks are kept (not recreated).
    std::fs::write(host.join("marker"), "").unwrap();
    let before = std::fs::metadata(&empty).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    disks::prepare(&p.prepare).unwrap();
    assert_eq!(
        std::fs::metadata(&empty).unwrap().modified().unwrap(),
        before
    );
    // No staging leftovers anywhere.
    let mut stack = vec![run.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            assert!(
                !n.contains(".partial-") && !n.contains(".files-"),
                "leftover {n}"
            );
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn a_failing_qemu_img_is_a_hypervisor_error_naming_the_path() {
    let t = tempfile::tempdir().unwrap();
    // A directory is no image: qemu-img info fails.
    let backing = t.path().join("notanimage");
    std::fs::create_dir(&backing).unwrap();
    let e = disks::create_overlay("v", &backing, &t.path().join("o.qcow2")).unwrap_err();
    assert_eq!(e.exit_kind(), ExitKind::Hypervisor, "{e}");
    assert!(e.to_string().contains("notanimage"), "{e}");
    assert!(!t.path().join("o.qcow2").exists());
}

// ---------------------------------------------------------------------------------------------
// libvirt's word: a private libvirtd defines the rendered domains.

const LIBVIRTD_SCRIPT: &str = r#"
set -eu
for d in /run /etc/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
  mkdir -p "$d"; mount -t tmpfs tmpfs "$d"
done
cat > /etc/libvirt/qemu.conf <<'Q'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
namespaces = [ ]
cgroup_controllers = [ ]
security_driver = "none"
stdio_handler = "file"
Q
libvirtd > /var/log/libvirt/libvirtd.out 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for i in $(seq 100); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.1; done
[ -S /run/libvirt/libvirt-sock ] || { echo "libvirtd did not start"; cat /var/log/libvirt/libvirtd.out; exit 1; }
rc=0
for f in "$@"; do
  if out=$(virsh -c qemu:///system define "$f" 2>/tmp/virsh-err.$$); then
    echo "DEFINED $f"
    # Undefine again: two examples share a firmware uuid.
    name=$(printf '%s\n' "$out" | sed -n "s/^Domain '\(.*\)' defined.*/\1/p")
    virsh -q -c qemu:///system undefine --nvram "$name" >/dev/null
  else
    echo "REFUSED $f: $(cat /tmp/virsh-err.$$)"; rc=1
  fi
  rm -f /tmp/virsh-err.$$
done
exit $rc
"#;

#[test]
fn libvirt_accepts_rendered_domains() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test starts a private libvirtd in its own namespaces and needs root: run it as root"
    );
    let d = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for f in fixtures()
        .iter()
        .filter(|f| !stem(f).starts_with("refuse-"))
    {
        let xml = render_fixture(f, &["--accel", "tcg"]).unwrap();
        let x = d.path().join(format!("{}.xml", stem(f)));
        std::fs::write(&x, xml).unwrap();
        files.push(x);
    }
    // And every KubeVirt example that renders.
    let examples = repo().join("../shared/kubevirt-examples");
    assert!(examples.is_dir(), "{} is missing", examples.display());
    for e in std::fs::read_dir(&examples).unwrap().flatten() {
        let p = e.path();
        if !p.extension().is_some_and(|x| x == "yaml") {
            continue;
        }
        let (code, out, _) = launcher(&["render", "--accel", "tcg", "--vmi", p.to_str().unwrap()]);
        if code == 0 {
            let x = d.path().join(format!("example-{}.xml", stem(&p)));
            std::fs::write(&x, out).unwrap();
            files.push(x);
        }
    }
    let script = d.path().join("libvirtd.sh");
    std::fs::write(&script, LIBVIRTD_SCRIPT).unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "bash"])
        .arg(&script)
        .args(&files)
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "libvirt refused a rendered domain:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("DEFINED").count(), files.len(), "{stdout}");
}

const LIBVIRTD_START_SCRIPT: &str = r#"
set -eu
xml=$1; name=$2; log=$3
for d in /run /etc/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
  mkdir -p "$d"; mount -t tmpfs tmpfs "$d"
done
cat > /etc/libvirt/qemu.conf <<'Q'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
namespaces = [ ]
cgroup_controllers = [ ]
security_driver = "none"
stdio_handler = "file"
Q
libvirtd > /var/log/libvirt/libvirtd.out 2>&1 &
pid=$!
trap 'virsh -q -c qemu:///system destroy "$name" >/dev/null 2>&1 || true; kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for i in $(seq 100); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.1; done
if ! virsh -c qemu:///system create "$xml"; then
  cat /var/log/libvirt/qemu/"$name".log 2>/dev/null || true
  exit 1
fi
# SeaBIOS (useSerial) prints first, then the kernel's setup code: any of them proves the
# guest runs and the serial log works (TCG on a loaded machine is slow to reach more).
markers='SeaBIOS|Probing EDD|Linux version'
for i in $(seq 600); do grep -Eq "$markers" "$log" 2>/dev/null && break; sleep 0.1; done
echo "STATE $(virsh -c qemu:///system domstate "$name")"
if ! grep -Eq "$markers" "$log" 2>/dev/null; then
  echo "no kernel output in $log"; ls -la "$(dirname "$log")"; head -c 600 "$log"; grep -o "append[^\\]*" /var/log/libvirt/qemu/"$name".log; tail -5 /var/log/libvirt/qemu/"$name".log; exit 1
fi
echo "BOOTED"
"#;

/// libvirt starts a rendered domain under TCG, with every disk prepared by `disks::prepare`:
/// the overlay, the cloud-init ISO, the serial log and the sockets all work for real.
#[test]
fn libvirt_starts_a_prepared_rendered_domain_under_tcg() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test starts a private libvirtd in its own namespaces and needs root: run it as root"
    );
    let kernel = std::fs::read_dir("/boot")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .expect("a kernel in /boot (Debian package linux-image-amd64)");
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    let cdd = t.path().join("cd");
    std::fs::create_dir_all(cdd.join("kernel-boot")).unwrap();
    std::fs::copy(&kernel, cdd.join("kernel-boot/vmlinuz")).unwrap();
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(cdd.join("disk_0.img"))
        .arg("4M")
        .status()
        .unwrap();
    assert!(st.success());
    let uid = format!("start-{}", std::process::id());
    let yaml = format!(
        r#"
metadata: {{name: boot, namespace: t, uid: {uid}}}
spec:
  domain:
    memory: {{guest: 256Mi}}
    firmware:
      bootloader: {{bios: {{useSerial: true}}}}
      kernelBoot:
        container: {{image: x, kernelPath: /boot/vmlinuz}}
        kernelArgs: "console=ttyS0 panic=-1 no_timer_check noapictimer cryptomgr.notests"
    devices:
      autoattachPodInterface: false
      rng: {{}}
      disks:
      - {{name: cd, disk: {{bus: virtio}}}}
      - {{name: ci, disk: {{bus: virtio}}}}
  volumes:
  - {{name: cd, containerDisk: {{image: x}}}}
  - {{name: ci, cloudInitNoCloud: {{userData: "p&ss<w>rd"}}}}
"#
    );
    let vmi_path = t.path().join("vmi.yaml");
    std::fs::write(&vmi_path, yaml).unwrap();
    let g = Cli::try_parse_from([
        "launcher",
        "--vmi",
        vmi_path.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--container-disk-dir",
        cdd.to_str().unwrap(),
        "--accel",
        "tcg",
        "run",
    ])
    .unwrap()
    .global;
    let vmi = launcher::spec::load_for_run(&g).unwrap();
    let facts = PodFacts::probe(&g, &vmi).unwrap();
    assert_eq!(facts.hypervisor, domain::Hypervisor::Qemu);
    let p = plan::plan(&vmi, &domain::stand_in_nics(&vmi).unwrap(), &facts).unwrap();
    disks::prepare(&p.prepare).unwrap();
    let xml = render::render(&p, None).unwrap();
    let x = t.path().join("domain.xml");
    std::fs::write(&x, &xml).unwrap();
    let script = t.path().join("start.sh");
    std::fs::write(&script, LIBVIRTD_START_SCRIPT).unwrap();
    let log = run.join(&uid).join("virt-serial0-log");
    let out = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "bash"])
        .arg(&script)
        .arg(&x)
        .arg(&p.name)
        .arg(&log)
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("BOOTED"),
        "libvirt did not boot the rendered domain:\n{stdout}\n{}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("STATE running"), "{stdout}");
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !serial.is_empty(),
        "the serial log at {} is empty",
        log.display()
    );
}
