//! Integration tests of the embedded DHCPv4 server against real clients (needs root).
//!
//! Topology per test (all names carry the test process id and a counter, and everything is
//! removed by Drop guards, on success and on failure):
//!
//! ```text
//!  server netns "dhs<pid>-<n>"                         client netns "dhc<pid>-<n>"
//!  k6t-eth0 (bridge, 169.254.75.10/32) ── vm-port ═══ eth0 (the VM's MAC)
//!  eth0 (a veth standing in for the pod's dummy eth0, holding the pod IP and routes)
//! ```
//!
//! `launcher dhcp serve --config FILE` runs in the server namespace; busybox `udhcpc` and ISC
//! `dhclient` run in the client namespace with scripts that dump their environment to files.
//! Raw requests are crafted with dhcproto from a thread that entered the client namespace.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use launcher::dhcp::{V4Config, V4Route};

#[path = "support/dhcp_client.rs"]
mod dhcp_client;

const VM_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xaa, 0x01];
const VM_MAC_STR: &str = "02:00:00:00:aa:01";
const SERVER_IP: &str = "169.254.75.10";

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("tests/dhcp.rs needs root (network namespaces, veths, port 67): run as root");
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Two namespaces joined by the bridge; deleted on drop.
struct Topo {
    server: String,
    client: String,
    dir: tempfile::TempDir,
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// 10.244.1.5/24, default via 10.244.1.1, a service route.
    Flannel,
    /// 10.244.1.5/32, 169.254.1.1 on-link, default via 169.254.1.1.
    Calico,
}

impl Topo {
    fn new(style: Style, client_mac: &str) -> Topo {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let t = Topo {
            server: format!("dhs{id}"),
            client: format!("dhc{id}"),
            dir: tempfile::Builder::new()
                .prefix("dhcp-test")
                .tempdir()
                .unwrap(),
        };
        sh(&["ip", "netns", "add", &t.server]);
        sh(&["ip", "netns", "add", &t.client]);
        let s = t.server.as_str();
        let c = t.client.as_str();
        sh(&["ip", "-n", s, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", c, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", s, "link", "add", "k6t-eth0", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            s,
            "link",
            "set",
            "k6t-eth0",
            "address",
            "02:00:00:00:00:fe",
        ]);
        sh(&[
            "ip",
            "-n",
            s,
            "addr",
            "add",
            &format!("{SERVER_IP}/32"),
            "dev",
            "k6t-eth0",
        ]);
        sh(&["ip", "-n", s, "link", "set", "k6t-eth0", "up"]);
        sh(&[
            "ip", "-n", s, "link", "add", "vm-port", "type", "veth", "peer", "name", "eth0",
            "netns", c,
        ]);
        sh(&[
            "ip", "-n", s, "link", "set", "vm-port", "master", "k6t-eth0", "up",
        ]);
        sh(&["ip", "-n", c, "link", "set", "eth0", "address", client_mac]);
        sh(&["ip", "-n", c, "link", "set", "eth0", "up"]);
        // The pod's own eth0 (a dummy in the real design) keeps the pod IP in the same netns:
        // replies must still reach the VM over the bridge, not loop back locally.
        sh(&[
            "ip", "-n", s, "link", "add", "eth0", "type", "veth", "peer", "name", "node",
        ]);
        sh(&["ip", "-n", s, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", s, "link", "set", "node", "up"]);
        match style {
            Style::Flannel => {
                sh(&["ip", "-n", s, "addr", "add", "10.244.1.5/24", "dev", "eth0"]);
                sh(&[
                    "ip",
                    "-n",
                    s,
                    "route",
                    "add",
                    "default",
                    "via",
                    "10.244.1.1",
                ]);
            }
            Style::Calico => {
                sh(&["ip", "-n", s, "addr", "add", "10.244.1.5/32", "dev", "eth0"]);
                sh(&[
                    "ip",
                    "-n",
                    s,
                    "route",
                    "add",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                ]);
                sh(&[
                    "ip",
                    "-n",
                    s,
                    "route",
                    "add",
                    "default",
                    "via",
                    "169.254.1.1",
                ]);
            }
        }
        t
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn config(style: Style) -> V4Config {
    let (prefix_len, router, routes) = match style {
        Style::Flannel => (
            24,
            ip("10.244.1.1"),
            vec![
                V4Route {
                    dest: ip("0.0.0.0"),
                    prefix_len: 0,
                    gateway: ip("10.244.1.1"),
                },
                V4Route {
                    dest: ip("10.96.0.0"),
                    prefix_len: 12,
                    gateway: ip("10.244.1.1"),
                },
            ],
        ),
        Style::Calico => (
            32,
            ip("169.254.1.1"),
            vec![V4Route {
                dest: ip("0.0.0.0"),
                prefix_len: 0,
                gateway: ip("169.254.1.1"),
            }],
        ),
    };
    V4Config {
        interface: "k6t-eth0".into(),
        server_ip: ip(SERVER_IP),
        client_mac: VM_MAC,
        client_ip: ip("10.244.1.5"),
        prefix_len,
        router: Some(router),
        routes,
        dns: vec![ip("10.96.0.10"), ip("10.96.0.11")],
        search: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
            "not a domain".into(),
        ],
        domain: Some("default.svc.cluster.local".into()),
        hostname: Some("testvm".into()),
        mtu: 1450,
        lease_secs: launcher::dhcp::DEFAULT_LEASE_SECS,
        ntp: vec![],
        tftp_server: None,
        boot_file: None,
        private: vec![],
    }
}

/// `launcher dhcp serve` inside the server namespace; SIGTERM on drop.
struct Server {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(t: &Topo, configs: &[V4Config]) -> Server {
        let cfg = t.path("dhcp.json");
        std::fs::write(&cfg, serde_json::to_vec(configs).unwrap()).unwrap();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.server,
                env!("CARGO_BIN_EXE_launcher"),
                "dhcp",
                "serve",
            ])
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting launcher dhcp serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("DHCPv4 ready") {
                    let _ = tx.send(());
                }
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let mut s = Server {
            child: Some(child),
            log,
        };
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let log = s.stop();
            panic!("the DHCP server did not become ready:\n{log}");
        }
        s
    }

