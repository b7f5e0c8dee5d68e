//! Integration tests of the pod network, bridge binding (issue 3).
//!
//! - Golden plans (pure, no root): `tests/golden/net/<case>.json`. Regenerate with
//!   `UPDATE_GOLDEN=1 cargo test --test net_bridge golden`, then review the diff with
//!   `git diff tests/golden/net/`: every change must be explained by the code change.
//! - Root tests in sandbox pods (`scripts/sandbox.sh`): DHCP end to end with udhcpc and
//!   dhclient, isolation of DHCP, exact restoration after SIGTERM, and crash convergence with
//!   `LAUNCHER_FAULT_AFTER_STEP` (test-only). They panic when not run as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use launcher::net::discover::DiscoveredPod;
use launcher::net::plan::{link_local_for, plan, PlanOptions};
use launcher::net::{NetError, NetPlan};

#[path = "support/dhcp_client.rs"]
mod dhcp_client;
#[path = "support/golden.rs"]
mod golden;
#[path = "support/serve.rs"]
mod serve;

// ------------------------------------------------------------------------------------------
// Fixtures: discovered pods as a CNI leaves them.

fn dns() -> serde_json::Value {
    serde_json::json!({
        "nameservers_v4": ["10.96.0.10"],
        "nameservers_v6": ["fd00:10:96::a"],
        "search": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    })
}

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
            {"destination": "10.244.0.0", "prefix_len": 16, "gateway": "10.244.1.1", "protocol": 3, "scope": 0},
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

fn dual_eth0() -> serde_json::Value {
    let mut v = flannel_eth0();
    v["addresses"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"address": "fd00:10:244:1::5", "prefix_len": 64, "flags": 0x02}));
    let routes = v["routes"].as_array_mut().unwrap();
    routes.push(serde_json::json!({"destination": "fd00:10:244:1::", "prefix_len": 64, "protocol": 2, "scope": 0, "metric": 256}));
    routes.push(serde_json::json!({"destination": "::", "prefix_len": 0, "gateway": "fd00:10:244:1::1", "protocol": 3, "scope": 0, "metric": 1024}));
    v
}

fn secondary(index: u32, name: &str, subnet: Option<u8>) -> serde_json::Value {
    let (addresses, routes) = match subnet {
        Some(n) => (
            serde_json::json!([{"address": format!("10.245.{n}.5"), "prefix_len": 24}]),
            serde_json::json!([{"destination": format!("10.245.{n}.0"), "prefix_len": 24, "protocol": 2, "scope": 253}]),
        ),
        None => (serde_json::json!([]), serde_json::json!([])),
    };
    serde_json::json!({
        "index": index, "name": name, "mac": format!("0a:58:0a:f5:{:02x}:05", index), "mtu": 1500,
        "up": true, "kind": "veth", "addresses": addresses, "routes": routes
    })
}

fn pod(interfaces: Vec<serde_json::Value>) -> DiscoveredPod {
    let mut all = vec![lo()];
    all.extend(interfaces);
    serde_json::from_value(serde_json::json!({
        "interfaces": all, "dns": dns(), "hostname": "testvm"
    }))
    .expect("fixture pod")
}

fn vmi(yaml: &str) -> launcher::spec::Vmi {
    launcher::spec::parse_str(yaml, "fixture")
        .expect("fixture VMI")
        .vmi
}

const POD_BRIDGE: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: testvm}
spec:
  domain:
    resources: {requests: {memory: 128Mi}}
    devices:
      interfaces: [{name: default, bridge: {}}]
  networks: [{name: default, pod: {}}]
";

fn golden(case: &str, p: &NetPlan) {
    golden::net_plan(&format!("{case}.json"), case, p, "net_bridge");
}

fn opts() -> PlanOptions {
    PlanOptions {
        tap_owner: "root".into(),
    }
}

#[test]
fn golden_flannel() {
    let p = plan(&pod(vec![flannel_eth0()]), &vmi(POD_BRIDGE), &opts()).unwrap();
    let r = &p.interfaces[0];
    assert_eq!(r.tap, "tap0");
    assert_eq!(r.mac.to_string(), "0a:58:0a:f4:01:05");
    let d = r.dhcp.as_ref().unwrap();
    assert_eq!(d.interface, "k6t-eth0");
    assert_eq!(d.server_ip.to_string(), "169.254.75.10");
    assert_eq!(d.router.unwrap().to_string(), "10.244.1.1");
    // The connected route is dropped; the default route is last.
    assert_eq!(d.routes.len(), 2);
    assert_eq!(d.routes[1].prefix_len, 0);
    assert_eq!(d.domain.as_deref(), Some("default.svc.cluster.local"));
    assert_eq!(d.mtu, 1450);
    golden("flannel", &p);
}

