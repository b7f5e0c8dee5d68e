//! End-to-end tests of `launcher run`: the tiny test guest (scripts/build-test-guest.sh) booted by
//! kernelBoot under TCG inside a sandbox launcher pod (scripts/sandbox.sh), with a bridge
//! interface on the pod network and `terminationGracePeriodSeconds: 10`.
//!
//! Needs root (panics otherwise). The guest-running cases are serialised (one TCG guest at a
//! time keeps them fast on 2 cores). Each case owns a temporary directory holding the VMI, the
//! run dir (status.json, serial log) and the container-disk dir (`kernel-boot/`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::run::{alive, children, comm, kill, tail};
use support::{require_root, wait_for_text, Sandbox, Style};

/// One TCG guest at a time.
static GUEST_LOCK: Mutex<()> = Mutex::new(());

const GRACE: u64 = 10;

struct Case {
    pod: Sandbox,
    dir: tempfile::TempDir,
    before: String,
}

impl Case {
    /// A sandbox pod, a temp dir with `kernel-boot/` filled (unless `with_kernel` is false) and a
    /// VMI whose kernel arguments end with `extra_args`.
    fn new(extra_args: &str, with_kernel: bool) -> Case {
        Case::new_with(|_| extra_args.to_string(), with_kernel)
    }

    fn new_with(extra_args: impl Fn(&support::SandboxInfo) -> String, with_kernel: bool) -> Case {
        require_root();
        let pod = Sandbox::create(Style::Flannel);
        let extra_args = extra_args(pod.info());
        let dir = support::run::case_dir("run-e2e-", with_kernel);
        let kb = support::run::kernel_boot_yaml(&format!(
            "console=ttyS0 quiet panic=-1 no_timer_check noapictimer cryptomgr.notests {extra_args}"
        ));
        let vmi = format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: e2e
  namespace: default
  uid: 6a1c0de5-0000-4000-8000-00000000e2e0
spec:
  terminationGracePeriodSeconds: {GRACE}
  domain:
    cpu:
      cores: 1
    memory:
      guest: 256Mi
    resources:
      requests:
        memory: 256Mi
{kb}        - name: default
          bridge: {{}}
          macAddress: "02:00:00:00:e2:01"
  networks:
    - name: default
      pod: {{}}
"#
        );
        std::fs::write(dir.path().join("vmi.yaml"), vmi).unwrap();
        let before = pod.snapshot();
        Case { pod, dir, before }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    fn term(&self) -> String {
        std::fs::read_to_string(self.path("termination-log")).unwrap_or_default()
    }

    fn stderr_log(&self, n: u32) -> PathBuf {
        self.path(&format!("launcher-{n}.log"))
    }

    /// Starts `launcher run` in the pod (its pid is the launcher's: sandbox.sh execs nsenter,
    /// which execs the launcher). Logs go to launcher-<n>.log.
    fn spawn(&self, n: u32) -> Child {
        let cmd = support::run::run_cmd(&self.pod, self.dir.path(), &[], &[]);
        support::run::spawn_logged(cmd, &self.stderr_log(n))
    }

    fn status(&self) -> serde_json::Value {
        support::run::status(&self.run_dir())
    }

    fn serial_log(&self) -> PathBuf {
        support::run::serial_log(&self.run_dir(), "6a1c0de5-0000-4000-8000-00000000e2e0")
    }

    /// Waits for a serial marker; panics with the serial log and the launcher's log otherwise.
    fn wait_serial(&self, needle: &str, n: u32) -> String {
        let (found, text) =
            wait_for_text(&self.serial_log(), needle, support::guest_boot_timeout());
        assert!(
            found,
            "{needle} not on the serial console within {:?}.\nserial:\n{text}\nlauncher log:\n{}",
            support::guest_boot_timeout(),
            tail(&self.stderr_log(n))
        );
        text
    }

