//! Integration tests for the pod sandbox (`scripts/sandbox.sh`, `tests/support`) and the tiny
//! test guest (`scripts/build-test-guest.sh`). Need root; they fail loudly otherwise.
//!
//! Every test makes its own uniquely named sandbox, so they run in parallel with each other and
//! with other test binaries. The guest tests boot qemu with TCG directly (no libvirt).

mod support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON ({e}): {s}"))
}

/// `ip -j addr show dev IF` inside the pod: (mtu, ["addr/prefix", ...]) of one family.
fn pod_addrs(pod: &Sandbox, ifname: &str, family: &str) -> (u64, Vec<String>) {
    let v = json(&pod.exec_ok(&["ip", "-j", "addr", "show", "dev", ifname]));
    let link = &v[0];
    let addrs = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == family && a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    (link["mtu"].as_u64().unwrap(), addrs)
}

/// Routes of the main table as "dst via gw dev scope" strings.
fn routes(pod: &Sandbox, fam: &str) -> Vec<String> {
    let v = json(&pod.exec_ok(&["ip", "-j", fam, "route", "show"]));
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut s = r["dst"].as_str().unwrap().to_string();
            if let Some(g) = r["gateway"].as_str() {
                s += &format!(" via {g}");
            }
            s += &format!(" dev {}", r["dev"].as_str().unwrap());
            if let Some(sc) = r["scope"].as_str() {
                s += &format!(" scope {sc}");
            }
            s
        })
        .collect()
}

fn pod_pings(pod: &Sandbox, ip: &str) -> bool {
    pod.exec(&["busybox", "ping", "-c", "1", "-W", "3", ip])
        .status
        .success()
}

