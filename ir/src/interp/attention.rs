//! Rotary embeddings and attention: the ONNX opset-23 `RotaryEmbedding` and
//! `Attention`, and onnxruntime's `GroupQueryAttention` with its KV cache.

use super::util::broadcast_index;
use super::value::{Data, TensorValue};
use super::{OpCtx, R};
use lpc_runtime::math::exp_f32;

/// A float mask value at or below this masks its key outright, as -inf
/// does: exporters write `torch.finfo(float32).min` (-3.4e38) for masked
/// keys, whose weights underflow to 0 anyway. Compiled attention skips such
/// keys (and every key after the last unmasked one).
pub const MASKED_AT_OR_BELOW: f32 = -1.0e38;

/// Scaled dot-product attention on BHSD tensors. `bias(b, h, i, j)` is added
/// to the scores (`-inf` masks); heads of q share kv heads in groups. Rows
/// whose bias is `-inf` everywhere give zeros, as the ONNX reference does.
/// In f32 as generated code computes it (the scores' dot products in f64,
/// rounded), so that compiled models and the interpreter agree closely.
#[allow(clippy::type_complexity)]
fn sdpa(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, hq, l, d): (usize, usize, usize, usize),
    (hkv, s, dv): (usize, usize, usize),
    scale: f32,
    softcap: f32,
    bias: &dyn Fn(usize, usize, usize, usize) -> f32,
) -> R<Vec<f32>> {
    if hkv == 0 || hq % hkv != 0 {
        return Err(format!("{hq} query heads do not group over {hkv} kv heads"));
    }
    let grp = hq / hkv;
    let mut out = vec![0f32; b * hq * l * dv];
    let mut scores = vec![0f32; s];
    let mut acc = vec![0f32; dv];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / grp;
            for i in 0..l {
                let qr = &q[((bi * hq + h) * l + i) * d..][..d];
                let mut mx = f32::NEG_INFINITY;
                let mut all_masked = true;
                for (j, sc) in scores.iter_mut().enumerate() {
                    let kr = &k[((bi * hkv + kh) * s + j) * d..][..d];
                    let dot = qr
                        .iter()
                        .zip(kr)
                        .map(|(&x, &y)| x as f64 * y as f64)
                        .sum::<f64>() as f32;
                    let mut t = dot * scale;
                    if softcap > 0.0 {
                        t = (softcap as f64 * (t as f64 / softcap as f64).tanh()) as f32;
                    }
                    let bb = match bias(bi, h, i, j) {
                        b if b <= MASKED_AT_OR_BELOW => f32::NEG_INFINITY,
                        b => b,
                    };
                    all_masked &= bb == f32::NEG_INFINITY;
                    *sc = t + bb;
                    mx = mx.max(*sc);
                }
                let o = &mut out[((bi * hq + h) * l + i) * dv..][..dv];
                if all_masked || mx == f32::NEG_INFINITY {
                    continue;
                }
                // As generated code computes it: f32 weights from the
                // runtime's exp (masked keys weigh 0); their sum with key j
                // in lane j % 16 of 16 lanes summed in key order, then
                // halves added (lane i + lane i + 8, ..., + 1); the
                // weighted values as fused multiply-adds in key order; one
                // division.
                let mut lanes = [0f32; 16];
                for (j, sc) in scores.iter_mut().enumerate() {
                    *sc = if *sc == f32::NEG_INFINITY {
                        0.0
                    } else {
                        exp_f32(*sc - mx)
                    };
                    lanes[j % 16] += *sc;
                }
                for w in [8, 4, 2, 1] {
                    for i in 0..w {
                        lanes[i] += lanes[i + w];
                    }
                }
                let sum = lanes[0];
                acc.fill(0.0);
                for (j, &p) in scores.iter().enumerate() {
                    let vr = &v[((bi * hkv + kh) * s + j) * dv..][..dv];
                    for (a, &x) in acc.iter_mut().zip(vr) {
                        *a = p.mul_add(x, *a);
                    }
                }
                for (dst, &a) in o.iter_mut().zip(&acc) {
                    *dst = a / sum;
                }
            }
        }
    }
    Ok(out)
}

/// `[B, S, H*D]` -> `[B, H, S, D]`.
fn bsh_to_bhsd(x: &[f32], b: usize, s: usize, h: usize, d: usize) -> Vec<f32> {
    let mut o = vec![0f32; x.len()];
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let src = &x[((bi * s + si) * h + hi) * d..][..d];
                o[((bi * h + hi) * s + si) * d..][..d].copy_from_slice(src);
            }
        }
    }
    o
}

