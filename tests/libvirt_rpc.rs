//! The launcher's own libvirt client (`launcher::supervise::rpc`) against a real libvirtd 11.3:
//! a daemon started by this test inside a sandbox pod (scripts/sandbox.sh, private /run,
//! /etc/libvirt, /var/lib/libvirt …) with its socket in a directory of this test, reached from
//! the test process. No guest is booted: define, state, events of define/undefine, libvirt's
//! own error text and code, and the connection's end when the daemon is killed.
//!
//! Needs root (panics otherwise).

mod support;

use std::time::Duration;

use launcher::supervise::rpc::{consts, Client, Event, RpcError};
use support::libvirtd::PodLibvirtd;
use support::{require_root, Sandbox, Style};
use tokio::sync::mpsc;

const DOMAIN: &str = "runperf-rpc-test";

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
        .expect("the event channel is open")
}

#[test]
fn the_rpc_client_defines_sees_events_and_errors_and_notices_a_dead_daemon() {
    require_root();
    let pod = Sandbox::create(Style::Flannel);
    let dir = tempfile::Builder::new()
        .prefix("runperf-rpc-")
        .tempdir()
        .unwrap();
    let mut daemon = PodLibvirtd::new(&pod, dir.path().to_path_buf(), "libvirtd in the pod");
    daemon.start(&pod);
    let sock = daemon.socket();
    let uri = format!("qemu+unix:///system?socket={}", sock.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Client::open(&uri, tx)
            .await
            .expect("opening the connection");
        c.register_events().await.expect("registering callbacks");

        // libvirt's own error for an unknown domain: its code and text.
        let e = c.lookup_by_name(DOMAIN).await.unwrap_err();
        assert_eq!(e.code(), Some(consts::ERR_NO_DOMAIN), "{e}");
        assert!(e.to_string().contains("Domain not found"), "{e}");
        // A broken XML: libvirt's XML error (VIR_ERR_XML_DETAIL = 35), as libvirt words it.
        let e = c.define_xml("<domain type='qemu'>", 0).await.unwrap_err();
        assert_eq!(e.code(), Some(35), "{e:?}");
        assert!(e.to_string().contains("Premature end of data"), "{e}");

        let caps = c.domain_capabilities().await.expect("domain capabilities");
        assert!(caps.contains("<domainCapabilities>"), "{caps}");

        let xml = format!(
            "<domain type='qemu'><name>{DOMAIN}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>"
        );
        let d = c.define_xml(&xml, 0).await.expect("define");
        assert_eq!(d.name, DOMAIN);
        assert_eq!(
            next_event(&mut rx).await,
            Event::Lifecycle {
                domain: DOMAIN.into(),
                event: consts::EVENT_DEFINED,
                detail: 0 // VIR_DOMAIN_EVENT_DEFINED_ADDED
            }
        );
        let found = c.lookup_by_name(DOMAIN).await.expect("lookup");
        assert_eq!(found.uuid, d.uuid);
        assert!(!c.is_active(&found).await.unwrap());
        // VIR_DOMAIN_SHUTOFF = 5.
        assert_eq!(c.get_state(&found).await.unwrap().0, 5);
        // Shutting down a domain that does not run is libvirt's "not running" error.
        let e = c.shutdown(&found, 0).await.unwrap_err();
        assert!(e.to_string().contains("not running"), "{e}");
        c.undefine(&found, consts::UNDEFINE_KEEP_NVRAM)
            .await
            .expect("undefine");
        assert_eq!(
            next_event(&mut rx).await,
            Event::Lifecycle {
                domain: DOMAIN.into(),
                event: consts::EVENT_UNDEFINED,
                detail: 0
            }
        );

        // Keepalive is not needed: libvirtd (keepalive_interval 5 s by default) pings only
        // clients that asked for it, which this one never does. 12 s idle: no PING, and the
        // connection still answers.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(c.pings_answered(), 0, "libvirtd sent keepalive PINGs");
        assert_eq!(
            c.get_state(&found).await.unwrap_err().code(),
            Some(consts::ERR_NO_DOMAIN)
        );

        // The daemon dies: pending and later calls fail, the connection's end is an event.
        daemon.kill9();
        assert_eq!(
            next_event(&mut rx).await,
            Event::ConnectionClosed {
                reason: consts::CLOSE_REASON_EOF
            }
        );
        assert!(c.is_dead());
        assert!(matches!(
            c.lookup_by_name(DOMAIN).await,
            Err(RpcError::Closed)
        ));
    });
    drop(daemon);
}
