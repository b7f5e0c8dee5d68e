#!/usr/bin/env bash
# Runs every test: formatting, lints, unit and golden tests, root/namespace integration tests,
# end-to-end tests with a real guest, the Kubernetes manifests' schema checks, and bounded fuzz
# runs of the parsers that face the guest. Needs root: tests that need it fail loudly otherwise;
# nothing is skipped silently. CI runs exactly this (.ci/run).
#
# Usage: scripts/test.sh            everything
#        FUZZ_SECONDS=10 scripts/test.sh   shorter fuzz runs (default 45 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s (%s)\n' "$*" "$(date -u +%H:%M:%S)" >&2; }

if [[ $EUID -ne 0 ]]; then
  echo "scripts/test.sh must run as root: the network and VM tests need namespaces and /dev/net/tun" >&2
  exit 3
fi

step "setup (Debian packages, idempotent)"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "Kubernetes manifests (deploy/) against the OpenAPI schema"
bash scripts/validate-manifests.sh

step "fuzzing the guest-facing parsers (${FUZZ_SECONDS:-45} s per target)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-45}"

# Last, so that its summary is the run's closing line.
step "cargo test (unit, golden, integration, end-to-end)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: the sum of every test binary's result line.
awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed;/) p += $(i-1); if ($i ~ /^failed;/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$rc"
