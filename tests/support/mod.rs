//! Shared helpers for integration tests (sandbox pods, root checks).
