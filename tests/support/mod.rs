//! Shared helpers for integration tests: root checks, paths, sandbox pods and the tiny test guest.
//!
//! Include with `mod support;` from a test file in `tests/` (every integration test of the
//! `launcher` package). Each file uses a subset, hence the `dead_code` allowances.
//!
//! ```ignore
//! mod support;
//! use support::{require_root, Sandbox, Style};
//!
//! #[test]
//! fn pod_has_eth0() {
//!     require_root();
//!     let pod = Sandbox::create(Style::Flannel);
//!     let out = pod.exec_ok(&["ip", "-j", "addr", "show", "dev", "eth0"]);
//!     assert!(out.contains("10.244.1.5"));
//! } // Drop destroys the pod (namespaces, links, mounts, files, processes).
//! ```
//!
//! Sandboxes come from `scripts/sandbox.sh` (see docs/sandbox.md). Names are unique per process
//! and per call, so tests run in parallel, also across test binaries.
#![allow(dead_code)]

pub mod dhcp_client;
pub mod golden;
pub mod libvirtd;
pub mod run;
pub mod serve;

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A lock held across every process on this machine (an exclusive `flock` on
/// `/run/launcher-tests-<name>.lock`), released when dropped. For what the sandbox shares
/// between pods: `/dev/tapN` of a macvtap is named by its ifindex, which is per network
/// namespace, while the sandbox pods share the host's devtmpfs. Two pods whose macvtaps get the
/// same ifindex (likely: fresh namespaces number alike) would share one `/dev/tapN`, and the
/// second guest would attach to the first pod's device. A real pod has its own `/dev`.
pub fn host_lock(name: &str) -> nix::fcntl::Flock<fs::File> {
    let path = format!("/run/launcher-tests-{name}.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {path}: {e}"));
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {path}: {e}"))
}

/// Panics (never skips) when the test does not run as root.
pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        panic!(
            "this test needs root (it creates network and mount namespaces, taps, qemu guests); \
             effective uid is {euid}. Run it as root, e.g. `sudo -E cargo test` or scripts/test.sh. \
             Root tests never skip."
        );
    }
}

/// The workspace root (the folder holding `scripts/`, `tests/`, `launcher/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("launcher/ has a parent folder")
        .to_path_buf()
}

/// The `launcher` binary cargo built for this test run.
pub fn launcher_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_launcher"))
}

/// `scripts/sandbox.sh`.
pub fn sandbox_script() -> PathBuf {
    repo_root().join("scripts/sandbox.sh")
}

/// Runs a command to completion; panics with its exit status, stdout and stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed ({}):\n{}", out.status, show(&out));
    }
    out
}

/// Human-readable stdout and stderr of a finished command (for assertion messages).
pub fn show(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// stdout as a String.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pod network style, as `scripts/sandbox.sh create --style`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `10.244.1.5/24`, default via `10.244.1.1` (the node-side veth).
    Flannel,
    /// `10.244.1.5/32`, `169.254.1.1` on-link gateway answered by proxy ARP on the node.
    Calico,
    /// Flannel plus `fd00:10:244:1::5/64`, default via `fd00:10:244:1::1`.
    Dual,
}

impl Style {
    pub fn as_str(self) -> &'static str {
        match self {
            Style::Flannel => "flannel",
            Style::Calico => "calico",
            Style::Dual => "dual",
        }
    }
}

impl fmt::Display for Style {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `scripts/sandbox.sh info NAME` reports.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    pub name: String,
    pub pod_netns: String,
    pub node_netns: String,
    pub style: String,
    pub mtu: u32,
    /// The MAC `eth0` had when the pod was made (a launcher may move it to the VM).
    pub pod_mac: String,
    pub pod_ip: String,
    pub pod_prefix: u8,
    pub gateway: String,
    /// An address of the node that the pod (and a bridged guest) can ping.
    pub node_ip: String,
    /// A host behind the node (netns `<name>-stub`), reached through the node's routing.
    pub remote_ip: String,
    pub pod_ip6: Option<String>,
    pub gateway6: Option<String>,
    pub node_ip6: Option<String>,
    pub remote_ip6: Option<String>,
    pub hostname: String,
    /// Node-side end of the pod's eth0.
    pub node_veth: String,
    /// The whole JSON object (guests, secondaries, ...).
    pub raw: serde_json::Value,
}

