//! Integration tests: the masquerade binding's NAT (`launcher::net::nat`).
//!
//! - Golden rulesets (no root): `tests/golden/nat/<case>.json` is exactly the transaction fed to
//!   `nft -j -f -`. Regenerate with `UPDATE_GOLDEN=1 cargo test --test nat`, then review the diff
//!   of the `.nft` files (nft's own rendering, see below) with `git diff tests/golden/nat`.
//! - Root tests (panic loudly when not root): each golden is applied in a throwaway network
//!   namespace and `nft list ruleset` is compared with `tests/golden/nat/<case>.nft`; re-apply,
//!   replace, a refused transaction, teardown; and a real traffic test across three namespaces
//!   (node, pod, guest).

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use launcher::error::{Classify, ExitKind};
use launcher::net::nat::{
    self, NatConfig, NatError, NatFamily, NatPort, NatPortRange, Nft, Protocol,
};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables};

// ------------------------------------------------------------------------------------------
// Inputs
// ------------------------------------------------------------------------------------------

fn v4() -> NatFamily<Ipv4Addr> {
    NatFamily {
        guest: "10.0.2.2".parse().unwrap(),
        gateway: "10.0.2.1".parse().unwrap(),
        pod_ips: vec!["10.244.1.5".parse().unwrap()],
    }
}

fn v6() -> NatFamily<Ipv6Addr> {
    NatFamily {
        guest: "fd10:0:2::2".parse().unwrap(),
        gateway: "fd10:0:2::1".parse().unwrap(),
        pod_ips: vec!["fd00:10:244:1::5".parse().unwrap()],
    }
}

fn base(v4on: bool, v6on: bool) -> NatConfig {
    NatConfig {
        pod_interface: "eth0".into(),
        bridge: "k6t-eth0".into(),
        v4: v4on.then(v4),
        v6: v6on.then(v6),
        ports: vec![],
        port_ranges: vec![],
        istio: false,
    }
}

fn port(protocol: Protocol, port: u16) -> NatPort {
    NatPort { protocol, port }
}

fn some_ports() -> Vec<NatPort> {
    vec![
        port(Protocol::Tcp, 80),
        port(Protocol::Tcp, 22),
        port(Protocol::Udp, 53),
    ]
}

/// Every golden case: (name, input).
fn cases() -> Vec<(&'static str, NatConfig)> {
    let mut v = vec![
        ("v4", base(true, false)),
        ("v6", base(false, true)),
        ("dual", base(true, true)),
    ];
    let mut c = base(true, false);
    c.ports = some_ports();
    v.push(("v4-ports", c));
    let mut c = base(false, true);
    c.ports = some_ports();
    v.push(("v6-ports", c));
    let mut c = base(true, true);
    c.ports = some_ports();
    v.push(("dual-ports", c));
    let mut c = base(true, true);
    c.ports = vec![port(Protocol::Tcp, 8050), port(Protocol::Tcp, 22)];
    c.port_ranges = vec![
        NatPortRange {
            protocol: Protocol::Tcp,
            start: 8000,
            end: 8100,
        },
        NatPortRange {
            protocol: Protocol::Udp,
            start: 60000,
            end: 61000,
        },
    ];
    v.push(("dual-port-ranges", c));
    let mut c = base(true, false);
    c.istio = true;
    v.push(("v4-istio", c));
    let mut c = base(true, true);
    c.istio = true;
    v.push(("dual-istio", c));
    v.push(("dual-istio-ports", full()));
    v
}

/// The largest case: dual-stack, Istio, ports and ranges (also what the benchmark applies).
fn full() -> NatConfig {
    let mut c = base(true, true);
    c.istio = true;
    c.ports = some_ports();
    c.port_ranges = vec![NatPortRange {
        protocol: Protocol::Tcp,
        start: 30000,
        end: 30100,
    }];
    c
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/nat")
}

fn update() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

