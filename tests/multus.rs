//! Multus secondary networks and SR-IOV, pure (no root): golden network plans with a
//! network status (ordinal and hashed naming, SR-IOV), and the SR-IOV domain XML
//! (`<hostdev>` from the status's device-info) against a golden file and libvirt's schema.
//!
//! Goldens: `tests/golden/net/multus-*.json` and `tests/golden/multus/*.xml`. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test --test multus`, then review `git diff tests/golden/`: every
//! changed line must be explained by the code change.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use launcher::domain::{self, NicAttach, PodFacts};
use launcher::error::{Classify, ExitKind};
use launcher::net::discover::DiscoveredPod;
use launcher::net::network_status;
use launcher::net::plan::{plan, PlanOptions};
use launcher::net::NetPlan;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden_text(rel: &str, text: &str) {
    let path = repo().join("tests/golden").join(rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with UPDATE_GOLDEN=1 cargo test --test multus",
            path.display()
        )
    });
    assert!(
        want == text,
        "{} differs; if intended, regenerate with UPDATE_GOLDEN=1 and review `git diff`\n--- got ---\n{text}",
        path.display()
    );
}

fn golden_plan(case: &str, p: &NetPlan) {
    golden_text(
        &format!("net/{case}.json"),
        &(serde_json::to_string_pretty(p).unwrap() + "\n"),
    );
}

fn eth0() -> serde_json::Value {
    serde_json::json!({
        "index": 3, "name": "eth0", "mac": "0a:58:0a:f4:01:05", "mtu": 1450, "up": true, "kind": "veth",
        "addresses": [{"address": "10.244.1.5", "prefix_len": 24, "broadcast": "10.244.1.255"}],
        "routes": [
            {"destination": "10.244.1.0", "prefix_len": 24, "pref_src": "10.244.1.5", "protocol": 2, "scope": 253},
            {"destination": "0.0.0.0", "prefix_len": 0, "gateway": "10.244.1.1", "protocol": 3, "scope": 0}
        ]
    })
}

fn secondary(index: u32, name: &str, ip: Option<&str>) -> serde_json::Value {
    let (addresses, routes) = match ip {
        Some(ip) => {
            let net = ip.rsplit_once('.').unwrap().0.to_string() + ".0";
            (
                serde_json::json!([{"address": ip, "prefix_len": 24}]),
                serde_json::json!([{"destination": net, "prefix_len": 24, "protocol": 2, "scope": 253}]),
            )
        }
        None => (serde_json::json!([]), serde_json::json!([])),
    };
    serde_json::json!({
        "index": index, "name": name, "mac": format!("0a:58:0a:f5:{index:02x}:05"), "mtu": 1500,
        "up": true, "kind": "veth", "addresses": addresses, "routes": routes
    })
}

fn pod(interfaces: Vec<serde_json::Value>, status: Option<&str>) -> DiscoveredPod {
    let mut p: DiscoveredPod = serde_json::from_value(serde_json::json!({
        "interfaces": interfaces,
        "dns": {"nameservers_v4": ["10.96.0.10"], "nameservers_v6": [], "search": ["cluster.local"]},
        "hostname": "testvm"
    }))
    .expect("fixture pod");
    p.network_status = status.map(|s| network_status::parse_json(s, "the test status").unwrap());
    p
}

fn vmi(yaml: &str) -> launcher::spec::Vmi {
    let loaded = launcher::spec::parse_str(yaml, "fixture").expect("fixture VMI");
    // The same defaults and validation `run` applies.
    let (v, problems) = loaded.default_and_validate();
    assert!(problems.is_empty(), "fixture VMI invalid: {problems:?}");
    v
}

const THREE_NETS: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: testvm, namespace: default, uid: 0b5e5e00-0000-4000-8000-000000000001}
spec:
  domain:
    resources: {requests: {memory: 128Mi}}
    devices:
      interfaces:
      - {name: default, bridge: {}}
      - {name: blue, bridge: {}}
      - {name: red, bridge: {}}
  networks:
  - {name: default, pod: {}}
  - {name: blue, multus: {networkName: blue-net}}
  - {name: red, multus: {networkName: default/red-l2}}
";

