#!/usr/bin/env bash
# The whole test suite, set-up included: formatting, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# No incremental cache: this is a one-shot build, and the cache is ~0.9 GB.
export INSTA_UPDATE=no CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
# Clippy builds its own copies of the build scripts and proc macros (tblgen
# alone is 375 MB), so it gets its own target directory, dropped afterwards
# when the disk is tight: the build then peaks at the larger of the two
# (~3 GB cold) instead of their sum.
CARGO_TARGET_DIR=target/clippy cargo clippy --workspace --all-targets --locked -- -D warnings
free_kb=$(df --output=avail -k target | tail -1)
if [ "$free_kb" -lt 8000000 ]; then
  echo "[test] $((free_kb / 1024)) MB free: removing target/clippy before the test build"
  rm -rf target/clippy
fi
echo "[test] cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast
