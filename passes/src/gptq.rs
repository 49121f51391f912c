//! GPTQ-style error compensation (Frantar et al., 2022) for one weight.
//!
//! Quantizes a weight `W` (`rows` output channels × `k` inputs, blocks along
//! `k`) column by column; each column's rounding error is spread over the
//! columns not yet quantized through the upper Cholesky factor of
//! `(H + λI)⁻¹`, where `H = Σ x xᵀ` is the Gram matrix of the layer's inputs
//! (a [`Hessian`], accumulated by the caller from calibration runs).
//!
//! Blocks: a block's scale (and HiF4's micro-exponents) is fixed when its
//! first column is reached, by the format's ordinary encoder (or the scale
//! search, each element's error weighted by its input's diagonal entry of
//! `H`) applied to the block's current, error-updated values; its
//! elements are then rounded to the nearest value that encoding can express.
//! With `act_order` (columns by decreasing `H` diagonal), the encodings are
//! fixed up front from the original weight instead ("static groups"). The
//! result is an ordinary packed encoding of the format.
//!
//! Rows are independent once the factor is known: they run in parallel and
//! the result does not depend on the thread count. The Cholesky
//! factorizations and the inverse come from `faer` (single-threaded, so
//! deterministic).

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use lpc_runtime::formats::Format;
use rayon::prelude::*;
use std::fmt;

/// `Σ x xᵀ` over the rows `x` (length `k`) a layer saw, in f64.
#[derive(Clone, PartialEq)]
pub struct Hessian {
    pub k: usize,
    /// Row-major `k × k`.
    pub h: Vec<f64>,
    /// Rows accumulated.
    pub rows: usize,
}

impl fmt::Debug for Hessian {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hessian({}x{}, {} rows)", self.k, self.k, self.rows)
    }
}

impl Hessian {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            h: vec![0.0; k * k],
            rows: 0,
        }
    }

    /// Adds the rows of `x` (`x.len()` a multiple of `k`). Each output row
    /// of `H` is summed in a fixed order, in parallel over rows of `H`.
    pub fn add_rows(&mut self, x: &[f32]) {
        let k = self.k;
        if k == 0 {
            return;
        }
        let xs: Vec<&[f32]> = x.chunks_exact(k).collect();
        self.h.par_chunks_mut(k).enumerate().for_each(|(i, hi)| {
            for r in &xs {
                let a = r[i] as f64;
                if a == 0.0 {
                    continue;
                }
                for (h, &b) in hi.iter_mut().zip(r.iter()) {
                    *h += a * b as f64;
                }
            }
        });
        self.rows += xs.len();
    }
}

/// GPTQ options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// Dampening: `λ = damp · mean(diag H)`.
    pub damp: f64,
    /// Process columns by decreasing `H` diagonal (static block encodings).
    pub act_order: bool,
    /// Fix each block's encoding with the scale search.
    pub search: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            damp: 0.01,
            act_order: false,
            search: false,
        }
    }
}

/// The upper Cholesky factor `U` (row-major `k × k`) of `(H + λI)⁻¹`, and
/// the columns whose diagonal was zero (inputs that never fired).
fn factor(h: &Hessian, damp: f64, perm: &[usize]) -> Result<(Vec<f64>, Vec<bool>), String> {
    let k = h.k;
    let dead: Vec<bool> = (0..k).map(|i| h.h[i * k + i] == 0.0).collect();
    let mean = (0..k).map(|i| h.h[i * k + i]).sum::<f64>() / k.max(1) as f64;
    let lambda = damp * if mean > 0.0 { mean } else { 1.0 };
    let m = Mat::<f64>::from_fn(k, k, |i, j| {
        let (pi, pj) = (perm[i], perm[j]);
        let v = if dead[pi] || dead[pj] {
            (pi == pj) as u8 as f64
        } else {
            h.h[pi * k + pj]
        };
        v + if i == j { lambda } else { 0.0 }
    });
    let inv = m
        .llt(Side::Lower)
        .map_err(|e| format!("the Hessian is not positive definite ({e:?}); raise --gptq-damp"))?
        .inverse();
    let l = inv
        .llt(Side::Lower)
        .map_err(|e| format!("the inverse Hessian is not positive definite ({e:?})"))?;
    let l = l.L();
    let mut u = vec![0f64; k * k];
    for i in 0..k {
        for j in i..k {
            u[i * k + j] = l[(j, i)];
        }
    }
    Ok((u, dead))
}

