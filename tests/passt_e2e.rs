//! The passt binding (issue 7) and its pod with every capability dropped (issue 8).
//!
//! - Golden network plans (pure, no root): `tests/golden/net/passt-*.json`. passt plumbs
//!   nothing, so the plan has no steps and no DHCP server. Regenerate with
//!   `UPDATE_GOLDEN=1 cargo test --test passt_e2e golden`, then review `git diff tests/golden/net/`.
//! - End to end (root, to make the sandbox pod; panics otherwise): `launcher run --accel tcg`
//!   with the tiny test guest, started inside a sandbox pod under `setpriv` as the non-root
//!   user `libvirt-qemu` with every capability dropped (bounding, permitted, effective,
//!   inheritable, ambient) and `no_new_privs`. The launcher then runs libvirt's session daemon
//!   as that user (supervise/session.rs). The guest gets the pod IP from passt, pings the node,
//!   a listed port forwards from the pod IP to the guest, SIGTERM ends everything with exit 0,
//!   no process is left and the pod's network equals its snapshot.
//!
//! The pod gets `net.ipv4.ping_group_range = 0 2147483647` before the run (and before its
//! snapshot): container runtimes set it in every pod (containerd's `enable_unprivileged_icmp`),
//! and deploy/launcher-pod-passt.yaml sets it as a safe sysctl; passt needs it to turn the
//! guest's pings into unprivileged ICMP sockets.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use launcher::net::discover::DiscoveredPod;
use launcher::net::plan::{plan, PlanOptions};
use launcher::net::NetPlan;
use support::run::tail;
use support::{require_root, wait_for_text, Sandbox, Style};

// ------------------------------------------------------------------------------------------
// Golden plans.

fn pod_fixture() -> DiscoveredPod {
    serde_json::from_value(serde_json::json!({
        "interfaces": [
            {"index": 1, "name": "lo", "mac": "00:00:00:00:00:00", "mtu": 65536, "up": true,
             "addresses": [{"address": "127.0.0.1", "prefix_len": 8}], "routes": []},
            {"index": 3, "name": "eth0", "mac": "0a:58:0a:f4:01:05", "mtu": 1450, "up": true, "kind": "veth",
             "addresses": [
                {"address": "10.244.1.5", "prefix_len": 24, "broadcast": "10.244.1.255"},
                {"address": "fd00:10:244:1::5", "prefix_len": 64},
                {"address": "fe80::858:aff:fef4:105", "prefix_len": 64, "flags": 0x80}
             ],
             "routes": [
                {"destination": "10.244.1.0", "prefix_len": 24, "pref_src": "10.244.1.5", "protocol": 2, "scope": 253},
                {"destination": "0.0.0.0", "prefix_len": 0, "gateway": "10.244.1.1", "protocol": 3, "scope": 0}
             ]}
        ],
        "dns": {"nameservers_v4": ["10.96.0.10"], "nameservers_v6": [], "search": ["default.svc.cluster.local"]},
        "hostname": "testvm"
    }))
    .expect("fixture pod")
}

fn vmi_with(binding: &str) -> launcher::spec::Vmi {
    let yaml = format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: testvm}}
spec:
  domain:
    resources: {{requests: {{memory: 128Mi}}}}
    devices:
      interfaces: [{{name: default, {binding}, ports: [{{port: 8080}}]}}]
  networks: [{{name: default, pod: {{}}}}]
"
    );
    launcher::spec::parse_str(&yaml, "fixture")
        .expect("fixture VMI")
        .vmi
}

fn golden(case: &str, p: &NetPlan) {
    support::golden::net_plan(&format!("{case}.json"), case, p, "passt_e2e");
}

#[test]
fn golden_passt_plans_nothing_and_hands_the_pod_addresses_to_passt() {
    let p = plan(
        &pod_fixture(),
        &vmi_with("passt: {}"),
        &PlanOptions::default(),
    )
    .unwrap();
    golden("passt-flannel", &p);
    assert!(p.steps.is_empty(), "passt changes nothing in the pod");
    let r = &p.interfaces[0];
    assert_eq!(r.binding, "passt");
    assert_eq!(r.pod_interface, "eth0");
    assert_eq!(r.tap, "", "no tap: qemu talks to passt over a socket");
    assert_eq!(r.bridge, None);
    assert!(r.dhcp.is_none(), "passt serves DHCP itself");
    assert_eq!(r.mtu, 65520);
    assert_eq!(r.queues, 1);
    assert_eq!(
        r.mac.to_string(),
        "02:70:74:f4:01:05",
        "a local MAC that is not the pod's"
    );
    let ips: Vec<String> = r.guest_ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(ips, ["10.244.1.5", "fd00:10:244:1::5"], "no link-local");
}

