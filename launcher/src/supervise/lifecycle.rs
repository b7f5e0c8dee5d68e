//! The domain's life: the libvirt connection (reconnected, with callbacks re-registered, after a
//! daemon restart), define + start, and supervision until one defined end.
//!
//! Two independent sources say when qemu is gone: libvirt's lifecycle events, and a pidfd on
//! qemu's pid (which works even while libvirt is down). The first one to fire starts a short
//! wait for the other, then the end is classified (guest poweroff, stop on request, or crash).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::daemons::DaemonNews;
use super::rpc::{consts as vc, Client, DomainRef, Event, RpcError};
use super::signals::{Reaper, Request};
use super::SuperviseError;
use crate::sys::proc::PidWatch;

/// How long to wait for the second witness of qemu's end (event or pidfd).
const END_CONFIRM: Duration = Duration::from_secs(2);

/// One libvirt connection (the launcher's own RPC client, [`super::rpc`]) with our event callbacks.
pub struct Libvirt {
    pub uri: String,
    conn: Option<Arc<Client>>,
    events: mpsc::UnboundedSender<Event>,
}

fn verr(op: &str, e: RpcError) -> SuperviseError {
    SuperviseError::Libvirt(format!("{op}: {e}"))
}

impl Libvirt {
    /// Opens `uri` and registers the callbacks; events go to `events`.
    pub async fn connect(
        uri: &str,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self, SuperviseError> {
        let mut lv = Libvirt {
            uri: uri.to_string(),
            conn: None,
            events,
        };
        lv.reconnect().await?;
        Ok(lv)
    }

    /// (Re)opens the connection and re-registers every callback (after a daemon restart, the
    /// old registrations died with the old connection: KubeVirt's issue #194).
    pub async fn reconnect(&mut self) -> Result<(), SuperviseError> {
        self.close().await;
        let conn = Client::open(&self.uri, self.events.clone())
            .await
            .map_err(|e| verr(&format!("connecting to libvirt at {}", self.uri), e))?;
        conn.register_events()
            .await
            .map_err(|e| verr("registering libvirt event callbacks", e))?;
        self.conn = Some(Arc::new(conn));
        tracing::info!(uri = %self.uri, "connected to libvirt; event callbacks registered");
        Ok(())
    }

    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Forgets a connection known to be dead (its callbacks went with it).
    pub fn mark_dead(&mut self) {
        // Dropping the client stops its reader; the socket closes with it.
        self.conn = None;
    }

    pub async fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            if !c.is_dead() {
                c.close().await;
            }
        }
    }

    /// The open connection.
    pub fn conn(&self) -> Result<Arc<Client>, SuperviseError> {
        self.conn
            .clone()
            .ok_or_else(|| SuperviseError::Libvirt("not connected to libvirt".into()))
    }
}

/// Removes any earlier domain of this name (destroying it if it runs), so that define never
/// meets "already exists" and there is never a second qemu. Returns whether one was found.
pub async fn remove_existing(conn: &Client, name: &str) -> Result<bool, SuperviseError> {
    let Ok(dom) = conn.lookup_by_name(name).await else {
        return Ok(false);
    };
    if conn.is_active(&dom).await.unwrap_or(false) {
        tracing::warn!(
            domain = name,
            "destroying a running domain left by an earlier launcher"
        );
        conn.destroy(&dom, 0)
            .await
            .map_err(|e| verr(&format!("destroying the earlier domain {name}"), e))?;
    }
    undefine(conn, &dom, name).await?;
    Ok(true)
}

async fn undefine(conn: &Client, dom: &DomainRef, name: &str) -> Result<(), SuperviseError> {
    // Keep NVRAM (EFI variables are the VM's state); a domain without NVRAM accepts the flag.
    match conn.undefine(dom, vc::UNDEFINE_KEEP_NVRAM).await {
        Ok(()) => Ok(()),
        Err(RpcError::Remote(_)) => conn
            .undefine(dom, 0)
            .await
            .map_err(|e| verr(&format!("undefining domain {name}"), e)),
        Err(e) => Err(verr(&format!("undefining domain {name}"), e)),
    }
}

