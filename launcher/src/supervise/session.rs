//! Non-root mode: when `launcher run` runs as a non-root user (and `--libvirt-uri` is not
//! given), the launcher starts libvirt's **session** daemon as its own user instead of the
//! privileged one. libvirtd run by a non-root user is the per-user session daemon
//! (`qemu:///session`): qemu and the passt processes it starts run as that same user, with no
//! capability at all. This is what makes the passt binding work with every capability dropped
//! (see docs/l2-bindings.md, "passt").
//!
//! Everything libvirt writes lives under `<run-dir>/session/` (the run dir is the pod's
//! writable emptyDir; `$HOME` of an arbitrary pod uid is usually not writable):
//!
//! | variable | path | what libvirt keeps there |
//! |---|---|---|
//! | `HOME` | `session/home` | nothing we rely on |
//! | `XDG_CONFIG_HOME` | `session/config` | `libvirt/{qemu,libvirtd,virtlogd}.conf`, domain definitions |
//! | `XDG_CACHE_HOME` | `session/cache` | `libvirt/qemu/log/<domain>.log` (qemu's log) |
//! | `XDG_RUNTIME_DIR` | `session/run` | `libvirt/libvirt-sock`, `libvirt/virtlogd-sock`, pid files, `libvirt/qemu/run/<domain>.pid`, `libvirt/qemu/run/passt/*.socket` |
//!
//! The variables are set for the daemons only; the launcher connects with
//! `qemu+unix:///session?socket=<run>/libvirt/libvirt-sock`, which never auto-spawns a daemon.
//! Unix socket paths are limited to 108 bytes: keep `--run-dir` short (the default
//! `/var/run/kubevirt-private` leaves room for domain names of about 40 characters in passt's
//! socket name `libvirt/qemu/run/passt/<id>-<domain>-net<k>.socket`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::daemons::{find_binary, DaemonSpec};
use super::SuperviseError;

/// Whether the launcher runs as a non-root user (the session mode applies).
pub fn is_non_root() -> bool {
    !nix::unistd::geteuid().is_root()
}

/// Where the session daemon's files live, all under `<run-dir>/session/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub base: PathBuf,
}

impl Layout {
    pub fn new(run_dir: &Path) -> Layout {
        Layout {
            base: run_dir.join("session"),
        }
    }
    pub fn home(&self) -> PathBuf {
        self.base.join("home")
    }
    pub fn config_home(&self) -> PathBuf {
        self.base.join("config")
    }
    pub fn cache_home(&self) -> PathBuf {
        self.base.join("cache")
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.base.join("run")
    }
    /// `$XDG_CONFIG_HOME/libvirt`: the session daemon reads `qemu.conf` only from here.
    pub fn config_dir(&self) -> PathBuf {
        self.config_home().join("libvirt")
    }
    /// `$XDG_RUNTIME_DIR/libvirt`: sockets and pid files.
    pub fn libvirt_runtime(&self) -> PathBuf {
        self.runtime_dir().join("libvirt")
    }
    pub fn socket(&self) -> PathBuf {
        self.libvirt_runtime().join("libvirt-sock")
    }
    /// The URI the launcher connects with (an explicit socket: never auto-spawns a daemon).
    pub fn uri(&self) -> String {
        format!("qemu+unix:///session?socket={}", self.socket().display())
    }
    /// Where the session QEMU driver writes `<domain>.pid`.
    pub fn qemu_run_dir(&self) -> PathBuf {
        self.libvirt_runtime().join("qemu/run")
    }
    /// qemu's log file for domain `name`.
    pub fn qemu_log(&self, name: &str) -> PathBuf {
        self.cache_home()
            .join("libvirt/qemu/log")
            .join(format!("{name}.log"))
    }
    /// The environment the daemons get.
    pub fn env(&self) -> Vec<(String, PathBuf)> {
        vec![
            ("HOME".into(), self.home()),
            ("XDG_CONFIG_HOME".into(), self.config_home()),
            ("XDG_CACHE_HOME".into(), self.cache_home()),
            ("XDG_RUNTIME_DIR".into(), self.runtime_dir()),
        ]
    }
}

static ACTIVE: OnceLock<Layout> = OnceLock::new();

/// Turns the session mode on for this process (once, at the start of `run`).
pub fn activate(layout: Layout) -> &'static Layout {
    ACTIVE.get_or_init(|| layout)
}

/// The session layout when the session mode is on.
pub fn active() -> Option<&'static Layout> {
    ACTIVE.get()
}

