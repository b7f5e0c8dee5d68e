//! Integration tests: sandbox (see the module docs as they are filled in).
