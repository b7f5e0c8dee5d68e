//! Integration tests: dhcp (see the module docs as they are filled in).
