//! Integration tests of the masquerade binding's plumbing (issue 6 "Plumbing" and "DHCPv4 for
//! masquerade"). The NAT ruleset itself is tested in tests/nat.rs.
//!
//! - Golden plans (pure, no root): `tests/golden/net/masquerade-<case>.json`. Regenerate with
//!   `UPDATE_GOLDEN=1 cargo test --test net_masquerade golden`, then review
//!   `git diff tests/golden/net/masquerade-*`: every changed step must be explained by the code
//!   change (docs/masquerade.md lists what each step is for).
//! - Root tests in sandbox pods (`scripts/sandbox.sh`, via tests/support): `network setup
//!   --serve` with a masquerade VMI, a guest stand-in on `k6t-eth0` with the VM's MAC (busybox
//!   udhcpc, ping, nc), exact restoration after SIGTERM, crash convergence with
//!   `LAUNCHER_FAULT_AFTER_STEP`, IPv6 disabled in the pod, a failing `nft`. They panic when
//!   not run as root.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use launcher::net::binding::masquerade::{derived_mac, BRIDGE_MAC};
use launcher::net::discover::DiscoveredPod;
use launcher::net::plan::{plan, PlanOptions, Step};
use launcher::net::{NetError, NetPlan};
use support::{require_root, GuestNs, Sandbox, Style};

// ------------------------------------------------------------------------------------------
// Fixtures (pure tests).

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

fn dual_eth0() -> serde_json::Value {
    let mut v = flannel_eth0();
    v["addresses"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"address": "fd00:10:244:1::5", "prefix_len": 64, "flags": 0x02}));
    v["routes"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "::", "prefix_len": 0, "gateway": "fd00:10:244:1::1", "protocol": 3, "scope": 0, "metric": 1024}
    ));
    v
}

fn pod(eth0: serde_json::Value) -> DiscoveredPod {
    serde_json::from_value(serde_json::json!({
        "interfaces": [eth0],
        "dns": {
            "nameservers_v4": ["10.96.0.10"],
            "nameservers_v6": ["fd00:10:96::a"],
            "search": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        },
        "hostname": "testvm"
    }))
    .expect("fixture pod")
}

const MASQ: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: testvm, namespace: default, uid: 5a1f0c4e-0000-4000-8000-000000000001}
spec:
  domain:
    memory: {guest: 128Mi}
    devices:
      interfaces: [{name: default, masquerade: {}}]
  networks: [{name: default, pod: {}}]
";

fn vmi(yaml: &str) -> launcher::spec::Vmi {
    launcher::spec::parse_str(yaml, "fixture")
        .expect("fixture VMI")
        .vmi
}

fn opts() -> PlanOptions {
    PlanOptions {
        tap_owner: "root".into(),
    }
}

fn with_iface(extra: &str) -> String {
    MASQ.replace(
        "{name: default, masquerade: {}}",
        &format!("{{name: default, masquerade: {{}}{extra}}}"),
    )
}

fn golden(case: &str, p: &NetPlan) {
    support::golden::net_plan(
        &format!("masquerade-{case}.json"),
        case,
        p,
        "net_masquerade",
    );
}

fn ops(p: &NetPlan) -> Vec<String> {
    let v = serde_json::to_value(p).unwrap();
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let op = s["op"].as_str().unwrap().to_string();
            match s.get("path") {
                Some(path) => format!("{op} {}", path.as_str().unwrap()),
                None => op,
            }
        })
        .collect()
}

fn nat_config(p: &NetPlan) -> launcher::net::nat::NatConfig {
    p.steps
        .iter()
        .find_map(|s| match s {
            Step::MasqueradeNat { config } => Some(config.clone()),
            _ => None,
        })
        .expect("a masquerade-nat step")
}

#[test]
fn golden_v4() {
    let p = plan(&pod(flannel_eth0()), &vmi(MASQ), &opts()).unwrap();
    let r = &p.interfaces[0];
    assert_eq!(r.binding, "masquerade");
    assert_eq!(r.tap, "tap0");
    assert_eq!(r.bridge.as_deref(), Some("k6t-eth0"));
    assert_eq!(r.mtu, 1450);
    let ips: Vec<String> = r.guest_ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(ips, vec!["10.0.2.2"]);
    let d = r.dhcp.as_ref().unwrap();
    assert_eq!(d.interface, "k6t-eth0");
    assert_eq!(d.server_ip.to_string(), "10.0.2.1");
    assert_eq!(d.client_ip.to_string(), "10.0.2.2");
    assert_eq!(d.prefix_len, 24);
    assert_eq!(d.router.unwrap().to_string(), "10.0.2.1");
    assert!(d.routes.is_empty(), "{:?}", d.routes);
    assert_eq!(d.dns.len(), 1);
    assert_eq!(d.search.len(), 3);
    assert_eq!(d.hostname.as_deref(), Some("testvm"));
    assert_eq!(d.mtu, 1450);
    assert_eq!(d.client_mac, r.mac.0);
    // The pod's eth0 is never touched: no step names the pod interface.
    let json = serde_json::to_value(&p).unwrap();
    for s in json["steps"].as_array().unwrap() {
        assert!(s.get("link").is_none_or(|l| l.get("pod").is_none()), "{s}");
    }
    assert_eq!(
        ops(&p),
        vec![
            "create-bridge",
            "set-sysctl net/ipv4/conf/k6t-eth0/route_localnet",
            "add-addresses",
            "create-tap",
            "set-mtu",
            "set-master",
            "link-up",
            "link-up",
            "set-sysctl net/ipv4/ip_forward",
            "masquerade-nat",
        ]
    );
    let cfg = nat_config(&p);
    assert!(cfg.v6.is_none());
    assert_eq!(
        cfg.v4.as_ref().unwrap().pod_ips[0].to_string(),
        "10.244.1.5"
    );
    assert_eq!(cfg.pod_interface, "eth0");
    assert!(!cfg.istio);
    golden("v4", &p);
}

