//! Normalization, rotary embedding and attention: one work item per row
//! (a normalized row, a head vector, a query row). Straightforward kernels:
//! correct first, with the interpreter's f64 statistics.

use super::elementwise::storage;
use crate::kernel::{Kernel, Param};
use crate::mlir::{Ty, B};
use lpc_ir::DType;

const X: Ty = Ty::Index;

/// Loads `buf[i]` of IR type `d` as f32.
fn load_f32(b: &mut B, buf: &str, i: &str, d: DType) -> Result<String, String> {
    let t = float_storage(d)?;
    let v = b.load(buf, i, t);
    Ok(b.convf(&v, t, Ty::F32))
}

fn store_f32(b: &mut B, v: &str, buf: &str, i: &str, d: DType) -> Result<(), String> {
    let t = float_storage(d)?;
    let s = b.convf(v, Ty::F32, t);
    b.store(&s, buf, i, t);
    Ok(())
}

fn float_storage(d: DType) -> Result<Ty, String> {
    match storage(d) {
        Some(t) if t.is_float() => Ok(t),
        _ => Err(format!("{d:?} is not a float type")),
    }
}

/// RMS or layer normalization over rows of `n` elements.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct NormSpec {
    /// Layer norm (subtract the mean) rather than RMS norm.
    pub center: bool,
    pub bias: bool,
    pub x: DType,
    pub scale: DType,
    pub epsilon_bits: u32,
}

/// Params: `y`, `mean`, `inv` (f32 per row), `x`, `scale`, [`bias`], `n`,
/// `sn` (scale/bias length: the row is read `j % sn`).
pub fn norm(name: &str, s: &NormSpec) -> Result<Kernel, String> {
    let xt = float_storage(s.x)?;
    let st = float_storage(s.scale)?;
    let mut params = vec![
        ("y".to_string(), Param::Buf(xt)),
        ("mean".to_string(), Param::Buf(Ty::F32)),
        ("inv".to_string(), Param::Buf(Ty::F32)),
        ("x".to_string(), Param::Buf(xt)),
        ("scale".to_string(), Param::Buf(st)),
    ];
    if s.bias {
        params.push(("bias".to_string(), Param::Buf(st)));
    }
    params.push(("n".to_string(), Param::Index));
    params.push(("sn".to_string(), Param::Index));
    let mut b = B::new();
    let f = Ty::F64;
    let base = b.bin("muli", "%i", "%n", X);
    let c0 = b.index(0);
    let c1 = b.index(1);
    let zero = b.f64(0.0);
    let nf = {
        let n64 = b.cast("index_cast", "%n", X, Ty::I64);
        b.cast("sitofp", &n64, Ty::I64, f)
    };
    let row = |b: &mut B, j: &str| -> Result<String, String> {
        let at = b.bin("addi", &base, j, X);
        let v = load_f32(b, "%x", &at, s.x)?;
        Ok(b.cast("extf", &v, Ty::F32, f))
    };
    let mean = if s.center {
        let mut err = Ok(());
        let sum = b.for_(&c0, "%n", &c1, &[(&zero, f)], |b, j, acc| {
            let v = row(b, j).unwrap_or_else(|e| {
                err = Err(e);
                zero.clone()
            });
            vec![b.bin("addf", &acc[0], &v, f)]
        });
        err?;
        b.bin("divf", &sum[0], &nf, f)
    } else {
        zero.clone()
    };
    let mut err = Ok(());
    let ss = b.for_(&c0, "%n", &c1, &[(&zero, f)], |b, j, acc| {
        let v = row(b, j).unwrap_or_else(|e| {
            err = Err(e);
            zero.clone()
        });
        let d = b.bin("subf", &v, &mean, f);
        let sq = b.bin("mulf", &d, &d, f);
        vec![b.bin("addf", &acc[0], &sq, f)]
    });
    err?;
    let var = b.bin("divf", &ss[0], &nf, f);
    let eps = b.f64(f32::from_bits(s.epsilon_bits) as f64);
    let ve = b.bin("addf", &var, &eps, f);
    let sd = super::elementwise::sqrt(&mut b, &ve, f);
    let one = b.f64(1.0);
    let is = b.bin("divf", &one, &sd, f);
    let m32 = b.cast("truncf", &mean, f, Ty::F32);
    b.store(&m32, "%mean", "%i", Ty::F32);
    let i32v = b.cast("truncf", &is, f, Ty::F32);
    b.store(&i32v, "%inv", "%i", Ty::F32);
    let mut err = Ok(());
    b.for_(&c0, "%n", &c1, &[], |b, j, _| {
        let r = (|| -> Result<(), String> {
            let v = row(b, j)?;
            let d = b.bin("subf", &v, &mean, f);
            let t = b.bin("mulf", &d, &is, f);
            let si = b.bin("remui", j, "%sn", X);
            let sc = load_f32(b, "%scale", &si, s.scale)?;
            let sc = b.cast("extf", &sc, Ty::F32, f);
            let mut y = b.bin("mulf", &t, &sc, f);
            if s.bias {
                let bv = load_f32(b, "%bias", &si, s.scale)?;
                let bv = b.cast("extf", &bv, Ty::F32, f);
                y = b.bin("addf", &y, &bv, f);
            }
            let y32 = b.cast("truncf", &y, f, Ty::F32);
            let at = b.bin("addi", &base, j, X);
            store_f32(b, &y32, "%y", &at, s.x)
        })();
        if let Err(e) = r {
            err = Err(e);
        }
        vec![]
    });
    err?;
    Ok(Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    })
}

