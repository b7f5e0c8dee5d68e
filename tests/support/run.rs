//! The shared harness of the end-to-end tests of `launcher run` (run_e2e.rs, run_e2e2.rs,
//! l2_e2e.rs, multus_e2e.rs, passt_e2e.rs): the case directory with the test guest, the
//! `launcher run` command line, waiting for exit and status, logs, and the pod's processes.
//!
//! A case directory holds `vmi.yaml`, `run/` (status.json, serial log), `cdd/kernel-boot/` (the
//! container-disk dir) and `termination-log`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::{launcher_bin, test_guest, Sandbox};

/// A temporary case directory named `<prefix>…` with `cdd/kernel-boot/` holding the test guest's
/// initrd and, when `with_kernel`, its kernel.
pub fn case_dir(prefix: &str, with_kernel: bool) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    fill_kernel_boot(dir.path(), with_kernel);
    dir
}

/// Creates `<dir>/cdd/kernel-boot/` with the test guest's initrd and, when `with_kernel`, its
/// kernel.
pub fn fill_kernel_boot(dir: &Path, with_kernel: bool) {
    let kb = dir.join("cdd/kernel-boot");
    fs::create_dir_all(&kb).unwrap();
    let g = test_guest();
    if with_kernel {
        fs::copy(&g.kernel, kb.join("vmlinuz")).unwrap();
    }
    fs::copy(&g.initrd, kb.join("initrd.img")).unwrap();
}

/// `<wrap…> launcher run --vmi … --run-dir … --container-disk-dir … --accel tcg
/// --termination-log … --log-format json <extra…>` in the pod, for the case directory `dir`;
/// stdin and stdout are null.
pub fn run_cmd(pod: &Sandbox, dir: &Path, wrap: &[&str], extra: &[&str]) -> Command {
    let bin = launcher_bin();
    let (vmi, rd, cdd, term) = (
        dir.join("vmi.yaml"),
        dir.join("run"),
        dir.join("cdd"),
        dir.join("termination-log"),
    );
    let mut args: Vec<&str> = wrap.to_vec();
    args.extend([
        bin.to_str().unwrap(),
        "run",
        "--vmi",
        vmi.to_str().unwrap(),
        "--run-dir",
        rd.to_str().unwrap(),
        "--container-disk-dir",
        cdd.to_str().unwrap(),
        "--accel",
        "tcg",
        "--termination-log",
        term.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    args.extend_from_slice(extra);
    let mut cmd = pod.exec_cmd(&args);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

/// Spawns `cmd` (from [`run_cmd`]) with its stderr written to `log`.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    cmd.stderr(fs::File::create(log).unwrap())
        .spawn()
        .expect("spawning launcher run")
}

/// `launcher status --run-dir <run_dir>` in the pod.
pub fn launcher_status(pod: &Sandbox, run_dir: &Path) -> Output {
    let bin = launcher_bin();
    pod.exec(&[
        bin.to_str().unwrap(),
        "status",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ])
}

/// The serial log of the domain with VMI uid `uid`.
pub fn serial_log(run_dir: &Path, uid: &str) -> PathBuf {
    run_dir.join(uid).join("virt-serial0-log")
}

/// The last `n` lines of `t`.
pub fn last_lines(t: &str, n: usize) -> String {
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last 40 lines of the file `p` (empty when it cannot be read).
pub fn tail(p: &Path) -> String {
    last_lines(&fs::read_to_string(p).unwrap_or_default(), 40)
}

/// Waits for `child` to exit; after `timeout` kills it and panics with "launcher did not exit
/// within {timeout}{context}; its log:" and the tail of `log`.
pub fn wait_exit(
    child: &mut Child,
    timeout: Duration,
    context: &str,
    log: &Path,
    poll: Duration,
) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "launcher did not exit within {timeout:?}{context}; its log:\n{}",
                tail(log)
            );
        }
        std::thread::sleep(poll);
    }
}

/// Waits until `<run_dir>/status.json` says phase `running` (and, with `need_pid`, names the
/// launcher's pid); panics when it says `failed` or after the guest boot timeout.
pub fn wait_running(
    run_dir: &Path,
    log: &Path,
    need_pid: bool,
    poll: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + super::guest_boot_timeout();
    loop {
        if let Ok(text) = fs::read_to_string(run_dir.join("status.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if v["phase"] == "running"
                    && (!need_pid || v["launcher_pid"] != serde_json::Value::Null)
                {
                    return v;
                }
                if v["phase"] == "failed" {
                    panic!("launcher failed: {v}\n{}", tail(log));
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "launcher did not reach phase running; log:\n{}",
            tail(log)
        );
        std::thread::sleep(poll);
    }
}

/// `<run_dir>/status.json`, parsed.
pub fn status(run_dir: &Path) -> serde_json::Value {
    let text = fs::read_to_string(run_dir.join("status.json")).expect("reading status.json");
    serde_json::from_str(&text).expect("status.json is JSON")
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// The process name of `pid` (empty when gone).
pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The children of `pid` (every thread's), zombies included.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let kids = fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// `kill -<sig> <pid>`; panics when kill fails.
pub fn kill(pid: i32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Live (non-zombie) processes in the pod's network namespace: (pid, comm).
pub fn pod_processes(pod: &Sandbox) -> Vec<(i32, String)> {
    let ns = fs::metadata(format!("/run/netns/{}", pod.info().pod_netns))
        .expect("pod netns")
        .ino();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if m.ino() == ns && alive(pid) {
            let c = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, c.trim().to_string()));
        }
    }
    out
}

/// Asserts that no process is left in the pod, giving orphans 5 s to be reaped.
pub fn assert_no_pod_processes(pod: &Sandbox) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut procs = pod_processes(pod);
    while !procs.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        procs = pod_processes(pod);
    }
    assert!(procs.is_empty(), "processes left in the pod: {procs:?}");
}

/// Kills and reaps the child on drop unless it has exited (a test failing half-way).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The VMI lines from `firmware:` to `interfaces:` (indented for `spec.domain`): kernelBoot of
/// the test guest from the container disk with `kernelArgs: "<args>"`, then `devices:` without
/// graphics. The interface list items follow.
pub fn kernel_boot_yaml(args: &str) -> String {
    format!(
        r#"    firmware:
      kernelBoot:
        kernelArgs: "{args}"
        container:
          image: registry.example/test-guest:latest
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
    devices:
      autoattachGraphicsDevice: false
      interfaces:
"#
    )
}

/// SIGTERM to the launcher `child`, then asserts it exits 0 within 40 s. Panic messages start
/// with `prefix` and carry the termination log `term` and the tail of `log`.
pub fn sigterm_expect_exit_0(child: &mut Child, prefix: &str, term: &Path, log: &Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix}launcher did not exit after SIGTERM; log:\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        st.code(),
        Some(0),
        "{prefix}exit after SIGTERM; termination log: {}\nlauncher log:\n{}",
        fs::read_to_string(term).unwrap_or_default(),
        tail(log)
    );
}
