//! Exit codes and error classification.
//!
//! Modules return typed `thiserror` errors. At the binary's edge (`main.rs`) an `anyhow::Error`
//! is classified into an [`ExitKind`] by walking its chain: the first error in the chain that
//! knows its kind decides. An error nobody classified is an internal error (exit 1).
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done (including guest poweroff and graceful SIGTERM) |
//! | 1 | internal error (a bug: please report it) |
//! | 2 | invalid spec or usage |
//! | 3 | a missing precondition (no eth0, no /dev/kvm with `--accel kvm`, a missing tool) |
//! | 4 | hypervisor failure (qemu crashed, libvirt error) |
//! | 128+n | killed by signal n |

use std::fmt;

/// How a run ended, as a process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitKind {
    /// 0: done.
    Success,
    /// 1: internal error.
    Internal,
    /// 2: invalid spec or usage.
    InvalidSpec,
    /// 3: a missing precondition.
    Precondition,
    /// 4: hypervisor failure.
    Hypervisor,
}

impl ExitKind {
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Success => 0,
            ExitKind::Internal => 1,
            ExitKind::InvalidSpec => 2,
            ExitKind::Precondition => 3,
            ExitKind::Hypervisor => 4,
        }
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ExitKind::Success => "success",
            ExitKind::Internal => "internal error",
            ExitKind::InvalidSpec => "invalid spec or usage",
            ExitKind::Precondition => "missing precondition",
            ExitKind::Hypervisor => "hypervisor failure",
        };
        f.write_str(s)
    }
}

/// Implemented by every typed error that knows which exit code it means.
pub trait Classify {
    fn exit_kind(&self) -> ExitKind;
}

/// A generic classified error, for the few places where a dedicated enum would be overkill.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Classified {
    pub kind: ExitKind,
    pub message: String,
}

impl Classify for Classified {
    fn exit_kind(&self) -> ExitKind {
        self.kind
    }
}

/// A missing precondition (exit 3). `what` names the missing thing.
pub fn precondition(message: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: ExitKind::Precondition,
        message: message.into(),
    }
    .into()
}

/// A hypervisor failure (exit 4).
pub fn hypervisor(message: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: ExitKind::Hypervisor,
        message: message.into(),
    }
    .into()
}

/// Invalid input or usage (exit 2).
pub fn invalid(message: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: ExitKind::InvalidSpec,
        message: message.into(),
    }
    .into()
}

/// "This subcommand is not implemented yet": an internal error (exit 1), never a pretend success.
pub fn not_implemented(what: &str) -> anyhow::Error {
    Classified {
        kind: ExitKind::Internal,
        message: format!("`{what}` is not implemented yet in this version of the launcher"),
    }
    .into()
}

/// Classifies an error chain. Every module's typed error that implements [`Classify`] is listed
/// here; the first match in the chain (outermost first) wins.
pub fn exit_kind_of(err: &anyhow::Error) -> ExitKind {
    for cause in err.chain() {
        if let Some(kind) = classify_one(cause) {
            return kind;
        }
    }
    ExitKind::Internal
}

fn classify_one(e: &(dyn std::error::Error + 'static)) -> Option<ExitKind> {
    macro_rules! try_types {
        ($($t:ty),* $(,)?) => {
            $( if let Some(x) = e.downcast_ref::<$t>() { return Some(x.exit_kind()); } )*
        };
    }
    try_types!(
        Classified,
        crate::spec::SpecError,
        crate::net::NetError,
        crate::net::nat::NatError,
        crate::dhcp::DhcpError,
        crate::domain::DomainError,
        crate::supervise::SuperviseError,
    );
    if e.downcast_ref::<clap::Error>().is_some() {
        return Some(ExitKind::InvalidSpec);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        assert_eq!(ExitKind::Success.code(), 0);
        assert_eq!(ExitKind::Internal.code(), 1);
        assert_eq!(ExitKind::InvalidSpec.code(), 2);
        assert_eq!(ExitKind::Precondition.code(), 3);
        assert_eq!(ExitKind::Hypervisor.code(), 4);
    }

    #[test]
    fn outermost_classified_error_wins_and_context_is_kept() {
        let e = precondition("no /dev/kvm").context("choosing the accelerator");
        assert_eq!(exit_kind_of(&e), ExitKind::Precondition);
        let plain = anyhow::anyhow!("boom");
        assert_eq!(exit_kind_of(&plain), ExitKind::Internal);
    }
}
