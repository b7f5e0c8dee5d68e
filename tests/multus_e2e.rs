//! End to end: Multus secondary networks and SR-IOV under `launcher run` (issue 7).
//!
//! - A sandbox pod with `eth0` plus a secondary veth to the pod's second "node" namespace
//!   (`scripts/sandbox.sh add-secondary`), both bridge-bound: the tiny guest (TCG) gets both
//!   addresses over DHCP, one server per interface, and pings both nodes. Once with ordinal
//!   naming (`net1`, no network status) and once with hashed naming (`pod16477688c0e`) and a
//!   `--network-status` file in the downward-API annotations format. Teardown restores the pod
//!   exactly (snapshot before == after).
//! - Refusals with nothing touched (no guest boots): a network status that puts the secondary
//!   network on another interface, and an SR-IOV interface whose VF is not in the pod (there is
//!   no VF on this machine), both exit 3 naming the network, with the pod unchanged and no
//!   recorded state.
//!
//! Needs root (panics otherwise). Guest cases are serialised within this binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::Duration;

use support::run::tail;
use support::{require_root, Sandbox, Style};

static GUEST_LOCK: Mutex<()> = Mutex::new(());

const UID: &str = "6a1c0de5-0000-4000-8000-0000000a17e5";

struct Case {
    pod: Sandbox,
    dir: tempfile::TempDir,
}

impl Case {
    /// A flannel-style pod with a secondary interface `ifname` (10.245.1.5/24, node2 at .1).
    fn new(ifname: &str) -> (Case, serde_json::Value) {
        require_root();
        let pod = Sandbox::create(Style::Flannel);
        let sec = pod.add_secondary(ifname, "flannel", Some("10.245.1.0/24"));
        let dir = support::run::case_dir("multus-e2e-", true);
        (Case { pod, dir }, sec)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Writes the VMI: `default` (pod network) and `blue` (multus `blue-net`) both bridge,
    /// plus `extra_ifaces`/`extra_nets` YAML list items.
    fn write_vmi(&self, kernel_args: &str, extra_ifaces: &str, extra_nets: &str) {
        let vmi = format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: multus
  namespace: default
  uid: {UID}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    cpu: {{cores: 1}}
    memory: {{guest: 256Mi}}
    resources: {{requests: {{memory: 256Mi}}}}
{kb}        - {{name: default, bridge: {{}}, macAddress: "02:00:00:00:a1:01"}}
        - {{name: blue, bridge: {{}}, macAddress: "02:00:00:00:a1:02"}}
{extra_ifaces}  networks:
    - {{name: default, pod: {{}}}}
    - {{name: blue, multus: {{networkName: blue-net}}}}
{extra_nets}"#,
            kb = support::run::kernel_boot_yaml(&support::guest_cmdline(kernel_args)),
        );
        std::fs::write(self.path("vmi.yaml"), vmi).unwrap();
    }

    fn log(&self) -> PathBuf {
        self.path("launcher.log")
    }

    /// `launcher run` inside the pod, with `extra` arguments (e.g. --network-status).
    fn spawn(&self, extra: &[&str]) -> Child {
        let cmd = support::run::run_cmd(&self.pod, self.dir.path(), &[], extra);
        support::run::spawn_logged(cmd, &self.log())
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.path(&format!("run/{UID}/virt-serial0-log")))
            .unwrap_or_default()
    }

    fn term(&self) -> String {
        std::fs::read_to_string(self.path("termination-log")).unwrap_or_default()
    }
}

fn wait_exit(child: &mut Child, timeout: Duration, log: &Path) -> ExitStatus {
    support::run::wait_exit(child, timeout, "", log, Duration::from_millis(100))
}

