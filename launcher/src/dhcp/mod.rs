//! The embedded DHCP servers: pure request → reply functions, and the socket tasks.

use crate::error::{Classify, ExitKind};

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("{0}")]
    Other(String),
}

impl Classify for DhcpError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Internal
    }
}
