//! MatMul, Gemm and Conv (accumulation in f32, in the reduction order of a
//! plain loop nest).

use super::util::{broadcast_index, broadcast_shapes};
use super::value::{round_to, Data, TensorValue};
use super::{OpCtx, R};

/// `c[m, n] += a[m, k] * b[k, n]` for row-major blocks.
fn gemm_block(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    for i in 0..m {
        let crow = &mut c[i * n..i * n + n];
        for p in 0..k {
            let av = a[i * k + p];
            let brow = &b[p * n..p * n + n];
            for (cv, &bv) in crow.iter_mut().zip(brow) {
                *cv += av * bv;
            }
        }
    }
}

pub fn matmul(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (a, b) = (c.input(0)?, c.input(1)?);
    let (x, y) = (c.f32_in(0)?, c.f32_in(1)?);
    // 1-D operands are promoted and the added axis removed afterwards.
    let (ash, bsh) = (a.shape.clone(), b.shape.clone());
    let ash2 = if ash.len() == 1 {
        vec![1, ash[0]]
    } else {
        ash.clone()
    };
    let bsh2 = if bsh.len() == 1 {
        vec![bsh[0], 1]
    } else {
        bsh.clone()
    };
    let (ra, rb) = (ash2.len(), bsh2.len());
    let (m, k, k2, n) = (ash2[ra - 2], ash2[ra - 1], bsh2[rb - 2], bsh2[rb - 1]);
    if k != k2 {
        return Err(format!("inner dimensions differ: {ash:?} x {bsh:?}"));
    }
    let batch = broadcast_shapes(&[&ash2[..ra - 2], &bsh2[..rb - 2]])?;
    let nb: usize = batch.iter().product();
    let ia = broadcast_index(&ash2[..ra - 2], &batch);
    let ib = broadcast_index(&bsh2[..rb - 2], &batch);
    let mut out = vec![0f32; nb * m * n];
    for t in 0..nb {
        let ab = &x[ia[t] * m * k..][..m * k];
        let bb = &y[ib[t] * k * n..][..k * n];
        gemm_block(ab, bb, &mut out[t * m * n..][..m * n], m, k, n);
    }
    let mut shape = batch;
    if ash.len() != 1 {
        shape.push(m);
    }
    if bsh.len() != 1 {
        shape.push(n);
    }
    let d = a.dtype;
    out.iter_mut().for_each(|v| *v = round_to(d, *v));
    Ok(vec![TensorValue::with_dtype(d, shape, Data::F(out))])
}

pub fn gemm(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (a, b) = (c.input(0)?, c.input(1)?);
    if a.rank() != 2 || b.rank() != 2 {
        return Err("Gemm operands must be 2-D".into());
    }
    let (ta, tb) = (c.int("transA", 0) != 0, c.int("transB", 0) != 0);
    let (alpha, beta) = (c.float("alpha", 1.0), c.float("beta", 1.0));
    let t2 = |v: &[f32], s: &[usize], t: bool| -> (Vec<f32>, usize, usize) {
        if t {
            let (r, cc) = (s[0], s[1]);
            (
                (0..cc * r).map(|i| v[(i % r) * cc + i / r]).collect(),
                cc,
                r,
            )
        } else {
            (v.to_vec(), s[0], s[1])
        }
    };
    let (x, m, k) = t2(c.f32_in(0)?, &a.shape, ta);
    let (y, k2, n) = t2(c.f32_in(1)?, &b.shape, tb);
    if k != k2 {
        return Err(format!(
            "inner dimensions differ: {:?} x {:?}",
            a.shape, b.shape
        ));
    }
    let mut out = vec![0f32; m * n];
    gemm_block(&x, &y, &mut out, m, k, n);
    out.iter_mut().for_each(|v| *v *= alpha);
    if let Some(cv) = c.opt(2) {
        let ci = broadcast_index(&cv.shape, &[m, n]);
        if ci.len() != m * n {
            return Err(format!("C {:?} does not broadcast to [{m}, {n}]", cv.shape));
        }
        let cd = cv.as_f32().ok_or("C must be float")?;
        out.iter_mut()
            .zip(&ci)
            .for_each(|(v, &i)| *v += beta * cd[i]);
    }
    Ok(vec![TensorValue::with_dtype(
        a.dtype,
        vec![m, n],
        Data::F(out),
    )])
}