#[test]
fn golden_slirp_and_binding_name_passt_plan_exactly_like_passt() {
    let want = plan(
        &pod_fixture(),
        &vmi_with("passt: {}"),
        &PlanOptions::default(),
    )
    .unwrap();
    for b in ["slirp: {}", "binding: {name: passt}"] {
        let got = plan(&pod_fixture(), &vmi_with(b), &PlanOptions::default()).unwrap();
        assert_eq!(got, want, "{b}");
    }
}

#[test]
fn passt_takes_the_spec_mac() {
    let p = plan(
        &pod_fixture(),
        &vmi_with("passt: {}, macAddress: \"02:00:00:00:aa:01\""),
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(p.interfaces[0].mac.to_string(), "02:00:00:00:aa:01");
}

// ------------------------------------------------------------------------------------------
// End to end with every capability dropped.

const GRACE: u64 = 10;

/// One TCG guest at a time (2 cores shared by everything).
static GUEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
const PORT: u16 = 8080;
const UID: &str = "6a1c0de5-0000-4000-8000-0000000a55e0";

/// The uid of `libvirt-qemu` (scripts/setup.sh creates the user): libvirt's session daemon
/// needs a user record for its uid.
fn qemu_uid() -> u32 {
    let out = support::run_ok(Command::new("id").args(["-u", "libvirt-qemu"]));
    support::stdout(&out)
        .trim()
        .parse()
        .expect("id -u libvirt-qemu prints a number")
}

fn chown(p: &Path, uid: u32) {
    support::run_ok(Command::new("chown").arg(format!("{uid}:{uid}")).arg(p));
}

/// Live processes in the pod's network namespace: (pid, comm).
fn pod_processes(pod: &Sandbox) -> Vec<(i32, String)> {
    support::run::pod_processes(pod)
}

/// (real uid, [CapInh, CapPrm, CapEff, CapBnd, CapAmb]) of a process.
fn creds(pid: i32) -> (u32, Vec<(String, u64)>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX);
    let caps = status
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), u64::from_str_radix(v.trim(), 16).ok()?))
        })
        .collect();
    (uid, caps)
}

fn wait_exit(child: &mut Child, timeout: Duration, log: &Path) -> ExitStatus {
    support::run::wait_exit(
        child,
        timeout,
        " of SIGTERM",
        log,
        Duration::from_millis(100),
    )
}

/// Kills the launcher if the test fails half-way (the sandbox's destroy removes the rest).
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pod's files, like emptyDirs owned by the pod's user (fsGroup): the VMI, the run dir,
/// the termination log and the container-disk dir with the test guest.
struct Files {
    dir: tempfile::TempDir,
    run_dir: std::path::PathBuf,
    term: std::path::PathBuf,
    vmi: std::path::PathBuf,
    cdd: std::path::PathBuf,
}

fn files(info: &support::SandboxInfo, uid: u32) -> Files {
    let dir = support::run::case_dir("passt-e2e-", true);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cdd = dir.path().join("cdd");
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    chown(&run_dir, uid);
    let term = dir.path().join("termination-log");
    std::fs::write(&term, "").unwrap();
    chown(&term, uid);
    let vmi = dir.path().join("vmi.yaml");
    std::fs::write(
        &vmi,
        format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: pst
  namespace: default
  uid: {UID}
spec:
  terminationGracePeriodSeconds: {GRACE}
  domain:
    cpu:
      cores: 1
    memory:
      guest: 256Mi
{kb}        - name: default
          passt: {{}}
          ports:
            - port: {PORT}
  networks:
    - name: default
      pod: {{}}
"#,
            kb = support::run::kernel_boot_yaml(&support::guest_cmdline(&format!(
                "guest.ping={} guest.listen={PORT}",
                info.node_ip
            )))
        ),
    )
    .unwrap();
    Files {
        dir,
        run_dir,
        term,
        vmi,
        cdd,
    }
}