/// The nearest of a position's 16 code values: `(code, value)`; ties go to
/// the smaller code.
fn nearest(values: &[f32; 16], x: f64) -> (u8, f32) {
    let mut best = (0u8, values[0]);
    let mut err = f64::INFINITY;
    for (c, &v) in values.iter().enumerate() {
        let e = (x - v as f64).abs();
        if e < err {
            err = e;
            best = (c as u8, v);
        }
    }
    best
}

/// Quantizes `w` (row-major `rows × h.k`) with error compensation; returns
/// the packed bytes in the bulk codec's order (rows, then blocks along `k`,
/// the last block zero-padded).
pub fn quantize(
    f: Format,
    w: &[f32],
    rows: usize,
    h: &Hessian,
    opt: Options,
) -> Result<Vec<u8>, String> {
    let k = h.k;
    if w.len() != rows * k {
        return Err(format!(
            "weight has {} elements, expected {rows} x {k}",
            w.len()
        ));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err("GPTQ needs finite weights".into());
    }
    if k == 0 || rows == 0 {
        return Ok(Vec::new());
    }
    let bl = f.block_len();
    let nb = k.div_ceil(bl);
    let bb = f.block_bytes();
    let mut perm: Vec<usize> = (0..k).collect();
    if opt.act_order {
        // Stable: equal diagonals keep their order.
        perm.sort_by(|&a, &b| h.h[b * k + b].total_cmp(&h.h[a * k + a]));
    }
    let (u, dead) = factor(h, opt.damp, &perm)?;
    let importance: Vec<f32> = (0..k).map(|j| h.h[j * k + j] as f32).collect();
    let mut out = vec![0u8; rows * nb * bb];
    out.par_chunks_mut(nb * bb)
        .zip(w.par_chunks(k))
        .for_each(|(packed, row)| {
            // Dead inputs contribute nothing: their weights quantize from 0.
            let orig: Vec<f32> = row
                .iter()
                .zip(&dead)
                .map(|(&v, &d)| if d { 0.0 } else { v })
                .collect();
            let encode = |b: usize, vals: &[f32]| {
                let end = ((b + 1) * bl).min(k);
                let w = &importance[b * bl..end];
                f.encode_block_with(&vals[b * bl..end], opt.search.then_some(Some(w)))
            };
            let mut grids: Vec<Option<Vec<[f32; 16]>>> = vec![None; nb];
            let is4 = bl > 1;
            if opt.act_order && is4 {
                for b in 0..nb {
                    let e = encode(b, &orig);
                    grids[b] = f.code_values(&e);
                    packed[b * bb..(b + 1) * bb].copy_from_slice(&e);
                }
            }
            // The row in processing order, updated as errors feed forward.
            let mut x: Vec<f64> = perm.iter().map(|&j| orig[j] as f64).collect();
            let mut cur: Vec<f32> = orig.clone();
            for t in 0..k {
                let j = perm[t];
                let b = j / bl;
                let v = x[t];
                let q = if is4 {
                    if grids[b].is_none() {
                        // In order: columns b*bl.. are at t.., current values.
                        for (c, &xv) in cur[b * bl..((b + 1) * bl).min(k)].iter_mut().zip(&x[t..]) {
                            *c = xv as f32;
                        }
                        let e = encode(b, &cur);
                        grids[b] = f.code_values(&e);
                        packed[b * bb..(b + 1) * bb].copy_from_slice(&e);
                    }
                    let g = grids[b].as_ref().expect("grid fixed");
                    let (c, q) = nearest(&g[j % bl], v);
                    f.set_code(&mut packed[b * bb..(b + 1) * bb], j % bl, c);
                    q
                } else {
                    let (c, q) = f.quantize_scalar(v as f32).expect("HiF8 has scalars");
                    packed[j] = c;
                    q
                };
                let err = (v - q as f64) / u[t * k + t];
                let ut = &u[t * k..(t + 1) * k];
                for (xs, &us) in x[t + 1..].iter_mut().zip(&ut[t + 1..]) {
                    *xs -= err * us;
                }
            }
        });
    Ok(out)
}
