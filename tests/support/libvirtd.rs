//! A libvirtd that a test runs inside a sandbox pod, with its own config, socket directory,
//! pid file and one log per start (`libvirtd-<n>.log`), for tests that reach a daemon the
//! launcher does not manage (`--libvirt-uri`, the RPC client). Killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::run::kill;
use super::Sandbox;

pub struct PodLibvirtd {
    dir: PathBuf,
    /// How failures name it: "starting {label}", "{label} did not come up".
    label: &'static str,
    child: Option<Child>,
    starts: u32,
}

impl PodLibvirtd {
    /// Writes `dir/libvirtd.conf` (unix socket in `dir/sock`, no auth, logs to stderr) and the
    /// pod's own `/etc/libvirt/qemu.conf` (a private tmpfs: the QEMU driver reads only this
    /// path). Does not start the daemon.
    pub fn new(pod: &Sandbox, dir: PathBuf, label: &'static str) -> PodLibvirtd {
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        std::fs::write(
            dir.join("libvirtd.conf"),
            format!(
                "listen_tls = 0\nlisten_tcp = 0\nunix_sock_dir = \"{}\"\n\
                 unix_sock_rw_perms = \"0700\"\nauth_unix_ro = \"none\"\nauth_unix_rw = \"none\"\n\
                 log_outputs = \"3:stderr\"\n",
                dir.join("sock").display()
            ),
        )
        .unwrap();
        pod.sh(
            "cat > /etc/libvirt/qemu.conf <<'EOF'\nuser = \"root\"\ngroup = \"root\"\n\
             dynamic_ownership = 0\nremember_owner = 0\nnamespaces = [ ]\n\
             cgroup_controllers = [ ]\nsecurity_driver = \"none\"\nstdio_handler = \"file\"\nEOF",
        );
        PodLibvirtd {
            dir,
            label,
            child: None,
            starts: 0,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock/libvirt-sock")
    }

    /// Starts the daemon in the pod and waits (at most 30 s) for its socket.
    pub fn start(&mut self, pod: &Sandbox) {
        let _ = std::fs::remove_file(self.socket());
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("libvirtd-{}.log", self.starts))).unwrap();
        let conf = self.dir.join("libvirtd.conf");
        let pidf = self.dir.join("libvirtd.pid");
        let child = pod
            .exec_cmd(&[
                "libvirtd",
                "-f",
                conf.to_str().unwrap(),
                "-p",
                pidf.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.label));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            assert!(Instant::now() < deadline, "{} did not come up", self.label);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn kill9(&mut self) {
        if let Some(mut ch) = self.child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut ch) = self.child.take() {
            kill(ch.id() as i32, "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while ch.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = ch.kill();
                    let _ = ch.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for PodLibvirtd {
    fn drop(&mut self) {
        self.kill9();
    }
}