#[test]
fn passt_as_root_exits_3_asking_for_a_non_root_user_and_changes_nothing() {
    require_root();
    let pod = Sandbox::create(Style::Flannel);
    let before = pod.snapshot();
    let f = files(pod.info(), 0);
    let bin = support::launcher_bin();
    let out = pod.exec(&[
        bin.to_str().unwrap(),
        "run",
        "--vmi",
        f.vmi.to_str().unwrap(),
        "--run-dir",
        f.run_dir.to_str().unwrap(),
        "--container-disk-dir",
        f.cdd.to_str().unwrap(),
        "--accel",
        "tcg",
        "--termination-log",
        f.term.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", support::show(&out));
    let message = std::fs::read_to_string(&f.term).unwrap();
    assert!(
        message.contains("interfaces[0]") && message.contains("non-root"),
        "{message}"
    );
    assert!(pod_processes(&pod).is_empty());
    assert!(!f.run_dir.join("network-state.json").exists());
    assert_eq!(before, pod.snapshot(), "nothing in the pod changed");
}

/// A stand-in for a container runtime's default seccomp profile, as far as passt is concerned:
/// creating a user namespace (unshare; clone with CLONE_NEWUSER; clone3) fails, then it execs
/// its arguments. Uses libseccomp through ctypes.
const DENY_USERNS_PY: &str = r#"
import ctypes, os, sys
lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x7fff0000)
nr = lib.seccomp_syscall_resolve_name
assert lib.seccomp_rule_add_array(ctx, 0x50000 | 1, nr(b"unshare"), 0, None) == 0
newuser = (Cmp * 1)(Cmp(0, 7, 0x10000000, 0x10000000))
assert lib.seccomp_rule_add_array(ctx, 0x50000 | 1, nr(b"clone"), 1, newuser) == 0
assert lib.seccomp_rule_add_array(ctx, 0x50000 | 38, nr(b"clone3"), 0, None) == 0
assert ctypes.CDLL(None).prctl(38, 1, 0, 0, 0) == 0
assert lib.seccomp_load(ctx) == 0
os.execvp(sys.argv[1], sys.argv[1:])
"#;

#[test]
fn without_user_namespaces_passt_is_refused_with_exit_3_and_nothing_changes() {
    require_root();
    let uid = qemu_uid();
    let pod = Sandbox::create(Style::Flannel);
    let before = pod.snapshot();
    let f = files(pod.info(), uid);
    let helper = f.dir.path().join("deny-userns.py");
    std::fs::write(&helper, DENY_USERNS_PY).unwrap();
    let bin = support::launcher_bin();
    let uid_s = uid.to_string();
    let out = pod
        .exec_cmd(&[
            "python3",
            helper.to_str().unwrap(),
            "setpriv",
            "--reuid",
            &uid_s,
            "--regid",
            &uid_s,
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
            bin.to_str().unwrap(),
            "run",
            "--vmi",
            f.vmi.to_str().unwrap(),
            "--run-dir",
            f.run_dir.to_str().unwrap(),
            "--container-disk-dir",
            f.cdd.to_str().unwrap(),
            "--accel",
            "tcg",
            "--termination-log",
            f.term.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", support::show(&out));
    let message = std::fs::read_to_string(&f.term).unwrap();
    assert!(
        message.contains("user namespace") && message.contains("seccomp"),
        "{message}"
    );
    assert!(pod_processes(&pod).is_empty());
    assert!(!f.run_dir.join("network-state.json").exists());
    assert_eq!(before, pod.snapshot(), "nothing in the pod changed");
}

#[test]
fn passt_guest_reaches_the_node_and_a_port_forwards_with_every_capability_dropped() {
    require_root();
    let _one = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let uid = qemu_uid();
    assert_ne!(uid, 0);
    let pod = Sandbox::create(Style::Flannel);
    let info = pod.info().clone();
    // A pod property (containerd sets it; the manifest sets it as a safe sysctl), not plumbing.
    pod.exec_ok(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ping_group_range=0 2147483647",
    ]);
    let before = pod.snapshot();
    let Files {
        dir, run_dir, term, ..
    } = files(&info, uid);

    let log_path = dir.path().join("launcher.log");
    let child = spawn_non_root(&pod, dir.path(), uid, &log_path);
    let mut launcher = KillOnDrop(Some(child));
    let pid = launcher.0.as_ref().unwrap().id() as i32;

    let serial = run_dir.join(UID).join("virt-serial0-log");
    let (found, text) = wait_for_text(&serial, "GUEST-READY", support::guest_boot_timeout());
    assert!(
        found,
        "GUEST-READY not on the serial console within {:?}.\nserial:\n{text}\nlauncher log:\n{}",
        support::guest_boot_timeout(),
        tail(&log_path)
    );
    let dhcp = support::marker_lines(&text, "GUEST-DHCP");
    assert!(
        dhcp.iter()
            .any(|l| l.contains(&format!("ip={} ", info.pod_ip))),
        "passt gives the guest the pod IP: {dhcp:?}"
    );
    let ping = support::marker_lines(&text, "GUEST-PING");
    assert_eq!(
        ping,
        [format!("GUEST-PING ip={} ok", info.node_ip)],
        "the guest reaches the node"
    );

    // Nothing in the pod runs as root or holds a capability: the launcher, its libvirtd and
    // virtlogd, qemu and passt.
    let procs = pod_processes(&pod);
    for want in [
        "launcher",
        "libvirtd",
        "virtlogd",
        "qemu-system-x86",
        "passt",
    ] {
        assert!(
            procs.iter().any(|(_, c)| c.starts_with(want)),
            "{want} runs in the pod: {procs:?}"
        );
    }
    // passt sandboxes itself in a user namespace of its own (made by the unprivileged pod
    // user), where the kernel gives it a full capability set by construction; capabilities
    // there carry no power over the pod's namespaces, which belong to the initial one. Every
    // process in the pod's own user namespace holds none at all.
    let userns = |p: i32| {
        std::fs::metadata(format!("/proc/{p}/ns/user"))
            .map(|m| m.ino())
            .unwrap_or(0)
    };
    let pod_userns = userns(pid);
    assert_eq!(pod_userns, userns(std::process::id() as i32));
    for (p, comm) in &procs {
        let (u, caps) = creds(*p);
        assert_eq!(u, uid, "{comm} ({p}) runs as uid {uid}");
        assert_eq!(caps.len(), 5, "{comm}: {caps:?}");
        if userns(*p) != pod_userns {
            assert!(
                comm.starts_with("passt"),
                "{comm} ({p}) has its own user namespace"
            );
            continue;
        }
        for (k, v) in caps {
            assert_eq!(v, 0, "{comm} ({p}) has {k} = {v:x}");
        }
    }
    assert!(!procs.is_empty() && procs.iter().any(|(p, _)| *p == pid));

    // A listed port forwards from the pod IP to the guest, from the node.
    let mut hello = String::new();
    for _ in 0..10 {
        let out = pod
            .node_cmd(&[
                "timeout",
                "10",
                "busybox",
                "nc",
                &info.pod_ip,
                &PORT.to_string(),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        hello = String::from_utf8_lossy(&out.stdout).into_owned();
        if hello.contains("HELLO-FROM-GUEST") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        hello.contains("HELLO-FROM-GUEST"),
        "node -> {}:{PORT} did not reach the guest (got {hello:?}); launcher log:\n{}",
        info.pod_ip,
        tail(&log_path)
    );

    // SIGTERM: the guest shuts down on ACPI, exit 0, nothing left.
    support::run_ok(Command::new("kill").args(["-TERM", &pid.to_string()]));
    let st = wait_exit(
        launcher.0.as_mut().unwrap(),
        Duration::from_secs(GRACE + 15),
        &log_path,
    );
    launcher.0 = None;
    assert_eq!(
        st.code(),
        Some(0),
        "exit status {st}; log:\n{}",
        tail(&log_path)
    );
    let message = std::fs::read_to_string(&term).unwrap();
    assert!(message.contains("stopped by SIGTERM"), "{message}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = pod_processes(&pod);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        left = pod_processes(&pod);
    }
    assert!(left.is_empty(), "processes left in the pod: {left:?}");
    assert!(
        !run_dir.join("network-state.json").exists(),
        "the network state is removed"
    );
    assert_eq!(
        before,
        pod.snapshot(),
        "the pod network differs from its snapshot before the run"
    );
}

/// `launcher run` in the pod as `uid` with every capability dropped (as in the test above).
fn spawn_non_root(pod: &Sandbox, dir: &Path, uid: u32, log: &Path) -> Child {
    let uid_s = uid.to_string();
    let wrap = [
        "setpriv",
        "--reuid",
        &uid_s,
        "--regid",
        &uid_s,
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ];
    let mut cmd = support::run::run_cmd(pod, dir, &wrap, &[]);
    cmd.env_remove("HOME");
    support::run::spawn_logged(cmd, log)
}

/// What the guest's listener answers on `<pod IP>:PORT`, connecting from the node (retried).
fn hello_from_node(pod: &Sandbox) -> String {
    let ip = pod.info().pod_ip.clone();
    let mut got = String::new();
    for _ in 0..10 {
        let out = pod
            .node_cmd(&["timeout", "10", "busybox", "nc", &ip, &PORT.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        if got.contains("HELLO-FROM-GUEST") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    got
}

/// Waits until the serial log shows `n` boots that reached GUEST-READY (the log is appended).
fn wait_ready(f: &Files, n: usize, log: &Path) {
    let serial = f.run_dir.join(UID).join("virt-serial0-log");
    let deadline = Instant::now() + support::guest_boot_timeout();
    loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if support::marker_lines(&text, "GUEST-READY").len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "boot {n} did not reach GUEST-READY.\nserial:\n{text}\nlauncher log:\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pids_named(pod: &Sandbox, prefix: &str) -> Vec<i32> {
    pod_processes(pod)
        .into_iter()
        .filter(|(_, c)| c.starts_with(prefix))
        .map(|(p, _)| p)
        .collect()
}

/// The session mode's own paths (its daemons' pid files and sockets, qemu's pid file) carry the
/// recovery rules of docs/run.md: a killed libvirtd is restarted and reconnected while the
/// guest keeps running, and a rerun after a SIGKILL of the launcher stops the old qemu, passt
/// and daemons and never runs two qemus.
#[test]
fn non_root_mode_restarts_a_killed_libvirtd_and_a_rerun_after_sigkill_cleans_up() {
    require_root();
    let _one = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let uid = qemu_uid();
    let pod = Sandbox::create(Style::Flannel);
    pod.exec_ok(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ping_group_range=0 2147483647",
    ]);
    let before = pod.snapshot();
    let f = files(pod.info(), uid);
    let log1 = f.dir.path().join("launcher-1.log");
    let mut first = KillOnDrop(Some(spawn_non_root(&pod, f.dir.path(), uid, &log1)));
    wait_ready(&f, 1, &log1);
    let qemu = pids_named(&pod, "qemu");
    assert_eq!(qemu.len(), 1, "{:?}", pod_processes(&pod));

    // libvirtd killed: restarted as the same user, reconnected; the guest keeps running.
    let libvirtd = pids_named(&pod, "libvirtd");
    assert_eq!(libvirtd.len(), 1);
    support::run_ok(Command::new("kill").args(["-KILL", &libvirtd[0].to_string()]));
    let (found, _) = wait_for_text(
        &log1,
        "domain state after reconnecting",
        Duration::from_secs(30),
    );
    assert!(found, "no reconnect; log:\n{}", tail(&log1));
    let new_libvirtd = pids_named(&pod, "libvirtd");
    assert!(
        new_libvirtd.len() == 1 && new_libvirtd != libvirtd,
        "{new_libvirtd:?}"
    );
    assert_eq!(
        pids_named(&pod, "qemu"),
        qemu,
        "the same qemu keeps running"
    );
    assert!(hello_from_node(&pod).contains("HELLO-FROM-GUEST"));

    // The launcher SIGKILLed: its children stay behind; a rerun cleans up after it.
    let c = first.0.as_mut().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    first.0 = None;
    let log2 = f.dir.path().join("launcher-2.log");
    let mut second = KillOnDrop(Some(spawn_non_root(&pod, f.dir.path(), uid, &log2)));
    wait_ready(&f, 2, &log2);
    let qemu2 = pids_named(&pod, "qemu");
    assert_eq!(
        qemu2.len(),
        1,
        "exactly one qemu: {:?}",
        pod_processes(&pod)
    );
    assert_ne!(qemu2, qemu, "the old qemu is gone");
    assert_eq!(pids_named(&pod, "passt").len(), 1, "exactly one passt");
    assert_eq!(pids_named(&pod, "libvirtd").len(), 1);
    assert_eq!(pids_named(&pod, "virtlogd").len(), 1);
    assert!(hello_from_node(&pod).contains("HELLO-FROM-GUEST"));

    let pid = second.0.as_ref().unwrap().id();
    support::run_ok(Command::new("kill").args(["-TERM", &pid.to_string()]));
    let st = wait_exit(
        second.0.as_mut().unwrap(),
        Duration::from_secs(GRACE + 15),
        &log2,
    );
    second.0 = None;
    assert_eq!(st.code(), Some(0), "{st}; log:\n{}", tail(&log2));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pod_processes(&pod).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        pod_processes(&pod).is_empty(),
        "left: {:?}",
        pod_processes(&pod)
    );
    assert_eq!(before, pod.snapshot());
}
