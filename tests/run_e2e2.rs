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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::libvirtd::PodLibvirtd;
use support::run::{alive, children, comm, kill, last_lines, tail};
use support::{require_root, wait_for_text, Sandbox, Style};

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
        let dir = support::run::case_dir("run-e2e2-", true);
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
{kb}        - name: default
          bridge: {{}}
          macAddress: "02:00:00:00:e2:02"
  networks:
    - name: default
      pod: {{}}
"#,
            grace = o.grace,
            kb = support::run::kernel_boot_yaml(&support::guest_cmdline(&o.extra_args)),
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
        let wrap: &[&str] = if self.o.pid1 {
            &["unshare", "--pid", "--fork", "--mount-proc"]
        } else {
            &[]
        };
        let extra: Vec<&str> = match &self.o.libvirt_uri {
            Some(u) => vec!["--libvirt-uri", u.as_str()],
            None => Vec::new(),
        };
        let mut cmd = support::run::run_cmd(&self.pod, self.dir.path(), wrap, &extra);
        for (k, v) in &self.o.env {
            cmd.env(k, v);
        }
        support::run::spawn_logged(cmd, &self.log())
    }

    fn status(&self) -> serde_json::Value {
        support::run::status(&self.run_dir())
    }

    fn serial_log(&self) -> PathBuf {
        support::run::serial_log(&self.run_dir(), UID)
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
        support::run::launcher_status(&self.pod, &self.run_dir())
            .status
            .code()
            .unwrap_or(-1)
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
        support::run::pod_processes(&self.pod)
    }

    /// No process in the pod, the pod network equals its snapshot, and the domain's persistent
    /// definition is gone from the pod's /etc/libvirt.
    fn assert_clean(&self) {
        support::run::assert_no_pod_processes(&self.pod);
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

fn wait_exit(child: &mut Child, timeout: Duration, what: &str, log: &Path) -> ExitStatus {
    support::run::wait_exit(
        child,
        timeout,
        &format!(" ({what})"),
        log,
        Duration::from_millis(20),
    )
}

fn wait_running(c: &Case) -> serde_json::Value {
    support::run::wait_running(&c.run_dir(), &c.log(), false, Duration::from_millis(50))
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
    assert!(
        t.elapsed() < Duration::from_secs(3 + 10),
        "{:?}",
        t.elapsed()
    );
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
    assert!(
        child.try_wait().unwrap().is_none(),
        "still in the grace period"
    );
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
    destroy_now_during_grace(
        "INT",
        "QUIT",
        "stopped by SIGINT: SIGQUIT during the grace period",
    );
}

// ---------------------------------------------------------------------------------------------
// 4: five libvirtd deaths within 60 s → exit 4, the reason in the termination log, nothing left.

#[test]
fn five_libvirtd_deaths_within_60_s_exit_4_with_the_reason() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new(Opts {
        grace: 3,
        extra_args: "guest.hold=1".into(),
        ..Opts::default()
    });
    let mut child = c.spawn();
    wait_running(&c);
    let launcher = child.id() as i32;
    let qemu = pod_qemu(&c);
    let mut killed = Vec::new();
    for n in 1..=5 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            if let Some(p) = children_named(launcher, "libvirtd")
                .into_iter()
                .find(|p| !killed.contains(p))
            {
                break p;
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "launcher ended ({st}) after {} deaths:\n{}",
                    n - 1,
                    tail(&c.log())
                );
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd not restarted after death {}:\n{}",
                n - 1,
                tail(&c.log())
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        kill(pid, "KILL");
        killed.push(pid);
        if n < 5 {
            assert!(alive(qemu), "the guest keeps running after death {n}");
        }
    }
    let st = wait_exit(&mut child, Duration::from_secs(20), "5 deaths", &c.log());
    assert_eq!(st.code(), Some(4), "termination: {}", c.term());
    let term = c.term();
    assert!(
        term.starts_with("libvirt failed: libvirtd died 5 times within 60 s"),
        "{term}"
    );
    let s = c.status();
    assert_eq!(s["phase"], "failed", "{s}");
    assert_eq!(s["exit_code"], 4, "{s}");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("died 5 times"),
        "{s}"
    );
    assert!(!alive(qemu), "qemu must be gone");
    assert_ne!(c.launcher_status(), 0);
    c.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// 7: the launcher as PID 1 of its container.

fn ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(-1)
}

