//! PID-1 duties: become a child subreaper, reap orphans (qemu is reparented to us when
//! libvirtd daemonizes it or dies), and turn signals into requests for the supervisor.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Makes orphaned descendants (qemu, daemon helpers) our children, so we reap them.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "PR_SET_CHILD_SUBREAPER failed; orphans go to PID 1");
    }
}

/// Reaps children nobody else waits for, without stealing the exit status of children that
/// tokio (the daemons) or `std::process` (short helper commands) wait for.
#[derive(Default)]
pub struct Reaper {
    /// Children whose status belongs to someone else (tokio `Child` handles).
    managed: Mutex<HashSet<i32>>,
    /// Zombies seen in the previous scan: reaped if still there (a helper's own `wait()` would
    /// have taken them by then).
    seen: Mutex<HashSet<i32>>,
    /// Exit statuses of reaped orphans, by pid (for crash reasons).
    reaped: Mutex<HashMap<i32, String>>,
}

impl Reaper {
    /// Spawns `cmd` and records the child as managed, atomically with respect to reaping.
    pub fn spawn_managed(
        &self,
        cmd: &mut tokio::process::Command,
    ) -> std::io::Result<tokio::process::Child> {
        let mut managed = self.managed.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn()?;
        if let Some(pid) = child.id() {
            managed.insert(pid as i32);
        }
        Ok(child)
    }

    pub fn forget(&self, pid: i32) {
        self.managed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    /// The exit status of an orphan we reaped, e.g. `killed by SIGKILL`.
    pub fn status_of(&self, pid: i32) -> Option<String> {
        self.reaped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .cloned()
    }

    /// One scan: reap unmanaged zombie children (qemu at once, others on the second sighting).
    pub fn scan(&self) {
        let managed = self.managed.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut now_seen = HashSet::new();
        for pid in zombie_children() {
            if managed.contains(&pid) {
                continue;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if !(comm.starts_with("qemu") || seen.contains(&pid)) {
                now_seen.insert(pid);
                continue;
            }
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(st) => {
                    let text = describe(&st);
                    tracing::info!(pid, comm = comm.trim(), status = %text, "reaped an orphan");
                    self.reaped
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(pid, text);
                }
                Err(_) => {}
            }
        }
        *seen = now_seen;
    }
}

fn describe(st: &WaitStatus) -> String {
    match st {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// Our children that are zombies (state `Z`), from /proc.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces and parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let ppid = f.next().and_then(|p| p.parse::<i32>().ok());
        if state == Some("Z") && ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

/// Runs the reaper on every SIGCHLD and twice a second.
pub fn spawn_reaper(reaper: std::sync::Arc<Reaper>) {
    tokio::spawn(async move {
        let mut chld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGCHLD; reaping by timer only");
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    reaper.scan();
                }
            }
        };
        loop {
            tokio::select! {
                _ = chld.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            reaper.scan();
        }
    });
}

/// What a signal asks of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM / SIGINT: graceful shutdown (the second one means destroy now).
    Stop(Signal),
    /// SIGQUIT: destroy now.
    StopNow,
}

/// Listens for SIGTERM, SIGINT and SIGQUIT (SIGHUP is logged and ignored) and sends requests.
/// The daemons run in their own process group, so a terminal's Ctrl-C reaches only us.
pub fn spawn_signal_listener() -> std::io::Result<mpsc::UnboundedReceiver<Request>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let req = tokio::select! {
                _ = term.recv() => Request::Stop(Signal::SIGTERM),
                _ = int.recv() => Request::Stop(Signal::SIGINT),
                _ = quit.recv() => Request::StopNow,
                _ = hup.recv() => { tracing::info!("SIGHUP ignored"); continue; }
            };
            tracing::info!(request = ?req, "signal received");
            if tx.send(req).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// SIGTERM, then SIGKILL after `grace`; waits (by polling /proc) until the process is gone or a
/// zombie. For processes that are not our children (left by an earlier launcher).
pub fn kill_and_wait(pid: i32, grace: Duration) {
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) {
        if Instant::now() > deadline {
            let _ = kill(p, Signal::SIGKILL);
            let hard = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < hard {
                let _ = waitpid(p, Some(WaitPidFlag::WNOHANG));
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let _ = waitpid(p, Some(WaitPidFlag::WNOHANG));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
        Err(_) => false,
    }
}

/// The process's start time (clock ticks since boot), to tell a pid from its reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Field 22 overall; after the comm, state is field 3, so index 22-3 = 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_and_start_time_of_self() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(start_time(me).is_some());
        assert!(!alive(i32::MAX - 1));
    }
}
