//! Pattern-matching helpers shared by the passes.

use lpc_ir::{Attr, Graph, NewNode, Node, NodeId, ValueId};
use std::collections::BTreeMap;

/// The node that produces `v`, if any.
pub fn def(g: &Graph, v: ValueId) -> Option<(NodeId, &Node)> {
    g.producer(v).map(|n| (n, g.node(n)))
}

/// The producer of `v` if it is `op`.
pub fn def_op<'g>(g: &'g Graph, v: ValueId, op: &str) -> Option<(NodeId, &'g Node)> {
    def(g, v).filter(|(_, n)| n.op == op)
}

/// Is `v` read exactly once, by a node, and not a graph output?
pub fn single_use(g: &Graph, v: ValueId) -> bool {
    g.consumers(v).len() == 1 && !g.outputs.contains(&v)
}

/// Is `v` never read?
pub fn unused(g: &Graph, v: ValueId) -> bool {
    g.consumers(v).is_empty() && !g.outputs.contains(&v)
}

/// The single element of a constant, as f64.
pub fn scalar(g: &Graph, v: ValueId) -> Option<f64> {
    let t = g.constant(v)?;
    (t.len() == 1).then(|| t.to_f64_vec()[0])
}

/// Operand `k` of a node, if present.
pub fn arg(n: &Node, k: usize) -> Option<ValueId> {
    n.inputs.get(k).copied().flatten()
}

/// For a commutative binary node, the operand that is not `v`.
pub fn other(n: &Node, v: ValueId) -> Option<ValueId> {
    match (arg(n, 0), arg(n, 1)) {
        (Some(a), Some(b)) if a == v => Some(b),
        (Some(a), Some(b)) if b == v => Some(a),
        _ => None,
    }
}

/// Replaces value `old` by the single output of a new node: the new value
/// takes `old`'s name and type, every reader of `old` reads it, and `old` is
/// renamed so that dead-code elimination can remove its producers.
pub fn replace_value(
    g: &mut Graph,
    old: ValueId,
    name: String,
    op: &str,
    attrs: BTreeMap<String, Attr>,
    inputs: Vec<Option<ValueId>>,
) -> ValueId {
    let (vname, ty) = {
        let v = g.value(old);
        (v.name.clone(), v.ty.clone())
    };
    g.value_mut(old).name = format!("{vname}#replaced");
    let (_, outs) = g.add_node(
        NewNode {
            name,
            op: op.to_string(),
            attrs,
            inputs,
        },
        vec![(vname, ty)],
    );
    g.replace_uses(old, outs[0]);
    outs[0]
}

/// Nodes of `op` in topological order (snapshot: the graph may change).
pub fn nodes_of(g: &Graph, op: &str) -> Vec<NodeId> {
    g.topo_order()
        .unwrap_or_default()
        .into_iter()
        .filter(|&n| g.node(n).op == op)
        .collect()
}

/// The graph's nodes in topological order, or an error naming a node on a cycle.
pub fn topo(g: &Graph) -> Result<Vec<NodeId>, String> {
    g.topo_order()
        .map_err(|n| format!("cycle at `{}`", g.node(n).name))
}

/// A float tensor's elements as f32 (f32, f16, bf16; `None` otherwise).
pub fn widen(t: &lpc_ir::Tensor) -> Option<Vec<f32>> {
    fn conv<T: lpc_runtime::formats::Element + Copy>(
        d: &[u8],
        from: fn(&[u8]) -> T,
        size: usize,
    ) -> Vec<f32> {
        d.chunks_exact(size).map(|c| from(c).to_f32()).collect()
    }
    Some(match t.dtype {
        lpc_ir::DType::F32 => conv(
            &t.data,
            |c| f32::from_le_bytes(c.try_into().expect("4 bytes")),
            4,
        ),
        lpc_ir::DType::F16 => conv(&t.data, |c| half::f16::from_le_bytes([c[0], c[1]]), 2),
        lpc_ir::DType::Bf16 => conv(&t.data, |c| half::bf16::from_le_bytes([c[0], c[1]]), 2),
        _ => return None,
    })
}
