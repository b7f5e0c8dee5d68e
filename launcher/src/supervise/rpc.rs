//! A minimal client of libvirt's remote protocol: XDR over the daemon's unix socket, for the
//! handful of procedures the launcher uses (open, define, lookup, create, state, shutdown,
//! destroy, undefine, lifecycle and reboot event callbacks, close).
//!
//! It replaces `libvirt.so` (and its ~55 shared libraries): see docs/run.md, "Memory".
//!
//! Wire format (libvirt's `virnetprotocol.x` / `remote_protocol.x`): every packet is a 4-byte
//! big-endian length (counting itself), a 24-byte header (program, version, procedure, type,
//! serial, status) and an XDR body. Calls get a REPLY with the same serial; a REPLY with status
//! ERROR carries a `remote_error`. Events arrive as MESSAGE packets of the remote program,
//! their body starting with the callback id that registration returned.
//!
//! Keepalive: the daemon only pings clients that asked for it (`CONNECT_SUPPORTS_FEATURE` with
//! `VIR_DRV_FEATURE_PROGRAM_KEEPALIVE`), which this client never does; a PING that comes
//! anyway is answered with a PONG. A dead daemon is seen as EOF on the socket, which ends every
//! pending call with [`RpcError::Closed`] and sends [`Event::ConnectionClosed`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// libvirt's remote program (`REMOTE_PROGRAM`) and its version.
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
pub const REMOTE_VERSION: u32 = 1;
/// The keepalive program (`KEEPALIVE_PROGRAM`, "keep" in ASCII) and its version.
pub const KEEPALIVE_PROGRAM: u32 = 0x6b65_6570;
pub const KEEPALIVE_VERSION: u32 = 1;
pub const KEEPALIVE_PING: i32 = 1;
pub const KEEPALIVE_PONG: i32 = 2;

/// The remote procedures used here (numbers from `remote_protocol.x`, checked against the
/// procedure names in libvirt 11.3's systemtap tapset `libvirt_functions.stp`).
pub mod procs {
    pub const CONNECT_OPEN: i32 = 1;
    pub const CONNECT_CLOSE: i32 = 2;
    pub const CONNECT_GET_DOMAIN_CAPABILITIES: i32 = 342;
    pub const AUTH_LIST: i32 = 66;
    pub const DOMAIN_LOOKUP_BY_NAME: i32 = 23;
    pub const DOMAIN_IS_ACTIVE: i32 = 150;
    pub const DOMAIN_CREATE_WITH_FLAGS: i32 = 196;
    pub const DOMAIN_GET_STATE: i32 = 212;
    pub const DOMAIN_UNDEFINE_FLAGS: i32 = 231;
    pub const DOMAIN_DESTROY_FLAGS: i32 = 234;
    pub const DOMAIN_SHUTDOWN_FLAGS: i32 = 258;
    pub const CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY: i32 = 316;
    pub const CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY: i32 = 317;
    pub const DOMAIN_EVENT_CALLBACK_LIFECYCLE: i32 = 318;
    pub const DOMAIN_EVENT_CALLBACK_REBOOT: i32 = 319;
    pub const DOMAIN_DEFINE_XML_FLAGS: i32 = 350;
}

/// Packet types (`virNetMessageType`).
pub const TYPE_CALL: u32 = 0;
pub const TYPE_REPLY: u32 = 1;
pub const TYPE_MESSAGE: u32 = 2;
/// Reply status (`virNetMessageStatus`).
pub const STATUS_OK: u32 = 0;
pub const STATUS_ERROR: u32 = 1;

/// libvirt's constants the launcher uses (values from libvirt-api.xml).
pub mod consts {
    pub const EVENT_ID_LIFECYCLE: i32 = 0;
    pub const EVENT_ID_REBOOT: i32 = 1;
    pub const EVENT_DEFINED: i32 = 0;
    pub const EVENT_UNDEFINED: i32 = 1;
    pub const EVENT_STARTED: i32 = 2;
    pub const EVENT_SUSPENDED: i32 = 3;
    pub const EVENT_RESUMED: i32 = 4;
    pub const EVENT_STOPPED: i32 = 5;
    pub const EVENT_SHUTDOWN: i32 = 6;
    pub const EVENT_PMSUSPENDED: i32 = 7;
    pub const EVENT_CRASHED: i32 = 8;
    pub const EVENT_STOPPED_SHUTDOWN: i32 = 0;
    pub const EVENT_STOPPED_DESTROYED: i32 = 1;
    pub const EVENT_STOPPED_CRASHED: i32 = 2;
    pub const EVENT_STOPPED_MIGRATED: i32 = 3;
    pub const EVENT_STOPPED_SAVED: i32 = 4;
    pub const EVENT_STOPPED_FAILED: i32 = 5;
    pub const EVENT_STOPPED_FROM_SNAPSHOT: i32 = 6;
    pub const DOMAIN_RUNNING: i32 = 1;
    pub const UNDEFINE_KEEP_NVRAM: u32 = 8;
    pub const SHUTDOWN_ACPI_POWER_BTN: u32 = 1;
    pub const CLOSE_REASON_EOF: i32 = 1;
    pub const ERR_NO_DOMAIN: i32 = 42;
}

