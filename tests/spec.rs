//! Integration tests: spec (see the module docs as they are filled in).