/// `[B, H, S, D]` -> `[B, S, H*D]`.
fn bhsd_to_bsh(x: &[f32], b: usize, h: usize, s: usize, d: usize) -> Vec<f32> {
    let mut o = vec![0f32; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                let src = &x[((bi * h + hi) * s + si) * d..][..d];
                o[((bi * s + si) * h + hi) * d..][..d].copy_from_slice(src);
            }
        }
    }
    o
}

/// Rotates the first `rot` channels of one head vector with cos/sin rows of
/// `rot / 2`, in halves (NeoX) or interleaved pairs (GPT-J).
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], rot: usize, interleaved: bool) {
    let half = rot / 2;
    for i in 0..half {
        let (a, b) = if interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + half)
        };
        let (x1, x2) = (x[a], x[b]);
        x[a] = cos[i] * x1 - sin[i] * x2;
        x[b] = sin[i] * x1 + cos[i] * x2;
    }
}

/// ONNX RotaryEmbedding (opset 23): input `[B, H, S, D]` or `[B, S, H*D]`,
/// cos/sin `[B, S, rot/2]`, or `[max_pos, rot/2]` indexed by position_ids.
pub fn rotary_embedding(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let (cos_t, sin_t) = (c.input(1)?, c.input(2)?);
    let (cos, sin) = (c.f32_in(1)?, c.f32_in(2)?);
    let interleaved = c.int("interleaved", 0) != 0;
    let (b, h, s, d, bhsd) = match a.shape[..] {
        [b, h, s, d] => (b, h, s, d, true),
        [b, s, hd] => {
            let h = c.int("num_heads", 0) as usize;
            if h == 0 || hd % h != 0 {
                return Err("3-D input needs num_heads dividing the hidden size".into());
            }
            (b, h, s, hd / h, false)
        }
        _ => return Err(format!("input must be 3-D or 4-D, got {:?}", a.shape)),
    };
    let rot = match c.int("rotary_embedding_dim", 0) as usize {
        0 => d,
        r => r,
    };
    let half = rot / 2;
    let cw = *cos_t.shape.last().ok_or("cos_cache must not be a scalar")?;
    if rot % 2 != 0 || rot > d || cw < half || sin_t.shape != cos_t.shape {
        return Err(format!(
            "rotary dim {rot} does not fit head size {d} and caches {:?}",
            cos_t.shape
        ));
    }
    let pos = c
        .opt(3)
        .map(|p| p.as_i64().ok_or("position_ids must be integers"))
        .transpose()?;
    // Row of the caches for (batch, position).
    let row = |bi: usize, si: usize| -> R<usize> {
        match pos {
            Some(p) => {
                let r = p[bi * s + si];
                if r < 0 || (r as usize) * cw >= cos.len() {
                    return Err(format!("position id {r} is outside the caches"));
                }
                Ok(r as usize)
            }
            None => {
                let cb = cos_t.shape.first().copied().unwrap_or(0);
                if cos_t.shape.len() != 3 || (cb != b && cb != 1) || cos_t.shape[1] != s {
                    return Err(format!(
                        "without position_ids, caches must be [B or 1, S, rot/2], got {:?}",
                        cos_t.shape
                    ));
                }
                // Caches of batch 1 are shared by every batch entry.
                Ok(if cb == 1 { si } else { bi * s + si })
            }
        }
    };
    let mut x = c.f32_in(0)?.to_vec();
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                let off = if bhsd {
                    ((bi * h + hi) * s + si) * d
                } else {
                    ((bi * s + si) * h + hi) * d
                };
                let r = row(bi, si)?;
                rotate(
                    &mut x[off..off + d],
                    &cos[r * cw..][..half],
                    &sin[r * cw..][..half],
                    rot,
                    interleaved,
                );
            }
        }
    }
    Ok(vec![TensorValue::with_dtype(
        a.dtype,
        a.shape.clone(),
        Data::F(x),
    )])
}