/// The largest packet accepted (libvirt's own limit is 32 MiB + 4 bytes of length).
const MAX_PACKET: usize = 32 * 1024 * 1024 + 4;
const HEADER_LEN: usize = 24;

/// What the daemon told us, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `VIR_DOMAIN_EVENT_ID_LIFECYCLE`: `event` is a `virDomainEventType`, `detail` its detail.
    Lifecycle {
        domain: String,
        event: i32,
        detail: i32,
    },
    /// `VIR_DOMAIN_EVENT_ID_REBOOT`: the guest reset itself (qemu keeps running).
    Reboot { domain: String },
    /// The connection closed (`virConnectCloseReason`): the daemon died or restarted.
    ConnectionClosed { reason: i32 },
}

/// An error the daemon returned (`remote_error`): libvirt's own code, domain and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    pub code: i32,
    pub domain: i32,
    pub message: Option<String>,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{m}")?,
            None => write!(f, "libvirt error")?,
        }
        write!(
            f,
            " (libvirt error code {}, domain {})",
            self.code, self.domain
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    Remote(RemoteError),
    #[error(
        "cannot connect to libvirt's socket {}: {source} (is the daemon running, and may this \
         user open its socket?)",
        socket.display()
    )]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the libvirt connection closed (the daemon exited or restarted)")]
    Closed,
    #[error("talking to libvirt: {0}")]
    Io(#[from] std::io::Error),
    #[error("libvirt protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Unsupported(String),
}

impl RpcError {
    /// The libvirt error code, for errors the daemon returned.
    pub fn code(&self) -> Option<i32> {
        match self {
            RpcError::Remote(r) => Some(r.code),
            _ => None,
        }
    }
}

// --- XDR ---------------------------------------------------------------------------------------

/// An XDR encoder (RFC 4506 big-endian, 4-byte aligned).
#[derive(Debug, Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn pad(&mut self, len: usize) {
        self.0.resize(self.0.len() + (4 - len % 4) % 4, 0);
    }
    /// `remote_nonnull_string`.
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self.pad(s.len());
        self
    }
    /// `remote_string` (an optional string: a 0/1 discriminant, then the string).
    pub fn opt_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.u32(1).string(s),
            None => self.u32(0),
        }
    }
    /// `remote_nonnull_domain`: name, 16-byte uuid, id.
    pub fn domain(&mut self, d: &DomainRef) -> &mut Self {
        self.string(&d.name);
        self.0.extend_from_slice(&d.uuid);
        self.i32(d.id)
    }
}

/// An XDR decoder over one packet body.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], RpcError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                RpcError::Protocol(format!(
                    "truncated body: {n} bytes wanted at offset {} of {}",
                    self.pos,
                    self.buf.len()
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u32(&mut self) -> Result<u32, RpcError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn i32(&mut self) -> Result<i32, RpcError> {
        Ok(self.u32()? as i32)
    }
    pub fn string(&mut self) -> Result<String, RpcError> {
        let len = self.u32()? as usize;
        if len > MAX_PACKET {
            return Err(RpcError::Protocol(format!("string of {len} bytes")));
        }
        let s = self.take(len)?;
        let s = String::from_utf8_lossy(s).into_owned();
        self.take((4 - len % 4) % 4)?;
        Ok(s)
    }
    pub fn opt_string(&mut self) -> Result<Option<String>, RpcError> {
        match self.u32()? {
            0 => Ok(None),
            1 => Ok(Some(self.string()?)),
            d => Err(RpcError::Protocol(format!("optional discriminant {d}"))),
        }
    }
    pub fn domain(&mut self) -> Result<DomainRef, RpcError> {
        let name = self.string()?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(self.take(16)?);
        let id = self.i32()?;
        Ok(DomainRef { name, uuid, id })
    }
    pub fn rest(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// A domain as the protocol names it (`remote_nonnull_domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRef {
    pub name: String,
    pub uuid: [u8; 16],
    pub id: i32,
}

