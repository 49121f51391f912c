//! `fuse-rms-norm`: every spelling of RMSNorm becomes `lpc.rms_norm`.
//!
//! Matches: the TorchScript chain
//! `Mul(w, Cast?(Mul(x, Div(1, Sqrt(Add(ReduceMean(Pow(x, 2), [-1]), eps))))))`
//! (operands of Mul in either order, `x` possibly behind a `Cast` to its own
//! type, which `const-fold` removes), opset 23's `RMSNormalization`,
//! onnxruntime's `SimplifiedLayerNormalization`, and
//! `SkipSimplifiedLayerNormalization` (as `Add` + `lpc.rms_norm`, its sum
//! output kept) when its statistics outputs are unused; and
//! `LayerNormalization` over the last axis -> `lpc.layer_norm`.
//! Guarantees: `lpc.rms_norm(x, w) {axis = -1, epsilon}` computes
//! `x / sqrt(mean(x², last axis) + eps) · w`. Needs `const-fold` first.

use crate::util::{arg, def_op, other, replace_value, scalar, single_use, unused};
use crate::Pass;
use lpc_ir::{Attr, Graph, NewNode, NodeId, ValueId};
use std::collections::BTreeMap;

pub struct FuseRmsNorm;
// `lpc.layer_norm(x, scale, bias?) {axis = -1, epsilon}` is ONNX
// LayerNormalization with only its first output.

fn attrs(eps: f32) -> BTreeMap<String, Attr> {
    let mut a = BTreeMap::new();
    a.insert("axis".to_string(), Attr::Int(-1));
    a.insert("epsilon".to_string(), Attr::Float(eps));
    a
}

/// `Mul(w, y)` where y is the normalized chain over x: returns (x, w, eps).
fn match_chain(g: &Graph, n: NodeId) -> Option<(ValueId, ValueId, f32)> {
    let mul = g.node(n);
    if mul.op != "Mul" {
        return None;
    }
    // One operand is the constant weight, the other the normalized value.
    let (a, b) = (arg(mul, 0)?, arg(mul, 1)?);
    let (w, y) = if g.constant(a).is_some() {
        (a, b)
    } else {
        (b, a)
    };
    let wt = g.constant(w)?;
    if wt.dims.len() != 1 || !single_use(g, y) {
        return None;
    }
    let (_, m) = def_op(g, y, "Mul")?;
    // Mul(x, Div(1, Sqrt(...)))
    let (ma, mb) = (arg(m, 0)?, arg(m, 1)?);
    let pick = |d: ValueId| def_op(g, d, "Div").map(|(_, dn)| (d, dn));
    let ((dv, div), x) = match (pick(ma), pick(mb)) {
        (Some(p), _) => (p, mb),
        (_, Some(p)) => (p, ma),
        _ => return None,
    };
    if scalar(g, arg(div, 0)?)? != 1.0 || !single_use(g, dv) {
        return None;
    }
    let sq = arg(div, 1)?;
    let (_, sqrt) = def_op(g, sq, "Sqrt")?;
    let ad = arg(sqrt, 0)?;
    let (_, add) = def_op(g, ad, "Add")?;
    let mean_v = arg(add, 0)
        .filter(|&v| def_op(g, v, "ReduceMean").is_some())
        .or(arg(add, 1))?;
    let eps = scalar(g, other(add, mean_v)?)? as f32;
    let (_, mean) = def_op(g, mean_v, "ReduceMean")?;
    let axes_ok = mean.ints("axes").is_some_and(|a| a == [-1])
        || arg(mean, 1).and_then(|v| scalar(g, v)) == Some(-1.0);
    if !axes_ok || mean.int("keepdims").unwrap_or(1) != 1 {
        return None;
    }
    let (_, pow) = def_op(g, arg(mean, 0)?, "Pow")?;
    if arg(pow, 0)? != x || scalar(g, arg(pow, 1)?)? != 2.0 {
        return None;
    }
    for v in [sq, ad, mean_v, arg(mean, 0)?] {
        if !single_use(g, v) {
            return None;
        }
    }
    Some((x, w, eps))
}

impl Pass for FuseRmsNorm {
    fn name(&self) -> &'static str {
        "fuse-rms-norm"
    }
    fn summary(&self) -> &'static str {
        "RMSNorm chains and ops to lpc.rms_norm"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let mut changed = false;
        for n in order {
            if !g.contains_node(n) {
                continue;
            }
            let node = g.node(n).clone();
            let last_axis = node.int("axis").unwrap_or(-1) == -1;
            match node.op.as_str() {
                "RMSNormalization" | "SimplifiedLayerNormalization"
                    if last_axis && node.outputs[1..].iter().all(|&o| unused(g, o)) =>
                {
                    let eps = node.float("epsilon").unwrap_or(1e-5);
                    replace_value(
                        g,
                        node.outputs[0],
                        node.name,
                        "lpc.rms_norm",
                        attrs(eps),
                        node.inputs[..2].to_vec(),
                    );
                    changed = true;
                }
                "LayerNormalization"
                    if last_axis && node.outputs[1..].iter().all(|&o| unused(g, o)) =>
                {
                    let mut a = attrs(node.float("epsilon").unwrap_or(1e-5));
                    a.insert("axis".into(), Attr::Int(-1));
                    let inputs = node.inputs.clone();
                    replace_value(g, node.outputs[0], node.name, "lpc.layer_norm", a, inputs);
                    changed = true;
                }
                "com.microsoft.SkipSimplifiedLayerNormalization"
                    if node.outputs.get(1).is_none_or(|&o| unused(g, o))
                        && node.outputs.get(2).is_none_or(|&o| unused(g, o)) =>
                {
                    let eps = node.float("epsilon").unwrap_or(1e-5);
                    let (a, b, w) = (node.inputs[0], node.inputs[1], node.inputs[2]);
                    // sum = a + skip (+ bias), kept as output 3 when present.
                    let (_, s) = g.add_node(
                        NewNode {
                            name: format!("{}/skip_add", node.name),
                            op: "Add".into(),
                            attrs: BTreeMap::new(),
                            inputs: vec![a, b],
                        },
                        vec![(
                            format!("{}/skip_sum", node.name),
                            g.value(node.outputs[0]).ty.clone(),
                        )],
                    );
                    let mut sum = s[0];
                    if let Some(bias) = node.inputs.get(3).copied().flatten() {
                        let (_, s2) = g.add_node(
                            NewNode {
                                name: format!("{}/bias_add", node.name),
                                op: "Add".into(),
                                attrs: BTreeMap::new(),
                                inputs: vec![Some(sum), Some(bias)],
                            },
                            vec![(
                                format!("{}/skip_bias_sum", node.name),
                                g.value(node.outputs[0]).ty.clone(),
                            )],
                        );
                        sum = s2[0];
                    }
                    if let Some(&o3) = node.outputs.get(3) {
                        g.replace_uses(o3, sum);
                    }
                    replace_value(
                        g,
                        node.outputs[0],
                        node.name,
                        "lpc.rms_norm",
                        attrs(eps),
                        vec![Some(sum), w],
                    );
                    changed = true;
                }
                "Mul" => {
                    if let Some((x, w, eps)) = match_chain(g, n) {
                        replace_value(
                            g,
                            node.outputs[0],
                            node.name,
                            "lpc.rms_norm",
                            attrs(eps),
                            vec![Some(x), Some(w)],
                        );
                        changed = true;
                    }
                }
                _ => {}
            }
        }
        Ok(changed)
    }
}