/// `lpc.attention`: ONNX Attention, plus an optional operand 6, `seqlens_k`,
/// that selects onnxruntime GroupQueryAttention's cache semantics (the new
/// keys are written at each batch entry's own offset `seqlens_k[b] + 1 - S`,
/// keys past `seqlens_k[b]` are masked, causal from that offset).
pub fn lpc_attention(c: &OpCtx) -> R<Vec<TensorValue>> {
    if c.opt(6).is_none() {
        return attention(c);
    }
    if c.opt(3).is_some() {
        return Err("a mask cannot be combined with seqlens_k".into());
    }
    // Re-express as GroupQueryAttention without rotary and run its kernel.
    let mut node = c.node.clone();
    let heads = |k: &str| node.int(k).unwrap_or(0);
    let (hq, hkv) = (heads("q_num_heads"), heads("kv_num_heads"));
    node.attrs.insert("num_heads".into(), crate::Attr::Int(hq));
    node.attrs
        .insert("kv_num_heads".into(), crate::Attr::Int(hkv));
    node.attrs.insert("do_rotary".into(), crate::Attr::Int(0));
    node.attrs
        .insert("local_window_size".into(), crate::Attr::Int(-1));
    let inputs = vec![c.opt(0), c.opt(1), c.opt(2), c.opt(4), c.opt(5), c.opt(6)];
    let ctx = OpCtx {
        node: &node,
        inputs,
        opset: c.opset,
    };
    group_query_attention(&ctx)
}

