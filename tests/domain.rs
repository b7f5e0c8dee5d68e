//! Integration tests: domain (see the module docs as they are filled in).
