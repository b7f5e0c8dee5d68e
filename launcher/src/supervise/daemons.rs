//! libvirt's daemons as supervised children: configuration, start, readiness, log capture,
//! restart, and the "too many deaths" rule.
//!
//! The launcher writes `qemu.conf`, `libvirtd.conf` and `virtlogd.conf` into
//! `<run-dir>/libvirt/`. The daemons read `--config` for their own file; the QEMU driver only
//! ever reads `/etc/libvirt/qemu.conf` when privileged, so that file is installed there too (the
//! pod's `/etc/libvirt` is private to the pod, as in KubeVirt's virt-launcher).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::signals::Reaper;
use super::SuperviseError;

/// How many deaths of one daemon within [`DEATH_WINDOW`] make the launcher give up (exit 4).
pub const MAX_DEATHS: usize = 5;
pub const DEATH_WINDOW: Duration = Duration::from_secs(60);
/// How long a daemon may take to open its socket.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket the privileged libvirtd (or virtqemud) listens on.
pub const LIBVIRT_SOCK_DIR: &str = "/run/libvirt";
/// The URI of our own daemon.
pub const OWN_URI: &str = "qemu:///system";

pub const QEMU_CONF: &str = r#"# Written by launcher: qemu runs as root inside the pod; the pod is the sandbox.
# uid/gid 4294967295 is (uid_t)-1, "unchanged": libvirtd starts qemu and swtpm as itself and
# chowns nothing, so the pod needs no SETUID, SETGID or CHOWN (docs/packaging.md).
user = "+4294967295"
group = "+4294967295"
swtpm_user = "+4294967295"
swtpm_group = "+4294967295"
dynamic_ownership = 0
remember_owner = 0
namespaces = [ ]
cgroup_controllers = [ ]
security_driver = "none"
stdio_handler = "file"
"#;

pub const LIBVIRTD_CONF: &str = r#"# Written by launcher: unix sockets only, logs to stderr (captured by the launcher).
listen_tls = 0
listen_tcp = 0
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr"
keepalive_interval = 5
keepalive_count = 5
"#;

pub const VIRTLOGD_CONF: &str = r#"# Written by launcher: logs to stderr (captured by the launcher).
log_outputs = "3:stderr"
"#;

/// Where a daemon's files live.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// `libvirtd`, `virtqemud` or `virtlogd`.
    pub name: String,
    pub binary: PathBuf,
    pub config: PathBuf,
    /// The socket that tells us it is ready.
    pub socket: PathBuf,
    /// Its pid file (the daemon's default under a private /run).
    pub pid_file: PathBuf,
    /// Extra environment (the non-root session mode's XDG directories; empty as root).
    pub env: Vec<(String, PathBuf)>,
}

