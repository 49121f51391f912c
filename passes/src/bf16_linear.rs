//! `bf16-linear`: the linear layers a quantization scheme leaves
//! unquantized, in bf16.
//!
//! Matches: every `lpc.linear` with constant weights (f32, f16 or bf16)
//! still in the graph after `fuse-qgemm`: the layers the plan left
//! unquantized (the output head, conditioning layers, `--exclude`,
//! `REGEX=none`).
//! Guarantees: the node gets `bf16 = 1` and each weight `W` (`[K, N]`, or
//! `[N, K]` when `transposed`) becomes a bf16 constant `[ceil(K/2), N, 2]`
//! of pairs along K, `W2[t, j, h] = bf16(W[2t + h, j])` (zero past K),
//! with `transposed` dropped: the layout that one `vdpbf16ps` per 16
//! columns reads. The node then computes `x` rounded to bf16 times the
//! bf16 weights, products exact and summed in f32 (see the interpreter's
//! `lpc.linear`). Weights half the bytes of f32, products at twice the
//! f32 rate on AVX-512 BF16. Run after `fuse-qgemm`, only when a scheme
//! quantizes (`QuantConfig::unquantized_bf16`); `dce` after.

use crate::Pass;
use lpc_ir::{Attr, DType, Graph, NodeId, Tensor};
use rayon::prelude::*;

#[derive(Debug)]
pub struct Bf16Linear;

/// `w` (`[K, N]`, or `[N, K]` when `tr`) as bf16 pairs `[ceil(K/2), N, 2]`.
pub fn pairs(w: &[f32], k: usize, n: usize, tr: bool) -> Tensor {
    let kp = k.div_ceil(2);
    let at = |t: usize, j: usize| if tr { w[j * k + t] } else { w[t * n + j] };
    let mut data = vec![0u8; kp * n * 4];
    data.par_chunks_mut(n * 4).enumerate().for_each(|(t, row)| {
        for (j, out) in row.chunks_exact_mut(4).enumerate() {
            for h in 0..2 {
                let kk = 2 * t + h;
                let v = if kk < k { at(kk, j) } else { 0.0 };
                out[2 * h..2 * h + 2].copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            }
        }
    });
    Tensor::new(DType::Bf16, vec![kp, n, 2], data.into()).expect("pair layout size")
}

fn convert(g: &mut Graph, n: NodeId) -> bool {
    let node = g.node(n).clone();
    if node.int("bf16") == Some(1) {
        return false;
    }
    let parts = node.int("parts").unwrap_or(1).max(1) as usize;
    let tr = node.int("transposed") == Some(1);
    // Every weight a 2-D float constant, or the node stays as it is.
    let mut ws = Vec::with_capacity(parts);
    for p in 0..parts {
        let Some(v) = node.inputs.get(1 + p).copied().flatten() else {
            return false;
        };
        let Some(t) = g.constant(v) else {
            return false;
        };
        let (&[r, c], Some(x)) = (&t.dims[..], crate::util::widen(t)) else {
            return false;
        };
        let (k, nn) = if tr { (c, r) } else { (r, c) };
        ws.push((v, pairs(&x, k, nn, tr)));
    }
    for (p, (v, t)) in ws.into_iter().enumerate() {
        let name = format!("{}/bf16", g.value(v).name);
        let c = g.add_const(name, t);
        g.set_input(n, 1 + p, Some(c));
    }
    let attrs = &mut g.node_mut(n).attrs;
    attrs.remove("transposed");
    attrs.insert("bf16".into(), Attr::Int(1));
    true
}

impl Pass for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }
    fn summary(&self) -> &'static str {
        "keep the unquantized linear layers in bf16 (weights as K pairs)"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let mut changed = false;
        for n in order {
            if g.contains_node(n) && g.node(n).op == "lpc.linear" {
                changed |= convert(g, n);
            }
        }
        Ok(changed)
    }
}
