//! The `run` lifecycle: validate → discover → plumb → DHCP up → prepare disks → render →
//! libvirt up → define → start → supervise → teardown; libvirt's daemons as children, the
//! domain's events, signals, status.json; and `launcher status` / `launcher console`.

pub mod console;
pub mod daemons;
pub mod lifecycle;
pub mod rpc;
pub mod session;
pub mod signals;
pub mod status;
pub mod testhook;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::cli::{GlobalArgs, RunArgs};
use crate::domain::{self, plan::PrepStep, NicAttach, NicInput, PodFacts};
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
    crate::sys::runperf::limit_arenas();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .thread_stack_size(512 * 1024)
        .build()?;
    let result = rt.block_on(run(g, a, t0));
    if let Err(e) = &result {
        // Failures before supervision (invalid spec, missing file) also tell the pod why.
        write_termination(&a.termination_log, &format!("{e:#}"));
    }
    result
}

/// Everything acquired so far, so that any failure undoes exactly what was done.
struct Acquired {
    net_plumbed: bool,
    dhcp: Option<crate::dhcp::server::Dhcp4Servers>,
    dhcp6: Option<crate::dhcp::server6::Dhcp6Servers>,
    daemons: Vec<daemons::Supervised>,
    lv: Option<lifecycle::Libvirt>,
    domain_defined: Option<String>,
}

