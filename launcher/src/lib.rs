//! launcher: the entrypoint of a KubeVirt-style launcher pod.
//!
//! Data takes one path: [`spec`] (read, default, validate) → [`net`] (discover → plan → apply,
//! per binding) → [`dhcp`] → [`domain`] (plan → render) → [`supervise`]. Pure planning is kept
//! apart from side effects; `unsafe` code lives only in [`sys`].

#![deny(unsafe_code)]

pub mod cli;
pub mod dhcp;
pub mod domain;
pub mod error;
pub mod logging;
pub mod net;
pub mod spec;
pub mod supervise;
#[allow(unsafe_code)]
pub mod sys;
