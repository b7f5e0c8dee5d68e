//! The `run` lifecycle: libvirt daemons as children, the domain, signals, status.

use crate::cli::{GlobalArgs, RunArgs};
use crate::error::{Classify, ExitKind};

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("{0}")]
    Other(String),
}

impl Classify for SuperviseError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Internal
    }
}

pub fn cmd_run(_g: &GlobalArgs, _a: &RunArgs) -> anyhow::Result<u8> {
    Err(crate::error::not_implemented("run"))
}

pub fn cmd_status(_g: &GlobalArgs) -> anyhow::Result<u8> {
    Err(crate::error::not_implemented("status"))
}

pub fn cmd_console(_g: &GlobalArgs) -> anyhow::Result<u8> {
    Err(crate::error::not_implemented("console"))
}
