#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time. Usage: scripts/fuzz.sh [SECONDS]
# (default 60 per target). Installs cargo-fuzz if missing. Exits non-zero on the first crash;
# the crashing input is left in fuzz/artifacts/<target>/.
#
# Only the stable toolchain exists in CI. cargo-fuzz's default AddressSanitizer needs nightly
# (-Zsanitizer), so targets run with `--sanitizer none`: libFuzzer plus SanitizerCoverage,
# which rustc accepts on stable. cargo-fuzz still passes a few -Z flags to cargo/rustc, hence
# RUSTC_BOOTSTRAP=1 (it only unlocks those flags; the compiler is the same stable one). Safe
# Rust needs no ASan for memory safety; debug assertions stay on (cargo fuzz's default).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
for t in $targets; do
  echo "==> fuzzing $t for ${SECS}s" >&2
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run --sanitizer none "$t" -- \
    -max_total_time="$SECS" -max_len=2048 -rss_limit_mb=2048 -print_final_stats=1
done
