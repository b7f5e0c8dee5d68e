//! The `run` lifecycle: validate → discover → plumb → DHCP up → prepare disks → render →
//! libvirt up → define → start → supervise → teardown; libvirt's daemons as children, the
//! domain's events, signals, status.json; and `launcher status` / `launcher console`.

pub mod console;
pub mod daemons;
pub mod lifecycle;
pub mod signals;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::cli::{Accel, GlobalArgs, RunArgs};
use crate::error::{Classify, ExitKind};
use status::{Phase, Status, StatusWriter};

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Daemon(String),
    #[error("{0}")]
    Libvirt(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Other(String),
}

impl Classify for SuperviseError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            SuperviseError::Precondition(_) => ExitKind::Precondition,
            SuperviseError::Daemon(_) | SuperviseError::Libvirt(_) => ExitKind::Hypervisor,
            SuperviseError::Io(_) | SuperviseError::Other(_) => ExitKind::Internal,
        }
    }
}

/// The accelerator decision (pure): `kvm_opens` says whether /dev/kvm could be opened.
pub fn choose_accel(
    accel: Accel,
    allow_emulation: bool,
    kvm_opens: Result<(), String>,
) -> Result<Accel, SuperviseError> {
    match (accel, kvm_opens) {
        (Accel::Kvm, Err(e)) => Err(SuperviseError::Precondition(format!(
            "--accel kvm: cannot open /dev/kvm: {e} (run on a node with KVM, or pass --accel tcg)"
        ))),
        (Accel::Kvm, Ok(())) => Ok(Accel::Kvm),
        (Accel::Tcg, _) => Ok(Accel::Tcg),
        (Accel::Auto, Ok(())) => Ok(Accel::Kvm),
        (Accel::Auto, Err(_)) if allow_emulation => Ok(Accel::Tcg),
        (Accel::Auto, Err(e)) => Err(SuperviseError::Precondition(format!(
            "cannot open /dev/kvm: {e}; pass --allow-emulation to run with software \
             emulation (slow), or schedule the pod on a node with KVM"
        ))),
    }
}

/// Tries to open /dev/kvm read-write.
pub fn probe_kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| e.to_string())
}

/// KubeVirt's domain name: `<namespace>_<name>`.
pub fn domain_name(vmi: &crate::spec::Vmi) -> String {
    format!(
        "{}_{}",
        vmi.metadata.namespace.as_deref().unwrap_or("default"),
        vmi.metadata.name.as_deref().unwrap_or("vmi")
    )
}

/// `launcher run`.
pub fn cmd_run(g: &GlobalArgs, a: &RunArgs) -> anyhow::Result<u8> {
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .thread_stack_size(512 * 1024)
        .build()?;
    rt.block_on(run(g, a, t0))
}

/// Everything acquired so far, so that any failure undoes exactly what was done.
struct Acquired {
    daemons: Vec<daemons::Supervised>,
    lv: Option<lifecycle::Libvirt>,
    domain_defined: Option<String>,
}

impl Acquired {
    async fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if let (Some(lv), Some(name)) = (self.lv.as_mut(), self.domain_defined.take()) {
            if lv.connected() {
                let n = name.clone();
                if let Err(e) = lv
                    .with(move |c| lifecycle::remove_existing(c, &n).map(drop))
                    .await
                {
                    errors.push(format!("removing domain {name}: {e}"));
                }
            }
        }
        if let Some(mut lv) = self.lv.take() {
            lv.close().await;
        }
        // Stop in reverse order of start (libvirtd before virtlogd).
        while let Some(d) = self.daemons.pop() {
            d.stop().await;
        }
        errors
    }
}

fn write_termination(path: &Path, message: &str) {
    let text: String = message.chars().take(4000).collect();
    if let Err(e) = std::fs::write(path, format!("{text}\n")) {
        tracing::warn!(path = %path.display(), error = %e, "writing the termination message");
    }
}

