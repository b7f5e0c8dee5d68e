//! Real DHCPv4 clients for the tests (dhcp.rs, net_bridge.rs, net_masquerade.rs, net_l2.rs):
//! busybox `udhcpc` and ISC `dhclient`, each with a script that dumps its environment to a file
//! per event.
//!
//! Part of `support` (`support::dhcp_client`); test files that do not use `support` include it
//! alone with `#[path = "support/dhcp_client.rs"] mod dhcp_client;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The options every udhcpc run of the DHCP server tests asks for.
pub const UDHCPC_ALL_OPTIONS: &[&str] = &["search", "staticroutes", "mtu", "hostname", "domain"];

/// Parses `KEY=value` lines (values may be quoted by dhclient's `set` output); empty when the
/// file cannot be read.
pub fn env_file(p: &Path) -> HashMap<String, String> {
    parse_env(&std::fs::read_to_string(p).unwrap_or_default())
}

/// Parses `KEY=value` lines, unquoting `'value'`.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// Writes an executable script `p`.
pub fn write_script(p: &Path, body: &str) {
    std::fs::write(p, body).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Writes the udhcpc script `<dir>/<tag>.sh`, which writes its environment for each event to
/// `<dir>/<tag>.<event>.env`; returns its path.
pub fn udhcpc_script(dir: &Path, tag: &str) -> PathBuf {
    let script = dir.join(format!("{tag}.sh"));
    write_script(
        &script,
        &format!("#!/bin/sh\nenv > {}.$1.env\n", dir.join(tag).display()),
    );
    script
}

/// The environment of the udhcpc `bound` event for `tag` (see [`udhcpc_script`]).
pub fn udhcpc_bound(dir: &Path, tag: &str) -> HashMap<String, String> {
    env_file(&dir.join(format!("{tag}.bound.env")))
}

/// `busybox udhcpc -f -q -n -t <tries> -T <timeout> -i <iface> -s <script> -O <option>…`
/// (foreground, quit after the lease, fail when there is none).
pub fn udhcpc_args(
    tries: u32,
    timeout: u32,
    iface: &str,
    script: &Path,
    options: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = ["busybox", "udhcpc", "-f", "-q", "-n", "-t"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(tries.to_string());
    args.push("-T".into());
    args.push(timeout.to_string());
    args.extend(["-i".to_string(), iface.to_string(), "-s".to_string()]);
    args.push(script.display().to_string());
    for o in options {
        args.push("-O".into());
        args.push(o.to_string());
    }
    args
}

/// Runs ISC dhclient (one attempt, foreground, `-cf/-lf/-pf/-sf` files `dhclient.*` in `dir`)
/// on eth0 by appending its arguments to `wrapper` (which enters the client's namespace), until
/// its script saw BOUND or `secs` passed; then kills it. Returns the env of the BOUND event.
pub fn dhclient(mut wrapper: Command, dir: &Path, secs: u64) -> Option<HashMap<String, String>> {
    let conf = dir.join("dhclient.conf");
    std::fs::write(
        &conf,
        "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\n\
         request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers,\n\
         domain-search, host-name, interface-mtu, rfc3442-classless-static-routes;\n",
    )
    .unwrap();
    let envs = dir.join("dhclient");
    let script = dir.join("dhclient.sh");
    write_script(
        &script,
        &format!("#!/bin/sh\nenv > {}.$reason.env\n", envs.display()),
    );
    let mut child = wrapper
        .args(["dhclient", "-d", "-1", "-v", "-cf"])
        .arg(&conf)
        .arg("-lf")
        .arg(dir.join("dhclient.leases"))
        .arg("-pf")
        .arg(dir.join("dhclient.pid"))
        .arg("-sf")
        .arg(&script)
        .arg("eth0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running dhclient");
    let bound = dir.join("dhclient.BOUND.env");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut result = None;
    while Instant::now() < deadline {
        if bound.exists() {
            std::thread::sleep(Duration::from_millis(100));
            result = Some(env_file(&bound));
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    result
}