impl SandboxInfo {
    fn parse(json: &str) -> SandboxInfo {
        let raw: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("sandbox.sh info printed invalid JSON ({e}): {json}"));
        let s = |k: &str| -> String {
            raw[k]
                .as_str()
                .unwrap_or_else(|| panic!("sandbox info: missing \"{k}\" in {json}"))
                .to_string()
        };
        let o = |k: &str| raw[k].as_str().map(str::to_string);
        SandboxInfo {
            name: s("name"),
            pod_netns: s("pod_netns"),
            node_netns: s("node_netns"),
            style: s("style"),
            mtu: raw["mtu"].as_u64().expect("info.mtu") as u32,
            pod_mac: s("pod_mac"),
            pod_ip: s("pod_ip"),
            pod_prefix: raw["pod_prefix"].as_u64().expect("info.pod_prefix") as u8,
            gateway: s("gateway"),
            node_ip: s("node_ip"),
            remote_ip: s("remote_ip"),
            pod_ip6: o("pod_ip6"),
            gateway6: o("gateway6"),
            node_ip6: o("node_ip6"),
            remote_ip6: o("remote_ip6"),
            hostname: s("hostname"),
            node_veth: s("node_veth"),
            raw,
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A sandbox name unique among live processes: "t" + 7 base-36 digits of (pid, counter).
pub fn unique_name() -> String {
    let pid = u64::from(std::process::id()) & 0x3f_ffff; // pid_max is at most 2^22
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0x3fff;
    let mut v = (pid << 14) | n;
    let mut digits = [b'0'; 7];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(v % 36) as usize];
        v /= 36;
    }
    format!("t{}", std::str::from_utf8(&digits).unwrap())
}

/// A fake launcher pod (see docs/sandbox.md). Dropping it destroys it.
pub struct Sandbox {
    pub name: String,
    info: SandboxInfo,
    destroyed: bool,
}

/// Options for [`Sandbox::create_with`].
#[derive(Debug, Clone, Default)]
pub struct SandboxOpts<'a> {
    pub mtu: Option<u32>,
    pub hostname: Option<&'a str>,
}

impl Sandbox {
    /// Creates a pod of `style` with the defaults (MTU 1450, hostname = name). Panics on failure.
    pub fn create(style: Style) -> Sandbox {
        Sandbox::create_with(style, SandboxOpts::default())
    }

    pub fn create_with(style: Style, opts: SandboxOpts<'_>) -> Sandbox {
        require_root();
        let name = unique_name();
        let mut cmd = Command::new(sandbox_script());
        cmd.args(["create", &name, "--style", style.as_str()]);
        if let Some(mtu) = opts.mtu {
            cmd.args(["--mtu", &mtu.to_string()]);
        }
        if let Some(h) = opts.hostname {
            cmd.args(["--hostname", h]);
        }
        let out = cmd.output().expect("running scripts/sandbox.sh create");
        if !out.status.success() {
            // A leftover of a dead process that had our pid: remove it and try once more.
            let _ = Command::new(sandbox_script())
                .args(["destroy", &name])
                .output();
            run_ok(&mut cmd);
        }
        let info = SandboxInfo::parse(&stdout(&run_ok(
            Command::new(sandbox_script()).args(["info", &name]),
        )));
        Sandbox {
            name,
            info,
            destroyed: false,
        }
    }

    pub fn info(&self) -> &SandboxInfo {
        &self.info
    }

    /// Re-reads `sandbox.sh info` (guests and secondaries appear in `raw`).
    pub fn info_fresh(&self) -> SandboxInfo {
        SandboxInfo::parse(&stdout(&run_ok(
            Command::new(sandbox_script()).args(["info", &self.name]),
        )))
    }

