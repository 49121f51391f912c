//! `smooth`: SmoothQuant-style migration of activation outliers into the
//! weights (`--smooth ALPHA`).
//!
//! Matches: a quantized `lpc.linear` (activations quantized too) with
//! calibration statistics (`QuantConfig::smooth`: per input channel `max|x_j|`)
//! whose input is produced by `lpc.rms_norm` with a constant f32 `gamma`,
//! where the norm's result and `gamma` have no other users, and whose weights
//! are f32 constants.
//! Guarantees: with `s_j = max|x_j|^α / max_i|W_ij|^(1−α)` (1 where either
//! is 0, clamped to [1e-5, 1e5]), `gamma_j / s_j` and `W_j· · s_j` replace
//! `gamma` and `W`: the product is unchanged in real arithmetic; activation
//! outliers shrink before quantization. The factors stay on the linear (and
//! its `qgemm`) as the informational attribute `smooth` (floats). Other linears are left alone (there
//! is nothing to fold `1/s` into). Run after canonicalization, before
//! `rotate`.

use crate::quant_policy::{plan, QuantConfig};
use crate::Pass;
use lpc_ir::{Attr, DType, Graph, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// `--smooth ALPHA` with its calibration statistics (per layer name).
#[derive(Debug, Clone, Default)]
pub struct SmoothConfig {
    pub alpha: f32,
    pub act_max: Arc<HashMap<String, Vec<f32>>>,
    /// Calibration samples to generate, and their seed.
    pub samples: usize,
    pub seed: u64,
}

#[derive(Debug)]
pub struct Smooth(pub QuantConfig);

/// An f32 tensor's elements (smoothing rewrites f32 constants only).
fn f32s(t: &Tensor) -> Option<Vec<f32>> {
    (t.dtype == DType::F32)
        .then(|| crate::util::widen(t))
        .flatten()
}

/// The smoothing factors for activation maxima `a` and weight maxima `w`.
pub fn factors(a: &[f32], w: &[f32], alpha: f32) -> Vec<f32> {
    a.iter()
        .zip(w)
        .map(|(&a, &w)| {
            if a > 0.0 && w > 0.0 {
                (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-5, 1e5)
            } else {
                1.0
            }
        })
        .collect()
}

impl Pass for Smooth {
    fn name(&self) -> &'static str {
        "smooth"
    }
    fn summary(&self) -> &'static str {
        "SmoothQuant: move activation outliers into the weights, folded into the preceding RMSNorm"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let Some(sc) = &self.0.smooth else {
            return Ok(false);
        };
        let mut changed = false;
        for lp in plan(g, &self.0).layers {
            if !matches!(lp.formats, Some((_, Some(_)))) {
                continue;
            }
            let node = g.node(lp.node).clone();
            if node.attr("smooth").is_some() {
                continue;
            }
            let Some(amax) = sc.act_max.get(&node.name) else {
                continue;
            };
            let Some(x) = node.inputs[0] else { continue };
            let Some(norm) = g.producer(x).filter(|&p| g.node(p).op == "lpc.rms_norm") else {
                continue;
            };
            let Some(gv) = g.node(norm).inputs.get(1).copied().flatten() else {
                continue;
            };
            if !crate::util::single_use(g, x) || !crate::util::single_use(g, gv) {
                continue;
            }
            let Some(gamma) = g.constant(gv).and_then(f32s) else {
                continue;
            };
            let k = gamma.len();
            if amax.len() != k {
                continue;
            }
            let parts = node.int("parts").unwrap_or(1).max(1) as usize;
            let tr = node.int("transposed") == Some(1);
            let mut ws = Vec::new();
            for p in 0..parts {
                let Some(t) = node.inputs[1 + p].and_then(|v| g.constant(v)) else {
                    break;
                };
                let Some(v) = f32s(t) else { break };
                let kk = if tr { t.dims[1] } else { t.dims[0] };
                if t.dims.len() != 2 || kk != k {
                    break;
                }
                ws.push((t.dims.clone(), v));
            }
            if ws.len() != parts {
                continue;
            }
            // Weight element (input j, output o) of a [k, n] or [n, k] weight.
            let idx = |dims: &[usize], j: usize, o: usize| {
                if tr {
                    o * dims[1] + j
                } else {
                    j * dims[1] + o
                }
            };
            let mut wmax = vec![0f32; k];
            for (dims, v) in &ws {
                let n = if tr { dims[0] } else { dims[1] };
                for (j, m) in wmax.iter_mut().enumerate() {
                    for o in 0..n {
                        *m = m.max(v[idx(dims, j, o)].abs());
                    }
                }
            }
            let s = factors(amax, &wmax, sc.alpha);
            let g2: Vec<f32> = gamma.iter().zip(&s).map(|(a, b)| a / b).collect();
            let gname = format!("{}/smoothed", g.value(gv).name);
            let gnew = g.add_const(gname, Tensor::from_f32(vec![k], &g2));
            g.set_input(norm, 1, Some(gnew));
            for (p, (dims, mut v)) in ws.into_iter().enumerate() {
                let n = if tr { dims[0] } else { dims[1] };
                for (j, &sj) in s.iter().enumerate() {
                    for o in 0..n {
                        v[idx(&dims, j, o)] *= sj;
                    }
                }
                let wv = node.inputs[1 + p].expect("checked");
                let wname = format!("{}/smoothed", g.value(wv).name);
                let wnew = g.add_const(wname, Tensor::from_f32(dims.clone(), &v));
                g.set_input(lp.node, 1 + p, Some(wnew));
            }
            g.node_mut(lp.node)
                .attrs
                .insert("smooth".into(), Attr::Floats(s));
            changed = true;
        }
        Ok(changed)
    }
}
