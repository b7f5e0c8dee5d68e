//! The smallest possible shim over libvirt's event registration, which `virt` 0.4.3 does not
//! wrap: domain lifecycle and reboot events, and the connection's close callback.
//!
//! Each callback forwards a plain [`Event`] into a caller-supplied sink (a channel sender in
//! practice). The sink is boxed and handed to libvirt as the callback's opaque pointer; libvirt
//! frees it through [`free_sink`] when the callback is deregistered or the connection goes away.
//! Callbacks only run while someone runs the event loop (`virt::event::event_run_default_impl`).

use std::ffi::CStr;
use std::sync::Arc;

use libc::{c_int, c_void};
use virt::connect::Connect;
use virt::sys;

/// What libvirt told us, as plain data.
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

/// Where events go. Called on the event-loop thread; must not block.
pub type Sink = Arc<dyn Fn(Event) + Send + Sync>;

/// The callbacks registered on one connection.
#[derive(Debug)]
pub struct Registration {
    callback_ids: Vec<c_int>,
}

fn domain_name(dom: sys::virDomainPtr) -> String {
    if dom.is_null() {
        return String::new();
    }
    // SAFETY: `dom` is a valid domain pointer for the duration of the callback (libvirt owns
    // it); virDomainGetName returns a pointer into that object, which we copy at once.
    let p = unsafe { sys::virDomainGetName(dom) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libvirt returns a NUL-terminated string that lives as long as `dom`.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// # Safety
/// `opaque` must be the pointer made by `Box::into_raw(Box<Sink>)` in [`register`].
unsafe fn sink_of<'a>(opaque: *mut c_void) -> &'a Sink {
    // SAFETY: guaranteed by the caller (only our callbacks call this, with our opaque).
    unsafe { &*(opaque as *const Sink) }
}

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: libvirt passes back the opaque pointer we registered together with this callback.
    let sink = unsafe { sink_of(opaque) };
    sink(Event::Lifecycle {
        domain: domain_name(dom),
        event,
        detail,
    });
    0
}

unsafe extern "C" fn reboot_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    opaque: *mut c_void,
) {
    // SAFETY: as in `lifecycle_cb`.
    let sink = unsafe { sink_of(opaque) };
    sink(Event::Reboot {
        domain: domain_name(dom),
    });
}

unsafe extern "C" fn close_cb(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: as in `lifecycle_cb`.
    let sink = unsafe { sink_of(opaque) };
    sink(Event::ConnectionClosed { reason });
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from `Box::into_raw(Box<Sink>)` and libvirt calls the free
        // callback exactly once, after which it never uses the pointer again.
        drop(unsafe { Box::from_raw(opaque as *mut Sink) });
    }
}

fn boxed(sink: &Sink) -> *mut c_void {
    Box::into_raw(Box::new(sink.clone())) as *mut c_void
}

/// Registers lifecycle, reboot and close callbacks on `conn`, for every domain.
pub fn register(conn: &Connect, sink: &Sink) -> Result<Registration, virt::error::Error> {
    let mut reg = Registration {
        callback_ids: Vec::new(),
    };
    // The lifecycle callback has more arguments than the generic type; libvirt's own
    // VIR_DOMAIN_EVENT_CALLBACK macro casts it the same way, and calls it with its real type.
    type Lifecycle = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: only the pointer's type changes; libvirt calls it back through the lifecycle
    // signature for VIR_DOMAIN_EVENT_ID_LIFECYCLE (documented C API contract).
    let lifecycle: Generic = unsafe { std::mem::transmute::<Lifecycle, Generic>(lifecycle_cb) };
    for (id, cb) in [
        (sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
        (sys::VIR_DOMAIN_EVENT_ID_REBOOT, reboot_cb as Generic),
    ] {
        let opaque = boxed(sink);
        // SAFETY: `conn` is an open connection; the callback and free function match libvirt's
        // prototypes; `opaque` is owned by libvirt from here on (freed by `free_sink`).
        let ret = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                id as c_int,
                Some(cb),
                opaque,
                Some(free_sink),
            )
        };
        if ret < 0 {
            let err = virt::error::Error::last_error();
            // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
            unsafe { free_sink(opaque) };
            deregister(conn, reg);
            return Err(err);
        }
        reg.callback_ids.push(ret);
    }
    let opaque = boxed(sink);
    // SAFETY: as above; one close callback per connection, freed by libvirt via `free_sink`.
    let ret = unsafe {
        sys::virConnectRegisterCloseCallback(conn.as_ptr(), Some(close_cb), opaque, Some(free_sink))
    };
    if ret < 0 {
        // Not fatal: the daemon watcher and the qemu pidfd see a dead daemon anyway.
        // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
        unsafe { free_sink(opaque) };
    }
    Ok(reg)
}

/// Deregisters the domain callbacks (best effort: a dead connection frees them itself).
pub fn deregister(conn: &Connect, reg: Registration) {
    for id in reg.callback_ids {
        // SAFETY: `id` was returned by virConnectDomainEventRegisterAny on this connection.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id);
        }
    }
}