    /// A command that runs `args` inside the pod (network, mount and UTS namespaces).
    pub fn exec_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(sandbox_script());
        cmd.args(["exec", &self.name, "--"]).args(args);
        cmd
    }

    /// Runs `args` inside the pod and returns its output (any exit status).
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_cmd(args)
            .output()
            .unwrap_or_else(|e| panic!("sandbox exec {args:?}: {e}"))
    }

    /// Runs `args` inside the pod, panics unless it succeeds, returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        stdout(&run_ok(&mut self.exec_cmd(args)))
    }

    /// Runs `sh -c SCRIPT` inside the pod, panics unless it succeeds, returns stdout.
    pub fn sh(&self, script: &str) -> String {
        self.exec_ok(&["sh", "-c", script])
    }

    /// Starts `args` inside the pod with stdout and stderr piped. The child's pid is the
    /// command itself (sandbox.sh execs nsenter, which execs the command), so a signal sent to
    /// `child.id()` (e.g. SIGTERM to `launcher run`) reaches it directly.
    pub fn exec_spawn(&self, args: &[&str]) -> Child {
        self.exec_cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sandbox exec {args:?}: {e}"))
    }

    /// A command that runs `args` in the pod's node namespace.
    pub fn node_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(sandbox_script());
        cmd.args(["node", &self.name, "--"]).args(args);
        cmd
    }

    pub fn node(&self, args: &[&str]) -> Output {
        self.node_cmd(args)
            .output()
            .unwrap_or_else(|e| panic!("sandbox node {args:?}: {e}"))
    }

    pub fn node_ok(&self, args: &[&str]) -> String {
        stdout(&run_ok(&mut self.node_cmd(args)))
    }

    /// Normalized links, addresses, routes, nft ruleset and sysctls of the pod (for before/after).
    pub fn snapshot(&self) -> String {
        stdout(&run_ok(
            Command::new(sandbox_script()).args(["snapshot", &self.name]),
        ))
    }

    /// A stand-in for a VM NIC: a new netns whose `eth0` (with `mac`) is a veth whose peer is a
    /// port of `bridge` inside the pod. The bridge must exist.
    pub fn add_guest(&self, bridge: &str, mac: &str) -> GuestNs {
        let out = run_ok(Command::new(sandbox_script()).args([
            "add-guest",
            &self.name,
            "--bridge",
            bridge,
            "--mac",
            mac,
        ]));
        GuestNs {
            netns: stdout(&out).trim().to_string(),
        }
    }

    /// A second veth into the pod (`ifname`) from netns `<name>-node2`; style "flannel" (pod gets
    /// .5 of `subnet`, node2 .1) or "l2" (no pod address). Returns the JSON description.
    pub fn add_secondary(
        &self,
        ifname: &str,
        style: &str,
        subnet: Option<&str>,
    ) -> serde_json::Value {
        let mut cmd = Command::new(sandbox_script());
        cmd.args([
            "add-secondary",
            &self.name,
            "--ifname",
            ifname,
            "--style",
            style,
        ]);
        if let Some(s) = subnet {
            cmd.args(["--subnet", s]);
        }
        serde_json::from_str(&stdout(&run_ok(&mut cmd))).expect("add-secondary prints JSON")
    }

    /// A command in the secondary node namespace (`<name>-node2`).
    pub fn node2_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(sandbox_script());
        cmd.args(["node2", &self.name, "--"]).args(args);
        cmd
    }

    /// Destroys the sandbox now (Drop does it otherwise). Panics if destroy fails.
    pub fn destroy(&mut self) {
        if !self.destroyed {
            self.destroyed = true;
            run_ok(Command::new(sandbox_script()).args(["destroy", &self.name]));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.destroyed {
            self.destroyed = true;
            match Command::new(sandbox_script())
                .args(["destroy", &self.name])
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!("sandbox destroy {} failed:\n{}", self.name, show(&o)),
                Err(e) => eprintln!("sandbox destroy {}: {e}", self.name),
            }
        }
    }
}

/// A guest stand-in made by [`Sandbox::add_guest`]; removed with its sandbox.
#[derive(Debug, Clone)]
pub struct GuestNs {
    /// The guest's network namespace name (`<sandbox>-g<k>`).
    pub netns: String,
}

impl GuestNs {
    pub fn exec_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(sandbox_script());
        cmd.args(["exec", &self.netns, "--"]).args(args);
        cmd
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_cmd(args)
            .output()
            .unwrap_or_else(|e| panic!("guest exec {args:?}: {e}"))
    }

    pub fn exec_ok(&self, args: &[&str]) -> String {
        stdout(&run_ok(&mut self.exec_cmd(args)))
    }

    pub fn sh(&self, script: &str) -> String {
        self.exec_ok(&["sh", "-c", script])
    }

    pub fn exec_spawn(&self, args: &[&str]) -> Child {
        self.exec_cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("guest exec {args:?}: {e}"))
    }
}