fn check_dns_and_hostname(pod: &Sandbox, hostname: &str, dual: bool) {
    let resolv = pod.exec_ok(&["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10\n"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local\n"),
        "{resolv}"
    );
    assert_eq!(
        resolv.contains("nameserver fd00:10:96::a\n"),
        dual,
        "{resolv}"
    );
    assert_eq!(pod.exec_ok(&["hostname"]).trim(), hostname);
    assert_eq!(pod.exec_ok(&["cat", "/etc/hostname"]).trim(), hostname);
    let hosts = pod.exec_ok(&["cat", "/etc/hosts"]);
    assert!(
        hosts.contains(&format!("10.244.1.5\t{hostname}")),
        "{hosts}"
    );
    // The host's own files are untouched.
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(
        !host_resolv.contains("10.96.0.10"),
        "host resolv.conf changed"
    );
}

#[test]
fn flannel_pod_has_its_network_identity() {
    require_root();
    let pod = Sandbox::create(Style::Flannel);
    let i = pod.info();
    assert_eq!(
        (i.style.as_str(), i.mtu, i.pod_prefix),
        ("flannel", 1450, 24)
    );
    assert_eq!(
        (i.gateway.as_str(), i.node_ip.as_str()),
        ("10.244.1.1", "10.244.1.1")
    );
    assert_eq!(i.pod_netns, pod.name);
    assert_eq!(i.node_netns, format!("{}-node", pod.name));
    assert_eq!(i.node_veth, format!("vp-{}", pod.name));
    assert!(i.pod_ip6.is_none());

    assert_eq!(
        pod_addrs(&pod, "eth0", "inet"),
        (1450, vec!["10.244.1.5/24".to_string()])
    );
    assert!(pod_addrs(&pod, "eth0", "inet6").1.is_empty());
    let r = routes(&pod, "-4");
    assert!(
        r.contains(&"default via 10.244.1.1 dev eth0".to_string()),
        "{r:?}"
    );
    assert!(
        r.contains(&"10.244.1.0/24 dev eth0 scope link".to_string()),
        "{r:?}"
    );
    // eth0 is a veth whose peer is the node-side veth, which carries the gateway.
    let link = json(&pod.exec_ok(&["ip", "-j", "-d", "link", "show", "dev", "eth0"]));
    assert_eq!(link[0]["linkinfo"]["info_kind"], "veth");
    assert_eq!(link[0]["address"].as_str(), Some(i.pod_mac.as_str()));
    let node = json(&pod.node_ok(&["ip", "-j", "addr", "show", "dev", &i.node_veth]));
    assert_eq!(node[0]["mtu"], 1450);
    assert_eq!(node[0]["addr_info"][0]["local"], "10.244.1.1");

    assert!(pod_pings(&pod, &i.node_ip), "pod cannot reach its node");
    assert!(
        pod_pings(&pod, &i.remote_ip),
        "pod cannot reach beyond its node"
    );
    check_dns_and_hostname(&pod, &pod.name, false);
}

#[test]
fn calico_pod_reaches_node_through_proxy_arp() {
    require_root();
    let pod = Sandbox::create(Style::Calico);
    let i = pod.info();
    assert_eq!((i.pod_prefix, i.gateway.as_str()), (32, "169.254.1.1"));
    assert_eq!(i.node_ip, "10.244.0.1");
    assert_eq!(
        pod_addrs(&pod, "eth0", "inet"),
        (1450, vec!["10.244.1.5/32".to_string()])
    );
    let r = routes(&pod, "-4");
    assert_eq!(
        r,
        vec![
            "default via 169.254.1.1 dev eth0".to_string(),
            "169.254.1.1 dev eth0 scope link".to_string()
        ]
    );
    // Node side: forwarding, proxy ARP on the pod's veth, a host route to the pod.
    let sysctl = |k: &str| pod.node_ok(&["sysctl", "-n", k]).trim().to_string();
    assert_eq!(sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(
        sysctl(&format!("net.ipv4.conf.{}.proxy_arp", i.node_veth)),
        "1"
    );
    let nr = pod.node_ok(&["ip", "route", "show", "10.244.1.5/32"]);
    assert!(nr.contains(&format!("dev {}", i.node_veth)), "{nr}");
    let node = json(&pod.node_ok(&["ip", "-j", "addr", "show", "dev", &i.node_veth]));
    assert_eq!(node[0]["address"], "ee:ee:ee:ee:ee:ee");
    assert!(
        node[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["family"] != "inet"),
        "calico's host-side veth has no IPv4 address"
    );

    // Only proxy ARP can answer the pod's ARP for 169.254.1.1.
    assert!(pod_pings(&pod, &i.node_ip), "pod cannot reach its node");
    let neigh = pod.exec_ok(&["ip", "neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("ee:ee:ee:ee:ee:ee"), "{neigh}");
    check_dns_and_hostname(&pod, &pod.name, false);
}

#[test]
fn dual_stack_pod_has_both_families() {
    require_root();
    let pod = Sandbox::create(Style::Dual);
    let i = pod.info();
    assert_eq!(i.pod_ip6.as_deref(), Some("fd00:10:244:1::5"));
    assert_eq!(i.gateway6.as_deref(), Some("fd00:10:244:1::1"));
    assert_eq!(i.node_ip6.as_deref(), Some("fd00:10:244:1::1"));
    assert_eq!(
        pod_addrs(&pod, "eth0", "inet"),
        (1450, vec!["10.244.1.5/24".to_string()])
    );
    assert_eq!(
        pod_addrs(&pod, "eth0", "inet6").1,
        vec!["fd00:10:244:1::5/64".to_string()]
    );
    let r6 = routes(&pod, "-6");
    assert!(
        r6.iter()
            .any(|r| r.starts_with("default via fd00:10:244:1::1 dev eth0")),
        "{r6:?}"
    );
    // No DAD: the address is usable at once.
    let a = pod.exec_ok(&["ip", "-6", "addr", "show", "dev", "eth0", "tentative"]);
    assert!(a.trim().is_empty(), "tentative addresses: {a}");
    assert!(pod_pings(&pod, &i.node_ip));
    assert!(pod_pings(&pod, i.node_ip6.as_deref().unwrap()));
    assert!(pod_pings(&pod, i.remote_ip6.as_deref().unwrap()));
    check_dns_and_hostname(&pod, &pod.name, true);
}

#[test]
fn mtu_and_hostname_are_configurable() {
    require_root();
    let pod = Sandbox::create_with(
        Style::Flannel,
        SandboxOpts {
            mtu: Some(1400),
            hostname: Some("vmi-fedora"),
        },
    );
    assert_eq!(pod.info().mtu, 1400);
    assert_eq!(pod_addrs(&pod, "eth0", "inet").0, 1400);
    let node = json(&pod.node_ok(&["ip", "-j", "link", "show", "dev", &pod.info().node_veth]));
    assert_eq!(node[0]["mtu"], 1400);
    check_dns_and_hostname(&pod, "vmi-fedora", false);
    // The host keeps its own hostname (private UTS namespace).
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "vmi-fedora");
}

#[test]
fn run_and_libvirt_dirs_are_private_and_persistent() {
    require_root();
    let pod = Sandbox::create(Style::Flannel);
    let other = Sandbox::create(Style::Flannel);
    let marker = format!("/run/sandbox-test-{}", pod.name);
    pod.sh(&format!(
        "echo one > {marker} && echo conf > /etc/libvirt/sandbox-test && mkdir -p /var/run/kubevirt-private"
    ));
    // A second exec sees the same private /run (a socket of a daemon started earlier would be
    // found); the host and the other pod do not.
    assert_eq!(pod.exec_ok(&["cat", &marker]).trim(), "one");
    assert!(pod
        .exec(&["test", "-d", "/var/run/kubevirt-private"])
        .status
        .success());
    assert!(!Path::new(&marker).exists(), "pod /run leaked to the host");
    assert!(!other.exec(&["test", "-e", &marker]).status.success());
    assert!(!Path::new("/etc/libvirt/sandbox-test").exists());
    assert!(!other
        .exec(&["test", "-e", "/etc/libvirt/sandbox-test"])
        .status
        .success());
    for d in [
        "/run",
        "/etc/libvirt",
        "/var/lib/libvirt",
        "/var/log/libvirt",
        "/var/cache/libvirt",
    ] {
        let fs = pod.exec_ok(&["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", d]);
        assert_eq!(fs.trim(), "tmpfs", "{d} is not a private tmpfs in the pod");
    }
    // /tmp stays shared (tests hand kernels and run dirs to the pod under /tmp).
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("shared");
    fs::write(&f, "x").unwrap();
    assert_eq!(pod.exec_ok(&["cat", f.to_str().unwrap()]), "x");
    // The pod sees its own devices in /sys.
    let sys = pod.exec_ok(&["ls", "/sys/class/net"]);
    assert_eq!(sys.split_whitespace().collect::<Vec<_>>(), ["eth0", "lo"]);
    // A long-running process in one exec is visible to the next (same namespaces).
    let mut child = pod.exec_spawn(&["sh", "-c", "echo $$ > /run/daemon.pid; exec sleep 100"]);
    let start = Instant::now();
    let pid = loop {
        let o = pod.exec(&["cat", "/run/daemon.pid"]);
        if o.status.success() {
            break stdout(&o).trim().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon.pid never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(pid, child.id().to_string());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Everything on the host that mentions sandbox `name`.
fn host_traces(name: &str) -> Vec<String> {
    let mut t = Vec::new();
    let ns = stdout(&run_ok(Command::new("ip").args(["netns", "list"])));
    for l in ns.lines() {
        let n = l.split_whitespace().next().unwrap_or("");
        if n == name || n.starts_with(&format!("{name}-")) {
            t.push(format!("netns {n}"));
        }
    }
    let links = json(&stdout(&run_ok(Command::new("ip").args(["-j", "link"]))));
    for l in links.as_array().unwrap() {
        let n = l["ifname"].as_str().unwrap_or("");
        if n.contains(name) {
            t.push(format!("host link {n}"));
        }
    }
    for l in fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if l.contains(&format!("/{name}")) {
            t.push(format!("mount {l}"));
        }
    }
    for p in [
        format!("/run/launcher-sandbox/{name}"),
        format!("/run/netns/{name}"),
        format!("/run/netns/{name}-node"),
    ] {
        if Path::new(&p).exists() {
            t.push(format!("file {p}"));
        }
    }
    t
}

fn wait_exit(child: &mut Child, what: &str) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} survived destroy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid_alive(pid: &str) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn destroy_leaves_nothing_behind() {
    require_root();
    let mut pod = Sandbox::create(Style::Calico);
    let name = pod.name.clone();
    pod.sh("ip link add br0 type bridge && ip link set br0 up");
    let guest = pod.add_guest("br0", "02:00:00:00:aa:01");
    pod.add_secondary("net1", "flannel", None);
    assert!(!host_traces(&name).is_empty());
    // Processes in each namespace, one of them orphaned (daemon-style) so no parent reaps it.
    let mut in_pod = pod.exec_spawn(&["sleep", "1000"]);
    let mut in_node = pod
        .node_cmd(&["sleep", "1000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut in_guest = guest.exec_spawn(&["sleep", "1000"]);
    let orphan = pod.sh("sleep 1000 >/dev/null 2>&1 & echo $!");
    let orphan = orphan.trim().to_string();
    assert!(pid_alive(&orphan));

    let t = Instant::now();
    pod.destroy();
    eprintln!("destroy took {:?}", t.elapsed());
    wait_exit(&mut in_pod, "a process in the pod");
    wait_exit(&mut in_node, "a process in the node namespace");
    wait_exit(&mut in_guest, "a process in the guest namespace");
    assert!(
        !pid_alive(&orphan),
        "orphaned pod process {orphan} survived destroy"
    );
    assert_eq!(host_traces(&name), Vec::<String>::new());
    // Idempotent.
    run_ok(Command::new(sandbox_script()).args(["destroy", &name]));
}

#[test]
fn failed_create_removes_the_half_made_pod() {
    require_root();
    for point in ["netns", "links", "mntns"] {
        let name = unique_name();
        let out = Command::new(sandbox_script())
            .args(["create", &name, "--style", "calico"])
            .env("SANDBOX_TEST_FAIL_AT", point)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("injected failure at \"{point}\"")),
            "{err}"
        );
        assert_eq!(
            host_traces(&name),
            Vec::<String>::new(),
            "after failing at {point}"
        );
    }
    // Bad arguments are refused before anything is made, with a clear message.
    let name = unique_name();
    let out = Command::new(sandbox_script())
        .args(["create", &name, "--style", "weave"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--style must be flannel, calico or dual")
    );
    let out = Command::new(sandbox_script())
        .args(["create", "much-too-long"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("1-8 characters"));
    assert_eq!(host_traces(&name), Vec::<String>::new());
}

#[test]
fn duplicate_create_is_refused_and_harmless() {
    require_root();
    let pod = Sandbox::create(Style::Flannel);
    let out = Command::new(sandbox_script())
        .args(["create", &pod.name])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // The existing pod is intact.
    assert!(pod_pings(&pod, &pod.info().node_ip));
    assert_eq!(pod.exec_ok(&["hostname"]).trim(), pod.name);
}

#[test]
fn snapshot_is_stable_and_sees_changes() {
    require_root();
    let pod = Sandbox::create(Style::Dual);
    let a = pod.snapshot();
    for section in [
        "### links",
        "### addresses",
        "### routes ipv4",
        "### routes ipv6",
        "### nftables",
        "### sysctls",
    ] {
        assert!(a.contains(section), "snapshot lacks {section}");
    }
    assert!(a.contains("fd00:10:244:1::5"));
    assert!(a.contains("net.ipv4.ip_forward = 0"), "sysctls missing");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(a, pod.snapshot(), "snapshot changes over time by itself");

    let changes: [(&str, &str); 5] = [
        (
            "ip addr add 192.0.2.9/32 dev eth0",
            "ip addr del 192.0.2.9/32 dev eth0",
        ),
        ("ip link set eth0 mtu 1400", "ip link set eth0 mtu 1450"),
        (
            "ip route add 198.51.100.0/24 via 10.244.1.1",
            "ip route del 198.51.100.0/24",
        ),
        (
            "nft add table inet sbxtest",
            "nft delete table inet sbxtest",
        ),
        (
            "sysctl -qw net.ipv4.conf.eth0.proxy_arp=1",
            "sysctl -qw net.ipv4.conf.eth0.proxy_arp=0",
        ),
    ];
    for (change, undo) in changes {
        pod.sh(change);
        assert_ne!(a, pod.snapshot(), "snapshot missed: {change}");
        pod.sh(undo);
        assert_eq!(
            a,
            pod.snapshot(),
            "snapshot differs after undoing: {change}"
        );
    }
}

#[test]
fn guest_stand_in_joins_a_pod_bridge() {
    require_root();
    let pod = Sandbox::create(Style::Flannel);
    pod.sh("ip link add br0 type bridge && ip addr add 192.0.2.1/24 dev br0 && ip link set br0 up");
    let g = pod.add_guest("br0", "02:00:00:00:aa:07");
    assert_eq!(g.netns, format!("{}-g1", pod.name));
    let link = json(&g.exec_ok(&["ip", "-j", "link", "show", "dev", "eth0"]));
    assert_eq!(link[0]["address"], "02:00:00:00:aa:07");
    assert_eq!(link[0]["mtu"], 1450);
    let port = json(&pod.exec_ok(&["ip", "-j", "link", "show", "master", "br0"]));
    assert_eq!(port.as_array().unwrap().len(), 1);
    g.sh("ip addr add 192.0.2.2/24 dev eth0");
    let ok = g
        .exec(&["busybox", "ping", "-c", "1", "-W", "3", "192.0.2.1"])
        .status
        .success();
    assert!(ok, "guest cannot reach the pod bridge");
    // The guest has its own hostname and /run, separate from the pod's.
    assert_eq!(g.exec_ok(&["hostname"]).trim(), g.netns);
    g.sh("touch /run/guest-only");
    assert!(!pod
        .exec(&["test", "-e", "/run/guest-only"])
        .status
        .success());
    // A second guest gets the next number; add-guest without a bridge is refused.
    let g2 = pod.add_guest("br0", "02:00:00:00:aa:08");
    assert_eq!(g2.netns, format!("{}-g2", pod.name));
    let out = Command::new(sandbox_script())
        .args([
            "add-guest",
            &pod.name,
            "--bridge",
            "nobr",
            "--mac",
            "02:00:00:00:aa:09",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no bridge \"nobr\""));
    let info = pod.info_fresh();
    assert_eq!(info.raw["guests"].as_array().unwrap().len(), 2);
}

#[test]
fn secondary_network_for_multus() {
    require_root();
    let pod = Sandbox::create(Style::Flannel);
    let s = pod.add_secondary("net1", "flannel", None);
    assert_eq!(s["pod_ip"], "10.245.1.5");
    assert_eq!(s["node_ip"], "10.245.1.1");
    assert_eq!(s["node_netns"], format!("{}-node2", pod.name));
    assert_eq!(
        pod_addrs(&pod, "net1", "inet"),
        (1450, vec!["10.245.1.5/24".to_string()])
    );
    assert!(pod_pings(&pod, "10.245.1.1"));
    // The default route stays on eth0.
    let r = routes(&pod, "-4");
    assert!(
        r.contains(&"default via 10.244.1.1 dev eth0".to_string()),
        "{r:?}"
    );
    let l2 = pod.add_secondary("net2", "l2", Some("10.246.0.0/16"));
    assert!(l2["pod_ip"].is_null());
    assert!(pod_addrs(&pod, "net2", "inet").1.is_empty());
    let out = run_ok(&mut pod.node2_cmd(&["ip", "-br", "addr"]));
    assert!(stdout(&out).contains("10.246.0.1/16"));
}

// ----------------------------------------------------------------------------------------------
// The tiny guest, booted directly under qemu TCG (no libvirt).

fn qemu_cmd(serial: &Path, cmdline: &str) -> Command {
    let g = test_guest();
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-accel",
        "tcg",
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-no-reboot",
    ])
    .args(["-display", "none", "-serial"])
    .arg(format!("file:{}", serial.display()))
    .arg("-kernel")
    .arg(&g.kernel)
    .arg("-initrd")
    .arg(&g.initrd)
    .args(["-append", &guest_cmdline(cmdline)]);
    c
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn test_guest_boots_under_tcg_without_nic() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("serial.log");
    let start = Instant::now();
    let errlog = tmp.path().join("qemu.stderr");
    let mut child = qemu_cmd(&serial, "guest.poweroff=0")
        .args(["-nic", "none"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&errlog).unwrap())
        .spawn()
        .expect("starting qemu-system-x86_64 (scripts/setup.sh installs it)");
    let (ready, log) = wait_for_text(&serial, "GUEST-READY", guest_boot_timeout());
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        let err = fs::read_to_string(&errlog).unwrap_or_default();
        panic!(
            "no GUEST-READY within {:?}; serial log:\n{log}\nqemu stderr:\n{err}",
            guest_boot_timeout()
        );
    }
    eprintln!("GUEST-READY after {:?}", start.elapsed());
    // The guest powers itself off (guest.poweroff=0): qemu exits cleanly.
    let status = wait_child(&mut child, Duration::from_secs(60)).expect("guest never powered off");
    assert!(status.success(), "qemu: {status}");
    let log = fs::read_to_string(&serial).unwrap();
    assert_eq!(marker_lines(&log, "GUEST-BOOT").len(), 1, "{log}");
    assert_eq!(
        marker_lines(&log, "GUEST-DHCP"),
        vec!["GUEST-DHCP none"],
        "{log}"
    );
    assert_eq!(marker_lines(&log, "GUEST-POWEROFF").len(), 1, "{log}");
}

/// Boots the guest with qemu's user-mode network (its built-in DHCP server at 10.0.2.2) inside
/// a sandbox pod, so nothing leaves namespaces we own: proves the DHCP client and lease report,
/// ping, the TCP listener, and that an ACPI power-button press powers the guest off.
#[test]
fn test_guest_dhcp_ping_listen_and_acpi_poweroff() {
    require_root();
    let pod = Sandbox::create(Style::Flannel);
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("serial.log");
    let mon = tmp.path().join("mon.sock");
    let mut qemu = qemu_cmd(&serial, "guest.ping=10.0.2.2 guest.listen=7777");
    // q35, as libvirt uses for KubeVirt's default machine type (the -nic none test uses pc).
    qemu.args(["-machine", "q35"])
        .args(["-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:7777-:7777"])
        .args([
            "-device",
            "virtio-net-pci,netdev=n0,mac=02:00:00:00:bb:01,romfile=",
        ])
        .arg("-monitor")
        .arg(format!("unix:{},server,nowait", mon.display()));
    let prog = qemu.get_program().to_str().unwrap().to_string();
    let args: Vec<String> = qemu
        .get_args()
        .map(|a| a.to_str().unwrap().to_string())
        .collect();
    let mut argv = vec![prog.as_str()];
    argv.extend(args.iter().map(String::as_str));
    let errlog = tmp.path().join("qemu.stderr");
    let mut child = pod
        .exec_cmd(&argv)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&errlog).unwrap())
        .spawn()
        .unwrap();

    let (ready, log) = wait_for_text(&serial, "GUEST-READY", guest_boot_timeout());
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        let err = fs::read_to_string(&errlog).unwrap_or_default();
        panic!("no GUEST-READY; serial log:\n{log}\nqemu stderr:\n{err}");
    }
    let dhcp = marker_lines(&log, "GUEST-DHCP");
    assert_eq!(dhcp.len(), 1, "{log}");
    assert!(
        dhcp[0].starts_with(
            "GUEST-DHCP iface=eth0 ip=10.0.2.15 mask=24 router=10.0.2.2 dns=10.0.2.3 "
        ),
        "{}",
        dhcp[0]
    );
    assert_eq!(
        marker_lines(&log, "GUEST-PING"),
        vec!["GUEST-PING ip=10.0.2.2 ok"]
    );
    assert_eq!(
        marker_lines(&log, "GUEST-LISTEN"),
        vec!["GUEST-LISTEN port=7777"]
    );
    // The listener answers (through qemu's port forward, inside the pod).
    let mut hello = String::new();
    for _ in 0..10 {
        hello = pod.exec_ok(&["sh", "-c", "busybox nc 127.0.0.1 7777 </dev/null || true"]);
        if !hello.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(hello, "HELLO-FROM-GUEST\n");

    // ACPI power button (what libvirt's shutdown sends): the guest powers off.
    let mut m = UnixStream::connect(&mon).expect("qemu monitor");
    m.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let _ = m.read(&mut buf);
    m.write_all(b"system_powerdown\n").unwrap();
    let status = wait_child(&mut child, Duration::from_secs(60));
    let log = fs::read_to_string(&serial).unwrap();
    assert!(
        status.is_some(),
        "guest ignored the ACPI power button:\n{log}"
    );
    assert_eq!(marker_lines(&log, "GUEST-ACPI-POWEROFF").len(), 1, "{log}");
}
