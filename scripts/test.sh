#!/usr/bin/env bash
# The whole test suite, set-up included: formatting, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export INSTA_UPDATE=no CARGO_TERM_COLOR=never
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast
