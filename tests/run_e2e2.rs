//! More end-to-end tests of `launcher run` (issue 5), beyond the six cases of run_e2e.rs: signals
//! at each bring-up phase, a second SIGTERM and SIGQUIT during the grace period, an external
//! libvirtd (`--libvirt-uri`) that is killed and restarted, five daemon deaths, a guest reboot
//! and `on_reboot`, `launcher status` as a readiness probe, and the launcher as PID 1.
//!
//! The tiny test guest (scripts/build-test-guest.sh) boots by kernelBoot under TCG inside a
//! sandbox pod (scripts/sandbox.sh). Bring-up phases are hit deterministically with the test-only
//! hook `LAUNCHER_TEST_PAUSE_AT=<phase>` (launcher/src/supervise/testhook.rs): the launcher
//! pauses at the end of that phase until `<run-dir>/test-paused` is removed.
//!
//! Needs root (panics otherwise). Guest-running cases are serialised.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{require_root, test_guest, wait_for_text, Sandbox, Style};

/// One TCG guest at a time.
static GUEST_LOCK: Mutex<()> = Mutex::new(());

const UID: &str = "6a1c0de5-0000-4000-8000-00000000e2e2";
const DOMAIN: &str = "default_e2e2";

#[derive(Clone)]
struct Opts {
    grace: u64,
    extra_args: String,
    reboot_policy: Option<&'static str>,
    env: Vec<(&'static str, String)>,
    libvirt_uri: Option<String>,
    /// Run the launcher as PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`).
    pid1: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            grace: 10,
            extra_args: String::new(),
            reboot_policy: None,
            env: Vec::new(),
            libvirt_uri: None,
            pid1: false,
        }
    }
}

struct Case {
    pod: Sandbox,
    dir: tempfile::TempDir,
    before: String,
    o: Opts,
}

impl Case {
    fn new(o: Opts) -> Case {
        require_root();
        let pod = Sandbox::create(Style::Flannel);
        let dir = tempfile::Builder::new()
            .prefix("run-e2e2-")
            .tempdir()
            .expect("temp dir");
        let kb = dir.path().join("cdd/kernel-boot");
        std::fs::create_dir_all(&kb).unwrap();
        let g = test_guest();
        std::fs::copy(&g.kernel, kb.join("vmlinuz")).unwrap();
        std::fs::copy(&g.initrd, kb.join("initrd.img")).unwrap();
        let reboot = o
            .reboot_policy
            .map(|p| format!("    rebootPolicy: {p}\n"))
            .unwrap_or_default();
        let vmi = format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: e2e2
  namespace: default
  uid: {UID}
spec:
  terminationGracePeriodSeconds: {grace}
  domain:
{reboot}    cpu:
      cores: 1
    memory:
      guest: 256Mi
    resources:
      requests:
        memory: 256Mi
    firmware:
      kernelBoot:
        kernelArgs: "{args}"
        container:
          image: registry.example/test-guest:latest
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
    devices:
      autoattachGraphicsDevice: false
      interfaces:
        - name: default
          bridge: {{}}
          macAddress: "02:00:00:00:e2:02"
  networks:
    - name: default
      pod: {{}}
"#,
            grace = o.grace,
            args = support::guest_cmdline(&o.extra_args),
        );
        std::fs::write(dir.path().join("vmi.yaml"), vmi).unwrap();
        let before = pod.snapshot();
        Case {
            pod,
            dir,
            before,
            o,
        }
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

    fn log(&self) -> PathBuf {
        self.path("launcher.log")
    }

    /// Starts `launcher run` in the pod. Without `pid1`, the child's pid is the launcher's.
    fn spawn(&self) -> Child {
        let log = std::fs::File::create(self.log()).unwrap();
        let run_dir = self.run_dir();
        let cdd = self.path("cdd");
        let vmi = self.path("vmi.yaml");
        let term = self.path("termination-log");
        let bin = support::launcher_bin();
        let mut args: Vec<&str> = Vec::new();
        if self.o.pid1 {
            args.extend(["unshare", "--pid", "--fork", "--mount-proc"]);
        }
        args.extend([
            bin.to_str().unwrap(),
            "run",
            "--vmi",
            vmi.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--container-disk-dir",
            cdd.to_str().unwrap(),
            "--accel",
            "tcg",
            "--termination-log",
            term.to_str().unwrap(),
            "--log-format",
            "json",
        ]);
        if let Some(u) = &self.o.libvirt_uri {
            args.extend(["--libvirt-uri", u.as_str()]);
        }
        let mut cmd = self.pod.exec_cmd(&args);
        for (k, v) in &self.o.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning launcher run")
    }

