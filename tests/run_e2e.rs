//! Integration tests: run_e2e (see the module docs as they are filled in).