#[test]
fn golden_dual_stack() {
    let p = plan(&pod(dual_eth0()), &vmi(MASQ), &opts()).unwrap();
    let r = &p.interfaces[0];
    let ips: Vec<String> = r.guest_ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(ips, vec!["10.0.2.2", "fd10:0:2::2"]);
    let json = serde_json::to_value(&p).unwrap();
    let addrs = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["op"] == "add-addresses")
        .unwrap()["addresses"]
        .clone();
    assert_eq!(
        addrs,
        serde_json::json!([
            {"address": "10.0.2.1", "prefix_len": 24, "broadcast": "10.0.2.255"},
            {"address": "fd10:0:2::1", "prefix_len": 120, "flags": 2},
            {"address": "fe80::ff:fe00:0", "prefix_len": 64, "flags": 2}
        ])
    );
    // The IPv6 side of the result: DHCPv6 for fd10:0:2::2 to the VM's MAC only, and RAs with
    // the on-link prefix, the pod MTU and a non-zero router lifetime.
    let v6 = r
        .dhcp6
        .as_ref()
        .expect("dual-stack masquerade serves DHCPv6 and RAs");
    assert_eq!(v6.dhcp.interface, "k6t-eth0");
    assert_eq!(v6.dhcp.client_ip.to_string(), "fd10:0:2::2");
    assert_eq!(v6.dhcp.client_mac, r.mac.0);
    assert_eq!(v6.dhcp.server_mac, [2, 0, 0, 0, 0, 0]);
    assert_eq!(v6.dhcp.lifetime_secs, u32::MAX);
    assert_eq!(v6.ra.prefix, Some(("fd10:0:2::1".parse().unwrap(), 120)));
    assert_eq!(v6.ra.mtu, r.mtu);
    assert!(v6.ra.router_lifetime_secs >= 600);
    assert_eq!(p.result().dhcp6_configs().len(), 1);
    let o = ops(&p);
    assert!(
        o.contains(&"set-sysctl net/ipv6/conf/all/forwarding".to_string()),
        "{o:?}"
    );
    assert!(o.contains(&"set-sysctl net/ipv6/conf/k6t-eth0/disable_ipv6".to_string()));
    let cfg = nat_config(&p);
    assert_eq!(cfg.v6.as_ref().unwrap().guest.to_string(), "fd10:0:2::2");
    assert_eq!(
        cfg.v6.as_ref().unwrap().pod_ips[0].to_string(),
        "fd00:10:244:1::5",
        "link-local addresses are not pod IPs"
    );
    assert_eq!(cfg.v6.as_ref().unwrap().pod_ips.len(), 1);
    golden("dual-stack", &p);
}

#[test]
fn golden_ports() {
    let y = with_iface(
        ", ports: [{name: http, port: 8080}, {port: 5353, protocol: UDP}], portRanges: [{start: 30000, end: 30010}]",
    );
    let p = plan(&pod(flannel_eth0()), &vmi(&y), &opts()).unwrap();
    let cfg = nat_config(&p);
    assert_eq!(cfg.ports.len(), 2);
    assert_eq!(cfg.ports[0].port, 8080);
    assert_eq!(cfg.ports[1].port, 5353);
    assert_eq!(cfg.port_ranges.len(), 1);
    assert!(!cfg.forwards_everything());
    golden("ports", &p);
}

#[test]
fn golden_istio() {
    let y = MASQ.replace(
        "metadata: {name: testvm,",
        "metadata: {annotations: {sidecar.istio.io/inject: \"true\"}, name: testvm,",
    );
    let p = plan(&pod(dual_eth0()), &vmi(&y), &opts()).unwrap();
    let cfg = nat_config(&p);
    assert!(cfg.istio);
    golden("istio", &p);
    // "false" (or no annotation) is not Istio.
    let n = y.replace("\"true\"", "\"false\"");
    assert!(!nat_config(&plan(&pod(dual_eth0()), &vmi(&n), &opts()).unwrap()).istio);
}

#[test]
fn guest_mac_is_the_domain_stand_in_mac_and_stable() {
    let v = vmi(MASQ);
    let p1 = plan(&pod(flannel_eth0()), &v, &opts()).unwrap();
    let p2 = plan(&pod(dual_eth0()), &v, &opts()).unwrap();
    let mac = p1.interfaces[0].mac;
    assert_eq!(
        mac, p2.interfaces[0].mac,
        "the derived MAC must not depend on the pod"
    );
    assert_eq!(mac, derived_mac(&v, "default"));
    // The same MAC `launcher render` gives a NIC without macAddress.
    assert_eq!(
        mac.to_string(),
        launcher::domain::plan::derived_mac(&v, "default")
    );
    assert_eq!(mac.0[0] & 0x03, 0x02, "locally administered unicast: {mac}");
    assert_ne!(mac, BRIDGE_MAC);
    assert_ne!(mac.to_string(), "0a:58:0a:f4:01:05", "not the pod's MAC");
    // Another VMI (uid) gets another MAC.
    let other = vmi(&MASQ.replace("000000000001", "000000000002"));
    assert_ne!(
        plan(&pod(flannel_eth0()), &other, &opts())
            .unwrap()
            .interfaces[0]
            .mac,
        mac
    );
    // The spec's macAddress wins.
    let y = with_iface(", macAddress: \"02:aa:bb:cc:dd:ee\"");
    let p = plan(&pod(flannel_eth0()), &vmi(&y), &opts()).unwrap();
    assert_eq!(p.interfaces[0].mac.to_string(), "02:aa:bb:cc:dd:ee");
    assert_eq!(
        p.interfaces[0].dhcp.as_ref().unwrap().client_mac,
        [2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]
    );
}

#[test]
fn reserved_mac_and_bad_inputs_are_refused_with_their_path() {
    use launcher::error::Classify;
    let y = with_iface(", macAddress: \"02:00:00:00:00:00\"");
    let e = plan(&pod(flannel_eth0()), &vmi(&y), &opts()).unwrap_err();
    assert!(e.to_string().contains("interfaces[0].macAddress"), "{e}");
    assert!(e.to_string().contains("reserved"), "{e}");
    assert_eq!(e.exit_kind().code(), 2);

    // An Istio-reserved port listed with Istio: refused at plan time (nothing is applied).
    let y = with_iface(", ports: [{port: 15021}]").replace(
        "metadata: {name: testvm,",
        "metadata: {annotations: {sidecar.istio.io/inject: \"true\"}, name: testvm,",
    );
    let e = plan(&pod(flannel_eth0()), &vmi(&y), &opts()).unwrap_err();
    assert!(matches!(e, NetError::InvalidSpec { .. }), "{e}");
    assert!(e.to_string().contains("15021"), "{e}");
    assert_eq!(e.exit_kind().code(), 2);

    // A VM network that contains the pod's address.
    let y = MASQ.replace("pod: {}", "pod: {vmNetworkCIDR: 10.244.0.0/16}");
    let e = plan(&pod(flannel_eth0()), &vmi(&y), &opts()).unwrap_err();
    assert!(
        e.to_string().contains("vmNetworkCIDR") && e.to_string().contains("10.244.1.5"),
        "{e}"
    );
    assert_eq!(e.exit_kind().code(), 2);
}

