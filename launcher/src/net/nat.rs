//! The masquerade binding's NAT: a pure ruleset generator ([`ruleset`]) and a small applier
//! ([`Nft`]).
//!
//! All rules live in our own table per family (`ip kubevirt_nat`, `ip6 kubevirt_nat`). One
//! `nft -j -f -` transaction deletes and recreates both tables, so re-applying never duplicates
//! rules, and a rejected transaction leaves the previous ruleset exactly as it was. The chain
//! names inside the tables are KubeVirt's (`KUBEVIRT_PREINBOUND`, `KUBEVIRT_POSTINBOUND`), which
//! operators already know. The table name is not: KubeVirt uses `nat`, which is also the table
//! that iptables-nft (and so an Istio init container) uses, and deleting it would wipe the
//! sidecar's rules. A `forward` filter chain in the same table lets only DNATed connections and
//! replies cross from the pod interface to the bridge, so the guest's private address cannot be
//! reached around the port list. `docs/nat.md` lists exactly which traffic reaches the guest.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use nftables::batch::Batch;
use nftables::expr::{Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression};
use nftables::expr::{Payload, PayloadField, Range, SetItem};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{AnonymousCounter, Counter, JumpTarget, Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::{Deserialize, Serialize};

use crate::error::{Classify, ExitKind};

/// Our table's name, in both the `ip` and the `ip6` family.
pub const TABLE: &str = "kubevirt_nat";
/// Base chain on the prerouting hook (traffic arriving from the pod interface).
pub const CHAIN_PREROUTING: &str = "prerouting";
/// Base chain on the output hook (traffic the pod itself sends to localhost / its own IP).
pub const CHAIN_OUTPUT: &str = "output";
/// Base chain on the postrouting hook (guest egress masquerade, SNAT towards the guest).
pub const CHAIN_POSTROUTING: &str = "postrouting";
/// Base filter chain on the forward hook: nothing from the pod network reaches the guest
/// directly (only what was DNATed, and replies to the guest's own connections).
pub const CHAIN_FORWARD: &str = "forward";
/// Regular chain: which inbound connections are DNATed to the guest (shared by the prerouting
/// and output paths, so both honour the same port list).
pub const CHAIN_PREINBOUND: &str = "KUBEVIRT_PREINBOUND";
/// Regular chain: SNAT of connections that the pod sends to the guest from a loopback source.
pub const CHAIN_POSTINBOUND: &str = "KUBEVIRT_POSTINBOUND";

/// `dstnat + 10`: our DNAT runs *after* any other NAT chain in the pod at the standard priority
/// (an Istio sidecar's iptables `nat PREROUTING`/`OUTPUT`). The kernel applies only the first
/// DNAT a connection gets, so the sidecar keeps first pick and we catch the rest.
pub const PRIO_DSTNAT: i32 = -90;
/// `srcnat + 10`, for the same reason.
pub const PRIO_SRCNAT: i32 = 110;
/// `filter`: the forward guard.
pub const PRIO_FILTER: i32 = 0;

/// The VMI annotation that asks for an Istio sidecar.
pub const ISTIO_INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";
/// Ports the Envoy sidecar and pilot-agent listen on; never DNATed to the guest.
pub const ISTIO_RESERVED_PORTS: [u16; 10] = [
    15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090,
];
/// The source address Envoy uses when it passes inbound traffic on to the application.
pub const ISTIO_PASSTHROUGH_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Envoy's IPv6 passthrough source.
pub const ISTIO_PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// True when the VMI's annotations ask for an Istio sidecar (`sidecar.istio.io/inject: "true"`).
pub fn istio_injected(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(ISTIO_INJECT_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A transport protocol of a forwarded port. Serialised as the VMI spells it (`TCP`, `UDP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// Parses the VMI's `protocol` field: absent means TCP; case-insensitive.
    pub fn from_spec(p: Option<&str>) -> Result<Self, NatError> {
        match p.map(str::trim) {
            None | Some("") => Ok(Protocol::Tcp),
            Some(s) if s.eq_ignore_ascii_case("tcp") => Ok(Protocol::Tcp),
            Some(s) if s.eq_ignore_ascii_case("udp") => Ok(Protocol::Udp),
            Some(s) => Err(NatError::Invalid(format!(
                "port protocol {s:?} is not supported by the masquerade binding (use TCP or UDP)"
            ))),
        }
    }

    fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One forwarded port (`spec.domain.devices.interfaces[].ports[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatPort {
    pub protocol: Protocol,
    pub port: u16,
}

impl NatPort {
    pub fn from_spec(p: &crate::spec::vmi::Port) -> Result<Self, NatError> {
        Ok(NatPort {
            protocol: Protocol::from_spec(p.protocol.as_deref())?,
            port: port_number(p.port, "port")?,
        })
    }
}

/// A forwarded port range, both ends included (`portRanges[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatPortRange {
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

impl NatPortRange {
    pub fn from_spec(r: &crate::spec::vmi::PortRange) -> Result<Self, NatError> {
        let range = NatPortRange {
            protocol: Protocol::from_spec(r.protocol.as_deref())?,
            start: port_number(r.start, "portRanges start")?,
            end: port_number(r.end, "portRanges end")?,
        };
        range.check()?;
        Ok(range)
    }

    fn check(&self) -> Result<(), NatError> {
        if self.start == 0 || self.start > self.end {
            return Err(NatError::Invalid(format!(
                "port range {}-{} is empty or starts at 0 (need 1 <= start <= end <= 65535)",
                self.start, self.end
            )));
        }
        Ok(())
    }
}

fn port_number(p: i64, what: &str) -> Result<u16, NatError> {
    match u16::try_from(p) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(NatError::Invalid(format!(
            "{what} {p} is out of range (1-65535)"
        ))),
    }
}

/// The NAT inputs of one address family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatFamily<A> {
    /// The guest's address (`10.0.2.2`, `fd10:0:2::2`).
    pub guest: A,
    /// The gateway address on the bridge (`10.0.2.1`, `fd10:0:2::1`).
    pub gateway: A,
    /// The pod's own addresses of this family (a DNAT destination in output with Istio).
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<A>,
}

/// Everything the NAT ruleset depends on, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatConfig {
    /// The pod interface traffic arrives on and leaves by (`eth0`).
    pub pod_interface: String,
    /// The bridge holding the gateway addresses (`k6t-eth0`).
    pub bridge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<NatFamily<Ipv4Addr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<NatFamily<Ipv6Addr>>,
    /// Forwarded ports; together with `port_ranges` empty means "everything".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NatPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_ranges: Vec<NatPortRange>,
    /// `sidecar.istio.io/inject: "true"` on the VMI (see [`istio_injected`]).
    #[serde(default)]
    pub istio: bool,
}

impl NatConfig {
    /// Checks what nft would otherwise reject with a less readable message.
    pub fn validate(&self) -> Result<(), NatError> {
        check_ifname(&self.pod_interface, "pod interface")?;
        check_ifname(&self.bridge, "bridge")?;
        if self.pod_interface == self.bridge {
            return Err(NatError::Invalid(format!(
                "the pod interface and the bridge are both {:?}",
                self.bridge
            )));
        }
        if self.v4.is_none() && self.v6.is_none() {
            return Err(NatError::Invalid(
                "neither IPv4 nor IPv6 is configured for the masquerade NAT".into(),
            ));
        }
        if let Some(f) = &self.v4 {
            check_family(f, "IPv4")?;
        }
        if let Some(f) = &self.v6 {
            check_family(f, "IPv6")?;
        }
        for p in &self.ports {
            if p.port == 0 {
                return Err(NatError::Invalid("port 0 cannot be forwarded".into()));
            }
            if self.istio && ISTIO_RESERVED_PORTS.contains(&p.port) {
                return Err(NatError::Invalid(format!(
                    "port {} is reserved by the Istio sidecar (Envoy) and cannot be forwarded to \
                     the guest; reserved: {:?}",
                    p.port, ISTIO_RESERVED_PORTS
                )));
            }
        }
        for r in &self.port_ranges {
            r.check()?;
        }
        Ok(())
    }

    /// True when every inbound connection is forwarded (no `ports`, no `portRanges`).
    pub fn forwards_everything(&self) -> bool {
        self.ports.is_empty() && self.port_ranges.is_empty()
    }
}

fn check_ifname(name: &str, what: &str) -> Result<(), NatError> {
    // IFNAMSIZ is 16 including the NUL; the kernel refuses '/', ':' and whitespace.
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(NatError::Invalid(format!(
            "{what} name {name:?} is not a valid Linux interface name (1-15 bytes, no '/', ':' or \
             whitespace)"
        )));
    }
    Ok(())
}

fn check_family<A: Into<IpAddr> + Copy + PartialEq>(
    f: &NatFamily<A>,
    what: &str,
) -> Result<(), NatError> {
    let (g, gw): (IpAddr, IpAddr) = (f.guest.into(), f.gateway.into());
    if g == gw {
        return Err(NatError::Invalid(format!(
            "{what}: the guest and the gateway have the same address {g}"
        )));
    }
    for a in [g, gw] {
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
            return Err(NatError::Invalid(format!(
                "{what}: {a} cannot be a guest or gateway address"
            )));
        }
    }
    Ok(())
}

