//! Golden files of network plans (`tests/golden/net/*.json`), shared by net_bridge.rs,
//! net_l2.rs, net_masquerade.rs and passt_e2e.rs. `UPDATE_GOLDEN=1` (any value) rewrites the
//! file instead of comparing; review the result with `git diff tests/golden/net/`.
//!
//! Part of `support` (`support::golden`); test files that do not use `support` include it alone
//! with `#[path = "support/golden.rs"] mod golden;`.
#![allow(dead_code)]

use std::path::Path;

use launcher::net::NetPlan;

/// Compares the pretty JSON of `p` with `tests/golden/net/<file>`, or writes it under
/// `UPDATE_GOLDEN`. `case` names the plan and `test` the test binary in the panic messages.
pub fn net_plan(file: &str, case: &str, p: &NetPlan, test: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/net")
        .join(file);
    let text = serde_json::to_string_pretty(p).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with UPDATE_GOLDEN=1 cargo test --test {test} golden",
            path.display()
        )
    });
    assert!(
        want == text,
        "plan for {case} differs from {}; if intended, regenerate with UPDATE_GOLDEN=1 and review `git diff`\n--- got ---\n{text}",
        path.display()
    );
}