/// Rotary embedding of one head vector per work item.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct RopeSpec {
    pub x: DType,
    pub cache: DType,
    pub interleaved: bool,
    /// Rows of the caches come from `position_ids` (else from the position,
    /// per batch entry when the caches have batch `cb > 1`).
    pub position_ids: bool,
    /// Input is `[B, H, S, D]` (else `[B, S, H*D]`).
    pub bhsd: bool,
}

/// Params: `y`, `x`, `cos`, `sin`, [`pos` (i64)], `err` (i32, set to 1 on a
/// position outside the caches), `nh`, `ns`, `d`, `rot`, `cw` (cache row
/// width), `cb` (cache batch, without position ids), `crows` (cache rows).
/// Work item `i` = `(b·H + h)·S + s`.
pub fn rope(name: &str, s: &RopeSpec) -> Result<Kernel, String> {
    let xt = float_storage(s.x)?;
    let ct = float_storage(s.cache)?;
    let mut params = vec![
        ("y".to_string(), Param::Buf(xt)),
        ("x".to_string(), Param::Buf(xt)),
        ("cos".to_string(), Param::Buf(ct)),
        ("sin".to_string(), Param::Buf(ct)),
    ];
    if s.position_ids {
        params.push(("pos".to_string(), Param::Buf(Ty::I64)));
    }
    params.push(("err".to_string(), Param::Buf(Ty::I32)));
    for p in ["nh", "ns", "d", "rot", "cw", "cb", "crows"] {
        params.push((p.to_string(), Param::Index));
    }
    let mut b = B::new();
    let si = b.bin("remui", "%i", "%ns", X);
    let bh = b.bin("divui", "%i", "%ns", X);
    let hi = b.bin("remui", &bh, "%nh", X);
    let bi = b.bin("divui", &bh, "%nh", X);
    // Offset of the head vector.
    let off = if s.bhsd {
        b.bin("muli", "%i", "%d", X)
    } else {
        let bs = b.bin("muli", &bi, "%ns", X);
        let bss = b.bin("addi", &bs, &si, X);
        let r = b.bin("muli", &bss, "%nh", X);
        let rh = b.bin("addi", &r, &hi, X);
        b.bin("muli", &rh, "%d", X)
    };
    // Cache row.
    let c0 = b.index(0);
    let c1 = b.index(1);
    let row = if s.position_ids {
        let bs = b.bin("muli", &bi, "%ns", X);
        let pi = b.bin("addi", &bs, &si, X);
        let p = b.load("%pos", &pi, Ty::I64);
        let zero = b.int(0, Ty::I64);
        let rows = b.cast("index_cast", "%crows", X, Ty::I64);
        let lo = b.cmpi("slt", &p, &zero, Ty::I64);
        let hi_ = b.cmpi("sge", &p, &rows, Ty::I64);
        let bad = b.bin("ori", &lo, &hi_, Ty::I1);
        b.if_(&bad, |b| {
            let one = b.int(1, Ty::I32);
            b.store(&one, "%err", &c0, Ty::I32);
        });
        let pc = b.select(&bad, &zero, &p, Ty::I64);
        b.cast("index_cast", &pc, Ty::I64, X)
    } else {
        let one_b = b.cmpi("eq", "%cb", &c1, X);
        let bs = b.bin("muli", &bi, "%ns", X);
        let r = b.bin("addi", &bs, &si, X);
        b.select(&one_b, &si, &r, X)
    };
    let cbase = b.bin("muli", &row, "%cw", X);
    let c2 = b.index(2);
    let half = b.bin("divui", "%rot", &c2, X);
    // Channels past `rot` are copied.
    b.for_("%rot", "%d", &c1, &[], |b, j, _| {
        let at = b.bin("addi", &off, j, X);
        let v = b.load("%x", &at, xt);
        b.store(&v, "%y", &at, xt);
        vec![]
    });
    let mut err = Ok(());
    b.for_(&c0, &half, &c1, &[], |b, j, _| {
        let r = (|| -> Result<(), String> {
            let (ia, ib) = if s.interleaved {
                let a = b.bin("muli", j, &c2, X);
                let bb = b.bin("addi", &a, &c1, X);
                (a, bb)
            } else {
                (j.to_string(), b.bin("addi", j, &half, X))
            };
            let pa = b.bin("addi", &off, &ia, X);
            let pb = b.bin("addi", &off, &ib, X);
            let x1 = load_f32(b, "%x", &pa, s.x)?;
            let x2 = load_f32(b, "%x", &pb, s.x)?;
            let ci = b.bin("addi", &cbase, j, X);
            let co = load_f32(b, "%cos", &ci, s.cache)?;
            let sn = load_f32(b, "%sin", &ci, s.cache)?;
            let f = Ty::F32;
            let a1 = b.bin("mulf", &co, &x1, f);
            let a2 = b.bin("mulf", &sn, &x2, f);
            let ya = b.bin("subf", &a1, &a2, f);
            let b1 = b.bin("mulf", &sn, &x1, f);
            let b2 = b.bin("mulf", &co, &x2, f);
            let yb = b.bin("addf", &b1, &b2, f);
            store_f32(b, &ya, "%y", &pa, s.x)?;
            store_f32(b, &yb, "%y", &pb, s.x)
        })();
        if let Err(e) = r {
            err = Err(e);
        }
        vec![]
    });
    err?;
    Ok(Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    })
}