#[test]
fn dhcp_hostname_is_the_vmi_hostname_when_given_else_the_pods() {
    let p = plan(&pod(vec![flannel_eth0()]), &vmi(POD_BRIDGE), &opts()).unwrap();
    let d = p.interfaces[0].dhcp.as_ref().unwrap();
    assert_eq!(
        d.hostname.as_deref(),
        Some("testvm"),
        "no spec.hostname: the pod's"
    );
    let y = POD_BRIDGE.replace("spec:\n  domain:", "spec:\n  hostname: myguest\n  domain:");
    assert!(y.contains("hostname: myguest"));
    let p = plan(&pod(vec![flannel_eth0()]), &vmi(&y), &opts()).unwrap();
    let d = p.interfaces[0].dhcp.as_ref().unwrap();
    assert_eq!(
        d.hostname.as_deref(),
        Some("myguest"),
        "spec.hostname takes effect"
    );
}

#[test]
fn golden_calico() {
    let p = plan(&pod(vec![calico_eth0()]), &vmi(POD_BRIDGE), &opts()).unwrap();
    let d = p.interfaces[0].dhcp.as_ref().unwrap();
    assert_eq!(d.prefix_len, 32);
    assert_eq!(d.router.unwrap().to_string(), "169.254.1.1");
    // The on-link gateway is a /32 route with gateway 0.0.0.0, before the default route.
    assert_eq!(d.routes[0].dest.to_string(), "169.254.1.1");
    assert_eq!(d.routes[0].prefix_len, 32);
    assert!(d.routes[0].gateway.is_unspecified());
    assert_eq!(d.routes[1].gateway.to_string(), "169.254.1.1");
    golden("calico", &p);
}

#[test]
fn golden_dual_stack() {
    let p = plan(&pod(vec![dual_eth0()]), &vmi(POD_BRIDGE), &opts()).unwrap();
    let r = &p.interfaces[0];
    let ips: Vec<String> = r.guest_ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(
        ips,
        vec!["10.244.1.5", "fd00:10:244:1::5"],
        "link-local excluded"
    );
    assert_eq!(
        r.dhcp.as_ref().unwrap().dns.len(),
        1,
        "option 6 is IPv4 only"
    );
    golden("dual-stack", &p);
}

#[test]
fn golden_multiqueue() {
    let y = POD_BRIDGE.replace(
        "    devices:\n",
        "    cpu: {cores: 2, sockets: 2, threads: 1}\n    devices:\n      networkInterfaceMultiqueue: true\n",
    );
    let p = plan(&pod(vec![flannel_eth0()]), &vmi(&y), &opts()).unwrap();
    assert_eq!(p.interfaces[0].queues, 4);
    golden("multiqueue", &p);
    // Capped at 256.
    let big = y.replace("cores: 2, sockets: 2", "cores: 100, sockets: 3");
    let p = plan(&pod(vec![flannel_eth0()]), &vmi(&big), &opts()).unwrap();
    assert_eq!(p.interfaces[0].queues, 256);
    // Without the flag: one queue.
    let off = y.replace(
        "networkInterfaceMultiqueue: true",
        "networkInterfaceMultiqueue: false",
    );
    let p = plan(&pod(vec![flannel_eth0()]), &vmi(&off), &opts()).unwrap();
    assert_eq!(p.interfaces[0].queues, 1);
}

#[test]
fn golden_spec_mac_address() {
    let y = POD_BRIDGE.replace(
        "{name: default, bridge: {}}",
        "{name: default, bridge: {}, macAddress: \"02:00:00:aa:bb:cc\"}",
    );
    let p = plan(&pod(vec![flannel_eth0()]), &vmi(&y), &opts()).unwrap();
    let r = &p.interfaces[0];
    assert_eq!(r.mac.to_string(), "02:00:00:aa:bb:cc");
    assert_eq!(
        r.dhcp.as_ref().unwrap().client_mac,
        [2, 0, 0, 0xaa, 0xbb, 0xcc]
    );
    // The stand-in still carries the pod's original MAC.
    let json = serde_json::to_value(&p).unwrap();
    let stand_in = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["op"] == "create-stand-in")
        .unwrap();
    assert_eq!(stand_in["mac"], "0a:58:0a:f4:01:05");
    golden("spec-mac-address", &p);
    // A bad MAC names its path.
    let bad = POD_BRIDGE.replace(
        "{name: default, bridge: {}}",
        "{name: default, bridge: {}, macAddress: \"02:00:00:aa:bb\"}",
    );
    let e = plan(&pod(vec![flannel_eth0()]), &vmi(&bad), &opts()).unwrap_err();
    assert!(
        e.to_string()
            .contains("spec.domain.devices.interfaces[0].macAddress"),
        "{e}"
    );
}

const SECONDARY: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: testvm}
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
  - {name: red, multus: {networkName: red-l2}}
";

