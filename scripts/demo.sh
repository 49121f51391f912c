#!/usr/bin/env bash
# The main job, set-up included: compile the bundled small Qwen3 (the
# TorchScript export with a KV cache, tests/fixtures/models/qwen3_small_decode_ts)
# to MXFP4 W4A4 as a native shared library, print the per-layer error report,
# run a prefill and greedy decode steps with the KV cache through the .so,
# and compare with the f32 build of the same model (next-token agreement,
# logits cosine) and with onnxruntime; tokens per second throughout; then
# the same model as a GPU library (--target cuda), run on the GPU when there
# is one, else its kernels on the CPU emulation, against the CPU library.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked -p lpc
LPC=target/release/lpc
Q=tests/fixtures/models/qwen3_small_decode_ts
OUT=target/demo
mkdir -p "$OUT"
PROMPT=151,33,412,9,78,260,17,5,301,44,120,7
echo
echo "== The small Qwen3 (TorchScript export with a KV cache): what lpc sees"
"$LPC" inspect "$Q/model.onnx" | sed -n '1,/^parameters/p'
echo
echo "== lpc compile --format mxfp4 (W4A4, block Hadamard rotation) -> $OUT/qwen3_mxfp4.so"
echo "   with the per-layer report measured on the fixture's inputs"
"$LPC" compile "$Q/model.onnx" --format mxfp4 -o "$OUT/qwen3_mxfp4.so" \
  --calib "$Q/inputs" --report "$OUT/qwen3_mxfp4_report.json"
echo
echo "== The f32 build of the same model, checked against onnxruntime"
"$LPC" compile "$Q/model.onnx" -o "$OUT/qwen3_f32.so"
"$LPC" run "$OUT/qwen3_f32.so" --inputs "$Q/inputs" --check "$Q/ref_ort"
echo
echo "== Prefill and 16 greedy decode steps with the KV cache through the MXFP4 .so, vs f32"
"$LPC" generate "$OUT/qwen3_mxfp4.so" --prompt "$PROMPT" --steps 16 --reference "$OUT/qwen3_f32.so"
echo
echo "== The same with W4A4 HiFloat4 and W8A8 HiFloat8"
for f in hif4 hif8; do
  "$LPC" compile "$Q/model.onnx" --format "$f" -o "$OUT/qwen3_$f.so" >/dev/null
  echo "-- $f"
  "$LPC" generate "$OUT/qwen3_$f.so" --prompt "$PROMPT" --steps 16 --reference "$OUT/qwen3_f32.so"
done
echo
echo "== The same model for NVIDIA GPUs (--target cuda: MLIR kernels lowered to PTX)"
"$LPC" compile "$Q/model.onnx" --format mxfp4 --target cuda -o "$OUT/qwen3_mxfp4_cuda.so"
mkdir -p "$OUT/cpu_out"
"$LPC" run "$OUT/qwen3_mxfp4.so" --inputs "$Q/inputs" --outputs "$OUT/cpu_out" >/dev/null
if LPC_DEVICE=cuda "$LPC" run "$OUT/qwen3_mxfp4_cuda.so" --inputs "$Q/inputs" \
    --check "$OUT/cpu_out" --tolerance 1e-5 2>"$OUT/cuda.err"; then
  echo "-- ran on the GPU, outputs checked against the CPU library"
else
  echo "-- no GPU here ($(head -c 120 "$OUT/cuda.err")...)"
  echo "-- its kernels on the CPU emulation (LPC_DEVICE=emulate), against the CPU library:"
  LPC_DEVICE=emulate "$LPC" run "$OUT/qwen3_mxfp4_cuda.so" --inputs "$Q/inputs" \
    --check "$OUT/cpu_out" --tolerance 1e-5 | grep -E '^check'
fi
echo
echo "== The library's C API: $OUT/qwen3_mxfp4.h (examples/c and examples/python drive it)"
grep -E '^(lpc_model|int|const|void|#define LPC_(INPUT|OUTPUT)_[0-9]+_NAME)' "$OUT/qwen3_mxfp4.h" | head -20
