//! `fuse-linear`: every spelling of a linear layer becomes `lpc.linear`.
//!
//! Matches: `MatMul(x, W)` with a constant 2-D `W` laid out `[in, out]`;
//! `MatMul(x, Transpose(W))` with a constant `W` laid out `[out, in]`;
//! `Gemm(x, W, C)` with constant `W` (either `transB`), `alpha = beta = 1`,
//! `transA = 0`; then an `Add` of a constant `[out]` bias onto the result.
//! Guarantees: `lpc.linear(x, W, bias?) {transposed}` computes
//! `x · W (+ bias)` over the last axis of x, with `W` `[in, out]` when
//! `transposed = 0` and `[out, in]` when 1: the weight constant is used as
//! stored, never copied. Run `const-fold` first (so weights are constants)
//! and `dce` after.

use crate::util::{arg, def_op, other, replace_value, single_use};
use crate::Pass;
use lpc_ir::{Attr, Graph, NodeId};
use std::collections::BTreeMap;

pub struct FuseLinear;

fn const_2d(g: &Graph, v: lpc_ir::ValueId) -> Option<(usize, usize)> {
    let t = g.constant(v)?;
    (t.dims.len() == 2 && t.dtype.is_float()).then(|| (t.dims[0], t.dims[1]))
}

/// `(x, weight, transposed, bias)` of a node that is a linear layer.
fn as_linear(
    g: &Graph,
    n: NodeId,
) -> Option<(
    lpc_ir::ValueId,
    lpc_ir::ValueId,
    bool,
    Option<lpc_ir::ValueId>,
)> {
    let node = g.node(n);
    match node.op.as_str() {
        "MatMul" => {
            let (x, w) = (arg(node, 0)?, arg(node, 1)?);
            if const_2d(g, w).is_some() {
                return Some((x, w, false, None));
            }
            let (_, t) = def_op(g, w, "Transpose")?;
            let wt = arg(t, 0)?;
            let perm_ok = t.ints("perm").is_none_or(|p| p == [1, 0]);
            (perm_ok && const_2d(g, wt).is_some()).then_some((x, wt, true, None))
        }
        "Gemm" => {
            let one = |k: &str| node.float(k).unwrap_or(1.0) == 1.0;
            if node.int("transA").unwrap_or(0) != 0 || !one("alpha") || !one("beta") {
                return None;
            }
            let (x, w) = (arg(node, 0)?, arg(node, 1)?);
            let (r, c) = const_2d(g, w)?;
            let transposed = node.int("transB").unwrap_or(0) != 0;
            let out = if transposed { r } else { c };
            let bias = arg(node, 2);
            if let Some(b) = bias {
                let t = g.constant(b)?;
                if t.len() != out || t.dims.last() != Some(&out) {
                    return None;
                }
            }
            Some((x, w, transposed, bias))
        }
        _ => None,
    }
}

impl Pass for FuseLinear {
    fn name(&self) -> &'static str {
        "fuse-linear"
    }
    fn summary(&self) -> &'static str {
        "MatMul/Gemm with constant weights (+ bias Add) to lpc.linear"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let mut changed = false;
        for n in order {
            if !g.contains_node(n) {
                continue;
            }
            let Some((x, w, transposed, mut bias)) = as_linear(g, n) else {
                continue;
            };
            let node = g.node(n);
            let (name, mut out) = (node.name.clone(), node.outputs[0]);
            let (r, c) = const_2d(g, w).expect("checked");
            let n_out = if transposed { r } else { c };
            // Absorb a following bias Add.
            if bias.is_none() && single_use(g, out) {
                let (add, _) = g.consumers(out)[0];
                let an = g.node(add);
                if an.op == "Add" {
                    if let Some(b) = other(an, out) {
                        if g.constant(b).is_some_and(|t| t.dims == [n_out]) {
                            bias = Some(b);
                            out = an.outputs[0];
                        }
                    }
                }
            }
            let mut attrs = BTreeMap::new();
            attrs.insert("transposed".to_string(), Attr::Int(transposed as i64));
            let mut inputs = vec![Some(x), Some(w)];
            if bias.is_some() {
                inputs.push(bias);
            }
            replace_value(g, out, name, "lpc.linear", attrs, inputs);
            changed = true;
        }
        Ok(changed)
    }
}
