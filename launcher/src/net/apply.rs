//! The generic engine: executes a plan's steps ("make it so", each idempotent) and undoes them
//! from the recorded state (collecting every error). Bindings never reach here directly: they
//! only produce [`Step`]s.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use nix::errno::Errno;
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkDummy, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use super::discover::{link_of, IfAddress, PodInterface, PodRoute};
use super::plan::{LinkRef, Step};
use super::state::RecordedState;
use super::{Mac, NetError};

/// Executes every step in order. `fault_after`: test-only fault injection (SIGKILL self after
/// that many steps; 0 = before the first).
pub async fn apply(
    h: &Handle,
    st: &RecordedState,
    fault_after: Option<usize>,
) -> Result<(), NetError> {
    let originals: BTreeSet<u32> = st.pod.interfaces.iter().map(|i| i.index).collect();
    maybe_fault(fault_after, 0);
    // The nft transaction runs in a child process; it overlaps the netlink steps and is
    // joined before any link joins a bridge (the first moment DHCP could cross), and before
    // returning. With fault injection it is joined at once, so "after step N" stays exact.
    let mut pending: Option<PendingNft> = None;
    for (n, step) in st.plan.steps.iter().enumerate() {
        let t = std::time::Instant::now();
        let r = match step {
            Step::NftTable {
                family,
                name,
                ruleset,
            } => {
                let script =
                    format!("table {family} {name}\ndelete table {family} {name}\n{ruleset}");
                match spawn_nft(&step.describe(), &script) {
                    Ok(p) if fault_after.is_none() => {
                        if let Some(prev) = pending.replace(p) {
                            prev.finish()?;
                        }
                        Ok(())
                    }
                    Ok(p) => p.finish(),
                    Err(e) => Err(e),
                }
            }
            Step::SetMaster { .. } => match pending.take() {
                Some(p) => match p.finish() {
                    Ok(()) => run_step(h, step, &originals).await,
                    Err(e) => Err(e),
                },
                None => run_step(h, step, &originals).await,
            },
            _ => run_step(h, step, &originals).await,
        };
        if let Err(e) = r {
            if let Some(p) = pending.take() {
                let _ = p.finish();
            }
            return Err(e);
        }
        tracing::debug!(step = n + 1, op = %step.describe(), elapsed_us = t.elapsed().as_micros() as u64, "applied");
        maybe_fault(fault_after, n + 1);
    }
    if let Some(p) = pending.take() {
        p.finish()?;
    }
    Ok(())
}

