//! The canonical-form property: exports of the same model by different
//! exporters canonicalize to the same high-level ops over the same weights.

use lpc::onnx::{import, OnnxModel};
use lpc_ir::Graph;
use lpc_passes::{canonicalize, PassManager, RunOptions};
use lpc_tests::fixture;
use std::collections::BTreeMap;

fn canonical(model: &str) -> Graph {
    let mut g =
        import(&OnnxModel::load(&fixture(&format!("models/{model}/model.onnx"))).unwrap()).unwrap();
    PassManager::new(
        canonicalize(),
        RunOptions {
            verify: true,
            ..Default::default()
        },
    )
    .run(&mut g)
    .unwrap();
    g
}

/// Counts of lpc's high-level ops.
fn high_level_ops(g: &Graph) -> BTreeMap<String, usize> {
    g.op_counts()
        .into_iter()
        .filter(|(op, _)| op.starts_with("lpc."))
        .collect()
}

/// The logical `[in, out]` weight of a linear layer (parts concatenated on
/// the output axis), as f32 bits, column by column.
fn columns(g: &Graph, n: lpc_ir::NodeId) -> Vec<Vec<u32>> {
    let node = g.node(n);
    let parts = node.int("parts").unwrap_or(1).max(1) as usize;
    let t = node.int("transposed") == Some(1);
    let mut cols = Vec::new();
    for p in 0..parts {
        let w = g.constant(node.inputs[1 + p].unwrap()).unwrap();
        let vals = w.to_f64_vec();
        let (r, c) = (w.dims[0], w.dims[1]);
        let (k, m) = if t { (c, r) } else { (r, c) };
        for j in 0..m {
            cols.push(
                (0..k)
                    .map(|i| (if t { vals[j * k + i] } else { vals[i * m + j] } as f32).to_bits())
                    .collect(),
            );
        }
    }
    cols
}

/// Each linear layer as (in, out, hash of its logical weight and bias),
/// sorted: independent of storage layout, part split and order.
fn linear_layers(g: &Graph) -> Vec<(usize, usize, u64)> {
    let mut v: Vec<_> = g
        .node_ids()
        .filter(|&n| g.node(n).op == "lpc.linear")
        .map(|n| {
            let cols = columns(g, n);
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            let mut eat = |x: u32| {
                for b in x.to_le_bytes() {
                    h ^= b as u64;
                    h = h.wrapping_mul(0x0000_0100_0000_01B3);
                }
            };
            cols.iter().flatten().for_each(|&x| eat(x));
            let node = g.node(n);
            let parts = node.int("parts").unwrap_or(1).max(1) as usize;
            if let Some(b) = node.inputs.get(1 + parts).copied().flatten() {
                g.constant(b)
                    .unwrap()
                    .to_f64_vec()
                    .into_iter()
                    .for_each(|x| eat((x as f32).to_bits()));
            }
            (cols[0].len(), cols.len(), h)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn qwen3_torchscript_and_dynamo_agree() {
    let (ts, op23) = (
        canonical("qwen3_small_prefill_ts"),
        canonical("qwen3_small_prefill_op23"),
    );
    let ops = high_level_ops(&ts);
    assert_eq!(ops, high_level_ops(&op23));
    let want: BTreeMap<String, usize> = [
        ("lpc.attention", 2),
        ("lpc.linear", 9),
        ("lpc.rms_norm", 9),
        ("lpc.rope", 4),
        ("lpc.swiglu", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(ops, want);
    assert_eq!(linear_layers(&ts), linear_layers(&op23));
    // The decode graph has the same layers.
    let dec = canonical("qwen3_small_decode_ts");
    assert_eq!(high_level_ops(&dec), want);
    assert_eq!(linear_layers(&dec), linear_layers(&ts));
}

/// The genai export (fused qkv, RoPE and attention inside
/// GroupQueryAttention) has the same linear layers over the same weights.
#[test]
fn qwen3_genai_agrees() {
    let (ts, genai) = (
        canonical("qwen3_small_prefill_ts"),
        canonical("qwen3_small_genai_fp32"),
    );
    assert_eq!(linear_layers(&ts), linear_layers(&genai));
    let (a, b) = (high_level_ops(&ts), high_level_ops(&genai));
    assert_eq!(a, b);
}

#[test]
fn wan_torchscript_and_dynamo_agree() {
    let (ts, op23) = (canonical("wan_small_ts"), canonical("wan_small_op23"));
    let ops = high_level_ops(&ts);
    assert_eq!(ops, high_level_ops(&op23));
    let want: BTreeMap<String, usize> = [
        ("lpc.attention", 2),
        ("lpc.gelu", 2),
        ("lpc.layer_norm", 4),
        ("lpc.linear", 13),
        ("lpc.rms_norm", 4),
        ("lpc.silu", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(ops, want);
    assert_eq!(linear_layers(&ts), linear_layers(&op23));
}
