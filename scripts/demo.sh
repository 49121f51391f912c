#!/usr/bin/env bash
# The main job, set-up included. Until the end-to-end compiler lands, it
# quantizes the bundled tensors (a Qwen3 activation and two weights from the
# example models) to every format and mode and prints the error table, then
# the bulk quantization throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked -p lpc
LPC=target/release/lpc
T=examples/tensors
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