async fn run(g: &GlobalArgs, a: &RunArgs, t0: Instant) -> anyhow::Result<u8> {
    signals::become_subreaper();
    let reaper = Arc::new(signals::Reaper::default());
    signals::spawn_reaper(reaper.clone());
    let mut sig_rx = signals::spawn_signal_listener()?;

    // validate: nothing is touched before the VMI is known to be good.
    let vmi = crate::spec::load_for_run(g)?;
    let name = domain_name(&vmi);
    let grace = Duration::from_secs(
        vmi.spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0) as u64,
    );
    let accel = choose_accel(g.accel, g.allow_emulation, probe_kvm())?;
    std::fs::create_dir_all(&g.run_dir)
        .map_err(|e| anyhow::anyhow!("creating the run directory {}: {e}", g.run_dir.display()))?;
    let previous = status::read(&g.run_dir).ok();
    let mut st = Status::new(
        format!(
            "{}/{}",
            vmi.metadata.namespace.as_deref().unwrap_or("default"),
            vmi.metadata.name.as_deref().unwrap_or("")
        ),
        name.clone(),
    );
    st.accel = Some(format!("{accel:?}").to_lowercase());
    st.qemu_log = Some(PathBuf::from(format!("/var/log/libvirt/qemu/{name}.log")));
    let uid = vmi.metadata.uid.clone().unwrap_or_else(|| name.clone());
    st.serial_socket = Some(g.run_dir.join(&uid).join("virt-serial0"));
    st.serial_log = Some(g.run_dir.join(&uid).join("virt-serial0-log"));
    let mut sw = StatusWriter::new(&g.run_dir, st);

    let mut acq = Acquired {
        daemons: Vec::new(),
        lv: None,
        domain_defined: None,
    };
    let (news_tx, news_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let result = bring_up(
        g,
        a,
        &vmi,
        &name,
        accel,
        previous,
        &mut sw,
        &mut acq,
        &reaper,
        news_tx,
        ev_tx,
        &mut sig_rx,
        t0,
    )
    .await;
    let (outcome, code) = match result {
        Ok(BringUp::Running { qemu_pid }) => {
            let mut inputs = lifecycle::Inputs {
                events: ev_rx,
                signals: sig_rx,
                daemon_news: news_rx,
            };
            let own_daemon = acq.daemons.last().map(|d| d.name.clone());
            let lv = acq.lv.as_mut().expect("connected when running");
            let outcome = lifecycle::Watch {
                lv,
                name: name.clone(),
                qemu_pid,
                grace,
                reaper: reaper.clone(),
                qemu_log: sw.status.qemu_log.clone().unwrap_or_default(),
                own_daemon: if a.libvirt_uri.is_some() {
                    None
                } else {
                    own_daemon
                },
            }
            .run(&mut inputs)
            .await;
            let code = outcome.exit_code();
            (outcome.message(grace.as_secs()), code)
        }
        Ok(BringUp::StoppedEarly(by)) => (format!("stopped by {by} before the VM started"), 0),
        Err(e) => {
            let code = crate::error::exit_kind_of(&e).code();
            (format!("{e:#}"), code)
        }
    };
    if code != 0 {
        sw.status.last_error = Some(outcome.clone());
    }
    sw.phase(Phase::TearingDown);
    let mut errors = acq.teardown().await;
    errors.extend(teardown_network(g).await);
    for e in &errors {
        tracing::error!("teardown: {e}");
    }
    let mut message = outcome;
    if !errors.is_empty() {
        message.push_str(&format!("; teardown problems: {}", errors.join("; ")));
    }
    sw.status.exit_code = Some(code);
    sw.status.qemu_pid = None;
    sw.phase(if code == 0 {
        Phase::Stopped
    } else {
        Phase::Failed
    });
    write_termination(&a.termination_log, &message);
    if code == 0 {
        tracing::info!(exit_code = code, "{message}");
    } else {
        tracing::error!(exit_code = code, "{message}");
    }
    Ok(code)
}