    /// `launcher status` in the pod: (exit code, stdout).
    fn launcher_status(&self) -> (i32, String) {
        let out = support::run::launcher_status(&self.pod, &self.run_dir());
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `launcher console` in the pod, stdin and stdout piped.
    fn console(&self) -> Child {
        let bin = support::launcher_bin();
        let rd = self.run_dir();
        self.pod
            .exec_cmd(&[
                bin.to_str().unwrap(),
                "console",
                "--run-dir",
                rd.to_str().unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning launcher console")
    }

    /// Processes in the pod (same network namespace as the pod's pinned netns).
    fn pod_processes(&self) -> Vec<(i32, String)> {
        support::run::pod_processes(&self.pod)
    }

    fn assert_clean(&self) {
        support::run::assert_no_pod_processes(&self.pod);
        let after = self.pod.snapshot();
        assert_eq!(
            self.before, after,
            "the pod network differs from its snapshot before the run"
        );
    }
}

fn wait_exit(child: &mut Child, timeout: Duration, what: &str, log: &Path) -> ExitStatus {
    support::run::wait_exit(
        child,
        timeout,
        &format!(" ({what})"),
        log,
        Duration::from_millis(50),
    )
}

fn wait_running(c: &Case, n: u32) -> serde_json::Value {
    support::run::wait_running(
        &c.run_dir(),
        &c.stderr_log(n),
        true,
        Duration::from_millis(100),
    )
}

/// Children of `pid` named `name` (zombies included).
fn children_named(pid: i32, name: &str) -> Vec<i32> {
    children(pid)
        .into_iter()
        .filter(|k| comm(*k) == name)
        .collect()
}

#[test]
fn guest_gets_the_pod_network_by_dhcp_pings_the_node_and_poweroff_exits_0() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new_with(
        |i| format!("guest.ping={} guest.poweroff=1", i.node_ip),
        true,
    );
    let info = c.pod.info().clone();
    let node_ip = info.node_ip.clone();
    let mut child = c.spawn(1);
    wait_running(&c, 1);
    // `launcher console` attached while the guest boots sees its output, and ends when the VM
    // does (its stdin stays open: a pipe we never write to).
    let mut console = c.console();
    let st = wait_exit(
        &mut child,
        support::guest_boot_timeout() + Duration::from_secs(60),
        "guest poweroff",
        &c.stderr_log(1),
    );
    let cst = wait_exit(
        &mut console,
        Duration::from_secs(10),
        "console after the VM ended",
        &c.stderr_log(1),
    );
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut console.stdout.take().unwrap(), &mut seen).unwrap();
    assert_eq!(cst.code(), Some(0), "console exit");
    assert!(seen.contains("GUEST-POWEROFF"), "console output:\n{seen}");
    let serial = std::fs::read_to_string(c.serial_log()).unwrap_or_default();
    assert_eq!(
        st.code(),
        Some(0),
        "exit code; termination: {}\nserial:\n{serial}\nlog:\n{}",
        c.term(),
        tail(&c.stderr_log(1))
    );
    let dhcp = support::marker_lines(&serial, "GUEST-DHCP");
    assert_eq!(dhcp.len(), 1, "one DHCP line expected:\n{serial}");
    let d = &dhcp[0];
    assert!(d.contains(&format!("ip={} ", info.pod_ip)), "{d}");
    assert!(d.contains(&format!("mask={} ", info.pod_prefix)), "{d}");
    assert!(d.contains(&format!("router={} ", info.gateway)), "{d}");
    assert!(d.contains("dns=10.96.0.10"), "{d}");
    assert!(d.contains(&format!("mtu={}", info.mtu)), "{d}");
    assert!(
        serial.contains(&format!("GUEST-PING ip={node_ip} ok")),
        "the guest must ping the node:\n{serial}"
    );
    assert!(serial.contains("GUEST-POWEROFF"), "{serial}");
    assert!(c.term().contains("powered off"), "{}", c.term());
    let s = c.status();
    assert_eq!(s["phase"], "stopped", "{s}");
    assert_eq!(s["exit_code"], 0, "{s}");
    assert_eq!(s["interfaces"][0]["mac"], "02:00:00:00:e2:01", "{s}");
    c.assert_clean();
}

#[test]
fn sigterm_with_a_guest_that_ignores_acpi_destroys_after_the_grace_period() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new("guest.hold=1", true);
    let mut child = c.spawn(1);
    let s = wait_running(&c, 1);
    c.wait_serial("GUEST-READY", 1);
    // While the domain runs, `launcher status` says so (exit 0) and names qemu, MAC and IPs.
    let (code, out) = c.launcher_status();
    assert_eq!(code, 0, "launcher status while running: {out}");
    assert!(out.contains("02:00:00:00:e2:01"), "{out}");
    assert!(out.contains(&c.pod.info().pod_ip), "{out}");
    assert!(s["qemu_pid"].as_i64().is_some(), "{s}");
    // Ctrl-] detaches the console at once; the VM keeps running.
    let mut console = c.console();
    std::thread::sleep(Duration::from_millis(500));
    {
        use std::io::Write;
        let stdin = console.stdin.as_mut().unwrap();
        stdin.write_all(b"\x1d").unwrap();
        stdin.flush().unwrap();
    }
    let cst = wait_exit(
        &mut console,
        Duration::from_secs(5),
        "console detach",
        &c.stderr_log(1),
    );
    assert_eq!(cst.code(), Some(0), "console exit after Ctrl-]");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the VM must outlive the console"
    );
    let t = Instant::now();
    kill(child.id() as i32, "TERM");
    let st = wait_exit(
        &mut child,
        Duration::from_secs(GRACE + 15),
        "SIGTERM with a guest ignoring ACPI",
        &c.stderr_log(1),
    );
    let took = t.elapsed();
    assert_eq!(st.code(), Some(0), "termination: {}", c.term());
    assert!(
        took >= Duration::from_secs(GRACE - 1),
        "destroyed before the grace period: {took:?}"
    );
    assert!(c.term().contains("destroyed"), "{}", c.term());
    let (code, _) = c.launcher_status();
    assert_ne!(code, 0, "launcher status must fail once the VM is gone");
    c.assert_clean();
}

