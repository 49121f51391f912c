//! Reductions, softmax and normalizations (statistics accumulated in f64).

use super::util::{axis, broadcast_index};
use super::value::{round_to, Data, TensorValue};
use super::{OpCtx, R};

pub fn reduce(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let op = c.node.op.as_str();
    let axes_in = match c.opt(1) {
        Some(v) => Some(v.as_i64().ok_or("axes must be integers")?.to_vec()),
        None => c.node.ints("axes").map(|x| x.to_vec()),
    };
    let keep = c.int("keepdims", 1) != 0;
    let axes: Vec<usize> = match axes_in {
        Some(ax) if !ax.is_empty() => ax.iter().map(|&x| axis(x, a.rank())).collect::<R<_>>()?,
        _ if c.int("noop_with_empty_axes", 0) != 0 => return Ok(vec![a.clone()]),
        _ => (0..a.rank()).collect(),
    };
    let out_full: Vec<usize> = (0..a.rank())
        .map(|i| if axes.contains(&i) { 1 } else { a.shape[i] })
        .collect();
    let n_out: usize = out_full.iter().product();
    let count: usize = axes.iter().map(|&i| a.shape[i]).product();
    // Map each input element to its output slot.
    let idx = {
        let ost = super::util::strides(&out_full);
        let rank = a.rank();
        let mut v = Vec::with_capacity(a.len());
        let mut m = vec![0usize; rank];
        for _ in 0..a.len() {
            v.push(
                (0..rank)
                    .map(|d| if axes.contains(&d) { 0 } else { m[d] * ost[d] })
                    .sum::<usize>(),
            );
            for d in (0..rank).rev() {
                m[d] += 1;
                if m[d] < a.shape[d] {
                    break;
                }
                m[d] = 0;
            }
        }
        v
    };
    let shape: Vec<usize> = if keep {
        out_full
    } else {
        (0..a.rank())
            .filter(|i| !axes.contains(i))
            .map(|i| a.shape[i])
            .collect()
    };
    let data = match &a.data {
        Data::F(x) => {
            let (init, f): (f64, fn(f64, f64) -> f64) = match op {
                "ReduceMax" => (f64::NEG_INFINITY, f64::max),
                "ReduceMin" => (f64::INFINITY, f64::min),
                "ReduceProd" => (1.0, |p, q| p * q),
                _ => (0.0, |p, q| p + q),
            };
            let mut acc = vec![init; n_out];
            for (i, &v) in x.iter().enumerate() {
                acc[idx[i]] = f(acc[idx[i]], v as f64);
            }
            if op == "ReduceMean" {
                acc.iter_mut().for_each(|v| *v /= count as f64);
            }
            Data::F(
                acc.into_iter()
                    .map(|v| round_to(a.dtype, v as f32))
                    .collect(),
            )
        }
        Data::I(x) => {
            let (init, f): (i64, fn(i64, i64) -> i64) = match op {
                "ReduceMax" => (i64::MIN, i64::max),
                "ReduceMin" => (i64::MAX, i64::min),
                "ReduceProd" => (1, |p, q| p.wrapping_mul(q)),
                _ => (0, |p, q| p.wrapping_add(q)),
            };
            let mut acc = vec![init; n_out];
            for (i, &v) in x.iter().enumerate() {
                acc[idx[i]] = f(acc[idx[i]], v);
            }
            if op == "ReduceMean" {
                acc.iter_mut().for_each(|v| *v /= count.max(1) as i64);
            }
            Data::I(acc)
        }
        Data::B(_) => return Err("cannot reduce bools".into()),
    };
    Ok(vec![TensorValue::with_dtype(a.dtype, shape, data)])
}

pub fn softmax(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let x = c.f32_in(0)?;
    let default_axis = if c.opset >= 13 { -1 } else { 1 };
    let k = axis(c.int("axis", default_axis), a.rank())?;
    // Opset < 13 flattens from `axis`; opset 13 is one axis. Both are a
    // softmax over contiguous rows once the axis is innermost.
    let (outer, d, inner) = if c.opset >= 13 {
        (
            a.shape[..k].iter().product::<usize>(),
            a.shape[k],
            a.shape[k + 1..].iter().product::<usize>(),
        )
    } else {
        (
            a.shape[..k].iter().product::<usize>(),
            a.shape[k..].iter().product::<usize>(),
            1,
        )
    };
    let mut y = vec![0f32; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * d + j) * inner + i;
            let m = (0..d).map(|j| x[at(j)]).fold(f32::NEG_INFINITY, f32::max);
            let s: f64 = (0..d).map(|j| ((x[at(j)] - m) as f64).exp()).sum();
            for j in 0..d {
                y[at(j)] = round_to(a.dtype, (((x[at(j)] - m) as f64).exp() / s) as f32);
            }
        }
    }
    Ok(vec![TensorValue::with_dtype(
        a.dtype,
        a.shape.clone(),
        Data::F(y),
    )])
}

