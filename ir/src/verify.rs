//! The verifier: structural invariants of a [`Graph`], with errors that name
//! the offending node and op. It runs after every pass in tests and debug
//! builds.

use crate::{Def, Graph, NodeId, Type, ValueId};
use std::collections::HashMap;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum VerifyError {
    #[error("node `{node}` ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error("graph: {0}")]
    Graph(String),
}

fn node_err(g: &Graph, n: NodeId, msg: String) -> VerifyError {
    let node = g.node(n);
    VerifyError::Node {
        node: node.name.clone(),
        op: node.op.clone(),
        msg,
    }
}

/// Is `v` defined by something that exists (an input, a constant, or an
/// output of a live node that lists it)?
fn defined(g: &Graph, v: ValueId) -> Result<(), String> {
    if v.0 as usize >= g.num_values() {
        return Err(format!("value #{} does not exist", v.0));
    }
    let val = g.value(v);
    match &val.def {
        Def::Input => {
            if g.inputs.contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "value `{}` is an input that the graph no longer has",
                    val.name
                ))
            }
        }
        Def::Const(t) => {
            if val.ty.as_ref() == Some(&Type::fixed(t.dtype, &t.dims)) {
                Ok(())
            } else {
                Err(format!(
                    "constant `{}` has a type that does not match its data",
                    val.name
                ))
            }
        }
        Def::Node(p, k) => {
            if !g.contains_node(*p) {
                Err(format!(
                    "value `{}` is dangling: its producer was removed",
                    val.name
                ))
            } else if g.node(*p).outputs.get(*k) != Some(&v) {
                Err(format!(
                    "value `{}` is not output {k} of its producer",
                    val.name
                ))
            } else {
                Ok(())
            }
        }
    }
}

fn ty(g: &Graph, v: Option<ValueId>) -> Option<&Type> {
    g.value(v?).ty.as_ref()
}

