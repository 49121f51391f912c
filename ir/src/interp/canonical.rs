//! lpc's canonical ops (`lpc.*`), produced by the canonicalization passes.

use super::value::{round_to, Data, TensorValue};
use super::{OpCtx, R};

/// `lpc.linear(x, W, bias?) {transposed}`: `x · W (+ bias)` over the last axis
/// of x; W is `[in, out]`, or `[out, in]` when `transposed = 1`.
pub fn linear(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (xt, wt) = (c.input(0)?, c.input(1)?);
    let (x, w) = (c.f32_in(0)?, c.f32_in(1)?);
    let tr = c.int("transposed", 0) != 0;
    let [r, cc] = wt.shape[..] else {
        return Err("weight must be 2-D".into());
    };
    let (k, n) = if tr { (cc, r) } else { (r, cc) };
    if xt.shape.last() != Some(&k) {
        return Err(format!(
            "x {:?} does not match weight {:?}",
            xt.shape, wt.shape
        ));
    }
    let bias = c
        .opt(2)
        .map(|b| b.as_f32().ok_or("bias must be float"))
        .transpose()?;
    if bias.is_some_and(|b| b.len() != n) {
        return Err("bias length differs from the output features".into());
    }
    let rows = x.len() / k.max(1);
    let mut out = vec![0f32; rows * n];
    for i in 0..rows {
        let xr = &x[i * k..i * k + k];
        let o = &mut out[i * n..i * n + n];
        if tr {
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
        if let Some(b) = bias {
            o.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
        }
    }
    let mut shape = xt.shape.clone();
    *shape.last_mut().expect("rank >= 1") = n;
    let d = xt.dtype;
    out.iter_mut().for_each(|v| *v = round_to(d, *v));
    Ok(vec![TensorValue::with_dtype(d, shape, Data::F(out))])
}

pub fn silu(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let y = c
        .f32_in(0)?
        .iter()
        .map(|&v| round_to(a.dtype, v * (1.0 / (1.0 + (-v).exp()))))
        .collect();
    Ok(vec![TensorValue::with_dtype(
        a.dtype,
        a.shape.clone(),
        Data::F(y),
    )])
}

/// `lpc.swiglu(g, u) = silu(g) · u` (same shapes).
pub fn swiglu(c: &OpCtx) -> R<Vec<TensorValue>> {
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
        .map(|(&v, &w)| {
            round_to(
                a.dtype,
                round_to(a.dtype, v * (1.0 / (1.0 + (-v).exp()))) * w,
            )
        })
        .collect();
    Ok(vec![TensorValue::with_dtype(
        a.dtype,
        a.shape.clone(),
        Data::F(y),
    )])
}
