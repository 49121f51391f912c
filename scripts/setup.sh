#!/usr/bin/env bash
# Makes a Debian 12 machine ready to build and test lpc. Idempotent: when
# everything is already there it only checks (a few seconds).
# Facts behind each step: ../shared/TOOLCHAIN.md (copied into ARCHITECTURE.md).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 0. /dev/null must be the null device. Machines here have come up with it as
# a regular file (seen in a CI run and in a session): everything written to it
# piles up there, and cargo, which probes rustc with `rustc -` and stdin on
# /dev/null, then compiles that pile and fails before building anything.
if [ ! -c /dev/null ]; then
  say "/dev/null is not the null device: recreating it (mknod c 1 3)"
  $SUDO mknod -m 666 /dev/null.lpc-setup c 1 3 && $SUDO mv -f /dev/null.lpc-setup /dev/null ||
    { say "could not recreate /dev/null (mknod needs root and CAP_MKNOD): cargo cannot build here"; exit 1; }
fi

# 1. LLVM 22 and MLIR 22 from Debian (needed only by targets/), and GNU time.
# `time` (GNU time) measures peak memory in the large-import test; valgrind and
# python3-numpy run the C and Python examples of compiled models in the suite.
APT_PACKAGES=(llvm-22-dev libmlir-22-dev mlir-22-tools libclang-22-dev libpolly-22-dev libzstd-dev time valgrind python3-numpy)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${missing[@]}"
fi
# /usr/bin/llvm-config is LLVM 14 on these machines: never rely on the plain name.
[ -x /usr/lib/llvm-22/bin/llvm-config ] || { say "LLVM 22 is missing after install"; exit 1; }
[ "$(/usr/lib/llvm-22/bin/llvm-config --version | cut -d. -f1)" = 22 ] || { say "wrong LLVM version"; exit 1; }
[ -f /usr/lib/llvm-22/lib/libMLIRIR.a ] || { say "MLIR 22 is missing"; exit 1; }

# 2. The Rust toolchain and the tools the test command uses.
command -v cargo >/dev/null || { say "cargo not found: install Rust (rustup) first"; exit 1; }
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  say "adding rustfmt and clippy"
  rustup component add rustfmt clippy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
say "ready: $(cargo --version), $(cargo nextest --version | head -1), LLVM $(/usr/lib/llvm-22/bin/llvm-config --version)"
