//! `const-fold`: evaluates nodes whose operands are all constants, and
//! removes no-op nodes.
//!
//! Matches: (1) nodes with only constant (or omitted) operands, an
//! interpreter kernel, and results of at most [`FOLD_MAX`] elements each;
//! (2) `Shape` of a value with a fully static shape; (3) `Identity`, and
//! `Cast` to the element type its operand already has.
//! Guarantees: folded results become constants computed by the reference
//! interpreter, so semantics are exactly preserved; large results (weights
//! under a Transpose, say) are left to the fusion passes, which consume them
//! without copying. Needs `infer-types` for (3).

use crate::Pass;
use lpc_ir::interp::{kernel, OpCtx, TensorValue};
use lpc_ir::{Dim, Graph, Tensor};

pub struct ConstFold;

/// Larger results are not materialized.
pub const FOLD_MAX: usize = 1 << 16;

impl Pass for ConstFold {
    fn name(&self) -> &'static str {
        "const-fold"
    }
    fn summary(&self) -> &'static str {
        "evaluate constant subgraphs and remove no-op nodes"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let opset = g.opsets.get("").copied().unwrap_or(0);
        let mut changed = false;
        for n in order {
            let node = g.node(n).clone();
            // No-ops: Identity, and Cast to the type the operand has.
            let operand = node.inputs.first().copied().flatten();
            if let Some(x) = operand {
                let same_type = node.op == "Cast"
                    && g.value(x).ty.as_ref().map(|t| t.dtype.onnx_code() as i64) == node.int("to");
                if (node.op == "Identity" || same_type) && !g.outputs.contains(&node.outputs[0]) {
                    g.replace_uses(node.outputs[0], x);
                    g.remove_node(n);
                    changed = true;
                    continue;
                }
            }
            // Shape of a static shape.
            if node.op == "Shape" && node.attrs.is_empty() {
                if let Some(dims) = operand
                    .and_then(|x| g.value(x).ty.clone())
                    .and_then(|t| t.shape)
                    .and_then(|s| {
                        s.iter()
                            .map(|d| {
                                if let Dim::Fixed(v) = d {
                                    Some(*v as i64)
                                } else {
                                    None
                                }
                            })
                            .collect::<Option<Vec<_>>>()
                    })
                {
                    g.make_const(node.outputs[0], Tensor::from_i64(vec![dims.len()], &dims));
                    g.remove_node(n);
                    changed = true;
                    continue;
                }
            }
            let all_const = node
                .inputs
                .iter()
                .all(|v| v.is_none_or(|v| g.constant(v).is_some()));
            let Some(k) = kernel(&node.op) else { continue };
            if !all_const || node.inputs.iter().all(Option::is_none) {
                continue;
            }
            let vals: Vec<Option<TensorValue>> = node
                .inputs
                .iter()
                .map(|v| v.map(|v| TensorValue::from_tensor(g.constant(v).expect("constant"))))
                .collect();
            let ctx = OpCtx {
                node: &node,
                inputs: vals.iter().map(Option::as_ref).collect(),
                opset,
            };
            // An error here is left for run time to report with real inputs.
            let Ok(outs) = k(&ctx) else { continue };
            if outs.len() < node.outputs.len() || outs.iter().any(|o| o.len() > FOLD_MAX) {
                continue;
            }
            for (&o, val) in node.outputs.iter().zip(outs) {
                g.make_const(o, val.to_tensor());
            }
            g.remove_node(n);
            changed = true;
        }
        Ok(changed)
    }
}