enum BringUp {
    Running { qemu_pid: Option<i32> },
    StoppedEarly(String),
}

/// Returns the signal name if a stop was requested while bringing the VM up.
fn stop_requested(sig: &mut mpsc::UnboundedReceiver<signals::Request>) -> Option<String> {
    match sig.try_recv() {
        Ok(signals::Request::Stop(s)) => Some(s.as_str().to_string()),
        Ok(signals::Request::StopNow) => Some("SIGQUIT".into()),
        Err(_) => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn bring_up(
    g: &GlobalArgs,
    a: &RunArgs,
    vmi: &crate::spec::Vmi,
    name: &str,
    accel: Accel,
    previous: Option<Status>,
    sw: &mut StatusWriter,
    acq: &mut Acquired,
    reaper: &Arc<signals::Reaper>,
    news_tx: mpsc::UnboundedSender<daemons::DaemonNews>,
    ev_tx: mpsc::UnboundedSender<crate::sys::libvirt::Event>,
    sig: &mut mpsc::UnboundedReceiver<signals::Request>,
    t0: Instant,
) -> anyhow::Result<BringUp> {
    // cleanup: converge after an earlier launcher that was killed (see docs/run.md).
    sw.phase(Phase::Cleanup);
    cleanup_previous(g, previous.as_ref(), name).await;

    sw.phase(Phase::Discovering);
    sw.phase(Phase::Plumbing);
    sw.phase(Phase::DhcpUp);
    if let Some(by) = stop_requested(sig) {
        return Ok(BringUp::StoppedEarly(by));
    }
    sw.phase(Phase::PreparingDisks);
    sw.phase(Phase::Rendering);
    let xml = render(g, vmi, name, accel)?;

    sw.phase(Phase::LibvirtUp);
    let uri = match &a.libvirt_uri {
        Some(u) => u.clone(),
        None => {
            let (hv, logd) = daemons::prepare(&g.run_dir)?;
            daemons::stop_stale(&[&hv, &logd]);
            acq.daemons
                .push(daemons::start(logd, reaper.clone(), news_tx.clone()).await?);
            acq.daemons
                .push(daemons::start(hv, reaper.clone(), news_tx).await?);
            daemons::OWN_URI.to_string()
        }
    };
    sw.status.libvirt_uri = Some(uri.clone());
    acq.lv = Some(lifecycle::Libvirt::connect(&uri, ev_tx).await?);
    if let Some(by) = stop_requested(sig) {
        return Ok(BringUp::StoppedEarly(by));
    }

    sw.phase(Phase::Defining);
    let lv = acq.lv.as_ref().expect("connected");
    acq.domain_defined = Some(name.to_string());
    let n = name.to_string();
    let timings = lv
        .with(move |c| {
            let mut t = Vec::new();
            lifecycle::define_and_start(c, &n, &xml, &mut t)?;
            Ok(t)
        })
        .await?;
    for (what, d) in &timings {
        tracing::info!(
            step = what,
            duration_ms = d.as_millis() as u64,
            "libvirt call done"
        );
    }
    tracing::info!(
        since_start_ms = t0.elapsed().as_millis() as u64,
        "virDomainCreate returned"
    );
    sw.phase(Phase::Starting);
    let qemu_pid = lifecycle::read_qemu_pid(name);
    sw.status.qemu_pid = qemu_pid;
    sw.phase(Phase::Running);
    Ok(BringUp::Running { qemu_pid })
}

/// Renders the domain XML. Until the domain module lands, a developer override
/// (`LAUNCHER_DEV_DOMAIN_XML=file`) supplies it verbatim.
fn render(
    _g: &GlobalArgs,
    _vmi: &crate::spec::Vmi,
    _name: &str,
    _accel: Accel,
) -> anyhow::Result<String> {
    if let Some(p) = std::env::var_os("LAUNCHER_DEV_DOMAIN_XML") {
        let p = PathBuf::from(p);
        return std::fs::read_to_string(&p)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()));
    }
    Err(crate::error::not_implemented("rendering the domain in run"))
}

