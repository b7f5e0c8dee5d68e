//! tcp_rr: TCP request/response latency for `scripts/bench-bindings.sh` (finer than ping's
//! millisecond-rounded output, and it crosses masquerade's port forward, which ping cannot).
//!
//! usage: tcp_rr server ADDR:PORT
//!        tcp_rr client ADDR:PORT [--count N] [--warmup N] [--size BYTES]
//!
//! The server echoes every byte on every connection. The client sends `--size` bytes
//! (default 1), waits for them to come back, `--count` times (default 2000) after `--warmup`
//! untimed rounds (default 100), with TCP_NODELAY, and prints one line:
//! `count=N mean_us=… p50_us=… p90_us=… p99_us=…`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};

fn serve(addr: &str) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    for conn in l.incoming() {
        let mut c = conn?;
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut buf = [0u8; 65536];
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if c.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

fn client(addr: &str, count: usize, warmup: usize, size: usize) -> anyhow::Result<()> {
    let mut c = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    c.set_nodelay(true)?;
    let req = vec![0x5au8; size];
    let mut resp = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let t = Instant::now();
        c.write_all(&req)?;
        c.read_exact(&mut resp)?;
        if i >= warmup {
            samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    println!(
        "count={count} mean_us={mean:.1} p50_us={:.1} p90_us={:.1} p99_us={:.1}",
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: tcp_rr server ADDR:PORT | tcp_rr client ADDR:PORT [--count N] [--warmup N] [--size BYTES]";
    match args.first().map(String::as_str) {
        Some("server") if args.len() == 2 => serve(&args[1]),
        Some("client") if args.len() >= 2 => {
            let (mut count, mut warmup, mut size) = (2000usize, 100usize, 1usize);
            let mut it = args[2..].iter();
            while let Some(a) = it.next() {
                let v: usize = it
                    .next()
                    .with_context(|| format!("{a} needs a value"))?
                    .parse()
                    .with_context(|| format!("{a} needs a number"))?;
                match a.as_str() {
                    "--count" if v > 0 => count = v,
                    "--warmup" => warmup = v,
                    "--size" if v > 0 => size = v,
                    _ => bail!("bad argument {a} {v}; {usage}"),
                }
            }
            client(&args[1], count, warmup, size)
        }
        _ => bail!("{usage}"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp_rr: {e:#}");
            ExitCode::FAILURE
        }
    }
}