/// Boots the guest with the pod network and `blue` on `ifname`, plus, when `more` is set, two
/// more ordinal secondaries: `green` on `net2` (10.245.2.5/24, its own DHCP server) and `red` on
/// `net3` (L2 only: no address, so no server answers the guest there). Waits for poweroff and
/// checks every lease, the pings to every node address, and the exact restore.
fn both_networks(ifname: &str, with_status: bool, more: bool) {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let (c, sec) = Case::new(ifname);
    let info = c.pod.info().clone();
    let node2_ip = sec["node_ip"].as_str().expect("node_ip").to_string();
    let sec_ip = sec["pod_ip"].as_str().expect("pod_ip").to_string();
    assert_eq!(sec_ip, "10.245.1.5");
    let mut pings = vec![info.node_ip.clone(), node2_ip.clone()];
    let mut leases = vec![info.pod_ip.clone(), sec_ip.clone()];
    let (mut extra_ifaces, mut extra_nets) = (String::new(), String::new());
    if more {
        let green = c
            .pod
            .add_secondary("net2", "flannel", Some("10.245.2.0/24"));
        let red = c.pod.add_secondary("net3", "l2", Some("10.245.3.0/24"));
        assert_eq!(red["pod_ip"], serde_json::Value::Null, "{red}");
        pings.push(green["node_ip"].as_str().unwrap().to_string());
        leases.push(green["pod_ip"].as_str().unwrap().to_string());
        extra_ifaces = concat!(
            "        - {name: green, bridge: {}, macAddress: \"02:00:00:00:a1:03\"}\n",
            "        - {name: red, bridge: {}, macAddress: \"02:00:00:00:a1:04\"}\n"
        )
        .to_string();
        extra_nets = concat!(
            "    - {name: green, multus: {networkName: green-net}}\n",
            "    - {name: red, multus: {networkName: red-l2}}\n"
        )
        .to_string();
    }
    c.write_vmi(
        &format!("guest.ping={} guest.poweroff=1", pings.join(",")),
        &extra_ifaces,
        &extra_nets,
    );
    let mut extra: Vec<String> = Vec::new();
    if with_status {
        // The downward-API annotations file, as the kubelet writes it (Go-quoted values).
        let sec_mac = c
            .pod
            .exec_ok(&["cat", &format!("/sys/class/net/{ifname}/address")])
            .trim()
            .to_string();
        let status = serde_json::json!([
            {"name": "kindnet", "interface": "eth0", "ips": [info.pod_ip], "mac": info.pod_mac,
             "default": true, "dns": {}},
            {"name": "default/blue-net", "interface": ifname, "ips": [sec_ip], "mac": sec_mac,
             "dns": {}}
        ])
        .to_string();
        let quoted = format!("\"{}\"", status.replace('\\', "\\\\").replace('"', "\\\""));
        std::fs::write(
            c.path("annotations"),
            format!(
                "k8s.v1.cni.cncf.io/network-status={quoted}\nk8s.v1.cni.cncf.io/networks=\"blue-net\"\n"
            ),
        )
        .unwrap();
        extra.push("--network-status".into());
        extra.push(c.path("annotations").display().to_string());
    }
    let before = c.pod.snapshot();
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut child = c.spawn(&extra_refs);
    let st = wait_exit(
        &mut child,
        support::guest_boot_timeout() + Duration::from_secs(60),
        &c.log(),
    );
    let serial = c.serial();
    assert_eq!(
        st.code(),
        Some(0),
        "exit code; termination: {}\nserial:\n{serial}\nlog:\n{}",
        c.term(),
        tail(&c.log())
    );
    let dhcp = support::marker_lines(&serial, "GUEST-DHCP");
    let nics = leases.len() + usize::from(more);
    assert_eq!(dhcp.len(), nics, "{nics} DHCP lines expected:\n{serial}");
    assert!(
        dhcp.iter()
            .any(|d| d.contains(&format!("ip={} ", info.pod_ip))
                && d.contains(&format!("router={} ", info.gateway))),
        "no pod-network lease: {dhcp:?}"
    );
    for ip in &leases[1..] {
        assert!(
            dhcp.iter()
                .any(|d| d.contains(&format!("ip={ip} ")) && d.contains("mask=24 ")),
            "no secondary lease for {ip}: {dhcp:?}"
        );
    }
    // The L2-only network gets no lease: no server of ours serves it.
    assert_eq!(
        dhcp.iter().filter(|d| d.ends_with("failed")).count(),
        usize::from(more),
        "{dhcp:?}"
    );
    for ip in &pings {
        assert!(
            serial.contains(&format!("GUEST-PING ip={ip} ok")),
            "the guest must ping {ip}:\n{serial}"
        );
    }
    // The secondary interface was taken over under KubeVirt's names for `ifname`.
    let status: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(c.path("run/status.json")).expect("status.json"),
    )
    .expect("status.json is JSON");
    let want_tap = format!("tap{}", &ifname[3..]);
    assert_eq!(
        status["interfaces"][1]["device"],
        want_tap.as_str(),
        "{status}"
    );
    assert_eq!(
        status["interfaces"][1]["mac"], "02:00:00:00:a1:02",
        "{status}"
    );
    if more {
        assert_eq!(status["interfaces"][2]["device"], "tap2", "{status}");
        assert_eq!(status["interfaces"][3]["device"], "tap3", "{status}");
    }
    // The pod is exactly as before (links, addresses, routes, nft, sysctls).
    let after = c.pod.snapshot();
    assert_eq!(
        before, after,
        "the pod differs from its snapshot before the run"
    );
    assert!(
        !c.path("run/network-state.json").exists(),
        "the state file must be gone after a clean teardown"
    );
}

