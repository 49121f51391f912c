#!/usr/bin/env bash
# Speed, measured in one script: every fixture model compiled by lpc (f32 and
# the 4/8-bit formats) against onnxruntime fp32 on the same inputs and thread
# counts (installed from PyPI into target/bench-venv), then the generated
# qgemm kernels on Qwen3-32B shapes against lpc's own f32 GEMM and a memory
# bandwidth probe (cargo bench), then onnxruntime's fp32 MatMul and its
# MatMulNBits (4-bit, blocks of 32, int8 activations) on the same shapes,
# joined into one table. Models: the median over LPC_BENCH_PROCS processes
# (default 5) of each one's median run, with min-max (see below); kernels:
# medians of LPC_BENCH_RUNS runs (default 5; M = 1 at least 25) with
# min-max. Tables on stdout, JSON in target/bench/.
#
# LPC_BENCH_KERNELS=0 skips the kernel part; LPC_BENCH_SHAPES, LPC_BENCH_M,
# LPC_BENCH_THREADS, LPC_BENCH_FORMATS narrow it (see targets/cpu/benches/qgemm.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked -p lpc
LPC=target/release/lpc
OUT=target/bench
VENV=target/bench-venv
mkdir -p "$OUT/models"
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import onnxruntime, onnx" 2>/dev/null || "$VENV/bin/pip" install -q onnxruntime onnx numpy
# Each fixture is timed in LPC_BENCH_PROCS processes per side (default 5),
# onnxruntime and every lpc format taking turns, each process timing
# LPC_BENCH_MODEL_RUNS runs (default 300) after a warm-up: this host's speed moves
# from one process to the next, and a 0.1 ms model timed 20 times in one
# process mostly measures that. Reported: the median of the processes'
# medians, and their min-max.
RUNS="${LPC_BENCH_MODEL_RUNS:-300}"
PROCS="${LPC_BENCH_PROCS:-5}"
# lpc's libraries per fixture: f32 (no --format), then each format
FORMATS=(none mxfp4 hif4 hif8)
json="$OUT/models.json"
echo "[" > "$json"
first=1
# median and min-max of the numbers on stdin
stats() { sort -n | awk '{v[NR]=$1} END {printf "%.4f %.4f %.4f\n", (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2), v[1], v[NR]}'; }
printf "%-26s %-7s %-6s %2s %11s %19s %11s %19s %8s\n" model phase format T "lpc ms" "min-max" "ort ms" "min-max" "vs ort"
for m in qwen3_small_prefill_ts qwen3_small_decode_ts qwen3_small_genai_fp32 wan_small_ts; do
  D=tests/fixtures/models/$m
  for f in "${FORMATS[@]}"; do
    so="$OUT/models/${m}_$f.so"
    if [ "$f" = none ]; then q=(); else q=(--format "$f"); fi
    # (re)compiled unless newer than both the lpc binary and the model
    [ "$so" -nt "$LPC" ] && [ "$so" -nt "$D/model.onnx" ] || "$LPC" compile "$D/model.onnx" "${q[@]}" -o "$so" >/dev/null
  done
  # A fixture's prompt (inputs/), and where it has one, a decode step on
  # its cache (decode_inputs/: the onnxruntime-genai export, whose one
  # graph does both).
  for set in inputs decode_inputs; do
    [ -d "$D/$set" ] || continue
    phase=prefill
    [ "$set" = decode_inputs ] && phase=decode
    [ "$m" = qwen3_small_decode_ts ] && phase=decode
    [ "$m" = wan_small_ts ] && phase=forward
    for t in 1 2; do
      declare -A meds=()
      for p in $(seq "$PROCS"); do
        ort=$("$VENV/bin/python" scripts/bench_ort.py "$D/model.onnx" "$D/$set" "$t" "$RUNS")
        meds[ort]+="$(echo "$ort" | "$VENV/bin/python" -c "import json,sys; print('%.4f' % json.load(sys.stdin)['median_ms'])") "
        for f in "${FORMATS[@]}"; do
          line=$("$LPC" run "$OUT/models/${m}_$f.so" --inputs "$D/$set" --threads "$t" --repeat "$RUNS" | grep '^runs ')
          meds[$f]+="$(echo "$line" | sed -E 's/.*median ([0-9.]+) ms.*/\1/') "
        done
      done
      read -r ort_ms ort_mn ort_mx < <(echo "${meds[ort]}" | tr ' ' '\n' | grep . | stats)
      for f in "${FORMATS[@]}"; do
        read -r med mn mx < <(echo "${meds[$f]}" | tr ' ' '\n' | grep . | stats)
        ratio=$("$VENV/bin/python" -c "print('%.2f' % ($ort_ms / $med))")
        printf "%-26s %-7s %-6s %2s %11s %19s %11s %19s %7sx\n" "$m" "$phase" "${f/none/f32}" "$t" "$med" "$mn-$mx" "$ort_ms" "$ort_mn-$ort_mx" "$ratio"
        [ $first = 1 ] || echo "," >> "$json"
        first=0
        echo "{\"model\":\"$m\",\"phase\":\"$phase\",\"format\":\"${f/none/f32}\",\"threads\":$t,\"processes\":$PROCS,\"runs_per_process\":$RUNS,\"lpc_ms\":$med,\"lpc_min_ms\":$mn,\"lpc_max_ms\":$mx,\"ort_fp32_ms\":$ort_ms,\"ort_min_ms\":$ort_mn,\"ort_max_ms\":$ort_mx,\"speedup_vs_ort\":$ratio}" >> "$json"
      done
      unset meds
    done
  done
done
echo "]" >> "$json"
echo "wrote $json"
if [ "${LPC_BENCH_KERNELS:-1}" != 0 ]; then
  echo
  echo "== qgemm kernels (cargo bench -p lpc-target-cpu --bench qgemm)"
  cargo bench --locked -p lpc-target-cpu --bench qgemm 2>/dev/null
  echo
  echo "== the same shapes in onnxruntime: fp32 MatMul and MatMulNBits (4-bit, blocks of 32, int8 activations)"
  "$VENV/bin/python" scripts/bench_ort_matmul.py time "$OUT/ort_matmul.json"
  echo
  echo "== lpc vs onnxruntime"
  "$VENV/bin/python" scripts/bench_ort_matmul.py join "$OUT/qgemm.json" "$OUT/ort_matmul.json" "$OUT/kernels_vs_ort.json"
fi
