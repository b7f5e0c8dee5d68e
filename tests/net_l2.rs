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

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use launcher::net::discover::DiscoveredPod;
use launcher::net::plan::{plan, PlanOptions, Step, TcFilter};
use launcher::net::NetPlan;
use support::{Sandbox, Style};

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
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/net")
        .join(format!("{case}.json"));
    let text = serde_json::to_string_pretty(p).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with UPDATE_GOLDEN=1 cargo test --test net_l2 golden",
            path.display()
        )
    });
    assert!(
        want == text,
        "plan for {case} differs from {}; if intended, regenerate with UPDATE_GOLDEN=1 and review `git diff`\n--- got ---\n{text}",
        path.display()
    );
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
    assert!(tc[0].iter().any(|f| matches!(
        f,
        TcFilter::KeepLocalUdp { src_mac: Some(m), dport: 67 } if m.to_string() == pod_mac
    )));
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

/// The macvtap VMI, built without spec validation (which, owned by the spec module, still
/// refuses macvtap on the pod network).
fn macvtap_vmi() -> launcher::spec::Vmi {
    let v: serde_json::Value = serde_yaml_ng::from_str(MACVTAP_VMI).unwrap();
    serde_json::from_value(v).expect("macvtap fixture")
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
            Step::CreateBridge { .. } | Step::CreateTap { .. } | Step::NftTable { .. } => {
                panic!("macvtap plans have no bridge, tap or nft: {s:?}")
            }
            _ => {}
        }
    }
    assert!(set_mac_before_children, "eth0 gets another MAC first");
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

#[test]
fn golden_macvtap_calico() {
    let p = macvtap_plan(calico_eth0());
    check_macvtap_invariants(&p, "9e:3c:6f:12:34:56");
    golden("macvtap-calico", &p);
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
        let (tx, logs) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
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
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                if st.code() != Some(0) {
                    let logs: Vec<String> = self.logs.try_iter().collect();
                    eprintln!("launcher logs: {logs:#?}");
                }
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "launcher ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// busybox udhcpc in netns `ns` on eth0; the env of its `bound` event, if any.
fn udhcpc(ns: &str, dir: &Path, tries: u32) -> Option<std::collections::HashMap<String, String>> {
    use std::os::unix::fs::PermissionsExt;
    let out = dir.join("udhcpc");
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nenv > {}.$1.env\n", out.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "busybox", "udhcpc", "-f", "-q", "-n"])
        .args(["-t", &tries.to_string(), "-T", "1", "-i", "eth0", "-s"])
        .arg(&script)
        .args(["-O", "staticroutes", "-O", "mtu"])
        .output()
        .unwrap();
    if !o.status.success() {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("udhcpc.bound.env")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect(),
    )
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

    // The guest gets the pod's IP from our server on tap0.
    let env = udhcpc(&g.0, dir.path(), 5).expect("udhcpc got no lease through tc-redirect");
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

fn diff(a: &str, b: &str) -> String {
    let (a, b): (Vec<_>, Vec<_>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for l in &a {
        if !b.contains(l) {
            out += &format!("- {l}\n");
        }
    }
    for l in &b {
        if !a.contains(l) {
            out += &format!("+ {l}\n");
        }
    }
    out
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
// macvtap. `launcher network setup` runs spec validation, which (spec module) still refuses
// macvtap on the pod network; so this test drives the same library calls the command makes
// (`net::setup`, `Dhcp4Servers::start`, `net::teardown`) from a helper entry point of this
// test binary, run inside the pod by `sandbox.sh exec`.

/// Helper entry point (not a test of its own): run by `macvtap_flannel_*` inside the pod.
#[test]
#[ignore = "helper entry point: run inside a sandbox pod by the macvtap end-to-end test"]
fn macvtap_helper_in_pod() {
    let run_dir = std::env::var("NET_L2_RUN_DIR").expect("NET_L2_RUN_DIR (set by the test)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = launcher::net::SetupOptions {
            run_dir: run_dir.into(),
            tap_owner: "root".into(),
            resolv_conf: "/etc/resolv.conf".into(),
            hostname: None,
            network_status: None,
        };
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let result = launcher::net::setup(&opts, &macvtap_vmi())
            .await
            .expect("network setup (macvtap)");
        let servers = launcher::dhcp::server::Dhcp4Servers::start(result.dhcp_configs())
            .await
            .expect("starting DHCP");
        eprintln!("serving DHCP until SIGTERM");
        term.recv().await;
        servers.shutdown().await;
        launcher::net::teardown(&opts.run_dir)
            .await
            .expect("network teardown (macvtap)");
    });
}

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
    let before = sb.snapshot();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = sb.exec_cmd(&[
        exe.to_str().unwrap(),
        "macvtap_helper_in_pod",
        "--exact",
        "--ignored",
        "--nocapture",
    ]);
    cmd.env("NET_L2_RUN_DIR", &run_dir);
    let served = Served::spawn(cmd, &[("LAUNCHER_MACVTAP_STAND_IN", "1")]);

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
    let env = udhcpc(&g.0, dir.path(), 5).expect("udhcpc got no lease through macvtap");
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