/// Defines and starts the domain.
pub async fn define_and_start(
    conn: &Client,
    name: &str,
    xml: &str,
    timings: &mut Vec<(&'static str, Duration)>,
) -> Result<(), SuperviseError> {
    let t = Instant::now();
    if remove_existing(conn, name).await? {
        tracing::info!(domain = name, "removed an earlier definition of the domain");
    }
    let dom = conn
        .define_xml(xml, 0)
        .await
        .map_err(|e| verr(&format!("defining domain {name}"), e))?;
    timings.push(("define", t.elapsed()));
    let t = Instant::now();
    conn.create(&dom, 0)
        .await
        .map_err(|e| verr(&format!("starting domain {name}"), e))?;
    timings.push(("create", t.elapsed()));
    Ok(())
}

/// Where libvirt's QEMU driver (privileged) keeps the pid file of a running domain.
/// In the non-root mode, where the session driver keeps it.
pub fn qemu_pid_file(name: &str) -> PathBuf {
    if let Some(l) = super::session::active() {
        return l.qemu_run_dir().join(format!("{name}.pid"));
    }
    Path::new("/run/libvirt/qemu").join(format!("{name}.pid"))
}

/// Reads qemu's pid from libvirt's pid file (written before virDomainCreate returns).
pub fn read_qemu_pid(name: &str) -> Option<i32> {
    std::fs::read_to_string(qemu_pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The end of a supervised run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered itself off (or rebooted with on_reboot=destroy).
    GuestPoweroff,
    /// Stopped on request (signal); `destroyed` when the grace period ran out or SIGQUIT.
    Stopped { by: String, destroyed: bool },
    /// Stopped on request and destroyed at once: `now_by` (a second SIGTERM/SIGINT, or SIGQUIT)
    /// asked to destroy without waiting for the grace period.
    DestroyedNow { by: String, now_by: String },
    /// qemu ended unexpectedly.
    Crashed(String),
    /// libvirt failed for good (daemon crash loop).
    LibvirtFailed(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::GuestPoweroff | Outcome::Stopped { .. } | Outcome::DestroyedNow { .. } => 0,
            Outcome::Crashed(_) | Outcome::LibvirtFailed(_) => 4,
        }
    }

    pub fn message(&self, grace: u64) -> String {
        match self {
            Outcome::GuestPoweroff => "the guest powered off".into(),
            Outcome::Stopped {
                by,
                destroyed: false,
            } => format!("stopped by {by}: the guest shut down"),
            Outcome::Stopped {
                by,
                destroyed: true,
            } => format!(
                "stopped by {by}: the guest did not shut down within {grace} s, so it was destroyed"
            ),
            Outcome::DestroyedNow { by, now_by } if by == now_by && by == "SIGQUIT" => {
                "stopped by SIGQUIT: the domain was destroyed at once".into()
            }
            Outcome::DestroyedNow { by, now_by } if by == now_by => format!(
                "stopped by {by}: a second {now_by} during the grace period, so the domain was \
                 destroyed at once"
            ),
            Outcome::DestroyedNow { by, now_by } => format!(
                "stopped by {by}: {now_by} during the grace period, so the domain was destroyed \
                 at once"
            ),
            Outcome::Crashed(r) => r.clone(),
            Outcome::LibvirtFailed(r) => format!("libvirt failed: {r}"),
        }
    }
}

/// What a `STOPPED` event's detail means.
pub fn stopped_detail(detail: i32) -> &'static str {
    match detail {
        vc::EVENT_STOPPED_SHUTDOWN => "shutdown",
        vc::EVENT_STOPPED_DESTROYED => "destroyed",
        vc::EVENT_STOPPED_CRASHED => "crashed",
        vc::EVENT_STOPPED_MIGRATED => "migrated",
        vc::EVENT_STOPPED_SAVED => "saved",
        vc::EVENT_STOPPED_FAILED => "failed",
        vc::EVENT_STOPPED_FROM_SNAPSHOT => "from-snapshot",
        _ => "unknown",
    }
}

