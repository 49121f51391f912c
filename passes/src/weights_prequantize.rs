//! `weights-prequantize`: quantizes constant weights at compile time.
//!
//! Matches: `lpc.quantize(W)` and `lpc.quantize(lpc.rotate(W))` with a
//! constant `W` (f32, f16 or bf16).
//! Guarantees: a packed `u8` constant with exactly the bytes the `lpc.quantize`
//! kernel would produce (the runtime's bulk codec, parallel over blocks), or
//! the codes GPTQ calibration chose for it (`QuantConfig::gptq`; [`pack`]
//! with a Hessian is how calibration makes them), or the scale search
//! weighted by calibration importances (`QuantConfig::search_calibration`).
//! One
//! weight at a time: the rotated f32 scratch copy of a weight lives only
//! while that weight is packed; the original stays memory-mapped.
//! Run after `quantize-insert` (and `rotate`), before `fuse-qgemm`.

use crate::Pass;
use lpc_ir::interp::quant::{format_of, packed_shape};
use lpc_ir::{DType, Graph, NodeId, Tensor};
use lpc_runtime::formats::rowscale;
use lpc_runtime::hadamard;

#[derive(Debug)]
pub struct WeightsPrequantize(pub crate::QuantConfig);

/// Where a weight's codes come from.
#[derive(Debug, Clone, Copy)]
pub enum Codes<'a> {
    /// The format's encoder (or the scale search, `search = 1`).
    Nearest,
    /// The scale search (`search = 1`) with each element's error weighted
    /// by its input channel's importance (one per index along the
    /// reduction axis).
    Weighted(&'a [f32]),
    /// GPTQ with this Hessian.
    Gptq(&'a crate::gptq::Hessian, crate::gptq::Options),
    /// Packed by GPTQ calibration already (checked for size).
    Packed(&'a [u8]),
}

/// A weight's packed codes, and its row exponents when `scale = "pow2"`.
#[derive(Debug, Clone)]
pub struct PackedWeight {
    pub packed: Tensor,
    pub exps: Option<Tensor>,
}

fn prequantize(g: &mut Graph, n: NodeId, cfg: &crate::QuantConfig) -> Result<bool, String> {
    let node = g.node(n);
    let packed = cfg.gptq.as_ref().and_then(|gq| gq.packed.0.get(&node.name));
    let importance = cfg
        .search_calibration
        .as_ref()
        .and_then(|s| s.importance.get(&node.name));
    let codes = match (packed, importance) {
        (Some(p), _) => Codes::Packed(p),
        (None, Some(w)) => Codes::Weighted(w),
        (None, None) => Codes::Nearest,
    };
    let Some(p) = pack(g, n, codes)? else {
        return Ok(false);
    };
    let node = g.node(n).clone();
    g.make_const(node.outputs[0], p.packed);
    if let (Some(e), Some(&o)) = (p.exps, node.outputs.get(1)) {
        g.make_const(o, e);
    }
    g.remove_node(n);
    Ok(true)
}

/// Packs the constant weight that the `lpc.quantize` node `n` reads (behind
/// a compile-time `lpc.rotate` or not), as that node would at run time, with
/// the codes from `codes`. `None` when the node does not read a constant.
pub fn pack(g: &Graph, n: NodeId, codes: Codes) -> Result<Option<PackedWeight>, String> {
    let node = g.node(n);
    let Some(src) = node.inputs[0] else {
        return Ok(None);
    };
    // The weight, possibly behind a compile-time rotation.
    let (w, rot) = match g.producer(src).map(|p| (p, g.node(p))) {
        Some((_, r)) if r.op == "lpc.rotate" => (
            r.inputs[0],
            Some((
                r.int("block").unwrap_or(32) as usize,
                r.int("axis").unwrap_or(-1),
            )),
        ),
        _ => (Some(src), None),
    };
    let Some(t) = w.and_then(|w| g.constant(w)) else {
        return Ok(None);
    };
    let Some(mut x) = crate::util::widen(t) else {
        return Ok(None);
    };
    let f = format_of(node.string("format").unwrap_or("none"), node.string("mode"))?
        .ok_or("quantize to `none`")?;
    let rank = t.dims.len();
    let norm = |a: i64| {
        if a < 0 {
            (a + rank as i64) as usize
        } else {
            a as usize
        }
    };
    if let Some((b, raxis)) = rot {
        let ax = norm(raxis);
        let k = t.dims[ax];
        if k % b != 0 {
            return Err(format!(
                "`{}`: {k} is not a multiple of the rotation block {b}",
                node.name
            ));
        }
        hadamard::rotate_axis(&mut x, &t.dims, ax, b);
    }
    let ax = norm(node.int("axis").unwrap_or(-1));
    let l = f
        .layout(&t.dims, ax as isize, true)
        .map_err(|e| e.to_string())?;
    let scaled = node.string("scale") == Some("pow2");
    let exps = if scaled {
        Some(rowscale::scale_rows(&mut x, &l))
    } else {
        None
    };
    let shape = packed_shape(&t.dims, ax, f);
    let size: usize = shape.iter().product();
    let bytes = match codes {
        Codes::Packed(p) => {
            if p.len() != size {
                return Err(format!(
                    "`{}`: GPTQ packed {} bytes, the weight needs {size}",
                    node.name,
                    p.len(),
                ));
            }
            p.to_vec()
        }
        Codes::Gptq(h, opt) => gptq_codes(node, f, &x, &l, h, opt)?,
        Codes::Nearest | Codes::Weighted(_) if node.int("search") == Some(1) => {
            let w = match codes {
                Codes::Weighted(w) => Some(w),
                _ => None,
            };
            f.quantize_search_weighted(&x, &l, w)
                .map_err(|e| format!("`{}`: {e}", node.name))?
        }
        // Importances only steer the search.
        Codes::Nearest | Codes::Weighted(_) => f.quantize(&x, &l).map_err(|e| e.to_string())?,
    };
    drop(x);
    let rows = shape[..shape.len() - 1].to_vec();
    let packed = Tensor::new(DType::U8, shape, bytes.into()).ok_or("packed size")?;
    let exps = match exps {
        Some(e) => {
            let data: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
            Some(Tensor::new(DType::I32, rows, data.into()).ok_or("exponents size")?)
        }
        None => None,
    };
    Ok(Some(PackedWeight { packed, exps }))
}

/// GPTQ codes for the prepared (rotated, row-scaled) weight `x`.
fn gptq_codes(
    node: &lpc_ir::Node,
    f: lpc_runtime::formats::Format,
    x: &[f32],
    l: &lpc_runtime::formats::AxisLayout,
    h: &crate::gptq::Hessian,
    opt: crate::gptq::Options,
) -> Result<Vec<u8>, String> {
    {
        if h.k != l.axis_len {
            return Err(format!(
                "`{}`: GPTQ Hessian is {}x{} for a reduction axis of {}",
                node.name, h.k, h.k, l.axis_len
            ));
        }
        // Rows along the reduction axis, in the bulk codec's row order.
        let rows: Vec<f32> = (0..l.rows())
            .flat_map(|r| {
                let (o, i) = (r / l.inner, r % l.inner);
                (0..l.axis_len).map(move |k| x[(o * l.axis_len + k) * l.inner + i])
            })
            .collect();
        let opt = crate::gptq::Options {
            search: node.int("search") == Some(1),
            ..opt
        };
        crate::gptq::quantize(f, &rows, l.rows(), h, opt)
            .map_err(|e| format!("`{}`: {e}", node.name))
    }
}

impl Pass for WeightsPrequantize {
    fn name(&self) -> &'static str {
        "weights-prequantize"
    }
    fn summary(&self) -> &'static str {
        "pack constant weights at compile time with the runtime's codecs"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let mut changed = false;
        for n in order {
            if g.contains_node(n) && g.node(n).op == "lpc.quantize" {
                changed |= prequantize(g, n, &self.0)?;
            }
        }
        Ok(changed)
    }
}