#[test]
fn golden_secondary_with_and_without_ip() {
    let p = plan(
        &pod(vec![
            flannel_eth0(),
            secondary(5, "net1", Some(1)),
            secondary(6, "net2", None),
        ]),
        &vmi(SECONDARY),
        &opts(),
    )
    .unwrap();
    let blue = &p.interfaces[1];
    assert_eq!(
        (
            blue.pod_interface.as_str(),
            blue.tap.as_str(),
            blue.bridge.as_deref()
        ),
        ("net1", "tap1", Some("k6t-net1"))
    );
    let d = blue.dhcp.as_ref().unwrap();
    assert_eq!(d.server_ip.to_string(), "169.254.75.11");
    assert_eq!(d.router, None, "no default route on net1");
    assert!(
        d.routes.is_empty(),
        "only the connected route, which is dropped"
    );
    let red = &p.interfaces[2];
    assert_eq!(red.tap, "tap2");
    assert!(red.dhcp.is_none(), "L2 only: no DHCP server");
    // The DHCP guard covers the pod NICs that have a server, and not the L2-only one.
    let json = serde_json::to_string(&p).unwrap();
    assert!(
        json.contains("\\\"eth0-nic\\\", \\\"net1-nic\\\""),
        "{json}"
    );
    assert!(!json.contains("\\\"net2-nic\\\""));
    golden("secondary", &p);
}

#[test]
fn missing_pod_interface_is_a_precondition() {
    let e = plan(&pod(vec![flannel_eth0()]), &vmi(SECONDARY), &opts()).unwrap_err();
    assert!(matches!(e, NetError::MissingPodInterface { .. }), "{e}");
    assert!(e.to_string().contains("\"net1\""), "{e}");
    use launcher::error::Classify;
    assert_eq!(e.exit_kind().code(), 3);
}

#[test]
fn other_bindings_are_refused_not_misplumbed() {
    let y = POD_BRIDGE.replace("bridge: {}", "binding: {name: no-such-plugin}");
    let e = plan(&pod(vec![flannel_eth0()]), &vmi(&y), &opts()).unwrap_err();
    assert!(matches!(e, NetError::UnsupportedBinding { .. }), "{e}");
}

/// Twelve interfaces: KubeVirt's string-pasted link-local addresses break from the 10th; ours
/// are 169.254.75.10 + position, all distinct, each on its own bridge.
#[test]
fn golden_many_interfaces_link_local_addresses() {
    let mut ifaces = vec![flannel_eth0()];
    let mut y = String::from(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: testvm}\nspec:\n  domain:\n    devices:\n      interfaces:\n      - {name: default, bridge: {}}\n",
    );
    let mut nets = String::from("  networks:\n  - {name: default, pod: {}}\n");
    for i in 1..12u32 {
        ifaces.push(secondary(10 + i, &format!("net{i}"), Some(i as u8)));
        y.push_str(&format!("      - {{name: sec{i}, bridge: {{}}}}\n"));
        nets.push_str(&format!(
            "  - {{name: sec{i}, multus: {{networkName: n{i}}}}}\n"
        ));
    }
    y.push_str(&nets);
    let p = plan(&pod(ifaces), &vmi(&y), &opts()).unwrap();
    assert_eq!(p.interfaces.len(), 12);
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in p.interfaces.iter().enumerate() {
        let d = r.dhcp.as_ref().unwrap();
        assert_eq!(d.server_ip, link_local_for(i));
        assert_eq!(
            d.server_ip.octets(),
            [169, 254, 75, 10 + i as u8],
            "interface {i}"
        );
        assert!(seen.insert(d.server_ip), "duplicate {}", d.server_ip);
        if i > 0 {
            assert_eq!(d.interface, format!("k6t-net{i}"));
            assert_eq!(r.tap, format!("tap{i}"));
        }
    }
    golden("many-interfaces", &p);
}

#[test]
fn link_local_server_avoids_pod_addresses() {
    let mut eth0 = calico_eth0();
    eth0["routes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "169.254.75.10", "prefix_len": 32, "protocol": 3, "scope": 253}));
    let p = plan(&pod(vec![eth0]), &vmi(POD_BRIDGE), &opts()).unwrap();
    assert_eq!(
        p.interfaces[0].dhcp.as_ref().unwrap().server_ip.to_string(),
        "169.254.78.242"
    );
}

#[test]
fn plan_json_round_trips() {
    let p = plan(&pod(vec![dual_eth0()]), &vmi(POD_BRIDGE), &opts()).unwrap();
    let back: NetPlan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

// ------------------------------------------------------------------------------------------
// Root tests in sandbox pods.

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces); run it as root: it is never skipped"
    );
}

fn sandbox_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sandbox.sh")
}

fn launcher_bin() -> &'static str {
    env!("CARGO_BIN_EXE_launcher")
}

fn sh(args: &[&str]) -> std::process::Output {
    let out = Command::new("bash")
        .arg(sandbox_sh())
        .args(args)
        .output()
        .expect("running sandbox.sh");
    out
}

fn sh_ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "sandbox.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A sandbox pod, destroyed on drop (success or failure).
struct Sandbox {
    name: String,
    dir: tempfile::TempDir,
    info: serde_json::Value,
}