/// The packet header after the length word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub program: u32,
    pub version: u32,
    pub procedure: i32,
    pub kind: u32,
    pub serial: u32,
    pub status: u32,
}

/// One whole packet: length, header, body.
pub fn encode_packet(h: &Header, body: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.u32((4 + HEADER_LEN + body.len()) as u32)
        .u32(h.program)
        .u32(h.version)
        .i32(h.procedure)
        .u32(h.kind)
        .u32(h.serial)
        .u32(h.status);
    e.0.extend_from_slice(body);
    e.0
}

/// Splits a packet (without its length word) into header and body.
pub fn decode_packet(p: &[u8]) -> Result<(Header, &[u8]), RpcError> {
    if p.len() < HEADER_LEN {
        return Err(RpcError::Protocol(format!(
            "packet of {} bytes has no header",
            p.len()
        )));
    }
    let mut d = Dec::new(&p[..HEADER_LEN]);
    let h = Header {
        program: d.u32()?,
        version: d.u32()?,
        procedure: d.i32()?,
        kind: d.u32()?,
        serial: d.u32()?,
        status: d.u32()?,
    };
    Ok((h, &p[HEADER_LEN..]))
}

/// `remote_error` (code, domain, message; the rest of the struct is not needed).
pub fn decode_error(body: &[u8]) -> Result<RemoteError, RpcError> {
    let mut d = Dec::new(body);
    Ok(RemoteError {
        code: d.i32()?,
        domain: d.i32()?,
        message: d.opt_string()?,
    })
}

/// Decodes an event MESSAGE of the remote program: the callback id and the event.
pub fn decode_event(procedure: i32, body: &[u8]) -> Result<Option<(i32, Event)>, RpcError> {
    let mut d = Dec::new(body);
    match procedure {
        procs::DOMAIN_EVENT_CALLBACK_LIFECYCLE => {
            let id = d.i32()?;
            let dom = d.domain()?;
            let event = d.i32()?;
            let detail = d.i32()?;
            Ok(Some((
                id,
                Event::Lifecycle {
                    domain: dom.name,
                    event,
                    detail,
                },
            )))
        }
        procs::DOMAIN_EVENT_CALLBACK_REBOOT => {
            let id = d.i32()?;
            let dom = d.domain()?;
            Ok(Some((id, Event::Reboot { domain: dom.name })))
        }
        _ => Ok(None),
    }
}

// --- URIs --------------------------------------------------------------------------------------

/// Where to connect for `uri`, and the name to open there (transport and client-side
/// parameters removed, as libvirt's remote driver does).
pub fn resolve_uri(uri: &str) -> Result<(PathBuf, String), RpcError> {
    let unsupported = || {
        RpcError::Unsupported(format!(
            "libvirt URI {uri:?} is not supported by the launcher's built-in libvirt client: use \
             a local one (qemu:///system, qemu:///session, or qemu+unix:///system?socket=PATH)"
        ))
    };
    let (scheme, rest) = uri.split_once("://").ok_or_else(unsupported)?;
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (scheme, None),
    };
    if !matches!(transport, None | Some("unix")) || driver != "qemu" {
        return Err(unsupported());
    }
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    // No host part: "qemu:///system" splits into "" and "/system".
    let Some(path) = path.strip_prefix('/') else {
        return Err(unsupported());
    };
    let path = format!("/{path}");
    let mut socket = None;
    let mut kept = Vec::new();
    for kv in query.into_iter().flat_map(|q| q.split('&')) {
        match kv.split_once('=') {
            Some(("socket", v)) => socket = Some(PathBuf::from(v)),
            Some(("mode", _)) => {}
            _ if kv.is_empty() => {}
            _ => kept.push(kv),
        }
    }
    let mut name = format!("{driver}://{path}");
    if !kept.is_empty() {
        name.push('?');
        name.push_str(&kept.join("&"));
    }
    let socket = match socket {
        Some(s) => s,
        None => default_socket(&path).ok_or_else(unsupported)?,
    };
    Ok((socket, name))
}

fn default_socket(path: &str) -> Option<PathBuf> {
    let dir = match path {
        "/system" => PathBuf::from("/run/libvirt"),
        "/session" => PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join("libvirt"),
        _ => return None,
    };
    // The modular daemon's socket when there is one, else the monolithic libvirtd's.
    let modular = dir.join("virtqemud-sock");
    Some(if modular.exists() {
        modular
    } else {
        dir.join("libvirt-sock")
    })
}