/// How attention scores are masked besides causality.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Mask {
    None,
    /// One byte per entry: nonzero attends.
    Bool,
    /// Added to the scores.
    Float,
}

/// Scaled dot-product attention, one query row per work item.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AttentionSpec {
    pub mask: Mask,
    pub causal: bool,
    pub softcap: bool,
    /// onnxruntime GroupQueryAttention's cache semantics: the past length
    /// is per batch entry (`pastb`), keys from `pastb[b] + L` on are
    /// masked, and masking is causal from `pastb[b]`.
    pub per_batch_past: bool,
}

/// Params: `o` (f32), `q`, `k`, `v` (f32; k/v `[B, Hkv, T, D|Dv]`
/// contiguous), [`mask`], [`pastb`], `hq`, `l`, `dd`, `hkv`, `t`, `dv`, `past`,
/// `qb`, `qh`, `ql` (q strides of batch, head, row), `ob`, `oh`, `ol`,
/// [`mb`, `mh`, `mi`, `mj`, `mw` (mask strides and stored width)],
/// `scale`, `softcap`. Work item `i` = `(b·Hq + h)·L + row`.
pub fn attention(name: &str, s: &AttentionSpec) -> Result<Kernel, String> {
    let f = Ty::F32;
    let mut params = vec![
        ("o".to_string(), Param::Buf(f)),
        ("q".to_string(), Param::Buf(f)),
        ("k".to_string(), Param::Buf(f)),
        ("v".to_string(), Param::Buf(f)),
    ];
    match s.mask {
        Mask::None => {}
        Mask::Bool => params.push(("mask".to_string(), Param::Buf(Ty::I8))),
        Mask::Float => params.push(("mask".to_string(), Param::Buf(f))),
    }
    if s.per_batch_past {
        params.push(("pastb".to_string(), Param::Buf(Ty::I64)));
    }
    let mut idx = vec![
        "hq", "l", "dd", "hkv", "t", "dv", "past", "qb", "qh", "ql", "ob", "oh", "ol",
    ];
    if s.mask != Mask::None {
        idx.extend(["mb", "mh", "mi", "mj", "mw"]);
    }
    params.extend(idx.iter().map(|p| (p.to_string(), Param::Index)));
    params.push(("scale".to_string(), Param::F32));
    params.push(("softcap".to_string(), Param::F32));
    let mut b = B::new();
    let row = b.bin("remui", "%i", "%l", X);
    let bh = b.bin("divui", "%i", "%l", X);
    let h = b.bin("remui", &bh, "%hq", X);
    let bi = b.bin("divui", &bh, "%hq", X);
    let grp = b.bin("divui", "%hq", "%hkv", X);
    let kh = b.bin("divui", &h, &grp, X);
    let lin = |b: &mut B, terms: &[(&str, &str)]| -> String {
        let mut acc = b.index(0);
        for (a, c) in terms {
            let m = b.bin("muli", a, c, X);
            acc = b.bin("addi", &acc, &m, X);
        }
        acc
    };
    let qoff = lin(&mut b, &[(&bi, "%qb"), (&h, "%qh"), (&row, "%ql")]);
    let ooff = lin(&mut b, &[(&bi, "%ob"), (&h, "%oh"), (&row, "%ol")]);
    let bkv = b.bin("muli", &bi, "%hkv", X);
    let bkh = b.bin("addi", &bkv, &kh, X);
    let kvrow = b.bin("muli", &bkh, "%t", X); // first row of this kv head
    let past = if s.per_batch_past {
        let p = b.load("%pastb", &bi, Ty::I64);
        b.cast("index_cast", &p, Ty::I64, X)
    } else {
        "%past".to_string()
    };
    let c0 = b.index(0);
    let c1 = b.index(1);
    let ninf = b.f64(f64::NEG_INFINITY);
    let zero64 = b.f64(0.0);
    // Score of key j (f64), including the bias; -inf when masked.
    let score = |b: &mut B, j: &str| -> String {
        let r = b.bin("addi", &kvrow, j, X);
        let kbase = b.bin("muli", &r, "%dd", X);
        let dot = b.for_(&c0, "%dd", &c1, &[(&zero64, Ty::F64)], |b, d, acc| {
            let qa = b.bin("addi", &qoff, d, X);
            let ka = b.bin("addi", &kbase, d, X);
            let qv = b.load("%q", &qa, f);
            let kv = b.load("%k", &ka, f);
            let qw = b.cast("extf", &qv, f, Ty::F64);
            let kw = b.cast("extf", &kv, f, Ty::F64);
            let p = b.bin("mulf", &qw, &kw, Ty::F64);
            vec![b.bin("addf", &acc[0], &p, Ty::F64)]
        });
        let sc = b.cast("extf", "%scale", f, Ty::F64);
        let mut x = b.bin("mulf", &dot[0], &sc, Ty::F64);
        if s.softcap {
            let cap = b.cast("extf", "%softcap", f, Ty::F64);
            let t = b.bin("divf", &x, &cap, Ty::F64);
            let th = b
                .call("lpc_tanh", &[(&t, Ty::F64)], Some(Ty::F64))
                .expect("r");
            x = b.bin("mulf", &th, &cap, Ty::F64);
        }
        let mut bias = zero64.clone();
        if s.mask != Mask::None {
            let inw = b.cmpi("ult", j, "%mw", X);
            let ma = lin(b, &[(&bi, "%mb"), (&h, "%mh"), (&row, "%mi"), (j, "%mj")]);
            // Columns past the stored mask are masked (never read).
            let safe = b.select(&inw, &ma, &c0, X);
            let mv = match s.mask {
                Mask::Bool => {
                    let m = b.load("%mask", &safe, Ty::I8);
                    let z = b.int(0, Ty::I8);
                    let on = b.cmpi("ne", &m, &z, Ty::I8);
                    b.select(&on, &zero64, &ninf, Ty::F64)
                }
                _ => {
                    let m = b.load("%mask", &safe, f);
                    b.cast("extf", &m, f, Ty::F64)
                }
            };
            bias = b.select(&inw, &mv, &ninf, Ty::F64);
        }
        if s.causal || s.per_batch_past {
            let lim = b.bin("addi", &row, &past, X);
            let after = b.cmpi("ugt", j, &lim, X);
            bias = b.select(&after, &ninf, &bias, Ty::F64);
        }
        if s.per_batch_past {
            let end = b.bin("addi", &past, "%l", X);
            let beyond = b.cmpi("uge", j, &end, X);
            bias = b.select(&beyond, &ninf, &bias, Ty::F64);
        }
        b.bin("addf", &x, &bias, Ty::F64)
    };
    let mx = b.for_(&c0, "%t", &c1, &[(&ninf, Ty::F64)], |b, j, acc| {
        let sc = score(b, j);
        vec![b.bin("maximumf", &acc[0], &sc, Ty::F64)]
    });
    // Zero the output row.
    let zf = b.f32(0.0);
    b.for_(&c0, "%dv", &c1, &[], |b, d, _| {
        let a = b.bin("addi", &ooff, d, X);
        b.store(&zf, "%o", &a, f);
        vec![]
    });
    // Rows masked everywhere stay zero, as in the ONNX reference.
    let live = b.cmpf("ogt", &mx[0], &ninf, Ty::F64);
    b.if_(&live, |b| {
        let sum = b.for_(&c0, "%t", &c1, &[(&zero64, Ty::F64)], |b, j, acc| {
            let sc = score(b, j);
            let d = b.bin("subf", &sc, &mx[0], Ty::F64);
            let e = b
                .call("lpc_exp", &[(&d, Ty::F64)], Some(Ty::F64))
                .expect("r");
            vec![b.bin("addf", &acc[0], &e, Ty::F64)]
        });
        b.for_(&c0, "%t", &c1, &[], |b, j, _| {
            let sc = score(b, j);
            let d = b.bin("subf", &sc, &mx[0], Ty::F64);
            let e = b
                .call("lpc_exp", &[(&d, Ty::F64)], Some(Ty::F64))
                .expect("r");
            let p = b.bin("divf", &e, &sum[0], Ty::F64);
            let p32 = b.cast("truncf", &p, Ty::F64, f);
            let r = b.bin("addi", &kvrow, j, X);
            let vbase = b.bin("muli", &r, "%dv", X);
            b.for_(&c0, "%dv", &c1, &[], |b, d, _| {
                let va = b.bin("addi", &vbase, d, X);
                let vv = b.load("%v", &va, f);
                let oa = b.bin("addi", &ooff, d, X);
                let ov = b.load("%o", &oa, f);
                let t = b.bin("mulf", &p32, &vv, f);
                let n = b.bin("addf", &ov, &t, f);
                b.store(&n, "%o", &oa, f);
                vec![]
            });
            vec![]
        });
    });
    Ok(Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    })
}
