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

/// Each linear layer as (in, out, FNV hash of its logical [in, out] weight
/// and of its bias), sorted: independent of storage layout and order.
fn linear_layers(g: &Graph) -> Vec<(usize, usize, u64)> {
    let mut v: Vec<_> = g
        .node_ids()
        .filter(|&n| g.node(n).op == "lpc.linear")
        .map(|n| {
            let node = g.node(n);
            let w = g.constant(node.inputs[1].unwrap()).unwrap();
            let vals = w.to_f64_vec();
            let (r, c) = (w.dims[0], w.dims[1]);
            let t = node.int("transposed") == Some(1);
            let (k, m) = if t { (c, r) } else { (r, c) };
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            let mut eat = |x: f64| {
                for b in (x as f32).to_bits().to_le_bytes() {
                    h ^= b as u64;
                    h = h.wrapping_mul(0x0000_0100_0000_01B3);
                }
            };
            for i in 0..k {
                for j in 0..m {
                    eat(if t { vals[j * k + i] } else { vals[i * m + j] });
                }
            }
            if let Some(b) = node.inputs.get(2).copied().flatten() {
                g.constant(b)
                    .unwrap()
                    .to_f64_vec()
                    .into_iter()
                    .for_each(&mut eat);
            }
            (k, m, h)
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
        ("lpc.linear", 15),
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

/// The genai export fuses q/k/v into one linear and keeps RoPE and attention
/// inside GroupQueryAttention (not yet canonicalized): its norms, MLPs and
/// output head agree with the other exports; its fused qkv weight holds the
/// same columns as their q, k and v weights.
#[test]
fn qwen3_genai_agrees_where_canonicalized() {
    let (ts, genai) = (
        canonical("qwen3_small_prefill_ts"),
        canonical("qwen3_small_genai_fp32"),
    );
    let (a, b) = (high_level_ops(&ts), high_level_ops(&genai));
    for op in ["lpc.rms_norm", "lpc.swiglu"] {
        assert_eq!(a[op], b[op], "{op}");
    }
    let cols = |g: &Graph| {
        let mut v: Vec<Vec<u32>> = Vec::new();
        for n in g.node_ids().filter(|&n| g.node(n).op == "lpc.linear") {
            let node = g.node(n);
            let w = g.constant(node.inputs[1].unwrap()).unwrap();
            let vals = w.to_f64_vec();
            let (r, c) = (w.dims[0], w.dims[1]);
            let t = node.int("transposed") == Some(1);
            let (k, m) = if t { (c, r) } else { (r, c) };
            for j in 0..m {
                v.push(
                    (0..k)
                        .map(|i| {
                            (if t { vals[j * k + i] } else { vals[i * m + j] } as f32).to_bits()
                        })
                        .collect(),
                );
            }
        }
        v.sort();
        v
    };
    assert_eq!(
        cols(&ts),
        cols(&genai),
        "the linear layers' output columns differ"
    );
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
        ("lpc.linear", 16),
        ("lpc.rms_norm", 4),
        ("lpc.silu", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(ops, want);
    assert_eq!(linear_layers(&ts), linear_layers(&op23));
}
