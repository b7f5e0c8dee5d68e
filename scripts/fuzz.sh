#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time. Usage: scripts/fuzz.sh [SECONDS]
# (default 60 per target). Installs cargo-fuzz if missing. Exits non-zero on the first crash;
# the crashing input is left in fuzz/artifacts/<target>/.
#
# Only the stable toolchain exists in CI. cargo-fuzz's default AddressSanitizer needs nightly
# (-Zsanitizer), so targets run with `--sanitizer none`: libFuzzer plus SanitizerCoverage
# (-Cpasses=sancov-module and -Cllvm-args), which stable rustc accepts; no RUSTC_BOOTSTRAP is
# needed (verified with rustc 1.95 and cargo-fuzz 0.13.2). Safe Rust needs no ASan for memory
# safety; debug assertions and overflow checks stay on (cargo fuzz's default), which is how
# the dhcproto v6 subtract-overflow was found. The first build of fuzz/target is a full
# release build of the launcher's dependencies: budget it in CI on top of the run time.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

targets=$(cargo fuzz list)
for t in $targets; do
  echo "==> fuzzing $t for ${SECS}s" >&2
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run --sanitizer none "$t" -- \
    -max_total_time="$SECS" -max_len=2048 -rss_limit_mb=2048 -print_final_stats=1
done