async fn teardown_network(_g: &GlobalArgs) -> Vec<String> {
    Vec::new()
}

/// After a SIGKILL of an earlier launcher in this pod: stop its daemons (their pid files are in
/// the pod's private /run) and its qemu, so the new run starts from a clean slate. The domain
/// definition itself is removed by `define` (it destroys and undefines any domain of the name).
async fn cleanup_previous(g: &GlobalArgs, previous: Option<&Status>, name: &str) {
    let Some(prev) = previous else { return };
    if prev.launcher_pid == std::process::id() {
        return;
    }
    if signals::alive(prev.launcher_pid as i32)
        && std::fs::read_to_string(format!("/proc/{}/comm", prev.launcher_pid))
            .map(|c| c.trim() == "launcher")
            .unwrap_or(false)
    {
        tracing::warn!(
            pid = prev.launcher_pid,
            "another launcher still runs with this run directory; it will be stopped"
        );
        signals::kill_and_wait(prev.launcher_pid as i32, Duration::from_secs(10));
    }
    if matches!(prev.phase, Phase::Stopped | Phase::Failed) {
        return;
    }
    tracing::warn!(
        previous_pid = prev.launcher_pid,
        previous_phase = ?prev.phase,
        "an earlier launcher did not finish; cleaning up after it"
    );
    for pid in prev
        .qemu_pid
        .into_iter()
        .chain(lifecycle::read_qemu_pid(name))
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if signals::alive(pid) && comm.starts_with("qemu") {
            tracing::warn!(pid, "stopping the qemu of the earlier launcher");
            signals::kill_and_wait(pid, Duration::from_secs(5));
        }
    }
    let _ = g;
}

/// `launcher status`: prints status.json; exit 0 only while the domain is running.
pub fn cmd_status(g: &GlobalArgs) -> anyhow::Result<u8> {
    let s = status::read(&g.run_dir).map_err(|e| {
        crate::error::precondition(format!(
            "reading {}: {e} (has `launcher run` started with this --run-dir?)",
            g.run_dir.join(status::STATUS_FILE).display()
        ))
    })?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(if status::is_running(&s, signals::alive) {
        0
    } else {
        1
    })
}

/// `launcher console`.
pub fn cmd_console(g: &GlobalArgs) -> anyhow::Result<u8> {
    let socket = match status::read(&g.run_dir) {
        Ok(Status {
            serial_socket: Some(p),
            ..
        }) => p,
        _ => {
            return Err(crate::error::precondition(format!(
                "no serial console recorded in {} (is `launcher run` running with this --run-dir?)",
                g.run_dir.join(status::STATUS_FILE).display()
            )))
        }
    };
    console::attach(&socket)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_auto_uses_kvm_when_it_opens() {
        assert_eq!(
            choose_accel(Accel::Auto, false, Ok(())).unwrap(),
            Accel::Kvm
        );
    }

    #[test]
    fn accel_auto_without_kvm_needs_allow_emulation() {
        let e = choose_accel(Accel::Auto, false, Err("No such file".into())).unwrap_err();
        assert_eq!(e.exit_kind(), ExitKind::Precondition);
        assert!(e.to_string().contains("/dev/kvm"), "{e}");
        assert_eq!(
            choose_accel(Accel::Auto, true, Err("x".into())).unwrap(),
            Accel::Tcg
        );
    }

    #[test]
    fn forced_accels() {
        assert_eq!(choose_accel(Accel::Tcg, false, Ok(())).unwrap(), Accel::Tcg);
        assert_eq!(
            choose_accel(Accel::Tcg, false, Err("x".into())).unwrap(),
            Accel::Tcg
        );
        assert!(choose_accel(Accel::Kvm, true, Err("x".into())).is_err());
    }
}