/// Finds `name` on `PATH` (plus the sbin directories, which are not on every PATH).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Writes the configuration files and decides which daemons to run.
/// Returns (hypervisor daemon, virtlogd).
pub fn prepare(run_dir: &Path) -> Result<(DaemonSpec, DaemonSpec), SuperviseError> {
    let dir = run_dir.join("libvirt");
    std::fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, SuperviseError> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| io_err("writing", &p, e))?;
        Ok(p)
    };
    let qemu_conf = write("qemu.conf", QEMU_CONF)?;
    let libvirtd_conf = write("libvirtd.conf", LIBVIRTD_CONF)?;
    let virtqemud_conf = write("virtqemud.conf", LIBVIRTD_CONF)?;
    let virtlogd_conf = write("virtlogd.conf", VIRTLOGD_CONF)?;
    // The privileged QEMU driver reads only /etc/libvirt/qemu.conf.
    let etc = Path::new("/etc/libvirt");
    std::fs::create_dir_all(etc).map_err(|e| io_err("creating", etc, e))?;
    let etc_qemu = etc.join("qemu.conf");
    if std::fs::read_to_string(&etc_qemu).ok().as_deref() != Some(QEMU_CONF) {
        std::fs::copy(&qemu_conf, &etc_qemu).map_err(|e| io_err("installing", &etc_qemu, e))?;
    }
    for d in [
        "/run/libvirt",
        "/var/lib/libvirt",
        "/var/log/libvirt",
        "/var/cache/libvirt",
    ] {
        std::fs::create_dir_all(d).map_err(|e| io_err("creating", Path::new(d), e))?;
    }
    let sock = Path::new(LIBVIRT_SOCK_DIR);
    let hv = if let Some(b) = find_binary("virtqemud") {
        DaemonSpec {
            name: "virtqemud".into(),
            binary: b,
            config: virtqemud_conf,
            socket: sock.join("virtqemud-sock"),
            pid_file: PathBuf::from("/run/virtqemud.pid"),
            env: Vec::new(),
        }
    } else if let Some(b) = find_binary("libvirtd") {
        DaemonSpec {
            name: "libvirtd".into(),
            binary: b,
            config: libvirtd_conf,
            socket: sock.join("libvirt-sock"),
            pid_file: PathBuf::from("/run/libvirtd.pid"),
            env: Vec::new(),
        }
    } else {
        return Err(SuperviseError::Precondition(
            "neither virtqemud nor libvirtd is installed (install libvirt-daemon and \
             libvirt-daemon-driver-qemu, or pass --libvirt-uri)"
                .into(),
        ));
    };
    let logd = DaemonSpec {
        name: "virtlogd".into(),
        binary: find_binary("virtlogd").ok_or_else(|| {
            SuperviseError::Precondition(
                "virtlogd is not installed (install libvirt-daemon)".into(),
            )
        })?,
        config: virtlogd_conf,
        socket: sock.join("virtlogd-sock"),
        pid_file: PathBuf::from("/run/virtlogd.pid"),
        env: Vec::new(),
    };
    if let Err(e) = nix::unistd::User::from_name("libvirt-qemu") {
        tracing::warn!(error = %e, "could not look up user libvirt-qemu");
    } else if nix::unistd::User::from_name("libvirt-qemu")
        .ok()
        .flatten()
        .is_none()
    {
        return Err(SuperviseError::Precondition(
            "the user \"libvirt-qemu\" does not exist; libvirt's QEMU driver needs it \
             (useradd -r libvirt-qemu; scripts/setup.sh does this)"
                .into(),
        ));
    }
    Ok((hv, logd))
}

fn io_err(op: &str, p: &Path, e: std::io::Error) -> SuperviseError {
    SuperviseError::Io(format!("{op} {}: {e}", p.display()))
}

/// What the supervisor hears from the daemons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonNews {
    /// The daemon is (again) ready; `generation` counts its starts from 1.
    Ready { name: String, generation: u32 },
    /// The daemon died and is being restarted.
    Died { name: String, status: String },
    /// Too many deaths: give up (exit 4).
    GaveUp { name: String, reason: String },
}

/// A running, supervised daemon.
pub struct Supervised {
    pub name: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pid: watch::Receiver<Option<i32>>,
}

impl Supervised {
    /// The current pid, if running.
    pub fn pid(&self) -> Option<i32> {
        *self.pid.borrow()
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts `spec` and keeps it running. Returns once it is ready (its socket accepts), or with an
/// error naming the daemon and its last log lines.
pub async fn start(
    spec: DaemonSpec,
    reaper: Arc<Reaper>,
    news: mpsc::UnboundedSender<DaemonNews>,
) -> Result<Supervised, SuperviseError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (pid_tx, pid_rx) = watch::channel(None);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let name = spec.name.clone();
    let task = tokio::spawn(supervise_loop(
        spec, reaper, news, stop_rx, pid_tx, ready_tx,
    ));
    match ready_rx.await {
        Ok(Ok(())) => Ok(Supervised {
            name,
            stop: stop_tx,
            task,
            pid: pid_rx,
        }),
        Ok(Err(e)) => {
            let _ = stop_tx.send(true);
            let _ = task.await;
            Err(e)
        }
        Err(_) => Err(SuperviseError::Daemon(format!(
            "{name}: its supervisor ended before it was ready"
        ))),
    }
}

/// The last lines a daemon wrote, for error messages.
type Tail = Arc<std::sync::Mutex<VecDeque<String>>>;

fn spawn_child(
    spec: &DaemonSpec,
    reaper: &Reaper,
    tail: &Tail,
) -> Result<tokio::process::Child, SuperviseError> {
    // A stale socket from an earlier daemon would look ready; the daemon recreates it.
    let _ = std::fs::remove_file(&spec.socket);
    let mut cmd = tokio::process::Command::new(&spec.binary);
    cmd.arg("--config")
        .arg(&spec.config)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a terminal's Ctrl-C reaches the launcher only, which decides.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = reaper
        .spawn_managed(&mut cmd)
        .map_err(|e| SuperviseError::Daemon(format!("starting {}: {e}", spec.binary.display())))?;
    for (stream, is_err) in [
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            true,
        ),
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            false,
        ),
    ] {
        let Some(stream) = stream else { continue };
        let name = spec.name.clone();
        let tail = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log_daemon_line(&name, &line, is_err);
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == 8 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
    }
    Ok(child)
}

