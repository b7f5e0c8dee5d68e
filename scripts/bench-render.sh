#!/usr/bin/env bash
# Benchmark: `launcher render` (release build) for the richest fixture, against `true` as the
# process-start baseline, and against `launcher --version` (the same binary's own start; it
# links only libc, libm and libgcc_s).
# Reports the median wall time of N runs (default 10), the median peak RSS
# (/usr/bin/time -v), and the work beyond each baseline.
# Targets (issue 4): < 5 ms beyond process start, < 10 MiB peak RSS.
# Usage: scripts/bench-render.sh [FIXTURE] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."

fixture=${1:-tests/fixtures/disks-all.yaml}
runs=${2:-10}
[[ -x /usr/bin/time ]] || { echo "bench-render: /usr/bin/time is missing (Debian package: time)" >&2; exit 3; }

cargo build --release --quiet --bin launcher
bin=target/release/launcher
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One measurement: prints "<wall ns> <max rss KiB>".
measure() {
  local start end
  start=$(date +%s%N)
  /usr/bin/time -v -o "$tmp/time" "$@" >"$tmp/out" 2>"$tmp/err"
  end=$(date +%s%N)
  echo "$((end - start)) $(awk -F': ' '/Maximum resident set size/ {print $2}' "$tmp/time")"
}

median() { sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR%2) print a[m]; else print int((a[m]+a[m+1])/2)}'; }

run_many() {
  local label=$1; shift
  "$@" >/dev/null 2>&1 || { echo "bench-render: $label failed: $*" >&2; "$@" >&2 || true; exit 1; }
  for _ in $(seq "$runs"); do measure "$@"; done >"$tmp/$label"
}

run_many render "$bin" render --accel tcg --log-format json --vmi "$fixture"
run_many baseline true
run_many version "$bin" --version

r_ns=$(cut -d' ' -f1 "$tmp/render" | median)
r_kib=$(cut -d' ' -f2 "$tmp/render" | median)
b_ns=$(cut -d' ' -f1 "$tmp/baseline" | median)
b_kib=$(cut -d' ' -f2 "$tmp/baseline" | median)
v_ns=$(cut -d' ' -f1 "$tmp/version" | median)
v_kib=$(cut -d' ' -f2 "$tmp/version" | median)
bytes=$("$bin" render --accel tcg --log-format json --vmi "$fixture" 2>/dev/null | wc -c)

awk -v r="$r_ns" -v b="$b_ns" -v rk="$r_kib" -v bk="$b_kib" -v v="$v_ns" -v vk="$v_kib" -v n="$runs" -v f="$fixture" -v bytes="$bytes" 'BEGIN {
  printf "fixture: %s (%d bytes of XML), median of %d runs\n", f, bytes, n
  printf "%-28s %10s %14s\n", "", "wall (ms)", "peak RSS (MiB)"
  printf "%-28s %10.2f %14.2f\n", "launcher render (release)", r/1e6, rk/1024
  printf "%-28s %10.2f %14.2f\n", "launcher --version", v/1e6, vk/1024
  printf "%-28s %10.2f %14.2f\n", "true (process start)", b/1e6, bk/1024
  printf "%-28s %10.2f %14.2f\n", "render beyond true", (r-b)/1e6, (rk-bk)/1024
  printf "%-28s %10.2f %14.2f\n", "render beyond --version", (r-v)/1e6, (rk-vk)/1024
  printf "ratio render/true: %.1fx wall, %.1fx RSS; render/--version: %.2fx wall, %.2fx RSS\n", r/b, rk/bk, r/v, rk/vk
  ok = ((r-b)/1e6 < 5 && rk/1024 < 10)
  printf "targets vs true (< 5 ms beyond start, < 10 MiB peak): %s\n", ok ? "met" : "NOT met"
  ok2 = ((r-v)/1e6 < 5 && (rk-vk)/1024 < 10)
  printf "targets vs launcher --version (< 5 ms, < 10 MiB more): %s\n", ok2 ? "met" : "NOT met"
}'
