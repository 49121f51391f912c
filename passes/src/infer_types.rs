//! `infer-types`: element types (and shapes where the exporter gave none
//! but they are static) for every node result.
//!
//! Matches: results without a type. Guarantees: every result whose operands
//! have known element types gets one; types the exporter wrote are kept.
//! Runs first: the fusion passes rely on element types (e.g. to drop Casts
//! to the type a value already has).

use crate::Pass;
use lpc_ir::{Attr, DType, Graph, Type};

pub struct InferTypes;

/// The element type of output `k` of a node, from its op and operand types.
fn out_dtype(g: &Graph, n: lpc_ir::NodeId, k: usize) -> Option<DType> {
    let node = g.node(n);
    let in_dt = |i: usize| -> Option<DType> {
        node.inputs
            .get(i)
            .copied()
            .flatten()
            .and_then(|v| g.value(v).ty.as_ref().map(|t| t.dtype))
    };
    let first = || {
        node.inputs
            .iter()
            .flatten()
            .find_map(|&v| g.value(v).ty.as_ref().map(|t| t.dtype))
    };
    Some(match node.op.as_str() {
        "Shape" | "Size" => DType::I64,
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor"
        | "Not" | "IsNaN" | "IsInf" => DType::Bool,
        "Cast" => DType::from_onnx_code(node.int("to")? as i32)?,
        "ConstantOfShape" => match node.attr("value") {
            Some(Attr::Tensor(t)) => t.dtype,
            _ => DType::F32,
        },
        "Where" => in_dt(1)?,
        "LayerNormalization" | "RMSNormalization" | "SimplifiedLayerNormalization" if k > 0 => {
            DType::F32
        }
        "com.microsoft.SkipSimplifiedLayerNormalization" if k == 1 || k == 2 => DType::F32,
        _ => first()?,
    })
}

impl Pass for InferTypes {
    fn name(&self) -> &'static str {
        "infer-types"
    }
    fn summary(&self) -> &'static str {
        "give every node result an element type"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let mut changed = false;
        for n in order {
            let outs = g.node(n).outputs.clone();
            for (k, o) in outs.into_iter().enumerate() {
                if g.value(o).ty.is_some() {
                    continue;
                }
                if let Some(dtype) = out_dtype(g, n, k) {
                    g.value_mut(o).ty = Some(Type { dtype, shape: None });
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}
