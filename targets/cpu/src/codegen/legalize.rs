//! Half-precision graphs computed in f32.
//!
//! Real exports of fp16/bf16 models carry f16 activations everywhere. The
//! generated code computes floats in f32; rather than teaching every op a
//! half-precision variant, a graph with f16/bf16 values is rewritten before
//! code generation: each half-precision graph input is cast to f32 on
//! entry, each half-precision graph output is cast back on exit (the C API
//! keeps the model's declared types), and everything in between becomes
//! f32 (constants converted, `Cast`s to a half type retargeted to f32).
//! Quantized weights are already packed bytes by then, so the constants
//! converted are the small ones (norm weights, biases); the weights of
//! bf16 linear layers (`lpc.linear {bf16 = 1}`) stay bf16. Results differ
//! from the interpreter's, which rounds every op's output to the half
//! type, by that rounding: f32 throughout is the more accurate of the two.

use lpc_ir::{Attr, DType, Def, Graph, NewNode, Tensor, Type, ValueId};
use std::collections::BTreeMap;

fn half(d: DType) -> bool {
    matches!(d, DType::F16 | DType::Bf16)
}

fn to_f32(t: &Tensor) -> Tensor {
    let v: Vec<f32> = t.to_f64_vec().into_iter().map(|x| x as f32).collect();
    Tensor::from_f32(t.dims.clone(), &v)
}

fn with_dtype(t: &Option<Type>, d: DType) -> Option<Type> {
    t.as_ref().map(|t| Type {
        dtype: d,
        shape: t.shape.clone(),
    })
}

/// Whether `g` has any half-precision value.
pub fn has_half(g: &Graph) -> bool {
    g.value_ids()
        .any(|v| g.value(v).ty.as_ref().is_some_and(|t| half(t.dtype)))
}

fn cast(g: &mut Graph, name: String, from: ValueId, to: DType, ty: Option<Type>) -> ValueId {
    let mut attrs = BTreeMap::new();
    attrs.insert("to".into(), Attr::Int(to.onnx_code() as i64));
    let (_, outs) = g.add_node(
        NewNode {
            name: format!("{name}.cast"),
            op: "Cast".into(),
            attrs,
            inputs: vec![Some(from)],
        },
        vec![(name, ty)],
    );
    outs[0]
}

/// Rewrites `g` to compute in f32 (see the module documentation).
pub fn compute_in_f32(g: &mut Graph) {
    let mut keep: Vec<ValueId> = Vec::new();
    // Inputs: cast on entry.
    for v in g.inputs.clone() {
        let Some(ty) = g.value(v).ty.clone().filter(|t| half(t.dtype)) else {
            continue;
        };
        let readers = g.consumers(v);
        let name = format!("{}.f32", g.value(v).name);
        let f = cast(g, name, v, DType::F32, with_dtype(&Some(ty), DType::F32));
        for (n, slot) in readers {
            g.set_input(n, slot, Some(f));
        }
        keep.push(v);
    }
    // Outputs: computed in f32 under a new name, cast back to the declared
    // type under the output's name.
    for i in 0..g.outputs.len() {
        let o = g.outputs[i];
        let Some(ty) = g.value(o).ty.clone().filter(|t| half(t.dtype)) else {
            continue;
        };
        if !matches!(g.value(o).def, Def::Node(..)) {
            continue;
        }
        let name = g.value(o).name.clone();
        g.value_mut(o).name = format!("{name}.f32");
        let back = cast(g, name, o, ty.dtype, Some(ty));
        g.outputs[i] = back;
        keep.push(back);
    }
    // Everything else: f32. Only constants something reads are converted:
    // the value table still holds the half-precision weights that passes
    // replaced (packed weights), which must stay mapped, not copied.
    let mut used: std::collections::HashSet<ValueId> = g.outputs.iter().copied().collect();
    for n in g.node_ids() {
        used.extend(g.node(n).inputs.iter().flatten().copied());
    }
    // The weights of bf16 linear layers (`bf16-linear`) are read as bf16.
    for n in g.node_ids() {
        let node = g.node(n);
        if node.op == "lpc.linear" && node.int("bf16") == Some(1) {
            let parts = node.int("parts").unwrap_or(1).max(1) as usize;
            keep.extend(node.inputs.iter().skip(1).take(parts).flatten().copied());
        }
    }
    for v in g.value_ids().collect::<Vec<_>>() {
        if keep.contains(&v) || !used.contains(&v) {
            continue;
        }
        let val = g.value_mut(v);
        if let Some(t) = val.ty.as_mut().filter(|t| half(t.dtype)) {
            t.dtype = DType::F32;
        }
        if let Def::Const(t) = &val.def {
            if half(t.dtype) {
                let t = to_f32(t);
                g.make_const(v, t);
            }
        }
    }
    let f16 = DType::F16.onnx_code() as i64;
    let bf16 = DType::Bf16.onnx_code() as i64;
    for n in g.node_ids().collect::<Vec<_>>() {
        if g.node(n).op == "Cast" && g.node(n).outputs.first().is_some_and(|o| keep.contains(o)) {
            continue;
        }
        let node = g.node_mut(n);
        match node.op.as_str() {
            "Cast" => {
                if let Some(Attr::Int(to)) = node.attrs.get_mut("to") {
                    if *to == f16 || *to == bf16 {
                        *to = DType::F32.onnx_code() as i64;
                    }
                }
            }
            _ => {
                for a in node.attrs.values_mut() {
                    if let Attr::Tensor(t) = a {
                        if half(t.dtype) {
                            *t = to_f32(t);
                        }
                    }
                }
            }
        }
    }
}