/// Errors of the NAT module.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The inputs cannot produce a ruleset (exit 2).
    #[error("invalid masquerade NAT configuration: {0}")]
    Invalid(String),
    /// `nft` is not installed or not executable (exit 3).
    #[error(
        "{operation}: cannot run {program:?}: {source}; the masquerade binding needs the nftables \
         `nft` tool in the launcher image"
    )]
    NftMissing {
        program: String,
        operation: String,
        #[source]
        source: std::io::Error,
    },
    /// `nft` ran and refused or failed; `stderr` is nft's own text (exit 3). In JSON mode nft
    /// does not say which command it refused, so `first_rejected` names it when it could be
    /// found (by re-checking prefixes of the transaction with `nft --check`, which changes
    /// nothing).
    #[error(
        "{operation}: {program:?} failed ({status}): {stderr}{}",
        first_rejected.as_deref().map(|c| format!("\nfirst rejected command: {c}")).unwrap_or_default()
    )]
    NftFailed {
        program: String,
        operation: String,
        status: String,
        stderr: String,
        first_rejected: Option<String>,
    },
    /// The ruleset could not be encoded (a bug, exit 1).
    #[error("encoding the nftables ruleset as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Classify for NatError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            NatError::Invalid(_) => ExitKind::InvalidSpec,
            NatError::NftMissing { .. } | NatError::NftFailed { .. } => ExitKind::Precondition,
            NatError::Encode(_) => ExitKind::Internal,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pure generator.
