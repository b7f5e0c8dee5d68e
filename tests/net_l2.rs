//! Integration tests of the L2 bindings without a bridge (issue 7): tc-redirect.
//!
//! - Golden plans (pure, no root): `tests/golden/net/tc-redirect-*.json`. Regenerate with
//!   `UPDATE_GOLDEN=1 cargo test --test net_l2 golden`, then review `git diff tests/golden/net/`.
//! - Root tests in sandbox pods (`scripts/sandbox.sh`): `launcher network setup --serve` with
//!   the tc-redirect binding, a guest stand-in that gets the pod IP from our DHCP server and
//!   pings the node, then SIGTERM restores the pod exactly. They panic when not run as root.
//!
//! The guest stand-in: qemu is what would read `tap0`; without it, the test creates a veth
//! pair whose pod end is named `tap0` and whose other end (`eth0`, with the pod's MAC) sits in
//! a guest namespace, and sets `LAUNCHER_TC_REDIRECT_DEVICE=tap0` (test-only) so the plan uses
//! that existing link instead of creating a tap. Every other step is the production one.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use launcher::net::discover::DiscoveredPod;
use launcher::net::plan::{plan, PlanOptions, Step, TcFilter};
use launcher::net::NetPlan;
use support::{line_diff as diff, Sandbox, Style, UdpWitness};

// ------------------------------------------------------------------------------------------
// Golden plans.

fn lo() -> serde_json::Value {
    serde_json::json!({"index": 1, "name": "lo", "mac": "00:00:00:00:00:00", "mtu": 65536, "up": true,
        "addresses": [{"address": "127.0.0.1", "prefix_len": 8}], "routes": []})
}

fn flannel_eth0() -> serde_json::Value {
    serde_json::json!({
        "index": 3, "name": "eth0", "mac": "0a:58:0a:f4:01:05", "mtu": 1450, "up": true, "kind": "veth",
        "addresses": [
            {"address": "10.244.1.5", "prefix_len": 24, "broadcast": "10.244.1.255"},
            {"address": "fe80::858:aff:fef4:105", "prefix_len": 64, "flags": 0x80}
        ],
        "routes": [
            {"destination": "10.244.1.0", "prefix_len": 24, "pref_src": "10.244.1.5", "protocol": 2, "scope": 253},
            {"destination": "0.0.0.0", "prefix_len": 0, "gateway": "10.244.1.1", "protocol": 3, "scope": 0}
        ]
    })
}

fn calico_eth0() -> serde_json::Value {
    serde_json::json!({
        "index": 4, "name": "eth0", "mac": "9e:3c:6f:12:34:56", "mtu": 1480, "up": true, "kind": "veth",
        "addresses": [{"address": "10.244.1.5", "prefix_len": 32}],
        "routes": [
            {"destination": "169.254.1.1", "prefix_len": 32, "protocol": 3, "scope": 253},
            {"destination": "0.0.0.0", "prefix_len": 0, "gateway": "169.254.1.1", "protocol": 3, "scope": 0}
        ]
    })
}

fn pod(eth0: serde_json::Value) -> DiscoveredPod {
    serde_json::from_value(serde_json::json!({
        "interfaces": [lo(), eth0],
        "dns": {"nameservers_v4": ["10.96.0.10"], "nameservers_v6": [], "search": ["default.svc.cluster.local"]},
        "hostname": "testvm"
    }))
    .expect("fixture pod")
}

const TC_VMI: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: testvm}
spec:
  domain:
    resources: {requests: {memory: 128Mi}}
    devices:
      interfaces: [{name: default, binding: {name: tc-redirect}}]
  networks: [{name: default, pod: {}}]
";

fn vmi(yaml: &str) -> launcher::spec::Vmi {
    launcher::spec::parse_str(yaml, "fixture")
        .expect("fixture VMI")
        .vmi
}

fn golden(case: &str, p: &NetPlan) {
    support::golden::net_plan(&format!("{case}.json"), case, p, "net_l2");
}

fn tc_plan(eth0: serde_json::Value) -> NetPlan {
    std::env::remove_var("LAUNCHER_TC_REDIRECT_DEVICE");
    plan(&pod(eth0), &vmi(TC_VMI), &PlanOptions::default()).unwrap()
}

/// Invariants every tc-redirect plan must keep.
fn check_tc_invariants(p: &NetPlan, pod_mac: &str) {
    let r = &p.interfaces[0];
    assert_eq!(r.binding, "tc-redirect");
    assert_eq!(r.tap, "tap0");
    assert_eq!(r.bridge, None, "no bridge in tc-redirect");
    assert_eq!(r.mac.to_string(), pod_mac, "the guest gets the pod's MAC");
    let d = r.dhcp.as_ref().expect("a DHCP server");
    assert_eq!(d.interface, "tap0", "DHCP is served on the tap");
    assert_eq!(d.server_ip.to_string(), "169.254.75.10");
    // No bridge, no nft guard, no stand-in: the tc filters do the work.
    assert!(!p.steps.iter().any(|s| matches!(
        s,
        Step::CreateBridge { .. } | Step::NftTable { .. } | Step::CreateStandIn { .. }
    )));
    // eth0 gets another MAC (never the guest's), and redirects in both directions.
    let nic_mac = p
        .steps
        .iter()
        .find_map(|s| match s {
            Step::SetMac { mac, .. } => Some(mac.to_string()),
            _ => None,
        })
        .expect("eth0 changes its MAC");
    assert_ne!(nic_mac, pod_mac);
    let tc: Vec<_> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::TcIngress { filters, .. } => Some(filters),
            _ => None,
        })
        .collect();
    assert_eq!(tc.len(), 2);
    for f in &tc {
        assert!(matches!(f.last(), Some(TcFilter::RedirectTo { .. })));
    }
    // DHCP from the guest side stays local whatever its source MAC (a foreign MAC's requests
    // must not reach the pod network; our server answers only the VM's MAC), and DHCP from the
    // pod side never reaches the guest.
    for side in &tc {
        for port in [67, 68] {
            assert!(
                side.iter().any(|f| matches!(
                    f,
                    TcFilter::KeepLocalUdp { src_mac: None, dport } if *dport == port
                )),
                "{side:?}"
            );
        }
    }
}