#[test]
fn as_pid_1_the_launcher_reaps_orphans_and_sigterm_from_inside_ends_it_cleanly() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new(Opts {
        grace: 3,
        extra_args: "guest.hold=1".into(),
        pid1: true,
        ..Opts::default()
    });
    let mut child = c.spawn(); // unshare, whose child is the launcher
    wait_running(&c);
    let launcher = children(child.id() as i32)
        .into_iter()
        .find(|p| comm(*p) == "launcher")
        .expect("the launcher is unshare's child");
    let nspid = std::fs::read_to_string(format!("/proc/{launcher}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .map(|l| l.split_whitespace().last().unwrap().to_string())
        .unwrap();
    assert_eq!(nspid, "1", "the launcher is PID 1 in its PID namespace");
    // qemu (daemonized by libvirtd) is an orphan, so PID 1's child.
    let qemu = pod_qemu(&c);
    assert_eq!(ppid(qemu), launcher, "qemu is the launcher's child");
    // An orphan: a shell in the launcher's PID namespace starts `sleep 2` and exits at once.
    let pidns = format!("/proc/{launcher}/ns/pid");
    let out = Command::new("nsenter")
        .args([
            &format!("--pid={pidns}"),
            "--",
            "sh",
            "-c",
            "sleep 2 & exit 0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    let orphan = loop {
        if let Some(p) = children(launcher).into_iter().find(|p| comm(*p) == "sleep") {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the orphan was not reparented to the launcher"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Once it ends, PID 1 reaps it: no zombie stays behind.
    let deadline = Instant::now() + Duration::from_secs(6);
    while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
        assert!(
            Instant::now() < deadline,
            "orphan {orphan} not reaped (zombies of the launcher: {:?})",
            zombie_children(launcher)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        zombie_children(launcher).is_empty(),
        "{:?}",
        zombie_children(launcher)
    );
    assert_eq!(c.launcher_status(), 0, "launcher status while running");
    // SIGTERM from inside the container (`kill 1`): PID 1 gets only signals it handles.
    let out = Command::new("nsenter")
        .args([&format!("--pid={pidns}"), "--", "sh", "-c", "kill -TERM 1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let st = wait_exit(
        &mut child,
        Duration::from_secs(3 + 15),
        "SIGTERM to PID 1",
        &c.log(),
    );
    assert_eq!(st.code(), Some(0), "termination: {}", c.term());
    assert!(c.term().contains("stopped by SIGTERM"), "{}", c.term());
    assert!(c.term().contains("destroyed"), "{}", c.term());
    assert!(!alive(qemu));
    c.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// 5: a guest reboot follows on_reboot (rebootPolicy: Reboot → restart, Terminate → destroy).

/// The guest reboots itself: magic SysRq `b` typed on its PS/2 keyboard.
fn guest_reboot(c: &Case) {
    let out = c.pod.exec(&[
        "virsh",
        "-c",
        "qemu:///system",
        "send-key",
        DOMAIN,
        "KEY_LEFTALT",
        "KEY_SYSRQ",
        "KEY_B",
    ]);
    assert!(
        out.status.success(),
        "virsh send-key: {}",
        support::show(&out)
    );
}

fn domain_xml(c: &Case) -> String {
    std::fs::read_to_string(c.run_dir().join("domain.xml")).unwrap()
}

#[test]
fn a_guest_reboot_with_reboot_policy_reboot_restarts_in_the_same_qemu() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new(Opts {
        grace: 10,
        extra_args: "sysrq_always_enabled=1".into(),
        ..Opts::default()
    });
    let mut child = c.spawn();
    wait_running(&c);
    assert!(
        domain_xml(&c).contains("<on_reboot>restart</on_reboot>"),
        "{}",
        domain_xml(&c)
    );
    c.wait_serial("GUEST-READY");
    let qemu = pod_qemu(&c);
    guest_reboot(&c);
    c.wait_log("the guest rebooted", Duration::from_secs(30));
    let deadline = Instant::now() + support::guest_boot_timeout();
    while support::marker_lines(&c.serial(), "GUEST-READY").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the guest did not boot again:\n{}",
            c.serial()
        );
        assert!(child.try_wait().unwrap().is_none(), "{}", tail(&c.log()));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        support::marker_lines(&c.serial(), "GUEST-BOOT").len(),
        2,
        "{}",
        c.serial()
    );
    assert!(alive(qemu), "the same qemu runs the rebooted guest");
    assert_eq!(pod_qemu(&c), qemu);
    assert_eq!(c.launcher_status(), 0, "still ready after the reboot");
    kill(child.id() as i32, "TERM");
    let st = wait_exit(
        &mut child,
        Duration::from_secs(10 + 15),
        "SIGTERM",
        &c.log(),
    );
    assert_eq!(st.code(), Some(0), "termination: {}", c.term());
    assert_eq!(c.term().trim(), "stopped by SIGTERM: the guest shut down");
    c.assert_clean();
}

#[test]
fn a_guest_reboot_with_reboot_policy_terminate_ends_the_run_with_exit_0() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::new(Opts {
        grace: 10,
        extra_args: "sysrq_always_enabled=1".into(),
        reboot_policy: Some("Terminate"),
        ..Opts::default()
    });
    let mut child = c.spawn();
    wait_running(&c);
    assert!(
        domain_xml(&c).contains("<on_reboot>destroy</on_reboot>"),
        "{}",
        domain_xml(&c)
    );
    c.wait_serial("GUEST-READY");
    let qemu = pod_qemu(&c);
    guest_reboot(&c);
    let st = wait_exit(
        &mut child,
        Duration::from_secs(30),
        "guest reboot",
        &c.log(),
    );
    assert_eq!(st.code(), Some(0), "termination: {}", c.term());
    // libvirt reports a reset under on_reboot=destroy like a guest poweroff (qemu ran with
    // -no-reboot and stopped on the guest's reset): the documented end is exit 0.
    assert_eq!(c.term().trim(), "the guest powered off");
    assert!(
        c.serial().contains("sysrq: Resetting"),
        "the guest really rebooted:\n{}",
        c.serial()
    );
    assert_eq!(support::marker_lines(&c.serial(), "GUEST-BOOT").len(), 1);
    assert!(!alive(qemu));
    c.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// 3: `--libvirt-uri` with an external daemon, killed (-9) and restarted by its own supervisor
// (this test): the launcher reconnects, re-registers its callbacks (a guest poweroff afterwards
// is still seen through events: exit 0, not a crash) and never manages that daemon's life.

/// A libvirtd the test runs in the pod (its own config, socket dir and pid file).
fn external_libvirtd(c: &Case) -> PodLibvirtd {
    PodLibvirtd::new(&c.pod, c.path("extlv"), "the external libvirtd")
}

fn uri_of(lv: &PodLibvirtd) -> String {
    format!("qemu:///system?socket={}", lv.socket().display())
}

fn count_in_log(c: &Case, needle: &str) -> usize {
    std::fs::read_to_string(c.log())
        .unwrap_or_default()
        .matches(needle)
        .count()
}

#[test]
fn an_external_libvirtd_killed_and_restarted_is_reconnected_and_events_still_arrive() {
    let _g = GUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Case::new(Opts::default());
    let mut lv = external_libvirtd(&c);
    lv.start(&c.pod);
    c.o.libvirt_uri = Some(uri_of(&lv));
    let mut child = c.spawn();
    let s = wait_running(&c);
    assert_eq!(s["libvirt_uri"], uri_of(&lv).as_str(), "{s}");
    let launcher = child.id() as i32;
    assert!(
        children_named(launcher, "libvirtd").is_empty()
            && children_named(launcher, "virtlogd").is_empty(),
        "with --libvirt-uri the launcher starts no daemon"
    );
    c.wait_serial("GUEST-READY");
    let qemu = pod_qemu(&c);
    assert_eq!(count_in_log(&c, "event callbacks registered"), 1);

    // The external daemon dies; its supervisor (this test) restarts it.
    lv.kill9();
    c.wait_log("the libvirt connection closed", Duration::from_secs(15));
    // A long outage (its supervisor may take a while): the launcher must keep trying, not give
    // up after a fixed number of attempts (it once stopped after about 10 s).
    std::thread::sleep(Duration::from_secs(15));
    assert!(child.try_wait().unwrap().is_none(), "{}", tail(&c.log()));
    assert!(alive(qemu), "the guest runs on while libvirtd is down");
    lv.start(&c.pod);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_in_log(&c, "domain state after reconnecting") < 1 {
        assert!(
            Instant::now() < deadline,
            "no reconnect:\n{}",
            tail(&c.log())
        );
        assert!(child.try_wait().unwrap().is_none(), "{}", tail(&c.log()));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        count_in_log(&c, "event callbacks registered"),
        2,
        "callbacks registered again on the new connection"
    );
    assert!(alive(qemu), "the guest keeps running");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the launcher keeps running"
    );
    assert_eq!(c.launcher_status(), 0, "still ready after the reconnect");

    // The guest powers off (ACPI button through the restarted daemon). Only the re-registered
    // callbacks tell the launcher it was a poweroff; without events qemu's exit is a crash (4).
    let uri = uri_of(&lv);
    let out = c.pod.exec(&["virsh", "-c", &uri, "shutdown", DOMAIN]);
    assert!(
        out.status.success(),
        "virsh shutdown: {}",
        support::show(&out)
    );
    let st = wait_exit(
        &mut child,
        Duration::from_secs(60),
        "guest poweroff",
        &c.log(),
    );
    assert_eq!(
        st.code(),
        Some(0),
        "termination: {}\n{}",
        c.term(),
        tail(&c.log())
    );
    assert_eq!(c.term().trim(), "the guest powered off");
    assert!(
        count_in_log(&c, "\"event\":\"shutdown\"") + count_in_log(&c, "\"event\":\"stopped\"") >= 1,
        "lifecycle events after the reconnect:\n{}",
        tail(&c.log())
    );
    assert!(!alive(qemu));
    // The launcher left the daemon alone (no stop, no restart) and undefined the domain there.
    let daemon = lv.pid();
    assert!(
        alive(daemon),
        "the external libvirtd must outlive the launcher"
    );
    let out = c
        .pod
        .exec(&["virsh", "-c", &uri, "list", "--all", "--name"]);
    assert!(out.status.success(), "{}", support::show(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(DOMAIN),
        "the domain is undefined: {}",
        support::show(&out)
    );
    lv.stop();
    c.assert_clean();
}