// ---------------------------------------------------------------------------------------------

/// The whole NAT configuration as ONE transaction: for each family, `add table` (so the delete
/// cannot fail on a missing table), `delete table`, then — for the configured families — the
/// table, chains and rules afresh. A family that is not configured has its old table removed.
pub fn ruleset(cfg: &NatConfig) -> Result<Nftables<'static>, NatError> {
    cfg.validate()?;
    let mut b = Batch::new();
    match &cfg.v4 {
        Some(f) => family_rules(&mut b, cfg, &Fam::from_v4(f)),
        None => drop_table(&mut b, NfFamily::IP),
    }
    match &cfg.v6 {
        Some(f) => family_rules(&mut b, cfg, &Fam::from_v6(f)),
        None => drop_table(&mut b, NfFamily::IP6),
    }
    Ok(b.to_nftables())
}

/// The transaction that removes our tables (both families); a missing table is fine.
pub fn teardown_ruleset() -> Nftables<'static> {
    let mut b = Batch::new();
    drop_table(&mut b, NfFamily::IP);
    drop_table(&mut b, NfFamily::IP6);
    b.to_nftables()
}

/// [`ruleset`] as pretty JSON (what `nft -j -f -` reads; also the golden files' format).
pub fn ruleset_json(cfg: &NatConfig) -> Result<String, NatError> {
    Ok(serde_json::to_string_pretty(&ruleset(cfg)?)?)
}

/// One family's view of the config, with addresses as `IpAddr`.
struct Fam {
    family: NfFamily,
    /// `ip` or `ip6`, the payload protocol of address matches.
    proto: &'static str,
    guest: IpAddr,
    gateway: IpAddr,
    loopback: IpAddr,
    passthrough: IpAddr,
    pod_ips: Vec<IpAddr>,
}

impl Fam {
    fn from_v4(f: &NatFamily<Ipv4Addr>) -> Fam {
        Fam {
            family: NfFamily::IP,
            proto: "ip",
            guest: f.guest.into(),
            gateway: f.gateway.into(),
            loopback: Ipv4Addr::LOCALHOST.into(),
            passthrough: ISTIO_PASSTHROUGH_V4.into(),
            pod_ips: f.pod_ips.iter().map(|&a| a.into()).collect(),
        }
    }

