//! `fuse-parallel-linear`: linear layers that read the same input become one.
//!
//! Matches: two or more single-part `lpc.linear` nodes with the same input
//! `x`, the same `transposed` layout, the same input width and float weights
//! (q/k/v projections, MLP gate/up).
//! Guarantees: one `lpc.linear(x, W_1, ..., W_n, bias?) {parts = n}` whose
//! output is the concatenation of the originals' outputs on the last axis,
//! followed by a `Split` that gives each original its own result. Weights are
//! not copied (the parts stay separate constants); biases, small, are
//! concatenated (zeros for parts without one). One GEMM instead of n, and in
//! quantized graphs one activation quantization instead of n. This is also
//! the form onnxruntime-genai exports (fused qkv), so every exporter meets
//! here. Needs `fuse-linear` first.

use crate::Pass;
use lpc_ir::{Attr, Dim, Graph, NewNode, NodeId, Tensor, Type, ValueId};
use std::collections::BTreeMap;

pub struct FuseParallelLinear;

/// (in, out) of a single-part linear, or None.
fn dims(g: &Graph, n: NodeId) -> Option<(usize, usize)> {
    let node = g.node(n);
    if node.op != "lpc.linear" || node.int("parts").unwrap_or(1) != 1 {
        return None;
    }
    let w = g.constant(node.inputs.get(1).copied().flatten()?)?;
    if w.dims.len() != 2 {
        return None;
    }
    Some(if node.int("transposed") == Some(1) {
        (w.dims[1], w.dims[0])
    } else {
        (w.dims[0], w.dims[1])
    })
}

impl Pass for FuseParallelLinear {
    fn name(&self) -> &'static str {
        "fuse-parallel-linear"
    }
    fn summary(&self) -> &'static str {
        "linear layers over the same input to one multi-part lpc.linear + Split"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        // Group by (input, layout, input width, weight dtype), in graph order.
        let mut groups: BTreeMap<(ValueId, i64, usize, i32), Vec<NodeId>> = BTreeMap::new();
        for &n in &order {
            let Some((k, _)) = dims(g, n) else { continue };
            let node = g.node(n);
            let Some(x) = node.inputs[0] else { continue };
            let w = g
                .constant(node.inputs[1].expect("weight"))
                .expect("constant");
            groups
                .entry((
                    x,
                    node.int("transposed").unwrap_or(0),
                    k,
                    w.dtype.onnx_code(),
                ))
                .or_default()
                .push(n);
        }
        let mut changed = false;
        for ((x, transposed, _, _), members) in groups {
            if members.len() < 2 {
                continue;
            }
            let outs: Vec<usize> = members
                .iter()
                .map(|&n| dims(g, n).expect("grouped").1)
                .collect();
            let any_bias = members
                .iter()
                .any(|&n| g.node(n).inputs.get(2).copied().flatten().is_some());
            let mut inputs: Vec<Option<ValueId>> = vec![Some(x)];
            inputs.extend(members.iter().map(|&n| g.node(n).inputs[1]));
            if any_bias {
                let mut b = Vec::new();
                for (&n, &o) in members.iter().zip(&outs) {
                    match g.node(n).inputs.get(2).copied().flatten() {
                        Some(bv) => b.extend(
                            g.constant(bv)
                                .ok_or("bias is not a constant")?
                                .to_f64_vec()
                                .into_iter()
                                .map(|v| v as f32),
                        ),
                        None => b.extend(std::iter::repeat_n(0.0, o)),
                    }
                }
                let first = g.node(members[0]).name.clone();
                inputs.push(Some(g.add_const(
                    format!("{first}/fused_bias"),
                    Tensor::from_f32(vec![b.len()], &b),
                )));
            }
            let names: Vec<String> = members.iter().map(|&n| g.node(n).name.clone()).collect();
            let fused_name = format!("{}/fused", names[0]);
            let total: usize = outs.iter().sum();
            let ty0 = g.value(g.node(members[0]).outputs[0]).ty.clone();
            let with_last = |t: &Option<Type>, d: usize| {
                t.clone().map(|mut t| {
                    if let Some(s) = &mut t.shape {
                        if let Some(l) = s.last_mut() {
                            *l = Dim::Fixed(d);
                        }
                    }
                    t
                })
            };
            let mut attrs = BTreeMap::new();
            attrs.insert("transposed".to_string(), Attr::Int(transposed));
            attrs.insert("parts".to_string(), Attr::Int(members.len() as i64));
            let (_, fused) = g.add_node(
                NewNode {
                    name: fused_name.clone(),
                    op: "lpc.linear".into(),
                    attrs,
                    inputs,
                },
                vec![(format!("{fused_name}/out"), with_last(&ty0, total))],
            );
            let sizes = g.add_const(
                format!("{fused_name}/split"),
                Tensor::from_i64(
                    vec![outs.len()],
                    &outs.iter().map(|&o| o as i64).collect::<Vec<_>>(),
                ),
            );
            let olds: Vec<ValueId> = members.iter().map(|&n| g.node(n).outputs[0]).collect();
            let split_outs: Vec<(String, Option<Type>)> = olds
                .iter()
                .map(|&o| {
                    let v = g.value(o);
                    (v.name.clone(), v.ty.clone())
                })
                .collect();
            for &o in &olds {
                let nm = g.value(o).name.clone();
                g.value_mut(o).name = format!("{nm}#replaced");
            }
            let mut sattrs = BTreeMap::new();
            sattrs.insert("axis".to_string(), Attr::Int(-1));
            let (_, parts) = g.add_node(
                NewNode {
                    name: format!("{fused_name}/split"),
                    op: "Split".into(),
                    attrs: sattrs,
                    inputs: vec![Some(fused[0]), Some(sizes)],
                },
                split_outs,
            );
            for (&o, &p) in olds.iter().zip(&parts) {
                g.replace_uses(o, p);
            }
            for n in members {
                g.remove_node(n);
            }
            changed = true;
        }
        Ok(changed)
    }
}