#[test]
fn killing_qemu_ends_the_launcher_with_exit_4_and_the_reason() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new("guest.hold=1", true);
    let mut child = c.spawn(1);
    let s = wait_running(&c, 1);
    let qemu = s["qemu_pid"].as_i64().expect("qemu_pid in status.json") as i32;
    assert!(alive(qemu));
    kill(qemu, "KILL");
    let st = wait_exit(
        &mut child,
        Duration::from_secs(5),
        "qemu killed",
        &c.stderr_log(1),
    );
    assert_eq!(st.code(), Some(4), "termination: {}", c.term());
    let term = c.term();
    assert!(term.contains(&format!("qemu (pid {qemu})")), "{term}");
    assert!(term.contains("ended unexpectedly"), "{term}");
    assert!(
        term.contains("SIGKILL") || term.contains("failed"),
        "{term}"
    );
    assert_eq!(c.status()["phase"], "failed");
    c.assert_clean();
}

#[test]
fn killing_libvirtd_restarts_it_and_the_guest_keeps_running() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new("", true);
    let mut child = c.spawn(1);
    let s = wait_running(&c, 1);
    let qemu = s["qemu_pid"].as_i64().unwrap() as i32;
    let launcher = child.id() as i32;
    let old = children_named(launcher, "libvirtd");
    assert_eq!(old.len(), 1, "one libvirtd child: {old:?}");
    kill(old[0], "KILL");
    // It comes back (a new pid), and the launcher reconnects.
    let (back, log) = wait_for_text(
        &c.stderr_log(1),
        "domain state after reconnecting",
        Duration::from_secs(30),
    );
    assert!(back, "no reconnect after killing libvirtd:\n{log}");
    let new = children_named(launcher, "libvirtd");
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new[0], old[0]);
    assert!(alive(qemu), "the guest must keep running");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the launcher must keep running"
    );
    // The guest still reacts: SIGTERM → ACPI → the guest powers off; exit 0.
    c.wait_serial("GUEST-READY", 1);
    kill(launcher, "TERM");
    let st = wait_exit(
        &mut child,
        Duration::from_secs(GRACE + 15),
        "SIGTERM after a libvirtd restart",
        &c.stderr_log(1),
    );
    assert_eq!(st.code(), Some(0), "termination: {}", c.term());
    c.assert_clean();
}