/// N-D convolution, NCHW-style layout, explicit pads (auto_pad NOTSET/VALID).
pub fn conv(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (xt, wt) = (c.input(0)?, c.input(1)?);
    let (x, w) = (c.f32_in(0)?, c.f32_in(1)?);
    let sp = xt
        .rank()
        .checked_sub(2)
        .filter(|&s| s >= 1)
        .ok_or("input must have rank >= 3")?;
    if wt.rank() != sp + 2 {
        return Err("weight rank does not match input".into());
    }
    match c.node.string("auto_pad").unwrap_or("NOTSET") {
        "NOTSET" | "VALID" => {}
        p => return Err(format!("auto_pad {p} is not supported")),
    }
    let g = c.int("group", 1) as usize;
    let get = |name: &str, def: i64, len: usize| -> Vec<usize> {
        c.node.ints(name).map_or(vec![def as usize; len], |v| {
            v.iter().map(|&x| x as usize).collect()
        })
    };
    let strides = get("strides", 1, sp);
    let dil = get("dilations", 1, sp);
    let pads = get("pads", 0, 2 * sp);
    let (nb, ci) = (xt.shape[0], xt.shape[1]);
    let (co, cig) = (wt.shape[0], wt.shape[1]);
    if g == 0 || ci != cig * g || co % g != 0 {
        return Err(format!("channels {ci} -> {co} do not fit group {g}"));
    }
    let ks = &wt.shape[2..];
    let ins = &xt.shape[2..];
    let outs: Vec<usize> = (0..sp)
        .map(|d| (ins[d] + pads[d] + pads[d + sp] - dil[d] * (ks[d] - 1) - 1) / strides[d] + 1)
        .collect();
    let osz: usize = outs.iter().product();
    let ksz: usize = ks.iter().product();
    let isz: usize = ins.iter().product();
    let bias = c
        .opt(2)
        .map(|b| b.as_f32().ok_or("bias must be float"))
        .transpose()?;
    let mut out = vec![0f32; nb * co * osz];
    let unravel = |mut i: usize, dims: &[usize]| -> Vec<usize> {
        let mut v = vec![0; dims.len()];
        for d in (0..dims.len()).rev() {
            v[d] = i % dims[d];
            i /= dims[d];
        }
        v
    };
    let cpg = co / g;
    for b in 0..nb {
        for oc in 0..co {
            let grp = oc / cpg;
            for o in 0..osz {
                let op = unravel(o, &outs);
                let mut acc = bias.map_or(0.0, |bv| bv[oc]);
                for icg in 0..cig {
                    let ic = grp * cig + icg;
                    for kk in 0..ksz {
                        let kp = unravel(kk, ks);
                        let mut off = 0usize;
                        let mut inside = true;
                        for d in 0..sp {
                            let pos =
                                (op[d] * strides[d] + kp[d] * dil[d]) as isize - pads[d] as isize;
                            if pos < 0 || pos >= ins[d] as isize {
                                inside = false;
                                break;
                            }
                            off = off * ins[d] + pos as usize;
                        }
                        if inside {
                            acc += x[(b * ci + ic) * isz + off] * w[(oc * cig + icg) * ksz + kk];
                        }
                    }
                }
                out[(b * co + oc) * osz + o] = acc;
            }
        }
    }
    let mut shape = vec![nb, co];
    shape.extend(outs);
    Ok(vec![TensorValue::with_dtype(xt.dtype, shape, Data::F(out))])
}