/// ONNX Attention (opset 23): 4-D `[B, H, S, D]` or 3-D `[B, S, H*D]` with
/// q_num_heads/kv_num_heads; optional mask (bool: true attends; float: added),
/// past key/value concatenated on the sequence axis, causal masking aligned
/// to the end of the past, softcap.
pub fn attention(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (qt, kt, vt) = (c.input(0)?, c.input(1)?, c.input(2)?);
    let (q, k, v) = (c.f32_in(0)?, c.f32_in(1)?, c.f32_in(2)?);
    let three_d = qt.rank() == 3;
    let (b, hq, l, d, hkv, sn, dv, q, k, v) = if three_d {
        let hq = c.int("q_num_heads", 0) as usize;
        let hkv = c.int("kv_num_heads", 0) as usize;
        if hq == 0 || hkv == 0 {
            return Err("3-D inputs need q_num_heads and kv_num_heads".into());
        }
        let (b, l, s) = (qt.shape[0], qt.shape[1], kt.shape[1]);
        let (d, dv) = (qt.shape[2] / hq, vt.shape[2] / hkv);
        (
            b,
            hq,
            l,
            d,
            hkv,
            s,
            dv,
            bsh_to_bhsd(q, b, l, hq, d),
            bsh_to_bhsd(k, b, s, hkv, d),
            bsh_to_bhsd(v, b, s, hkv, dv),
        )
    } else if qt.rank() == 4 && kt.rank() == 4 && vt.rank() == 4 {
        let [b, hq, l, d] = qt.shape[..] else {
            unreachable!()
        };
        let (hkv, s, dv) = (kt.shape[1], kt.shape[2], vt.shape[3]);
        (b, hq, l, d, hkv, s, dv, q.to_vec(), k.to_vec(), v.to_vec())
    } else {
        return Err("Q, K and V must all be 3-D or 4-D".into());
    };
    // The KV cache: present = concat(past, new) on the sequence axis.
    let (mut kk, mut vv, mut total, mut past_len) = (k, v, sn, 0);
    if let (Some(pk), Some(pv)) = (c.opt(4), c.opt(5)) {
        let (pkd, pvd) = (
            pk.as_f32().ok_or("past_key must be float")?,
            pv.as_f32().ok_or("past_value must be float")?,
        );
        past_len = pk.shape[2];
        total = past_len + sn;
        let cat = |past: &[f32], new: &[f32], w: usize| -> Vec<f32> {
            let mut o = Vec::with_capacity(past.len() + new.len());
            for bh in 0..b * hkv {
                o.extend_from_slice(&past[bh * past_len * w..][..past_len * w]);
                o.extend_from_slice(&new[bh * sn * w..][..sn * w]);
            }
            o
        };
        kk = cat(pkd, &kk, d);
        vv = cat(pvd, &vv, dv);
    }
    let scale = c.node.float("scale").unwrap_or(1.0 / (d as f32).sqrt());
    let softcap = c.float("softcap", 0.0);
    let causal = c.int("is_causal", 0) != 0;
    // The mask, padded to the total length, broadcast to [B, Hq, L, total].
    let mask = c.opt(3);
    let bias_of: Box<dyn Fn(usize, usize, usize, usize) -> f32> = match mask {
        Some(m) => {
            let mw = *m.shape.last().ok_or("mask must not be a scalar")?;
            let mut ms = m.shape.clone();
            *ms.last_mut().expect("rank >= 1") = total;
            let target = [b, hq, l, total];
            let idx = broadcast_index(
                &{
                    let mut s = vec![1; 4usize.saturating_sub(ms.len())];
                    s.extend(&ms);
                    s
                },
                &target,
            );
            if idx.len() != b * hq * l * total {
                return Err(format!(
                    "mask {:?} does not broadcast to {target:?}",
                    m.shape
                ));
            }
            let vals: Vec<f32> = match &m.data {
                Data::B(x) => x
                    .iter()
                    .map(|&t| if t { 0.0 } else { f32::NEG_INFINITY })
                    .collect(),
                Data::F(x) => x.clone(),
                Data::I(_) => return Err("mask must be bool or float".into()),
            };
            Box::new(move |bi, h, i, j| {
                let flat = idx[((bi * hq + h) * l + i) * total + j];
                // Map the padded index back to the stored mask.
                let (row, col) = (flat / total, flat % total);
                let base = if col < mw {
                    vals[row * mw + col]
                } else {
                    f32::NEG_INFINITY
                };
                if causal && j > i + past_len {
                    f32::NEG_INFINITY
                } else {
                    base
                }
            })
        }
        None => Box::new(move |_, _, i, j| {
            if causal && j > i + past_len {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        }),
    };
    let out = sdpa(
        &q,
        &kk,
        &vv,
        (b, hq, l, d),
        (hkv, total, dv),
        scale,
        softcap,
        &*bias_of,
    )?;
    let y = if three_d {
        TensorValue::with_dtype(
            qt.dtype,
            vec![b, l, hq * dv],
            Data::F(bhsd_to_bsh(&out, b, hq, l, dv)),
        )
    } else {
        TensorValue::with_dtype(qt.dtype, vec![b, hq, l, dv], Data::F(out))
    };
    Ok(vec![
        y,
        TensorValue::with_dtype(kt.dtype, vec![b, hkv, total, d], Data::F(kk)),
        TensorValue::with_dtype(vt.dtype, vec![b, hkv, total, dv], Data::F(vv)),
    ])
}

/// onnxruntime's GroupQueryAttention: q/k/v `[B, S, H*D]`, KV cache
/// `[B, Hkv, P, D]`, `seqlens_k[b]` = total valid length - 1, optional fused
/// rotary (do_rotary) with cos/sin caches `[max_pos, rot/2]`. Outputs the
/// attention `[B, S, Hq*D]` and present key/value `[B, Hkv, P + S, D]`.
pub fn group_query_attention(c: &OpCtx) -> R<Vec<TensorValue>> {
    let qt = c.input(0)?;
    let hq = c.int("num_heads", 0) as usize;
    let hkv = c.int("kv_num_heads", 0) as usize;
    if hq == 0 || hkv == 0 {
        return Err("num_heads and kv_num_heads are required".into());
    }
    let (b, s) = (qt.shape[0], qt.shape[1]);
    let (q_in, k_in, v_in, d) = match (c.opt(1), c.opt(2)) {
        (Some(_), Some(_)) => {
            let d = qt.shape[2] / hq;
            (
                c.f32_in(0)?.to_vec(),
                c.f32_in(1)?.to_vec(),
                c.f32_in(2)?.to_vec(),
                d,
            )
        }
        _ => {
            // Packed QKV in the query operand.
            let w = qt.shape[2];
            let d = w / (hq + 2 * hkv);
            let x = c.f32_in(0)?;
            let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
            for r in x.chunks_exact(w) {
                q.extend_from_slice(&r[..hq * d]);
                k.extend_from_slice(&r[hq * d..(hq + hkv) * d]);
                v.extend_from_slice(&r[(hq + hkv) * d..]);
            }
            (q, k, v, d)
        }
    };
    let seqlens = c.ints_in(5)?;
    if seqlens.len() != b {
        return Err(format!(
            "seqlens_k has {} entries for batch {b}",
            seqlens.len()
        ));
    }
    let (pk, pv) = (c.opt(3), c.opt(4));
    let p = pk.map_or(0, |t| t.shape.get(2).copied().unwrap_or(0));
    let mut q = bsh_to_bhsd(&q_in, b, s, hq, d);
    let mut k = bsh_to_bhsd(&k_in, b, s, hkv, d);
    let v = bsh_to_bhsd(&v_in, b, s, hkv, d);
    // Past length per batch entry: total valid - new tokens.
    let past: Vec<usize> = seqlens
        .iter()
        .map(|&sl| {
            let t = sl + 1 - s as i64;
            if t < 0 || t as usize > p {
                Err(format!(
                    "seqlens_k {sl} is inconsistent with {s} new tokens and a cache of {p}"
                ))
            } else {
                Ok(t as usize)
            }
        })
        .collect::<R<_>>()?;
    if c.int("do_rotary", 0) != 0 {
        let (cos_t, cos, sin) = (c.input(7)?, c.f32_in(7)?, c.f32_in(8)?);
        let cw = cos_t.shape[1];
        let rot = 2 * cw;
        let interleaved = c.int("rotary_interleaved", 0) != 0;
        let pos_ids = c
            .opt(9)
            .map(|t| t.as_i64().ok_or("position_ids must be integers"))
            .transpose()?;
        for bi in 0..b {
            for si in 0..s {
                let pos = match pos_ids {
                    Some(ids) => ids[bi * s + si] as usize,
                    None => past[bi] + si,
                };
                if (pos + 1) * cw > cos.len() {
                    return Err(format!("position {pos} is outside the rotary caches"));
                }
                let (cr, sr) = (&cos[pos * cw..][..cw], &sin[pos * cw..][..cw]);
                for h in 0..hq {
                    rotate(
                        &mut q[((bi * hq + h) * s + si) * d..][..d],
                        cr,
                        sr,
                        rot,
                        interleaved,
                    );
                }
                for h in 0..hkv {
                    rotate(
                        &mut k[((bi * hkv + h) * s + si) * d..][..d],
                        cr,
                        sr,
                        rot,
                        interleaved,
                    );
                }
            }
        }
    }
    // present = past[:, :, :past_b] ++ new, padded to P + S.
    let t = p + s;
    let cat = |past_t: Option<&TensorValue>, new: &[f32]| -> R<Vec<f32>> {
        let pd = past_t
            .map(|x| x.as_f32().ok_or("past must be float"))
            .transpose()?;
        let mut o = vec![0f32; b * hkv * t * d];
        for bi in 0..b {
            for h in 0..hkv {
                let dst = &mut o[(bi * hkv + h) * t * d..][..t * d];
                if let Some(pd) = pd {
                    dst[..past[bi] * d]
                        .copy_from_slice(&pd[(bi * hkv + h) * p * d..][..past[bi] * d]);
                }
                dst[past[bi] * d..(past[bi] + s) * d]
                    .copy_from_slice(&new[(bi * hkv + h) * s * d..][..s * d]);
            }
        }
        Ok(o)
    };
    let (pk_out, pv_out) = (cat(pk, &k)?, cat(pv, &v)?);
    let scale = Some(c.float("scale", 0.0))
        .filter(|&x| x != 0.0)
        .unwrap_or(1.0 / (d as f32).sqrt());
    let window = c.int("local_window_size", -1);
    let attn_bias = c
        .opt(10)
        .map(|x| (x.as_f32().map(|v| v.to_vec()), x.shape.clone()));
    let ab = match &attn_bias {
        Some((Some(vals), shape)) => {
            let mut s4 = vec![1; 4usize.saturating_sub(shape.len())];
            s4.extend(shape);
            Some((vals, broadcast_index(&s4, &[b, hq, s, t])))
        }
        Some((None, _)) => return Err("attention_bias must be float".into()),
        None => None,
    };
    let bias = |bi: usize, h: usize, i: usize, j: usize| -> f32 {
        let qpos = past[bi] + i;
        let valid = j <= qpos && j < past[bi] + s && (window < 0 || (qpos - j) < window as usize);
        if !valid {
            return f32::NEG_INFINITY;
        }
        ab.as_ref()
            .map_or(0.0, |(v, idx)| v[idx[((bi * hq + h) * s + i) * t + j]])
    };
    let out = sdpa(
        &q,
        &pk_out,
        &pv_out,
        (b, hq, s, d),
        (hkv, t, d),
        scale,
        c.float("softcap", 0.0),
        &bias,
    )?;
    let dt = qt.dtype;
    Ok(vec![
        TensorValue::with_dtype(
            dt,
            vec![b, s, hq * d],
            Data::F(bhsd_to_bsh(&out, b, hq, s, d)),
        ),
        TensorValue::with_dtype(dt, vec![b, hkv, t, d], Data::F(pk_out)),
        TensorValue::with_dtype(dt, vec![b, hkv, t, d], Data::F(pv_out)),
    ])
}
