//! `rotate`: the block Hadamard rotation of quantized layers (`--rotate hadamard`).
//!
//! Matches: every `lpc.linear` the quantization plan selects, when the
//! configuration asks for rotation and the input width is a multiple of the
//! rotation block (the activation format's block, at least 32).
//! Guarantees: `lpc.linear(lpc.rotate(x), lpc.rotate(W_i) ...)`: both sides
//! rotated along the reduction axis by the same orthogonal block Hadamard
//! matrix, so the product is unchanged in real arithmetic (and within f32
//! rounding in the interpreter). `weights-prequantize` later evaluates the
//! weight side at compile time; `fuse-qgemm` moves the activation side into
//! the `qgemm`. Run after canonicalization, before `quantize-insert`.

use crate::quant_policy::{plan, QuantConfig};
use crate::Pass;
use lpc_ir::{Attr, Graph, NewNode};
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Rotate(pub QuantConfig);

/// The rotation block for a scheme.
pub fn rotation_block(
    cfg_w: lpc_runtime::formats::Format,
    cfg_a: Option<lpc_runtime::formats::Format>,
) -> usize {
    cfg_a.map_or(cfg_w.block_len(), |a| a.block_len()).max(32)
}

impl Pass for Rotate {
    fn name(&self) -> &'static str {
        "rotate"
    }
    fn summary(&self) -> &'static str {
        "block Hadamard rotation of the weights and activations of quantized layers"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        if !self.0.rotate {
            return Ok(false);
        }
        let mut changed = false;
        for lp in plan(g, &self.0).layers {
            let Some((wf, af)) = lp.formats else { continue };
            let b = rotation_block(wf, af);
            let node = g.node(lp.node).clone();
            let parts = node.int("parts").unwrap_or(1).max(1) as usize;
            let transposed = node.int("transposed") == Some(1);
            let Some(w0) = node.inputs[1].and_then(|w| g.constant(w)) else {
                continue;
            };
            let k = if transposed { w0.dims[1] } else { w0.dims[0] };
            if k % b != 0 {
                continue;
            }
            let rot = |g: &mut Graph, v, axis: i64, tag: String| {
                let mut attrs = BTreeMap::new();
                attrs.insert("block".to_string(), Attr::Int(b as i64));
                attrs.insert("axis".to_string(), Attr::Int(axis));
                let ty = g.value(v).ty.clone();
                g.add_node(
                    NewNode {
                        name: tag.clone(),
                        op: "lpc.rotate".into(),
                        attrs,
                        inputs: vec![Some(v)],
                    },
                    vec![(format!("{tag}/out"), ty)],
                )
                .1[0]
            };
            let x = node.inputs[0].ok_or("linear without input")?;
            let xr = rot(g, x, -1, format!("{}/rotate_x", node.name));
            g.set_input(lp.node, 0, Some(xr));
            for i in 0..parts {
                let w = node.inputs[1 + i].ok_or("linear without weight")?;
                let wr = rot(
                    g,
                    w,
                    if transposed { 1 } else { 0 },
                    format!("{}/rotate_w{i}", node.name),
                );
                g.set_input(lp.node, 1 + i, Some(wr));
            }
            changed = true;
        }
        Ok(changed)
    }
}
