//! The pod network: discover → plan (pure) → apply → teardown, one binding module each.

use crate::cli::{GlobalArgs, NetworkSetupArgs};
use crate::error::{Classify, ExitKind};

pub mod nat;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Other(String),
}

impl Classify for NetError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Internal
    }
}

pub fn cmd_setup(_g: &GlobalArgs, _a: &NetworkSetupArgs) -> anyhow::Result<u8> {
    Err(crate::error::not_implemented("network setup"))
}

pub fn cmd_teardown(_g: &GlobalArgs) -> anyhow::Result<u8> {
    Err(crate::error::not_implemented("network teardown"))
}

pub fn cmd_show(_g: &GlobalArgs) -> anyhow::Result<u8> {
    Err(crate::error::not_implemented("network show"))
}
