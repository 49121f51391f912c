#!/usr/bin/env bash
# The main job, set-up included. Until code generation lands (issue 5) it
# shows what lpc does today on the bundled small Qwen3 (the TorchScript export
# in tests/fixtures/models/qwen3_small_prefill_ts): its canonical form, a run
# of the reference interpreter checked against onnxruntime's logits, and the
# W4A4 / W8A8 quantized model's error against fp32 (per layer and end to
# end); then the error of every format on bundled tensors and the bulk
# quantization throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked -p lpc
LPC=target/release/lpc
Q=tests/fixtures/models/qwen3_small_prefill_ts
T=examples/tensors
echo
echo "== The small Qwen3 (TorchScript export): what lpc sees"
"$LPC" inspect "$Q/model.onnx" | sed -n '1,/^ops (/p;/^ops after/,$p'
echo
echo "== Reference interpreter on its 12-token prompt, checked against onnxruntime"
"$LPC" run "$Q/model.onnx" --inputs "$Q/inputs" --check "$Q/ref_ort"
echo
echo "== W4A4 MXFP4 (block Hadamard rotation): error per layer and end to end, vs fp32"
"$LPC" eval "$Q/model.onnx" --inputs "$Q/inputs" --format mxfp4 --report target/qwen3_mxfp4_report.json
echo
echo "== W4A4 HiFloat4 and W8A8 HiFloat8, end to end"
"$LPC" eval "$Q/model.onnx" --inputs "$Q/inputs" --format hif4 | tail -1
"$LPC" eval "$Q/model.onnx" --inputs "$Q/inputs" --format hif8 | tail -1
echo
echo "== Qwen3 prefill logits [1, 12, 512], blocks along the last axis"
"$LPC" quantize "$T/qwen3_prefill_logits.npy" --format all
echo
echo "== Qwen3 layer 0 down_proj weight [384 in, 128 out], blocks along the reduction axis 0"
"$LPC" quantize "$T/qwen3_layer0_down_proj_weight.npy" --format all --axis 0
echo
echo "== Wan2.1 attn1.to_q weight [64 in, 64 out] with outlier input channels 10, 29, 56, axis 0"
"$LPC" quantize "$T/wan_attn1_to_q_weight.npy" --format all --axis 0
echo
echo "== Bulk quantize throughput (GB/s of f32 input; ratio to a plain f32 copy in the same run)"
LPC_BENCH_MB="${LPC_BENCH_MB:-128}" cargo bench --locked -p lpc-runtime --features parallel --bench bulk_quantize 2>/dev/null