impl Sandbox {
    fn create(style: &str) -> Sandbox {
        require_root();
        let name = format!(
            "nb{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let name: String = name.chars().take(8).collect();
        let _ = sh(&["destroy", &name]);
        sh_ok(&["create", &name, "--style", style]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("net-bridge-{name}-"))
            .tempdir()
            .unwrap();
        let info = serde_json::from_str(&sh_ok(&["info", &name])).unwrap();
        Sandbox { name, dir, info }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn run_dir(&self) -> String {
        self.path("run").display().to_string()
    }

    fn snapshot(&self) -> String {
        sh_ok(&["snapshot", &self.name])
    }

    fn exec(&self, ns: &str, cmd: &[&str]) -> std::process::Output {
        let mut args = vec!["exec", ns, "--"];
        args.extend_from_slice(cmd);
        sh(&args)
    }

    fn vmi(&self, yaml: &str) -> String {
        let p = self.path("vmi.yaml");
        std::fs::write(&p, yaml).unwrap();
        p.display().to_string()
    }

    fn launcher(&self, vmi: &str, args: &[&str], env: &[(&str, String)]) -> Command {
        let mut c = Command::new("bash");
        c.arg(sandbox_sh())
            .args(["exec", &self.name, "--", launcher_bin(), "network"])
            .args(args)
            .args([
                "--vmi",
                vmi,
                "--run-dir",
                &self.run_dir(),
                "--log-format",
                "json",
            ]);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn info_str(&self, k: &str) -> String {
        self.info[k]
            .as_str()
            .unwrap_or_else(|| panic!("sandbox info has no {k}: {}", self.info))
            .to_string()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = sh(&["destroy", &self.name]);
    }
}

/// `network setup --serve` running in a sandbox; killed on drop.
struct Served {
    child: Child,
    result: serde_json::Value,
    logs: mpsc::Receiver<String>,
}

impl Served {
    fn start(sb: &Sandbox, vmi: &str) -> Served {
        let mut child = sb
            .launcher(vmi, &["setup", "--serve"], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting launcher network setup --serve");
        let logs = serve::stderr_lines(&mut child);
        let result = serve::read_result(&mut child, &logs, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match logs.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains("serving DHCP") => break,
                Ok(_) => {}
                Err(_) if Instant::now() > deadline => panic!("DHCP servers did not start"),
                Err(_) => {
                    if let Some(st) = child.try_wait().unwrap() {
                        panic!("launcher exited early: {st}");
                    }
                }
            }
        }
        Served {
            child,
            result,
            logs,
        }
    }

    fn mac(&self) -> String {
        self.result["interfaces"][0]["mac"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// SIGTERM; returns the exit code.
    fn terminate(mut self) -> i32 {
        serve::terminate(&mut self.child, &self.logs)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        serve::kill_unless_exited(&mut self.child);
    }
}

/// busybox udhcpc in `ns` (`exec` = run via `sandbox.sh exec`, else `node`) on `ifname`;
/// returns (success, env of the `bound` event).
fn udhcpc(
    sb: &Sandbox,
    how: &str,
    ns: &str,
    ifname: &str,
    tag: &str,
    tries: u32,
) -> (bool, std::collections::HashMap<String, String>) {
    let tag = format!("udhcpc-{tag}");
    let script = dhcp_client::udhcpc_script(sb.dir.path(), &tag);
    let args = dhcp_client::udhcpc_args(tries, 1, ifname, &script, dhcp_client::UDHCPC_ALL_OPTIONS);
    let mut full = vec![how, ns, "--"];
    full.extend(args.iter().map(String::as_str));
    let o = sh(&full);
    (
        o.status.success(),
        dhcp_client::udhcpc_bound(sb.dir.path(), &tag),
    )
}

/// ISC dhclient (one attempt, foreground) in the guest; the env of its BOUND event.
fn dhclient(sb: &Sandbox, ns: &str) -> Option<std::collections::HashMap<String, String>> {
    let mut exec = Command::new("bash");
    exec.arg(sandbox_sh()).args(["exec", ns, "--"]);
    dhcp_client::dhclient(exec, sb.dir.path(), 20)
}

fn assert_ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The full issue-3 scenario in a sandbox pod of `style`.
fn end_to_end(style: &str) {
    let sb = Sandbox::create(style);
    let calico = style == "calico";
    let pod_ip = sb.info_str("pod_ip");
    let node_ip = sb.info_str("node_ip");
    let hostname = sb.info_str("hostname");
    let before = sb.snapshot();
    let vmi = sb.vmi(POD_BRIDGE);
    let served = Served::start(&sb, &vmi);
    let mac = served.mac();

    // A request from the node side, even with the VM's MAC and asking for broadcast replies,
    // gets no answer (the nft guard). Control: without the guard table the same request IS
    // answered, so this check can fail; re-running setup (convergence) puts the guard back.
    let nv = sb.info_str("node_veth");
    let node = format!("{}-node", sb.name);
    let spoof = "sbspoof";
    let o = Command::new("ip")
        .args([
            "-n", &node, "link", "add", spoof, "address", &mac, "link", &nv,
        ])
        .args(["type", "macvlan", "mode", "bridge"])
        .output()
        .unwrap();
    assert_ok(&o, "adding the node-side macvlan");
    let o = Command::new("ip")
        .args(["-n", &node, "link", "set", spoof, "up"])
        .output()
        .unwrap();
    assert_ok(&o, "setting the node-side macvlan up");
    let (ok, env) = udhcpc(&sb, "node", &sb.name, spoof, "node", 2);
    assert!(
        !ok,
        "a DHCP request from the node side got an answer: {env:?}"
    );
    let o = sb.exec(
        &sb.name,
        &["nft", "delete", "table", "bridge", "launcher_dhcp_guard"],
    );
    assert_ok(&o, "deleting the guard (control)");
    let (ok, env) = udhcpc(&sb, "node", &sb.name, spoof, "control", 3);
    assert!(
        ok,
        "control: without the guard the node-side request should be answered ({env:?})"
    );
    let o = sb.launcher(&vmi, &["setup"], &[]).output().unwrap();
    assert_ok(&o, "re-running setup to restore the guard");
    let (ok, env) = udhcpc(&sb, "node", &sb.name, spoof, "node2", 2);
    assert!(!ok, "the guard is back: {env:?}");
    let _ = Command::new("ip")
        .args(["-n", &node, "link", "del", spoof])
        .status();

    // The guest stand-in: a veth on k6t-eth0 with the VM's MAC.
    let guest = sh_ok(&["add-guest", &sb.name, "--bridge", "k6t-eth0", "--mac", &mac])
        .trim()
        .to_string();

    // busybox udhcpc.
    let (ok, env) = udhcpc(&sb, "exec", &guest, "eth0", "guest", 5);
    assert!(ok, "udhcpc got no lease (env {env:?})");
    assert_eq!(env.get("ip"), Some(&pod_ip), "{env:?}");
    let mask = if calico { "32" } else { "24" };
    assert_eq!(env.get("mask").map(String::as_str), Some(mask), "{env:?}");
    assert_eq!(
        env.get("dns").map(String::as_str),
        Some("10.96.0.10"),
        "{env:?}"
    );
    assert_eq!(
        env.get("search").map(String::as_str),
        Some("default.svc.cluster.local svc.cluster.local cluster.local"),
        "{env:?}"
    );
    assert_eq!(env.get("mtu").map(String::as_str), Some("1450"), "{env:?}");
    assert_eq!(env.get("hostname"), Some(&hostname), "{env:?}");
    let routes = env.get("staticroutes").cloned().unwrap_or_default();
    if calico {
        assert_eq!(env.get("router").map(String::as_str), Some("169.254.1.1"));
        assert_eq!(
            routes, "169.254.1.1/32 0.0.0.0 0.0.0.0/0 169.254.1.1",
            "{env:?}"
        );
    } else {
        assert_eq!(env.get("router").map(String::as_str), Some("10.244.1.1"));
        assert_eq!(routes, "0.0.0.0/0 10.244.1.1", "{env:?}");
    }

    // ISC dhclient.
    let env = dhclient(&sb, &guest).expect("dhclient got no lease");
    assert_eq!(env.get("new_ip_address"), Some(&pod_ip), "{env:?}");
    let m = if calico {
        "255.255.255.255"
    } else {
        "255.255.255.0"
    };
    assert_eq!(env.get("new_subnet_mask").map(String::as_str), Some(m));
    assert_eq!(
        env.get("new_domain_name_servers").map(String::as_str),
        Some("10.96.0.10")
    );
    assert!(
        env.get("new_domain_search")
            .is_some_and(|s| s.contains("default.svc.cluster.local")),
        "{env:?}"
    );
    assert_eq!(
        env.get("new_interface_mtu").map(String::as_str),
        Some("1450")
    );
    assert_eq!(env.get("new_host_name"), Some(&hostname));
    let r121 = env
        .get("new_rfc3442_classless_static_routes")
        .cloned()
        .unwrap_or_default();
    if calico {
        assert_eq!(r121, "32 169 254 1 1 0 0 0 0 0 169 254 1 1", "{env:?}");
    } else {
        assert_eq!(r121, "0 10 244 1 1", "{env:?}");
        assert_eq!(
            env.get("new_routers").map(String::as_str),
            Some("10.244.1.1")
        );
    }

    // The guest, configured as DHCP said, reaches the node.
    let prefix = if calico { "32" } else { "24" };
    let mut cmds = vec![format!("ip addr add {pod_ip}/{prefix} dev eth0")];
    if calico {
        cmds.push("ip route add 169.254.1.1 dev eth0 scope link".into());
        cmds.push("ip route add default via 169.254.1.1 dev eth0".into());
    } else {
        cmds.push("ip route add default via 10.244.1.1 dev eth0".into());
    }
    cmds.push(format!("busybox ping -c 2 -W 3 {node_ip}"));
    let o = sb.exec(&guest, &["sh", "-ec", &cmds.join("; ")]);
    assert_ok(&o, "guest pinging the node");

    // A foreign MAC gets no answer.
    let foreign = sh_ok(&[
        "add-guest",
        &sb.name,
        "--bridge",
        "k6t-eth0",
        "--mac",
        "02:00:00:00:0f:0f",
    ])
    .trim()
    .to_string();
    let (ok, env) = udhcpc(&sb, "exec", &foreign, "eth0", "foreign", 2);
    assert!(!ok, "a foreign MAC got a lease: {env:?}");

    // Remove the guest ports (they are not ours), then SIGTERM: the pod is exactly restored.
    for port in ["sbg1", "sbg2"] {
        let _ = Command::new("ip")
            .args(["-n", &sb.name, "link", "del", port])
            .status();
    }
    assert_eq!(served.terminate(), 0, "exit code after SIGTERM");
    let after = sb.snapshot();
    assert!(
        before == after,
        "the pod differs from its snapshot before setup:\n{}",
        diff(&before, &after)
    );
}

fn diff(a: &str, b: &str) -> String {
    let mut out = String::new();
    let (al, bl): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    for (i, (x, y)) in al.iter().zip(bl.iter()).enumerate() {
        if x != y {
            out.push_str(&format!("line {i}:\n- {x}\n+ {y}\n"));
        }
    }
    if al.len() != bl.len() {
        out.push_str(&format!("({} vs {} lines)\n", al.len(), bl.len()));
    }
    out
}

#[test]
fn flannel_pod_dhcp_end_to_end_and_exact_restore() {
    end_to_end("flannel");
}

#[test]
fn calico_pod_dhcp_end_to_end_and_exact_restore() {
    end_to_end("calico");
}

/// What must be equal between two plumbed pods (random MACs of the tap and veth peer aside).
fn plumbed_view(sb: &Sandbox) -> serde_json::Value {
    let json = |args: &[&str]| -> serde_json::Value {
        let mut cmd = vec!["ip", "-j"];
        cmd.extend_from_slice(args);
        let o = sb.exec(&sb.name, &cmd);
        assert_ok(&o, "ip -j");
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let mut links: Vec<serde_json::Value> = json(&["-d", "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let name = l["ifname"].as_str().unwrap_or("");
            let random_mac = name.starts_with("tap") || name.ends_with("-sb");
            serde_json::json!({
                "ifname": name,
                "mtu": l["mtu"],
                "master": l["master"],
                "up": l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP")),
                "kind": l["linkinfo"]["info_kind"],
                "learning": l["linkinfo"]["info_slave_data"]["learning"],
                "address": if random_mac { serde_json::Value::Null } else { l["address"].clone() },
            })
        })
        .collect();
    links.sort_by_key(|l| l["ifname"].as_str().unwrap_or("").to_string());
    let mut addrs: Vec<String> = Vec::new();
    for l in json(&["addr", "show"]).as_array().unwrap() {
        for a in l["addr_info"].as_array().unwrap() {
            let local = a["local"].as_str().unwrap_or("");
            if !local.starts_with("fe80") {
                addrs.push(format!("{} {}/{}", l["ifname"], local, a["prefixlen"]));
            }
        }
    }
    addrs.sort();
    let mut routes: Vec<String> = Vec::new();
    for fam in ["-4", "-6"] {
        for r in json(&[fam, "route", "show"]).as_array().unwrap() {
            let dst = r["dst"].as_str().unwrap_or("");
            if !dst.starts_with("fe80") {
                routes.push(format!("{} {} {}", dst, r["gateway"], r["dev"]));
            }
        }
    }
    routes.sort();
    let nft = String::from_utf8(sb.exec(&sb.name, &["nft", "list", "ruleset"]).stdout).unwrap();
    let sysctl = String::from_utf8(
        sb.exec(
            &sb.name,
            &["cat", "/proc/sys/net/ipv4/conf/k6t-eth0/arp_ignore"],
        )
        .stdout,
    )
    .unwrap();
    serde_json::json!({"links": links, "addrs": addrs, "routes": routes, "nft": nft, "arp_ignore": sysctl})
}

/// SIGKILL after every apply step, re-run: the result equals an uninterrupted setup, and
/// teardown restores the original snapshot.
fn crash_convergence(style: &str) {
    let sb = Sandbox::create(style);
    let before = sb.snapshot();
    let vmi = sb.vmi(POD_BRIDGE);
    let run =
        |args: &[&str], env: &[(&str, String)]| sb.launcher(&vmi, args, env).output().unwrap();

    let show = run(&["show"], &[]);
    assert_ok(&show, "network show");
    let plan: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let n_steps = plan["steps"].as_array().unwrap().len();
    assert!(n_steps >= 15, "plan has {n_steps} steps");
    assert_eq!(sb.snapshot(), before, "network show changed the pod");

    let o = run(&["setup"], &[]);
    assert_ok(&o, "network setup");
    let reference = plumbed_view(&sb);
    // Re-running a completed setup converges too (no "already exists").
    let o = run(&["setup"], &[]);
    assert_ok(&o, "network setup (again)");
    assert_eq!(plumbed_view(&sb), reference);
    // `show` after setup prints the same plan (it uses the recorded original state).
    let show2 = run(&["show"], &[]);
    assert_eq!(show2.stdout, show.stdout, "show after setup differs");
    let o = run(&["teardown"], &[]);
    assert_ok(&o, "network teardown");
    assert!(
        before == sb.snapshot(),
        "teardown:\n{}",
        diff(&before, &sb.snapshot())
    );

    for n in 0..=n_steps {
        let o = run(&["setup"], &[("LAUNCHER_FAULT_AFTER_STEP", n.to_string())]);
        assert!(
            !o.status.success(),
            "fault injection after step {n} did not kill setup"
        );
        let o = run(&["setup"], &[]);
        assert_ok(&o, &format!("network setup after a crash after step {n}"));
        let view = plumbed_view(&sb);
        assert!(
            view == reference,
            "after a crash after step {n}, re-running setup converged elsewhere:\n{}\nvs reference\n{}",
            serde_json::to_string_pretty(&view).unwrap(),
            serde_json::to_string_pretty(&reference).unwrap()
        );
        let o = run(&["teardown"], &[]);
        assert_ok(&o, &format!("teardown (crash after step {n})"));
        let after = sb.snapshot();
        assert!(
            before == after,
            "crash after step {n}: teardown did not restore the pod:\n{}",
            diff(&before, &after)
        );
    }
    // A crash and then a teardown straight away (no re-run) also restores.
    for n in [3, n_steps / 2, n_steps - 1] {
        let _ = run(&["setup"], &[("LAUNCHER_FAULT_AFTER_STEP", n.to_string())]);
        let o = run(&["teardown"], &[]);
        assert_ok(&o, &format!("teardown right after a crash after step {n}"));
        let after = sb.snapshot();
        assert!(
            before == after,
            "crash after step {n} + teardown:\n{}",
            diff(&before, &after)
        );
    }
}

#[test]
fn flannel_crash_after_every_step_converges_and_restores() {
    crash_convergence("flannel");
}

#[test]
fn calico_crash_after_every_step_converges_and_restores() {
    crash_convergence("calico");
}

/// Plumbing without a state file is refused (exit 3), never "rediscovered" as original.
#[test]
fn plumbed_pod_without_state_is_refused() {
    let sb = Sandbox::create("flannel");
    let before = sb.snapshot();
    let vmi = sb.vmi(POD_BRIDGE);
    let o = sb.launcher(&vmi, &["setup"], &[]).output().unwrap();
    assert_ok(&o, "network setup");
    let state = sb.path("run/network-state.json");
    let hidden = sb.path("state.bak");
    std::fs::rename(&state, &hidden).unwrap();
    let o = sb.launcher(&vmi, &["setup"], &[]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already plumbed") && err.contains("k6t-eth0"),
        "{err}"
    );
    std::fs::rename(&hidden, &state).unwrap();
    let o = sb.launcher(&vmi, &["teardown"], &[]).output().unwrap();
    assert_ok(&o, "network teardown");
    assert!(
        !state.exists(),
        "the state file is removed after a clean teardown"
    );
    assert!(before == sb.snapshot(), "{}", diff(&before, &sb.snapshot()));
}

/// A VMI whose secondary network has no pod interface: exit 3, nothing changed.
#[test]
fn missing_pod_interface_exits_3_and_changes_nothing() {
    let sb = Sandbox::create("flannel");
    let before = sb.snapshot();
    let vmi = sb.vmi(SECONDARY);
    let o = sb.launcher(&vmi, &["setup"], &[]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("net1"));
    assert!(!Path::new(&sb.path("run/network-state.json")).exists());
    assert!(before == sb.snapshot(), "{}", diff(&before, &sb.snapshot()));
}

/// A failure part-way (here: an unknown tap owner, at the tap step near the end) rolls back
/// everything done so far, names the object, exits 3, and leaves no state file.
#[test]
fn failure_part_way_rolls_back() {
    let sb = Sandbox::create("flannel");
    let before = sb.snapshot();
    let vmi = sb.vmi(POD_BRIDGE);
    let o = sb
        .launcher(&vmi, &["setup", "--tap-owner", "no-such-user-x"], &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("no-such-user-x") && err.contains("rolled back"),
        "{err}"
    );
    assert!(!sb.path("run/network-state.json").exists());
    let after = sb.snapshot();
    assert!(before == after, "{}", diff(&before, &after));
}

/// Dual stack: the stand-in keeps both addresses; teardown restores v4 and v6 exactly.
#[test]
fn dual_stack_pod_setup_and_teardown() {
    let sb = Sandbox::create("dual");
    let before = sb.snapshot();
    let vmi = sb.vmi(POD_BRIDGE);
    let o = sb.launcher(&vmi, &["setup"], &[]).output().unwrap();
    assert_ok(&o, "network setup");
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ips = result["interfaces"][0]["guest_ips"].to_string();
    assert!(
        ips.contains("10.244.1.5") && ips.contains("fd00:10:244:1::5"),
        "{ips}"
    );
    let o = sb.exec(&sb.name, &["ip", "-br", "addr", "show", "dev", "eth0"]);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown.contains("10.244.1.5/24") && shown.contains("fd00:10:244:1::5/64"),
        "stand-in eth0: {shown}"
    );
    let o = sb.exec(&sb.name, &["ip", "-br", "addr", "show", "dev", "eth0-nic"]);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        !shown.contains("10.244.1.5") && !shown.contains("fd00:"),
        "{shown}"
    );
    let o = sb.launcher(&vmi, &["teardown"], &[]).output().unwrap();
    assert_ok(&o, "network teardown");
    let after = sb.snapshot();
    assert!(before == after, "{}", diff(&before, &after));
}

/// Multus secondary networks: `net1` with an IP gets its own bridge, tap and DHCP server;
/// `net2` without an IP is L2 only (no server answers). SIGTERM restores everything.
#[test]
fn secondary_networks_with_and_without_ip() {
    let sb = Sandbox::create("flannel");
    sh_ok(&[
        "add-secondary",
        &sb.name,
        "--ifname",
        "net1",
        "--style",
        "flannel",
    ]);
    sh_ok(&[
        "add-secondary",
        &sb.name,
        "--ifname",
        "net2",
        "--style",
        "l2",
        "--subnet",
        "10.245.2.0/24",
    ]);
    let before = sb.snapshot();
    let vmi = sb.vmi(SECONDARY);
    let served = Served::start(&sb, &vmi);
    let blue = &served.result["interfaces"][1];
    assert_eq!(blue["tap"], "tap1");
    assert_eq!(blue["dhcp"]["server_ip"], "169.254.75.11");
    let red = &served.result["interfaces"][2];
    assert!(red["dhcp"].is_null(), "{red}");
    let blue_mac = blue["mac"].as_str().unwrap().to_string();
    let red_mac = red["mac"].as_str().unwrap().to_string();
    let g1 = sh_ok(&[
        "add-guest",
        &sb.name,
        "--bridge",
        "k6t-net1",
        "--mac",
        &blue_mac,
    ])
    .trim()
    .to_string();
    let (ok, env) = udhcpc(&sb, "exec", &g1, "eth0", "blue", 5);
    assert!(ok, "no lease on net1: {env:?}");
    assert_eq!(env.get("ip").map(String::as_str), Some("10.245.1.5"));
    assert_eq!(
        env.get("router"),
        None,
        "net1 has no default route: {env:?}"
    );
    let g2 = sh_ok(&[
        "add-guest",
        &sb.name,
        "--bridge",
        "k6t-net2",
        "--mac",
        &red_mac,
    ])
    .trim()
    .to_string();
    let (ok, env) = udhcpc(&sb, "exec", &g2, "eth0", "red", 2);
    assert!(!ok, "L2-only net2 must have no DHCP server: {env:?}");
    // L2 works: the guest on net2 reaches node2's address with a static IP.
    let o = sb.exec(
        &g2,
        &[
            "sh",
            "-ec",
            "ip addr add 10.245.2.50/24 dev eth0; busybox ping -c 2 -W 3 10.245.2.1",
        ],
    );
    assert_ok(&o, "L2 ping on net2");
    for port in ["sbg1", "sbg2"] {
        let _ = Command::new("ip")
            .args(["-n", &sb.name, "link", "del", port])
            .status();
    }
    assert_eq!(served.terminate(), 0);
    let after = sb.snapshot();
    assert!(before == after, "{}", diff(&before, &after));
}

/// In a real pod `/proc/sys` is mounted read-only. The bridge binding must still plumb: its
/// only sysctl (`net.ipv4.conf.k6t-eth0.arp_ignore=1`) is set over rtnetlink. The launcher
/// runs in a private mount namespace where `/proc/sys` is bind-mounted read-only.
#[test]
fn bridge_setup_succeeds_with_read_only_proc_sys() {
    let sb = Sandbox::create("flannel");
    let before = sb.snapshot();
    let vmi = sb.vmi(POD_BRIDGE);
    let run_dir = sb.run_dir();
    let script = format!(
        "mount --make-rprivate / && mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
         if echo 0 > /proc/sys/net/ipv4/conf/lo/arp_ignore 2>/dev/null; then echo '/proc/sys is still writable' >&2; exit 99; fi && \
         exec {} network setup --vmi {vmi} --run-dir {run_dir} --log-format json",
        launcher_bin()
    );
    let o = sb.exec(&sb.name, &["unshare", "-m", "sh", "-c", &script]);
    assert_ok(&o, "network setup with a read-only /proc/sys");
    let arp = sb.exec(
        &sb.name,
        &["cat", "/proc/sys/net/ipv4/conf/k6t-eth0/arp_ignore"],
    );
    assert_ok(&arp, "reading arp_ignore");
    assert_eq!(String::from_utf8_lossy(&arp.stdout).trim(), "1");
    let o = sb.launcher(&vmi, &["teardown"], &[]).output().unwrap();
    assert_ok(&o, "network teardown");
    assert!(before == sb.snapshot(), "{}", diff(&before, &sb.snapshot()));
}