fn check_golden(file: &str, actual: &str) {
    let path = golden_dir().join(file);
    if update() {
        fs::create_dir_all(golden_dir()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading golden {}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        expected,
        actual,
        "{} differs from the generated output; if the change is intended, rerun with \
         UPDATE_GOLDEN=1 and review `git diff tests/golden/nat`",
        path.display()
    );
}

// ------------------------------------------------------------------------------------------
// Golden (no root)
// ------------------------------------------------------------------------------------------

#[test]
fn golden_rulesets() {
    for (name, cfg) in cases() {
        let json = nat::ruleset_json(&cfg).unwrap() + "\n";
        check_golden(&format!("{name}.json"), &json);
        // The input too, so a reviewer sees what produced the transaction.
        let input = serde_json::to_string_pretty(&cfg).unwrap() + "\n";
        check_golden(&format!("{name}.input.json"), &input);
        // And it round-trips through serde (the plumbing passes it as plain data).
        let back: NatConfig = serde_json::from_str(&input).unwrap();
        assert_eq!(back, cfg);
    }
}

#[test]
fn teardown_golden() {
    let json = serde_json::to_string_pretty(&nat::teardown_ruleset()).unwrap() + "\n";
    check_golden("teardown.json", &json);
}

#[test]
fn generator_is_deterministic() {
    for (name, cfg) in cases() {
        assert_eq!(
            nat::ruleset_json(&cfg).unwrap(),
            nat::ruleset_json(&cfg).unwrap(),
            "{name}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Root helpers
// ------------------------------------------------------------------------------------------

fn require_root(test: &str) {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "{test} needs root (network namespaces, nftables): run it as root; it is not skipped"
        );
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A throwaway network namespace, deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!(
            "lnat-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn nft(&self) -> Nft {
        Nft::in_netns(&self.name)
    }

    fn list(&self) -> String {
        self.nft().list_ruleset().unwrap()
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

// ------------------------------------------------------------------------------------------
// Root: application
// ------------------------------------------------------------------------------------------

/// Each golden transaction is accepted by nft, and nft's own rendering of it is golden too
/// (`<case>.nft`: the human-readable form to review).
#[test]
fn root_goldens_apply_and_list_as_expected() {
    require_root("root_goldens_apply_and_list_as_expected");
    for (name, cfg) in cases() {
        let ns = Netns::new("gold");
        ns.nft()
            .apply(&cfg)
            .unwrap_or_else(|e| panic!("applying {name}: {e}"));
        check_golden(&format!("{name}.nft"), &ns.list());
    }
}

#[test]
fn root_apply_twice_is_unchanged_and_teardown_restores_empty() {
    require_root("root_apply_twice_is_unchanged_and_teardown_restores_empty");
    let ns = Netns::new("idem");
    let before = ns.list();
    let cfg = full();
    ns.nft().apply(&cfg).unwrap();
    let once = ns.list();
    assert!(once.contains("table ip kubevirt_nat"), "{once}");
    assert!(once.contains("table ip6 kubevirt_nat"), "{once}");
    assert!(once.contains("dnat to 10.0.2.2"), "{once}");
    assert!(once.contains("dnat to fd10:0:2::2"), "{once}");
    assert!(once.contains("masquerade"), "{once}");
    ns.nft().apply(&cfg).unwrap();
    let twice = ns.list();
    assert_eq!(once, twice, "re-applying the same ruleset changed it");
    assert_eq!(count(&twice, "table ip kubevirt_nat"), 1);

    ns.nft().teardown().unwrap();
    assert_eq!(
        ns.list(),
        before,
        "teardown did not restore the empty state"
    );
    // Teardown with nothing there is fine too.
    ns.nft().teardown().unwrap();
    assert_eq!(ns.list(), before);
}

#[test]
fn root_different_ruleset_replaces_not_appends() {
    require_root("root_different_ruleset_replaces_not_appends");
    let mut b = base(true, true);
    b.ports = some_ports();
    // Reference: B applied to a fresh namespace.
    let fresh = Netns::new("ref");
    fresh.nft().apply(&b).unwrap();
    let expected = fresh.list();

    let ns = Netns::new("repl");
    ns.nft().apply(&full()).unwrap();
    ns.nft().apply(&b).unwrap();
    let got = ns.list();
    assert_eq!(got, expected, "A then B must look exactly like B alone");
    assert!(
        !got.contains("15090"),
        "Istio rules survived the replacement: {got}"
    );

    // Dropping a family removes its table.
    ns.nft().apply(&base(true, false)).unwrap();
    let v4only = ns.list();
    assert!(!v4only.contains("table ip6"), "{v4only}");
    assert!(v4only.contains("table ip kubevirt_nat"), "{v4only}");
}

/// Take a valid transaction and break its very last object, so nft has already seen the
/// deletes and re-adds of both tables when it fails.
fn with_last_rule_replaced(
    rs: Nftables<'static>,
    f: impl Fn(&mut nftables::schema::Rule),
) -> Nftables<'static> {
    let mut objs = rs.objects.into_owned();
    let last = objs
        .iter_mut()
        .rev()
        .find_map(|o| match o {
            NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(r))) => Some(r),
            _ => None,
        })
        .expect("a rule");
    f(last);
    Nftables {
        objects: objs.into(),
    }
}

#[test]
fn root_refused_transaction_leaves_previous_ruleset_intact() {
    require_root("root_refused_transaction_leaves_previous_ruleset_intact");
    let ns = Netns::new("fail");
    // Someone else's table (e.g. an Istio init container's iptables-nft `ip nat`) must survive.
    ns.exec(&["nft", "add table ip nat; add chain ip nat PREROUTING { type nat hook prerouting priority dstnat; }; add rule ip nat PREROUTING tcp dport 15008 return"]);
    ns.nft().apply(&full()).unwrap();
    let good = ns.list();
    assert!(good.contains("table ip nat"), "{good}");

    let mut b = base(true, true);
    b.ports = some_ports();
    let valid = nat::ruleset(&b).unwrap();

    // 1. Kernel-side failure: a jump to a chain that does not exist (ENOENT at commit time).
    let broken = with_last_rule_replaced(valid.clone(), |r| {
        r.expr = vec![nftables::stmt::Statement::Jump(
            nftables::stmt::JumpTarget {
                target: "NO_SUCH_CHAIN".into(),
            },
        )]
        .into();
    });
    let err = ns
        .nft()
        .apply_ruleset(&broken, "applying a broken test ruleset")
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, NatError::NftFailed { .. }), "{text}");
    assert_eq!(err.exit_kind(), ExitKind::Precondition);
    assert!(
        text.contains("No such file or directory") || text.contains("Could not process rule"),
        "nft's own error text is missing: {text}"
    );
    // JSON errors do not say which command failed; the error names it.
    let NatError::NftFailed { first_rejected, .. } = &err else {
        unreachable!()
    };
    let first = first_rejected
        .as_deref()
        .unwrap_or_else(|| panic!("no culprit named: {text}"));
    assert!(first.contains("NO_SUCH_CHAIN"), "{first}");
    assert!(text.contains("first rejected command:"), "{text}");
    assert_eq!(ns.list(), good, "a refused transaction changed the ruleset");

    // 2. nft-side failure: an interface name nft rejects (longer than IFNAMSIZ).
    let broken = with_last_rule_replaced(valid, |r| {
        r.expr = vec![
            nftables::stmt::Statement::Match(nftables::stmt::Match {
                left: nftables::expr::Expression::Named(nftables::expr::NamedExpression::Meta(
                    nftables::expr::Meta {
                        key: nftables::expr::MetaKey::Iifname,
                    },
                )),
                right: nftables::expr::Expression::String(
                    "an-interface-name-far-too-long-for-linux".into(),
                ),
                op: nftables::stmt::Operator::EQ,
            }),
            nftables::stmt::Statement::Accept(None),
        ]
        .into();
    });
    let err = ns
        .nft()
        .apply_ruleset(&broken, "applying a broken test ruleset")
        .unwrap_err();
    assert!(
        err.to_string().contains("exceeds maximum length"),
        "nft's own error text is missing: {err}"
    );
    assert_eq!(ns.list(), good, "a refused transaction changed the ruleset");

    // Teardown removes only our tables.
    ns.nft().teardown().unwrap();
    let after = ns.list();
    assert!(after.contains("table ip nat"), "{after}");
    assert!(!after.contains("kubevirt_nat"), "{after}");
}