#[test]
fn custom_vm_network_cidrs() {
    let y = MASQ.replace(
        "pod: {}",
        "pod: {vmNetworkCIDR: 192.168.50.0/28, vmIPv6NetworkCIDR: \"fd20::/64\"}",
    );
    let p = plan(&pod(dual_eth0()), &vmi(&y), &opts()).unwrap();
    let r = &p.interfaces[0];
    let ips: Vec<String> = r.guest_ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(ips, vec!["192.168.50.2", "fd20::2"]);
    let d = r.dhcp.as_ref().unwrap();
    assert_eq!(
        (d.server_ip.to_string(), d.prefix_len),
        ("192.168.50.1".to_string(), 28)
    );
    let cfg = nat_config(&p);
    assert_eq!(cfg.v6.unwrap().gateway.to_string(), "fd20::1");
    let v6 = r.dhcp6.as_ref().unwrap();
    assert_eq!(v6.dhcp.client_ip.to_string(), "fd20::2");
    assert_eq!(v6.ra.prefix, Some(("fd20::1".parse().unwrap(), 64)));
}

#[test]
fn ipv6_only_pod_has_no_dhcpv4_and_no_ipv4_steps() {
    let mut eth0 = dual_eth0();
    eth0["addresses"]
        .as_array_mut()
        .unwrap()
        .retain(|a| !a["address"].as_str().unwrap().contains('.'));
    let p = plan(&pod(eth0), &vmi(MASQ), &opts()).unwrap();
    assert!(p.interfaces[0].dhcp.is_none());
    assert!(
        p.interfaces[0].dhcp6.is_some(),
        "IPv6 only: DHCPv6 and RAs still served"
    );
    let o = ops(&p);
    assert!(!o.iter().any(|s| s.contains("ipv4")), "{o:?}");
    assert!(nat_config(&p).v4.is_none());
}

#[test]
fn ipv4_only_pod_has_no_dhcpv6() {
    let p = plan(&pod(flannel_eth0()), &vmi(MASQ), &opts()).unwrap();
    assert!(p.interfaces[0].dhcp.is_some());
    assert!(p.interfaces[0].dhcp6.is_none());
    assert!(p.result().dhcp6_configs().is_empty());
    let json = serde_json::to_value(&p).unwrap();
    assert!(
        json["interfaces"][0].get("dhcp6").is_none(),
        "no dhcp6 key without IPv6 (plans of other bindings are unchanged)"
    );
}

// ------------------------------------------------------------------------------------------
// Root tests in sandbox pods.

/// A scratch directory visible from the pod's mount namespace (/tmp is shared).
fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("net-masq-{tag}-"))
        .tempdir()
        .unwrap()
}

struct Pod {
    sb: Sandbox,
    dir: tempfile::TempDir,
}

