//! `quantize-insert`: explicit quantization of the selected linear layers.
//!
//! Matches: every `lpc.linear` the quantization plan selects
//! ([`crate::quant_policy`]).
//! Guarantees: its activation operand becomes
//! `lpc.dequantize(lpc.quantize(x) {format, mode, axis = -1})` (unless the
//! scheme is weight-only) and each weight operand
//! `lpc.dequantize(lpc.quantize(W) {format, mode, axis = K axis})`, blocks
//! along the reduction axis in both; the graph computes exactly the
//! fake-quantized layer. Run after `rotate` (if any), before
//! `weights-prequantize`.

use crate::quant_policy::{plan, QuantConfig};
use crate::Pass;
use lpc_ir::{Attr, DType, Graph, NewNode, Type, ValueId};
use lpc_runtime::formats::Format;
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct QuantizeInsert(pub QuantConfig);

/// `dequantize(quantize(v))` along `axis` (of length `k`); with `scaled`,
/// per-row power-of-two scales travel from the quantize to the dequantize;
/// `search` asks for the scale search (weights).
fn qdq(
    g: &mut Graph,
    v: ValueId,
    f: Format,
    axis: i64,
    k: usize,
    scaled: bool,
    search: bool,
    tag: &str,
) -> ValueId {
    let mut attrs = BTreeMap::new();
    if search {
        attrs.insert("search".to_string(), Attr::Int(1));
    }
    attrs.insert("format".to_string(), Attr::String(f.name().into()));
    attrs.insert("mode".to_string(), Attr::String(f.mode_name().into()));
    attrs.insert("axis".to_string(), Attr::Int(axis));
    if scaled {
        attrs.insert("scale".to_string(), Attr::String("pow2".into()));
    }
    let ty = g.value(v).ty.clone();
    let mut outs = vec![(
        format!("{tag}/packed"),
        Some(Type {
            dtype: DType::U8,
            shape: None,
        }),
    )];
    if scaled {
        outs.push((
            format!("{tag}/exps"),
            Some(Type {
                dtype: DType::I32,
                shape: None,
            }),
        ));
    }
    let q = g
        .add_node(
            NewNode {
                name: format!("{tag}/quantize"),
                op: "lpc.quantize".into(),
                attrs: attrs.clone(),
                inputs: vec![Some(v)],
            },
            outs,
        )
        .1;
    attrs.insert("axis_len".to_string(), Attr::Int(k as i64));
    g.add_node(
        NewNode {
            name: format!("{tag}/dequantize"),
            op: "lpc.dequantize".into(),
            attrs,
            inputs: q.into_iter().map(Some).collect(),
        },
        vec![(format!("{tag}/fq"), ty)],
    )
    .1[0]
}

impl Pass for QuantizeInsert {
    fn name(&self) -> &'static str {
        "quantize-insert"
    }
    fn summary(&self) -> &'static str {
        "explicit quantize/dequantize on the weights and activations of selected linear layers"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let mut changed = false;
        for lp in plan(g, &self.0).layers {
            let Some((wf, af)) = lp.formats else { continue };
            let node = g.node(lp.node).clone();
            let parts = node.int("parts").unwrap_or(1).max(1) as usize;
            let transposed = node.int("transposed") == Some(1);
            let w0 = node.inputs[1].ok_or("linear without weight")?;
            let dims = g
                .value(w0)
                .ty
                .as_ref()
                .and_then(|t| t.shape.clone())
                .ok_or_else(|| format!("weight of `{}` has no shape", node.name))?;
            let k = match dims.get(if transposed { 1 } else { 0 }) {
                Some(lpc_ir::Dim::Fixed(k)) => *k,
                _ => {
                    return Err(format!(
                        "weight of `{}` has no static input width",
                        node.name
                    ))
                }
            };
            if let Some(af) = af {
                let x = node.inputs[0].ok_or("linear without input")?;
                let scaled = self.0.hif8_scale && matches!(af, Format::Hif8(_));
                let fq = qdq(
                    g,
                    x,
                    af,
                    -1,
                    k,
                    scaled,
                    false,
                    &format!("{}/act", node.name),
                );
                g.set_input(lp.node, 0, Some(fq));
            }
            for i in 0..parts {
                let w = node.inputs[1 + i].ok_or("linear without weight")?;
                let scaled = self.0.hif8_scale && matches!(wf, Format::Hif8(_));
                let axis = if transposed { 1 } else { 0 };
                let search = self.0.scale_search && wf.block_len() > 1;
                let fq = qdq(
                    g,
                    w,
                    wf,
                    axis,
                    k,
                    scaled,
                    search,
                    &format!("{}/w{i}", node.name),
                );
                g.set_input(lp.node, 1 + i, Some(fq));
            }
            changed = true;
        }
        Ok(changed)
    }
}
