#!/usr/bin/env bash
# Runs every test: formatting, lints, unit and golden tests, root/namespace integration tests,
# end-to-end tests with a real guest, the Kubernetes manifests' schema checks, bounded fuzz
# runs of the parsers that face the guest, and the container image's smoke test. Needs root: tests that need it fail loudly otherwise;
# nothing is skipped silently. CI runs exactly this (.ci/run).
#
# Usage: scripts/test.sh            everything
#        FUZZ_SECONDS=10 scripts/test.sh   shorter fuzz runs (default 45 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's line also says how much disk is free: CI machines can be small, and a full disk
# shows up as a linker "Bus error" or a dpkg write error, far from its cause.
step() { printf '\n==> %s (%s, %s free)\n' "$*" "$(date -u +%H:%M:%S)" "$(df -h --output=avail . | tail -n1 | tr -d ' ')" >&2; }

# Incremental compilation state is useless in a one-shot run and was ~0.8 GB of target/.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# TEST_PRUNE=1 (set by .ci/run) deletes build products as soon as no later step needs them:
# the fuzzers' release build after fuzzing, the test binaries before the image smoke test.
PRUNE=${TEST_PRUNE:-0}

if [[ $EUID -ne 0 ]]; then
  echo "scripts/test.sh must run as root: the network and VM tests need namespaces and /dev/net/tun" >&2
  exit 3
fi

step "setup (Debian packages, idempotent)"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
# --all-targets includes launcher/examples/ (tap_pump, tcp_rr of scripts/bench-bindings.sh), so
# the benchmark's helpers are compiled and linted on every run without a test of their own.
cargo clippy --all-targets --locked -- -D warnings

step "Kubernetes manifests (deploy/) against the OpenAPI schema"
bash scripts/validate-manifests.sh

step "fuzzing the guest-facing parsers (${FUZZ_SECONDS:-45} s per target)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-45}"
if [[ $PRUNE == 1 ]]; then
  rm -rf fuzz/target
fi

step "cargo test (unit, golden, integration, end-to-end)"
log=$(mktemp)
smoke_log=$(mktemp)
trap 'rm -f "$log" "$smoke_log"' EXIT
set +e
cargo test --locked --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# The container image, proven without a container engine (docs/packaging.md): the Dockerfile's
# runtime stage rebuilt with debootstrap from packaging/runtime-packages.txt, then the launcher
# run in it like deploy/launcher-pod.yaml runs it (its capabilities and sysctls, read-only
# /proc/sys) against a sandbox pod and a TCG guest that must get its lease. Runs every time,
# even after a cargo test failure. The root filesystem is cached outside the clone, keyed by a
# hash of the package list, the packaging scripts and the runtime stage: about 2-3 min when
# cached, 4-10 min when it must be built (a fresh machine, or one of those files changed).
if [[ $PRUNE == 1 ]]; then
  # The smoke test needs only target/debug/launcher (rebuilt below if this removes it).
  find target/debug/deps -maxdepth 1 -type f -perm -u+x ! -name '*.*' -delete 2>/dev/null || true
fi
step "image smoke test (scripts/image-smoke.sh)"
export IMAGE_SMOKE_CACHE=${IMAGE_SMOKE_CACHE:-/var/tmp/launcher-image-smoke}
set +e
cargo build --locked -p launcher --bin launcher &&
  IMAGE_SMOKE_BIN=target/debug/launcher bash scripts/image-smoke.sh 2>&1 | tee "$smoke_log"
smoke_rc=${PIPESTATUS[0]}
set -e
# Its "image-smoke: N passed, N failed" line; a run that ended without one counts as 1 failed.
if ! smoke=$(sed -nE 's/^image-smoke: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$smoke_log" | tail -n1) || [[ -z $smoke ]]; then
  echo "image-smoke: FAILED without a result line (exit $smoke_rc): counted as 1 failed" >&2
  smoke="0 1"
elif ((smoke_rc != 0)) && [[ ${smoke#* } == 0 ]]; then
  echo "image-smoke: exit $smoke_rc although it reported no failed check: counted as 1 failed" >&2
  smoke="${smoke% *} 1"
fi
((smoke_rc == 0)) || echo "==> IMAGE SMOKE TEST FAILED (exit $smoke_rc): see the FAIL lines above" >&2
((rc != 0)) || rc=$smoke_rc

# One closing line for the whole run: the sum of every test binary's result line and the image
# smoke test's checks.
awk -v smoke="$smoke" '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed;/) p += $(i-1); if ($i ~ /^failed;/) f += $(i-1) } }
     END { split(smoke, s, " "); printf "%d passed, %d failed\n", p + s[1], f + s[2] }' "$log"
exit "$rc"
