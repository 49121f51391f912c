//! Synthetic Qwen3-shaped layers as ONNX files, for benchmarks at real
//! sizes (weights are generated, never committed).
//!
//! One decoder layer's weight-bearing part, as an opset-23 export writes
//! it: `RMSNormalization`, the q/k/v projections (outputs), the output
//! projection of the attention result (an input) with its residual, the
//! second norm and the SwiGLU MLP with its residual. Attention itself has
//! no weights and is left out. Weights are uniform random with the
//! standard deviation of a trained layer's (about 0.02), in fp16, bf16 or
//! fp32, streamed to an external-data file beside the model, one tensor at
//! a time.

use crate::onnx::proto::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use bytes::Bytes;
use lpc_ir::DType;
use std::io::Write;
use std::path::Path;

/// A layer's dimensions.
#[derive(Clone, Copy, Debug)]
pub struct LayerDims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
}

impl LayerDims {
    /// Qwen3-32B: hidden 5120, 64 query / 8 key-value heads of 128,
    /// intermediate 25600 (about 0.49 G weights per layer).
    pub const QWEN3_32B: Self = Self {
        hidden: 5120,
        heads: 64,
        kv_heads: 8,
        head_dim: 128,
        intermediate: 25600,
    };

    /// Weights of the layer's projections (norm weights aside).
    pub fn params(&self) -> usize {
        let (h, q, kv, i) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        );
        h * q + 2 * h * kv + q * h + 3 * h * i
    }
}

fn dim(d: &str) -> crate::onnx::proto::tensor_shape_proto::Dimension {
    use crate::onnx::proto::tensor_shape_proto::{dimension, Dimension};
    Dimension {
        value: Some(match d.parse::<i64>() {
            Ok(n) => dimension::Value::DimValue(n),
            Err(_) => dimension::Value::DimParam(d.into()),
        }),
        ..Default::default()
    }
}

