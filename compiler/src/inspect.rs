//! `lpc inspect`: what a model is made of, and what lpc can do with it.

use crate::onnx::{import, OnnxError, OnnxModel};
use lpc_ir::{interp, text, Def, Graph};
use lpc_passes::{canonicalize, PassManager, RunOptions};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

fn types_line(g: &Graph, ids: &[lpc_ir::ValueId]) -> Vec<String> {
    ids.iter()
        .map(|&v| {
            let val = g.value(v);
            match &val.ty {
                Some(t) => format!("  {}: {}", val.name, t),
                None => format!("  {}: ?", val.name),
            }
        })
        .collect()
}

pub fn inspect(path: &Path, print_ir: bool) -> Result<String, OnnxError> {
    let model = OnnxModel::load(path)?;
    let g = import(&model)?;
    let p = &model.proto;
    let mut o = String::new();
    let _ = writeln!(o, "model     {}", path.display());
    let _ = writeln!(
        o,
        "producer  {} {} (ir_version {})",
        p.producer_name, p.producer_version, p.ir_version
    );
    let opsets: Vec<String> = g
        .opsets
        .iter()
        .map(|(d, v)| format!("{} {v}", if d.is_empty() { "ai.onnx" } else { d }))
        .collect();
    let _ = writeln!(o, "opsets    {}", opsets.join(", "));
    let _ = writeln!(o, "inputs\n{}", types_line(&g, &g.inputs).join("\n"));
    let _ = writeln!(o, "outputs\n{}", types_line(&g, &g.outputs).join("\n"));
    let mut params: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for v in g.value_ids() {
        if let Def::Const(t) = &g.value(v).def {
            let e = params.entry(t.dtype.to_string()).or_default();
            e.0 += 1;
            e.1 += t.len();
            e.2 += t.data.len();
        }
    }
    let _ = writeln!(o, "parameters");
    for (d, (n, elems, bytes)) in &params {
        let _ = writeln!(o, "  {d}: {n} tensors, {elems} values, {bytes} bytes");
    }
    let counts = g.op_counts();
    let by_count = histogram(&counts);
    let _ = writeln!(o, "ops ({} nodes)", g.num_nodes());
    for (op, n) in &by_count {
        let _ = writeln!(o, "  {n:>5} {op}");
    }
    let unsupported: Vec<String> = by_count
        .iter()
        .filter(|(op, _)| interp::kernel(op).is_none())
        .map(|(op, n)| format!("{op} x{n}"))
        .collect();
    if unsupported.is_empty() {
        let _ = writeln!(o, "unsupported ops: none");
    } else {
        let _ = writeln!(o, "unsupported ops: {}", unsupported.join(", "));
    }
    // After canonicalization: the op set and the linear layers.
    let mut cg = g.clone();
    let pm = PassManager::new(canonicalize(), RunOptions::default());
    match pm.run(&mut cg) {
        Ok(_) => {
            let _ = writeln!(o, "ops after canonicalization ({} nodes)", cg.num_nodes());
            for (op, n) in histogram(&cg.op_counts()) {
                let _ = writeln!(o, "  {n:>5} {op}");
            }
            let linears = linear_layers(&cg);
            let _ = writeln!(o, "linear layers ({})", linears.len());
            for l in linears {
                let _ = writeln!(o, "  {l}");
            }
        }
        Err(e) => {
            let _ = writeln!(o, "canonicalization failed: {e}");
        }
    }
    if print_ir {
        o.push_str(&text::print(&g));
    }
    Ok(o)
}

fn histogram(counts: &BTreeMap<String, usize>) -> Vec<(&String, &usize)> {
    let mut v: Vec<_> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v
}

/// `name: in -> out (weights)` for each `lpc.linear`, in graph order.
pub fn linear_layers(g: &Graph) -> Vec<String> {
    g.topo_order()
        .unwrap_or_default()
        .into_iter()
        .filter(|&n| g.node(n).op == "lpc.linear")
        .map(|n| {
            let node = g.node(n);
            let parts = node.int("parts").unwrap_or(1).max(1) as usize;
            let transposed = node.int("transposed") == Some(1);
            let (mut k, mut out, mut names) = (0, 0, Vec::new());
            for p in 0..parts {
                let Some(w) = node.inputs.get(1 + p).copied().flatten() else {
                    continue;
                };
                let dims = g.constant(w).map(|t| t.dims.clone()).unwrap_or_default();
                let (i, o) = if transposed {
                    (dims[1], dims[0])
                } else {
                    (dims[0], dims[1])
                };
                k = i;
                out += o;
                names.push(format!("`{}`", g.value(w).name));
            }
            let bias = if node.inputs.get(1 + parts).copied().flatten().is_some() {
                " + bias"
            } else {
                ""
            };
            let layout = if transposed { ", [out, in]" } else { "" };
            format!(
                "{}: {k} -> {out} (weights {}{layout}){bias}",
                node.name,
                names.join(", ")
            )
        })
        .collect()
}