    fn status(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.run_dir().join("status.json"))
            .expect("reading status.json");
        serde_json::from_str(&text).expect("status.json is JSON")
    }

    fn serial_log(&self) -> PathBuf {
        self.run_dir().join(UID).join("virt-serial0-log")
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.serial_log()).unwrap_or_default()
    }

    fn wait_serial(&self, needle: &str) -> String {
        let (found, text) =
            wait_for_text(&self.serial_log(), needle, support::guest_boot_timeout());
        assert!(
            found,
            "{needle} not on the serial console.\nserial:\n{text}\nlauncher log:\n{}",
            tail(&self.log())
        );
        text
    }

    fn wait_log(&self, needle: &str, timeout: Duration) {
        let (found, text) = wait_for_text(&self.log(), needle, timeout);
        assert!(
            found,
            "{needle:?} not in the launcher's log within {timeout:?}:\n{}",
            last_lines(&text, 40)
        );
    }

    /// `launcher status` in the pod: exit code.
    fn launcher_status(&self) -> i32 {
        let bin = support::launcher_bin();
        let rd = self.run_dir();
        let out = self.pod.exec(&[
            bin.to_str().unwrap(),
            "status",
            "--run-dir",
            rd.to_str().unwrap(),
        ]);
        out.status.code().unwrap_or(-1)
    }

    /// Waits for the test pause at `phase`; panics if the launcher ends first.
    fn wait_paused(&self, child: &mut Child, phase: &str) {
        let marker = self.run_dir().join("test-paused");
        let deadline = Instant::now() + support::guest_boot_timeout();
        loop {
            if std::fs::read_to_string(&marker).is_ok_and(|s| s == phase) {
                return;
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "launcher ended ({st}) before pausing at {phase}:\n{}",
                    tail(&self.log())
                );
            }
            assert!(
                Instant::now() < deadline,
                "no pause at {phase}:\n{}",
                tail(&self.log())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn resume(&self) {
        std::fs::remove_file(self.run_dir().join("test-paused")).expect("removing the marker");
    }

    /// Live processes in the pod's network namespace.
    fn pod_processes(&self) -> Vec<(i32, String)> {
        let ns = std::fs::metadata(format!("/run/netns/{}", self.pod.info().pod_netns))
            .expect("pod netns")
            .ino();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            if m.ino() == ns && alive(pid) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                out.push((pid, comm.trim().to_string()));
            }
        }
        out
    }

    /// No process in the pod, the pod network equals its snapshot, and the domain's persistent
    /// definition is gone from the pod's /etc/libvirt.
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut procs = self.pod_processes();
        while !procs.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            procs = self.pod_processes();
        }
        assert!(procs.is_empty(), "processes left in the pod: {procs:?}");
        assert_eq!(
            self.before,
            self.pod.snapshot(),
            "the pod network differs from its snapshot before the run"
        );
        self.assert_undefined();
    }

    fn assert_undefined(&self) {
        let xml = format!("/etc/libvirt/qemu/{DOMAIN}.xml");
        let out = self.pod.exec(&["test", "-e", &xml]);
        assert!(
            !out.status.success(),
            "the domain is still defined ({xml} exists)"
        );
    }
}