fn vinfo(name: &str, dt: DType, dims: &[&str]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt.onnx_code(),
                shape: Some(TensorShapeProto {
                    dim: dims.iter().map(|d| dim(d)).collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: 1,
        ..Default::default()
    }
}

/// Writes `dir/NAME.onnx` and `dir/NAME.onnx.data` (external data) for one
/// layer of `d` with weights in `dt` (f16, bf16 or f32), activations of the
/// same type, sequence length symbolic (`s`). Returns the model's path.
pub fn write_layer(
    dir: &Path,
    name: &str,
    d: &LayerDims,
    dt: DType,
    seed: u64,
) -> std::io::Result<std::path::PathBuf> {
    let model = dir.join(format!("{name}.onnx"));
    let data_name = format!("{name}.onnx.data");
    let (h, q, kv, i) = (
        d.hidden,
        d.heads * d.head_dim,
        d.kv_heads * d.head_dim,
        d.intermediate,
    );
    // Both files are staged beside their destination and renamed into
    // place only when complete.
    let data_path = dir.join(&data_name);
    let mut inits = Vec::new();
    let staged = crate::atomic::stage(&data_path, |file| {
        let mut data = std::io::BufWriter::with_capacity(1 << 22, file);
        let mut rng = seed | 1;
        let mut offset = 0u64;
        let mut tensor =
            |tname: &str, dims: [usize; 2], std: f32, mean: f32| -> std::io::Result<TensorProto> {
                let n = dims[0] * dims[1];
                let mut buf = Vec::with_capacity(n.min(1 << 20) * dt.size());
                // Uniform in [-√3·std, √3·std] (+ mean): that standard deviation.
                let a = std * 3f32.sqrt();
                for _ in 0..n {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let u = (rng >> 40) as f32 / (1u64 << 24) as f32;
                    let x = mean + a * (2.0 * u - 1.0);
                    match dt {
                        DType::F16 => buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
                        DType::Bf16 => {
                            buf.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes())
                        }
                        _ => buf.extend_from_slice(&x.to_le_bytes()),
                    }
                    if buf.len() >= 1 << 22 {
                        data.write_all(&buf)?;
                        buf.clear();
                    }
                }
                data.write_all(&buf)?;
                let len = (n * dt.size()) as u64;
                let kv = |k: &str, v: String| StringStringEntryProto {
                    key: k.into(),
                    value: v,
                };
                let t = TensorProto {
                    dims: if dims[0] == 1 {
                        vec![dims[1] as i64]
                    } else {
                        dims.iter().map(|&x| x as i64).collect()
                    },
                    data_type: dt.onnx_code(),
                    name: tname.into(),
                    external_data: vec![
                        kv("location", data_name.clone()),
                        kv("offset", offset.to_string()),
                        kv("length", len.to_string()),
                    ],
                    data_location: 1,
                    raw_data: Bytes::new(),
                    ..Default::default()
                };
                offset += len;
                Ok(t)
            };
        inits.push(tensor("ln1.weight", [1, h], 0.05, 1.0)?);
        inits.push(tensor("q_proj.weight", [h, q], 0.02, 0.0)?);
        inits.push(tensor("k_proj.weight", [h, kv], 0.02, 0.0)?);
        inits.push(tensor("v_proj.weight", [h, kv], 0.02, 0.0)?);
        inits.push(tensor("o_proj.weight", [q, h], 0.02, 0.0)?);
        inits.push(tensor("ln2.weight", [1, h], 0.05, 1.0)?);
        inits.push(tensor("gate_proj.weight", [h, i], 0.02, 0.0)?);
        inits.push(tensor("up_proj.weight", [h, i], 0.02, 0.0)?);
        inits.push(tensor("down_proj.weight", [i, h], 0.02, 0.0)?);
        data.flush()
    })?;
    let norm = |n: &str, x: &str, w: &str, y: &str| {
        node(
            "RMSNormalization",
            n,
            &[x, w],
            &[y],
            vec![float_attr("epsilon", 1e-6)],
        )
    };
    let nodes = vec![
        norm("input_layernorm", "x", "ln1.weight", "h"),
        node("MatMul", "q_proj", &["h", "q_proj.weight"], &["q"], vec![]),
        node("MatMul", "k_proj", &["h", "k_proj.weight"], &["k"], vec![]),
        node("MatMul", "v_proj", &["h", "v_proj.weight"], &["v"], vec![]),
        node(
            "MatMul",
            "o_proj",
            &["attn", "o_proj.weight"],
            &["o"],
            vec![],
        ),
        node("Add", "residual1", &["x", "o"], &["r1"], vec![]),
        norm("post_attention_layernorm", "r1", "ln2.weight", "h2"),
        node(
            "MatMul",
            "gate_proj",
            &["h2", "gate_proj.weight"],
            &["g"],
            vec![],
        ),
        node(
            "MatMul",
            "up_proj",
            &["h2", "up_proj.weight"],
            &["u"],
            vec![],
        ),
        node("Sigmoid", "act_sigmoid", &["g"], &["gs"], vec![]),
        node("Mul", "act_silu", &["g", "gs"], &["ga"], vec![]),
        node("Mul", "mlp_mul", &["ga", "u"], &["m"], vec![]),
        node(
            "MatMul",
            "down_proj",
            &["m", "down_proj.weight"],
            &["dn"],
            vec![],
        ),
        node("Add", "residual2", &["r1", "dn"], &["y"], vec![]),
    ];
    let (hs, qs, kvs) = (h.to_string(), q.to_string(), kv.to_string());
    let graph = GraphProto {
        node: nodes,
        name: "qwen3_layer".into(),
        initializer: inits,
        input: vec![
            vinfo("x", dt, &["1", "s", &hs]),
            vinfo("attn", dt, &["1", "s", &qs]),
        ],
        output: vec![
            vinfo("q", dt, &["1", "s", &qs]),
            vinfo("k", dt, &["1", "s", &kvs]),
            vinfo("v", dt, &["1", "s", &kvs]),
            vinfo("y", dt, &["1", "s", &hs]),
        ],
        ..Default::default()
    };
    let m = ModelProto {
        ir_version: 10,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 23,
        }],
        producer_name: "lpc synth".into(),
        graph: Some(graph),
        ..Default::default()
    };
    staged.commit(&data_path)?;
    crate::atomic::write(&model, &prost::Message::encode_to_vec(&m))?;
    Ok(model)
}