pub fn event_name(event: i32) -> &'static str {
    match event {
        vc::EVENT_DEFINED => "defined",
        vc::EVENT_UNDEFINED => "undefined",
        vc::EVENT_STARTED => "started",
        vc::EVENT_SUSPENDED => "suspended",
        vc::EVENT_RESUMED => "resumed",
        vc::EVENT_STOPPED => "stopped",
        vc::EVENT_SHUTDOWN => "shutdown",
        vc::EVENT_PMSUSPENDED => "pmsuspended",
        vc::EVENT_CRASHED => "crashed",
        _ => "unknown",
    }
}

/// What was learned about qemu's end, from both witnesses.
#[derive(Debug, Default, Clone)]
pub struct EndFacts {
    /// A stop was requested (`Some(signal name)`), and whether we destroyed.
    pub requested: Option<String>,
    pub destroyed_by_us: bool,
    /// The signal that asked to destroy at once (a second SIGTERM/SIGINT, or SIGQUIT).
    pub destroy_now_by: Option<String>,
    /// The guest asked to power off (a SHUTDOWN event).
    pub guest_shutdown: bool,
    /// The detail of libvirt's STOPPED event, if it came.
    pub stopped: Option<i32>,
    /// qemu's pid was seen to exit.
    pub qemu_exited: bool,
    /// qemu's exit status, if we reaped it.
    pub qemu_status: Option<String>,
    pub qemu_pid: Option<i32>,
    /// The last lines of qemu's log.
    pub qemu_log_tail: Option<String>,
}

/// Classifies the end (pure).
pub fn classify(f: &EndFacts) -> Outcome {
    if let (Some(by), Some(now_by)) = (&f.requested, &f.destroy_now_by) {
        return Outcome::DestroyedNow {
            by: by.clone(),
            now_by: now_by.clone(),
        };
    }
    if let Some(by) = &f.requested {
        return Outcome::Stopped {
            by: by.clone(),
            destroyed: f.destroyed_by_us,
        };
    }
    let shutdown = f.stopped == Some(vc::EVENT_STOPPED_SHUTDOWN);
    if f.guest_shutdown || shutdown {
        return Outcome::GuestPoweroff;
    }
    let mut reason = match f.qemu_pid {
        Some(p) => format!("qemu (pid {p}) ended unexpectedly"),
        None => "qemu ended unexpectedly".to_string(),
    };
    if let Some(s) = &f.qemu_status {
        reason.push_str(&format!(": {s}"));
    }
    match f.stopped {
        Some(d) => reason.push_str(&format!(
            "; libvirt reports the domain {}",
            stopped_detail(d)
        )),
        None => reason.push_str("; libvirt reported nothing"),
    }
    if let Some(t) = &f.qemu_log_tail {
        reason.push_str(&format!("; qemu log: {t}"));
    }
    Outcome::Crashed(reason)
}

/// The supervisor's inputs.
pub struct Inputs {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub signals: mpsc::UnboundedReceiver<Request>,
    pub daemon_news: mpsc::UnboundedReceiver<DaemonNews>,
}

/// Watches the running domain until it ends; returns the classified end.
pub struct Watch<'a> {
    pub lv: &'a mut Libvirt,
    pub name: String,
    pub qemu_pid: Option<i32>,
    pub grace: Duration,
    pub reaper: Arc<Reaper>,
    pub qemu_log: PathBuf,
    /// The hypervisor daemon's name (`libvirtd`), when we run it.
    pub own_daemon: Option<String>,
}

async fn pid_exit(fd: &Option<PidWatch>) {
    match fd {
        Some(fd) => fd.exited().await,
        None => std::future::pending::<()>().await,
    }
}