impl Pod {
    fn new(style: Style) -> Pod {
        require_root();
        let sb = Sandbox::create(style);
        let dir = scratch(&sb.name);
        Pod { sb, dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn vmi(&self, yaml: &str) -> String {
        let p = self.path("vmi.yaml");
        std::fs::write(&p, yaml).unwrap();
        p.display().to_string()
    }

    /// `launcher network <args> --vmi F --run-dir D` inside the pod.
    fn launcher(&self, vmi: &str, args: &[&str], env: &[(&str, String)]) -> Command {
        let run_dir = self.path("run").display().to_string();
        let bin = env!("CARGO_BIN_EXE_launcher");
        let mut full = vec![bin, "network"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--vmi", vmi, "--run-dir", &run_dir, "--log-format", "json"]);
        let mut c = self.sb.exec_cmd(&full);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, vmi: &str, args: &[&str], env: &[(&str, String)]) -> Output {
        self.launcher(vmi, args, env).output().unwrap()
    }
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}",
        o.status,
        support::show(o)
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

/// `network setup --serve` running in a pod; killed on drop.
struct Served {
    child: Child,
    result: serde_json::Value,
    logs: mpsc::Receiver<String>,
    /// The log lines read while waiting for the servers to start.
    early: Vec<String>,
}

impl Served {
    fn start(pod: &Pod, vmi: &str) -> Served {
        let mut child = pod
            .launcher(vmi, &["setup", "--serve"], &[])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting launcher network setup --serve");
        let logs = support::serve::stderr_lines(&mut child);
        let result = support::serve::read_result(&mut child, &logs, Duration::from_millis(200));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut early = Vec::new();
        loop {
            match logs.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains("serving DHCP") => {
                    early.push(l);
                    break;
                }
                Ok(l) => early.push(l),
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
            early,
        }
    }

    fn mac(&self) -> String {
        self.result["interfaces"][0]["mac"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// SIGTERM; returns the exit code and every log line.
    fn terminate_with_logs(mut self) -> (i32, Vec<String>) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let st = self.child.wait().unwrap();
        // The reader thread ends at EOF.
        let mut logs = std::mem::take(&mut self.early);
        while let Ok(l) = self.logs.recv_timeout(Duration::from_secs(5)) {
            logs.push(l);
        }
        (st.code().unwrap_or(-1), logs)
    }

    /// SIGTERM; returns the exit code.
    fn terminate(mut self) -> i32 {
        support::serve::terminate(&mut self.child, &self.logs)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        support::serve::kill_unless_exited(&mut self.child);
    }
}

/// ISC `dhclient -6` (DUID-LL) in a guest stand-in, in the foreground, until its script sees
/// a `BOUND6` (or, with `-S`, the information reply) or `secs` pass; then it is killed.
/// Returns the script's environment for that event, or `None`. Waits for the guest's
/// link-local address first (dhclient cannot bind while it is tentative).
fn dhclient6(
    pod: &Pod,
    guest: &GuestNs,
    tag: &str,
    extra: &[&str],
    secs: u64,
) -> Option<HashMap<String, String>> {
    use std::os::unix::fs::PermissionsExt;
    let out = pod.path(&format!("dhclient6-{tag}"));
    let script = pod.path(&format!("dhclient6-{tag}.sh"));
    // Apply the address like dhclient-script would (nodad: the test wants it at once), and
    // record the environment of the event that carries the configuration.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh
case \"$reason\" in BOUND6|REBIND6|RENEW6) \
             ip -6 addr replace \"$new_ip6_address/$new_ip6_prefixlen\" dev \"$interface\" nodad;; esac\n\
             case \"$reason\" in BOUND6|REBIND6|RENEW6|*INFORM*|*STATELESS*) env > {o}.tmp && mv {o}.tmp {o}.env;; esac\n",
            o = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lf = pod.path(&format!("dhclient6-{tag}.leases"));
    let pf = pod.path(&format!("dhclient6-{tag}.pid"));
    let mut cmd = format!(
        "for i in $(seq 100); do ip -6 addr show dev eth0 scope link -tentative | grep -q fe80 && break; sleep 0.1; done; \
         exec dhclient -6 -d -v -D LL -sf {} -lf {} -pf {}",
        script.display(),
        lf.display(),
        pf.display()
    );
    for e in extra {
        cmd.push(' ');
        cmd.push_str(e);
    }
    cmd.push_str(" eth0");
    let mut child = guest
        .exec_cmd(&["sh", "-c", &cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(pod.path(&format!("dhclient6-{tag}.log"))).unwrap())
        .spawn()
        .expect("starting dhclient -6");
    let env_path = pod.path(&format!("dhclient6-{tag}.env"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline && !env_path.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Ok(pid) = std::fs::read_to_string(&pf) {
        let _ = Command::new("kill")
            .arg(pid.trim())
            .stderr(Stdio::null())
            .status();
    }
    let text = std::fs::read_to_string(&env_path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn dhclient6_log(pod: &Pod, tag: &str) -> String {
    std::fs::read_to_string(pod.path(&format!("dhclient6-{tag}.log"))).unwrap_or_default()
}

/// Waits until the guest stand-in has an IPv6 default route (from our RA); returns `ip -6
/// route` output.
fn wait_ra_default_route(guest: &GuestNs) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = guest.exec_ok(&["ip", "-6", "route", "show"]);
        if r.lines().any(|l| l.starts_with("default")) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The guest stand-in's IPv6 configuration from our servers alone: the RA gives the default
/// route via the bridge's link-local address, the on-link prefix and the MTU; DHCPv6 gives
/// fd10:0:2::2, DNS and the search list. Returns the dhclient environment.
fn guest_v6_from_ra_and_dhcpv6(pod: &Pod, guest: &GuestNs, tag: &str) -> HashMap<String, String> {
    let info = pod.sb.info();
    // Solicit at once rather than waiting for a periodic RA.
    let routes = wait_ra_default_route(guest);
    assert!(
        routes.contains("default via fe80::ff:fe00:0 dev eth0"),
        "no default route from our RA:\n{routes}"
    );
    assert!(
        routes.contains("fd10:0:2::/120 dev eth0"),
        "no on-link prefix route from our RA:\n{routes}"
    );
    assert_eq!(
        guest
            .exec_ok(&["cat", "/proc/sys/net/ipv6/conf/eth0/mtu"])
            .trim(),
        info.mtu.to_string(),
        "MTU option of the RA"
    );
    let env = dhclient6(pod, guest, tag, &[], 30)
        .unwrap_or_else(|| panic!("dhclient -6 got no lease:\n{}", dhclient6_log(pod, tag)));
    assert_eq!(
        env.get("reason").map(String::as_str),
        Some("BOUND6"),
        "{env:?}"
    );
    assert_eq!(
        env.get("new_ip6_address").map(String::as_str),
        Some("fd10:0:2::2"),
        "{env:?}"
    );
    assert_eq!(
        env.get("new_dhcp6_name_servers").map(String::as_str),
        Some("fd00:10:96::a"),
        "{env:?}"
    );
    assert_eq!(
        env.get("new_dhcp6_domain_search").map(String::as_str),
        Some("default.svc.cluster.local. svc.cluster.local. cluster.local."),
        "{env:?}"
    );
    assert_eq!(
        env.get("new_dhcp6_server_id").map(String::as_str),
        Some("0:3:0:1:2:0:0:0:0:0"),
        "DUID-LL of 02:00:00:00:00:00: {env:?}"
    );
    env
}

/// busybox udhcpc in the guest; returns (success, env of the `bound` event).
fn udhcpc(pod: &Pod, guest: &GuestNs, tag: &str, tries: u32) -> (bool, HashMap<String, String>) {
    let tag = format!("udhcpc-{tag}");
    let script = support::dhcp_client::udhcpc_script(pod.dir.path(), &tag);
    let args = support::dhcp_client::udhcpc_args(
        tries,
        1,
        "eth0",
        &script,
        &["search", "mtu", "hostname", "domain"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = guest.exec(&args);
    (
        o.status.success(),
        support::dhcp_client::udhcpc_bound(pod.dir.path(), &tag),
    )
}

/// A one-shot busybox nc listener in the guest; `received()` waits for it to end.
struct NcListener {
    child: Child,
}

impl NcListener {
    fn start(guest: &GuestNs, port: u16, secs: u32) -> NcListener {
        let p = port.to_string();
        let s = secs.to_string();
        let child = guest.exec_spawn(&["timeout", &s, "busybox", "nc", "-l", "-p", &p]);
        // Wait until it listens (IPv4 or IPv6 wildcard).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let o = guest.exec(&["ss", "-Hltn", &format!("sport = :{port}")]);
            if !support::stdout(&o).trim().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nc in the guest did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        NcListener { child }
    }

    /// What the listener received (after its one connection, or its timeout).
    fn received(self) -> String {
        let o = self.child.wait_with_output().unwrap();
        support::stdout(&o)
    }
}

/// `echo MSG | busybox nc -w 3 HOST PORT` through `cmd` (node or pod); true when it connected.
fn nc_send(mut cmd: Command, msg: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{msg}\n").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (o.status.success(), support::show(&o))
}

fn nc_args(host: &str, port: u16) -> Vec<String> {
    vec![
        "timeout".into(),
        "8".into(),
        "busybox".into(),
        "nc".into(),
        "-w".into(),
        "3".into(),
        host.into(),
        port.to_string(),
    ]
}

fn node_nc(pod: &Pod, host: &str, port: u16) -> Command {
    let a = nc_args(host, port);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pod.sb.node_cmd(&a)
}

fn pod_nc(pod: &Pod, host: &str, port: u16) -> Command {
    let a = nc_args(host, port);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pod.sb.exec_cmd(&a)
}

const LISTED: u16 = 8080;
const UNLISTED: u16 = 9090;

fn masq_with_ports() -> String {
    with_iface(&format!(", ports: [{{name: http, port: {LISTED}}}]"))
}

/// Issue 6, end to end with a guest stand-in, in a pod of `style`.
fn end_to_end(style: Style) {
    let pod = Pod::new(style);
    let info = pod.sb.info().clone();
    let dual = style == Style::Dual;
    let before = pod.sb.snapshot();
    let vmi = pod.vmi(&masq_with_ports());
    let served = Served::start(&pod, &vmi);
    let mac = served.mac();
    let r = &served.result["interfaces"][0];
    assert_eq!(r["binding"], "masquerade");
    assert_eq!(r["tap"], "tap0");

    // The plumbing: bridge MAC, gateway addresses, tap on the bridge, eth0 untouched.
    let br = pod
        .sb
        .exec_ok(&["ip", "-j", "-d", "addr", "show", "dev", "k6t-eth0"]);
    let br: serde_json::Value = serde_json::from_str(&br).unwrap();
    assert_eq!(br[0]["address"], "02:00:00:00:00:00", "{br}");
    let addrs: Vec<String> = br[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert!(addrs.contains(&"10.0.2.1/24".to_string()), "{addrs:?}");
    assert_eq!(
        addrs.contains(&"fd10:0:2::1/120".to_string()),
        dual,
        "{addrs:?}"
    );
    let tap = pod
        .sb
        .exec_ok(&["ip", "-j", "-d", "link", "show", "dev", "tap0"]);
    let tap: serde_json::Value = serde_json::from_str(&tap).unwrap();
    assert_eq!(tap[0]["master"], "k6t-eth0");
    assert_eq!(tap[0]["mtu"], info.mtu);
    let eth0 = pod
        .sb
        .exec_ok(&["ip", "-br", "addr", "show", "dev", "eth0"]);
    assert!(eth0.contains(&info.pod_ip), "the pod keeps its IP: {eth0}");
    assert_eq!(
        pod.sb
            .exec_ok(&["cat", "/proc/sys/net/ipv4/conf/k6t-eth0/route_localnet"])
            .trim(),
        "1"
    );
    assert_eq!(
        pod.sb
            .exec_ok(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1"
    );
    if dual {
        assert_eq!(
            pod.sb
                .exec_ok(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
                .trim(),
            "1"
        );
    }

    // The guest stand-in on the bridge with the VM's MAC: DHCPv4 from our server.
    let guest = pod.sb.add_guest("k6t-eth0", &mac);
    let (ok, env) = udhcpc(&pod, &guest, "guest", 5);
    assert!(ok, "udhcpc got no lease (env {env:?})");
    assert_eq!(
        env.get("ip").map(String::as_str),
        Some("10.0.2.2"),
        "{env:?}"
    );
    assert_eq!(env.get("mask").map(String::as_str), Some("24"), "{env:?}");
    assert_eq!(
        env.get("router").map(String::as_str),
        Some("10.0.2.1"),
        "{env:?}"
    );
    assert_eq!(
        env.get("serverid").map(String::as_str),
        Some("10.0.2.1"),
        "{env:?}"
    );
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
    assert_eq!(env.get("mtu"), Some(&info.mtu.to_string()), "{env:?}");
    assert_eq!(env.get("hostname"), Some(&info.hostname), "{env:?}");

    // Configure the guest as DHCP said; it reaches the node (masqueraded).
    let mut cmds = vec![
        "ip addr add 10.0.2.2/24 dev eth0".to_string(),
        "ip route add default via 10.0.2.1 dev eth0".to_string(),
        format!("busybox ping -c 2 -W 3 {}", info.node_ip),
    ];
    if dual {
        // IPv6 from our router advertisements and DHCPv6 server only (ISC dhclient -6).
        guest_v6_from_ra_and_dhcpv6(&pod, &guest, "e2e");
        cmds.push(format!(
            "busybox ping -6 -c 2 -W 3 {}",
            info.node_ip6.as_deref().unwrap()
        ));
    }
    let o = guest.exec(&["sh", "-ec", &cmds.join("; ")]);
    assert_ok(&o, "guest pinging the node");

    // Node → pod IP on the listed port reaches the guest; on an unlisted port it does not.
    let mut targets = vec![info.pod_ip.clone()];
    if dual {
        targets.push(info.pod_ip6.clone().unwrap());
    }
    for ip in &targets {
        let l = NcListener::start(&guest, LISTED, 10);
        let (ok, out) = nc_send(node_nc(&pod, ip, LISTED), &format!("node-to-{ip}"));
        assert!(ok, "node → {ip}:{LISTED}: {out}");
        assert_eq!(l.received().trim(), format!("node-to-{ip}"));

        let l = NcListener::start(&guest, UNLISTED, 3);
        let (ok, out) = nc_send(node_nc(&pod, ip, UNLISTED), "must-not-arrive");
        assert!(!ok, "node → {ip}:{UNLISTED} (unlisted) connected: {out}");
        assert_eq!(
            l.received().trim(),
            "",
            "an unlisted port reached the guest"
        );
    }
    // 127.0.0.1:<listed port> inside the pod reaches the guest (port-forward's path).
    let l = NcListener::start(&guest, LISTED, 10);
    let (ok, out) = nc_send(pod_nc(&pod, "127.0.0.1", LISTED), "from-localhost");
    assert!(ok, "pod → 127.0.0.1:{LISTED}: {out}");
    assert_eq!(l.received().trim(), "from-localhost");

    // Remove the guest port (not ours), then SIGTERM: the pod is exactly as before.
    let _ = Command::new("ip")
        .args(["-n", &pod.sb.name, "link", "del", "sbg1"])
        .status();
    assert_eq!(served.terminate(), 0, "exit code after SIGTERM");
    let after = pod.sb.snapshot();
    assert!(
        before == after,
        "the pod differs from its snapshot before setup:\n{}",
        diff(&before, &after)
    );
}

#[test]
fn flannel_pod_masquerade_end_to_end_and_exact_restore() {
    end_to_end(Style::Flannel);
}

/// A Calico-like pod (`/32`, on-link gateway 169.254.1.1): the guest's subnet is unaffected.
#[test]
fn calico_pod_masquerade_end_to_end_and_exact_restore() {
    end_to_end(Style::Calico);
}

#[test]
fn dual_stack_pod_masquerade_end_to_end_and_exact_restore() {
    end_to_end(Style::Dual);
}

/// The DHCPv6 server and RA sender against real clients (ISC dhclient -6), no guest: a foreign
/// MAC gets nothing (counted as `foreign_client`); the VM gets its address with a plain
/// SOLICIT/REQUEST exchange and with Rapid Commit; an INFORMATION-REQUEST without IA_NA
/// (KubeVirt crashed on it, #9843) gets DNS and search list, and the server keeps serving.
#[test]
fn dhcpv6_and_ra_serve_only_the_vm_with_real_clients() {
    let pod = Pod::new(Style::Dual);
    let vmi = pod.vmi(MASQ);
    let served = Served::start(&pod, &vmi);
    let mac = served.mac();
    let r = &served.result["interfaces"][0];
    assert_eq!(r["dhcp6"]["dhcp"]["client_ip"], "fd10:0:2::2", "{r}");
    let br = pod
        .sb
        .exec_ok(&["ip", "-6", "addr", "show", "dev", "k6t-eth0"]);
    assert!(br.contains("fe80::ff:fe00:0/64"), "{br}");

    // Another MAC on the bridge: no lease.
    let other = pod.sb.add_guest("k6t-eth0", "02:00:00:00:bb:02");
    assert!(
        dhclient6(&pod, &other, "foreign", &[], 8).is_none(),
        "a foreign MAC got a DHCPv6 lease"
    );
    let _ = Command::new("ip")
        .args(["-n", &pod.sb.name, "link", "del", "sbg1"])
        .status();

    let guest = pod.sb.add_guest("k6t-eth0", &mac);
    // Stateless first: INFORMATION-REQUEST, no IA_NA.
    let env = dhclient6(&pod, &guest, "info", &["-S"], 20).unwrap_or_else(|| {
        panic!(
            "no reply to INFORMATION-REQUEST:\n{}",
            dhclient6_log(&pod, "info")
        )
    });
    assert_eq!(
        env.get("new_dhcp6_name_servers").map(String::as_str),
        Some("fd00:10:96::a"),
        "{env:?}"
    );
    assert!(!env.contains_key("new_ip6_address"), "{env:?}");
    // Then the full exchange (the server is still up), RA included.
    guest_v6_from_ra_and_dhcpv6(&pod, &guest, "full");
    let log = dhclient6_log(&pod, "full");
    assert!(
        log.contains("Advertise"),
        "SOLICIT → ADVERTISE expected:\n{log}"
    );
    // Rapid Commit: SOLICIT → REPLY, no ADVERTISE.
    let cf = pod.path("dhclient6-rapid.conf");
    std::fs::write(&cf, "send dhcp6.rapid-commit;\n").unwrap();
    let cfs = format!("-cf {}", cf.display());
    let env = dhclient6(&pod, &guest, "rapid", &[&cfs], 20).unwrap_or_else(|| {
        panic!(
            "no lease with Rapid Commit:\n{}",
            dhclient6_log(&pod, "rapid")
        )
    });
    assert_eq!(
        env.get("new_ip6_address").map(String::as_str),
        Some("fd10:0:2::2")
    );
    let log = dhclient6_log(&pod, "rapid");
    assert!(
        !log.contains("Advertise"),
        "Rapid Commit must skip ADVERTISE:\n{log}"
    );
    // The guest reaches the node over IPv6 through the RA's default route and the NAT.
    let o = guest.exec(&[
        "busybox",
        "ping",
        "-6",
        "-c",
        "2",
        "-W",
        "3",
        pod.sb.info().node_ip6.as_deref().unwrap(),
    ]);
    assert_ok(&o, "guest pinging the node over IPv6");

    let _ = Command::new("ip")
        .args(["-n", &pod.sb.name, "link", "del", "sbg2"])
        .status();
    let (code, logs) = served.terminate_with_logs();
    assert_eq!(code, 0, "{logs:#?}");
    let stopped = logs
        .iter()
        .find(|l| l.contains("router advertisements stopped"))
        .unwrap_or_else(|| panic!("no DHCPv6 counters logged: {logs:#?}"));
    let v: serde_json::Value = serde_json::from_str(stopped).expect("JSON log line");
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("no counter {k}: {stopped}"))
    };
    assert!(
        v["dropped_by_reason"]
            .as_str()
            .unwrap()
            .contains("foreign_client="),
        "the foreign client's requests are counted: {stopped}"
    );
    assert!(
        n("ra_solicited") >= 1,
        "router solicitations answered: {stopped}"
    );
    assert!(n("info_replies") >= 1, "{stopped}");
    assert!(n("advertises") >= 1, "{stopped}");
    assert!(n("replies") >= 2, "REQUEST and Rapid Commit: {stopped}");
}

/// What must be equal between two plumbed pods (the tap's random MAC aside; nft counters
/// stripped).
fn plumbed_view(pod: &Pod) -> serde_json::Value {
    let json = |args: &[&str]| -> serde_json::Value {
        let mut cmd = vec!["ip", "-j"];
        cmd.extend_from_slice(args);
        serde_json::from_str(&pod.sb.exec_ok(&cmd)).unwrap()
    };
    let mut links: Vec<serde_json::Value> = json(&["-d", "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let name = l["ifname"].as_str().unwrap_or("");
            serde_json::json!({
                "ifname": name,
                "mtu": l["mtu"],
                "master": l["master"],
                "up": l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP")),
                "kind": l["linkinfo"]["info_kind"],
                "address": if name.starts_with("tap") { serde_json::Value::Null } else { l["address"].clone() },
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
    let nft: Vec<String> = pod
        .sb
        .exec_ok(&["nft", "list", "ruleset"])
        .lines()
        .map(|l| match l.find("counter packets") {
            Some(i) => {
                let rest = &l[i..];
                let after_bytes = rest
                    .find("bytes ")
                    .map(|j| &rest[j + 6..])
                    .map(|s| s.trim_start_matches(|c: char| c.is_ascii_digit()))
                    .unwrap_or("");
                format!("{}counter{}", &l[..i], after_bytes)
            }
            None => l.to_string(),
        })
        .collect();
    let sysctls = pod.sb.sh(
        "for f in ipv4/ip_forward ipv6/conf/all/forwarding ipv4/conf/k6t-eth0/route_localnet \
         ipv6/conf/k6t-eth0/disable_ipv6; do echo \"$f=$(cat /proc/sys/net/$f 2>/dev/null)\"; done",
    );
    serde_json::json!({"links": links, "addrs": addrs, "routes": routes, "nft": nft, "sysctls": sysctls})
}

/// SIGKILL after every apply step, re-run: the result equals an uninterrupted setup, and
/// teardown restores the original snapshot.
fn crash_convergence(style: Style) {
    let pod = Pod::new(style);
    let before = pod.sb.snapshot();
    let vmi = pod.vmi(&masq_with_ports());
    let show = pod.run(&vmi, &["show"], &[]);
    assert_ok(&show, "network show");
    let plan: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let n_steps = plan["steps"].as_array().unwrap().len();
    assert!(n_steps >= 10, "plan has {n_steps} steps");
    assert_eq!(pod.sb.snapshot(), before, "network show changed the pod");

    assert_ok(&pod.run(&vmi, &["setup"], &[]), "network setup");
    let reference = plumbed_view(&pod);
    assert!(
        reference["nft"].to_string().contains("kubevirt_nat"),
        "{reference}"
    );
    assert_ok(&pod.run(&vmi, &["setup"], &[]), "network setup (again)");
    assert_eq!(
        plumbed_view(&pod),
        reference,
        "a second setup changed something"
    );
    let show2 = pod.run(&vmi, &["show"], &[]);
    assert_eq!(show2.stdout, show.stdout, "show after setup differs");
    assert_ok(&pod.run(&vmi, &["teardown"], &[]), "network teardown");
    let after = pod.sb.snapshot();
    assert!(before == after, "teardown:\n{}", diff(&before, &after));

    for n in 0..=n_steps {
        let o = pod.run(
            &vmi,
            &["setup"],
            &[("LAUNCHER_FAULT_AFTER_STEP", n.to_string())],
        );
        assert!(
            !o.status.success(),
            "fault injection after step {n} did not kill setup"
        );
        assert_ok(
            &pod.run(&vmi, &["setup"], &[]),
            &format!("network setup after a crash after step {n}"),
        );
        let view = plumbed_view(&pod);
        assert!(
            view == reference,
            "after a crash after step {n}, re-running setup converged elsewhere:\n{}\nvs reference\n{}",
            serde_json::to_string_pretty(&view).unwrap(),
            serde_json::to_string_pretty(&reference).unwrap()
        );
        assert_ok(
            &pod.run(&vmi, &["teardown"], &[]),
            &format!("teardown (crash after step {n})"),
        );
        let after = pod.sb.snapshot();
        assert!(
            before == after,
            "crash after step {n}: teardown did not restore the pod:\n{}",
            diff(&before, &after)
        );
    }
    // A crash and a teardown straight away (no re-run) also restores.
    for n in [2, n_steps / 2, n_steps - 1] {
        let _ = pod.run(
            &vmi,
            &["setup"],
            &[("LAUNCHER_FAULT_AFTER_STEP", n.to_string())],
        );
        assert_ok(
            &pod.run(&vmi, &["teardown"], &[]),
            &format!("teardown right after a crash after step {n}"),
        );
        let after = pod.sb.snapshot();
        assert!(
            before == after,
            "crash after step {n} + teardown:\n{}",
            diff(&before, &after)
        );
    }
}

#[test]
fn dual_stack_crash_after_every_step_converges_and_restores() {
    crash_convergence(Style::Dual);
}

#[test]
fn flannel_crash_after_every_step_converges_and_restores() {
    crash_convergence(Style::Flannel);
}

/// IPv6 disabled in the pod (KubeVirt failed to start the VM, #6373): IPv4 works, IPv6 is
/// logged as skipped, nothing IPv6 is configured, teardown restores the pod.
#[test]
fn ipv6_disabled_in_the_pod_ipv4_still_works() {
    let pod = Pod::new(Style::Dual);
    pod.sb.sh("sysctl -q -w net.ipv6.conf.all.disable_ipv6=1");
    assert_eq!(
        pod.sb
            .exec_ok(&["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"])
            .trim(),
        "1"
    );
    let before = pod.sb.snapshot();
    let vmi = pod.vmi(MASQ);
    let o = pod.run(&vmi, &["setup"], &[]);
    assert_ok(&o, "network setup with IPv6 disabled");
    let logs = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        logs.matches("IPv6 skipped").count(),
        1,
        "IPv6 must be logged as skipped exactly once: {logs}"
    );
    assert!(result_has_no_dhcp6(&o.stdout), "{logs}");
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        result["interfaces"][0]["guest_ips"],
        serde_json::json!(["10.0.2.2"])
    );
    let nft = pod.sb.exec_ok(&["nft", "list", "ruleset"]);
    assert!(nft.contains("table ip kubevirt_nat"), "{nft}");
    assert!(!nft.contains("table ip6 kubevirt_nat"), "{nft}");
    assert_eq!(
        pod.sb
            .exec_ok(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
            .trim(),
        "0",
        "IPv6 forwarding must not be touched"
    );
    // IPv4 works: DHCP and a ping to the node.
    let o = pod.run(&vmi, &["teardown"], &[]);
    assert_ok(&o, "teardown");
    let served = Served::start(&pod, &vmi);
    assert!(served.result["interfaces"][0].get("dhcp6").is_none());
    let guest = pod.sb.add_guest("k6t-eth0", &served.mac());
    let (ok, env) = udhcpc(&pod, &guest, "v4only", 5);
    assert!(ok, "udhcpc got no lease (env {env:?})");
    assert_eq!(env.get("ip").map(String::as_str), Some("10.0.2.2"));
    let o = guest.exec(&[
        "sh",
        "-ec",
        &format!(
            "ip addr add 10.0.2.2/24 dev eth0; ip route add default via 10.0.2.1; busybox ping -c 2 -W 3 {}",
            pod.sb.info().node_ip
        ),
    ]);
    assert_ok(&o, "guest pinging the node");
    let _ = Command::new("ip")
        .args(["-n", &pod.sb.name, "link", "del", "sbg1"])
        .status();
    let (code, logs) = served.terminate_with_logs();
    assert_eq!(code, 0, "{logs:#?}");
    assert_eq!(
        logs.iter().filter(|l| l.contains("IPv6 skipped")).count(),
        1,
        "{logs:#?}"
    );
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("DHCPv6 server and router advertisements running")),
        "no IPv6 server without IPv6: {logs:#?}"
    );
    let after = pod.sb.snapshot();
    assert!(before == after, "{}", diff(&before, &after));
}

fn result_has_no_dhcp6(stdout: &[u8]) -> bool {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    v["interfaces"][0].get("dhcp6").is_none()
}

/// `nft` refusing the NAT: exit 3 with nft's own text, everything rolled back.
#[test]
fn failing_nft_exits_3_with_its_text_and_rolls_back() {
    use std::os::unix::fs::PermissionsExt;
    let pod = Pod::new(Style::Flannel);
    let before = pod.sb.snapshot();
    let vmi = pod.vmi(MASQ);
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v nft"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let bin = pod.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("nft");
    // Refuses any transaction that masquerades (the apply), passes everything else (teardown).
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nin=$(cat)\ncase \"$in\" in *'\"masquerade\"'*) echo 'Error: simulated refusal of the masquerade rule' >&2; exit 1;; esac\nprintf '%s' \"$in\" | exec {} \"$@\"\n",
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = pod.run(&vmi, &["setup"], &[("PATH", path)]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("setup with a refusing nft:\n{err}");
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("simulated refusal"),
        "nft's own text missing: {err}"
    );
    assert!(err.contains("rolled back"), "{err}");
    assert!(!pod.path("run/network-state.json").exists());
    let after = pod.sb.snapshot();
    assert!(before == after, "{}", diff(&before, &after));
}

// ------------------------------------------------------------------------------------------
// With the real tiny guest: `launcher run` (TCG) with a masquerade interface.

fn tail(p: &Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `launcher run` boots the tiny guest (scripts/build-test-guest.sh) on a masquerade NIC: the
/// guest gets 10.0.2.2/24 and router 10.0.2.1 from our DHCPv4 server, pings the node, and its
/// listener on a listed port answers the node (to the pod IP) and the pod (to 127.0.0.1).
/// SIGTERM powers it off and the pod is restored exactly.
#[test]
fn tcg_guest_on_masquerade_gets_dhcp_pings_the_node_and_is_reachable_on_listed_ports() {
    tcg_masquerade(
        Style::Flannel,
        "6a1c0de5-0000-4000-8000-0000000a5c01",
        |info| format!("guest.ping={} guest.listen={LISTED}", info.node_ip),
        |pod, info, text| {
            let dhcp = support::marker_lines(text, "GUEST-DHCP ");
            assert_eq!(dhcp.len(), 1, "one DHCP line expected:\n{text}");
            let d = &dhcp[0];
            assert!(d.contains("ip=10.0.2.2 "), "{d}");
            assert!(d.contains("mask=24 "), "{d}");
            assert!(d.contains("router=10.0.2.1 "), "{d}");
            assert!(d.contains("dns=10.96.0.10"), "{d}");
            assert!(d.contains(&format!("mtu={}", info.mtu)), "{d}");
            assert!(
                text.contains(&format!("GUEST-PING ip={} ok", info.node_ip)),
                "the guest must ping the node:\n{text}"
            );
            assert!(
                text.contains(&format!("GUEST-LISTEN port={LISTED}")),
                "{text}"
            );
            // Node → pod IP:listed port reaches the guest's listener; an unlisted port does not.
            let (ok, out) = nc_send(node_nc(pod, &info.pod_ip, LISTED), "hi");
            assert!(
                ok && out.contains("HELLO-FROM-GUEST"),
                "node → pod IP:{LISTED}: {out}"
            );
            let (ok, out) = nc_send(node_nc(pod, &info.pod_ip, UNLISTED), "hi");
            assert!(!ok && !out.contains("HELLO-FROM-GUEST"), "unlisted: {out}");
            // 127.0.0.1:listed port inside the pod reaches the guest.
            let (ok, out) = nc_send(pod_nc(pod, "127.0.0.1", LISTED), "hi");
            assert!(
                ok && out.contains("HELLO-FROM-GUEST"),
                "pod → 127.0.0.1:{LISTED}: {out}"
            );
        },
    );
}

/// Issue 6 end to end over IPv6: a dual-stack pod, `launcher run` with the tiny guest running
/// ISC `dhclient -6` (busybox has no DHCPv6 client). Our RA gives the guest its default route
/// (via the bridge's link-local address) and our DHCPv6 server gives it fd10:0:2::2 with the
/// pod's IPv6 DNS server; the guest then pings the node over IPv4 and IPv6.
#[test]
fn tcg_guest_on_dual_stack_masquerade_gets_ipv6_from_ra_and_dhcpv6_and_pings_the_node() {
    tcg_masquerade(
        Style::Dual,
        "6a1c0de5-0000-4000-8000-0000000a5c06",
        |info| {
            format!(
                "guest.dhcp6=1 guest.ping={},{}",
                info.node_ip,
                info.node_ip6.as_deref().unwrap()
            )
        },
        |_pod, info, text| {
            let d = support::marker_lines(text, "GUEST-DHCP ");
            assert!(
                d.len() == 1 && d[0].contains("ip=10.0.2.2 "),
                "DHCPv4:\n{text}"
            );
            let d6 = support::marker_lines(text, "GUEST-DHCP6");
            assert_eq!(d6.len(), 1, "one DHCPv6 line expected:\n{text}");
            assert!(d6[0].contains("ip=fd10:0:2::2/"), "{text}");
            assert!(d6[0].contains("dns=fd00:10:96::a"), "{text}");
            let ip6 = support::marker_lines(text, "GUEST-IP6");
            assert_eq!(ip6.len(), 1, "{text}");
            assert!(ip6[0].contains("fd10:0:2::2"), "{text}");
            assert!(
                ip6[0].contains("defroute=fe80::ff:fe00:0"),
                "the default route comes from our RA:\n{text}"
            );
            for ip in [info.node_ip.clone(), info.node_ip6.clone().unwrap()] {
                assert!(
                    text.contains(&format!("GUEST-PING ip={ip} ok")),
                    "the guest must ping the node at {ip}:\n{text}"
                );
            }
        },
    );
}

/// Boots the tiny guest under `launcher run` (TCG) on a masquerade NIC (listed port
/// {LISTED}) in a pod of `style`, waits for GUEST-READY, runs `check` on the serial log, then
/// SIGTERM: exit 0 and the pod exactly as before.
fn tcg_masquerade(
    style: Style,
    uid: &str,
    args: impl FnOnce(&support::SandboxInfo) -> String,
    check: impl FnOnce(&Pod, &support::SandboxInfo, &str),
) {
    let pod = Pod::new(style);
    let info = pod.sb.info().clone();
    let before = pod.sb.snapshot();
    support::run::fill_kernel_boot(pod.dir.path(), true);
    let guest_args = args(&info);
    pod.vmi(&format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: masq-e2e, namespace: default, uid: {uid}}}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    cpu: {{cores: 1}}
    memory: {{guest: 256Mi}}
{kb}        - name: default
          masquerade: {{}}
          ports: [{{port: {LISTED}}}]
  networks:
    - name: default
      pod: {{}}
"#,
        kb = support::run::kernel_boot_yaml(&support::guest_cmdline(&guest_args))
    ));
    let run_dir = pod.path("run");
    let log_path = pod.path("launcher.log");
    let term = pod.path("termination-log");
    let mut child = support::run::spawn_logged(
        support::run::run_cmd(&pod.sb, pod.dir.path(), &[], &[]),
        &log_path,
    );
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let guard = Kill(&mut child);
    let serial = run_dir.join(uid).join("virt-serial0-log");
    let (found, text) =
        support::wait_for_text(&serial, "GUEST-READY", support::guest_boot_timeout());
    assert!(
        found,
        "GUEST-READY not on the serial console.\nserial:\n{text}\nlauncher log:\n{}",
        tail(&log_path)
    );
    check(&pod, &info, &text);

    // SIGTERM: ACPI power-off, teardown, exit 0, the pod as before.
    support::run::sigterm_expect_exit_0(guard.0, "", &term, &log_path);
    drop(guard);
    // Processes (libvirtd, qemu) need a moment to be gone before the snapshot is comparable.
    std::thread::sleep(Duration::from_millis(500));
    let after = pod.sb.snapshot();
    assert!(before == after, "{}", diff(&before, &after));
}