#[test]
fn golden_ordinal_names_confirmed_by_the_status() {
    let status = r#"[
      {"name": "kindnet", "interface": "eth0", "ips": ["10.244.1.5"], "mac": "0a:58:0a:f4:01:05", "default": true},
      {"name": "default/blue-net", "interface": "net1", "ips": ["10.245.1.5"], "mac": "0a:58:0a:f5:05:05"},
      {"name": "default/red-l2", "interface": "net2", "mac": "0a:58:0a:f5:06:05"}
    ]"#;
    let p = pod(
        vec![
            eth0(),
            secondary(5, "net1", Some("10.245.1.5")),
            secondary(6, "net2", None),
        ],
        Some(status),
    );
    let plan = plan(&p, &vmi(THREE_NETS), &PlanOptions::default()).unwrap();
    let names: Vec<_> = plan
        .interfaces
        .iter()
        .map(|i| (i.pod_interface.as_str(), i.tap.as_str(), i.dhcp.is_some()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("eth0", "tap0", true),
            ("net1", "tap1", true),
            ("net2", "tap2", false)
        ]
    );
    // Each interface with an IP has its own server, on its own bridge.
    let servers: Vec<_> = plan
        .interfaces
        .iter()
        .filter_map(|i| {
            i.dhcp
                .as_ref()
                .map(|d| (d.interface.clone(), d.client_ip.to_string()))
        })
        .collect();
    assert_eq!(
        servers,
        vec![
            ("k6t-eth0".to_string(), "10.244.1.5".to_string()),
            ("k6t-net1".to_string(), "10.245.1.5".to_string())
        ]
    );
    golden_plan("multus-ordinal-status", &plan);
}

#[test]
fn golden_hashed_names_from_the_status() {
    // `printf blue | sha256sum` = 16477688c0e…, `printf red | sha256sum` = b1f51a511f1…
    let status = r#"[
      {"name": "kindnet", "interface": "eth0", "default": true},
      {"name": "default/blue-net", "interface": "pod16477688c0e", "ips": ["10.245.1.5"]},
      {"name": "default/red-l2", "interface": "podb1f51a511f1"}
    ]"#;
    let p = pod(
        vec![
            eth0(),
            secondary(5, "pod16477688c0e", Some("10.245.1.5")),
            secondary(6, "podb1f51a511f1", None),
        ],
        Some(status),
    );
    let plan = plan(&p, &vmi(THREE_NETS), &PlanOptions::default()).unwrap();
    let names: Vec<_> = plan
        .interfaces
        .iter()
        .map(|i| {
            (
                i.pod_interface.as_str(),
                i.bridge.as_deref().unwrap_or(""),
                i.tap.as_str(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("eth0", "k6t-eth0", "tap0"),
            ("pod16477688c0e", "k6t-16477688c0e", "tap16477688c0e"),
            ("podb1f51a511f1", "k6t-b1f51a511f1", "tapb1f51a511f1"),
        ]
    );
    golden_plan("multus-hashed-status", &plan);
    // Without a status the hashed names are found in the pod all the same.
    let p2 = pod(
        vec![
            eth0(),
            secondary(5, "pod16477688c0e", Some("10.245.1.5")),
            secondary(6, "podb1f51a511f1", None),
        ],
        None,
    );
    assert_eq!(
        plan.steps,
        launcher::net::plan::plan(&p2, &vmi(THREE_NETS), &PlanOptions::default())
            .unwrap()
            .steps
    );
}

#[test]
fn a_status_that_disagrees_is_exit_3() {
    let status = r#"[{"name": "default/blue-net", "interface": "net2"}, {"name": "default/red-l2", "interface": "net1"}]"#;
    let p = pod(
        vec![
            eth0(),
            secondary(5, "net1", Some("10.245.1.5")),
            secondary(6, "net2", None),
        ],
        Some(status),
    );
    let e = plan(&p, &vmi(THREE_NETS), &PlanOptions::default()).unwrap_err();
    assert_eq!(e.exit_kind(), ExitKind::Precondition, "{e}");
    let t = e.to_string();
    assert!(
        t.contains("network \"blue\"") && t.contains("\"net1\"") && t.contains("\"net2\""),
        "{t}"
    );
}

const SRIOV: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: testvm, namespace: default, uid: 0b5e5e00-0000-4000-8000-000000000002}
spec:
  domain:
    resources: {requests: {memory: 128Mi}}
    devices:
      autoattachGraphicsDevice: false
      interfaces:
      - {name: default, bridge: {}}
      - {name: fast, sriov: {}, macAddress: 02:00:00:00:5a:01, pciAddress: '0000:00:0a.0', bootOrder: 2}
      - {name: slow, sriov: {}}
  networks:
  - {name: default, pod: {}}
  - {name: fast, multus: {networkName: sriov-a}}
  - {name: slow, multus: {networkName: sriov-b}}