#[test]
fn golden_tc_redirect_flannel() {
    let p = tc_plan(flannel_eth0());
    check_tc_invariants(&p, "0a:58:0a:f4:01:05");
    golden("tc-redirect-flannel", &p);
}

#[test]
fn golden_tc_redirect_calico() {
    let p = tc_plan(calico_eth0());
    check_tc_invariants(&p, "9e:3c:6f:12:34:56");
    let d = p.interfaces[0].dhcp.as_ref().unwrap();
    assert_eq!(d.prefix_len, 32);
    assert_eq!(d.router.unwrap().to_string(), "169.254.1.1");
    golden("tc-redirect-calico", &p);
}

const MACVTAP_VMI: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: testvm}
spec:
  domain:
    resources: {requests: {memory: 128Mi}}
    devices:
      interfaces: [{name: default, macvtap: {}}]
  networks: [{name: default, pod: {}}]
";

fn macvtap_vmi() -> launcher::spec::Vmi {
    vmi(MACVTAP_VMI)
}

fn macvtap_plan(eth0: serde_json::Value) -> NetPlan {
    std::env::remove_var("LAUNCHER_MACVTAP_STAND_IN");
    plan(&pod(eth0), &macvtap_vmi(), &PlanOptions::default()).unwrap()
}

fn check_macvtap_invariants(p: &NetPlan, pod_mac: &str) {
    let r = &p.interfaces[0];
    assert_eq!(r.binding, "macvtap");
    assert_eq!(r.tap, "macvtap0");
    assert_eq!(r.bridge, None);
    assert_eq!(r.mac.to_string(), pod_mac);
    let d = r.dhcp.as_ref().expect("a DHCP server");
    assert_eq!(d.interface, "mvdhcp0");
    let mut macs = Vec::new();
    let mut set_mac_before_children = false;
    let mut guard = false;
    for s in &p.steps {
        match s {
            Step::SetMac { mac, .. } => {
                set_mac_before_children = macs.is_empty();
                macs.push(mac.to_string());
            }
            Step::CreateMacvlan { mac, tap, .. } => {
                macs.push(mac.to_string());
                if mac.to_string() == pod_mac {
                    assert!(tap, "the guest device is a macvtap");
                }
            }
            Step::NftTable {
                family,
                name,
                ruleset,
            } => {
                // The DHCP guard, before any child exists.
                assert!(macs.is_empty(), "the guard comes first");
                assert_eq!(
                    (family.as_str(), name.as_str()),
                    ("netdev", "launcher_dhcp_guard_eth0")
                );
                assert!(
                    ruleset.contains(&format!("udp dport 67 ether saddr != {pod_mac} drop")),
                    "{ruleset}"
                );
                assert!(ruleset.contains("hook egress device \"eth0\""), "{ruleset}");
                guard = true;
            }
            Step::CreateBridge { .. } | Step::CreateTap { .. } => {
                panic!("macvtap plans have no bridge or tap: {s:?}")
            }
            _ => {}
        }
    }
    assert!(set_mac_before_children, "eth0 gets another MAC first");
    assert!(guard, "a DHCP guard on eth0");
    assert_eq!(macs.len(), 3);
    assert!(macs.contains(&pod_mac.to_string()));
    let unique: std::collections::BTreeSet<_> = macs.iter().collect();
    assert_eq!(
        unique.len(),
        3,
        "eth0, mvdhcp0 and macvtap0 have distinct MACs: {macs:?}"
    );
}

#[test]
fn golden_macvtap_flannel() {
    let p = macvtap_plan(flannel_eth0());
    check_macvtap_invariants(&p, "0a:58:0a:f4:01:05");
    golden("macvtap-flannel", &p);
}

/// `binding: {name: macvtap}` selects the same binding as `macvtap: {}`: the same plan.
#[test]
fn macvtap_by_binding_name_plans_the_same() {
    std::env::remove_var("LAUNCHER_MACVTAP_STAND_IN");
    let by_name = vmi(&MACVTAP_VMI.replace("macvtap: {}", "binding: {name: macvtap}"));
    let p = plan(&pod(flannel_eth0()), &by_name, &PlanOptions::default()).unwrap();
    assert_eq!(p, macvtap_plan(flannel_eth0()));
}

#[test]
fn golden_macvtap_calico() {
    let p = macvtap_plan(calico_eth0());
    check_macvtap_invariants(&p, "9e:3c:6f:12:34:56");
    golden("macvtap-calico", &p);
}

const MULTUS_MACVTAP_VMI: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: testvm}
spec:
  domain:
    resources: {requests: {memory: 128Mi}}
    devices:
      interfaces:
      - {name: default, bridge: {}}
      - {name: sec, macvtap: {}, macAddress: '02:00:00:00:aa:01'}
  networks:
  - {name: default, pod: {}}
  - {name: sec, multus: {networkName: macvtap-net}}
";

fn net1(kind: &str) -> serde_json::Value {
    serde_json::json!({"index": 7, "name": "net1", "mac": "0a:58:0a:00:00:07", "mtu": 1500, "up": true,
        "kind": kind, "addresses": [], "routes": []})
}