/// Normalizes rows of `x` (the dims from `k` on). `center`: LayerNorm
/// (subtract the mean) or RMSNorm. Returns y, per-row mean and 1/std.
fn normalize(
    a: &TensorValue,
    k: usize,
    eps: f32,
    center: bool,
    scale: &TensorValue,
    bias: Option<&TensorValue>,
) -> R<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let x = a.as_f32().ok_or("input must be float")?;
    let n: usize = a.shape[k..].iter().product();
    let rows = x.len().checked_div(n).unwrap_or(0);
    let si = broadcast_index(&scale.shape, &a.shape[k..]);
    let sv = scale.as_f32().ok_or("scale must be float")?;
    let bv = bias
        .map(|b| b.as_f32().ok_or("bias must be float"))
        .transpose()?;
    let bi = bias.map(|b| broadcast_index(&b.shape, &a.shape[k..]));
    if scale.len() > n || si.len() != n {
        return Err(format!(
            "scale {:?} does not match normalized shape {:?}",
            scale.shape,
            &a.shape[k..]
        ));
    }
    let (mut y, mut means, mut inv) = (vec![0f32; x.len()], vec![0f32; rows], vec![0f32; rows]);
    for r in 0..rows {
        let row = &x[r * n..r * n + n];
        let mean = if center {
            row.iter().map(|&v| v as f64).sum::<f64>() / n as f64
        } else {
            0.0
        };
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let is = 1.0 / (var + eps as f64).sqrt();
        means[r] = mean as f32;
        inv[r] = is as f32;
        for j in 0..n {
            let mut v = (row[j] as f64 - mean) * is * sv[si[j]] as f64;
            if let (Some(b), Some(i)) = (bv, &bi) {
                v += b[i[j]] as f64;
            }
            y[r * n + j] = round_to(a.dtype, v as f32);
        }
    }
    Ok((y, means, inv))
}

fn stat_shape(a: &TensorValue, k: usize) -> Vec<usize> {
    a.shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if i < k { d } else { 1 })
        .collect()
}

pub fn layer_norm(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let k = axis(c.int("axis", -1), a.rank())?;
    let (y, m, inv) = normalize(a, k, c.float("epsilon", 1e-5), true, c.input(1)?, c.opt(2))?;
    let ss = stat_shape(a, k);
    Ok(vec![
        TensorValue::with_dtype(a.dtype, a.shape.clone(), Data::F(y)),
        TensorValue::f32(ss.clone(), m),
        TensorValue::f32(ss, inv),
    ])
}

/// RMSNormalization (opset 23) and onnxruntime's SimplifiedLayerNormalization.
pub fn rms_norm(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let k = axis(c.int("axis", -1), a.rank())?;
    let (y, _, inv) = normalize(a, k, c.float("epsilon", 1e-5), false, c.input(1)?, None)?;
    Ok(vec![
        TensorValue::with_dtype(a.dtype, a.shape.clone(), Data::F(y)),
        TensorValue::f32(stat_shape(a, k), inv),
    ])
}

/// com.microsoft.SkipSimplifiedLayerNormalization: s = input + skip (+ bias),
/// outputs (rms_norm(s) * gamma, mean (unused, zeros), inv_std_var, s).
pub fn skip_rms_norm(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (a, skip) = (c.input(0)?, c.input(1)?);
    let (x, sx) = (c.f32_in(0)?, c.f32_in(1)?);
    let si = broadcast_index(&skip.shape, &a.shape);
    if si.len() != x.len() {
        return Err(format!(
            "skip {:?} does not broadcast to input {:?}",
            skip.shape, a.shape
        ));
    }
    let mut s: Vec<f32> = x.iter().zip(&si).map(|(&v, &i)| v + sx[i]).collect();
    if let Some(b) = c.opt(3) {
        let bv = b.as_f32().ok_or("bias must be float")?;
        let bi = broadcast_index(&b.shape, &a.shape);
        s.iter_mut().zip(&bi).for_each(|(v, &i)| *v += bv[i]);
    }
    let sum = TensorValue::with_dtype(a.dtype, a.shape.clone(), Data::F(s));
    let k = a.rank() - 1;
    let (y, m, inv) = normalize(&sum, k, c.float("epsilon", 1e-5), false, c.input(2)?, None)?;
    let ss = stat_shape(a, k);
    Ok(vec![
        TensorValue::with_dtype(a.dtype, a.shape.clone(), Data::F(y)),
        TensorValue::f32(ss.clone(), m.iter().map(|_| 0.0).collect()),
        TensorValue::f32(ss, inv),
        sum,
    ])
}
