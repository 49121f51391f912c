//! lpc's canonical ops (`lpc.*`), produced by the canonicalization passes.

use super::value::{round_to, Data, TensorValue};
use super::{OpCtx, R};
use lpc_runtime::math::silu_f32;

/// `lpc.linear(x, W_1, ..., W_n, bias?) {transposed, parts = n}`: `x · [W_1 | ...
/// | W_n] (+ bias)` over the last axis of x; each W_i is `[in, out_i]`, or
/// `[out_i, in]` when `transposed = 1`; the bias covers all outputs.
///
/// With `bf16 = 1` (`bf16-linear`) each W_i holds bf16 pairs along K,
/// `[ceil(in/2), out_i, 2]`, x is rounded to bf16, and each output sums,
/// pair by pair in K order, the even then the odd product (both exact in
/// f32) into an f32 accumulator, then adds the bias.
pub fn linear(c: &OpCtx) -> R<Vec<TensorValue>> {
    let xt = c.input(0)?;
    let parts = c.int("parts", 1).max(1) as usize;
    let bf16 = c.int("bf16", 0) != 0;
    let tr = c.int("transposed", 0) != 0 && !bf16;
    let k = *xt.shape.last().ok_or("x must have rank >= 1")?;
    let kp = k.div_ceil(2);
    let x: std::borrow::Cow<[f32]> = if bf16 {
        let round = |v: f32| half::bf16::from_f32(v).to_f32();
        c.f32_in(0)?.iter().map(|&v| round(v)).collect()
    } else {
        c.f32_in(0)?.into()
    };
    let mut ws = Vec::with_capacity(parts);
    for p in 0..parts {
        let wt = c.input(1 + p)?;
        let (kin, want, n) = match (bf16, &wt.shape[..]) {
            (true, &[r, n, 2]) => (r, kp, n),
            (true, _) => {
                return Err(format!(
                    "bf16 weight {p} must be [K/2, N, 2], not {:?}",
                    wt.shape
                ))
            }
            (false, &[r, cc]) if tr => (cc, k, r),
            (false, &[r, cc]) => (r, k, cc),
            (false, _) => return Err("weights must be 2-D".into()),
        };
        if kin != want {
            return Err(format!(
                "x {:?} does not match weight {} {:?}",
                xt.shape, p, wt.shape
            ));
        }
        ws.push((c.f32_in(1 + p)?, n));
    }
    let n_total: usize = ws.iter().map(|w| w.1).sum();
    let bias = c
        .opt(1 + parts)
        .map(|b| b.as_f32().ok_or("bias must be float"))
        .transpose()?;
    if bias.is_some_and(|b| b.len() != n_total) {
        return Err("bias length differs from the output features".into());
    }
    let rows = x.len() / k.max(1);
    let mut out = vec![0f32; rows * n_total];
    for i in 0..rows {
        let xr = &x[i * k..i * k + k];
        let orow = &mut out[i * n_total..(i + 1) * n_total];
        let mut off = 0;
        for &(w, n) in &ws {
            let o = &mut orow[off..off + n];
            if bf16 {
                for t in 0..kp {
                    let (a0, a1) = (xr[2 * t], xr.get(2 * t + 1).copied().unwrap_or(0.0));
                    let wr = &w[t * 2 * n..(t + 1) * 2 * n];
                    for (oj, wp) in o.iter_mut().zip(wr.chunks_exact(2)) {
                        *oj = (*oj + a0 * wp[0]) + a1 * wp[1];
                    }
                }
            } else if tr {
                for (j, oj) in o.iter_mut().enumerate() {
                    *oj = xr
                        .iter()
                        .zip(&w[j * k..j * k + k])
                        .map(|(a, b)| a * b)
                        .sum();
                }
            } else {
                for (p, &a) in xr.iter().enumerate() {
                    for (oj, &b) in o.iter_mut().zip(&w[p * n..p * n + n]) {
                        *oj += a * b;
                    }
                }
            }
            off += n;
        }
        if let Some(b) = bias {
            orow.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
        }
    }
    let mut shape = xt.shape.clone();
    *shape.last_mut().expect("rank >= 1") = n_total;
    let d = xt.dtype;
    out.iter_mut().for_each(|v| *v = round_to(d, *v));
    Ok(vec![TensorValue::with_dtype(d, shape, Data::F(out))])
}

pub fn silu(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let y = c
        .f32_in(0)?
        .iter()
        .map(|&v| round_to(a.dtype, silu_f32(v)))
        .collect();
    Ok(vec![TensorValue::with_dtype(
        a.dtype,
        a.shape.clone(),
        Data::F(y),
    )])
}

/// `lpc.swiglu(g, u) = silu(g) · u` (same shapes); with one operand, `g`
/// and `u` are the halves of its last axis (`gate`: which half is `g`).
pub fn swiglu(c: &OpCtx) -> R<Vec<TensorValue>> {
    if c.node.inputs.len() == 1 {
        let a = c.input(0)?;
        let x = c.f32_in(0)?;
        let h = a.shape.last().copied().unwrap_or(0) / 2;
        if h == 0 || a.shape.last() != Some(&(2 * h)) {
            return Err(format!(
                "{:?}: the last axis must split in two halves",
                a.shape
            ));
        }
        let gate = c.node.int("gate").unwrap_or(0) as usize;
        let y = x
            .chunks_exact(2 * h)
            .flat_map(|row| {
                let (g, u) = (&row[gate * h..][..h], &row[(1 - gate) * h..][..h]);
                g.iter()
                    .zip(u)
                    .map(|(&v, &w)| round_to(a.dtype, round_to(a.dtype, silu_f32(v)) * w))
            })
            .collect();
        let mut shape = a.shape.clone();
        *shape.last_mut().expect("rank >= 1") = h;
        return Ok(vec![TensorValue::with_dtype(a.dtype, shape, Data::F(y))]);
    }
    let (a, b) = (c.input(0)?, c.input(1)?);
    if a.shape != b.shape {
        return Err(format!(
            "gate {:?} and up {:?} differ in shape",
            a.shape, b.shape
        ));
    }
    let (g, u) = (c.f32_in(0)?, c.f32_in(1)?);
    let y = g
        .iter()
        .zip(u)
        .map(|(&v, &w)| round_to(a.dtype, round_to(a.dtype, silu_f32(v)) * w))
        .collect();
    Ok(vec![TensorValue::with_dtype(
        a.dtype,
        a.shape.clone(),
        Data::F(y),
    )])
}
