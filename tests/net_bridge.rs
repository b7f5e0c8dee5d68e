//! Integration tests: net_bridge (see the module docs as they are filled in).
