//! The only module with `unsafe` code: ioctls and FFI shims, each block with a `// SAFETY:`
//! comment. Everything here exposes a safe API; callers never see raw pointers.
pub mod net;
pub mod proc;
pub mod runperf;
pub mod v6;
