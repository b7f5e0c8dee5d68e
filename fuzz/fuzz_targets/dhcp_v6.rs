//! The IPv6 servers' whole receive path, without sockets: bytes → `server6::decide_dhcp6`
//! (dhclient-style source address, dhcproto decode, client check, `Prepared6` answer) → the
//! reply must decode with dhcproto, echo the transaction id and go back to the sender; and the
//! same bytes through `server6::decide_rs` (the router-solicitation path: type, hop limit,
//! options, link-local learning).
//!
//! The first byte picks the source address (the VM's EUI-64 link-local, another one, or another
//! one that the RS path "learned" as the VM's), whether a valid Client ID with the VM's DUID-LL
//! is spliced in after the 4-byte header (so that the fuzzer reaches the answering paths
//! quickly), and the hop limit the RS path sees.
#![no_main]

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::OnceLock;

use dhcproto::{Decodable, Decoder};
use launcher::dhcp::server6::{self, Action6, RsDecision};
use launcher::dhcp::v6::{self, Prepared6, V6Config};
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
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let other = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5eed, 0, 0, 0x1234);
    let (src, learned) = match mode & 3 {
        0 => (v6::eui64_link_local(&VM), None),
        1 => (other, None),
        2 => (other, Some(other)),
        _ => (Ipv6Addr::UNSPECIFIED, None),
    };
    let hop = if mode & 8 != 0 {
        Some(255)
    } else {
        Some(i32::from(mode))
    };

    // The router-solicitation path.
    match server6::decide_rs(&VM, src, hop, rest) {
        RsDecision::Answer { vm_ll } => {
            assert_eq!(rest[0], 133);
            assert_eq!(hop, Some(255));
            if let Some(ll) = vm_ll {
                assert_eq!(ll, src, "only the sender's address is learned");
            }
        }
        RsDecision::Ignore(_) => {}
    }

    // The DHCPv6 path.
    let mut packet = rest.to_vec();
    if mode & 4 != 0 && packet.len() >= 4 {
        let mut cid = vec![0, 1, 0, 10];
        cid.extend_from_slice(&v6::duid_ll(&VM));
        packet.splice(4..4, cid);
    }
    let from = SocketAddrV6::new(src, 546, 0, 3);
    if let Action6::Reply { dest, reply } =
        server6::decide_dhcp6(prepared(), from, learned, &packet)
    {
        assert_eq!(dest, from, "replies go back to the sender");
        let m = dhcproto::v6::Message::decode(&mut Decoder::new(&reply.bytes))
            .expect("our reply must decode");
        assert_eq!(&reply.bytes[1..4], &packet[1..4], "xid must be echoed");
        assert!(matches!(
            m.msg_type(),
            dhcproto::v6::MessageType::Advertise | dhcproto::v6::MessageType::Reply
        ));
    }
});