fn maybe_fault(fault_after: Option<usize>, done: usize) {
    if fault_after == Some(done) {
        tracing::warn!(
            step = done,
            "{}={done}: killing myself (test-only fault injection)",
            super::FAULT_ENV
        );
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

async fn run_step(h: &Handle, step: &Step, originals: &BTreeSet<u32>) -> Result<(), NetError> {
    let what = step.describe();
    match step {
        Step::NftTable {
            family,
            name,
            ruleset,
        } => {
            // Creating then deleting the table first makes the replacement one atomic,
            // idempotent transaction whether or not the table exists.
            let script = format!("table {family} {name}\ndelete table {family} {name}\n{ruleset}");
            nft(&what, &script)
        }
        Step::CreateBridge { name, mac, mtu } => {
            match link_by_name(h, name).await? {
                Some(l) => {
                    if l.kind.as_deref() != Some("bridge") {
                        return Err(conflict(name, "exists and is not a bridge; remove it or rename the pod interface"));
                    }
                    ensure_mac_mtu(h, &l, *mac, *mtu, &what).await
                }
                None => {
                    let msg = LinkMessageBuilder::<LinkBridge>::new(name)
                        .address(mac.0.to_vec())
                        .mtu(*mtu)
                        .build();
                    h.link()
                        .add(msg)
                        .execute()
                        .await
                        .map_err(|e| NetError::netlink("creating bridge", q(name), e))
                }
            }
        }
        Step::CreateStandIn {
            name,
            peer,
            mac,
            mtu,
        } => match link_by_name(h, name).await? {
            Some(l) if originals.contains(&l.index) => Err(conflict(
                name,
                "is still the original pod interface; it must be renamed before its stand-in is created",
            )),
            Some(l) => ensure_mac_mtu(h, &l, *mac, *mtu, &what).await,
            None => create_stand_in(h, name, peer, *mac, *mtu).await,
        },
        Step::CreateTap {
            name,
            owner,
            queues,
        } => match link_by_name(h, name).await? {
            Some(l) if l.kind.as_deref() == Some("tun") => Ok(()),
            Some(_) => Err(conflict(name, "exists and is not a tap device")),
            None => {
                let uid = resolve_owner(owner)?;
                crate::sys::net::create_persistent_tap(&crate::sys::net::TapSpec {
                    name,
                    multi_queue: *queues > 1,
                    owner: Some(uid),
                })
                .map_err(|errno| NetError::Sys {
                    operation: "creating tap".into(),
                    object: q(name),
                    errno,
                })
            }
        },
        Step::SetSysctl { path, value } => set_sysctl(h, path, value).await,
        Step::LinkDown { link } => {
            let l = resolve(h, link).await?;
            if l.up {
                set(h, LinkUnspec::new_with_index(l.index).down(), &what).await?;
            }
            Ok(())
        }
        Step::LinkUp { link } => {
            let l = resolve(h, link).await?;
            if !l.up {
                set(h, LinkUnspec::new_with_index(l.index).up(), &what).await?;
            }
            Ok(())
        }
        Step::Rename { link, to } => {
            let l = resolve(h, link).await?;
            if &l.name == to {
                return Ok(());
            }
            if let Some(other) = link_by_name(h, to).await? {
                return Err(conflict(
                    to,
                    &format!("is already taken by index {}; cannot rename {link} to it", other.index),
                ));
            }
            set(h, LinkUnspec::new_with_index(l.index).name(to.clone()), &what).await
        }
        Step::SetMac { link, mac } => {
            let l = resolve(h, link).await?;
            if l.mac != *mac {
                set(
                    h,
                    LinkUnspec::new_with_index(l.index).address(mac.0.to_vec()),
                    &what,
                )
                .await?;
            }
            Ok(())
        }
        Step::SetMtu { link, mtu } => {
            let l = resolve(h, link).await?;
            if l.mtu != *mtu {
                set(h, LinkUnspec::new_with_index(l.index).mtu(*mtu), &what).await?;
            }
            Ok(())
        }
        Step::SetMaster { link, master } => {
            let l = resolve(h, link).await?;
            let m = resolve(h, &LinkRef::Created(master.clone())).await?;
            if l.master != Some(m.index) {
                set(
                    h,
                    LinkUnspec::new_with_index(l.index).controller(m.index),
                    &what,
                )
                .await?;
            }
            Ok(())
        }
        Step::SetLearning { link, learning } => {
            let l = resolve(h, link).await?;
            let msg = LinkBridgePort::new(l.index).learning(*learning).build();
            h.link()
                .set_port(msg)
                .execute()
                .await
                .map_err(|e| NetError::netlink(what.clone(), "", e).trim())
        }
        Step::AddAddresses { link, addresses } => {
            let l = resolve(h, link).await?;
            for a in addresses {
                add_address(h, l.index, a).await.map_err(|e| {
                    NetError::netlink(format!("adding {}/{} to", a.address, a.prefix_len), link.to_string(), e)
                })?;
            }
            Ok(())
        }
        Step::RemoveAddresses { link, addresses } => {
            let l = resolve(h, link).await?;
            let wanted: Vec<IpAddr> = addresses.iter().map(|a| a.address).collect();
            for m in addresses_of(h, l.index).await? {
                if let Some(ip) = msg_ip(&m) {
                    if wanted.contains(&ip) {
                        if let Err(e) = h.address().del(m).execute().await {
                            if !matches!(super::errno_of(&e), Some(Errno::EADDRNOTAVAIL | Errno::ENOENT)) {
                                return Err(NetError::netlink(format!("removing {ip} from"), link.to_string(), e));
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        Step::MasqueradeNat { config } => super::binding::masquerade::apply_nat(config),
        Step::CreateMacvlan {
            name,
            lower,
            mac,
            mtu,
            tap,
        } => {
            let kind = if *tap { "macvtap" } else { "macvlan" };
            match link_by_name(h, name).await? {
                Some(l) if originals.contains(&l.index) => Err(conflict(
                    name,
                    "is an original pod interface; cannot create a macvlan with its name",
                )),
                Some(l) if l.kind.as_deref() == Some(kind) => {
                    ensure_mac_mtu(h, &l, *mac, *mtu, &what).await
                }
                Some(_) => Err(conflict(name, &format!("exists and is not a {kind}"))),
                None => {
                    use netlink_packet_route::link::{MacVlanMode, MacVtapMode};
                    let low = resolve(h, lower).await?;
                    let msg = if *tap {
                        LinkMessageBuilder::<rtnetlink::LinkMacVtap>::new(name)
                            .link(low.index)
                            .mode(MacVtapMode::Bridge)
                            .address(mac.0.to_vec())
                            .mtu(*mtu)
                            .build()
                    } else {
                        LinkMessageBuilder::<rtnetlink::LinkMacVlan>::new(name)
                            .link(low.index)
                            .mode(MacVlanMode::Bridge)
                            .address(mac.0.to_vec())
                            .mtu(*mtu)
                            .build()
                    };
                    h.link()
                        .add(msg)
                        .execute()
                        .await
                        .map_err(|e| NetError::netlink(format!("creating {kind}"), q(name), e))
                }
            }
        }
        Step::HypervisorRootQdisc { .. } => Ok(()),
        Step::TcIngress { link, filters } => {
            let l = resolve(h, link).await?;
            let mut names: Vec<(LinkRef, String)> = Vec::new();
            for f in filters {
                if let super::plan::TcFilter::RedirectTo { to } = f {
                    names.push((to.clone(), resolve(h, to).await?.name));
                }
            }
            let cmds = super::binding::tc_redirect::tc_ingress_commands(&l.name, filters, |r| {
                names
                    .iter()
                    .find(|(k, _)| k == r)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default()
            });
            for c in cmds {
                tc(&what, &c, false)?;
            }
            Ok(())
        }
        Step::FlushRoutes { link } => {
            let l = resolve(h, link).await?;
            for r in routes_of(h, l.index).await? {
                if let Err(e) = h.route().del(r).execute().await {
                    if super::errno_of(&e) != Some(Errno::ESRCH) {
                        return Err(NetError::netlink("removing a route of", link.to_string(), e));
                    }
                }
            }
            Ok(())
        }
    }
}

impl NetError {
    /// Drops an empty object from a netlink error (when the operation already names it).
    fn trim(self) -> Self {
        match self {
            NetError::Netlink {
                operation,
                object,
                errno,
                detail,
            } if object.is_empty() => NetError::Netlink {
                operation,
                object: String::new(),
                errno,
                detail,
            },
            other => other,
        }
    }
}

/// What undoing one step means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    DeleteTable {
        family: String,
        name: String,
    },
    DeleteLink {
        name: String,
        tap_queues: Option<u32>,
    },
    RestoreSysctl {
        path: String,
    },
    RestorePod {
        index: u32,
    },
    DeleteMasqueradeNat,
    DeleteClsact {
        link: LinkRef,
    },
    ResetRootQdisc {
        link: LinkRef,
    },
}

fn undo_of(step: &Step) -> Option<Undo> {
    let pod = |l: &LinkRef| match l {
        LinkRef::Pod { index, .. } => Some(Undo::RestorePod { index: *index }),
        LinkRef::Created(_) => None,
    };
    match step {
        Step::NftTable { family, name, .. } => Some(Undo::DeleteTable {
            family: family.clone(),
            name: name.clone(),
        }),
        Step::CreateBridge { name, .. }
        | Step::CreateStandIn { name, .. }
        | Step::CreateMacvlan { name, .. } => Some(Undo::DeleteLink {
            name: name.clone(),
            tap_queues: None,
        }),
        Step::CreateTap { name, queues, .. } => Some(Undo::DeleteLink {
            name: name.clone(),
            tap_queues: Some(*queues),
        }),
        Step::SetSysctl { path, .. } => Some(Undo::RestoreSysctl { path: path.clone() }),
        Step::MasqueradeNat { .. } => Some(Undo::DeleteMasqueradeNat),
        Step::LinkDown { link }
        | Step::LinkUp { link }
        | Step::Rename { link, .. }
        | Step::SetMac { link, .. }
        | Step::SetMtu { link, .. }
        | Step::SetMaster { link, .. }
        | Step::SetLearning { link, .. }
        | Step::AddAddresses { link, .. }
        | Step::RemoveAddresses { link, .. }
        | Step::FlushRoutes { link } => pod(link),
        Step::TcIngress { link, .. } => Some(Undo::DeleteClsact { link: link.clone() }),
        Step::HypervisorRootQdisc { link } => Some(Undo::ResetRootQdisc { link: link.clone() }),
    }
}

/// The undo actions, in reverse order of the first step that needs each.
fn undo_list(steps: &[Step]) -> Vec<Undo> {
    let mut out: Vec<Undo> = Vec::new();
    for s in steps {
        if let Some(u) = undo_of(s) {
            if !out.contains(&u) {
                out.push(u);
            }
        }
    }
    out.reverse();
    out
}

/// Restores the pod to the recorded original state, whatever part of the plan ran. Never
/// stops at the first error: every error is returned.
pub async fn undo(h: &Handle, st: &RecordedState) -> Vec<NetError> {
    let originals: BTreeSet<u32> = st.pod.interfaces.iter().map(|i| i.index).collect();
    let mut errors = Vec::new();
    for u in undo_list(&st.plan.steps) {
        match u {
            Undo::DeleteTable { family, name } => {
                let script = format!("table {family} {name}\ndelete table {family} {name}\n");
                if let Err(e) = nft(
                    &format!("deleting nftables table \"{family} {name}\""),
                    &script,
                ) {
                    errors.push(e);
                }
            }
            Undo::DeleteLink { name, tap_queues } => {
                if let Err(e) = delete_link(h, &name, tap_queues, &originals).await {
                    errors.push(e);
                }
            }
            Undo::RestoreSysctl { path } => {
                if let Some(v) = st.sysctls.get(&path) {
                    if let Err(e) = set_sysctl(h, &path, v).await {
                        errors.push(e);
                    }
                }
            }
            Undo::DeleteMasqueradeNat => {
                if let Err(e) = super::binding::masquerade::teardown_nat() {
                    errors.push(e);
                }
            }
            Undo::DeleteClsact { link } => {
                let found = match &link {
                    LinkRef::Pod { index, .. } => link_by_index(h, *index).await,
                    LinkRef::Created(name) => link_by_name(h, name).await,
                };
                match found {
                    Ok(Some(l)) => {
                        let args =
                            ["qdisc", "del", "dev", l.name.as_str(), "clsact"].map(String::from);
                        if let Err(e) =
                            tc(&format!("deleting the clsact qdisc of {link}"), &args, true)
                        {
                            errors.push(e);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
            Undo::ResetRootQdisc { link } => {
                let found = match &link {
                    LinkRef::Pod { index, .. } => link_by_index(h, *index).await,
                    LinkRef::Created(name) => link_by_name(h, name).await,
                };
                match found {
                    Ok(Some(l)) => {
                        let args =
                            ["qdisc", "del", "dev", l.name.as_str(), "root"].map(String::from);
                        if let Err(e) =
                            tc(&format!("resetting the root qdisc of {link}"), &args, true)
                        {
                            errors.push(e);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
            Undo::RestorePod { index } => match st.pod.interfaces.iter().find(|i| i.index == index)
            {
                Some(orig) => restore_pod(h, orig, &mut errors).await,
                None => errors.push(NetError::Other(format!(
                    "the recorded state has no pod interface with index {index}"
                ))),
            },
        }
    }
    errors
}

async fn delete_link(
    h: &Handle,
    name: &str,
    tap_queues: Option<u32>,
    originals: &BTreeSet<u32>,
) -> Result<(), NetError> {
    let Some(l) = link_by_name(h, name).await? else {
        return Ok(());
    };
    if originals.contains(&l.index) {
        // The name is held by the original pod interface again: nothing of ours to delete.
        return Ok(());
    }
    match h.link().del(l.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if super::errno_of(&e) == Some(Errno::ENODEV) => Ok(()),
        Err(e) => match tap_queues {
            Some(q) if super::errno_of(&e) == Some(Errno::EOPNOTSUPP) => {
                crate::sys::net::delete_persistent_tap(name, q > 1).map_err(|errno| NetError::Sys {
                    operation: "deleting tap".into(),
                    object: self::q(name),
                    errno,
                })
            }
            _ => Err(NetError::netlink("deleting", self::q(name), e)),
        },
    }
}

/// Puts an original pod interface back: name, MAC, MTU, no master, addresses (with their
/// flags), up state, and every non-kernel route.
async fn restore_pod(h: &Handle, orig: &PodInterface, errors: &mut Vec<NetError>) {
    let obj = format!("pod interface {:?} (index {})", orig.name, orig.index);
    let cur = match link_by_index(h, orig.index).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            errors.push(NetError::Conflict {
                object: obj,
                message: "is gone; it cannot be restored".into(),
            });
            return;
        }
        Err(e) => {
            errors.push(e);
            return;
        }
    };
    let mut step = |r: Result<(), NetError>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    if cur.up {
        step(
            set(
                h,
                LinkUnspec::new_with_index(orig.index).down(),
                &format!("setting {obj} down"),
            )
            .await,
        );
    }
    if cur.master.is_some() {
        step(
            set(
                h,
                LinkUnspec::new_with_index(orig.index).nocontroller(),
                &format!("detaching {obj} from its bridge"),
            )
            .await,
        );
    }
    if cur.name != orig.name {
        let r = match link_by_name(h, &orig.name).await {
            Ok(Some(other)) => Err(conflict(
                &orig.name,
                &format!(
                    "is still taken by index {}; cannot rename {obj} back",
                    other.index
                ),
            )),
            Ok(None) => {
                set(
                    h,
                    LinkUnspec::new_with_index(orig.index).name(orig.name.clone()),
                    &format!("renaming {obj} back"),
                )
                .await
            }
            Err(e) => Err(e),
        };
        step(r);
    }
    if cur.mac != orig.mac {
        step(
            set(
                h,
                LinkUnspec::new_with_index(orig.index).address(orig.mac.0.to_vec()),
                &format!("restoring the MAC of {obj}"),
            )
            .await,
        );
    }
    if cur.mtu != orig.mtu {
        step(
            set(
                h,
                LinkUnspec::new_with_index(orig.index).mtu(orig.mtu),
                &format!("restoring the MTU of {obj}"),
            )
            .await,
        );
    }
    // Addresses: exactly the original identity addresses.
    let wanted: Vec<&IfAddress> = orig.identity_addresses().collect();
    match addresses_of(h, orig.index).await {
        Ok(current) => {
            let mut present = Vec::new();
            for m in current {
                let Some(ip) = msg_ip(&m) else { continue };
                let ll = IfAddress {
                    address: ip,
                    prefix_len: m.header.prefix_len,
                    flags: 0,
                    broadcast: None,
                }
                .is_ipv6_link_local();
                if ll {
                    continue;
                }
                if wanted
                    .iter()
                    .any(|w| w.address == ip && w.prefix_len == m.header.prefix_len)
                {
                    present.push(ip);
                } else if let Err(e) = h.address().del(m).execute().await {
                    step(Err(NetError::netlink(
                        format!("removing {ip} from"),
                        obj.clone(),
                        e,
                    )));
                }
            }
            for w in &wanted {
                if !present.contains(&w.address) {
                    step(add_address(h, orig.index, w).await.map_err(|e| {
                        NetError::netlink(
                            format!("restoring {}/{} on", w.address, w.prefix_len),
                            obj.clone(),
                            e,
                        )
                    }));
                }
            }
        }
        Err(e) => step(Err(e)),
    }
    if orig.up {
        step(
            set(
                h,
                LinkUnspec::new_with_index(orig.index).up(),
                &format!("setting {obj} up"),
            )
            .await,
        );
    }
    if orig.up {
        wait_running(h, orig.index).await;
    }
    // Routes without a gateway (on-link, e.g. Calico's 169.254.1.1) first: gateways need them.
    let mut routes: Vec<&PodRoute> = orig.routes.iter().filter(|r| !r.is_kernel()).collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    for r in routes {
        step(add_route(h, orig.index, r).await.map_err(|e| {
            NetError::netlink(
                format!(
                    "restoring route {}/{} via {:?} on",
                    r.destination, r.prefix_len, r.gateway
                ),
                obj.clone(),
                e,
            )
        }));
    }
}

/// Waits (at most 1 s) until a link that was set up reports `IFF_RUNNING` (carrier and
/// operstate settle asynchronously after down/up), so the pod is back in its steady state
/// when teardown returns. A link without carrier just times out.
async fn wait_running(h: &Handle, index: u32) {
    use netlink_packet_route::link::LinkFlags;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        let r = h.link().get().match_index(index).execute().try_next().await;
        match r {
            Ok(Some(m)) if m.header.flags.contains(LinkFlags::Running) => return,
            Ok(Some(_)) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            _ => return,
        }
    }
}

async fn add_route(h: &Handle, index: u32, r: &PodRoute) -> Result<(), rtnetlink::Error> {
    let mut msg: RouteMessage = match (r.destination, r.gateway, r.pref_src) {
        (IpAddr::V4(d), gw, src) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d, r.prefix_len)
                .output_interface(index);
            if let Some(IpAddr::V4(g)) = gw {
                b = b.gateway(g);
            }
            if let Some(IpAddr::V4(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
        (IpAddr::V6(d), gw, src) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d, r.prefix_len)
                .output_interface(index);
            if let Some(IpAddr::V6(g)) = gw {
                b = b.gateway(g);
            }
            if let Some(IpAddr::V6(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
    };
    msg.header.protocol = RouteProtocol::from(r.protocol);
    msg.header.scope = RouteScope::from(r.scope);
    if r.onlink {
        msg.header.flags |= netlink_packet_route::route::RouteFlags::Onlink;
    }
    if let Some(m) = r.metric {
        msg.attributes
            .push(netlink_packet_route::route::RouteAttribute::Priority(m));
    }
    h.route().add(msg).replace().execute().await
}

async fn add_address(h: &Handle, index: u32, a: &IfAddress) -> Result<(), rtnetlink::Error> {
    let mut req = h.address().add(index, a.address, a.prefix_len);
    // rtnetlink adds a broadcast address by itself; keep exactly the recorded one.
    req.message_mut()
        .attributes
        .retain(|x| !matches!(x, AddressAttribute::Broadcast(_)));
    if let Some(b) = a.broadcast {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Broadcast(b));
    }
    if a.flags != 0 {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::from_bits_retain(
                a.flags,
            )));
    }
    match req.execute().await {
        Err(e) if super::errno_of(&e) == Some(Errno::EEXIST) => Ok(()),
        r => r,
    }
}

async fn create_stand_in(
    h: &Handle,
    name: &str,
    peer: &str,
    mac: Mac,
    mtu: u32,
) -> Result<(), NetError> {
    // Asking for an unknown link type makes the kernel run modprobe (tens of ms), so try a
    // dummy only when the module is loaded or built in (`/sys/module/dummy`), or when /sys
    // cannot tell (no sysfs mounted).
    let sys_module = Path::new("/sys/module");
    if !sys_module.is_dir() || sys_module.join("dummy").exists() {
        let dummy = LinkMessageBuilder::<LinkDummy>::new(name)
            .address(mac.0.to_vec())
            .mtu(mtu)
            .build();
        match h.link().add(dummy).execute().await {
            Ok(()) => return Ok(()),
            Err(e) if super::errno_of(&e) == Some(Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(NetError::netlink("creating stand-in (dummy)", q(name), e)),
        }
    }
    tracing::debug!(
        name,
        peer,
        "no dummy link type in this kernel: the stand-in is a veth pair"
    );
    let veth = LinkMessageBuilder::<LinkVeth>::new(name, peer)
        .address(mac.0.to_vec())
        .mtu(mtu)
        .build();
    h.link().add(veth).execute().await.map_err(|e| {
        NetError::netlink(
            format!("creating stand-in veth (peer {peer:?})"),
            q(name),
            e,
        )
    })
}

async fn ensure_mac_mtu(
    h: &Handle,
    l: &PodInterface,
    mac: Mac,
    mtu: u32,
    what: &str,
) -> Result<(), NetError> {
    if l.mac != mac {
        set(
            h,
            LinkUnspec::new_with_index(l.index).address(mac.0.to_vec()),
            what,
        )
        .await?;
    }
    if l.mtu != mtu {
        set(h, LinkUnspec::new_with_index(l.index).mtu(mtu), what).await?;
    }
    Ok(())
}

async fn set(h: &Handle, b: LinkMessageBuilder<LinkUnspec>, what: &str) -> Result<(), NetError> {
    h.link().set(b.build()).execute().await.map_err(|e| {
        let errno = super::errno_of(&e);
        NetError::Netlink {
            operation: what.to_string(),
            object: String::new(),
            errno,
            detail: errno
                .map(|n| n.to_string())
                .unwrap_or_else(|| e.to_string()),
        }
    })
}

fn q(name: &str) -> String {
    format!("{name:?}")
}

fn conflict(name: &str, message: &str) -> NetError {
    NetError::Conflict {
        object: format!("link {name:?}"),
        message: message.to_string(),
    }
}

fn resolve_owner(owner: &str) -> Result<u32, NetError> {
    if owner == "root" {
        return Ok(0);
    }
    if let Ok(uid) = owner.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(owner) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(NetError::UnknownUser {
            user: owner.to_string(),
            detail: "no such user in /etc/passwd".into(),
        }),
        Err(e) => Err(NetError::UnknownUser {
            user: owner.to_string(),
            detail: e.to_string(),
        }),
    }
}

/// How one sysctl path is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SysctlTarget<'a> {
    /// `net/ipv4/conf/<link>/<key>` of a real link (not `all`/`default`) with a known
    /// `IPV4_DEVCONF_*` id: RTM_SETLINK with IFLA_AF_SPEC → AF_INET → IFLA_INET_CONF, which
    /// works when `/proc/sys` is mounted read-only (as in a non-privileged pod).
    Ipv4DevConf { link: &'a str, id: u16 },
    /// Anything else (global values, IPv6 per-link values: the kernel's AF_INET6
    /// `set_link_af` accepts only the token and the address generation mode): a write under
    /// `/proc/sys`.
    File,
}

/// Decided by the shape of the path alone, so the plan (and its JSON) does not change.
fn sysctl_target(path: &str) -> SysctlTarget<'_> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["net", "ipv4", "conf", link, key]
            if !link.is_empty() && *link != "all" && *link != "default" =>
        {
            match ipv4_devconf_id(key) {
                Some(id) => SysctlTarget::Ipv4DevConf { link, id },
                None => SysctlTarget::File,
            }
        }
        _ => SysctlTarget::File,
    }
}

/// The kernel's `IPV4_DEVCONF_*` attribute ids (include/uapi/linux/ip.h) of the per-link
/// IPv4 sysctls whose file write has no side effect beyond storing the value. (`forwarding`
/// is left to the file: its sysctl handler also reconfigures the device.)
fn ipv4_devconf_id(key: &str) -> Option<u16> {
    Some(match key {
        "proxy_arp" => 3,
        "accept_redirects" => 4,
        "secure_redirects" => 5,
        "send_redirects" => 6,
        "shared_media" => 7,
        "rp_filter" => 8,
        "accept_source_route" => 9,
        "bootp_relay" => 10,
        "log_martians" => 11,
        "arp_filter" => 13,
        "arp_announce" => 18,
        "arp_ignore" => 19,
        "promote_secondaries" => 20,
        "arp_accept" => 21,
        "arp_notify" => 22,
        "accept_local" => 23,
        "src_valid_mark" => 24,
        "proxy_arp_pvlan" => 25,
        "route_localnet" => 26,
        _ => return None,
    })
}

/// The IFLA_INET_CONF payload: one nested `u32` attribute per value.
fn inet_conf_payload(values: &[(u16, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 8);
    for (id, v) in values {
        out.extend_from_slice(&8u16.to_ne_bytes());
        out.extend_from_slice(&id.to_ne_bytes());
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out
}

/// Sets one sysctl ("make it so"): nothing when it already has the value (reads work on a
/// read-only `/proc/sys`), rtnetlink for per-link IPv4 values, a file write otherwise.
async fn set_sysctl(h: &Handle, path: &str, value: &str) -> Result<(), NetError> {
    let full = Path::new("/proc/sys").join(path);
    if let Ok(cur) = std::fs::read_to_string(&full) {
        if cur.trim() == value.trim() {
            return Ok(());
        }
    }
    match sysctl_target(path) {
        SysctlTarget::Ipv4DevConf { link, id } => set_ipv4_devconf(h, path, link, id, value).await,
        SysctlTarget::File => write_sysctl(path, value),
    }
}

async fn set_ipv4_devconf(
    h: &Handle,
    path: &str,
    link: &str,
    id: u16,
    value: &str,
) -> Result<(), NetError> {
    use netlink_packet_route::link::{AfSpecInet, AfSpecUnspec, LinkAttribute};
    use rtnetlink::packet_core::DefaultNla;
    const IFLA_INET_CONF: u16 = 1;
    const NLA_F_NESTED: u16 = 0x8000;
    let name = path.replace('/', ".");
    let v: u32 = value.trim().parse::<i32>().map(|v| v as u32).map_err(|_| {
        NetError::Other(format!(
            "setting sysctl {name}: {value:?} is not an integer"
        ))
    })?;
    let l = link_by_name(h, link)
        .await?
        .ok_or_else(|| NetError::Conflict {
            object: format!("link {link:?}"),
            message: format!("does not exist; cannot set {name}"),
        })?;
    let mut msg = LinkUnspec::new_with_index(l.index).build();
    msg.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::Other(DefaultNla::new(
                IFLA_INET_CONF | NLA_F_NESTED,
                inet_conf_payload(&[(id, v)]),
            )),
        ])]));
    h.link().set(msg).execute().await.map_err(|e| {
        NetError::netlink(
            format!("setting {name}={value} over rtnetlink (IFLA_INET_CONF) on"),
            q(link),
            e,
        )
    })?;
    // The kernel ignores attributes it does not know: check that the value took.
    if let Ok(cur) = std::fs::read_to_string(Path::new("/proc/sys").join(path)) {
        if cur.trim() != value.trim() {
            return Err(NetError::Other(format!(
                "setting {name}={value} over rtnetlink: the kernel accepted the request but the value is still {}",
                cur.trim()
            )));
        }
    }
    Ok(())
}

/// What an operator can do when a sysctl file cannot be written (read-only `/proc/sys`).
fn read_only_hint(path: &str, value: &str) -> String {
    let name = path.replace('/', ".");
    let parts: Vec<&str> = path.split('/').collect();
    let (what, set) = match parts.as_slice() {
        ["net", fam @ ("ipv4" | "ipv6"), "conf", link, key]
            if *link != "all" && *link != "default" =>
        {
            let d = format!("net.{fam}.conf.default.{key}");
            (
                format!(
                    "the kernel has no netlink equivalent for {name}, and links the launcher creates inherit {d}: set {d}={value}"
                ),
                d,
            )
        }
        _ => (format!("set {name}={value}"), name.clone()),
    };
    format!(
        "{what} for the pod via securityContext.sysctls (the kubelet must allow it, e.g. --allowed-unsafe-sysctls={set}) or run the launcher with a writable /proc/sys"
    )
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    let full = Path::new("/proc/sys").join(path);
    std::fs::write(&full, value).map_err(|source| {
        if source.raw_os_error() == Some(Errno::EROFS as i32) {
            NetError::ReadOnlySysctl {
                name: path.replace('/', "."),
                value: value.to_string(),
                hint: read_only_hint(path, value),
            }
        } else {
            NetError::Io {
                operation: format!("setting sysctl to {value:?}:"),
                object: full.display().to_string(),
                source,
            }
        }
    })
}

/// An `nft -f -` transaction in flight.
struct PendingNft {
    child: std::process::Child,
    what: String,
}

impl PendingNft {
    fn finish(self) -> Result<(), NetError> {
        let what = self.what;
        let out = self
            .child
            .wait_with_output()
            .map_err(|source| NetError::Io {
                operation: format!("{what}: waiting for"),
                object: "nft".into(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NetError::Nft {
                operation: what,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// Starts `nft -f -` with `script` on stdin: one atomic transaction.
fn spawn_nft(what: &str, script: &str) -> Result<PendingNft, NetError> {
    let mut child = match Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NetError::MissingTool {
                tool: "nft".into(),
                operation: what.to_string(),
                detail: "not found in PATH".into(),
            })
        }
        Err(source) => {
            return Err(NetError::Io {
                operation: format!("{what}: running"),
                object: "nft".into(),
                source,
            })
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    Ok(PendingNft {
        child,
        what: what.to_string(),
    })
}

/// Runs `tc ARGS`. With `absent_ok`, "no such qdisc" counts as success (idempotent delete).
fn tc(what: &str, args: &[String], absent_ok: bool) -> Result<(), NetError> {
    let out = Command::new("tc")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetError::MissingTool {
                    tool: "tc".into(),
                    operation: what.to_string(),
                    detail: "not found in PATH (install iproute2)".into(),
                }
            } else {
                NetError::Io {
                    operation: format!("{what}: running"),
                    object: "tc".into(),
                    source: e,
                }
            }
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if absent_ok
        && (err.contains("Cannot find specified qdisc")
            || err.contains("Invalid handle")
            || err.contains("Cannot delete qdisc with handle of zero"))
    {
        return Ok(());
    }
    Err(NetError::Other(format!(
        "{what}: `tc {}` failed: {err}",
        args.join(" ")
    )))
}

/// Runs `nft -f -` with `script` and waits for it.
fn nft(what: &str, script: &str) -> Result<(), NetError> {
    spawn_nft(what, script)?.finish()
}

pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<PodInterface>, NetError> {
    let r = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match r {
        Ok(Some(m)) => Ok(Some(link_of(&m))),
        Ok(None) => Ok(None),
        Err(e) if matches!(super::errno_of(&e), Some(Errno::ENODEV | Errno::ENOENT)) => Ok(None),
        Err(e) => Err(NetError::netlink("looking up link", q(name), e)),
    }
}

pub async fn link_by_index(h: &Handle, index: u32) -> Result<Option<PodInterface>, NetError> {
    let r = h.link().get().match_index(index).execute().try_next().await;
    match r {
        Ok(Some(m)) => Ok(Some(link_of(&m))),
        Ok(None) => Ok(None),
        Err(e) if matches!(super::errno_of(&e), Some(Errno::ENODEV | Errno::ENOENT)) => Ok(None),
        Err(e) => Err(NetError::netlink(
            "looking up link index",
            index.to_string(),
            e,
        )),
    }
}

async fn resolve(h: &Handle, l: &LinkRef) -> Result<PodInterface, NetError> {
    let found = match l {
        LinkRef::Pod { index, .. } => link_by_index(h, *index).await?,
        LinkRef::Created(name) => link_by_name(h, name).await?,
    };
    found.ok_or_else(|| NetError::Conflict {
        object: l.to_string(),
        message: "does not exist (removed behind our back?)".into(),
    })
}

async fn addresses_of(h: &Handle, index: u32) -> Result<Vec<AddressMessage>, NetError> {
    let all: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("listing addresses of link index", index.to_string(), e))?;
    Ok(all
        .into_iter()
        .filter(|m| m.header.index == index)
        .collect())
}

fn msg_ip(m: &AddressMessage) -> Option<IpAddr> {
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => addr = Some(*ip),
            _ => {}
        }
    }
    addr
}

/// Main-table unicast routes whose output interface is `index` (both families).
async fn routes_of(h: &Handle, index: u32) -> Result<Vec<RouteMessage>, NetError> {
    use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteType};
    let mut out = Vec::new();
    for v6 in [false, true] {
        let req = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let routes: Vec<RouteMessage> = h
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::netlink("listing", "routes", e))?;
        for r in routes {
            let mut table = u32::from(r.header.table);
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            if table == u32::from(RouteHeader::RT_TABLE_MAIN)
                && oif == Some(index)
                && r.header.kind == RouteType::Unicast
            {
                out.push(r);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_restores_the_pod_after_deleting_what_took_its_name() {
        let pod = LinkRef::Pod {
            index: 2,
            name: "eth0".into(),
        };
        let steps = vec![
            Step::NftTable {
                family: "bridge".into(),
                name: "t".into(),
                ruleset: String::new(),
            },
            Step::CreateBridge {
                name: "k6t-eth0".into(),
                mac: Mac([2, 0, 0, 0, 0, 1]),
                mtu: 1500,
            },
            Step::LinkDown { link: pod.clone() },
            Step::Rename {
                link: pod.clone(),
                to: "eth0-nic".into(),
            },
            Step::CreateStandIn {
                name: "eth0".into(),
                peer: "eth0-sb".into(),
                mac: Mac([2, 0, 0, 0, 0, 2]),
                mtu: 1500,
            },
            Step::LinkUp { link: pod },
            Step::CreateTap {
                name: "tap0".into(),
                owner: "root".into(),
                queues: 1,
            },
        ];
        let u = undo_list(&steps);
        assert_eq!(
            u,
            vec![
                Undo::DeleteLink {
                    name: "tap0".into(),
                    tap_queues: Some(1)
                },
                Undo::DeleteLink {
                    name: "eth0".into(),
                    tap_queues: None
                },
                Undo::RestorePod { index: 2 },
                Undo::DeleteLink {
                    name: "k6t-eth0".into(),
                    tap_queues: None
                },
                Undo::DeleteTable {
                    family: "bridge".into(),
                    name: "t".into()
                },
            ]
        );
    }
}

#[cfg(test)]
mod sysctl_tests {
    use super::*;

    #[test]
    fn per_link_ipv4_devconf_goes_over_netlink_by_path_shape() {
        assert_eq!(
            sysctl_target("net/ipv4/conf/k6t-eth0/arp_ignore"),
            SysctlTarget::Ipv4DevConf {
                link: "k6t-eth0",
                id: 19
            }
        );
        assert_eq!(
            sysctl_target("net/ipv4/conf/k6t-eth0/route_localnet"),
            SysctlTarget::Ipv4DevConf {
                link: "k6t-eth0",
                id: 26
            }
        );
        for p in [
            "net/ipv4/ip_forward",
            "net/ipv4/conf/all/arp_ignore",
            "net/ipv4/conf/default/arp_ignore",
            "net/ipv4/conf/k6t-eth0/forwarding",
            "net/ipv6/conf/k6t-eth0/disable_ipv6",
            "net/ipv6/conf/all/forwarding",
        ] {
            assert_eq!(sysctl_target(p), SysctlTarget::File, "{p}");
        }
    }

    #[test]
    fn inet_conf_payload_is_nested_u32_attributes() {
        let p = inet_conf_payload(&[(19, 1)]);
        let mut want = Vec::new();
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&19u16.to_ne_bytes());
        want.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(p, want);
    }

    #[test]
    fn read_only_errors_say_what_to_do_and_exit_3() {
        use crate::error::{Classify, ExitKind};
        let e = NetError::ReadOnlySysctl {
            name: "net.ipv4.ip_forward".into(),
            value: "1".into(),
            hint: read_only_hint("net/ipv4/ip_forward", "1"),
        };
        assert_eq!(e.exit_kind(), ExitKind::Precondition);
        let s = e.to_string();
        assert!(
            s.contains("set net.ipv4.ip_forward=1 for the pod via securityContext.sysctls")
                && s.contains("writable /proc/sys"),
            "{s}"
        );
        let h = read_only_hint("net/ipv6/conf/k6t-eth0/disable_ipv6", "0");
        assert!(
            h.contains("set net.ipv6.conf.default.disable_ipv6=0"),
            "{h}"
        );
    }
}