// --- the client --------------------------------------------------------------------------------

type Pending = HashMap<u32, oneshot::Sender<Result<Vec<u8>, RpcError>>>;

struct Shared {
    pending: Mutex<Pending>,
    /// The callback ids registered on this connection (events of other ids are dropped).
    callbacks: Mutex<Vec<i32>>,
    /// Set once we close: the reader then reports no ConnectionClosed.
    closing: AtomicBool,
    dead: AtomicBool,
    /// Keepalive PINGs the daemon sent (and we answered).
    pings: AtomicU32,
}

/// One open connection to a libvirt daemon.
pub struct Client {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Shared>,
    serial: AtomicU32,
    reader: tokio::task::JoinHandle<()>,
    pub socket: PathBuf,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.reader.abort();
    }
}

impl Client {
    /// Connects to `uri`'s daemon and opens the connection; events (once registered with
    /// [`Client::register_events`]) and the connection's end go to `events`.
    pub async fn open(uri: &str, events: mpsc::UnboundedSender<Event>) -> Result<Self, RpcError> {
        let (socket, name) = resolve_uri(uri)?;
        Self::open_socket(&socket, &name, events).await
    }

    /// Connects to `socket` and opens `name` there.
    pub async fn open_socket(
        socket: &Path,
        name: &str,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self, RpcError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| RpcError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?;
        let (rd, wr) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(wr));
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            callbacks: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            pings: AtomicU32::new(0),
        });
        let reader = tokio::spawn(read_loop(rd, writer.clone(), shared.clone(), events));
        let c = Client {
            writer,
            shared,
            serial: AtomicU32::new(1),
            reader,
            socket: socket.to_path_buf(),
        };
        c.authenticate().await?;
        let mut e = Enc::default();
        e.opt_string(Some(name)).u32(0);
        c.call(procs::CONNECT_OPEN, e.0)
            .await
            .map_err(|e| match e {
                RpcError::Remote(mut r) => {
                    let m = r.message.take().unwrap_or_default();
                    r.message = Some(format!("opening {name}: {m}"));
                    RpcError::Remote(r)
                }
                e => e,
            })?;
        Ok(c)
    }

    /// `AUTH_LIST`: the unix socket needs no authentication ("none"), or the daemon waived
    /// polkit for a root client (then it also answers "none").
    async fn authenticate(&self) -> Result<(), RpcError> {
        let body = self.call(procs::AUTH_LIST, Vec::new()).await?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        let mut types = Vec::new();
        for _ in 0..n.min(20) {
            types.push(d.i32()?);
        }
        if types.is_empty() || types.contains(&0) {
            return Ok(());
        }
        Err(RpcError::Unsupported(format!(
            "libvirt's socket {} asks for authentication (types {types:?}: 1 = SASL, 2 = polkit), \
             which the launcher's client does not do; set auth_unix_rw = \"none\" for it",
            self.socket.display()
        )))
    }

    /// How many keepalive PINGs the daemon sent on this connection (each answered with a PONG).
    pub fn pings_answered(&self) -> u32 {
        self.shared.pings.load(Ordering::SeqCst)
    }

    /// Whether the daemon closed the connection.
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::SeqCst)
    }

    /// One call: sends it and waits for its reply body.
    pub async fn call(&self, procedure: i32, body: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.shared.pending.lock().expect("pending calls lock");
            if self.shared.dead.load(Ordering::SeqCst) {
                return Err(RpcError::Closed);
            }
            p.insert(serial, tx);
        }
        let pkt = encode_packet(
            &Header {
                program: REMOTE_PROGRAM,
                version: REMOTE_VERSION,
                procedure,
                kind: TYPE_CALL,
                serial,
                status: STATUS_OK,
            },
            &body,
        );
        let written = {
            let mut w = self.writer.lock().await;
            w.write_all(&pkt).await
        };
        if let Err(e) = written {
            self.shared
                .pending
                .lock()
                .expect("pending calls lock")
                .remove(&serial);
            return Err(if self.is_dead() {
                RpcError::Closed
            } else {
                RpcError::Io(e)
            });
        }
        rx.await.map_err(|_| RpcError::Closed)?
    }

    /// Registers lifecycle and reboot callbacks for every domain.
    pub async fn register_events(&self) -> Result<(), RpcError> {
        for id in [consts::EVENT_ID_LIFECYCLE, consts::EVENT_ID_REBOOT] {
            let mut e = Enc::default();
            e.i32(id).u32(0); // eventID, no domain filter
            let body = self
                .call(procs::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY, e.0)
                .await?;
            let cb = Dec::new(&body).i32()?;
            self.shared
                .callbacks
                .lock()
                .expect("callbacks lock")
                .push(cb);
        }
        Ok(())
    }

    /// Deregisters the callbacks and closes the connection (best effort).
    pub async fn close(&self) {
        let ids = std::mem::take(&mut *self.shared.callbacks.lock().expect("callbacks lock"));
        for id in ids {
            let mut e = Enc::default();
            e.i32(id);
            let _ = self
                .call(procs::CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY, e.0)
                .await;
        }
        self.shared.closing.store(true, Ordering::SeqCst);
        let _ = self.call(procs::CONNECT_CLOSE, Vec::new()).await;
    }

    /// The domain capabilities of the default emulator (virConnectGetDomainCapabilities with
    /// no arguments). The first call makes the QEMU driver probe qemu, which the first define
    /// would otherwise wait for.
    pub async fn domain_capabilities(&self) -> Result<String, RpcError> {
        let mut e = Enc::default();
        e.opt_string(None)
            .opt_string(None)
            .opt_string(None)
            .opt_string(None)
            .u32(0);
        let body = self
            .call(procs::CONNECT_GET_DOMAIN_CAPABILITIES, e.0)
            .await?;
        Dec::new(&body).string()
    }

    pub async fn lookup_by_name(&self, name: &str) -> Result<DomainRef, RpcError> {
        let mut e = Enc::default();
        e.string(name);
        let body = self.call(procs::DOMAIN_LOOKUP_BY_NAME, e.0).await?;
        Dec::new(&body).domain()
    }

    pub async fn define_xml(&self, xml: &str, flags: u32) -> Result<DomainRef, RpcError> {
        let mut e = Enc::default();
        e.string(xml).u32(flags);
        let body = self.call(procs::DOMAIN_DEFINE_XML_FLAGS, e.0).await?;
        Dec::new(&body).domain()
    }

    pub async fn create(&self, d: &DomainRef, flags: u32) -> Result<DomainRef, RpcError> {
        let body = self
            .call(procs::DOMAIN_CREATE_WITH_FLAGS, dom_flags(d, flags))
            .await?;
        Dec::new(&body).domain()
    }

    pub async fn is_active(&self, d: &DomainRef) -> Result<bool, RpcError> {
        let mut e = Enc::default();
        e.domain(d);
        let body = self.call(procs::DOMAIN_IS_ACTIVE, e.0).await?;
        Ok(Dec::new(&body).i32()? != 0)
    }

    /// `(state, reason)`, as virDomainGetState.
    pub async fn get_state(&self, d: &DomainRef) -> Result<(i32, i32), RpcError> {
        let body = self.call(procs::DOMAIN_GET_STATE, dom_flags(d, 0)).await?;
        let mut dec = Dec::new(&body);
        Ok((dec.i32()?, dec.i32()?))
    }

    pub async fn shutdown(&self, d: &DomainRef, flags: u32) -> Result<(), RpcError> {
        self.call(procs::DOMAIN_SHUTDOWN_FLAGS, dom_flags(d, flags))
            .await
            .map(drop)
    }

    pub async fn destroy(&self, d: &DomainRef, flags: u32) -> Result<(), RpcError> {
        self.call(procs::DOMAIN_DESTROY_FLAGS, dom_flags(d, flags))
            .await
            .map(drop)
    }

    pub async fn undefine(&self, d: &DomainRef, flags: u32) -> Result<(), RpcError> {
        self.call(procs::DOMAIN_UNDEFINE_FLAGS, dom_flags(d, flags))
            .await
            .map(drop)
    }
}