/// `qemu.conf` of the session daemon. `user`/`group`, namespaces and cgroups do not apply to
/// the session driver (qemu runs as the daemon's user, with no namespaces or cgroups of its own).
pub const SESSION_QEMU_CONF: &str = r#"# Written by launcher (non-root mode): qemu runs as the launcher's user; the pod is the sandbox.
security_driver = "none"
stdio_handler = "file"
"#;

/// `libvirtd.conf` of the session daemon: the privileged one's without `unix_sock_group`
/// (a non-root daemon cannot chown its socket to root).
pub const SESSION_LIBVIRTD_CONF: &str = r#"# Written by launcher (non-root mode): unix socket only, logs to stderr (captured by the launcher).
listen_tls = 0
listen_tcp = 0
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr"
keepalive_interval = 5
keepalive_count = 5
"#;

/// Creates the session directories, writes the configuration files and decides which daemons
/// to run. Returns (hypervisor daemon, virtlogd), both with the session environment.
pub fn prepare(l: &Layout) -> Result<(DaemonSpec, DaemonSpec), SuperviseError> {
    use std::os::unix::fs::DirBuilderExt;
    let uid = nix::unistd::geteuid();
    // libvirt looks its user up and refuses every connection without a user record
    // ("Failed to find user record for uid ...", measured).
    if !matches!(nix::unistd::User::from_uid(uid), Ok(Some(_))) {
        return Err(SuperviseError::Precondition(format!(
            "uid {uid} has no user record (/etc/passwd); libvirt's session daemon refuses to \
             run without one. Run the pod as a user of the image (runAsUser: the uid of \
             libvirt-qemu) or add an entry for uid {uid}"
        )));
    }
    for d in [
        l.home(),
        l.config_dir(),
        l.cache_home(),
        l.libvirt_runtime(),
    ] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .map_err(|e| io_err("creating", &d, e))?;
    }
    let dir = l.config_dir();
    let write = |name: &str, text: &str| -> Result<PathBuf, SuperviseError> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| io_err("writing", &p, e))?;
        Ok(p)
    };
    write("qemu.conf", SESSION_QEMU_CONF)?;
    let libvirtd_conf = write("libvirtd.conf", SESSION_LIBVIRTD_CONF)?;
    let virtqemud_conf = write("virtqemud.conf", SESSION_LIBVIRTD_CONF)?;
    let virtlogd_conf = write("virtlogd.conf", super::daemons::VIRTLOGD_CONF)?;
    let rt = l.libvirt_runtime();
    let hv = if let Some(b) = find_binary("virtqemud") {
        DaemonSpec {
            name: "virtqemud".into(),
            binary: b,
            config: virtqemud_conf,
            socket: rt.join("virtqemud-sock"),
            pid_file: rt.join("virtqemud.pid"),
            env: l.env(),
        }
    } else if let Some(b) = find_binary("libvirtd") {
        DaemonSpec {
            name: "libvirtd".into(),
            binary: b,
            config: libvirtd_conf,
            socket: l.socket(),
            pid_file: rt.join("libvirtd.pid"),
            env: l.env(),
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
        socket: rt.join("virtlogd-sock"),
        pid_file: rt.join("virtlogd.pid"),
        env: l.env(),
    };
    Ok((hv, logd))
}

/// The passt binding needs the non-root mode when the launcher starts libvirt itself: as root,
/// libvirt 11.3 starts passt as root, passt then switches to `nobody` by itself and can no
/// longer write its pid file into root's `/run/libvirt/qemu/passt/` (libvirtd resets that
/// directory's owner when it starts, so preparing it does not help; measured). Checked before
/// anything in the pod changes.
pub fn check_passt_privileges(
    vmi: &crate::spec::Vmi,
    non_root: bool,
) -> Result<(), SuperviseError> {
    use crate::spec::BindingKind;
    if non_root {
        return Ok(());
    }
    let interfaces = &vmi.spec.domain.devices.interfaces;
    for (i, iface) in interfaces.iter().enumerate() {
        if iface.state.as_deref() == Some("absent") {
            continue;
        }
        if let Some(k @ (BindingKind::Passt | BindingKind::Slirp)) = iface.binding_kind() {
            let name = if k == BindingKind::Slirp {
                "slirp (mapped to passt)"
            } else {
                "passt"
            };
            return Err(SuperviseError::Precondition(format!(
                "spec.domain.devices.interfaces[{i}]: the {name} binding needs the launcher to                  run as a non-root user (runAsUser: the image's libvirt-qemu user, every                  capability dropped): as root, libvirt starts passt as root, passt switches                  to nobody and cannot write its pid file under /run/libvirt/qemu/passt.                  See docs/l2-bindings.md (passt), or pass --libvirt-uri"
            )));
        }
    }
    Ok(())
}