    /// SIGTERM, wait (must exit 0), return the whole log.
    fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(st) = c.try_wait().unwrap() {
                    break st;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("the DHCP server ignored SIGTERM:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            // Let the reader thread drain the pipe.
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                status.success(),
                "dhcp serve exited with {status}:\n{}",
                self.log()
            );
        }
        self.log()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The counters from the "DHCPv4 server stopped" line for `field` (e.g. "acks").
    fn counter(log: &str, field: &str) -> u64 {
        let line = log
            .lines()
            .rfind(|l| l.contains("DHCPv4 server stopped"))
            .unwrap_or_else(|| panic!("no stop line in log:\n{log}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in {line}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The udhcpc command line (its script writes `udhcpc.<event>.env` into the test dir).
fn udhcpc_command(t: &Topo, tries: u32, timeout: u32) -> Command {
    let script = dhcp_client::udhcpc_script(t.dir.path(), "udhcpc");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &t.client])
        .args(dhcp_client::udhcpc_args(
            tries,
            timeout,
            "eth0",
            &script,
            dhcp_client::UDHCPC_ALL_OPTIONS,
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Runs udhcpc once; returns (exit success, env of the `bound` event).
fn udhcpc(t: &Topo, tries: u32, timeout: u32) -> (bool, std::collections::HashMap<String, String>) {
    let status = udhcpc_command(t, tries, timeout)
        .status()
        .expect("running busybox udhcpc");
    (
        status.success(),
        dhcp_client::udhcpc_bound(t.dir.path(), "udhcpc"),
    )
}

/// Runs ISC dhclient in the foreground until its script saw BOUND (or the timeout).
fn dhclient(t: &Topo, secs: u64) -> Option<std::collections::HashMap<String, String>> {
    let mut ns = Command::new("ip");
    ns.args(["netns", "exec", &t.client]);
    dhcp_client::dhclient(ns, t.dir.path(), secs)
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// A client socket on 0.0.0.0:68 bound to eth0, able to broadcast.
fn client_socket() -> UdpSocket {
    use nix::sys::socket::{setsockopt, sockopt};
    let s = UdpSocket::bind("0.0.0.0:68").expect("binding 0.0.0.0:68 in the client netns");
    setsockopt(&s, sockopt::BindToDevice, &std::ffi::OsString::from("eth0")).unwrap();
    s.set_broadcast(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn request(mt: MessageType, xid: u32, opts: Vec<DhcpOption>) -> Vec<u8> {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &VM_MAC,
    );
    // Broadcast flag: the test socket has no address, so unicast replies could not reach it.
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(mt));
    for o in opts {
        m.opts_mut().insert(o);
    }
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    b
}

/// Sends `packet` to 255.255.255.255:67 and waits up to 3 s for the reply with `xid`.
fn exchange(sock: &UdpSocket, packet: &[u8], xid: u32) -> Option<Message> {
    let dst = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 2048];
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_send {
            sock.send_to(packet, dst).expect("sending the request");
            next_send = Instant::now() + Duration::from_secs(1);
        }
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) {
                if m.xid() == xid && m.opcode() == dhcproto::v4::Opcode::BootReply {
                    return Some(m);
                }
            }
        }
    }
    None
}

fn check_udhcpc_env(env: &std::collections::HashMap<String, String>, style: Style) {
    let get = |k: &str| env.get(k).cloned().unwrap_or_default();
    assert_eq!(get("ip"), "10.244.1.5", "{env:?}");
    assert_eq!(get("serverid"), SERVER_IP);
    assert_eq!(get("dns"), "10.96.0.10 10.96.0.11");
    // The invalid domain is skipped, the others arrive in order.
    assert_eq!(
        get("search"),
        "default.svc.cluster.local svc.cluster.local cluster.local"
    );
    assert_eq!(get("domain"), "default.svc.cluster.local");
    assert_eq!(get("hostname"), "testvm");
    assert_eq!(get("mtu"), "1450");
    assert_eq!(get("lease"), "4294967295");
    match style {
        Style::Flannel => {
            assert_eq!(get("mask"), "24");
            assert_eq!(get("router"), "10.244.1.1");
            assert_eq!(
                get("staticroutes"),
                "10.96.0.0/12 10.244.1.1 0.0.0.0/0 10.244.1.1"
            );
        }
        Style::Calico => {
            assert_eq!(get("mask"), "32");
            assert_eq!(get("router"), "169.254.1.1");
            assert_eq!(
                get("staticroutes"),
                "169.254.1.1/32 0.0.0.0 0.0.0.0/0 169.254.1.1"
            );
        }
    }
}

fn check_dhclient_env(env: &std::collections::HashMap<String, String>, style: Style) {
    let get = |k: &str| env.get(k).cloned().unwrap_or_default();
    assert_eq!(get("new_ip_address"), "10.244.1.5", "{env:?}");
    assert_eq!(get("new_dhcp_server_identifier"), SERVER_IP);
    assert_eq!(get("new_domain_name_servers"), "10.96.0.10 10.96.0.11");
    assert_eq!(
        get("new_domain_search"),
        "default.svc.cluster.local. svc.cluster.local. cluster.local."
    );
    assert_eq!(get("new_domain_name"), "default.svc.cluster.local");
    assert_eq!(get("new_host_name"), "testvm");
    assert_eq!(get("new_interface_mtu"), "1450");
    match style {
        Style::Flannel => {
            assert_eq!(get("new_subnet_mask"), "255.255.255.0");
            assert_eq!(get("new_routers"), "10.244.1.1");
            assert_eq!(
                get("new_rfc3442_classless_static_routes"),
                "12 10 96 10 244 1 1 0 10 244 1 1"
            );
        }
        Style::Calico => {
            assert_eq!(get("new_subnet_mask"), "255.255.255.255");
            assert_eq!(get("new_routers"), "169.254.1.1");
            assert_eq!(
                get("new_rfc3442_classless_static_routes"),
                "32 169 254 1 1 0 0 0 0 0 169 254 1 1"
            );
        }
    }
}

#[test]
fn udhcpc_gets_the_pod_network_flannel() {
    let t = Topo::new(Style::Flannel, VM_MAC_STR);
    let mut s = Server::start(&t, &[config(Style::Flannel)]);
    let (ok, env) = udhcpc(&t, 5, 2);
    let log = s.stop();
    assert!(ok, "udhcpc got no lease; server log:\n{log}");
    check_udhcpc_env(&env, Style::Flannel);
    assert_eq!(Server::counter(&log, "offers"), 1, "{log}");
    assert_eq!(Server::counter(&log, "acks"), 1, "{log}");
}

#[test]
fn udhcpc_gets_the_pod_network_calico() {
    let t = Topo::new(Style::Calico, VM_MAC_STR);
    let mut s = Server::start(&t, &[config(Style::Calico)]);
    let (ok, env) = udhcpc(&t, 5, 2);
    let log = s.stop();
    assert!(ok, "udhcpc got no lease; server log:\n{log}");
    check_udhcpc_env(&env, Style::Calico);
}

#[test]
fn dhclient_gets_the_pod_network_flannel() {
    let t = Topo::new(Style::Flannel, VM_MAC_STR);
    let mut s = Server::start(&t, &[config(Style::Flannel)]);
    let env = dhclient(&t, 20);
    let log = s.stop();
    let env = env.unwrap_or_else(|| panic!("dhclient got no lease; server log:\n{log}"));
    check_dhclient_env(&env, Style::Flannel);
}

#[test]
fn dhclient_gets_the_pod_network_calico() {
    let t = Topo::new(Style::Calico, VM_MAC_STR);
    let mut s = Server::start(&t, &[config(Style::Calico)]);
    let env = dhclient(&t, 20);
    let log = s.stop();
    let env = env.unwrap_or_else(|| panic!("dhclient got no lease; server log:\n{log}"));
    check_dhclient_env(&env, Style::Calico);
}

#[test]
fn foreign_mac_gets_no_answer() {
    let t = Topo::new(Style::Flannel, "02:00:00:00:bb:02");
    let mut s = Server::start(&t, &[config(Style::Flannel)]);
    let (ok, env) = udhcpc(&t, 2, 1);
    let log = s.stop();
    assert!(!ok, "a foreign MAC got a lease: {env:?}");
    assert!(env.is_empty());
    assert!(
        log.contains("foreign_mac="),
        "foreign packets were not counted:\n{log}"
    );
    assert_eq!(Server::counter(&log, "offers"), 0);
}

#[test]
fn garbage_leaves_the_server_serving() {
    let t = Topo::new(Style::Flannel, VM_MAC_STR);
    let mut s = Server::start(&t, &[config(Style::Flannel)]);
    let good = request(MessageType::Discover, 7, vec![]);
    in_netns(&t.client, move || {
        let sock = client_socket();
        let dst = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..300usize {
            let len = (rnd() % 1600) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            if i % 3 == 0 && len >= 240 {
                // Looks like ours up to the options: exercises the deeper parser.
                p[..240].copy_from_slice(&good[..240]);
            }
            let _ = sock.send_to(&p, dst);
        }
        // Truncated, empty, a BOOTREPLY, an option running past the end.
        let _ = sock.send_to(&[], dst);
        let _ = sock.send_to(&good[..100], dst);
        let mut reply = good.clone();
        reply[0] = 2;
        let _ = sock.send_to(&reply, dst);
        let mut cut = good[..240].to_vec();
        cut.extend_from_slice(&[53, 1, 1, 55, 200, 1]);
        let _ = sock.send_to(&cut, dst);
    });
    let (ok, env) = udhcpc(&t, 5, 2);
    let log = s.stop();
    assert!(ok, "no lease after garbage; server log:\n{log}");
    assert_eq!(env.get("ip").map(String::as_str), Some("10.244.1.5"));
    assert!(Server::counter(&log, "dropped") >= 4, "{log}");
    assert_eq!(Server::counter(&log, "acks"), 1, "{log}");
}

#[test]
fn stale_request_gets_a_nak_and_a_good_one_an_ack() {
    let t = Topo::new(Style::Flannel, VM_MAC_STR);
    let mut s = Server::start(&t, &[config(Style::Flannel)]);
    let (nak, ack, other_server) = in_netns(&t.client, || {
        let sock = client_socket();
        let stale = request(
            MessageType::Request,
            0x1111,
            vec![DhcpOption::RequestedIpAddress(ip("10.244.9.9"))],
        );
        let nak = exchange(&sock, &stale, 0x1111);
        let good = request(
            MessageType::Request,
            0x2222,
            vec![
                DhcpOption::RequestedIpAddress(ip("10.244.1.5")),
                DhcpOption::ServerIdentifier(ip(SERVER_IP)),
                DhcpOption::ParameterRequestList(vec![
                    OptionCode::InterfaceMtu,
                    OptionCode::SubnetMask,
                ]),
            ],
        );
        let ack = exchange(&sock, &good, 0x2222);
        let other = request(
            MessageType::Request,
            0x3333,
            vec![
                DhcpOption::RequestedIpAddress(ip("10.244.1.5")),
                DhcpOption::ServerIdentifier(ip("10.0.0.1")),
            ],
        );
        (nak, ack, exchange(&sock, &other, 0x3333))
    });
    let log = s.stop();
    let nak = nak.unwrap_or_else(|| panic!("no reply to a stale REQUEST:\n{log}"));
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(matches!(
        nak.opts().get(OptionCode::ServerIdentifier),
        Some(DhcpOption::ServerIdentifier(a)) if *a == ip(SERVER_IP)
    ));
    let ack = ack.unwrap_or_else(|| panic!("no reply to a good REQUEST:\n{log}"));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip("10.244.1.5"));
    let other = other_server.unwrap_or_else(|| panic!("no reply:\n{log}"));
    assert_eq!(other.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(Server::counter(&log, "naks"), 2, "{log}");
}

#[test]
fn two_servers_in_one_process_one_per_interface() {
    let t = Topo::new(Style::Flannel, VM_MAC_STR);
    let s = t.server.as_str();
    // A second bridge with its own VM in a third namespace.
    let c2 = format!("{}x", t.client);
    sh(&["ip", "netns", "add", &c2]);
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(c2.clone());
    sh(&["ip", "-n", s, "link", "add", "k6t-net1", "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        s,
        "addr",
        "add",
        "169.254.75.11/32",
        "dev",
        "k6t-net1",
    ]);
    sh(&["ip", "-n", s, "link", "set", "k6t-net1", "up"]);
    sh(&[
        "ip", "-n", s, "link", "add", "vm-port1", "type", "veth", "peer", "name", "eth0", "netns",
        &c2,
    ]);
    sh(&[
        "ip", "-n", s, "link", "set", "vm-port1", "master", "k6t-net1", "up",
    ]);
    sh(&[
        "ip",
        "-n",
        &c2,
        "link",
        "set",
        "eth0",
        "address",
        "02:00:00:00:cc:03",
        "up",
    ]);
    let mut second = config(Style::Flannel);
    second.interface = "k6t-net1".into();
    second.server_ip = ip("169.254.75.11");
    second.client_mac = [0x02, 0, 0, 0, 0xcc, 0x03];
    second.client_ip = ip("192.168.50.7");
    second.router = None;
    second.routes = vec![];
    let mut srv = Server::start(&t, &[config(Style::Flannel), second]);
    let (ok1, env1) = udhcpc(&t, 5, 2);
    let script = dhcp_client::udhcpc_script(t.dir.path(), "second");
    let ok2 = Command::new("ip")
        .args(["netns", "exec", &c2])
        .args(dhcp_client::udhcpc_args(5, 2, "eth0", &script, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    let env2 = dhcp_client::udhcpc_bound(t.dir.path(), "second");
    let log = srv.stop();
    assert!(ok1 && ok2, "server log:\n{log}");
    assert_eq!(env1.get("ip").map(String::as_str), Some("10.244.1.5"));
    assert_eq!(env2.get("ip").map(String::as_str), Some("192.168.50.7"));
    assert_eq!(
        env2.get("serverid").map(String::as_str),
        Some("169.254.75.11")
    );
    assert_eq!(env2.get("router"), None);
}

#[test]
fn interface_recreated_under_the_server_is_served_again() {
    let t = Topo::new(Style::Flannel, VM_MAC_STR);
    let mut s = Server::start(&t, &[config(Style::Flannel)]);
    let n = t.server.as_str();
    sh(&["ip", "-n", n, "link", "del", "k6t-eth0"]);
    sh(&["ip", "-n", n, "link", "add", "k6t-eth0", "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        n,
        "addr",
        "add",
        &format!("{SERVER_IP}/32"),
        "dev",
        "k6t-eth0",
    ]);
    sh(&["ip", "-n", n, "link", "set", "k6t-eth0", "up"]);
    sh(&[
        "ip", "-n", n, "link", "set", "vm-port", "master", "k6t-eth0", "up",
    ]);
    // The supervisor checks the interface every 2 s and backs off from 100 ms.
    std::thread::sleep(Duration::from_secs(3));
    let (ok, env) = udhcpc(&t, 5, 2);
    let log = s.stop();
    assert!(ok, "no lease after the interface was re-created:\n{log}");
    assert_eq!(env.get("ip").map(String::as_str), Some("10.244.1.5"));
    assert!(Server::counter(&log, "socket_restarts") >= 1, "{log}");
}

#[test]
fn start_fails_naming_a_missing_interface() {
    let t = Topo::new(Style::Flannel, VM_MAC_STR);
    let mut cfg = config(Style::Flannel);
    cfg.interface = "k6t-nope".into();
    let file = t.path("bad.json");
    std::fs::write(&file, serde_json::to_vec(&[cfg]).unwrap()).unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.server,
            env!("CARGO_BIN_EXE_launcher"),
            "dhcp",
            "serve",
        ])
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("k6t-nope"), "{err}");
}

/// The Rust API the network module uses: start() binds (and names a missing interface),
/// stats() counts, shutdown() stops; in-process, on a thread inside the server namespace.
#[test]
fn api_start_stats_shutdown_in_process() {
    use launcher::dhcp::server::Dhcp4Servers;
    let t = Topo::new(Style::Flannel, VM_MAC_STR);
    let cmd = udhcpc_command(&t, 5, 2);
    let (bad, ok, stats) = in_netns(&t.server, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut missing = config(Style::Flannel);
            missing.interface = "k6t-gone".into();
            let bad = match Dhcp4Servers::start(vec![config(Style::Flannel), missing]).await {
                Ok(_) => panic!("start() succeeded without the interface"),
                Err(e) => e.to_string(),
            };
            let servers = Dhcp4Servers::start(vec![config(Style::Flannel)])
                .await
                .expect("start");
            let ok = tokio::process::Command::from(cmd)
                .status()
                .await
                .unwrap()
                .success();
            let stats = servers.stats();
            servers.shutdown().await;
            (bad, ok, stats)
        })
    });
    assert!(bad.contains("k6t-gone"), "{bad}");
    assert!(ok, "udhcpc got no lease from the in-process server");
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].interface, "k6t-eth0");
    assert_eq!((stats[0].offers, stats[0].acks), (1, 1), "{stats:?}");
    assert_eq!(stats[0].served(), 2);
    // The neighbour entry for the guest is removed at shutdown.
    let out = Command::new("ip")
        .args(["-n", &t.server, "neigh", "show", "dev", "k6t-eth0"])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&out.stdout);
    assert!(!neigh.contains("10.244.1.5"), "{neigh}");
}
