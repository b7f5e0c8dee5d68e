//! Bytes → DHCPv4 request decode → `Prepared::handle` → reply encode → dhcproto decode.
//!
//! The first byte picks a mode, so that the fuzzer reaches the deep paths without a corpus:
//! - 0: the bytes are the whole UDP payload (anything at all);
//! - 1: a valid BOOTREQUEST header from the VM's MAC is prepended, the bytes are the options;
//! - 2: like 1, but the configuration is also built from the bytes (search domains, routes,
//!   private options, MTU), so the option encoders and the size fitting are fuzzed too.
//!
//! Invariants checked on every reply: it decodes with dhcproto, it is a BOOTREPLY for the
//! request's xid and chaddr, it never exceeds the size limit, and it ends with the End option.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use dhcproto::{Decodable, Decoder};
use launcher::dhcp::v4::{Outcome, Prepared, HEADER_LEN, MAGIC};
use launcher::dhcp::{V4Config, V4Route};
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];

fn base() -> V4Config {
    V4Config {
        interface: "k6t-eth0".into(),
        server_ip: Ipv4Addr::new(169, 254, 75, 10),
        client_mac: MAC,
        client_ip: Ipv4Addr::new(10, 244, 1, 5),
        prefix_len: 24,
        router: Some(Ipv4Addr::new(10, 244, 1, 1)),
        routes: vec![
            V4Route {
                dest: Ipv4Addr::new(10, 96, 0, 0),
                prefix_len: 12,
                gateway: Ipv4Addr::new(10, 244, 1, 1),
            },
            V4Route {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Ipv4Addr::new(10, 244, 1, 1),
            },
        ],
        dns: vec![Ipv4Addr::new(10, 96, 0, 10)],
        search: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        domain: Some("default.svc.cluster.local".into()),
        hostname: Some("vm".into()),
        mtu: 1450,
        lease_secs: u32::MAX,
        ntp: vec![Ipv4Addr::new(10, 0, 0, 1)],
        tftp_server: Some("10.0.0.7".into()),
        boot_file: Some("pxelinux.0".into()),
        private: vec![(240, vec![1, 2, 3])],
    }
}

fn header() -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN];
    h[0] = 1;
    h[1] = 1;
    h[2] = 6;
    h[4..8].copy_from_slice(&[1, 2, 3, 4]);
    h[28..34].copy_from_slice(&MAC);
    h.extend_from_slice(&MAGIC);
    h
}

/// A configuration drawn from the bytes; returns it and the unused rest.
fn config_from(data: &[u8]) -> (V4Config, &[u8]) {
    let mut c = base();
    let Some((&n, rest)) = data.split_first() else {
        return (c, data);
    };
    let take = usize::from(n).min(rest.len());
    let (spec, rest) = rest.split_at(take);
    c.mtu = 576 + u16::from(spec.first().copied().unwrap_or(0)) * 4;
    c.prefix_len = spec.get(1).copied().unwrap_or(24) % 33;
    // Search domains: the spec split on 0xff, lossy UTF-8 (invalid names must be skipped).
    c.search = spec
        .split(|b| *b == 0xff)
        .skip(1)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    // Routes: 6-byte chunks (dest, prefix, gateway's last octet).
    c.routes = spec
        .chunks_exact(6)
        .map(|ch| V4Route {
            dest: Ipv4Addr::new(ch[0], ch[1], ch[2], ch[3]),
            prefix_len: ch[4] % 34,
            gateway: if ch[5] % 3 == 0 {
                Ipv4Addr::UNSPECIFIED
            } else {
                Ipv4Addr::new(169, 254, 1, ch[5])
            },
        })
        .collect();
    c.private = spec
        .chunks(7)
        .map(|ch| (ch[0], ch[1..].to_vec()))
        .collect();
    (c, rest)
}

static BASE: OnceLock<Prepared> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let owned;
    let (prepared, packet): (&Prepared, Vec<u8>) = match mode % 3 {
        0 => (
            BASE.get_or_init(|| Prepared::new(&base()).unwrap().0),
            rest.to_vec(),
        ),
        1 => {
            let mut p = header();
            p.extend_from_slice(rest);
            (BASE.get_or_init(|| Prepared::new(&base()).unwrap().0), p)
        }
        _ => {
            let (cfg, rest) = config_from(rest);
            owned = match Prepared::new(&cfg) {
                Ok((p, _)) => p,
                Err(_) => return,
            };
            let mut p = header();
            p.extend_from_slice(rest);
            (&owned, p)
        }
    };
    if let Outcome::Reply(r) = prepared.handle(&packet) {
        assert!(
            r.bytes.len() <= r.limit,
            "reply of {} bytes over its limit {}",
            r.bytes.len(),
            r.limit
        );
        let m = dhcproto::v4::Message::decode(&mut Decoder::new(&r.bytes))
            .expect("our reply must decode");
        assert_eq!(m.opcode(), dhcproto::v4::Opcode::BootReply);
        assert_eq!(m.xid(), u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]));
        assert_eq!(m.chaddr(), &packet[28..34]);
        assert!(m.opts().msg_type().is_some());
        assert!(r.bytes[HEADER_LEN + 4..].contains(&255));
    }
});
