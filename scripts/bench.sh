#!/usr/bin/env bash
# Speed, measured in one script: every fixture model compiled by lpc (f32 and
# the 4/8-bit formats) against onnxruntime fp32 on the same inputs and thread
# counts (installed from PyPI into target/bench-venv), then the generated
# qgemm kernels on Qwen3-32B shapes against lpc's own f32 GEMM and a memory
# bandwidth probe (cargo bench), then onnxruntime's fp32 MatMul and its
# MatMulNBits (4-bit, blocks of 32, int8 activations) on the same shapes,
# joined into one table. Medians of LPC_BENCH_RUNS runs (default 20 for
# models, 5 for kernels) with min-max. Tables on stdout, JSON in target/bench/.
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
RUNS="${LPC_BENCH_RUNS:-20}"
json="$OUT/models.json"
echo "[" > "$json"
first=1
printf "%-26s %-6s %2s %11s %19s %11s %8s\n" model format T "lpc ms" "min-max" "ort ms" "vs ort"
for m in qwen3_small_prefill_ts qwen3_small_decode_ts qwen3_small_genai_fp32 wan_small_ts; do
  D=tests/fixtures/models/$m
  for t in 1 2; do
    ort=$("$VENV/bin/python" scripts/bench_ort.py "$D/model.onnx" "$D/inputs" "$t" "$RUNS")
    ort_ms=$(echo "$ort" | "$VENV/bin/python" -c "import json,sys; print('%.3f' % json.load(sys.stdin)['median_ms'])")
    for f in none mxfp4 hif4 hif8; do
      so="$OUT/models/${m}_$f.so"
      if [ "$f" = none ]; then q=(); else q=(--format "$f"); fi
      [ -f "$so" ] || "$LPC" compile "$D/model.onnx" "${q[@]}" -o "$so" >/dev/null
      line=$("$LPC" run "$so" --inputs "$D/inputs" --threads "$t" --repeat "$RUNS" | grep '^runs ')
      med=$(echo "$line" | sed -E 's/.*median ([0-9.]+) ms.*/\1/')
      mn=$(echo "$line" | sed -E 's/.*min ([0-9.]+) ms.*/\1/')
      mx=$(echo "$line" | sed -E 's/.*max ([0-9.]+) ms.*/\1/')
      ratio=$("$VENV/bin/python" -c "print('%.2f' % ($ort_ms / $med))")
      printf "%-26s %-6s %2s %11s %19s %11s %7sx\n" "$m" "${f/none/f32}" "$t" "$med" "$mn-$mx" "$ort_ms" "$ratio"
      [ $first = 1 ] || echo "," >> "$json"
      first=0
      echo "{\"model\":\"$m\",\"format\":\"${f/none/f32}\",\"threads\":$t,\"lpc_ms\":$med,\"lpc_min_ms\":$mn,\"lpc_max_ms\":$mx,\"ort_fp32_ms\":$ort_ms,\"speedup_vs_ort\":$ratio}" >> "$json"
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
