//! Bytes → DHCPv6 decode → `Prepared6::handle` → reply → dhcproto decode; and the same bytes
//! through the router-solicitation parser.
//!
//! The first byte picks the source address (the VM's EUI-64 link-local or another one) and
//! whether a valid Client ID with the VM's DUID-LL is spliced in after the 4-byte header, so
//! that the fuzzer reaches the answering paths quickly.
#![no_main]

use std::net::Ipv6Addr;
use std::sync::OnceLock;

use dhcproto::{Decodable, Decoder};
use launcher::dhcp::ra;
use launcher::dhcp::v6::{self, Prepared6, V6Config, V6Outcome};
use libfuzzer_sys::fuzz_target;

const VM: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];

static P: OnceLock<Prepared6> = OnceLock::new();

fn prepared() -> &'static Prepared6 {
    P.get_or_init(|| {
        Prepared6::new(&V6Config {
            interface: "k6t-eth0".into(),
            server_mac: [0x02, 0, 0, 0, 0, 0],
            client_mac: VM,
            client_ip: "fd10:0:2::2".parse().unwrap(),
            dns: vec!["fd00::a".parse().unwrap()],
            search: vec!["svc.cluster.local".into(), "cluster.local".into()],
            lifetime_secs: v6::INFINITY,
        })
        .unwrap()
        .0
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = ra::parse_rs(data);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let src = if mode & 1 == 0 {
        v6::eui64_link_local(&VM)
    } else {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x1234)
    };
    let mut packet = rest.to_vec();
    if mode & 2 != 0 && packet.len() >= 4 {
        let mut cid = vec![0, 1, 0, 10];
        cid.extend_from_slice(&v6::duid_ll(&VM));
        packet.splice(4..4, cid);
    }
    if let V6Outcome::Reply(r) = prepared().handle(src, &packet) {
        let m = dhcproto::v6::Message::decode(&mut Decoder::new(&r.bytes))
            .expect("our reply must decode");
        assert_eq!(&r.bytes[1..4], &packet[1..4], "xid must be echoed");
        assert!(matches!(
            m.msg_type(),
            dhcproto::v6::MessageType::Advertise | dhcproto::v6::MessageType::Reply
        ));
    }
});