#[test]
fn root_missing_nft_in_namespace_is_exit_3_with_nft_text() {
    require_root("root_missing_nft_in_namespace_is_exit_3_with_nft_text");
    let ns = Netns::new("miss");
    let nft = Nft::with_command(["ip", "netns", "exec", &ns.name, "/nonexistent/nft"]);
    let err = nft.apply(&full()).unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Precondition);
    assert!(err.to_string().contains("/nonexistent/nft"), "{err}");
}

// ------------------------------------------------------------------------------------------
// Root: real traffic across node / pod / guest namespaces
// ------------------------------------------------------------------------------------------

/// Runs `f` on a thread inside the network namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let fd = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// Dual-stack (`[::]`) TCP listeners inside a namespace that answer "<who> <port> from <peer ip>\n".
struct Listeners {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Listeners {
    fn start(ns: &str, who: &'static str, addrs: Vec<SocketAddr>) -> Listeners {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let st = stop.clone();
        let handle = in_ns(ns, move || {
            let ls: Vec<TcpListener> = addrs
                .iter()
                .map(|a| {
                    let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            tx.send(()).unwrap();
            while !st.load(Ordering::SeqCst) {
                for l in &ls {
                    if let Ok((mut s, peer)) = l.accept() {
                        let port = l.local_addr().unwrap().port();
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "{who} {port} from {}", peer.ip().to_canonical());
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("listeners did not start");
        Listeners {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// UDP responders inside a namespace that answer each datagram with
/// "guest-udp <port> from <peer ip>".
struct UdpEcho {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &str, addrs: Vec<SocketAddr>) -> UdpEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let st = stop.clone();
        let handle = in_ns(ns, move || {
            let socks: Vec<std::net::UdpSocket> = addrs
                .iter()
                .map(|a| {
                    let s =
                        std::net::UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect();
            tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !st.load(Ordering::SeqCst) {
                for s in &socks {
                    if let Ok((_, peer)) = s.recv_from(&mut buf) {
                        let port = s.local_addr().unwrap().port();
                        let msg = format!("guest-udp {port} from {}", peer.ip().to_canonical());
                        let _ = s.send_to(msg.as_bytes(), peer);
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("UDP responders did not start");
        UdpEcho {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends one datagram from inside `ns` and returns the reply (error on timeout or ICMP error).
fn udp(ns: &str, to: SocketAddr) -> Result<String, String> {
    in_ns(ns, move || {
        let any: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = std::net::UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
        s.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"ping").map_err(|e| format!("send {to}: {e}"))?;
        let mut buf = [0u8; 512];
        let n = s
            .recv(&mut buf)
            .map_err(|e| format!("recv from {to}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .join()
    .unwrap()
}

/// Connects from inside `ns` and returns the first line the server sent, or the error.
fn connect(ns: &str, to: SocketAddr) -> Result<String, String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf)
            .map_err(|e| format!("read from {to}: {e}"))?;
        Ok(buf.trim().to_owned())
    })
    .join()
    .unwrap()
}

/// Like [`connect`], but from a given source address (Envoy's passthrough source).
fn connect_from(ns: &str, from: SocketAddr, to: SocketAddr) -> Result<String, String> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    in_ns(ns, move || {
        let fam = if to.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket::socket(fam, SockType::Stream, SockFlag::empty(), None)
            .map_err(|e| format!("socket: {e}"))?;
        socket::setsockopt(
            &fd,
            sockopt::SendTimeout,
            &nix::sys::time::TimeVal::new(3, 0),
        )
        .map_err(|e| format!("SO_SNDTIMEO: {e}"))?;
        socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(from),
        )
        .map_err(|e| format!("bind {from}: {e}"))?;
        socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(to),
        )
        .map_err(|e| format!("connect {from} -> {to}: {e}"))?;
        let mut s = TcpStream::from(fd);
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf)
            .map_err(|e| format!("read from {to}: {e}"))?;
        Ok(buf.trim().to_owned())
    })
    .join()
    .unwrap()
}

#[test]
fn root_traffic_reaches_the_guest_only_where_it_should() {
    require_root("root_traffic_reaches_the_guest_only_where_it_should");
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let guest = Netns::new("guest");

    // node <-> pod: a veth; the pod side is the pod's eth0.
    pod.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "veth-pod", "netns",
        &node.name,
    ]);
    // pod bridge with the gateway addresses; tap0 stands in for the VM's tap, its peer is the
    // guest's eth0.
    pod.exec(&["ip", "link", "add", "k6t-eth0", "type", "bridge"]);
    pod.exec(&[
        "ip",
        "link",
        "add",
        "tap0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &guest.name,
    ]);
    pod.exec(&["ip", "link", "set", "tap0", "master", "k6t-eth0"]);
    for (ns, dev, addrs) in [
        (&node, "veth-pod", ["192.168.77.1/24", "fd77::1/64"]),
        (&pod, "eth0", ["192.168.77.2/24", "fd77::2/64"]),
        (&pod, "k6t-eth0", ["10.0.2.1/24", "fd10:0:2::1/120"]),
        (&guest, "eth0", ["10.0.2.2/24", "fd10:0:2::2/120"]),
    ] {
        for a in addrs {
            let mut args = vec!["ip", "addr", "add", a, "dev", dev];
            if a.contains(':') {
                args.push("nodad");
            }
            ns.exec(&args);
        }
        ns.exec(&["ip", "link", "set", dev, "up"]);
    }
    pod.exec(&["ip", "link", "set", "tap0", "up"]);
    guest.exec(&["ip", "route", "add", "default", "via", "10.0.2.1"]);
    guest.exec(&["ip", "-6", "route", "add", "default", "via", "fd10:0:2::1"]);
    // What the masquerade plumbing sets, set here by the test itself.
    pod.exec(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.k6t-eth0.route_localnet=1",
    ]);

    let listed = 8080u16;
    let unlisted = 9090u16;
    let mut cfg = NatConfig {
        pod_interface: "eth0".into(),
        bridge: "k6t-eth0".into(),
        v4: Some(NatFamily {
            guest: "10.0.2.2".parse().unwrap(),
            gateway: "10.0.2.1".parse().unwrap(),
            pod_ips: vec!["192.168.77.2".parse().unwrap()],
        }),
        v6: Some(NatFamily {
            guest: "fd10:0:2::2".parse().unwrap(),
            gateway: "fd10:0:2::1".parse().unwrap(),
            pod_ips: vec!["fd77::2".parse().unwrap()],
        }),
        ports: vec![port(Protocol::Tcp, listed), port(Protocol::Udp, 5353)],
        port_ranges: vec![],
        istio: false,
    };
    let before = pod.list();
    pod.nft().apply(&cfg).unwrap();

    let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let sa = |ip: IpAddr, p: u16| SocketAddr::new(ip, p);
    let _g = Listeners::start(
        &guest.name,
        "guest",
        vec![sa(any6, listed), sa(any6, unlisted)],
    );
    // The pod itself listens on the unlisted port: that is where such traffic must end up.
    let _p = Listeners::start(
        &pod.name,
        "pod",
        vec![sa(any6, unlisted), sa(any6, 15021), sa(any6, 15006)],
    );
    let _n = Listeners::start(&node.name, "node", vec![sa(any6, 7070)]);
    let _u = UdpEcho::start(&guest.name, vec![sa(any6, 5353), sa(any6, listed)]);

    let pod4: IpAddr = "192.168.77.2".parse().unwrap();
    let pod6: IpAddr = "fd77::2".parse().unwrap();
    let lo4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);

    // Node -> pod IP, listed port: the guest answers and sees the node's own address.
    assert_eq!(
        connect(&node.name, sa(pod4, listed)).unwrap(),
        "guest 8080 from 192.168.77.1"
    );
    assert_eq!(
        connect(&node.name, sa(pod6, listed)).unwrap(),
        "guest 8080 from fd77::1"
    );
    // Node -> pod IP, unlisted port: the pod answers, never the guest.
    assert_eq!(
        connect(&node.name, sa(pod4, unlisted)).unwrap(),
        "pod 9090 from 192.168.77.1"
    );
    assert_eq!(
        connect(&node.name, sa(pod6, unlisted)).unwrap(),
        "pod 9090 from fd77::1"
    );
    // Inside the pod, localhost:listed reaches the guest, from the gateway address.
    assert_eq!(
        connect(&pod.name, sa(lo4, listed)).unwrap(),
        "guest 8080 from 10.0.2.1"
    );
    // [::1] is deliberately not forwarded (Linux drops the guest's reply to ::1, so the
    // connection would hang): it stays in the pod, where nothing listens on 8080.
    let e = connect(&pod.name, sa(lo6, listed)).unwrap_err();
    assert!(e.contains("refused"), "{e}");
    // ... localhost:unlisted stays in the pod.
    assert_eq!(
        connect(&pod.name, sa(lo4, unlisted)).unwrap(),
        "pod 9090 from 127.0.0.1"
    );
    // Guest egress leaves behind the pod's address.
    let node4: IpAddr = "192.168.77.1".parse().unwrap();
    let node6: IpAddr = "fd77::1".parse().unwrap();
    assert_eq!(
        connect(&guest.name, sa(node4, 7070)).unwrap(),
        "node 7070 from 192.168.77.2"
    );
    assert_eq!(
        connect(&guest.name, sa(node6, 7070)).unwrap(),
        "node 7070 from fd77::2"
    );

    // Protocols are honoured: UDP 5353 is listed, TCP 5353 and UDP 8080 are not.
    assert_eq!(
        udp(&node.name, sa(pod4, 5353)).unwrap(),
        "guest-udp 5353 from 192.168.77.1"
    );
    assert_eq!(
        udp(&node.name, sa(pod6, 5353)).unwrap(),
        "guest-udp 5353 from fd77::1"
    );
    assert!(
        udp(&node.name, sa(pod4, listed)).is_err(),
        "UDP 8080 must not reach the guest"
    );
    let e = connect(&node.name, sa(pod4, 5353)).unwrap_err();
    assert!(e.contains("refused"), "TCP 5353 must stay in the pod: {e}");

    // A neighbour that routes the guest's private subnet via the pod cannot bypass the port
    // list (without our forward guard it could: checked after teardown below).
    node.exec(&["ip", "route", "add", "10.0.2.0/24", "via", "192.168.77.2"]);
    node.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd10:0:2::/120",
        "via",
        "fd77::2",
    ]);
    let guest4: IpAddr = "10.0.2.2".parse().unwrap();
    let guest6: IpAddr = "fd10:0:2::2".parse().unwrap();
    for to in [
        sa(guest4, unlisted),
        sa(guest6, unlisted),
        sa(guest4, listed),
    ] {
        let e = connect(&node.name, to).unwrap_err();
        assert!(e.contains("refused"), "{to}: {e}");
    }

    // With no ports, everything reaches the guest, the unlisted port included.
    cfg.ports.clear();
    pod.nft().apply(&cfg).unwrap();
    assert_eq!(
        connect(&node.name, sa(pod4, unlisted)).unwrap(),
        "guest 9090 from 192.168.77.1"
    );
    assert_eq!(
        connect(&node.name, sa(pod6, unlisted)).unwrap(),
        "guest 9090 from fd77::1"
    );
    assert_eq!(
        connect(&pod.name, sa(lo4, unlisted)).unwrap(),
        "guest 9090 from 10.0.2.1"
    );

    // Istio: everything but Envoy's ports reaches the guest; Envoy's passthrough (from
    // 127.0.0.6 / ::6 to the pod IP) reaches the guest from the gateway.
    pod.exec(&["ip", "-6", "addr", "add", "::6/128", "dev", "lo"]);
    cfg.istio = true;
    pod.nft().apply(&cfg).unwrap();
    assert_eq!(
        connect(&node.name, sa(pod4, unlisted)).unwrap(),
        "guest 9090 from 192.168.77.1"
    );
    assert_eq!(
        connect(&node.name, sa(pod4, 15021)).unwrap(),
        "pod 15021 from 192.168.77.1"
    );
    assert_eq!(
        connect(&node.name, sa(pod6, 15021)).unwrap(),
        "pod 15021 from fd77::1"
    );
    assert_eq!(
        connect(&pod.name, sa(lo4, 15021)).unwrap(),
        "pod 15021 from 127.0.0.1"
    );
    let envoy4 = sa("127.0.0.6".parse().unwrap(), 0);
    let envoy6 = sa("::6".parse().unwrap(), 0);
    assert_eq!(
        connect_from(&pod.name, envoy4, sa(pod4, listed)).unwrap(),
        "guest 8080 from 10.0.2.1"
    );
    assert_eq!(
        connect_from(&pod.name, envoy6, sa(pod6, listed)).unwrap(),
        "guest 8080 from fd10:0:2::1"
    );
    // A sidecar's own NAT (iptables-nft `ip nat` at the standard priority, capturing inbound
    // 8080 into Envoy's 15006) gets first pick: our chains run at dstnat + 10.
    pod.exec(&[
        "nft",
        "add table ip nat; add chain ip nat PREROUTING { type nat hook prerouting priority dstnat; }; add rule ip nat PREROUTING iifname eth0 tcp dport 8080 redirect to :15006",
    ]);
    assert_eq!(
        connect(&node.name, sa(pod4, listed)).unwrap(),
        "pod 15006 from 192.168.77.1"
    );
    assert_eq!(
        connect(&node.name, sa(pod4, unlisted)).unwrap(),
        "guest 9090 from 192.168.77.1"
    );
    pod.exec(&["nft", "delete table ip nat"]);

    // Teardown: the pod answers for itself again, and the ruleset is as before.
    pod.nft().teardown().unwrap();
    assert_eq!(
        connect(&node.name, sa(pod4, unlisted)).unwrap(),
        "pod 9090 from 192.168.77.1"
    );
    assert_eq!(pod.list(), before);
}
