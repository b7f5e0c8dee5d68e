//! The libvirt domain: plan (pure) → render (templates) → check; disk preparation.

use crate::cli::{GlobalArgs, RenderArgs};
use crate::error::{Classify, ExitKind};

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Other(String),
}

impl Classify for DomainError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Internal
    }
}

pub fn cmd_render(_g: &GlobalArgs, _a: &RenderArgs) -> anyhow::Result<u8> {
    Err(crate::error::not_implemented("render"))
}
