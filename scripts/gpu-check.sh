#!/usr/bin/env bash
# GPU check of `--target cuda` libraries, in two steps on two machines:
#
#   scripts/gpu-check.sh prepare [DIR]        # here: compile, run the CPU libraries
#   scripts/gpu-check.sh prepare-bench [DIR]  # here: qgemm models for the benchmark
#   scripts/gpu-check.sh run [DIR]            # on the GPU machine: python3 + numpy
#
# `prepare` (default DIR target/gpu-check) compiles every fixture for every
# format (none, mxfp4, hif4, hif8) with `--target cuda` and for the CPU, runs
# the CPU libraries on the fixtures' inputs for reference outputs; the
# libraries land in DIR (default target/gpu-check) with the Python runner and
# checker. `prepare-bench` compiles single-MatMul models of Qwen3 shapes
# (W4A4 MXFP4 and HiF4, W8A8 HiF8) into DIR (default target/gpu-bench).
#
# `run` executes every GPU library of DIR through the C API from Python
# (ctypes: no lpc binary, no CUDA toolkit): fixture cases are compared with
# the CPU outputs (max |diff| <= 1e-5 of the output's largest magnitude, the
# CPU path's bar against the interpreter); qgemm models are timed at M = 1,
# 16, 512 beside PyTorch's bf16 matmul, a bandwidth probe and an int8
# tensor-core probe (PyTorch is installed on the GPU machines). The results
# go to DIR/gpu-report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
default=target/gpu-check
[ "$mode" = prepare-bench ] && default=target/gpu-bench
dir=${2:-$default}
# numpy comes with Debian's python3 (scripts/setup.sh); a pyenv shim first in
# PATH may lack it.
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3

case "$mode" in
prepare)
    cargo build --release --locked -p lpc >/dev/null
    lpc=target/release/lpc
    rm -rf "$dir" && mkdir -p "$dir"
    cp examples/python/run_model.py scripts/gpu_check.py "$dir/"
    for f in tests/fixtures/models/*/; do
        name=$(basename "$f")
        for fmt in none mxfp4 hif4 hif8; do
            cdir="$dir/cases/${name}_$fmt"
            mkdir -p "$cdir/cpu_out"
            flags=()
            [ "$fmt" != none ] && flags=(--format "$fmt")
            "$lpc" compile "$f/model.onnx" "${flags[@]}" --target cuda -o "$cdir/model.so" >/dev/null
            "$lpc" compile "$f/model.onnx" "${flags[@]}" -o "$cdir/cpu.so" >/dev/null
            "$lpc" run "$cdir/cpu.so" --inputs "$f/inputs" --outputs "$cdir/cpu_out" >/dev/null
            rm -f "$cdir/cpu.so" "$cdir/cpu.lpcw" "$cdir/cpu.h"
            cp -r "$f/inputs" "$cdir/inputs"
        done
    done
    du -sh "$dir"
    echo "prepared $dir: now run 'scripts/gpu-check.sh run $dir' on the GPU machine"
    ;;
prepare-bench)
    # qgemm models y[M, N] = x[M, K] · W[K, N] (W quantized at compile time)
    # of Qwen3 shapes, for the kernel benchmark (a separate folder: the
    # device tool carries at most 64 MiB per call).
    cargo build --release --locked -p lpc >/dev/null
    lpc=target/release/lpc
    rm -rf "$dir" && mkdir -p "$dir"
    cp examples/python/run_model.py scripts/gpu_check.py "$dir/"
    "$py" scripts/gpu_check.py --write-matmuls "$dir"
    # W4A4 MXFP4 and HiF4, W8A8 HiF8 (not at 5120x5120: the folder must
    # stay under the 64 MiB the device tool carries).
    for m in "$dir"/*.onnx; do
        fmts="mxfp4 hif4 hif8"
        case "$m" in *5120x5120*) fmts="mxfp4 hif4" ;; esac
        for fmt in $fmts; do
            "$lpc" compile "$m" --format "$fmt" --quantize-all --target cuda \
                -o "${m%.onnx}_$fmt.so" | head -1
        done
        rm "$m"
    done
    du -sh "$dir"
    echo "prepared $dir: now run 'scripts/gpu-check.sh run $dir' on the GPU machine"
    ;;
run)
    LPC_DEVICE=cuda python3 "$dir/gpu_check.py" "$dir"
    ;;
*)
    echo "usage: scripts/gpu-check.sh prepare|prepare-bench|run [DIR]" >&2
    exit 2
    ;;
esac