fn last_lines(t: &str, n: usize) -> String {
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn tail(p: &Path) -> String {
    last_lines(&std::fs::read_to_string(p).unwrap_or_default(), 40)
}

fn wait_exit(child: &mut Child, timeout: Duration, what: &str, log: &Path) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "launcher did not exit within {timeout:?} ({what}); its log:\n{}",
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_running(c: &Case) -> serde_json::Value {
    let deadline = Instant::now() + support::guest_boot_timeout();
    loop {
        if let Ok(text) = std::fs::read_to_string(c.run_dir().join("status.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if v["phase"] == "running" {
                    return v;
                }
                if v["phase"] == "failed" {
                    panic!("launcher failed: {v}\n{}", tail(&c.log()));
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "launcher did not reach phase running; log:\n{}",
            tail(&c.log())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
        }
    }
    out
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn children_named(pid: i32, name: &str) -> Vec<i32> {
    children(pid)
        .into_iter()
        .filter(|k| alive(*k) && comm(*k) == name)
        .collect()
}

/// Zombie children of `pid`.
fn zombie_children(pid: i32) -> Vec<i32> {
    children(pid)
        .into_iter()
        .filter(|k| {
            std::fs::read_to_string(format!("/proc/{k}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(false)
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn kill(pid: i32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// The qemu process in the pod (host pid).
fn pod_qemu(c: &Case) -> i32 {
    let q: Vec<i32> = c
        .pod_processes()
        .into_iter()
        .filter(|(_, n)| n.starts_with("qemu"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(q.len(), 1, "exactly one qemu in the pod: {q:?}");
    q[0]
}

// ---------------------------------------------------------------------------------------------
// 1 + 6: a stop signal at each bring-up phase; `launcher status` fails during the bring-up.

/// Pauses at `phase`, checks `launcher status` fails, sends `sig`, resumes: exit 0, the
/// termination message says it stopped before the VM started, nothing left behind.
fn stop_during_bring_up(phase: &str, sig: &str, name: &str) {
    let c = Case::new(Opts {
        env: vec![("LAUNCHER_TEST_PAUSE_AT", phase.to_string())],
        ..Opts::default()
    });
    let mut child = c.spawn();
    c.wait_paused(&mut child, phase);
    assert_eq!(c.status()["phase"], phase);
    assert_eq!(
        c.launcher_status(),
        1,
        "launcher status must fail during the bring-up ({phase})"
    );
    let t = Instant::now();
    kill(child.id() as i32, sig);
    // The signal is queued; let the listener see it before the phase "ends".
    c.wait_log("signal received", Duration::from_secs(5));
    c.resume();
    let st = wait_exit(&mut child, Duration::from_secs(20), sig, &c.log());
    assert_eq!(st.code(), Some(0), "exit; termination: {}", c.term());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    let term = c.term();
    assert!(
        term.contains(&format!("stopped by {name} before the VM started")),
        "{term}"
    );
    let s = c.status();
    assert_eq!(s["phase"], "stopped", "{s}");
    assert_ne!(c.launcher_status(), 0, "launcher status after the end");
    c.assert_clean();
}

#[test]
fn sigterm_while_plumbing_tears_down_and_exits_0() {
    stop_during_bring_up("plumbing", "TERM", "SIGTERM");
}

#[test]
fn sigint_after_dhcp_is_up_tears_down_and_exits_0() {
    stop_during_bring_up("dhcp-up", "INT", "SIGINT");
}

#[test]
fn sigterm_while_libvirt_starts_stops_the_daemons_and_exits_0() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    stop_during_bring_up("libvirt-up", "TERM", "SIGTERM");
}

#[test]
fn sigquit_while_libvirt_starts_stops_the_daemons_and_exits_0() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    stop_during_bring_up("libvirt-up", "QUIT", "SIGQUIT");
}

/// Right after define + create: the domain runs, so the stop is a normal graceful stop.
#[test]
fn sigterm_right_after_define_stops_the_new_domain_and_exits_0() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new(Opts {
        grace: 3,
        extra_args: "guest.hold=1".into(),
        env: vec![("LAUNCHER_TEST_PAUSE_AT", "defining".into())],
        ..Opts::default()
    });
    let mut child = c.spawn();
    c.wait_paused(&mut child, "defining");
    assert_eq!(c.launcher_status(), 1, "not ready while defining");
    let xml = format!("/etc/libvirt/qemu/{DOMAIN}.xml");
    assert!(
        c.pod.exec(&["test", "-e", &xml]).status.success(),
        "the defined domain's {xml} exists (so assert_undefined can fail)"
    );
    let qemu = pod_qemu(&c);
    let t = Instant::now();
    kill(child.id() as i32, "TERM");
    c.wait_log("signal received", Duration::from_secs(5));
    c.resume();
    let st = wait_exit(&mut child, Duration::from_secs(3 + 15), "SIGTERM", &c.log());
    assert_eq!(st.code(), Some(0), "termination: {}", c.term());
    assert!(t.elapsed() < Duration::from_secs(3 + 10), "{:?}", t.elapsed());
    assert!(c.term().contains("stopped by SIGTERM"), "{}", c.term());
    assert!(!alive(qemu));
    c.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// 2: a second SIGTERM, or SIGQUIT, during the grace period destroys at once.

fn destroy_now_during_grace(first: &str, second: &str, expect: &str) {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let grace = 60;
    let c = Case::new(Opts {
        grace,
        extra_args: "guest.hold=1".into(),
        ..Opts::default()
    });
    let mut child = c.spawn();
    wait_running(&c);
    c.wait_serial("GUEST-READY");
    assert_eq!(c.launcher_status(), 0, "launcher status while running");
    let qemu = pod_qemu(&c);
    kill(child.id() as i32, first);
    c.wait_log("asking the guest to shut down", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still in the grace period");
    let t = Instant::now();
    kill(child.id() as i32, second);
    let st = wait_exit(&mut child, Duration::from_secs(15), second, &c.log());
    let took = t.elapsed();
    assert_eq!(st.code(), Some(0), "termination: {}", c.term());
    assert!(
        took < Duration::from_secs(10),
        "destroy now took {took:?} (grace is {grace} s)"
    );
    let term = c.term();
    assert!(term.contains(expect), "{term}");
    assert!(term.contains("destroyed"), "{term}");
    assert!(
        !term.contains(&format!("within {grace} s")),
        "the grace period did not run out: {term}"
    );
    assert!(!alive(qemu));
    c.assert_clean();
}

#[test]
fn a_second_sigterm_during_the_grace_period_destroys_at_once() {
    destroy_now_during_grace("TERM", "TERM", "stopped by SIGTERM: a second SIGTERM");
}

#[test]
fn sigquit_during_the_grace_period_destroys_at_once() {
    destroy_now_during_grace("INT", "QUIT", "stopped by SIGINT: SIGQUIT during the grace period");
}