impl Acquired {
    /// Undoes everything, in reverse order, collecting every error.
    async fn teardown(&mut self, run_dir: &Path) -> Vec<String> {
        let mut errors = Vec::new();
        let defined = self.domain_defined.clone();
        let own_daemons = !self.daemons.is_empty();
        if let (Some(lv), Some(name)) = (self.lv.as_mut(), self.domain_defined.take()) {
            if let (true, Ok(c)) = (lv.connected(), lv.conn()) {
                if let Err(e) = lifecycle::remove_existing(&c, &name).await {
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
        if let (true, Some(name)) = (own_daemons, defined) {
            forget_leftover_definition(&name);
        }
        if let Some(servers) = self.dhcp.take() {
            servers.shutdown().await;
        }
        if let Some(servers) = self.dhcp6.take() {
            servers.shutdown().await;
        }
        if std::mem::take(&mut self.net_plumbed) {
            if let Err(e) = crate::net::teardown(run_dir).await {
                errors.push(format!("tearing down the pod network: {e}"));
            }
        }
        errors
    }
}

/// With our own daemons stopped, a definition still on disk is one libvirt could not undefine
/// (the daemon was dead, e.g. after five deaths): remove its files, so nothing is left behind
/// in the pod (the domain's persistent XML in /etc/libvirt/qemu and its status in /run).
fn forget_leftover_definition(name: &str) {
    let files = [
        PathBuf::from(format!("/etc/libvirt/qemu/{name}.xml")),
        PathBuf::from(format!("/run/libvirt/qemu/{name}.xml")),
        lifecycle::qemu_pid_file(name),
    ];
    for f in files {
        if f.exists() {
            tracing::warn!(path = %f.display(), "libvirt could not undefine the domain; removing its file");
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!(path = %f.display(), error = %e, "removing a leftover domain file");
            }
        }
    }
}

fn write_termination(path: &Path, message: &str) {
    let text: String = message.chars().take(4000).collect();
    if let Err(e) = std::fs::write(path, format!("{text}\n")) {
        tracing::warn!(path = %path.display(), error = %e, "writing the termination message");
    }
}

/// Maps the network's result into the domain plan's input (net knows nothing of the domain).
pub fn nic_inputs(net: &crate::net::NetResult) -> Result<Vec<NicInput>, SuperviseError> {
    net.interfaces
        .iter()
        .map(|i| {
            let attach = match i.binding.as_str() {
                "bridge" | "masquerade" | "macvtap" | "tc-redirect" => NicAttach::Ethernet {
                    device: i.tap.clone(),
                },
                // SR-IOV: the network result's `tap` is the VF's PCI address.
                "sriov" => NicAttach::Hostdev {
                    pci_address: i.tap.clone(),
                },
                // The ports come from the spec: see `fill_passt_ports`.
                "passt" => NicAttach::Passt { ports: Vec::new() },
                other => {
                    return Err(SuperviseError::Other(format!(
                        "interface {:?}: the {other} binding's network result cannot be attached \
                         to the domain by this version of `launcher run`",
                        i.name
                    )))
                }
            };
            Ok(NicInput {
                name: i.name.clone(),
                attach,
                mac: i.mac.to_string(),
                // passt sets the guest's MTU itself (and libvirt refuses <mtu> on it).
                mtu: (i.binding != "passt").then_some(i.mtu),
                queues: (i.queues > 1).then_some(i.queues),
                guest_ips: i.guest_ips.clone(),
            })
        })
        .collect()
}

/// passt forwards the spec's `ports`/`portRanges`, which the network result does not carry:
/// takes them from the spec (the same mapping `launcher render` uses).
pub fn fill_passt_ports(
    nics: &mut [NicInput],
    vmi: &crate::spec::Vmi,
) -> Result<(), domain::DomainError> {
    let from_spec = domain::stand_in_nics(vmi)?;
    for nic in nics.iter_mut() {
        if let NicAttach::Passt { ports } = &mut nic.attach {
            if let Some(NicAttach::Passt { ports: p }) = from_spec
                .iter()
                .find(|s| s.name == nic.name)
                .map(|s| &s.attach)
            {
                ports.clone_from(p);
            }
        }
    }
    Ok(())
}

async fn run(g: &GlobalArgs, a: &RunArgs, t0: Instant) -> anyhow::Result<u8> {
    signals::become_subreaper();
    let reaper = Arc::new(signals::Reaper::default());
    signals::spawn_reaper(reaper.clone());
    let mut sig_rx = signals::spawn_signal_listener()?;

    // validate: nothing is touched before the VMI, the accelerator and the domain plan (with
    // stand-in NICs) are known to be good, and the files it must find exist.
    let vmi = crate::spec::load_for_run(g)?;
    let name = domain_name(&vmi);
    let grace = Duration::from_secs(
        vmi.spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0) as u64,
    );
    let facts = PodFacts::probe(g, &vmi)?;
    let pre_plan = domain::plan::plan(&vmi, &domain::stand_in_nics(&vmi)?, &facts)?;
    for step in &pre_plan.prepare {
        if matches!(step, PrepStep::MustExist { .. }) {
            domain::disks::prepare(std::slice::from_ref(step))?;
        }
    }
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
    st.accel = Some(facts.hypervisor.as_str().to_string());
    st.qemu_log = Some(PathBuf::from(format!("/var/log/libvirt/qemu/{name}.log")));
    if a.libvirt_uri.is_none() {
        session::check_passt_privileges(&vmi, session::is_non_root())?;
    }
    if a.libvirt_uri.is_none() && session::is_non_root() {
        // Non-root: libvirt's session daemon as our own user (see supervise/session.rs).
        if session::uses_passt(&vmi) {
            session::check_user_namespaces()?;
        }
        let l = session::activate(session::Layout::new(&g.run_dir));
        tracing::info!(uid = %nix::unistd::geteuid(), uri = %l.uri(), "running as non-root: using libvirt's session daemon");
        st.qemu_log = Some(l.qemu_log(&name));
    }
    if let Some(serial) = &pre_plan.devices.serial {
        st.serial_socket = Some(PathBuf::from(&serial.socket));
        st.serial_log = Some(PathBuf::from(&serial.log));
    }
    let mut sw = StatusWriter::new(&g.run_dir, st);

    let mut acq = Acquired {
        net_plumbed: false,
        dhcp: None,
        dhcp6: None,
        daemons: Vec::new(),
        lv: None,
        domain_defined: None,
    };
    let (news_tx, news_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let ctx = Ctx {
        g,
        a,
        vmi: &vmi,
        name: &name,
        facts,
        reaper: &reaper,
        t0,
    };
    let result = bring_up(
        &ctx,
        previous,
        &mut sw,
        &mut acq,
        news_tx,
        ev_tx,
        &mut sig_rx,
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
    let errors = acq.teardown(&g.run_dir).await;
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

/// What `bring_up` needs, read-only.
struct Ctx<'a> {
    g: &'a GlobalArgs,
    a: &'a RunArgs,
    vmi: &'a crate::spec::Vmi,
    name: &'a str,
    facts: PodFacts,
    reaper: &'a Arc<signals::Reaper>,
    t0: Instant,
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

async fn bring_up(
    c: &Ctx<'_>,
    previous: Option<Status>,
    sw: &mut StatusWriter,
    acq: &mut Acquired,
    news_tx: mpsc::UnboundedSender<daemons::DaemonNews>,
    ev_tx: mpsc::UnboundedSender<rpc::Event>,
    sig: &mut mpsc::UnboundedReceiver<signals::Request>,
) -> anyhow::Result<BringUp> {
    let (g, name) = (c.g, c.name);
    // cleanup: converge after an earlier launcher that was killed (see docs/run.md).
    sw.phase(Phase::Cleanup);
    cleanup_previous(g, previous.as_ref(), name).await;

    // discover + plumb (net::setup discovers, records the original state, then applies).
    sw.phase(Phase::Plumbing);
    let opts = crate::net::SetupOptions::from_global(g);
    acq.net_plumbed = true; // a failed setup rolls itself back; teardown is then a no-op
    let net = crate::net::setup(&opts, c.vmi).await?;
    testhook::pause_if_asked(&g.run_dir, Phase::Plumbing).await;
    sw.status.interfaces = net
        .interfaces
        .iter()
        .map(|i| status::InterfaceStatus {
            name: i.name.clone(),
            mac: i.mac.to_string(),
            guest_ips: i.guest_ips.iter().map(|ip| ip.to_string()).collect(),
            device: (!i.tap.is_empty()).then(|| i.tap.clone()),
            mtu: Some(i.mtu),
        })
        .collect();

    // DHCP up, disks, render; then libvirt's daemons, as before. A concurrent start (right
    // after plumbing) saved ~10 ms and came with more failures of l2_e2e's Multus macvtap case
    // (3 in 10, against 1 in 11 in this order): kept sequential until that is understood
    // (docs/run.md, "Results on this machine").
    let local = local_bring_up(c, sw, acq, &net, sig).await;
    let (started, lv) = start_libvirt(c, news_tx, ev_tx).await;
    acq.daemons.extend(started);
    let xml = match local? {
        Ok(xml) => xml,
        Err(by) => return Ok(BringUp::StoppedEarly(by)),
    };

    let (uri, lv) = lv?;
    sw.status.libvirt_uri = Some(uri);
    testhook::pause_if_asked(&g.run_dir, Phase::LibvirtUp).await;
    acq.lv = Some(lv);
    if let Some(by) = stop_requested(sig) {
        return Ok(BringUp::StoppedEarly(by));
    }

    sw.phase(Phase::Defining);
    let conn = acq.lv.as_ref().expect("connected").conn()?;
    acq.domain_defined = Some(name.to_string());
    let mut timings = Vec::new();
    lifecycle::define_and_start(&conn, name, &xml, &mut timings).await?;
    for (what, d) in &timings {
        tracing::info!(
            step = what,
            duration_ms = d.as_millis() as u64,
            "libvirt call done"
        );
    }
    tracing::info!(
        since_start_ms = c.t0.elapsed().as_millis() as u64,
        "virDomainCreate returned"
    );
    testhook::pause_if_asked(&g.run_dir, Phase::Defining).await;
    sw.phase(Phase::Starting);
    let qemu_pid = lifecycle::read_qemu_pid(name);
    sw.status.qemu_pid = qemu_pid;
    sw.phase(Phase::Running);
    crate::sys::runperf::trim_heap();
    Ok(BringUp::Running { qemu_pid })
}

/// Starts libvirt's daemons (unless `--libvirt-uri` names one) and connects. Returns the
/// daemons started (even when a later step failed, so that teardown stops them) and the URI
/// with the open connection.
async fn start_libvirt(
    c: &Ctx<'_>,
    news_tx: mpsc::UnboundedSender<daemons::DaemonNews>,
    ev_tx: mpsc::UnboundedSender<rpc::Event>,
) -> (
    Vec<daemons::Supervised>,
    anyhow::Result<(String, lifecycle::Libvirt)>,
) {
    let mut started = Vec::new();
    let uri = match &c.a.libvirt_uri {
        Some(u) => u.clone(),
        None => {
            let specs = match session::active() {
                Some(l) => session::prepare(l),
                None => daemons::prepare(&c.g.run_dir),
            };
            let (hv, logd) = match specs {
                Ok(s) => s,
                Err(e) => return (started, Err(e.into())),
            };
            daemons::stop_stale(&[&hv, &logd]);
            match daemons::start(logd, c.reaper.clone(), news_tx.clone()).await {
                Ok(d) => started.push(d),
                Err(e) => return (started, Err(e.into())),
            }
            match daemons::start(hv, c.reaper.clone(), news_tx).await {
                Ok(d) => started.push(d),
                Err(e) => return (started, Err(e.into())),
            }
            session::active().map_or_else(|| daemons::OWN_URI.to_string(), |l| l.uri())
        }
    };
    let lv = match lifecycle::Libvirt::connect(&uri, ev_tx).await {
        Ok(lv) => lv,
        Err(e) => return (started, Err(e.into())),
    };
    // Have libvirt probe qemu's capabilities now instead of on the first define (a fresh pod
    // has a cold capability cache): the probe's time shows in `libvirt-up`, not in define. A
    // failure here is harmless: define then probes as before.
    if let Ok(conn) = lv.conn() {
        let t = Instant::now();
        match conn.domain_capabilities().await {
            Ok(_) => tracing::info!(
                duration_ms = t.elapsed().as_millis() as u64,
                "libvirt's qemu capabilities are ready"
            ),
            Err(e) => tracing::debug!(error = %e, "warming libvirt's qemu capabilities"),
        }
    }
    (started, Ok((uri, lv)))
}

/// DHCP up, disks, render: the launcher's own work before libvirt. `Ok(Err(signal))` when a
/// stop was requested meanwhile.
async fn local_bring_up(
    c: &Ctx<'_>,
    sw: &mut StatusWriter,
    acq: &mut Acquired,
    net: &crate::net::NetResult,
    sig: &mut mpsc::UnboundedReceiver<signals::Request>,
) -> anyhow::Result<Result<String, String>> {
    let g = c.g;
    sw.phase(Phase::DhcpUp);
    acq.dhcp6 = Some(
        crate::dhcp::server6::Dhcp6Servers::start(net.dhcp6_configs())
            .await
            .map_err(|e| anyhow::Error::new(e).context("starting the DHCPv6 servers"))?,
    );
    acq.dhcp = Some(
        crate::dhcp::server::Dhcp4Servers::start(net.dhcp_configs())
            .await
            .map_err(|e| anyhow::Error::new(e).context("starting the DHCP servers"))?,
    );
    testhook::pause_if_asked(&g.run_dir, Phase::DhcpUp).await;
    if let Some(by) = stop_requested(sig) {
        return Ok(Err(by));
    }

    sw.phase(Phase::PreparingDisks);
    let mut nics = nic_inputs(net)?;
    fill_passt_ports(&mut nics, c.vmi)?;
    let plan = domain::plan::plan(c.vmi, &nics, &c.facts)?;
    for note in &plan.notes {
        tracing::info!(note = %note, "domain plan");
    }
    let steps = plan.prepare.clone();
    tokio::task::spawn_blocking(move || domain::disks::prepare(&steps))
        .await
        .map_err(|e| anyhow::anyhow!("disk preparation task: {e}"))??;

    // The VMI's socket directory (serial console, guest agent): qemu binds sockets there.
    let vmi_dir = domain::plan::vmi_run_dir(&g.run_dir, c.vmi);
    std::fs::create_dir_all(&vmi_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", vmi_dir.display()))?;

    sw.phase(Phase::Rendering);
    let xml = domain::render::render(&plan, g.template_dir.as_deref())?;
    let xml_path = g.run_dir.join("domain.xml");
    if let Err(e) = std::fs::write(&xml_path, &xml) {
        tracing::warn!(path = %xml_path.display(), error = %e, "saving the rendered domain XML");
    }

    sw.phase(Phase::LibvirtUp);
    Ok(Ok(xml))
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
    // Its DHCP servers died with it; its plumbing is undone from the recorded state, so that
    // setup starts from the pod's original network.
    if let Err(e) = crate::net::teardown(&g.run_dir).await {
        tracing::warn!(error = %e, "undoing the earlier launcher's network plumbing");
    }
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
    use crate::net::Mac;

    fn iface(binding: &str, queues: u32) -> crate::net::IfaceResult {
        crate::net::IfaceResult {
            name: "default".into(),
            network: "default".into(),
            binding: binding.into(),
            pod_interface: "eth0".into(),
            tap: "tap0".into(),
            bridge: Some("k6t-eth0".into()),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
            queues,
            guest_ips: vec!["10.244.1.5".parse().unwrap()],
            dhcp: None,
            dhcp6: None,
        }
    }

    #[test]
    fn bridge_result_maps_to_an_ethernet_nic() {
        let nics = nic_inputs(&crate::net::NetResult {
            interfaces: vec![iface("bridge", 1)],
        })
        .unwrap();
        assert_eq!(
            nics,
            vec![NicInput {
                name: "default".into(),
                attach: NicAttach::Ethernet {
                    device: "tap0".into()
                },
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1450),
                queues: None,
                guest_ips: vec!["10.244.1.5".parse().unwrap()],
            }]
        );
    }

    #[test]
    fn multiqueue_is_passed_and_an_unknown_binding_is_refused() {
        let nics = nic_inputs(&crate::net::NetResult {
            interfaces: vec![iface("masquerade", 4)],
        })
        .unwrap();
        assert_eq!(nics[0].queues, Some(4));
        let e = nic_inputs(&crate::net::NetResult {
            interfaces: vec![iface("vdpa", 1)],
        })
        .unwrap_err();
        assert!(e.to_string().contains("vdpa"), "{e}");
    }

    #[test]
    fn passt_result_maps_to_a_user_nic_with_the_spec_ports() {
        let vmi = crate::spec::parse_str(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: p}\n\
             spec:\n  domain:\n    devices:\n      interfaces:\n      - name: default\n        \
             binding: {name: passt}\n        ports: [{port: 8080}, {port: 53, protocol: UDP}]\n  \
             networks: [{name: default, pod: {}}]\n",
            "test",
        )
        .unwrap()
        .vmi;
        let mut r = iface("passt", 1);
        r.tap = String::new();
        r.bridge = None;
        r.mtu = 65520;
        let mut nics = nic_inputs(&crate::net::NetResult {
            interfaces: vec![r],
        })
        .unwrap();
        fill_passt_ports(&mut nics, &vmi).unwrap();
        let port = |protocol: &str, port| domain::PasstPort {
            protocol: protocol.into(),
            port,
        };
        assert_eq!(
            nics[0].attach,
            NicAttach::Passt {
                ports: vec![port("tcp", 8080), port("udp", 53)]
            }
        );
        assert_eq!(nics[0].mtu, None, "passt sets the guest MTU itself");
        assert_eq!(nics[0].queues, None);
    }
}