    fn from_v6(f: &NatFamily<Ipv6Addr>) -> Fam {
        Fam {
            family: NfFamily::IP6,
            proto: "ip6",
            guest: f.guest.into(),
            gateway: f.gateway.into(),
            loopback: Ipv6Addr::LOCALHOST.into(),
            passthrough: ISTIO_PASSTHROUGH_V6.into(),
            pod_ips: f.pod_ips.iter().map(|&a| a.into()).collect(),
        }
    }
}

fn table(family: NfFamily) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family,
        name: TABLE.into(),
        handle: None,
    })
}

fn drop_table(b: &mut Batch<'static>, family: NfFamily) {
    b.add(table(family));
    b.delete(table(family));
}

fn base_chain(
    family: NfFamily,
    name: &'static str,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(if hook == NfHook::Forward {
            NfChainType::Filter
        } else {
            NfChainType::NAT
        }),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn chain(family: NfFamily, name: &'static str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family,
        table: TABLE.into(),
        name: name.into(),
        ..Chain::default()
    })
}

fn rule(
    family: NfFamily,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
    comment: &str,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        comment: Some(comment.to_owned().into()),
        ..Rule::default()
    })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(nftables::expr::CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn s(v: impl ToString) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

/// A single value stays a value; several become an anonymous set.
fn one_or_set(mut items: Vec<Expression<'static>>) -> Expression<'static> {
    if items.len() == 1 {
        items.remove(0)
    } else {
        Expression::Named(NamedExpression::Set(
            items.into_iter().map(SetItem::Element).collect(),
        ))
    }
}

fn addrs(list: &[IpAddr]) -> Expression<'static> {
    one_or_set(list.iter().map(s).collect())
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(Some(AnonymousCounter::default())))
}

fn nat_to(addr: IpAddr) -> Option<NAT<'static>> {
    Some(NAT {
        addr: Some(s(addr)),
        family: None,
        port: None,
        flags: None,
    })
}

/// Ports of one protocol as sorted, merged, non-overlapping intervals (nft rejects overlapping
/// elements in an anonymous interval set).
pub fn merged_intervals(cfg: &NatConfig, proto: Protocol) -> Vec<(u16, u16)> {
    let mut v: Vec<(u16, u16)> = cfg
        .ports
        .iter()
        .filter(|p| p.protocol == proto)
        .map(|p| (p.port, p.port))
        .chain(
            cfg.port_ranges
                .iter()
                .filter(|r| r.protocol == proto)
                .map(|r| (r.start, r.end)),
        )
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn port_elems(iv: &[(u16, u16)]) -> Expression<'static> {
    one_or_set(
        iv.iter()
            .map(|&(a, b)| {
                if a == b {
                    Expression::Number(a.into())
                } else {
                    Expression::Range(Box::new(Range {
                        range: [Expression::Number(a.into()), Expression::Number(b.into())],
                    }))
                }
            })
            .collect(),
    )
}

