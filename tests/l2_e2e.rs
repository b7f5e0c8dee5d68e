//! End to end with real guests (issue 7): `launcher run --accel tcg` boots the tiny test guest
//! (scripts/build-test-guest.sh, kernelBoot) in a sandbox pod on the macvtap binding and on the
//! tc-redirect binding. For each:
//! - the guest gets the pod IP (and the router, MTU) from our DHCP server, and it does so with
//!   the pod's MAC: the node's neighbour entry for the pod IP is the pod's original MAC;
//! - the guest's DHCP never reaches the node (a UDP 67 witness in the node namespace counts 0);
//! - the guest pings the node (`guest.ping=`), and the node reaches the guest's TCP listener
//!   at the pod IP (`guest.listen=`, the guest answers `HELLO-FROM-GUEST`);
//! - SIGTERM: the guest powers off, the launcher exits 0, and the pod's network equals its
//!   snapshot from before (links, addresses, routes, MACs, nftables, sysctls: `sandbox.sh
//!   snapshot`; qdiscs and tc filters: `support::tc_snapshot`); no process is left.
//!
//! Needs root (panics otherwise). One TCG guest at a time (a mutex), so the two cases stay fast
//! on 2 cores.

mod support;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::run::{tail, KillOnDrop};
use support::{line_diff, require_root, tc_snapshot, Sandbox, Style, UdpWitness};

const PORT: u16 = 8080;

struct Case {
    sb: Sandbox,
    dir: tempfile::TempDir,
    uid: &'static str,
}

impl Case {
    fn new(style: Style, uid: &'static str, iface: &str) -> Case {
        Case::new_with(style, uid, iface, "", "", "")
    }

    /// `more_ifaces`/`more_nets` are appended to the interface and network lists; `more_ping`
    /// adds addresses to `guest.ping=`.
    fn new_with(
        style: Style,
        uid: &'static str,
        iface: &str,
        more_ifaces: &str,
        more_nets: &str,
        more_ping: &str,
    ) -> Case {
        require_root();
        let sb = Sandbox::create(style);
        let dir = support::run::case_dir(&format!("l2-e2e-{}-", sb.name), true);
        let ping = if more_ping.is_empty() {
            sb.info().node_ip.clone()
        } else {
            format!("{},{more_ping}", sb.info().node_ip)
        };
        let args = support::guest_cmdline(&format!("guest.ping={ping} guest.listen={PORT}"));
        let kb = support::run::kernel_boot_yaml(&args);
        let vmi = format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: l2-e2e, namespace: default, uid: {uid}}}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    cpu: {{cores: 1}}
    memory: {{guest: 256Mi}}
{kb}        - {{name: default, {iface}}}{more_ifaces}
  networks:
    - name: default
      pod: {{}}{more_nets}
"#
        );
        std::fs::write(dir.path().join("vmi.yaml"), vmi).unwrap();
        Case { sb, dir, uid }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn log(&self) -> PathBuf {
        self.path("launcher.log")
    }

    /// `launcher <args> --vmi … --run-dir …` in the pod (output collected).
    fn launcher(&self, args: &[&str]) -> std::process::Output {
        let bin = support::launcher_bin();
        let vmi = self.path("vmi.yaml");
        let rd = self.path("run");
        let mut full = vec![bin.to_str().unwrap()];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--vmi", vmi.to_str().unwrap()]);
        full.extend_from_slice(&["--run-dir", rd.to_str().unwrap()]);
        self.sb.exec(&full)
    }

    fn spawn_run(&self) -> Child {
        let cmd = support::run::run_cmd(&self.sb, self.dir.path(), &[], &[]);
        support::run::spawn_logged(cmd, &self.log())
    }

    fn serial(&self) -> PathBuf {
        support::run::serial_log(&self.path("run"), self.uid)
    }
}