fn pod_with(extra: serde_json::Value) -> DiscoveredPod {
    serde_json::from_value(serde_json::json!({
        "interfaces": [lo(), flannel_eth0(), extra],
        "dns": {"nameservers_v4": ["10.96.0.10"], "nameservers_v6": [], "search": ["default.svc.cluster.local"]},
        "hostname": "testvm"
    }))
    .expect("fixture pod")
}

/// macvtap on a Multus network whose interface already is a macvtap: attach to it (no new
/// device, no DHCP server); its MAC becomes the spec's, nothing else changes.
#[test]
fn golden_macvtap_multus_attach() {
    std::env::remove_var("LAUNCHER_MACVTAP_STAND_IN");
    let p = plan(
        &pod_with(net1("macvtap")),
        &vmi(MULTUS_MACVTAP_VMI),
        &PlanOptions::default(),
    )
    .unwrap();
    let r = &p.interfaces[1];
    assert_eq!(r.binding, "macvtap");
    assert_eq!(r.tap, "net1", "the guest opens the existing macvtap");
    assert_eq!(r.mac.to_string(), "02:00:00:00:aa:01");
    assert!(r.dhcp.is_none());
    let net1_steps: Vec<_> = p
        .steps
        .iter()
        .filter(|s| serde_json::to_string(s).unwrap().contains("\"net1\""))
        .map(|s| s.describe())
        .collect();
    assert_eq!(
        net1_steps,
        vec![
            "handing the root qdisc of pod interface \"net1\" (index 7) to the hypervisor",
            "setting pod interface \"net1\" (index 7) down",
            "setting the MAC of pod interface \"net1\" (index 7) to 02:00:00:00:aa:01",
            "setting pod interface \"net1\" (index 7) up",
        ]
    );
    assert!(!p
        .steps
        .iter()
        .any(|s| matches!(s, Step::CreateMacvlan { .. })));
    golden("macvtap-multus-attach", &p);
}

/// macvtap on a Multus network whose interface is not a macvtap: planted like on the pod
/// network, with the interface's own names and guard.
#[test]
fn golden_macvtap_multus_planted() {
    std::env::remove_var("LAUNCHER_MACVTAP_STAND_IN");
    let mut n = net1("veth");
    n["addresses"] = serde_json::json!([{"address": "10.245.1.5", "prefix_len": 24}]);
    let p = plan(
        &pod_with(n),
        &vmi(MULTUS_MACVTAP_VMI),
        &PlanOptions::default(),
    )
    .unwrap();
    let r = &p.interfaces[1];
    assert_eq!(r.tap, "macvtap1");
    let d = r
        .dhcp
        .as_ref()
        .expect("a DHCP server for an interface with IPv4");
    assert_eq!(d.interface, "mvdhcp1");
    assert_eq!(d.client_ip.to_string(), "10.245.1.5");
    assert!(p.steps.iter().any(|s| matches!(
        s,
        Step::NftTable { family, name, .. } if family == "netdev" && name == "launcher_dhcp_guard_net1"
    )));
    golden("macvtap-multus-planted", &p);
}

/// tc-redirect on a Multus network (accepted by validation, so `run` must plan it): the same
/// steps with the interface's own names (`tap1` for `net1`) and the second server address.
#[test]
fn golden_tc_redirect_multus() {
    std::env::remove_var("LAUNCHER_TC_REDIRECT_DEVICE");
    let mut n = net1("veth");
    n["addresses"] = serde_json::json!([{"address": "10.245.1.5", "prefix_len": 24}]);
    let v = vmi(&MULTUS_MACVTAP_VMI.replace("macvtap: {}", "binding: {name: tc-redirect}"));
    let p = plan(&pod_with(n), &v, &PlanOptions::default()).unwrap();
    let r = &p.interfaces[1];
    assert_eq!(
        (r.binding.as_str(), r.tap.as_str()),
        ("tc-redirect", "tap1")
    );
    let d = r.dhcp.as_ref().expect("a DHCP server");
    assert_eq!(d.interface, "tap1");
    assert_eq!(d.server_ip.to_string(), "169.254.75.11");
    let redirects: Vec<String> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::TcIngress { link, filters } => Some(format!("{link} -> {:?}", filters.last())),
            _ => None,
        })
        .collect();
    assert_eq!(redirects.len(), 2, "{redirects:?}");
    assert!(
        redirects[0].starts_with("\"tap1\"") && redirects[0].contains("net1"),
        "{redirects:?}"
    );
    assert!(
        redirects[1].contains("\"net1\" (index 7)") && redirects[1].contains("tap1"),
        "{redirects:?}"
    );
    golden("tc-redirect-multus", &p);
}

