//! `launcher network setup --serve` as a child of a test (net_bridge.rs, net_masquerade.rs,
//! net_l2.rs): its stderr log lines, its result JSON on stdout, SIGTERM and cleanup.
//!
//! Part of `support` (`support::serve`); test files that do not use `support` include it alone
//! with `#[path = "support/serve.rs"] mod serve;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Reads `child`'s stderr (piped) line by line in a thread; the receiver yields the lines.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, logs) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    logs
}

/// Reads the NetResult JSON that comes first on `child`'s stdout (piped; pretty-printed, ends
/// with a lone "}"). When stdout ends first, waits `settle` and panics with the log lines.
pub fn read_result(
    child: &mut Child,
    logs: &mpsc::Receiver<String>,
    settle: Duration,
) -> serde_json::Value {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            std::thread::sleep(settle);
            let logs: Vec<String> = logs.try_iter().collect();
            panic!("launcher exited before printing its result: {logs:#?}");
        }
        text.push_str(&line);
        if line == "}\n" {
            break;
        }
    }
    serde_json::from_str(&text).unwrap()
}

/// SIGTERM to `child`; asserts it exits within 20 s ("launcher ignored SIGTERM") and prints
/// the pending log lines when the exit code is not 0. Returns the exit code (-1 for a signal).
pub fn terminate(child: &mut Child, logs: &mpsc::Receiver<String>) -> i32 {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            if st.code() != Some(0) {
                let logs: Vec<String> = logs.try_iter().collect();
                eprintln!("launcher logs: {logs:#?}");
            }
            return st.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "launcher ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills and reaps `child` unless it has exited (for `Drop`).
pub fn kill_unless_exited(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