";

const SRIOV_STATUS: &str = r#"[
  {"name": "kindnet", "interface": "eth0", "default": true},
  {"name": "default/sriov-a", "interface": "net1", "mac": "02:00:00:00:5a:01", "ips": ["192.168.50.5"],
   "device-info": {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3B:02.1"}}},
  {"name": "default/sriov-b", "interface": "net2", "mac": "5a:00:00:00:00:02",
   "device-info": {"type": "pci", "version": "1.0.0", "pci": {"pci-address": "0000:3b:02.2"}}}
]"#;

fn sriov_plan(status: &str) -> Result<NetPlan, launcher::net::NetError> {
    // The VFs are bound to vfio-pci: no netdev for them in the pod.
    let p = pod(vec![eth0()], Some(status));
    plan(&p, &vmi(SRIOV), &PlanOptions::default())
}

#[test]
fn golden_sriov_plan_and_hostdev_xml() {
    let plan = sriov_plan(SRIOV_STATUS).unwrap();
    let fast = &plan.interfaces[1];
    assert_eq!(
        (
            fast.binding.as_str(),
            fast.tap.as_str(),
            fast.pod_interface.as_str()
        ),
        ("sriov", "0000:3b:02.1", "net1")
    );
    assert_eq!(fast.mac.to_string(), "02:00:00:00:5a:01");
    assert_eq!(plan.interfaces[2].mac.to_string(), "5a:00:00:00:00:02");
    // Nothing is plumbed for a VF: every step belongs to the bridge interface.
    assert!(
        !serde_json::to_string(&plan.steps).unwrap().contains("net1"),
        "SR-IOV must add no steps"
    );
    golden_plan("multus-sriov", &plan);

    // The domain: net result → NicInput (as `run` maps it) → plan → render.
    let nics = launcher::supervise::nic_inputs(&plan.result()).unwrap();
    assert_eq!(
        nics[1].attach,
        NicAttach::Hostdev {
            pci_address: "0000:3b:02.1".into()
        }
    );
    let g = launcher::cli::Cli::try_parse_from(["launcher", "--accel", "tcg", "render"])
        .unwrap()
        .global;
    let v = vmi(SRIOV);
    let hv = domain::choose_accel(g.accel, true, g.allow_emulation).unwrap();
    let facts = PodFacts::stand_in(&g, &v, hv).unwrap();
    let dplan = domain::plan::plan(&v, &nics, &facts).unwrap();
    let xml = domain::render::render(&dplan, None).unwrap();
    let fast_hostdev = "    <hostdev mode='subsystem' type='pci' managed='no'>
      <source>
        <address domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/>
      </source>
      <boot order='2'/>
      <alias name='ua-fast'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x0a' function='0x0'/>
    </hostdev>";
    assert!(xml.contains(fast_hostdev), "{xml}");
    assert!(
        xml.contains("<address domain='0x0000' bus='0x3b' slot='0x02' function='0x2'/>"),
        "{xml}"
    );
    assert!(
        !xml.contains("02:00:00:00:5a:01"),
        "a plain <hostdev> carries no MAC (the SR-IOV CNI sets it): {xml}"
    );
    golden_text("multus/sriov-hostdev.xml", &xml);
    let out = Command::new("virt-xml-validate")
        .arg(repo().join("tests/golden/multus/sriov-hostdev.xml"))
        .arg("domain")
        .output()
        .expect("virt-xml-validate must be installed (libvirt-clients, libxml2-utils)");
    assert!(
        out.status.success(),
        "virt-xml-validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sriov_refusals_name_the_network_and_the_annotation() {
    let cases: &[(&str, &[&str])] = &[
        // No device-info on the fast network's entry.
        (
            r#"[{"name": "default/sriov-a", "interface": "net1"},
                {"name": "default/sriov-b", "interface": "net2", "device-info": {"type": "pci", "pci": {"pci-address": "0000:3b:02.2"}}}]"#,
            &[
                "SR-IOV network \"fast\"",
                "k8s.v1.cni.cncf.io/network-status",
                "no \"device-info\"",
            ],
        ),
        // The VF's MAC is not the spec's: a <hostdev> cannot fix that.
        (
            r#"[{"name": "default/sriov-a", "interface": "net1", "mac": "02:00:00:00:5a:99", "device-info": {"type": "pci", "pci": {"pci-address": "0000:3b:02.1"}}},
                {"name": "default/sriov-b", "interface": "net2", "device-info": {"type": "pci", "pci": {"pci-address": "0000:3b:02.2"}}}]"#,
            &[
                "SR-IOV network \"fast\"",
                "02:00:00:00:5a:01",
                "02:00:00:00:5a:99",
                "\"mac\"",
            ],
        ),
        // No entry at all for sriov-b.
        (
            r#"[{"name": "default/sriov-a", "interface": "net1", "device-info": {"type": "pci", "pci": {"pci-address": "0000:3b:02.1"}}}]"#,
            &["network \"slow\"", "no entry named \"sriov-b\""],
        ),
    ];
    for (status, wants) in cases {
        let e = sriov_plan(status).unwrap_err();
        assert_eq!(e.exit_kind(), ExitKind::Precondition, "{e}");
        let t = e.to_string();
        for w in *wants {
            assert!(t.contains(w), "status {status}: {t:?} lacks {w:?}");
        }
    }
    // No status at all.
    let p = pod(vec![eth0()], None);
    let e = plan(&p, &vmi(SRIOV), &PlanOptions::default()).unwrap_err();
    assert_eq!(e.exit_kind(), ExitKind::Precondition);
    assert!(e.to_string().contains("--network-status"), "{e}");
}