/// Type rules the verifier knows: operands of elementwise arithmetic share an
/// element type; comparisons and logic produce bool; `lpc.linear`'s weights
/// are 2-D and match the input width; shapes of node results agree in rank
/// with what the op implies where both are known.
fn check_types(g: &Graph, n: NodeId) -> Result<(), String> {
    let node = g.node(n);
    let dt = |k: usize| ty(g, node.inputs.get(k).copied().flatten()).map(|t| t.dtype);
    let out_dt = |k: usize| {
        node.outputs
            .get(k)
            .and_then(|&o| g.value(o).ty.as_ref())
            .map(|t| t.dtype)
    };
    match node.op.as_str() {
        "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" | "Mod" | "Equal" | "Less"
        | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
            if let (Some(a), Some(b)) = (dt(0), dt(1)) {
                if a != b {
                    return Err(format!("operands have element types {a} and {b}"));
                }
            }
        }
        _ => {}
    }
    if matches!(
        node.op.as_str(),
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Not"
    ) {
        if let Some(o) = out_dt(0) {
            if o != crate::DType::Bool {
                return Err(format!("result has element type {o}, expected bool"));
            }
        }
    }
    if node.op == "lpc.linear" {
        let parts = node.int("parts").unwrap_or(1).max(1) as usize;
        let tr = node.int("transposed") == Some(1);
        let width = ty(g, node.inputs[0])
            .and_then(|t| t.shape.as_ref())
            .and_then(|s| s.last().cloned());
        for p in 0..parts {
            let w = node
                .inputs
                .get(1 + p)
                .copied()
                .flatten()
                .ok_or(format!("weight {p} is missing"))?;
            // Weights are constants, or computed from constants at compile
            // time (rotation, fake quantization): check their declared shape.
            let Some(dims) = ty(g, Some(w)).and_then(|t| t.shape.clone()) else {
                continue;
            };
            // `bf16 = 1`: pairs along K, `[ceil(K/2), N, 2]`.
            let bf16 = node.int("bf16") == Some(1);
            let rank = if bf16 { 3 } else { 2 };
            if dims.len() != rank {
                return Err(format!(
                    "weight {p} has rank {}, expected {rank}",
                    dims.len()
                ));
            }
            if bf16 && dims[2] != crate::Dim::Fixed(2) {
                return Err(format!("bf16 weight {p} does not hold pairs"));
            }
            let k = if tr && !bf16 { &dims[1] } else { &dims[0] };
            if let (Some(crate::Dim::Fixed(x)), crate::Dim::Fixed(kw)) = (&width, k) {
                let want = if bf16 { x.div_ceil(2) } else { *x };
                if want != *kw {
                    let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                    return Err(format!(
                        "input width {x} does not match weight {p} [{}]",
                        d.join(", ")
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks the graph: every operand and output defined, producers and outputs
/// consistent, edges matching operands, unique names, no cycle.
pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    let mut names: HashMap<&str, ValueId> = HashMap::new();
    fn claim<'g>(
        g: &'g Graph,
        v: ValueId,
        names: &mut HashMap<&'g str, ValueId>,
    ) -> Result<(), String> {
        let name = g.value(v).name.as_str();
        match names.insert(name, v) {
            Some(other) if other != v => Err(format!("value name `{name}` is defined twice")),
            _ => Ok(()),
        }
    }
    for &i in &g.inputs {
        claim(g, i, &mut names).map_err(VerifyError::Graph)?;
    }
    for n in g.node_ids() {
        let node = g.node(n);
        for (k, v) in node.inputs.iter().enumerate() {
            if let Some(v) = v {
                defined(g, *v).map_err(|m| node_err(g, n, format!("input {k}: {m}")))?;
                if let Def::Const(_) = g.value(*v).def {
                    claim(g, *v, &mut names).map_err(|m| node_err(g, n, m))?;
                }
            }
        }
        for (k, &o) in node.outputs.iter().enumerate() {
            if g.value(o).def != Def::Node(n, k) {
                return Err(node_err(
                    g,
                    n,
                    format!("output {k} (`{}`) is defined elsewhere", g.value(o).name),
                ));
            }
            claim(g, o, &mut names).map_err(|m| node_err(g, n, m))?;
        }
        // The petgraph edges mirror the operands produced by nodes.
        let from_nodes = node
            .inputs
            .iter()
            .flatten()
            .filter(|v| g.producer(**v).is_some())
            .count();
        let edges = g
            .petgraph()
            .edges_directed(n, petgraph::Direction::Incoming)
            .count();
        if from_nodes != edges {
            return Err(node_err(
                g,
                n,
                format!("{edges} incoming edges for {from_nodes} node-produced operands"),
            ));
        }
    }
    for &o in &g.outputs {
        defined(g, o).map_err(|m| VerifyError::Graph(format!("output: {m}")))?;
    }
    for n in g.node_ids() {
        check_types(g, n).map_err(|m| node_err(g, n, m))?;
    }
    g.topo_order()
        .map_err(|n| node_err(g, n, "is on a cycle".into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::parse;

    fn graph(src: &str) -> Graph {
        parse(src, &|_| None).unwrap()
    }

    #[test]
    fn accepts_a_well_formed_graph() {
        let g = graph(
            "graph \"g\" [] {\n input %0 \"x\": f32[2]\n %1 \"y\" = Neg(%0) \"n\"\n output %1\n}",
        );
        verify(&g).unwrap();
    }

    #[test]
    fn names_the_node_of_a_dangling_use() {
        let mut g = graph(
            "graph \"g\" [] {\n input %0 \"x\": f32[2]\n %1 \"y\" = Neg(%0) \"neg\"\n %2 \"z\" = Relu(%1) \"relu\"\n output %2\n}",
        );
        let neg = g.node_ids().find(|&n| g.node(n).name == "neg").unwrap();
        g.remove_node(neg);
        let e = verify(&g).unwrap_err().to_string();
        assert!(e.contains("`relu` (Relu)") && e.contains("dangling"), "{e}");
    }

    #[test]
    fn checks_element_types_and_linear_shapes() {
        let g = graph("graph \"g\" [] {\n input %0 \"x\": f32[2]\n input %1 \"i\": i64[2]\n %2 \"y\" = Add(%0, %1) \"add\"\n output %2\n}");
        let e = verify(&g).unwrap_err().to_string();
        assert!(
            e.contains("`add` (Add): operands have element types f32 and i64"),
            "{e}"
        );
        let g = graph(
            "graph \"g\" [] {\n input %0 \"x\": f32[1, 3]\n const %1 \"w\": f32[2, 2] = [1.0, 2.0, 3.0, 4.0]\n %2 \"y\" = lpc.linear(%0, %1) \"lin\"\n output %2\n}",
        );
        let e = verify(&g).unwrap_err().to_string();
        assert!(
            e.contains("`lin` (lpc.linear): input width 3 does not match weight 0 [2, 2]"),
            "{e}"
        );
    }

    #[test]
    fn finds_cycles_and_duplicate_names() {
        let mut g = graph(
            "graph \"g\" [] {\n input %0 \"x\": f32[2]\n %1 \"a\" = Neg(%0) \"n1\"\n %2 \"b\" = Neg(%1) \"n2\"\n output %2\n}",
        );
        let n1 = g.node_ids().find(|&n| g.node(n).name == "n1").unwrap();
        let b = g.outputs[0];
        g.set_input(n1, 0, Some(b));
        assert!(verify(&g).unwrap_err().to_string().contains("cycle"));

        let g = graph(
            "graph \"g\" [] {\n input %0 \"x\": f32[2]\n %1 \"x\" = Neg(%0) \"n\"\n output %1\n}",
        );
        assert!(verify(&g)
            .unwrap_err()
            .to_string()
            .contains("defined twice"));
    }
}