#[test]
fn ordinal_names_every_secondary_has_its_own_server_and_l2_only_gets_none() {
    both_networks("net1", false, true);
}

#[test]
fn hashed_name_with_a_network_status_file_guest_gets_both_addresses() {
    // KubeVirt's hashed name of the VMI network "blue": `printf blue | sha256sum` = 16477688c0e…
    both_networks("pod16477688c0e", true, false);
}

/// Runs `launcher run` expecting a refusal: exit 3, the message has every `wants`, and the pod
/// and the run dir show that nothing was touched.
fn refused(c: &Case, extra: &[&str], wants: &[&str]) {
    let before = c.pod.snapshot();
    let mut child = c.spawn(extra);
    let st = wait_exit(&mut child, Duration::from_secs(60), &c.log());
    let log = std::fs::read_to_string(c.log()).unwrap_or_default();
    assert_eq!(st.code(), Some(3), "exit code; log:\n{log}");
    for w in wants {
        assert!(
            log.contains(w) || c.term().contains(w),
            "{w:?} not in the error; log:\n{log}\ntermination: {}",
            c.term()
        );
    }
    assert_eq!(before, c.pod.snapshot(), "the pod changed");
    assert!(
        !c.path("run/network-state.json").exists(),
        "no network state may be recorded"
    );
    assert!(
        !c.path("run/domain.xml").exists(),
        "the launcher must stop before rendering"
    );
    let procs = Command::new("ip")
        .args(["netns", "pids", &c.pod.info().pod_netns])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&procs.stdout);
    assert!(pids.trim().is_empty(), "processes left in the pod: {pids}");
}

#[test]
fn status_naming_another_interface_is_refused_before_anything_is_touched() {
    let (c, _) = Case::new("net1");
    c.write_vmi("guest.poweroff=1", "", "");
    std::fs::write(
        c.path("status.json"),
        r#"[{"name": "kindnet", "interface": "eth0", "default": true},
            {"name": "default/blue-net", "interface": "net2", "ips": ["10.245.1.5"]},
            {"name": "default/other", "interface": "net1"}]"#,
    )
    .unwrap();
    let status = c.path("status.json").display().to_string();
    refused(
        &c,
        &["--network-status", &status],
        &["network \\\"blue\\\"", "ordinal", "\\\"net1\\\"", "net2"],
    );
}

#[test]
fn sriov_without_its_vf_is_refused_before_anything_is_touched() {
    let (c, _) = Case::new("net1");
    c.write_vmi(
        "guest.poweroff=1",
        "        - {name: fast, sriov: {}, pciAddress: \"0000:00:0a.0\", bootOrder: 3}\n",
        "    - {name: fast, multus: {networkName: sriov-net}}\n",
    );
    let status = c.path("status.json");
    std::fs::write(
        &status,
        r#"[{"name": "kindnet", "interface": "eth0", "default": true},
            {"name": "default/blue-net", "interface": "net1", "ips": ["10.245.1.5"]},
            {"name": "default/sriov-net", "interface": "net2", "mac": "02:00:00:00:a1:03",
             "device-info": {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:ff:1f.7"}}}]"#,
    )
    .unwrap();
    let status = status.display().to_string();
    refused(
        &c,
        &["--network-status", &status],
        &[
            "SR-IOV network \\\"fast\\\"",
            "0000:ff:1f.7",
            "/sys/bus/pci/devices",
        ],
    );
    // Without device-info: refused naming the network and the annotation.
    std::fs::write(
        c.path("status.json"),
        r#"[{"name": "default/blue-net", "interface": "net1"},
            {"name": "default/sriov-net", "interface": "net2"}]"#,
    )
    .unwrap();
    refused(
        &c,
        &["--network-status", &status],
        &[
            "SR-IOV network \\\"fast\\\"",
            "k8s.v1.cni.cncf.io/network-status",
            "device-info",
        ],
    );
}