/// The domain XML `launcher run` gives libvirt for a network plan (the real network result
/// through `supervise::nic_inputs`, stand-in pod facts), compared with
/// `tests/golden/net/<case>.xml` and checked by `virt-xml-validate`.
fn golden_xml(case: &str, vmi: &launcher::spec::Vmi, p: &NetPlan) {
    use clap::Parser;
    let cli = launcher::cli::Cli::try_parse_from([
        "launcher",
        "--accel",
        "tcg",
        "--run-dir",
        "/var/run/kubevirt-private",
        "render",
    ])
    .expect("CLI");
    let facts =
        launcher::domain::PodFacts::stand_in(&cli.global, vmi, launcher::domain::Hypervisor::Qemu)
            .unwrap();
    let nics = launcher::supervise::nic_inputs(&p.result()).expect("nic inputs");
    let dp = launcher::domain::plan::plan(vmi, &nics, &facts).expect("domain plan");
    let xml = launcher::domain::render::render(&dp, None).expect("render");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/net")
        .join(format!("{case}.xml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &xml).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == xml,
        "domain XML for {case} differs from {} (UPDATE_GOLDEN=1 regenerates; review git diff)\n{xml}",
        path.display()
    );
    let o = Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .expect("virt-xml-validate (libvirt-clients, libxml2-utils)");
    assert!(
        o.status.success(),
        "{}: {}",
        path.display(),
        support::show(&o)
    );
}

#[test]
fn golden_domain_xml_of_the_l2_bindings() {
    std::env::remove_var("LAUNCHER_MACVTAP_STAND_IN");
    std::env::remove_var("LAUNCHER_TC_REDIRECT_DEVICE");
    let opts = PlanOptions::default();
    let v = vmi(MACVTAP_VMI);
    let p = plan(&pod(flannel_eth0()), &v, &opts).unwrap();
    golden_xml("macvtap-flannel", &v, &p);
    let v = vmi(TC_VMI);
    let p = plan(&pod(flannel_eth0()), &v, &opts).unwrap();
    golden_xml("tc-redirect-flannel", &v, &p);
    let v = vmi(MULTUS_MACVTAP_VMI);
    let p = plan(&pod_with(net1("macvtap")), &v, &opts).unwrap();
    golden_xml("macvtap-multus-attach", &v, &p);
    let xml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/net/macvtap-multus-attach.xml"),
    )
    .unwrap();
    assert!(
        xml.contains("<target dev='net1' managed='no'/>")
            || xml.contains("<target dev=\"net1\" managed=\"no\"/>"),
        "{xml}"
    );
}

// ------------------------------------------------------------------------------------------
// Root tests in sandbox pods.

/// A guest namespace, deleted on drop (success or failure).
struct GuestNetns(String);

impl Drop for GuestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `launcher network setup --serve` in the pod; killed on drop.
struct Served {
    child: Child,
    logs: mpsc::Receiver<String>,
}

impl Served {
    fn start(sb: &Sandbox, vmi: &Path, run_dir: &Path, env: &[(&str, &str)]) -> Served {
        let bin = support::launcher_bin();
        let cmd = sb.exec_cmd(&[
            bin.to_str().unwrap(),
            "network",
            "setup",
            "--serve",
            "--vmi",
            vmi.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--log-format",
            "json",
        ]);
        Served::spawn(cmd, env)
    }

    /// Starts `cmd`, waits until it logs "serving DHCP" on stderr.
    fn spawn(mut cmd: Command, env: &[(&str, &str)]) -> Served {
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting launcher network setup --serve");
        let logs = support::serve::stderr_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            match logs.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains("serving DHCP") => break,
                Ok(l) => seen.push(l),
                Err(_) => {
                    if let Some(st) = child.try_wait().unwrap() {
                        panic!("launcher exited early ({st}): {seen:#?}");
                    }
                    assert!(Instant::now() < deadline, "DHCP did not start: {seen:#?}");
                }
            }
        }
        Served { child, logs }
    }

    fn terminate(mut self) -> i32 {
        support::serve::terminate(&mut self.child, &self.logs)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        support::serve::kill_unless_exited(&mut self.child);
    }
}

/// busybox udhcpc in netns `ns` on eth0; the env of its `bound` event, if any.
fn udhcpc(ns: &str, dir: &Path, tries: u32) -> Option<std::collections::HashMap<String, String>> {
    udhcpc_on(ns, "eth0", dir, "udhcpc", tries)
}

/// busybox udhcpc in netns `ns` on `iface`; `tag` names its files in `dir`.
fn udhcpc_on(
    ns: &str,
    iface: &str,
    dir: &Path,
    tag: &str,
    tries: u32,
) -> Option<std::collections::HashMap<String, String>> {
    let script = support::dhcp_client::udhcpc_script(dir, tag);
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(support::dhcp_client::udhcpc_args(
            tries,
            1,
            iface,
            &script,
            &["staticroutes", "mtu"],
        ))
        .output()
        .unwrap();
    if !o.status.success() {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(format!("{tag}.bound.env"))).ok()?;
    Some(support::dhcp_client::parse_env(&text))
}

/// A MAC that is neither the pod's nor the guest's.
const FOREIGN_MAC: &str = "02:00:00:00:0f:0f";

