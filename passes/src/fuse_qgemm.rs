//! `fuse-qgemm`: a quantized linear layer becomes one `lpc.qgemm`.
//!
//! Matches: `lpc.linear(A, lpc.dequantize(P_1[, E_1]), ..., bias?)` with
//! packed constants `P_i` (and constant row exponents `E_i` of scaled HiF8)
//! in one weight format, where `A` is
//! `lpc.dequantize(lpc.quantize(X))` (W and A quantized) or `X` (weight-only),
//! and `X` is `lpc.rotate(x)` (rotated layers) or `x`.
//! Guarantees: `lpc.qgemm(x, P_1, ..., P_n, bias?, residual?) {parts, k,
//! wformat, wmode, aformat, amode, rotate, bias, residual, activation?}`
//! computes the same values: the activation rotation and quantization move
//! into the GEMM's prologue, the weights stay packed, and a following
//! single-use `lpc.silu`/`lpc.gelu` and then a residual `Add` of the same
//! shape move into its epilogue.
//! The attributes record which format each layer got. Run after
//! `weights-prequantize`; `dce` after.

use crate::util::replace_value;
use crate::Pass;
use lpc_ir::{Attr, DType, Graph, NodeId, ValueId};
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct FuseQgemm;

fn producer<'g>(g: &'g Graph, v: ValueId, op: &str) -> Option<&'g lpc_ir::Node> {
    g.producer(v).map(|p| g.node(p)).filter(|n| n.op == op)
}

fn fuse(g: &mut Graph, n: NodeId) -> Option<()> {
    let node = g.node(n).clone();
    let parts = node.int("parts").unwrap_or(1).max(1) as usize;
    // Weights: dequantize(packed constant), all in one format.
    let mut packed = Vec::new();
    let mut exps = Vec::new();
    let mut wfmt: Option<(String, String, i64, bool)> = None;
    for i in 0..parts {
        let dq = producer(g, node.inputs[1 + i]?, "lpc.dequantize")?;
        let p = dq.inputs[0]?;
        if g.constant(p).is_none_or(|t| t.dtype != DType::U8) {
            return None;
        }
        let scaled = dq.string("scale") == Some("pow2");
        if scaled {
            let e = dq
                .inputs
                .get(1)
                .copied()
                .flatten()
                .filter(|&e| g.constant(e).is_some())?;
            exps.push(e);
        }
        let f = (
            dq.string("format")?.to_string(),
            dq.string("mode")?.to_string(),
            dq.int("axis_len")?,
            scaled,
        );
        if wfmt.as_ref().is_some_and(|w| *w != f) {
            return None;
        }
        wfmt = Some(f);
        packed.push(p);
    }
    let (wformat, wmode, k, wscale) = wfmt?;
    // Activation: dequantize(quantize(X)) or X; X = rotate(x) or x.
    let a = node.inputs[0]?;
    let (mut x, aformat, amode, ascale) = match producer(g, a, "lpc.dequantize") {
        Some(dq) => {
            let q = producer(g, dq.inputs[0]?, "lpc.quantize")?;
            (
                q.inputs[0]?,
                dq.string("format")?.to_string(),
                dq.string("mode")?.to_string(),
                dq.string("scale").unwrap_or("none").to_string(),
            )
        }
        None => (a, "none".to_string(), String::new(), "none".to_string()),
    };
    let mut rotate = 0;
    if let Some(r) = producer(g, x, "lpc.rotate") {
        if r.int("axis").unwrap_or(-1) != -1 {
            return None;
        }
        rotate = r.int("block")?;
        x = r.inputs[0]?;
    }
    let mut attrs = BTreeMap::new();
    attrs.insert("parts".to_string(), Attr::Int(parts as i64));
    attrs.insert("k".to_string(), Attr::Int(k));
    attrs.insert("wformat".to_string(), Attr::String(wformat));
    attrs.insert("wmode".to_string(), Attr::String(wmode));
    attrs.insert("aformat".to_string(), Attr::String(aformat));
    attrs.insert("amode".to_string(), Attr::String(amode));
    attrs.insert("rotate".to_string(), Attr::Int(rotate));
    attrs.insert("wscale".to_string(), Attr::Int(wscale as i64));
    attrs.insert("ascale".to_string(), Attr::String(ascale));
    if let Some(f) = node.attr("smooth") {
        attrs.insert("smooth".to_string(), f.clone());
    }
    let mut inputs = vec![Some(x)];
    inputs.extend(packed.into_iter().map(Some));
    inputs.extend(exps.into_iter().map(Some));
    let bias = node.inputs.get(1 + parts).copied().flatten();
    attrs.insert("bias".to_string(), Attr::Int(bias.is_some() as i64));
    inputs.extend(bias.map(Some));
    // Epilogue: a single-use activation, then a single-use residual Add of
    // the same (fully known) shape.
    let mut out = node.outputs[0];
    let mut absorbed = Vec::new();
    let only_reader = |g: &Graph, v: ValueId| -> Option<NodeId> {
        let c = g.consumers(v);
        (c.len() == 1 && !g.outputs.contains(&v)).then(|| c[0].0)
    };
    if let Some(r) = only_reader(g, out) {
        let act = match (g.node(r).op.as_str(), g.node(r).string("approximate")) {
            ("lpc.silu", _) => Some("silu"),
            ("lpc.gelu", Some("tanh")) => Some("gelu_tanh"),
            ("lpc.gelu", _) => Some("gelu"),
            _ => None,
        };
        if let Some(a) = act {
            attrs.insert("activation".to_string(), Attr::String(a.into()));
            out = g.node(r).outputs[0];
            absorbed.push(r);
        }
    }
    let known_shape = |g: &Graph, v: ValueId| {
        g.value(v)
            .ty
            .as_ref()
            .and_then(|t| t.shape.clone())
            .filter(|s| s.iter().all(|d| *d != lpc_ir::Dim::Unknown))
    };
    let mut residual = None;
    if let Some(r) = only_reader(g, out) {
        let add = g.node(r);
        if add.op == "Add" {
            let other = if add.inputs[0] == Some(out) {
                add.inputs[1]
            } else {
                add.inputs[0]
            };
            if let Some(o) = other.filter(|&o| o != out) {
                if known_shape(g, o).is_some() && known_shape(g, o) == known_shape(g, out) {
                    residual = Some(o);
                    out = add.outputs[0];
                    absorbed.push(r);
                }
            }
        }
    }
    attrs.insert("residual".to_string(), Attr::Int(residual.is_some() as i64));
    inputs.extend(residual.map(Some));
    replace_value(g, out, node.name.clone(), "lpc.qgemm", attrs, inputs);
    g.remove_node(n);
    for a in absorbed {
        g.remove_node(a);
    }
    Some(())
}

impl Pass for FuseQgemm {
    fn name(&self) -> &'static str {
        "fuse-qgemm"
    }
    fn summary(&self) -> &'static str {
        "quantized lpc.linear (fake-quant operands, packed weights) to lpc.qgemm"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let mut changed = false;
        for n in order {
            if g.contains_node(n) && g.node(n).op == "lpc.linear" && fuse(g, n).is_some() {
                changed = true;
            }
        }
        Ok(changed)
    }
}