fn family_rules(b: &mut Batch<'static>, cfg: &NatConfig, f: &Fam) {
    let fam = f.family;
    let iface = cfg.pod_interface.as_str();
    let bridge = cfg.bridge.as_str();

    drop_table(b, fam);
    b.add(table(fam));
    b.add(base_chain(
        fam,
        CHAIN_PREROUTING,
        NfHook::Prerouting,
        PRIO_DSTNAT,
    ));
    b.add(base_chain(fam, CHAIN_OUTPUT, NfHook::Output, PRIO_DSTNAT));
    b.add(base_chain(
        fam,
        CHAIN_POSTROUTING,
        NfHook::Postrouting,
        PRIO_SRCNAT,
    ));
    b.add(base_chain(fam, CHAIN_FORWARD, NfHook::Forward, PRIO_FILTER));
    b.add(chain(fam, CHAIN_PREINBOUND));
    b.add(chain(fam, CHAIN_POSTINBOUND));

    // The guest's private address must not be reachable from the pod network just because the
    // pod forwards: a neighbour routing 10.0.2.0/24 via the pod IP would otherwise bypass the
    // port list. Only DNATed connections and replies to the guest's own connections pass.
    let across = || {
        vec![
            eq(meta(MetaKey::Iifname), s(iface)),
            eq(meta(MetaKey::Oifname), s(bridge)),
        ]
    };
    let mut r = across();
    r.push(Statement::Match(Match {
        left: ct("status"),
        right: s("dnat"),
        op: Operator::IN,
    }));
    r.push(Statement::Accept(None));
    b.add(rule(fam, CHAIN_FORWARD, r, "DNATed to the guest above"));
    let mut r = across();
    r.push(eq(
        ct("state"),
        one_or_set(vec![s("established"), s("related")]),
    ));
    r.push(Statement::Accept(None));
    b.add(rule(
        fam,
        CHAIN_FORWARD,
        r,
        "replies to the guest's own connections",
    ));
    let mut r = across();
    r.push(counter());
    r.push(Statement::Reject(None));
    b.add(rule(
        fam,
        CHAIN_FORWARD,
        r,
        "nothing else reaches the guest's private address from the pod network",
    ));

    // Inbound from the pod network: only connections addressed to one of the pod's own unicast
    // addresses (not broadcast, multicast or, for IPv6, link-local).
    let mut pre = vec![eq(meta(MetaKey::Iifname), s(iface))];
    pre.push(eq(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr].into_iter().collect(),
        })),
        s("local"),
    ));
    if fam == NfFamily::IP6 {
        pre.push(Statement::Match(Match {
            left: payload("ip6", "daddr"),
            right: Expression::Named(NamedExpression::Prefix(nftables::expr::Prefix {
                addr: Box::new(s("fe80::")),
                len: 10,
            })),
            op: Operator::NEQ,
        }));
    }
    pre.push(counter());
    pre.push(Statement::Jump(JumpTarget {
        target: CHAIN_PREINBOUND.into(),
    }));
    b.add(rule(
        fam,
        CHAIN_PREROUTING,
        pre,
        "inbound from the pod network to a pod address",
    ));

    // Local connections to localhost (and, with Istio, to the pod's own IPs: Envoy's
    // passthrough) take the same port filter. IPv6 has no `::1` rule: Linux drops a packet
    // whose destination is `::1` when it arrives on a non-loopback interface (there is no
    // `route_localnet` for IPv6), so the guest's reply could never be delivered and such a
    // connection would hang instead of reaching the pod's own sockets (see docs/nat.md).
    let mut local = Vec::new();
    if fam == NfFamily::IP {
        local.push(f.loopback);
    }
    if cfg.istio {
        local.extend(f.pod_ips.iter().copied());
    }
    if !local.is_empty() {
        b.add(rule(
            fam,
            CHAIN_OUTPUT,
            vec![
                eq(payload(f.proto, "daddr"), addrs(&local)),
                counter(),
                Statement::Jump(JumpTarget {
                    target: CHAIN_PREINBOUND.into(),
                }),
            ],
            match (fam, cfg.istio) {
                (NfFamily::IP, false) => "pod-local connections to localhost",
                (NfFamily::IP, true) => "pod-local connections to localhost or the pod IP",
                _ => "pod-local connections to the pod IP (Envoy passthrough)",
            },
        ));
    }

    // Egress: the guest's connections leave behind the pod's address.
    b.add(rule(
        fam,
        CHAIN_POSTROUTING,
        vec![
            eq(payload(f.proto, "saddr"), s(f.guest)),
            eq(meta(MetaKey::Oifname), s(iface)),
            counter(),
            Statement::Masquerade(None),
        ],
        "guest egress: masquerade behind the pod address",
    ));
    b.add(rule(
        fam,
        CHAIN_POSTROUTING,
        vec![
            eq(meta(MetaKey::Oifname), s(bridge)),
            counter(),
            Statement::Jump(JumpTarget {
                target: CHAIN_POSTINBOUND.into(),
            }),
        ],
        "towards the guest",
    ));

    // Which inbound connections are DNATed.
    if cfg.istio {
        b.add(rule(
            fam,
            CHAIN_PREINBOUND,
            vec![
                eq(meta(MetaKey::L4proto), one_or_set(vec![s("tcp"), s("udp")])),
                eq(
                    payload("th", "dport"),
                    one_or_set(
                        ISTIO_RESERVED_PORTS
                            .iter()
                            .map(|&p| Expression::Number(p.into()))
                            .collect(),
                    ),
                ),
                counter(),
                Statement::Return(None),
            ],
            "Istio sidecar ports stay in the pod",
        ));
    }
    if cfg.forwards_everything() {
        b.add(rule(
            fam,
            CHAIN_PREINBOUND,
            vec![counter(), Statement::DNAT(nat_to(f.guest))],
            "no ports listed: everything to the guest",
        ));
    } else {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let iv = merged_intervals(cfg, proto);
            if iv.is_empty() {
                continue;
            }
            b.add(rule(
                fam,
                CHAIN_PREINBOUND,
                vec![
                    eq(payload(proto.nft_name(), "dport"), port_elems(&iv)),
                    counter(),
                    Statement::DNAT(nat_to(f.guest)),
                ],
                match proto {
                    Protocol::Tcp => "listed TCP ports to the guest",
                    Protocol::Udp => "listed UDP ports to the guest",
                },
            ));
        }
    }

    // Connections the pod sends to the guest from a loopback source would be dropped by the
    // guest (martian source) and could not be answered: they leave from the gateway instead.
    let mut loop_src = Vec::new();
    if fam == NfFamily::IP {
        loop_src.push(f.loopback);
    }
    if cfg.istio {
        loop_src.push(f.passthrough);
    }
    if !loop_src.is_empty() {
        b.add(rule(
            fam,
            CHAIN_POSTINBOUND,
            vec![
                eq(payload(f.proto, "saddr"), addrs(&loop_src)),
                counter(),
                Statement::SNAT(nat_to(f.gateway)),
            ],
            "pod-local sources reach the guest from the gateway",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// The applier.
// ---------------------------------------------------------------------------------------------

/// How to run `nft`: the command line before nft's own arguments. The default is `nft` from
/// `PATH`; tests prefix it with `ip netns exec <ns>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    argv: Vec<OsString>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new()
    }
}

impl Nft {
    /// `nft` from `PATH`, in the caller's network namespace.
    pub fn new() -> Self {
        Nft {
            argv: vec!["nft".into()],
        }
    }

    /// A custom command line, e.g. `["/usr/sbin/nft"]` or `["ip", "netns", "exec", "x", "nft"]`.
    pub fn with_command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        assert!(!argv.is_empty(), "an nft command line needs a program");
        Nft { argv }
    }

    /// `nft` inside the named network namespace (`ip netns exec NAME nft`).
    pub fn in_netns(name: &str) -> Self {
        Nft::with_command(["ip", "netns", "exec", name, "nft"])
    }

    fn program(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs nft with `args`, feeding `stdin`; returns stdout.
    fn run(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        operation: &str,
    ) -> Result<String, NatError> {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| NatError::NftMissing {
            program: self.program(),
            operation: operation.to_owned(),
            source,
        })?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error (EPIPE) means nft stopped reading; its exit status and stderr say why.
            let _ = pipe.write_all(data);
        }
        let out = child
            .wait_with_output()
            .map_err(|source| NatError::NftMissing {
                program: self.program(),
                operation: operation.to_owned(),
                source,
            })?;
        if !out.status.success() {
            let mut stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
            if stderr.is_empty() {
                stderr = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
            }
            if stderr.is_empty() {
                stderr = "(nft printed nothing)".into();
            }
            return Err(NatError::NftFailed {
                program: self.program(),
                operation: operation.to_owned(),
                status: out.status.to_string(),
                stderr,
                first_rejected: None,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies any transaction atomically (`nft -j -f -`).
    pub fn apply_ruleset(&self, rs: &Nftables<'_>, operation: &str) -> Result<(), NatError> {
        let json = serde_json::to_vec(rs)?;
        let started = std::time::Instant::now();
        match self.run(&["-j", "-f", "-"], Some(&json), operation) {
            Ok(_) => {}
            Err(NatError::NftFailed {
                program,
                operation,
                status,
                stderr,
                ..
            }) => {
                return Err(NatError::NftFailed {
                    first_rejected: self.first_rejected(rs),
                    program,
                    operation,
                    status,
                    stderr,
                })
            }
            Err(e) => return Err(e),
        }
        tracing::debug!(
            objects = rs.objects.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "{operation}: done"
        );
        Ok(())
    }

    /// The first object of `rs` that nft refuses, found by checking ever longer prefixes with
    /// `nft --check` (binary search; nothing is applied). `None` if every prefix passes.
    fn first_rejected(&self, rs: &Nftables<'_>) -> Option<String> {
        let objs = &rs.objects;
        let fails = |n: usize| -> Option<bool> {
            let json = serde_json::to_vec(&serde_json::json!({ "nftables": &objs[..n] })).ok()?;
            match self.run(&["-c", "-j", "-f", "-"], Some(&json), "checking") {
                Ok(_) => Some(false),
                Err(NatError::NftFailed { .. }) => Some(true),
                Err(_) => None,
            }
        };
        // Invariant: prefix `lo` passes, prefix `hi` fails.
        let (mut lo, mut hi) = (0, objs.len());
        // An empty batch that fails means nft itself is unusable (permissions, ...): no culprit.
        if fails(lo)? || !fails(hi)? {
            return None;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fails(mid)? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        serde_json::to_string(&objs[hi - 1]).ok()
    }

    /// Replaces our tables with the ruleset for `cfg`, in one transaction.
    pub fn apply(&self, cfg: &NatConfig) -> Result<(), NatError> {
        let rs = ruleset(cfg)?;
        self.apply_ruleset(
            &rs,
            &format!("replacing the nftables tables ip/ip6 {TABLE} (masquerade NAT)"),
        )?;
        tracing::info!(
            table = TABLE,
            v4 = cfg.v4.is_some(),
            v6 = cfg.v6.is_some(),
            istio = cfg.istio,
            ports = cfg.ports.len(),
            port_ranges = cfg.port_ranges.len(),
            "masquerade NAT applied"
        );
        Ok(())
    }

    /// Deletes our tables (both families); missing tables are fine.
    pub fn teardown(&self) -> Result<(), NatError> {
        self.apply_ruleset(
            &teardown_ruleset(),
            &format!("deleting the nftables tables ip/ip6 {TABLE} (masquerade NAT)"),
        )
    }

    /// `nft list ruleset` (text), for snapshots and diagnostics.
    pub fn list_ruleset(&self) -> Result<String, NatError> {
        self.run(&["list", "ruleset"], None, "listing the nftables ruleset")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> NatFamily<Ipv4Addr> {
        NatFamily {
            guest: Ipv4Addr::new(10, 0, 2, 2),
            gateway: Ipv4Addr::new(10, 0, 2, 1),
            pod_ips: vec![Ipv4Addr::new(10, 244, 1, 5)],
        }
    }

    fn cfg() -> NatConfig {
        NatConfig {
            pod_interface: "eth0".into(),
            bridge: "k6t-eth0".into(),
            v4: Some(v4()),
            v6: None,
            ports: vec![],
            port_ranges: vec![],
            istio: false,
        }
    }

    fn tcp(port: u16) -> NatPort {
        NatPort {
            protocol: Protocol::Tcp,
            port,
        }
    }

    #[test]
    fn intervals_are_sorted_merged_and_split_by_protocol() {
        let mut c = cfg();
        c.ports = vec![
            tcp(8050),
            tcp(22),
            NatPort {
                protocol: Protocol::Udp,
                port: 53,
            },
            tcp(23),
            tcp(9000),
        ];
        c.port_ranges = vec![NatPortRange {
            protocol: Protocol::Tcp,
            start: 8000,
            end: 8100,
        }];
        assert_eq!(
            merged_intervals(&c, Protocol::Tcp),
            vec![(22, 23), (8000, 8100), (9000, 9000)]
        );
        assert_eq!(merged_intervals(&c, Protocol::Udp), vec![(53, 53)]);
    }

    proptest::proptest! {
        /// Merged intervals are sorted, disjoint, not adjacent, and cover exactly the ports
        /// and ranges given.
        #[test]
        fn merged_intervals_cover_exactly_the_input(
            ports in proptest::collection::vec(1u16..200, 0..12),
            ranges in proptest::collection::vec((1u16..200, 0u16..40), 0..6),
        ) {
            let mut c = cfg();
            c.ports = ports.iter().map(|&p| tcp(p)).collect();
            c.port_ranges = ranges
                .iter()
                .map(|&(s, len)| NatPortRange { protocol: Protocol::Tcp, start: s, end: s + len })
                .collect();
            let iv = merged_intervals(&c, Protocol::Tcp);
            for w in iv.windows(2) {
                proptest::prop_assert!(u32::from(w[0].1) + 1 < u32::from(w[1].0), "{iv:?}");
            }
            for p in 0u16..=260 {
                let want = ports.contains(&p) || ranges.iter().any(|&(s, l)| s <= p && p <= s + l);
                let got = iv.iter().any(|&(a, b)| a <= p && p <= b);
                proptest::prop_assert_eq!(want, got, "port {}", p);
            }
            proptest::prop_assert!(ruleset(&c).is_ok());
        }
    }

    #[test]
    fn invalid_configs_are_refused_with_the_reason() {
        let mut c = cfg();
        c.pod_interface = "a-name-much-too-long".into();
        assert!(matches!(ruleset(&c), Err(NatError::Invalid(m)) if m.contains("interface name")));
        let mut c = cfg();
        c.v4 = None;
        assert!(ruleset(&c).is_err());
        let mut c = cfg();
        c.istio = true;
        c.ports = vec![tcp(15001)];
        let e = ruleset(&c).unwrap_err();
        assert!(
            e.to_string().contains("reserved by the Istio sidecar"),
            "{e}"
        );
        assert_eq!(e.exit_kind(), ExitKind::InvalidSpec);
        let mut c = cfg();
        c.v4.as_mut().unwrap().gateway = Ipv4Addr::new(10, 0, 2, 2);
        assert!(ruleset(&c).is_err());
    }

    #[test]
    fn ports_from_the_spec() {
        use crate::spec::vmi::{Port, PortRange};
        let p = Port {
            name: None,
            protocol: Some("udp".into()),
            port: 53,
        };
        assert_eq!(
            NatPort::from_spec(&p).unwrap(),
            NatPort {
                protocol: Protocol::Udp,
                port: 53
            }
        );
        let p = Port {
            name: None,
            protocol: None,
            port: 70000,
        };
        assert!(NatPort::from_spec(&p).is_err());
        let p = Port {
            name: None,
            protocol: Some("SCTP".into()),
            port: 80,
        };
        assert!(NatPort::from_spec(&p).is_err());
        let r = PortRange {
            protocol: None,
            start: 20,
            end: 10,
        };
        assert!(NatPortRange::from_spec(&r).is_err());
    }

    #[test]
    fn istio_annotation() {
        let mut a = BTreeMap::new();
        assert!(!istio_injected(&a));
        a.insert(ISTIO_INJECT_ANNOTATION.to_owned(), "true".to_owned());
        assert!(istio_injected(&a));
        a.insert(ISTIO_INJECT_ANNOTATION.to_owned(), "false".to_owned());
        assert!(!istio_injected(&a));
    }

    #[test]
    fn missing_nft_is_a_precondition_error() {
        let e = Nft::with_command(["/nonexistent/nft-for-launcher-test"])
            .apply(&cfg())
            .unwrap_err();
        assert!(matches!(e, NatError::NftMissing { .. }), "{e}");
        assert_eq!(e.exit_kind(), ExitKind::Precondition);
        assert!(e.to_string().contains("nft"), "{e}");
    }

    #[test]
    fn failing_nft_carries_its_stderr() {
        // `sh -c '...' nft` stands in for an nft that refuses the batch.
        let e = Nft::with_command([
            "sh",
            "-c",
            "echo 'Error: Could not process rule: X' >&2; exit 1",
            "nft",
        ])
        .apply(&cfg())
        .unwrap_err();
        assert_eq!(e.exit_kind(), ExitKind::Precondition);
        assert!(e.to_string().contains("Could not process rule: X"), "{e}");
        // nft fails whatever it is given: that is no particular command's fault.
        assert!(
            matches!(
                e,
                NatError::NftFailed {
                    first_rejected: None,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn every_configured_family_is_deleted_before_it_is_added() {
        let rs = serde_json::to_value(ruleset(&cfg()).unwrap()).unwrap();
        let cmds = rs["nftables"].as_array().unwrap();
        let first: Vec<String> = cmds[..5]
            .iter()
            .map(|c| {
                let (verb, obj) = c.as_object().unwrap().iter().next().unwrap();
                let (kind, body) = obj.as_object().unwrap().iter().next().unwrap();
                format!(
                    "{verb} {kind} {} {}",
                    body["family"].as_str().unwrap(),
                    body["name"]
                )
            })
            .collect();
        assert_eq!(
            first,
            [
                "add table ip \"kubevirt_nat\"",
                "delete table ip \"kubevirt_nat\"",
                "add table ip \"kubevirt_nat\"",
                "add chain ip \"prerouting\"",
                "add chain ip \"output\"",
            ]
        );
        // The unconfigured IPv6 family is cleaned up in the same transaction.
        let last: Vec<&serde_json::Value> = cmds[cmds.len() - 2..].iter().collect();
        assert_eq!(last[0]["add"]["table"]["family"], "ip6");
        assert!(last[1]["delete"]["table"].is_object());
    }
}
