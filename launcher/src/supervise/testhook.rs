//! TEST-ONLY hook: pause `launcher run` at the end of one bring-up phase, so that end-to-end tests
//! can send a signal (or run `launcher status`) at a known point of the bring-up.
//!
//! Set `LAUNCHER_TEST_PAUSE_AT=<phase>` (the phase's name as in status.json: `plumbing`,
//! `dhcp-up`, `libvirt-up`, `defining`). When that phase's work is done (and before the next
//! phase starts), the launcher creates `<run-dir>/test-paused` holding the phase's name and waits
//! until the file is removed. The rest of the launcher (signal listener, reaper, daemon
//! supervisors) keeps running meanwhile. Unset (always, in production), this does nothing.
//! It is not a CLI flag on purpose: nothing but a test should ever set it.

use std::path::Path;
use std::time::Duration;

use super::status::Phase;

/// The environment variable naming the phase to pause at.
pub const PAUSE_ENV: &str = "LAUNCHER_TEST_PAUSE_AT";
/// The marker file in the run dir; the pause lasts until it is removed.
pub const PAUSE_FILE: &str = "test-paused";

/// Pauses when `LAUNCHER_TEST_PAUSE_AT` names `phase` (see the module docs).
pub async fn pause_if_asked(run_dir: &Path, phase: Phase) {
    let Ok(want) = std::env::var(PAUSE_ENV) else {
        return;
    };
    let name = serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if want != name {
        return;
    }
    let marker = run_dir.join(PAUSE_FILE);
    if let Err(e) = std::fs::write(&marker, &name) {
        tracing::warn!(path = %marker.display(), error = %e, "test pause: cannot write the marker");
        return;
    }
    tracing::warn!(phase = %name, marker = %marker.display(), "TEST PAUSE: waiting until the marker is removed");
    while marker.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(phase = %name, "TEST PAUSE over");
}