#[test]
fn the_vf_must_be_present_in_sysfs() {
    let plan = sriov_plan(SRIOV_STATUS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = launcher::net::discover::check_vfs_present(&plan, dir.path()).unwrap_err();
    assert_eq!(e.exit_kind(), ExitKind::Precondition);
    assert!(e.to_string().contains("0000:3b:02.1"), "{e}");
    std::fs::create_dir(dir.path().join("0000:3b:02.1")).unwrap();
    let e = launcher::net::discover::check_vfs_present(&plan, dir.path()).unwrap_err();
    assert!(e.to_string().contains("0000:3b:02.2"), "{e}");
    std::fs::create_dir(dir.path().join("0000:3b:02.2")).unwrap();
    launcher::net::discover::check_vfs_present(&plan, dir.path()).unwrap();
}

#[test]
fn render_uses_the_vfs_from_a_network_status_file() {
    let dir = tempfile::tempdir().unwrap();
    let vmi_path = dir.path().join("vmi.yaml");
    std::fs::write(&vmi_path, SRIOV).unwrap();
    let status = dir.path().join("status.json");
    std::fs::write(&status, SRIOV_STATUS).unwrap();
    let render = |extra: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_launcher"))
            .args(["--log-format", "text", "--accel", "tcg", "--vmi"])
            .arg(&vmi_path)
            .args(extra)
            .arg("render")
            .output()
            .unwrap()
    };
    let out = render(&["--network-status".as_ref(), status.as_os_str()]);
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        xml.contains("<address domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/>")
            && xml.contains("<address domain='0x0000' bus='0x3b' slot='0x02' function='0x2'/>"),
        "{xml}"
    );
    // Without a status: the documented stand-ins (bus 0xff).
    let out = render(&[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("bus='0xff'"));
    // A status without the VF's device-info: exit 3, naming the network.
    std::fs::write(
        &status,
        r#"[{"name": "default/sriov-a", "interface": "net1"}, {"name": "default/sriov-b", "interface": "net2"}]"#,
    )
    .unwrap();
    let out = render(&["--network-status".as_ref(), status.as_os_str()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SR-IOV network \"fast\"") && err.contains("device-info"),
        "{err}"
    );
}

#[test]
fn the_status_is_recorded_with_the_pod_so_a_rerun_plans_the_same() {
    // `network-state.json` stores the discovered pod; the status must survive the round trip
    // (a re-run after a crash plans from the record, not from the file again).
    let p = pod(vec![eth0()], Some(SRIOV_STATUS));
    let text = serde_json::to_string(&p).unwrap();
    assert!(text.contains("\"network_status\""), "{text}");
    let back: DiscoveredPod = serde_json::from_str(&text).unwrap();
    assert_eq!(back, p);
    let opts = PlanOptions::default();
    assert_eq!(
        plan(&back, &vmi(SRIOV), &opts).unwrap(),
        plan(&p, &vmi(SRIOV), &opts).unwrap()
    );
    // A pod recorded before this field existed still loads.
    let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
    old.as_object_mut().unwrap().remove("network_status");
    let back: DiscoveredPod = serde_json::from_value(old).unwrap();
    assert_eq!(back.network_status, None);
}