/// busybox nc from the node to `host:port`, sending one line; (exit ok, output).
fn node_nc(sb: &Sandbox, host: &str, port: u16) -> (bool, String) {
    use std::io::Write;
    let mut child = sb
        .node_cmd(&[
            "timeout",
            "10",
            "busybox",
            "nc",
            "-w",
            "5",
            host,
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let o = child.wait_with_output().unwrap();
    (o.status.success(), support::show(&o))
}

/// The whole scenario; `check_plumbing` asserts the binding's own devices while the VM runs.
fn run_case(case: &Case, binding: &str, check_plumbing: impl Fn(&Case)) {
    // One guest at a time, in this process and in any other checkout's tests on this machine.
    let _one = support::host_lock("macvtap-guests");
    let info = case.sb.info().clone();
    let calico = info.style == "calico";

    // validate and run agree: validate accepts what run will plumb.
    let o = case.launcher(&["validate"]);
    assert!(
        o.status.success(),
        "launcher validate refused the {binding} VMI:\n{}",
        support::show(&o)
    );

    let before = case.sb.snapshot();
    let tc_before = tc_snapshot(&case.sb);
    // Any DHCP that leaks from the pod to the node lands here.
    let witness = UdpWitness::start(&info.node_netns, 67);

    let mut run = KillOnDrop(case.spawn_run());
    let (found, text) =
        support::wait_for_text(&case.serial(), "GUEST-READY", support::guest_boot_timeout());
    assert!(
        found,
        "{binding}: GUEST-READY not on the serial console.\nserial:\n{text}\nlauncher log:\n{}",
        tail(&case.log())
    );
    let dhcp = support::marker_lines(&text, "GUEST-DHCP");
    assert_eq!(dhcp.len(), 1, "one DHCP line expected:\n{text}");
    let d = &dhcp[0];
    let (mask, router) = if calico {
        ("32", "169.254.1.1")
    } else {
        ("24", info.gateway.as_str())
    };
    assert!(
        d.contains(&format!("ip={} ", info.pod_ip)),
        "{binding}: the guest must get the pod IP: {d}"
    );
    assert!(d.contains(&format!("mask={mask} ")), "{d}");
    assert!(d.contains(&format!("router={router} ")), "{d}");
    assert!(d.contains(&format!("mtu={}", info.mtu)), "{d}");
    assert!(
        text.contains(&format!("GUEST-PING ip={} ok", info.node_ip)),
        "{binding}: the guest must ping the node:\n{text}"
    );
    assert!(
        text.contains(&format!("GUEST-LISTEN port={PORT}")),
        "{text}"
    );

    check_plumbing(case);

    // The node reaches the guest's port at the pod IP.
    let (ok, out) = node_nc(&case.sb, &info.pod_ip, PORT);
    assert!(
        ok && out.contains("HELLO-FROM-GUEST"),
        "{binding}: node → {}:{PORT}: {out}",
        info.pod_ip
    );
    // On the wire the guest is the pod's MAC.
    let neigh = case
        .sb
        .node_ok(&["ip", "neigh", "show", "to", &info.pod_ip]);
    assert!(
        neigh.contains(&info.pod_mac),
        "{binding}: the node sees {} at {neigh:?}, not at the pod's MAC {}",
        info.pod_ip,
        info.pod_mac
    );
    // The guest's DHCP stayed in the pod.
    assert_eq!(
        witness.count(),
        0,
        "{binding}: DHCP from the pod reached the node"
    );

    // SIGTERM: ACPI power-off, teardown, exit 0.
    support::run::sigterm_expect_exit_0(
        &mut run.0,
        &format!("{binding}: "),
        &case.path("termination-log"),
        &case.log(),
    );
    let serial = std::fs::read_to_string(case.serial()).unwrap_or_default();
    assert!(
        serial.contains("GUEST-ACPI-POWEROFF"),
        "{binding}: SIGTERM must power the guest off gracefully:\n{serial}"
    );

    // Nothing is left: processes, links, addresses, routes, MACs, nft, sysctls, tc.
    support::run::assert_no_pod_processes(&case.sb);
    let after = case.sb.snapshot();
    assert!(
        before == after,
        "{binding}: the pod differs from its snapshot before the run:\n{}",
        line_diff(&before, &after)
    );
    let tc_after = tc_snapshot(&case.sb);
    assert!(
        tc_before == tc_after,
        "{binding}: qdiscs/filters differ:\n{}",
        line_diff(&tc_before, &tc_after)
    );
    assert!(!case.path("run/network-state.json").exists());
}

#[test]
fn macvtap_real_guest_dhcp_ping_port_and_exact_restore() {
    let case = Case::new(
        Style::Flannel,
        "6a1c0de5-0000-4000-8000-0000000a7001",
        "macvtap: {}",
    );
    run_case(&case, "macvtap", |c| {
        let info = c.sb.info();
        let mv =
            c.sb.exec_ok(&["ip", "-d", "link", "show", "dev", "macvtap0"]);
        assert!(mv.contains("macvtap mode bridge"), "{mv}");
        assert!(mv.contains(&info.pod_mac), "macvtap0 has the pod MAC: {mv}");
        assert!(mv.contains("macvtap0@eth0"), "{mv}");
        let links = c.sb.exec_ok(&["ip", "-br", "link"]);
        assert!(
            !links.contains("k6t-") && !links.contains("tap0 "),
            "no bridge, no tap: {links}"
        );
        let nft = c.sb.exec_ok(&["nft", "list", "tables"]);
        assert!(nft.contains("netdev launcher_dhcp_guard_eth0"), "{nft}");
    });
}

#[test]
fn tc_redirect_real_guest_dhcp_ping_port_and_exact_restore() {
    let case = Case::new(
        Style::Calico,
        "6a1c0de5-0000-4000-8000-0000000a7002",
        "binding: {name: tc-redirect}",
    );
    run_case(&case, "tc-redirect", |c| {
        let links = c.sb.exec_ok(&["ip", "-br", "link"]);
        assert!(!links.contains("k6t-"), "no bridge: {links}");
        let f =
            c.sb.exec_ok(&["tc", "filter", "show", "dev", "eth0", "ingress"]);
        assert!(f.contains("Egress Redirect to device tap0"), "{f}");
        let f =
            c.sb.exec_ok(&["tc", "filter", "show", "dev", "tap0", "ingress"]);
        assert!(f.contains("Egress Redirect to device eth0"), "{f}");
    });
}

/// dnsmasq in the secondary node namespace (the DHCP server of the Multus network); killed on
/// drop.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// macvtap on a Multus network whose pod interface already is a macvtap (made in the pod here,
/// as the macvtap CNI would): the guest's second NIC opens that device's `/dev/tapN`. The
/// guest gets its address on it from the secondary network's own DHCP server (dnsmasq in
/// node2; the launcher serves none there), pings node2 through it, and node2 reaches the
/// guest's port; the pod network (bridge) works alongside. SIGTERM restores the pod exactly,
/// including the macvtap's MAC.
#[test]
fn macvtap_on_multus_attaches_to_the_existing_macvtap_real_guest() {
    // One guest at a time, in this process and in any other checkout's tests on this machine.
    let _one = support::host_lock("macvtap-guests");
    const GUEST2_MAC: &str = "02:00:00:00:aa:01";
    const GUEST2_IP: &str = "10.245.7.55";
    let case = Case::new_with(
        Style::Flannel,
        "6a1c0de5-0000-4000-8000-0000000a7004",
        "bridge: {}",
        &format!(
            "\n        - {{name: sec, binding: {{name: macvtap}}, macAddress: \"{GUEST2_MAC}\"}}"
        ),
        "\n    - {name: sec, multus: {networkName: macvtap-net}}",
        "10.245.7.1",
    );
    let sec = case.sb.add_secondary("mvlow1", "l2", Some("10.245.7.0/24"));
    let node2_veth = sec["node_veth"].as_str().unwrap().to_string();
    // The macvtap the macvtap CNI would have made: net1 on the secondary link.
    case.sb.exec_ok(&[
        "ip",
        "link",
        "add",
        "net1",
        "link",
        "mvlow1",
        "address",
        "0a:58:0a:f5:07:05",
        "type",
        "macvtap",
        "mode",
        "bridge",
    ]);
    case.sb.exec_ok(&["ip", "link", "set", "net1", "up"]);
    let leases = case.path("dnsmasq.leases");
    let _dnsmasq = Dnsmasq(
        case.sb
            .node2_cmd(&[
                "dnsmasq",
                "--no-daemon",
                "--port=0",
                "--bind-interfaces",
                &format!("--interface={node2_veth}"),
                "--dhcp-range=10.245.7.50,10.245.7.60,255.255.255.0",
                &format!("--dhcp-host={GUEST2_MAC},{GUEST2_IP}"),
                "--dhcp-option=3",
                "--dhcp-option=6",
                &format!("--dhcp-leasefile={}", leases.display()),
                "--pid-file=",
                "--conf-file=/dev/null",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(case.path("dnsmasq.log")).unwrap())
            .spawn()
            .expect("starting dnsmasq in node2"),
    );
    let o = case.launcher(&["validate"]);
    assert!(o.status.success(), "validate: {}", support::show(&o));

    let before = case.sb.snapshot();
    let tc_before = tc_snapshot(&case.sb);
    let info = case.sb.info().clone();
    let mut run = KillOnDrop(case.spawn_run());
    let (found, text) =
        support::wait_for_text(&case.serial(), "GUEST-READY", support::guest_boot_timeout());
    assert!(
        found,
        "GUEST-READY not on the serial console.\nserial:\n{text}\nlauncher log:\n{}\ndnsmasq:\n{}",
        tail(&case.log()),
        tail(&case.path("dnsmasq.log"))
    );
    let dhcp = support::marker_lines(&text, "GUEST-DHCP");
    assert_eq!(dhcp.len(), 2, "two DHCP lines expected:\n{text}");
    assert!(
        dhcp[0].contains("iface=eth0") && dhcp[0].contains(&format!("ip={} ", info.pod_ip)),
        "the pod network (bridge): {dhcp:?}"
    );
    assert!(
        dhcp[1].contains("iface=eth1") && dhcp[1].contains(&format!("ip={GUEST2_IP} ")),
        "the Multus macvtap: the guest must get its address from the secondary network's \
         server through the pod's macvtap: {dhcp:?}\ndnsmasq:\n{}",
        tail(&case.path("dnsmasq.log"))
    );
    for ip in [info.node_ip.as_str(), "10.245.7.1"] {
        assert!(
            text.contains(&format!("GUEST-PING ip={ip} ok")),
            "the guest must ping {ip}:\n{text}"
        );
    }
    // The guest's NIC is the pod's macvtap, with the spec's MAC; no device was made for it.
    let l = case
        .sb
        .exec_ok(&["ip", "-d", "link", "show", "dev", "net1"]);
    assert!(l.contains(GUEST2_MAC), "net1 carries the guest MAC: {l}");
    let links = case.sb.exec_ok(&["ip", "-br", "link"]);
    assert!(
        !links.contains("macvtap1") && !links.contains("mvdhcp"),
        "{links}"
    );
    // node2 reaches the guest's port through the macvtap.
    let mut c = case.sb.node2_cmd(&[
        "timeout", "10", "busybox", "nc", "-w", "5", GUEST2_IP, "8080",
    ]);
    let o = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("HELLO-FROM-GUEST"),
        "node2 → {GUEST2_IP}:8080: {}",
        support::show(&o)
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let st = loop {
        if let Some(st) = run.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "launcher did not exit after SIGTERM; log:\n{}",
            tail(&case.log())
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(st.code(), Some(0), "log:\n{}", tail(&case.log()));
    std::thread::sleep(Duration::from_millis(500));
    let after = case.sb.snapshot();
    assert!(
        before == after,
        "the pod differs from its snapshot before the run:\n{}",
        line_diff(&before, &after)
    );
    let tc_after = tc_snapshot(&case.sb);
    assert!(
        tc_before == tc_after,
        "{}",
        line_diff(&tc_before, &tc_after)
    );
}
