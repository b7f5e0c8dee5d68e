//! Exact, complete validation. (Being filled in: see issue 2.)

use super::{Problem, Vmi};

/// Reports every problem, each with its JSON path and the offending value.
pub fn validate(_vmi: &Vmi) -> Result<(), Vec<Problem>> {
    Ok(())
}
