//! `fold-shapes`: folds the shape arithmetic of exports with symbolic
//! dimensions (TorchScript's `Shape`/`Gather`/`Unsqueeze`/`Concat` chains).
//!
//! Matches: (1) integer results whose every element is known from symbolic
//! shape inference (e.g. `Gather(Shape(x), 3)` when dim 3 of x is static);
//! (2) `Reshape(x, s)` with `s` computed from symbolic dimensions, where each
//! entry is a constant, the same symbol as x's dimension at that position
//! (written 0), or the single remaining symbol (written -1); (3) `Expand(x, s)`
//! whose entries equal x's dimensions (a no-op, or a constant with 1s).
//! Guarantees: the same values for every binding of the symbols; the graph's
//! shape computations shrink to constants. Needs `infer-types` first; run
//! `const-fold`, `cse` and `dce` after.

use crate::infer_shapes::{infer, SymInt, SymValues};
use crate::util::arg;
use crate::Pass;
use lpc_ir::{Dim, Graph, NodeId, Tensor, ValueId};

pub struct FoldShapes;

fn shape(g: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    g.value(v).ty.as_ref()?.shape.clone()
}

fn same_dim(e: &SymInt, d: &Dim) -> bool {
    match (e, d) {
        (SymInt::Known(n), Dim::Fixed(m)) => *n >= 0 && *n as usize == *m,
        (SymInt::Sym(a), Dim::Sym(b)) => a == b,
        _ => false,
    }
}

/// A constant shape operand for `Reshape(x, spec)`, if one exists.
fn reshape_spec(x: &[Dim], spec: &[SymInt], allowzero: bool) -> Option<Vec<i64>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, e) in spec.iter().enumerate() {
        match e {
            SymInt::Known(n) => {
                if *n == -1 {
                    infer_at = Some(i);
                }
                out.push(*n);
            }
            e if !allowzero && x.get(i).is_some_and(|d| same_dim(e, d)) => out.push(0),
            SymInt::Sym(_) if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(-1);
            }
            _ => return None,
        }
    }
    // -1 is only valid once.
    (out.iter().filter(|&&v| v == -1).count() <= 1).then_some(out)
}

fn fold_node(g: &mut Graph, sv: &SymValues, n: NodeId) -> bool {
    let node = g.node(n).clone();
    // (1) Fully known integer results.
    if node.outputs.len() == 1 {
        let o = node.outputs[0];
        let is_int = g
            .value(o)
            .ty
            .as_ref()
            .is_some_and(|t| !t.dtype.is_float() && t.dtype != lpc_ir::DType::Bool);
        if let (true, Some(vals)) = (is_int, sv.get(&o)) {
            let known: Option<Vec<i64>> = vals
                .iter()
                .map(|v| {
                    if let SymInt::Known(k) = v {
                        Some(*k)
                    } else {
                        None
                    }
                })
                .collect();
            let rank = shape(g, o).map(|s| s.len());
            if let (Some(k), Some(r)) = (known, rank) {
                if r <= 1 {
                    let dims = if r == 0 { vec![] } else { vec![k.len()] };
                    let mut t = Tensor::from_i64(dims, &k);
                    if let Some(ty) = &g.value(o).ty {
                        if ty.dtype != lpc_ir::DType::I64 {
                            t = lpc_ir::interp::TensorValue::with_dtype(
                                ty.dtype,
                                t.dims.clone(),
                                lpc_ir::interp::Data::I(k),
                            )
                            .to_tensor();
                        }
                    }
                    g.make_const(o, t);
                    g.remove_node(n);
                    return true;
                }
            }
        }
    }
    match node.op.as_str() {
        "Reshape" => {
            let (Some(x), Some(s)) = (arg(&node, 0), arg(&node, 1)) else {
                return false;
            };
            if g.constant(s).is_some() {
                return false;
            }
            let (Some(xs), Some(spec)) = (shape(g, x), sv.get(&s)) else {
                return false;
            };
            let allowzero = node.int("allowzero").unwrap_or(0) != 0;
            let Some(c) = reshape_spec(&xs, spec, allowzero) else {
                return false;
            };
            let name = format!("{}/shape", node.name);
            let cv = g.add_const(name, Tensor::from_i64(vec![c.len()], &c));
            g.set_input(n, 1, Some(cv));
            true
        }
        "Expand" => {
            let (Some(x), Some(s)) = (arg(&node, 0), arg(&node, 1)) else {
                return false;
            };
            if g.constant(s).is_some() {
                return false;
            }
            let (Some(xs), Some(spec)) = (shape(g, x), sv.get(&s)) else {
                return false;
            };
            if spec.len() > xs.len() {
                return false;
            }
            let off = xs.len() - spec.len();
            let simplified: Option<Vec<i64>> = spec
                .iter()
                .enumerate()
                .map(|(i, e)| match e {
                    e if same_dim(e, &xs[off + i]) => Some(1),
                    SymInt::Known(k) if *k >= 0 => Some(*k),
                    _ => None,
                })
                .collect();
            let Some(c) = simplified else { return false };
            if c.iter().all(|&v| v == 1) && !g.outputs.contains(&node.outputs[0]) {
                g.replace_uses(node.outputs[0], x);
                g.remove_node(n);
            } else {
                let cv = g.add_const(
                    format!("{}/shape", node.name),
                    Tensor::from_i64(vec![c.len()], &c),
                );
                g.set_input(n, 1, Some(cv));
            }
            true
        }
        _ => false,
    }
}

impl Pass for FoldShapes {
    fn name(&self) -> &'static str {
        "fold-shapes"
    }
    fn summary(&self) -> &'static str {
        "infer symbolic shapes and fold the shape arithmetic"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let mut changed = false;
        // Each round can expose more (shapes of folded results); bounded.
        for _ in 0..8 {
            let (sv, inferred) = infer(g)?;
            changed |= inferred;
            let order = crate::util::topo(g)?;
            let mut round = false;
            for n in order {
                if g.contains_node(n) {
                    round |= fold_node(g, &sv, n);
                }
            }
            changed |= round;
            if !round {
                break;
            }
        }
        Ok(changed)
    }
}
