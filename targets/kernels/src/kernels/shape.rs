//! Data movement: one strided-copy kernel serves Transpose, Slice (negative
//! steps too), Expand, Concat (one launch per operand) and Split (one per
//! output): `y[yoff + Σ c·ys] = x[xoff + Σ c·xs]` over the coordinates `c`
//! of a box of dims `d`. Elements are copied as raw bits of their size.

use crate::kernel::{Kernel, Param};
use crate::mlir::{Ty, B};

/// The integer type moving an element of `bytes` bytes.
pub fn bits_type(bytes: usize) -> Result<Ty, String> {
    Ok(match bytes {
        1 => Ty::I8,
        2 => Ty::I16,
        4 => Ty::I32,
        8 => Ty::I64,
        b => return Err(format!("no copy kernel for {b}-byte elements")),
    })
}

/// Params: `y`, `x`, `d0..`, `xs0..`, `ys0..` (strides in elements, signed),
/// `xoff`, `yoff`. Item = linear index in the box.
pub fn copy(name: &str, rank: usize, elem_bytes: usize) -> Result<Kernel, String> {
    let t = bits_type(elem_bytes)?;
    let mut params = vec![
        ("y".to_string(), Param::Buf(t)),
        ("x".to_string(), Param::Buf(t)),
    ];
    for p in ["d", "xs", "ys"] {
        for a in 0..rank {
            params.push((format!("{p}{a}"), Param::Index));
        }
    }
    params.push(("xoff".to_string(), Param::Index));
    params.push(("yoff".to_string(), Param::Index));
    let mut b = B::new();
    let x = Ty::Index;
    let mut rem = "%i".to_string();
    let mut xo = "%xoff".to_string();
    let mut yo = "%yoff".to_string();
    for a in (0..rank).rev() {
        let c = if a == 0 {
            rem.clone()
        } else {
            let c = b.bin("remui", &rem, &format!("%d{a}"), x);
            rem = b.bin("divui", &rem, &format!("%d{a}"), x);
            c
        };
        let mx = b.bin("muli", &c, &format!("%xs{a}"), x);
        xo = b.bin("addi", &xo, &mx, x);
        let my = b.bin("muli", &c, &format!("%ys{a}"), x);
        yo = b.bin("addi", &yo, &my, x);
    }
    let v = b.load("%x", &xo, t);
    b.store(&v, "%y", &yo, t);
    Ok(Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    })
}

/// `y[i] = 0`. Params: `y`.
pub fn zero(name: &str, elem_bytes: usize) -> Result<Kernel, String> {
    let t = bits_type(elem_bytes)?;
    let mut b = B::new();
    let z = b.int(0, t);
    b.store(&z, "%y", "%i", t);
    Ok(Kernel {
        name: name.into(),
        params: vec![("y".to_string(), Param::Buf(t))],
        body: b.finish(),
    })
}