#[test]
fn after_a_sigkill_of_the_launcher_a_rerun_cleans_up_and_never_runs_two_qemus() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new("guest.hold=1", true);
    let mut first = c.spawn(1);
    let s = wait_running(&c, 1);
    let old_qemu = s["qemu_pid"].as_i64().unwrap() as i32;
    kill(first.id() as i32, "KILL");
    let _ = first.wait();
    assert!(alive(old_qemu), "qemu outlives a SIGKILLed launcher");
    let mut second = c.spawn(2);
    // Wait until the second launcher reports running with a new qemu.
    let deadline = Instant::now() + support::guest_boot_timeout();
    let new_qemu = loop {
        let s = c.status();
        if s["phase"] == "running" && s["launcher_pid"].as_i64() == Some(second.id() as i64) {
            break s["qemu_pid"].as_i64().unwrap() as i32;
        }
        assert!(
            second.try_wait().unwrap().is_none(),
            "second launcher exited: {}\n{}",
            c.term(),
            tail(&c.stderr_log(2))
        );
        assert!(Instant::now() < deadline, "{}", tail(&c.stderr_log(2)));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(new_qemu, old_qemu);
    assert!(!alive(old_qemu), "the earlier qemu must be gone");
    let qemus: Vec<_> = c
        .pod_processes()
        .into_iter()
        .filter(|(_, comm)| comm.starts_with("qemu"))
        .collect();
    assert_eq!(qemus.len(), 1, "exactly one qemu in the pod: {qemus:?}");
    let log = std::fs::read_to_string(c.stderr_log(2)).unwrap();
    assert!(!log.contains("already exists"), "{log}");
    kill(second.id() as i32, "QUIT"); // SIGQUIT: destroy now
    let st = wait_exit(
        &mut second,
        Duration::from_secs(15),
        "SIGQUIT",
        &c.stderr_log(2),
    );
    assert_eq!(st.code(), Some(0), "termination: {}", c.term());
    c.assert_clean();
}

#[test]
fn a_bad_vmi_exits_2_and_changes_nothing() {
    let c = Case::new("", true);
    std::fs::write(
        c.path("vmi.yaml"),
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: bad}\n\
         spec:\n  domain:\n    devices:\n      interfaces:\n      - name: nope\n        bridge: {}\n",
    )
    .unwrap();
    let mut child = c.spawn(1);
    let st = wait_exit(
        &mut child,
        Duration::from_secs(60),
        "bad VMI",
        &c.stderr_log(1),
    );
    assert_eq!(st.code(), Some(2), "log:\n{}", tail(&c.stderr_log(1)));
    let log = std::fs::read_to_string(c.stderr_log(1)).unwrap();
    assert!(
        log.contains("interfaces[0]"),
        "the error names the field:\n{log}"
    );
    c.assert_clean();
}

#[test]
fn a_missing_kernel_exits_3_naming_the_path_and_changes_nothing() {
    let c = Case::new("", false);
    let mut child = c.spawn(1);
    let st = wait_exit(
        &mut child,
        Duration::from_secs(60),
        "missing kernel",
        &c.stderr_log(1),
    );
    let missing = c.path("cdd/kernel-boot/vmlinuz");
    assert!(
        matches!(st.code(), Some(3) | Some(4)),
        "exit {:?}; log:\n{}",
        st.code(),
        tail(&c.stderr_log(1))
    );
    let log = std::fs::read_to_string(c.stderr_log(1)).unwrap();
    assert!(
        log.contains(missing.to_str().unwrap()),
        "the error names {missing:?}:\n{log}"
    );
    c.assert_clean();
}