/// Known-harmless complaints of libvirtd inside a pod (NOTES.md): logged at debug.
fn harmless(line: &str) -> bool {
    [
        "dmidecode",
        "/dev/mem",
        "udev",
        "DBus",
        "dbus",
        // Our readiness probe connects and hangs up without speaking the protocol.
        "virNetSocketReadWire:1782 : End of file while reading data",
        // cgroup_controllers = [] inside a pod.
        "virCgroupDetectControllers",
    ]
    .iter()
    .any(|s| line.contains(s))
}

fn log_daemon_line(name: &str, line: &str, stderr: bool) {
    if harmless(line) {
        tracing::debug!(daemon = name, "{line}");
    } else if line.contains(": error :") {
        tracing::warn!(daemon = name, stderr, "{line}");
    } else {
        tracing::info!(daemon = name, stderr, "{line}");
    }
}

async fn wait_socket(
    spec: &DaemonSpec,
    child: &mut tokio::process::Child,
    tail: &Tail,
) -> Result<(), SuperviseError> {
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if tokio::net::UnixStream::connect(&spec.socket).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Let the log readers drain.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(SuperviseError::Daemon(format!(
                "{} exited ({status}) before opening {}; its last lines: {}",
                spec.name,
                spec.socket.display(),
                tail_text(tail)
            )));
        }
        if Instant::now() > deadline {
            return Err(SuperviseError::Daemon(format!(
                "{} did not open {} within {} s; its last lines: {}",
                spec.name,
                spec.socket.display(),
                SOCKET_TIMEOUT.as_secs(),
                tail_text(tail)
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn tail_text(tail: &Tail) -> String {
    let t = tail.lock().unwrap_or_else(|p| p.into_inner());
    if t.is_empty() {
        "(none)".into()
    } else {
        t.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

/// Records deaths and says whether the limit is reached.
#[derive(Debug, Default)]
pub struct DeathCounter {
    deaths: VecDeque<Instant>,
}

impl DeathCounter {
    /// Records a death at `now`; true when [`MAX_DEATHS`] happened within [`DEATH_WINDOW`].
    pub fn record(&mut self, now: Instant) -> bool {
        self.deaths.push_back(now);
        while let Some(first) = self.deaths.front() {
            if now.duration_since(*first) > DEATH_WINDOW {
                self.deaths.pop_front();
            } else {
                break;
            }
        }
        self.deaths.len() >= MAX_DEATHS
    }
}

async fn supervise_loop(
    spec: DaemonSpec,
    reaper: Arc<Reaper>,
    news: mpsc::UnboundedSender<DaemonNews>,
    mut stop: watch::Receiver<bool>,
    pid_tx: watch::Sender<Option<i32>>,
    ready_tx: tokio::sync::oneshot::Sender<Result<(), SuperviseError>>,
) {
    let mut ready_tx = Some(ready_tx);
    let mut deaths = DeathCounter::default();
    let mut generation = 0u32;
    let tail: Tail = Arc::default();
    loop {
        let t0 = Instant::now();
        let mut child = match spawn_child(&spec, &reaper, &tail) {
            Ok(c) => c,
            Err(e) => {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(Err(e));
                } else {
                    let _ = news.send(DaemonNews::GaveUp {
                        name: spec.name.clone(),
                        reason: e.to_string(),
                    });
                }
                return;
            }
        };
        let pid = child.id().map(|p| p as i32);
        let _ = pid_tx.send(pid);
        let ready = tokio::select! {
            r = wait_socket(&spec, &mut child, &tail) => r,
            _ = stop.changed() => {
                terminate(&spec.name, &mut child, &reaper).await;
                return;
            }
        };
        match ready {
            Ok(()) => {
                generation += 1;
                tracing::info!(
                    daemon = %spec.name,
                    pid,
                    generation,
                    duration_ms = t0.elapsed().as_millis() as u64,
                    "daemon ready"
                );
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(Ok(()));
                } else {
                    let _ = news.send(DaemonNews::Ready {
                        name: spec.name.clone(),
                        generation,
                    });
                }
            }
            Err(e) => {
                if let Some(tx) = ready_tx.take() {
                    terminate(&spec.name, &mut child, &reaper).await;
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::error!(daemon = %spec.name, "{e}");
            }
        }
        let status = tokio::select! {
            s = child.wait() => s,
            _ = stop.changed() => {
                terminate(&spec.name, &mut child, &reaper).await;
                return;
            }
        };
        if let Some(p) = pid {
            reaper.forget(p);
        }
        let _ = pid_tx.send(None);
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown status ({e})"),
        };
        tracing::warn!(daemon = %spec.name, pid, %status, "daemon died; restarting it");
        if deaths.record(Instant::now()) {
            let reason = format!(
                "{} died {MAX_DEATHS} times within {} s (last: {status}); giving up. Its last \
                 lines: {}",
                spec.name,
                DEATH_WINDOW.as_secs(),
                tail_text(&tail)
            );
            let _ = news.send(DaemonNews::GaveUp {
                name: spec.name.clone(),
                reason,
            });
            return;
        }
        let _ = news.send(DaemonNews::Died {
            name: spec.name.clone(),
            status,
        });
        // A short pause keeps a crash loop from spinning.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn terminate(name: &str, child: &mut tokio::process::Child, reaper: &Reaper) {
    let pid = child.id();
    if let Some(p) = pid {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            tracing::warn!(
                daemon = name,
                "did not stop within 5 s of SIGTERM; killing it"
            );
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    if let Some(p) = pid {
        reaper.forget(p as i32);
    }
    tracing::info!(daemon = name, "daemon stopped");
}

/// Stops daemons left behind by an earlier launcher in this pod (it was SIGKILLed): their pid
/// files are in the pod's private /run. Only processes whose command name matches are touched.
pub fn stop_stale(specs: &[&DaemonSpec]) {
    for spec in specs {
        let Ok(text) = std::fs::read_to_string(&spec.pid_file) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        if pid <= 1 || pid == std::process::id() as i32 {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != spec.name.chars().take(15).collect::<String>() {
            continue;
        }
        tracing::warn!(
            daemon = %spec.name,
            pid,
            "stopping a daemon left behind by an earlier launcher"
        );
        crate::supervise::signals::kill_and_wait(pid, Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_deaths_within_a_minute_give_up_but_spread_deaths_do_not() {
        let t0 = Instant::now();
        let mut c = DeathCounter::default();
        for i in 0..4 {
            assert!(!c.record(t0 + Duration::from_secs(i)), "death {i}");
        }
        assert!(
            c.record(t0 + Duration::from_secs(10)),
            "the fifth death within 60 s"
        );

        let mut c = DeathCounter::default();
        for i in 0..10 {
            assert!(
                !c.record(t0 + Duration::from_secs(20 * i)),
                "deaths 20 s apart never reach five within 60 s"
            );
        }
    }

    #[test]
    fn known_noise_is_recognised() {
        assert!(harmless("error : virNetSocketReadWire:1782 : End of file while reading data: Input/output error"));
        assert!(!harmless("error : qemuProcessStart: cannot start"));
    }

    #[test]
    fn qemu_conf_has_the_pod_settings() {
        for k in [
            "user = \"+4294967295\"",
            "group = \"+4294967295\"",
            "swtpm_user = \"+4294967295\"",
            "dynamic_ownership = 0",
            "remember_owner = 0",
            "namespaces = [ ]",
            "cgroup_controllers = [ ]",
            "security_driver = \"none\"",
            "stdio_handler = \"file\"",
        ] {
            assert!(QEMU_CONF.contains(k), "{k}");
        }
        assert!(LIBVIRTD_CONF.contains("listen_tcp = 0"));
        assert!(LIBVIRTD_CONF.contains("stderr"));
    }
}