/// Whether the VMI has a passt (or slirp) interface.
pub fn uses_passt(vmi: &crate::spec::Vmi) -> bool {
    use crate::spec::BindingKind;
    vmi.spec.domain.devices.interfaces.iter().any(|i| {
        i.state.as_deref() != Some("absent")
            && matches!(
                i.binding_kind(),
                Some(BindingKind::Passt | BindingKind::Slirp)
            )
    })
}

/// passt sandboxes itself in a new user namespace and exits when it cannot make one
/// ("Couldn't create user namespace: Operation not permitted", measured under a seccomp filter
/// that denies it like the container runtimes' default profiles do without CAP_SYS_ADMIN).
/// libvirt would then only report "passt ... unexpected exit status 1", so this is checked
/// before anything in the pod changes, with `unshare --user true` (util-linux). Without the
/// `unshare` tool the check is skipped (with a warning).
pub fn check_user_namespaces() -> Result<(), SuperviseError> {
    let out = std::process::Command::new("unshare")
        .args(["--user", "true"])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(SuperviseError::Precondition(format!(
            "the passt binding needs to create a user namespace (passt sandboxes itself in              one), and this pod cannot: `unshare --user` failed ({}: {}). Causes: the pod's              seccomp profile (RuntimeDefault denies unshare(CLONE_NEWUSER) without              CAP_SYS_ADMIN: use seccompProfile Unconfined or a Localhost profile that allows              it), user.max_user_namespaces = 0 on the node, or an AppArmor policy restricting              unprivileged user namespaces. See docs/l2-bindings.md (passt)",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot run `unshare --user true` to check that passt can sandbox itself; not checked");
            Ok(())
        }
    }
}

fn io_err(op: &str, p: &Path, e: std::io::Error) -> SuperviseError {
    SuperviseError::Io(format!(
        "{op} {} (non-root mode keeps libvirt's files under the run directory, which must be \
         writable by uid {}): {e}",
        p.display(),
        nix::unistd::geteuid()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_everything_under_the_run_dir() {
        let l = Layout::new(Path::new("/var/run/kubevirt-private"));
        assert_eq!(
            l.uri(),
            "qemu+unix:///session?socket=/var/run/kubevirt-private/session/run/libvirt/libvirt-sock"
        );
        assert_eq!(
            l.qemu_run_dir(),
            Path::new("/var/run/kubevirt-private/session/run/libvirt/qemu/run")
        );
        assert_eq!(
            l.qemu_log("default_vm"),
            Path::new("/var/run/kubevirt-private/session/cache/libvirt/qemu/log/default_vm.log")
        );
        for (k, v) in l.env() {
            assert!(v.starts_with(&l.base), "{k}={}", v.display());
        }
        // passt's socket for a 20-character domain name fits sockaddr_un (108 bytes).
        let passt = l
            .qemu_run_dir()
            .join("passt/1-default_testvm-passt-net0.socket");
        assert!(passt.as_os_str().len() < 108, "{}", passt.display());
    }

    #[test]
    fn passt_as_root_is_refused_before_anything_changes() {
        let vmi = |binding: &str| {
            crate::spec::parse_str(
                &format!(
                    "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
                     metadata: {{name: p}}\nspec:\n  domain:\n    devices:\n      \
                     interfaces: [{{name: default, {binding}}}]\n  \
                     networks: [{{name: default, pod: {{}}}}]\n"
                ),
                "test",
            )
            .unwrap()
            .vmi
        };
        for b in ["passt: {}", "slirp: {}", "binding: {name: passt}"] {
            let e = check_passt_privileges(&vmi(b), false).unwrap_err();
            assert!(e.to_string().contains("non-root"), "{b}: {e}");
            assert_eq!(
                crate::error::Classify::exit_kind(&e),
                crate::error::ExitKind::Precondition
            );
            check_passt_privileges(&vmi(b), true).unwrap();
        }
        check_passt_privileges(&vmi("bridge: {}"), false).unwrap();
    }

    #[test]
    fn session_configs_do_not_ask_for_root() {
        assert!(!SESSION_LIBVIRTD_CONF.contains("unix_sock_group"));
        assert!(!SESSION_QEMU_CONF.contains("user ="));
        assert!(SESSION_QEMU_CONF.contains("stdio_handler = \"file\""));
    }
}
