//! `lpc inspect`: what a model is made of, and what lpc can do with it.

use crate::onnx::{import, OnnxError, OnnxModel};
use lpc_ir::{interp, text, Def, Graph};
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
    let _ = writeln!(o, "ops ({} nodes)", g.num_nodes());
    let mut by_count: Vec<_> = counts.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
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
    if print_ir {
        o.push_str(&text::print(&g));
    }
    Ok(o)
}