/// The DHCP guard of a binding, checked both ways, each with a control step that shows the
/// check can fail:
/// 1. a foreign MAC on the guest side gets no lease, and none of its DHCP reaches the node
///    (a UDP 67 witness in the node namespace); control: without the guard it does reach it;
/// 2. a DHCP client on the node side (a macvlan on the node's veth, foreign MAC) gets no
///    lease, and none of its DHCP reaches the guest (a UDP 67 witness in the guest
///    namespace); control: without the guard it does reach the guest.
///
/// `remove_guard` takes the guard away, `restore_guard` puts it back; the guest's device in
/// netns `guest` is `eth0` with the VM's MAC `guest_mac`, restored at the end.
fn check_dhcp_guard(
    sb: &Sandbox,
    guest: &str,
    guest_mac: &str,
    dir: &Path,
    remove_guard: &dyn Fn(),
    restore_guard: &dyn Fn(),
) {
    let info = sb.info().clone();
    let set_guest_mac = |mac: &str| {
        run(
            Command::new("ip").args(["-n", guest, "link", "set", "eth0", "address", mac]),
            "setting the guest's MAC",
        );
    };
    // 1. Guest side, foreign MAC.
    set_guest_mac(FOREIGN_MAC);
    let node_w = UdpWitness::start(&info.node_netns, 67);
    let lease = udhcpc_on(guest, "eth0", dir, "foreign", 2);
    assert!(lease.is_none(), "a foreign MAC got a lease: {lease:?}");
    assert_eq!(
        node_w.count(),
        0,
        "DHCP of a foreign guest-side MAC reached the node"
    );
    remove_guard();
    let _ = udhcpc_on(guest, "eth0", dir, "foreign-control", 2);
    assert!(
        node_w.count() > 0,
        "control: without the guard the foreign MAC's DHCP should reach the node"
    );
    restore_guard();
    drop(node_w);
    set_guest_mac(guest_mac);

    // 2. Node side.
    let node = &info.node_netns;
    let spoof = "sbspoof";
    run(
        Command::new("ip")
            .args(["-n", node, "link", "add", spoof, "address", FOREIGN_MAC])
            .args(["link", &info.node_veth, "type", "macvlan", "mode", "bridge"]),
        "adding the node-side macvlan",
    );
    run(
        Command::new("ip").args(["-n", node, "link", "set", spoof, "up"]),
        "node-side macvlan up",
    );
    let guest_w = UdpWitness::start(guest, 67);
    let lease = udhcpc_on(node, spoof, dir, "node", 2);
    assert!(lease.is_none(), "a node-side client got a lease: {lease:?}");
    assert_eq!(guest_w.count(), 0, "node-side DHCP reached the guest");
    remove_guard();
    let _ = udhcpc_on(node, spoof, dir, "node-control", 2);
    assert!(
        guest_w.count() > 0,
        "control: without the guard node-side DHCP should reach the guest"
    );
    restore_guard();
    drop(guest_w);
    let _ = Command::new("ip")
        .args(["-n", node, "link", "del", spoof])
        .status();
}