/// Rows of key/value heads into a KV cache with per-batch offsets (onnxruntime
/// GroupQueryAttention's cache). Params: `y`, `x` (f32), `pastb` (i64 per
/// batch), `nh`, `nr`, `nd` (heads, rows, row length of the box),
/// `xs0..xs2`, `ys0..ys2` (batch, head, row strides; elements contiguous).
/// `cached`: the box is the old cache, only rows `< pastb[b]` are copied, to
/// the same rows; otherwise the box is the new rows, written from row
/// `pastb[b]` on. Item = ((b·nh + h)·nr + r)·nd + e.
pub fn kv_rows(name: &str, cached: bool) -> Kernel {
    let f = Ty::F32;
    let x = Ty::Index;
    let mut params = vec![
        ("y".to_string(), Param::Buf(f)),
        ("x".to_string(), Param::Buf(f)),
        ("pastb".to_string(), Param::Buf(Ty::I64)),
    ];
    for p in ["nh", "nr", "nd", "xs0", "xs1", "xs2", "ys0", "ys1", "ys2"] {
        params.push((p.to_string(), Param::Index));
    }
    let mut b = B::new();
    let e = b.bin("remui", "%i", "%nd", x);
    let t = b.bin("divui", "%i", "%nd", x);
    let r = b.bin("remui", &t, "%nr", x);
    let t2 = b.bin("divui", &t, "%nr", x);
    let h = b.bin("remui", &t2, "%nh", x);
    let bi = b.bin("divui", &t2, "%nh", x);
    let pv = b.load("%pastb", &bi, Ty::I64);
    let past = b.cast("index_cast", &pv, Ty::I64, x);
    let off = |b: &mut B, s: [&str; 3], row: &str| -> String {
        let a = b.bin("muli", &bi, s[0], x);
        let c = b.bin("muli", &h, s[1], x);
        let d = b.bin("muli", row, s[2], x);
        let ac = b.bin("addi", &a, &c, x);
        let acd = b.bin("addi", &ac, &d, x);
        b.bin("addi", &acd, &e, x)
    };
    let src = off(&mut b, ["%xs0", "%xs1", "%xs2"], &r);
    let (dst, go) = if cached {
        let d = off(&mut b, ["%ys0", "%ys1", "%ys2"], &r);
        (d, Some(b.cmpi("ult", &r, &past, x)))
    } else {
        let row = b.bin("addi", &past, &r, x);
        (off(&mut b, ["%ys0", "%ys1", "%ys2"], &row), None)
    };
    let body = |b: &mut B| {
        let v = b.load("%x", &src, f);
        b.store(&v, "%y", &dst, f);
    };
    match go {
        Some(c) => b.if_(&c, body),
        None => body(&mut b),
    }
    Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    }
}

/// Gather along an axis: `y[o, j, t] = x[o, idx[j], t]` (negative indices
/// count from the end). Params: `y`, `x`, `idx` (i64), `err` (i32, set to 1
/// for an index out of range; the element is then 0), `nidx`, `inner`,
/// `axis_len`. Item = (o·nidx + j)·inner + t.
pub fn gather(name: &str, elem_bytes: usize) -> Result<Kernel, String> {
    let t = bits_type(elem_bytes)?;
    let params = vec![
        ("y".to_string(), Param::Buf(t)),
        ("x".to_string(), Param::Buf(t)),
        ("idx".to_string(), Param::Buf(Ty::I64)),
        ("err".to_string(), Param::Buf(Ty::I32)),
        ("nidx".to_string(), Param::Index),
        ("inner".to_string(), Param::Index),
        ("axis_len".to_string(), Param::Index),
    ];
    let mut b = B::new();
    let x = Ty::Index;
    let tt = b.bin("remui", "%i", "%inner", x);
    let oj = b.bin("divui", "%i", "%inner", x);
    let j = b.bin("remui", &oj, "%nidx", x);
    let o = b.bin("divui", &oj, "%nidx", x);
    let raw = b.load("%idx", &j, Ty::I64);
    let len = b.cast("index_cast", "%axis_len", x, Ty::I64);
    let zero = b.int(0, Ty::I64);
    let neg = b.cmpi("slt", &raw, &zero, Ty::I64);
    let wrapped = b.bin("addi", &raw, &len, Ty::I64);
    let k = b.select(&neg, &wrapped, &raw, Ty::I64);
    let lo = b.cmpi("slt", &k, &zero, Ty::I64);
    let hi = b.cmpi("sge", &k, &len, Ty::I64);
    let bad = b.bin("ori", &lo, &hi, Ty::I1);
    let c0 = b.index(0);
    b.if_(&bad, |b| {
        let one = b.int(1, Ty::I32);
        b.store(&one, "%err", &c0, Ty::I32);
    });
    let ks = b.select(&bad, &zero, &k, Ty::I64);
    let ki = b.cast("index_cast", &ks, Ty::I64, x);
    let row = b.bin("muli", &o, "%axis_len", x);
    let r = b.bin("addi", &row, &ki, x);
    let rb = b.bin("muli", &r, "%inner", x);
    let src = b.bin("addi", &rb, &tt, x);
    let v = b.load("%x", &src, t);
    let z = b.int(0, t);
    let out = b.select(&bad, &z, &v, t);
    b.store(&out, "%y", "%i", t);
    Ok(Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    })
}