fn dom_flags(d: &DomainRef, flags: u32) -> Vec<u8> {
    let mut e = Enc::default();
    e.domain(d).u32(flags);
    e.0
}

async fn read_packet(rd: &mut tokio::net::unix::OwnedReadHalf) -> Result<Vec<u8>, RpcError> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if !(4 + HEADER_LEN..=MAX_PACKET).contains(&len) {
        return Err(RpcError::Protocol(format!("packet length {len}")));
    }
    let mut p = vec![0u8; len - 4];
    rd.read_exact(&mut p).await?;
    Ok(p)
}

async fn read_loop(
    mut rd: tokio::net::unix::OwnedReadHalf,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
) {
    let why = loop {
        let p = match read_packet(&mut rd).await {
            Ok(p) => p,
            Err(e) => break e,
        };
        let (h, body) = match decode_packet(&p) {
            Ok(x) => x,
            Err(e) => break e,
        };
        match (h.program, h.kind) {
            (REMOTE_PROGRAM, TYPE_REPLY) => {
                let tx = shared
                    .pending
                    .lock()
                    .expect("pending calls lock")
                    .remove(&h.serial);
                let Some(tx) = tx else {
                    tracing::debug!(serial = h.serial, "libvirt reply to no pending call");
                    continue;
                };
                let r = if h.status == STATUS_OK {
                    Ok(body.to_vec())
                } else {
                    decode_error(body).and_then(|e| Err(RpcError::Remote(e)))
                };
                let _ = tx.send(r);
            }
            (REMOTE_PROGRAM, TYPE_MESSAGE) => match decode_event(h.procedure, body) {
                Ok(Some((id, ev))) => {
                    if shared
                        .callbacks
                        .lock()
                        .expect("callbacks lock")
                        .contains(&id)
                    {
                        let _ = events.send(ev);
                    }
                }
                Ok(None) => {
                    tracing::debug!(procedure = h.procedure, "ignoring a libvirt event")
                }
                Err(e) => tracing::warn!(error = %e, "undecodable libvirt event"),
            },
            (KEEPALIVE_PROGRAM, TYPE_MESSAGE) if h.procedure == KEEPALIVE_PING => {
                shared.pings.fetch_add(1, Ordering::SeqCst);
                let pong = encode_packet(
                    &Header {
                        program: KEEPALIVE_PROGRAM,
                        version: KEEPALIVE_VERSION,
                        procedure: KEEPALIVE_PONG,
                        kind: TYPE_MESSAGE,
                        serial: 0,
                        status: STATUS_OK,
                    },
                    &[],
                );
                let w = writer.clone();
                tokio::spawn(async move {
                    let _ = w.lock().await.write_all(&pong).await;
                });
            }
            _ => tracing::debug!(?h, "ignoring a libvirt packet"),
        }
    };
    let pending = {
        let mut p = shared.pending.lock().expect("pending calls lock");
        shared.dead.store(true, Ordering::SeqCst);
        std::mem::take(&mut *p)
    };
    for (_, tx) in pending {
        let _ = tx.send(Err(RpcError::Closed));
    }
    if !shared.closing.load(Ordering::SeqCst) {
        tracing::debug!(error = %why, "libvirt connection ended");
        let _ = events.send(Event::ConnectionClosed {
            reason: consts::CLOSE_REASON_EOF,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom() -> DomainRef {
        DomainRef {
            name: "ns_vm".into(),
            uuid: [
                0x0b, 0xe1, 0xc4, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1,
            ],
            id: 7,
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn strings_are_length_prefixed_and_padded_to_four() {
        let mut e = Enc::default();
        e.string("abcde").opt_string(None).opt_string(Some(""));
        assert_eq!(
            hex(&e.0),
            concat!("00000005", "61626364", "65000000", "00000000", "00000001", "00000000")
        );
        let mut d = Dec::new(&e.0);
        assert_eq!(d.string().unwrap(), "abcde");
        assert_eq!(d.opt_string().unwrap(), None);
        assert_eq!(d.opt_string().unwrap(), Some(String::new()));
        assert_eq!(d.rest(), 0);
    }

    #[test]
    fn a_call_packet_is_byte_exact() {
        // DOMAIN_SHUTDOWN_FLAGS(ns_vm, ACPI_POWER_BTN), serial 5.
        let pkt = encode_packet(
            &Header {
                program: REMOTE_PROGRAM,
                version: REMOTE_VERSION,
                procedure: procs::DOMAIN_SHUTDOWN_FLAGS,
                kind: TYPE_CALL,
                serial: 5,
                status: STATUS_OK,
            },
            &dom_flags(&dom(), consts::SHUTDOWN_ACPI_POWER_BTN),
        );
        let want = concat!(
            "00000040", // length: 4 + 24 + 36
            "20008086",
            "00000001",
            "00000102",
            "00000000",
            "00000005",
            "00000000",
            "00000005",
            "6e735f766d000000",                 // "ns_vm", padded
            "0be1c400000040008000000000000001", // uuid
            "00000007",                         // id
            "00000001",                         // flags
        );
        assert_eq!(hex(&pkt), want);
        let (h, body) = decode_packet(&pkt[4..]).unwrap();
        assert_eq!(h.procedure, 258);
        assert_eq!(h.serial, 5);
        let mut d = Dec::new(body);
        assert_eq!(d.domain().unwrap(), dom());
        assert_eq!(d.u32().unwrap(), 1);
    }

    #[test]
    fn an_error_reply_decodes_to_libvirts_code_and_text() {
        // remote_error: code 42 (VIR_ERR_NO_DOMAIN), domain 10 (QEMU), message, level 2,
        // no dom, no str1..3, int1 -1, int2 -1, no net.
        let msg = "Domain not found: no domain with matching name 'x'";
        let mut e = Enc::default();
        e.i32(42).i32(10).opt_string(Some(msg)).i32(2).u32(0);
        e.opt_string(Some(msg))
            .opt_string(Some("x"))
            .opt_string(None);
        e.i32(-1).i32(-1).u32(0);
        let err = decode_error(&e.0).unwrap();
        assert_eq!(err.code, consts::ERR_NO_DOMAIN);
        assert_eq!(err.domain, 10);
        assert_eq!(err.message.as_deref(), Some(msg));
        let shown = RpcError::Remote(err).to_string();
        assert!(shown.starts_with(msg), "{shown}");
        assert!(shown.contains("code 42"), "{shown}");
        // A truncated error is a protocol error, not a panic.
        assert!(matches!(
            decode_error(&e.0[..10]),
            Err(RpcError::Protocol(_))
        ));
    }

    #[test]
    fn lifecycle_and_reboot_messages_decode_with_their_callback_id() {
        let mut e = Enc::default();
        e.i32(3)
            .domain(&dom())
            .i32(consts::EVENT_STOPPED)
            .i32(consts::EVENT_STOPPED_SHUTDOWN);
        let pkt = encode_packet(
            &Header {
                program: REMOTE_PROGRAM,
                version: REMOTE_VERSION,
                procedure: procs::DOMAIN_EVENT_CALLBACK_LIFECYCLE,
                kind: TYPE_MESSAGE,
                serial: 0,
                status: STATUS_OK,
            },
            &e.0,
        );
        assert_eq!(
            hex(&pkt[..32]),
            concat!(
                "00000048", "20008086", "00000001", "0000013e", "00000002", "00000000", "00000000",
                "00000003"
            )
        );
        let (h, body) = decode_packet(&pkt[4..]).unwrap();
        assert_eq!(
            decode_event(h.procedure, body).unwrap(),
            Some((
                3,
                Event::Lifecycle {
                    domain: "ns_vm".into(),
                    event: 5,
                    detail: 0
                }
            ))
        );
        let mut e = Enc::default();
        e.i32(4).domain(&dom());
        assert_eq!(
            decode_event(procs::DOMAIN_EVENT_CALLBACK_REBOOT, &e.0).unwrap(),
            Some((
                4,
                Event::Reboot {
                    domain: "ns_vm".into()
                }
            ))
        );
        assert_eq!(decode_event(999, &e.0).unwrap(), None);
    }

    #[test]
    fn uris_map_to_a_socket_and_the_name_opened_there() {
        let (s, n) = resolve_uri("qemu+unix:///session?socket=/r/session/libvirt-sock").unwrap();
        assert_eq!(s, PathBuf::from("/r/session/libvirt-sock"));
        assert_eq!(n, "qemu:///session");
        let (s, n) = resolve_uri("qemu+unix:///system?socket=/x/sock").unwrap();
        assert_eq!(
            (s, n.as_str()),
            (PathBuf::from("/x/sock"), "qemu:///system")
        );
        let (s, n) = resolve_uri("qemu:///system").unwrap();
        assert!(s.starts_with("/run/libvirt"), "{}", s.display());
        assert_eq!(n, "qemu:///system");
        for bad in [
            "qemu+ssh://host/system",
            "test:///default",
            "qemu://host/system",
            "x",
        ] {
            let e = resolve_uri(bad).unwrap_err().to_string();
            assert!(e.contains("not supported"), "{bad}: {e}");
        }
    }

    /// A fake daemon on a socketpair: answers AUTH_LIST and CONNECT_OPEN, sends a keepalive
    /// PING (the client must PONG), an event, an error reply, then hangs up.
    #[tokio::test]
    async fn the_client_talks_to_a_fake_daemon_and_sees_it_die() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let daemon = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let reply = |serial, procedure, status, body: &[u8]| {
                encode_packet(
                    &Header {
                        program: REMOTE_PROGRAM,
                        version: 1,
                        procedure,
                        kind: TYPE_REPLY,
                        serial,
                        status,
                    },
                    body,
                )
            };
            let mut procs_seen = Vec::new();
            loop {
                let p = read_packet(&mut rd).await.unwrap();
                let (h, body) = decode_packet(&p).unwrap();
                procs_seen.push((h.program, h.procedure));
                match (h.program, h.procedure) {
                    (REMOTE_PROGRAM, procs::AUTH_LIST) => {
                        let mut e = Enc::default();
                        e.u32(1).i32(0);
                        wr.write_all(&reply(h.serial, h.procedure, 0, &e.0))
                            .await
                            .unwrap();
                    }
                    (REMOTE_PROGRAM, procs::CONNECT_OPEN) => {
                        let mut d = Dec::new(body);
                        assert_eq!(d.opt_string().unwrap().as_deref(), Some("qemu:///system"));
                        wr.write_all(&reply(h.serial, h.procedure, 0, &[]))
                            .await
                            .unwrap();
                        // A ping before anything else.
                        let ping = encode_packet(
                            &Header {
                                program: KEEPALIVE_PROGRAM,
                                version: 1,
                                procedure: KEEPALIVE_PING,
                                kind: TYPE_MESSAGE,
                                serial: 0,
                                status: 0,
                            },
                            &[],
                        );
                        wr.write_all(&ping).await.unwrap();
                    }
                    (KEEPALIVE_PROGRAM, KEEPALIVE_PONG) => {}
                    (REMOTE_PROGRAM, procs::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY) => {
                        let mut e = Enc::default();
                        e.i32(10 + h.serial as i32);
                        wr.write_all(&reply(h.serial, h.procedure, 0, &e.0))
                            .await
                            .unwrap();
                    }
                    (REMOTE_PROGRAM, procs::DOMAIN_LOOKUP_BY_NAME) => {
                        let mut e = Enc::default();
                        e.i32(42).i32(10).opt_string(Some("Domain not found"));
                        e.i32(2).u32(0).u32(0).u32(0).u32(0).i32(0).i32(0).u32(0);
                        wr.write_all(&reply(h.serial, h.procedure, STATUS_ERROR, &e.0))
                            .await
                            .unwrap();
                        // An event for the first registered callback (serial 3 → id 13).
                        let mut e = Enc::default();
                        e.i32(13).domain(&dom()).i32(consts::EVENT_STARTED).i32(0);
                        let ev = encode_packet(
                            &Header {
                                program: REMOTE_PROGRAM,
                                version: 1,
                                procedure: procs::DOMAIN_EVENT_CALLBACK_LIFECYCLE,
                                kind: TYPE_MESSAGE,
                                serial: 0,
                                status: 0,
                            },
                            &e.0,
                        );
                        wr.write_all(&ev).await.unwrap();
                        // And an event for a callback id we never got: dropped.
                        let mut e = Enc::default();
                        e.i32(99).domain(&dom());
                        let ev = encode_packet(
                            &Header {
                                program: REMOTE_PROGRAM,
                                version: 1,
                                procedure: procs::DOMAIN_EVENT_CALLBACK_REBOOT,
                                kind: TYPE_MESSAGE,
                                serial: 0,
                                status: 0,
                            },
                            &e.0,
                        );
                        wr.write_all(&ev).await.unwrap();
                    }
                    (REMOTE_PROGRAM, procs::DOMAIN_GET_STATE) => {
                        // The daemon dies without answering.
                        return procs_seen;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Client::open_socket(&sock, "qemu:///system", tx)
            .await
            .unwrap();
        c.register_events().await.unwrap();
        let e = c.lookup_by_name("nope").await.unwrap_err();
        assert_eq!(e.code(), Some(consts::ERR_NO_DOMAIN));
        assert!(e.to_string().starts_with("Domain not found"), "{e}");
        assert_eq!(
            rx.recv().await,
            Some(Event::Lifecycle {
                domain: "ns_vm".into(),
                event: consts::EVENT_STARTED,
                detail: 0
            })
        );
        let e = c.get_state(&dom()).await.unwrap_err();
        assert!(matches!(e, RpcError::Closed), "{e}");
        assert_eq!(
            rx.recv().await,
            Some(Event::ConnectionClosed {
                reason: consts::CLOSE_REASON_EOF
            })
        );
        assert!(c.is_dead());
        assert_eq!(c.pings_answered(), 1);
        assert!(matches!(c.get_state(&dom()).await, Err(RpcError::Closed)));
        let seen = daemon.await.unwrap();
        assert!(
            seen.contains(&(KEEPALIVE_PROGRAM, KEEPALIVE_PONG)),
            "the PING was answered: {seen:?}"
        );
    }
}