impl Watch<'_> {
    pub async fn run(mut self, inputs: &mut Inputs) -> Outcome {
        let pidfd = self.qemu_pid.and_then(|p| {
            PidWatch::new(p)
                .map_err(|e| tracing::warn!(pid = p, error = %e, "cannot watch qemu's pid"))
                .ok()
        });
        let mut facts = EndFacts {
            qemu_pid: self.qemu_pid,
            ..Default::default()
        };
        let mut deadline: Option<tokio::time::Instant> = None;
        // Events about an earlier instance of the domain (destroyed while defining) come before
        // the STARTED event of ours; STOPPED is only believed after STARTED.
        let mut started = false;
        let mut stop_pending = false; // a graceful stop still to be sent (libvirt was down)
        let mut end_seen: Option<tokio::time::Instant> = None;
        // An external daemon (--libvirt-uri) that went away: one reconnect attempt per tick
        // until it is back, for as long as it takes, without blocking signals or qemu's end.
        let mut reconnect_at: Option<tokio::time::Instant> = None;
        let mut reconnect_failures = 0u32;
        loop {
            let confirm_at = end_seen.map(|t| t + END_CONFIRM);
            tokio::select! {
                ev = inputs.events.recv() => {
                    let Some(ev) = ev else { continue };
                    match ev {
                        Event::Lifecycle { domain, event, detail } if domain == self.name => {
                            tracing::info!(domain = %domain, event = event_name(event), detail, "domain event");
                            match event {
                                vc::EVENT_STARTED | vc::EVENT_RESUMED => started = true,
                                vc::EVENT_SHUTDOWN if started => facts.guest_shutdown |= facts.requested.is_none(),
                                vc::EVENT_STOPPED if started => {
                                    facts.stopped = Some(detail);
                                    if facts.qemu_exited || self.qemu_pid.is_none() {
                                        return self.finish(facts).await;
                                    }
                                    end_seen.get_or_insert_with(tokio::time::Instant::now);
                                }
                                _ => {}
                            }
                        }
                        Event::Lifecycle { .. } => {}
                        Event::Reboot { domain } if domain == self.name => {
                            tracing::info!(domain = %domain, "the guest rebooted (on_reboot: restart); still supervising");
                        }
                        Event::Reboot { .. } => {}
                        Event::ConnectionClosed { reason } => {
                            tracing::warn!(reason, "the libvirt connection closed");
                            self.lv.mark_dead();
                            if self.own_daemon.is_none() {
                                // An external daemon: its own supervisor restarts it; get back
                                // to it when it is there again.
                                reconnect_at = Some(tokio::time::Instant::now());
                            }
                        }
                    }
                }
                _ = pid_exit(&pidfd), if !facts.qemu_exited => {
                    facts.qemu_exited = true;
                    tracing::info!(pid = self.qemu_pid, "qemu exited");
                    if facts.stopped.is_some() || !self.lv.connected() {
                        // Give the reaper a moment to collect its status.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return self.finish(facts).await;
                    }
                    end_seen.get_or_insert_with(tokio::time::Instant::now);
                }
                _ = sleep_until_opt(confirm_at) => {
                    return self.finish(facts).await;
                }
                req = inputs.signals.recv() => {
                    let Some(req) = req else { continue };
                    let now_req = match req {
                        Request::StopNow => true,
                        Request::Stop(_) if facts.requested.is_some() => true,
                        Request::Stop(_) => false,
                    };
                    if facts.requested.is_none() {
                        facts.requested = Some(match req {
                            Request::Stop(s) => s.as_str().to_string(),
                            Request::StopNow => "SIGQUIT".to_string(),
                        });
                    }
                    if now_req {
                        facts.destroy_now_by.get_or_insert_with(|| match req {
                            Request::Stop(s) => s.as_str().to_string(),
                            Request::StopNow => "SIGQUIT".to_string(),
                        });
                        self.destroy(&mut facts).await;
                    } else {
                        deadline = Some(tokio::time::Instant::now() + self.grace);
                        tracing::info!(grace_s = self.grace.as_secs(), "asking the guest to shut down (ACPI)");
                        stop_pending = !self.shutdown().await;
                    }
                }
                _ = sleep_until_opt(deadline), if !facts.destroyed_by_us => {
                    tracing::warn!(grace_s = self.grace.as_secs(), "grace period over; destroying the domain");
                    self.destroy(&mut facts).await;
                    deadline = None;
                }
                _ = sleep_until_opt(reconnect_at) => {
                    if self.reconnect_once(&mut started).await {
                        reconnect_at = None;
                        reconnect_failures = 0;
                        if stop_pending {
                            stop_pending = !self.shutdown().await;
                        }
                    } else {
                        reconnect_failures += 1;
                        if reconnect_failures % 20 == 1 {
                            tracing::warn!(uri = %self.lv.uri, attempts = reconnect_failures, "libvirt is still unreachable; retrying");
                        }
                        reconnect_at = Some(tokio::time::Instant::now() + Duration::from_millis(250));
                    }
                }
                news = inputs.daemon_news.recv() => {
                    let Some(news) = news else { continue };
                    match news {
                        DaemonNews::Died { name, status } => {
                            tracing::warn!(daemon = %name, %status, "libvirt daemon died; the VM keeps running");
                            if Some(&name) == self.own_daemon.as_ref() {
                                self.lv.mark_dead();
                            }
                        }
                        DaemonNews::Ready { name, generation } => {
                            if Some(&name) == self.own_daemon.as_ref() {
                                tracing::info!(daemon = %name, generation, "daemon back; reconnecting");
                                self.try_reconnect(&mut started).await;
                                if stop_pending && self.lv.connected() {
                                    stop_pending = !self.shutdown().await;
                                }
                            }
                        }
                        DaemonNews::GaveUp { name, reason } => {
                            tracing::error!(daemon = %name, "{reason}");
                            // Without its daemons the VM cannot be managed: end it.
                            self.kill_qemu();
                            return Outcome::LibvirtFailed(reason);
                        }
                    }
                }
            }
        }
    }

    /// The current connection and our domain on it.
    async fn our_domain(&self) -> Result<(Arc<Client>, DomainRef), SuperviseError> {
        let c = self.lv.conn()?;
        let d = c
            .lookup_by_name(&self.name)
            .await
            .map_err(|e| verr(&format!("looking up domain {}", self.name), e))?;
        Ok((c, d))
    }

    /// The domain's `(state, reason)` through the current connection.
    async fn domain_state(&self) -> Result<(i32, i32), SuperviseError> {
        let (c, d) = self.our_domain().await?;
        c.get_state(&d).await.map_err(|e| verr("domain state", e))
    }

    /// One reconnect attempt (with the callbacks re-registered); true when connected again.
    async fn reconnect_once(&mut self, started: &mut bool) -> bool {
        if let Err(e) = self.lv.reconnect().await {
            tracing::debug!(error = %e, "reconnecting to libvirt");
            return false;
        }
        let state = self.domain_state().await;
        tracing::info!(?state, "domain state after reconnecting");
        if matches!(state, Ok((s, _)) if s == vc::DOMAIN_RUNNING) {
            *started = true;
        }
        true
    }

    async fn try_reconnect(&mut self, started: &mut bool) {
        for attempt in 0..50 {
            match self.lv.reconnect().await {
                Ok(()) => {
                    let state = self.domain_state().await;
                    tracing::info!(?state, "domain state after reconnecting");
                    if matches!(state, Ok((s, _)) if s == vc::DOMAIN_RUNNING) {
                        *started = true;
                    }
                    return;
                }
                Err(e) => {
                    if attempt % 10 == 0 {
                        tracing::warn!(error = %e, "reconnecting to libvirt");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Sends the ACPI power button; false if libvirt could not be asked.
    async fn shutdown(&mut self) -> bool {
        let r = async {
            let (c, d) = self.our_domain().await?;
            c.shutdown(&d, vc::SHUTDOWN_ACPI_POWER_BTN)
                .await
                .map_err(|e| verr(&format!("shutting down domain {}", self.name), e))
        }
        .await;
        match r {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "ACPI shutdown request failed; will destroy at the deadline");
                false
            }
        }
    }

    async fn destroy(&mut self, facts: &mut EndFacts) {
        facts.destroyed_by_us = true;
        let r = async {
            let (c, d) = self.our_domain().await?;
            c.destroy(&d, 0)
                .await
                .map_err(|e| verr(&format!("destroying domain {}", self.name), e))
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "destroy through libvirt failed; killing qemu directly");
            self.kill_qemu();
        }
    }

    fn kill_qemu(&self) {
        if let Some(p) = self.qemu_pid {
            if super::signals::alive(p) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    async fn finish(self, mut facts: EndFacts) -> Outcome {
        if let Some(p) = self.qemu_pid {
            // The reaper may hold qemu's status if it was reparented to us.
            for _ in 0..5 {
                self.reaper.scan();
                if let Some(s) = self.reaper.status_of(p) {
                    facts.qemu_status = Some(s);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        facts.qemu_log_tail = log_tail(&self.qemu_log);
        let outcome = classify(&facts);
        tracing::info!(?facts, ?outcome, "the domain ended");
        outcome
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending::<()>().await,
    }
}

/// The last meaningful line of qemu's log (libvirt's per-domain log file).
pub fn log_tail(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_poweroff_is_success() {
        let f = EndFacts {
            guest_shutdown: true,
            stopped: Some(vc::EVENT_STOPPED_SHUTDOWN),
            qemu_exited: true,
            ..Default::default()
        };
        assert_eq!(classify(&f), Outcome::GuestPoweroff);
        assert_eq!(classify(&f).exit_code(), 0);
    }

    #[test]
    fn a_killed_qemu_is_a_crash_with_the_reason() {
        let f = EndFacts {
            stopped: Some(vc::EVENT_STOPPED_FAILED),
            qemu_exited: true,
            qemu_pid: Some(99),
            qemu_status: Some("killed by SIGKILL".into()),
            ..Default::default()
        };
        let o = classify(&f);
        assert_eq!(o.exit_code(), 4);
        let m = o.message(30);
        assert!(m.contains("pid 99"), "{m}");
        assert!(m.contains("SIGKILL"), "{m}");
        assert!(m.contains("failed"), "{m}");
    }

    #[test]
    fn qemu_gone_without_libvirt_is_a_crash() {
        let f = EndFacts {
            qemu_exited: true,
            ..Default::default()
        };
        assert_eq!(classify(&f).exit_code(), 4);
    }

    #[test]
    fn destroy_now_names_the_second_request_not_the_grace_period() {
        let mut f = EndFacts {
            requested: Some("SIGTERM".into()),
            destroyed_by_us: true,
            destroy_now_by: Some("SIGTERM".into()),
            ..Default::default()
        };
        let m = classify(&f).message(60);
        assert_eq!(classify(&f).exit_code(), 0);
        assert!(m.contains("a second SIGTERM"), "{m}");
        assert!(!m.contains("within 60 s"), "{m}");
        f.requested = Some("SIGQUIT".into());
        f.destroy_now_by = Some("SIGQUIT".into());
        let m = classify(&f).message(60);
        assert_eq!(m, "stopped by SIGQUIT: the domain was destroyed at once");
    }

    #[test]
    fn a_requested_stop_is_success_even_when_destroyed() {
        let f = EndFacts {
            requested: Some("SIGTERM".into()),
            destroyed_by_us: true,
            stopped: Some(vc::EVENT_STOPPED_DESTROYED),
            ..Default::default()
        };
        let o = classify(&f);
        assert_eq!(o.exit_code(), 0);
        assert!(o.message(10).contains("within 10 s"));
    }
}