fn tc_redirect_end_to_end(style: Style) {
    support::require_root();
    let sb = Sandbox::create(style);
    let info = sb.info().clone();
    let calico = matches!(style, Style::Calico);
    let dir = tempfile::Builder::new()
        .prefix(&format!("net-l2-{}-", sb.name))
        .tempdir()
        .unwrap();
    let vmi = dir.path().join("vmi.yaml");
    std::fs::write(&vmi, TC_VMI).unwrap();
    let run_dir = dir.path().join("run");

    // Taken before the stand-in exists: the stand-in plays the VM's tap, which teardown
    // deletes in production; here the test deletes it (it is the test's) before comparing.
    let before = sb.snapshot();
    let qdiscs_before = sb.exec_ok(&["tc", "qdisc", "show"]);

    // The guest stand-in: netns <sandbox>-tg with eth0 (the pod's MAC), peer "tap0" in the pod.
    let g = GuestNetns(format!("{}-tg", sb.name));
    run(
        Command::new("ip").args(["netns", "add", &g.0]),
        "creating the guest netns",
    );
    let mtu = info.mtu.to_string();
    run(
        Command::new("ip").args([
            "-n",
            &sb.name,
            "link",
            "add",
            "tap0",
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &g.0,
            "mtu",
            &mtu,
            "address",
            &info.pod_mac,
        ]),
        "creating the tap stand-in",
    );
    run(
        Command::new("ip").args(["-n", &g.0, "link", "set", "eth0", "up"]),
        "guest eth0 up",
    );
    run(
        Command::new("ip").args(["-n", &g.0, "link", "set", "lo", "up"]),
        "guest lo up",
    );

    let served = Served::start(
        &sb,
        &vmi,
        &run_dir,
        &[("LAUNCHER_TC_REDIRECT_DEVICE", "tap0")],
    );
    // The plumbing, as documented: no bridge, eth0 without its addresses and with another MAC,
    // clsact on both.
    let links = sb.exec_ok(&["ip", "-br", "link"]);
    assert!(!links.contains("k6t-"), "{links}");
    let eth0 = sb.exec_ok(&["ip", "-br", "addr", "show", "dev", "eth0"]);
    assert!(!eth0.contains(&info.pod_ip), "eth0 kept its IP: {eth0}");
    let eth0l = sb.exec_ok(&["ip", "-br", "link", "show", "dev", "eth0"]);
    assert!(!eth0l.contains(&info.pod_mac), "eth0 kept its MAC: {eth0l}");
    let filters = sb.exec_ok(&["tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        filters.contains("Egress Redirect to device tap0"),
        "{filters}"
    );
    let filters = sb.exec_ok(&["tc", "filter", "show", "dev", "tap0", "ingress"]);
    assert!(
        filters.contains("Egress Redirect to device eth0"),
        "{filters}"
    );

    if !calico {
        let bin = support::launcher_bin();
        let tc_del = |dev: &str| {
            for pref in ["1", "2"] {
                sb.exec_ok(&["tc", "filter", "del", "dev", dev, "ingress", "pref", pref]);
            }
        };
        check_dhcp_guard(
            &sb,
            &g.0,
            &info.pod_mac,
            dir.path(),
            &|| {
                tc_del("tap0");
                tc_del("eth0");
            },
            &|| {
                let o = sb
                    .exec_cmd(&[
                        bin.to_str().unwrap(),
                        "network",
                        "setup",
                        "--vmi",
                        vmi.to_str().unwrap(),
                        "--run-dir",
                        run_dir.to_str().unwrap(),
                    ])
                    .env("LAUNCHER_TC_REDIRECT_DEVICE", "tap0")
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "re-running setup to restore the filters: {}",
                    support::show(&o)
                );
            },
        );
    }

    // The guest gets the pod's IP from our server on tap0, and its DHCP stays in the pod.
    let node_w = UdpWitness::start(&info.node_netns, 67);
    let env = udhcpc(&g.0, dir.path(), 5).expect("udhcpc got no lease through tc-redirect");
    assert_eq!(node_w.count(), 0, "the guest's DHCP reached the node");
    drop(node_w);
    assert_eq!(env.get("ip"), Some(&info.pod_ip), "{env:?}");
    assert_eq!(
        env.get("serverid").map(String::as_str),
        Some("169.254.75.10")
    );
    assert_eq!(env.get("mtu"), Some(&mtu), "{env:?}");
    let (mask, gw) = if calico {
        ("32", "169.254.1.1")
    } else {
        ("24", info.gateway.as_str())
    };
    assert_eq!(env.get("mask").map(String::as_str), Some(mask), "{env:?}");
    assert_eq!(env.get("router").map(String::as_str), Some(gw), "{env:?}");

    // Configured as DHCP said, the guest pings the node through the redirects.
    let mut cmds = vec![format!("ip addr add {}/{mask} dev eth0", info.pod_ip)];
    if calico {
        cmds.push(format!("ip route add {gw} dev eth0 scope link"));
    }
    cmds.push(format!("ip route add default via {gw} dev eth0"));
    cmds.push(format!("busybox ping -c 2 -W 3 {}", info.node_ip));
    run(
        Command::new("ip").args(["netns", "exec", &g.0, "sh", "-ec", &cmds.join("; ")]),
        "the guest pinging the node",
    );
    // And the node reaches the guest at the pod IP.
    run(
        &mut sb.node_cmd(&["busybox", "ping", "-c", "2", "-W", "3", &info.pod_ip]),
        "the node pinging the guest at the pod IP",
    );

    assert_eq!(served.terminate(), 0, "exit code after SIGTERM");
    // eth0's clsact is gone (checked before the stand-in, which carries its own, is deleted).
    let q = sb.exec_ok(&["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!q.contains("clsact"), "eth0 still has a clsact qdisc: {q}");
    run(
        Command::new("ip").args(["-n", &sb.name, "link", "del", "tap0"]),
        "deleting the tap stand-in",
    );
    let after = sb.snapshot();
    assert!(
        before == after,
        "the pod differs from its snapshot before setup:\n{}",
        diff(&before, &after)
    );
    let qdiscs_after = sb.exec_ok(&["tc", "qdisc", "show"]);
    assert_eq!(qdiscs_before, qdiscs_after, "the clsact qdiscs are gone");
    assert!(!run_dir.join("network-state.json").exists());
}

#[test]
fn tc_redirect_flannel_dhcp_ping_and_exact_restore() {
    tc_redirect_end_to_end(Style::Flannel);
}

#[test]
fn tc_redirect_calico_dhcp_ping_and_exact_restore() {
    tc_redirect_end_to_end(Style::Calico);
}

// ------------------------------------------------------------------------------------------
// macvtap on the pod network.

fn macvtap_end_to_end(style: Style) {
    support::require_root();
    let sb = Sandbox::create(style);
    let info = sb.info().clone();
    let calico = matches!(style, Style::Calico);
    let dir = tempfile::Builder::new()
        .prefix(&format!("net-l2-mv-{}-", sb.name))
        .tempdir()
        .unwrap();
    let run_dir = dir.path().join("run");
    let vmi = dir.path().join("vmi.yaml");
    std::fs::write(&vmi, MACVTAP_VMI).unwrap();
    let before = sb.snapshot();
    let tc_before = support::tc_snapshot(&sb);
    let served = Served::start(&sb, &vmi, &run_dir, &[("LAUNCHER_MACVTAP_STAND_IN", "1")]);

    let links = sb.exec_ok(&["ip", "-d", "link"]);
    assert!(links.contains("mvdhcp0@eth0"), "{links}");
    assert!(links.contains("macvtap0@eth0"), "{links}");
    assert!(links.contains("macvlan mode bridge"), "{links}");
    let eth0 = sb.exec_ok(&["ip", "-br", "addr", "show", "dev", "eth0"]);
    assert!(!eth0.contains(&info.pod_ip), "eth0 kept its IP: {eth0}");
    let mv = sb.exec_ok(&["ip", "-br", "link", "show", "dev", "macvtap0"]);
    assert!(
        mv.contains(&info.pod_mac),
        "macvtap0 carries the pod MAC: {mv}"
    );

    // The guest stand-in: the macvlan made in place of the macvtap, moved to a guest netns.
    let g = GuestNetns(format!("{}-mg", sb.name));
    run(
        Command::new("ip").args(["netns", "add", &g.0]),
        "creating the guest netns",
    );
    run(
        Command::new("ip").args(["-n", &sb.name, "link", "set", "macvtap0", "netns", &g.0]),
        "moving the guest device",
    );
    run(
        Command::new("ip").args(["-n", &g.0, "link", "set", "macvtap0", "name", "eth0"]),
        "renaming the guest device",
    );
    for l in ["eth0", "lo"] {
        run(
            Command::new("ip").args(["-n", &g.0, "link", "set", l, "up"]),
            "guest link up",
        );
    }
    if !calico {
        let saved = sb.exec_ok(&["nft", "list", "table", "netdev", "launcher_dhcp_guard_eth0"]);
        let saved_path = dir.path().join("guard.nft");
        std::fs::write(&saved_path, &saved).unwrap();
        check_dhcp_guard(
            &sb,
            &g.0,
            &info.pod_mac,
            dir.path(),
            &|| {
                sb.exec_ok(&[
                    "nft",
                    "delete",
                    "table",
                    "netdev",
                    "launcher_dhcp_guard_eth0",
                ]);
            },
            &|| {
                sb.exec_ok(&["nft", "-f", saved_path.to_str().unwrap()]);
            },
        );
    }
    let node_w = UdpWitness::start(&info.node_netns, 67);
    let env = udhcpc(&g.0, dir.path(), 5).expect("udhcpc got no lease through macvtap");
    assert_eq!(node_w.count(), 0, "the guest's DHCP reached the node");
    drop(node_w);
    assert_eq!(env.get("ip"), Some(&info.pod_ip), "{env:?}");
    assert_eq!(
        env.get("serverid").map(String::as_str),
        Some("169.254.75.10")
    );
    let (mask, gw) = if calico {
        ("32", "169.254.1.1")
    } else {
        ("24", info.gateway.as_str())
    };
    assert_eq!(env.get("mask").map(String::as_str), Some(mask), "{env:?}");
    assert_eq!(env.get("router").map(String::as_str), Some(gw), "{env:?}");
    let mut cmds = vec![format!("ip addr add {}/{mask} dev eth0", info.pod_ip)];
    if calico {
        cmds.push(format!("ip route add {gw} dev eth0 scope link"));
    }
    cmds.push(format!("ip route add default via {gw} dev eth0"));
    cmds.push(format!("busybox ping -c 2 -W 3 {}", info.node_ip));
    run(
        Command::new("ip").args(["netns", "exec", &g.0, "sh", "-ec", &cmds.join("; ")]),
        "the guest pinging the node",
    );
    run(
        &mut sb.node_cmd(&["busybox", "ping", "-c", "2", "-W", "3", &info.pod_ip]),
        "the node pinging the guest at the pod IP",
    );
    // The VM goes away first (as the macvtap would be deleted by teardown), then SIGTERM.
    drop(g);
    assert_eq!(served.terminate(), 0, "exit code after SIGTERM");
    let after = sb.snapshot();
    assert!(
        before == after,
        "the pod differs from its snapshot before setup:\n{}",
        diff(&before, &after)
    );
    let tc_after = support::tc_snapshot(&sb);
    assert!(tc_before == tc_after, "{}", diff(&tc_before, &tc_after));
    assert!(!run_dir.join("network-state.json").exists());
}

#[test]
fn macvtap_flannel_dhcp_ping_and_exact_restore() {
    macvtap_end_to_end(Style::Flannel);
}

#[test]
fn macvtap_calico_dhcp_ping_and_exact_restore() {
    macvtap_end_to_end(Style::Calico);
}

/// tc-redirect: SIGKILL after every step (`LAUNCHER_FAULT_AFTER_STEP`), then a re-run
/// converges and a teardown restores the snapshot exactly.
#[test]
fn tc_redirect_crash_after_every_step_converges_and_restores() {
    support::require_root();
    let sb = Sandbox::create(Style::Flannel);
    let dir = tempfile::Builder::new()
        .prefix(&format!("net-l2-crash-{}-", sb.name))
        .tempdir()
        .unwrap();
    let vmi = dir.path().join("vmi.yaml");
    std::fs::write(&vmi, TC_VMI).unwrap();
    let run_dir = dir.path().join("run");
    let before = sb.snapshot();
    let bin = support::launcher_bin();
    let launcher = |args: &[&str], fault: Option<usize>| {
        let mut full = vec![bin.to_str().unwrap(), "network"];
        full.extend_from_slice(args);
        full.extend_from_slice(&[
            "--vmi",
            vmi.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ]);
        let mut c = sb.exec_cmd(&full);
        c.env("LAUNCHER_TC_REDIRECT_DEVICE", "tap0");
        if let Some(n) = fault {
            c.env("LAUNCHER_FAULT_AFTER_STEP", n.to_string());
        }
        c.output().expect("running launcher")
    };
    let steps = 10; // the tc-redirect plan with a tap stand-in (see the golden plan, minus create-tap)
    for n in 0..=steps {
        // The stand-in for the VM's tap (both veth ends in the pod; deleted after teardown).
        sb.exec_ok(&[
            "ip", "link", "add", "tap0", "type", "veth", "peer", "name", "tap0p",
        ]);
        let o = launcher(&["setup"], Some(n));
        if n < steps {
            assert!(
                !o.status.success(),
                "fault after step {n} did not kill setup: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let o = launcher(&["setup"], None);
        assert!(
            o.status.success(),
            "re-run after a crash after step {n} did not converge: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let f = sb.exec_ok(&["tc", "filter", "show", "dev", "eth0", "ingress"]);
        assert!(f.contains("Redirect to device tap0"), "step {n}: {f}");
        let o = launcher(&["teardown"], None);
        assert!(
            o.status.success(),
            "teardown after a crash after step {n}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        sb.exec_ok(&["ip", "link", "del", "tap0"]);
        let after = sb.snapshot();
        assert!(
            before == after,
            "after a crash after step {n}, re-run and teardown, the pod differs:\n{}",
            diff(&before, &after)
        );
        let q = sb.exec_ok(&["tc", "qdisc", "show", "dev", "eth0"]);
        assert!(!q.contains("clsact"), "step {n}: {q}");
    }
}

/// macvtap: SIGKILL after every step (`LAUNCHER_FAULT_AFTER_STEP`), then a re-run converges
/// (the guard and the devices are in place) and a teardown restores the snapshot exactly.
#[test]
fn macvtap_crash_after_every_step_converges_and_restores() {
    support::require_root();
    let sb = Sandbox::create(Style::Flannel);
    let dir = tempfile::Builder::new()
        .prefix(&format!("net-l2-mvcrash-{}-", sb.name))
        .tempdir()
        .unwrap();
    let vmi = dir.path().join("vmi.yaml");
    std::fs::write(&vmi, MACVTAP_VMI).unwrap();
    let run_dir = dir.path().join("run");
    let before = sb.snapshot();
    let tc_before = support::tc_snapshot(&sb);
    let bin = support::launcher_bin();
    let launcher = |args: &[&str], fault: Option<usize>| {
        let mut full = vec![bin.to_str().unwrap(), "network"];
        full.extend_from_slice(args);
        full.extend_from_slice(&[
            "--vmi",
            vmi.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ]);
        let mut c = sb.exec_cmd(&full);
        c.env("LAUNCHER_MACVTAP_STAND_IN", "1");
        if let Some(n) = fault {
            c.env("LAUNCHER_FAULT_AFTER_STEP", n.to_string());
        }
        c.output().expect("running launcher")
    };
    std::env::remove_var("LAUNCHER_MACVTAP_STAND_IN");
    let steps = macvtap_plan(flannel_eth0()).steps.len();
    assert_eq!(steps, 11, "the macvtap plan (see the golden plan)");
    for n in 0..=steps {
        let o = launcher(&["setup"], Some(n));
        if n < steps {
            assert!(
                !o.status.success(),
                "fault after step {n} did not kill setup: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let o = launcher(&["setup"], None);
        assert!(
            o.status.success(),
            "re-run after a crash after step {n} did not converge: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let links = sb.exec_ok(&["ip", "-d", "link"]);
        assert!(
            links.contains("macvtap0@eth0") && links.contains("mvdhcp0@eth0"),
            "step {n}: {links}"
        );
        let nft = sb.exec_ok(&["nft", "list", "tables"]);
        assert!(
            nft.contains("netdev launcher_dhcp_guard_eth0"),
            "step {n}: {nft}"
        );
        let o = launcher(&["teardown"], None);
        assert!(
            o.status.success(),
            "teardown after a crash after step {n}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let after = sb.snapshot();
        assert!(
            before == after,
            "after a crash after step {n}, re-run and teardown, the pod differs:\n{}",
            diff(&before, &after)
        );
        assert_eq!(tc_before, support::tc_snapshot(&sb), "step {n}");
    }
}

/// macvtap on a Multus network whose interface is a veth with an address: planted on it with
/// its own names (`macvtap1` on `net1`, DHCP from `mvdhcp1`, guard `launcher_dhcp_guard_net1`).
/// A guest stand-in gets net1's address from our server and pings node2; SIGTERM restores.
#[test]
fn macvtap_planted_on_a_multus_veth_dhcp_ping_and_exact_restore() {
    support::require_root();
    let sb = Sandbox::create(Style::Flannel);
    let sec = sb.add_secondary("net1", "flannel", Some("10.245.9.0/24"));
    assert_eq!(sec["pod_ip"], "10.245.9.5");
    let dir = tempfile::Builder::new()
        .prefix(&format!("net-l2-mvsec-{}-", sb.name))
        .tempdir()
        .unwrap();
    let run_dir = dir.path().join("run");
    let vmi = dir.path().join("vmi.yaml");
    std::fs::write(
        &vmi,
        MULTUS_MACVTAP_VMI.replace("02:00:00:00:aa:01", "02:00:00:00:aa:09"),
    )
    .unwrap();
    let before = sb.snapshot();
    let tc_before = support::tc_snapshot(&sb);
    let served = Served::start(&sb, &vmi, &run_dir, &[("LAUNCHER_MACVTAP_STAND_IN", "1")]);
    let links = sb.exec_ok(&["ip", "-d", "link"]);
    assert!(links.contains("macvtap1@net1"), "{links}");
    assert!(links.contains("mvdhcp1@net1"), "{links}");
    let nft = sb.exec_ok(&["nft", "list", "tables"]);
    assert!(nft.contains("netdev launcher_dhcp_guard_net1"), "{nft}");

    let g = GuestNetns(format!("{}-ms", sb.name));
    run(
        Command::new("ip").args(["netns", "add", &g.0]),
        "creating the guest netns",
    );
    run(
        Command::new("ip").args(["-n", &sb.name, "link", "set", "macvtap1", "netns", &g.0]),
        "moving the guest device",
    );
    run(
        Command::new("ip").args(["-n", &g.0, "link", "set", "macvtap1", "name", "eth0"]),
        "renaming the guest device",
    );
    for l in ["eth0", "lo"] {
        run(
            Command::new("ip").args(["-n", &g.0, "link", "set", l, "up"]),
            "guest link up",
        );
    }
    let env = udhcpc(&g.0, dir.path(), 5).expect("udhcpc got no lease on the Multus macvtap");
    assert_eq!(
        env.get("ip").map(String::as_str),
        Some("10.245.9.5"),
        "{env:?}"
    );
    assert_eq!(env.get("mask").map(String::as_str), Some("24"), "{env:?}");
    assert_eq!(
        env.get("serverid").map(String::as_str),
        Some("169.254.75.11"),
        "the server of the second interface: {env:?}"
    );
    run(
        Command::new("ip").args([
            "netns",
            "exec",
            &g.0,
            "sh",
            "-ec",
            "ip addr add 10.245.9.5/24 dev eth0; busybox ping -c 2 -W 3 10.245.9.1",
        ]),
        "the guest pinging node2",
    );
    drop(g);
    assert_eq!(served.terminate(), 0, "exit code after SIGTERM");
    let after = sb.snapshot();
    assert!(before == after, "{}", diff(&before, &after));
    assert_eq!(tc_before, support::tc_snapshot(&sb));
}