/// The tiny test guest (scripts/build-test-guest.sh): Debian's kernel and a busybox initramfs.
#[derive(Debug, Clone)]
pub struct TestGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Builds the tiny guest once (cached by content under `.cache/test-guest/`; the script holds a
/// file lock, so parallel test binaries are safe) and returns its paths.
pub fn test_guest() -> TestGuest {
    static GUEST: OnceLock<TestGuest> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let out = run_ok(&mut Command::new(
                repo_root().join("scripts/build-test-guest.sh"),
            ));
            let text = stdout(&out);
            let mut lines = text.lines();
            let kernel = PathBuf::from(lines.next().expect("kernel path"));
            let initrd = PathBuf::from(lines.next().expect("initrd path"));
            assert!(kernel.is_file(), "test guest kernel {kernel:?} missing");
            assert!(initrd.is_file(), "test guest initrd {initrd:?} missing");
            TestGuest { kernel, initrd }
        })
        .clone()
}

/// Kernel command line for the test guest: serial console, quiet, no IO-APIC timer check (it
/// fails under TCG on a loaded host and panics the kernel), no local APIC timer (its boot-time
/// calibration goes wrong under load; the HPET ticks instead), no crypto self-tests (slow), reboot (= exit with
/// `-no-reboot`) on panic, plus the `guest.*` options (see scripts/build-test-guest.sh).
pub fn guest_cmdline(extra: &str) -> String {
    format!("console=ttyS0 quiet panic=-1 no_timer_check noapictimer cryptomgr.notests {extra}")
        .trim()
        .to_string()
}

/// Polls `path` until it contains `needle` or `timeout` passes; returns the file's content and
/// whether the needle was found.
pub fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> (bool, String) {
    let start = Instant::now();
    loop {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(path) {
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        if s.contains(needle) {
            return (true, s);
        }
        if start.elapsed() >= timeout {
            return (false, s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long tests wait for a TCG guest to reach GUEST-READY (override: LAUNCHER_TEST_BOOT_TIMEOUT
/// in seconds). Generous: TCG on a loaded 2-core machine is slow.
pub fn guest_boot_timeout() -> Duration {
    let secs = std::env::var("LAUNCHER_TEST_BOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Lines of a serial log that start with `prefix` (e.g. "GUEST-DHCP").
pub fn marker_lines(log: &str, prefix: &str) -> Vec<String> {
    log.lines()
        .map(|l| l.trim_start_matches(|c: char| c.is_control()))
        .filter_map(|l| l.find(prefix).map(|i| l[i..].trim_end().to_string()))
        .collect()
}

// ------------------------------------------------------------------------------------------
// l2e2e (issue 7: macvtap and tc-redirect): helpers shared by tests/net_l2.rs and
// tests/l2_e2e.rs.

/// A UDP listener on `0.0.0.0:port` inside network namespace `netns` (`/run/netns/NAME`),
/// run by a thread of the test process (setns affects that thread only; the socket stays in
/// that namespace). It counts the datagrams that arrive: a witness that DHCP did (or did not)
/// cross a guard. Stops when dropped.
pub struct UdpWitness {
    count: std::sync::Arc<AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpWitness {
    pub fn start(netns: &str, port: u16) -> UdpWitness {
        let count = std::sync::Arc::new(AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let path = format!("/run/netns/{netns}");
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let setup = || -> Result<std::net::UdpSocket, String> {
                let f = fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns {path}: {e}"))?;
                let sock = std::net::UdpSocket::bind(("0.0.0.0", port))
                    .map_err(|e| format!("binding UDP port {port} in {path}: {e}"))?;
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .map_err(|e| e.to_string())?;
                Ok(sock)
            };
            let sock = match setup() {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("UDP witness: {e}"),
            Err(_) => panic!("UDP witness thread died"),
        }
        UdpWitness {
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// Datagrams received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for UdpWitness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every qdisc and every ingress/egress filter of every link in the pod (the part of the
/// pod's network state `sandbox.sh snapshot` does not show), for before/after comparisons.
pub fn tc_snapshot(sb: &Sandbox) -> String {
    sb.sh(
        "for d in $(ip -o link show | cut -d: -f2 | cut -d@ -f1); do echo \"## $d\"; \
         tc qdisc show dev $d; tc filter show dev $d ingress; tc filter show dev $d egress; done",
    )
}

/// Line diff of two snapshots ("- " only in `a`, "+ " only in `b`), for assertion messages.
pub fn line_diff(a: &str, b: &str) -> String {
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
