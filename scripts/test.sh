#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, root/namespace integration tests, end-to-end
# tests with a real guest, and the bounded fuzz runs. Needs root (tests that need it fail loudly
# otherwise; nothing is skipped silently). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup (Debian packages, idempotent)"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test (unit, golden, integration, end-to-end)"
cargo test --locked --workspace --no-fail-fast -- --test-threads=2
