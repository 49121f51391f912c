//! Data movement and shape ops: views (`Reshape`, `Flatten`, `Squeeze`,
//! `Unsqueeze`) that share their operand's buffer, strided copies
//! (`Transpose`, `Slice`, `Expand`, `Concat`, `Split`), `Gather`,
//! `ScatterND`, `Shape`, `Range` and the reductions. Axes, permutations and
//! split sizes must be compile-time constants (they fix ranks); shape
//! operands, starts and ends may be computed at run time.

use super::arg;
use super::core::{Cg, Val, R};
use super::elementwise::S;
use inkwell::values::IntValue;
use inkwell::IntPredicate;
use lpc_ir::{DType, Node};

type Cst<'a> = &'a dyn Fn(usize) -> Option<Vec<i64>>;
/// Element `i` of a generated sequence (`Range`).
type ElemFn<'c> = Box<dyn Fn(&Cg<'c>, IntValue<'c>) -> R<S<'c>> + 'c>;

fn norm_axis(cg: &Cg, a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if !(0..r).contains(&x) {
        return cg.err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(x as usize)
}

/// Constant axes from operand `k` or attribute `axes`.
fn axes(n: &Node, cst: Cst, k: usize) -> Option<Vec<i64>> {
    if n.inputs.get(k).copied().flatten().is_some() {
        return cst(k);
    }
    n.ints("axes").map(|a| a.to_vec())
}

impl<'c> Cg<'c> {
    /// Copies `dims` elements: `dst[dbase + idx·dstr] = src[sbase + idx·sstr]`.
    pub fn copy_strided(
        &mut self,
        dt: DType,
        dims: &[IntValue<'c>],
        src: (
            inkwell::values::PointerValue<'c>,
            IntValue<'c>,
            &[IntValue<'c>],
        ),
        dst: (
            inkwell::values::PointerValue<'c>,
            IntValue<'c>,
            &[IntValue<'c>],
        ),
    ) -> R<()> {
        // GPU libraries move float data on the device (Split, Slice,
        // Expand, ... all copy through here).
        if self.dev.is_some() && matches!(dt, DType::F32 | DType::F16 | DType::Bf16) {
            let n = self.product(dims)?;
            return super::device::copy(
                self,
                dt,
                (dst.0, n),
                (src.0, n),
                dims,
                src.2,
                dst.2,
                (src.1, dst.1),
            );
        }
        let (sp, sb, ss) = (src.0, src.1, src.2.to_vec());
        let (dp, db, ds) = (dst.0, dst.1, dst.2.to_vec());
        let t = self.ty(dt)?;
        self.for_nd(dims, &mut |cg, idx| {
            let so = cg.add(sb, cg.offset(idx, &ss)?)?;
            let d_o = cg.add(db, cg.offset(idx, &ds)?)?;
            let v = cg.b.build_load(t, cg.gep(dt, sp, so)?, "")?;
            cg.b.build_store(cg.gep(dt, dp, d_o)?, v)?;
            Ok(())
        })
    }

    /// A fresh contiguous tensor of `dims` filled by a strided read of `src`.
    pub fn gather_strided(
        &mut self,
        src: &Val<'c>,
        dims: Vec<IntValue<'c>>,
        base: IntValue<'c>,
        strides: &[IntValue<'c>],
    ) -> R<Val<'c>> {
        let n = self.product(&dims)?;
        let out = self.alloc(src.dt, n)?;
        let ostr = self.strides(&dims)?;
        let zero = self.c64(0);
        self.copy_strided(src.dt, &dims, (src.ptr, base, strides), (out, zero, &ostr))?;
        Ok(Val {
            ptr: out,
            dims,
            dt: src.dt,
        })
    }

    /// Normalizes a possibly negative index against `d` and checks it.
    fn norm_index(&mut self, i: IntValue<'c>, d: IntValue<'c>, what: &str) -> R<IntValue<'c>> {
        let neg = self.icmp(IntPredicate::SLT, i, self.c64(0))?;
        let j = self.select_i(neg, self.add(i, d)?, i)?;
        let ge = self.icmp(IntPredicate::SGE, j, self.c64(0))?;
        let lt = self.icmp(IntPredicate::SLT, j, d)?;
        let ok = self.and(ge, lt)?;
        self.check(ok, what)?;
        Ok(j)
    }
}

/// The integers of operand `k`: constants when the operand is one (so shapes
/// stay static for LLVM), else loaded at run time.
fn ints_of<'c>(cg: &Cg<'c>, cst: Cst, k: usize, v: &Val<'c>, n: usize) -> R<Vec<IntValue<'c>>> {
    if let Some(c) = cst(k) {
        if c.len() == n {
            return Ok(c.iter().map(|&x| cg.c64(x)).collect());
        }
    }
    (0..n)
        .map(|i| {
            let z = cg.c64(i as i64);
            match cg.load_s(v.dt, v.ptr, z)? {
                S::I(x) => Ok(x),
                _ => cg.err(format!("operand {k} must be integers")),
            }
        })
        .collect()
}

/// Every dimension's value when all are compile-time constants.
fn all_known(dims: &[IntValue]) -> Option<Vec<i64>> {
    dims.iter().map(|&d| Cg::known(d)).collect()
}

/// Where `ScatterND` with constant `idx` (`lead` index tuples of depth `q`)
/// writes into data of shape `dims`: `Ok(Some((base, coef)))` when tuple
/// `u`'s element offset is `base + sum(coef[k] * u[k])`; `Ok(None)` when
/// the offsets follow no such rule; `Err` names an index out of range.
fn scatter_affine(
    dims: &[i64],
    idx: &[i64],
    lead: &[i64],
    q: usize,
) -> Result<Option<(i64, Vec<i64>)>, String> {
    let count: i64 = lead.iter().product();
    if q > dims.len() || idx.len() as i64 != count * q as i64 {
        return Ok(None);
    }
    let mut st = vec![1i64; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        st[k] = st[k + 1] * dims[k + 1];
    }
    let mut offs = Vec::with_capacity(count as usize);
    for t in idx.chunks(q.max(1)).take(count as usize) {
        let mut o = 0;
        for (k, &i) in t.iter().enumerate().take(q) {
            let j = if i < 0 { i + dims[k] } else { i };
            if !(0..dims[k]).contains(&j) {
                return Err(format!(
                    "ScatterND: index {i} is out of range for axis {k} of size {}",
                    dims[k]
                ));
            }
            o += j * st[k];
        }
        offs.push(o);
    }
    if q == 0 {
        offs = vec![0; count as usize];
    }
    let Some(&base) = offs.first() else {
        return Ok(None);
    };
    let mut lst = vec![1i64; lead.len()];
    for k in (0..lead.len().saturating_sub(1)).rev() {
        lst[k] = lst[k + 1] * lead[k + 1];
    }
    let coef: Vec<i64> = (0..lead.len())
        .map(|k| {
            if lead[k] > 1 {
                offs[lst[k] as usize] - base
            } else {
                0
            }
        })
        .collect();
    for (j, &o) in offs.iter().enumerate() {
        let mut want = base;
        let mut r = j as i64;
        for k in 0..lead.len() {
            want += coef[k] * (r / lst[k]);
            r %= lst[k];
        }
        if o != want {
            return Ok(None);
        }
    }
    Ok(Some((base, coef)))
}

fn clamp<'c>(cg: &Cg<'c>, v: IntValue<'c>, lo: IntValue<'c>, hi: IntValue<'c>) -> R<IntValue<'c>> {
    cg.smin(cg.smax(v, lo)?, hi)
}

pub fn emit<'c>(
    cg: &mut Cg<'c>,
    n: &Node,
    ins: &[Option<Val<'c>>],
    cst: Cst,
) -> R<Option<Vec<Val<'c>>>> {
    let op = n.op.as_str();
    let a = |k| arg(cg, ins, k).cloned();
    let out = match op {
        "Shape" => {
            let x = a(0)?;
            let r = x.rank() as i64;
            let cl = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, e) = (
                cl(n.int("start").unwrap_or(0)),
                cl(n.int("end").unwrap_or(r)),
            );
            let dims = &x.dims[s..e.max(s)];
            let p = cg.alloc(DType::I64, cg.c64(dims.len() as i64))?;
            for (k, &d) in dims.iter().enumerate() {
                cg.store(DType::I64, p, cg.c64(k as i64), d.into())?;
            }
            vec![Val {
                ptr: p,
                dims: vec![cg.c64(dims.len() as i64)],
                dt: DType::I64,
            }]
        }
        "Reshape" => {
            let (x, s) = (a(0)?, a(1)?);
            let Some(r) = s.dims.first().and_then(|&d| Cg::known(d)) else {
                return cg.err("the shape operand's length must be known at compile time");
            };
            let allowzero = n.int("allowzero").unwrap_or(0) != 0;
            let total = cg.product(&x.dims)?;
            let mut dims = Vec::with_capacity(r as usize);
            let mut known = cg.c64(1);
            let spec = ints_of(cg, cst, 1, &s, r as usize)?;
            for (k, &v) in spec.iter().enumerate() {
                let d = if !allowzero && k < x.rank() {
                    let z = cg.icmp(IntPredicate::EQ, v, cg.c64(0))?;
                    cg.select_i(z, x.dims[k], v)?
                } else {
                    v
                };
                let m1 = cg.icmp(IntPredicate::EQ, d, cg.c64(-1))?;
                known = cg.mul(known, cg.select_i(m1, cg.c64(1), d)?)?;
                dims.push(d);
            }
            // A -1 entry is the total over the product of the others.
            let q = cg.sdiv(total, cg.smax(known, cg.c64(1))?)?;
            for d in dims.iter_mut() {
                let m1 = cg.icmp(IntPredicate::EQ, *d, cg.c64(-1))?;
                *d = cg.select_i(m1, q, *d)?;
            }
            for &d in &dims {
                let ok = cg.icmp(IntPredicate::SGE, d, cg.c64(0))?;
                cg.check(ok, "Reshape: a dimension is negative")?;
            }
            let prod = cg.product(&dims)?;
            let ok = cg.icmp(IntPredicate::EQ, prod, total)?;
            cg.check(
                ok,
                "Reshape: the new shape does not hold the same number of elements",
            )?;
            vec![Val {
                ptr: x.ptr,
                dims,
                dt: x.dt,
            }]
        }
        "Flatten" => {
            let x = a(0)?;
            let r = x.rank() as i64;
            let k = n.int("axis").unwrap_or(1);
            let k = if k < 0 { k + r } else { k };
            if !(0..=r).contains(&k) {
                return cg.err(format!("axis {k} is out of range"));
            }
            let o = cg.product(&x.dims[..k as usize])?;
            let i = cg.product(&x.dims[k as usize..])?;
            vec![Val {
                ptr: x.ptr,
                dims: vec![o, i],
                dt: x.dt,
            }]
        }
        "Squeeze" => {
            let x = a(0)?;
            let ax: Vec<usize> = match axes(n, cst, 1) {
                Some(v) => v
                    .iter()
                    .map(|&v| norm_axis(cg, v, x.rank()))
                    .collect::<R<_>>()?,
                None => (0..x.rank())
                    .filter(|&k| Cg::known(x.dims[k]) == Some(1))
                    .collect(),
            };
            for &k in &ax {
                let ok = cg.icmp(IntPredicate::EQ, x.dims[k], cg.c64(1))?;
                cg.check(ok, "Squeeze: a squeezed axis is not of size 1")?;
            }
            let dims = (0..x.rank())
                .filter(|k| !ax.contains(k))
                .map(|k| x.dims[k])
                .collect();
            vec![Val {
                ptr: x.ptr,
                dims,
                dt: x.dt,
            }]
        }
        "Unsqueeze" => {
            let x = a(0)?;
            let Some(ax) = axes(n, cst, 1) else {
                return cg.err("Unsqueeze needs constant axes");
            };
            let r = x.rank() + ax.len();
            let mut ax: Vec<usize> = ax.iter().map(|&v| norm_axis(cg, v, r)).collect::<R<_>>()?;
            ax.sort();
            let mut dims = x.dims.clone();
            for &k in &ax {
                dims.insert(k, cg.c64(1));
            }
            vec![Val {
                ptr: x.ptr,
                dims,
                dt: x.dt,
            }]
        }
        "Transpose" => {
            let x = a(0)?;
            let perm: Vec<usize> = match n.ints("perm") {
                Some(p) => p
                    .iter()
                    .map(|&v| norm_axis(cg, v, x.rank()))
                    .collect::<R<_>>()?,
                None => (0..x.rank()).rev().collect(),
            };
            let mut seen = perm.clone();
            seen.sort();
            if seen != (0..x.rank()).collect::<Vec<_>>() {
                return cg.err(format!(
                    "perm {perm:?} is not a permutation of rank {}",
                    x.rank()
                ));
            }
            let st = cg.strides(&x.dims)?;
            let dims = perm.iter().map(|&p| x.dims[p]).collect();
            let ss: Vec<_> = perm.iter().map(|&p| st[p]).collect();
            let zero = cg.c64(0);
            vec![cg.gather_strided(&x, dims, zero, &ss)?]
        }
        "Expand" => {
            let (x, s) = (a(0)?, a(1)?);
            let Some(r) = s.dims.first().and_then(|&d| Cg::known(d)) else {
                return cg.err("the shape operand's length must be known at compile time");
            };
            let target = ints_of(cg, cst, 1, &s, r as usize)?;
            let ones = Val {
                ptr: x.ptr,
                dims: target,
                dt: x.dt,
            };
            let (dims, strides) = cg.broadcast(&[&x, &ones])?;
            if all_known(&dims).is_some_and(|d| Some(d) == all_known(&x.dims)) {
                // To its own shape: a view.
                return Ok(Some(vec![x]));
            }
            let zero = cg.c64(0);
            vec![cg.gather_strided(&x, dims, zero, &strides[0])?]
        }
        "Concat" => {
            let parts: Vec<Val> = (0..ins.len()).map(a).collect::<R<_>>()?;
            let first = &parts[0];
            let Some(ax) = n.int("axis") else {
                return cg.err("Concat needs axis");
            };
            let k = norm_axis(cg, ax, first.rank())?;
            let mut dims = first.dims.clone();
            dims[k] = cg.c64(0);
            for p in &parts {
                if p.rank() != first.rank() {
                    return cg.err("Concat operands differ in rank");
                }
                dims[k] = cg.add(dims[k], p.dims[k])?;
                for j in 0..p.rank() {
                    if j != k {
                        let ok = cg.icmp(IntPredicate::EQ, p.dims[j], first.dims[j])?;
                        cg.check(ok, "Concat operands differ outside the axis")?;
                    }
                }
            }
            let total = cg.product(&dims)?;
            let out = cg.alloc(first.dt, total)?;
            let ost = cg.strides(&dims)?;
            let mut off = cg.c64(0);
            for p in &parts {
                let ps = cg.strides(&p.dims)?;
                let base = cg.mul(off, ost[k])?;
                let zero = cg.c64(0);
                cg.copy_strided(p.dt, &p.dims, (p.ptr, zero, &ps), (out, base, &ost))?;
                off = cg.add(off, p.dims[k])?;
            }
            vec![Val {
                ptr: out,
                dims,
                dt: first.dt,
            }]
        }
        "Split" => {
            let x = a(0)?;
            let k = norm_axis(cg, n.int("axis").unwrap_or(0), x.rank())?;
            let outs = n.outputs.len();
            let d = x.dims[k];
            let sizes: Vec<IntValue> = if n.inputs.get(1).copied().flatten().is_some() {
                match cst(1) {
                    Some(v) => v.iter().map(|&s| cg.c64(s)).collect(),
                    None => {
                        let s = a(1)?;
                        (0..outs)
                            .map(|i| cg.load_i64(s.ptr, cg.c64(i as i64)))
                            .collect::<R<_>>()?
                    }
                }
            } else if let Some(s) = n.ints("split") {
                s.iter().map(|&s| cg.c64(s)).collect()
            } else {
                let parts = n.int("num_outputs").unwrap_or(outs as i64).max(1);
                let chunk = cg.sdiv(cg.add(d, cg.c64(parts - 1))?, cg.c64(parts))?;
                let mut v = Vec::new();
                for i in 0..parts {
                    let rest = cg.smax(cg.sub(d, cg.mul(cg.c64(i), chunk)?)?, cg.c64(0))?;
                    v.push(cg.smin(chunk, rest)?);
                }
                v
            };
            if sizes.len() != outs {
                return cg.err(format!("{} split sizes for {outs} outputs", sizes.len()));
            }
            let sum = sizes.iter().try_fold(cg.c64(0), |acc, &s| cg.add(acc, s))?;
            let ok = cg.icmp(IntPredicate::EQ, sum, d)?;
            cg.check(ok, "Split sizes do not add up to the axis")?;
            let st = cg.strides(&x.dims)?;
            let mut start = cg.c64(0);
            let mut res = Vec::new();
            for s in sizes {
                let mut dims = x.dims.clone();
                dims[k] = s;
                let base = cg.mul(start, st[k])?;
                res.push(cg.gather_strided(&x, dims, base, &st)?);
                start = cg.add(start, s)?;
            }
            res
        }
        "Slice" => {
            let (x, st_v, en_v) = (a(0)?, a(1)?, a(2)?);
            let Some(cnt) = st_v.dims.first().and_then(|&d| Cg::known(d)) else {
                return cg.err("the starts operand's length must be known at compile time");
            };
            let ax: Vec<usize> = match n.inputs.get(3).copied().flatten() {
                Some(_) => match cst(3) {
                    Some(v) => v
                        .iter()
                        .map(|&v| norm_axis(cg, v, x.rank()))
                        .collect::<R<_>>()?,
                    None => return cg.err("Slice axes must be constants"),
                },
                None => (0..cnt as usize).collect(),
            };
            let steps: Vec<i64> = match n.inputs.get(4).copied().flatten() {
                Some(_) => match cst(4) {
                    Some(v) => v,
                    None => return cg.err("Slice steps must be constants"),
                },
                None => vec![1; cnt as usize],
            };
            if ax.len() != cnt as usize || steps.len() != cnt as usize {
                return cg.err("starts, ends, axes and steps differ in length");
            }
            let starts = ints_of(cg, cst, 1, &st_v, cnt as usize)?;
            let ends = ints_of(cg, cst, 2, &en_v, cnt as usize)?;
            let st = cg.strides(&x.dims)?;
            let mut dims = x.dims.clone();
            let mut strides = st.clone();
            let mut base = cg.c64(0);
            for i in 0..cnt as usize {
                let (k, step) = (ax[i], steps[i]);
                if step == 0 {
                    return cg.err("slice step 0");
                }
                let d = x.dims[k];
                let (s0, e0) = (starts[i], ends[i]);
                let norm = |cg: &Cg<'c>, v: IntValue<'c>| -> R<IntValue<'c>> {
                    let neg = cg.icmp(IntPredicate::SLT, v, cg.c64(0))?;
                    cg.select_i(neg, cg.add(v, d)?, v)
                };
                let (s, e) = (norm(cg, s0)?, norm(cg, e0)?);
                let (s, len) = if step > 0 {
                    let (s, e) = (clamp(cg, s, cg.c64(0), d)?, clamp(cg, e, cg.c64(0), d)?);
                    let span = cg.add(cg.sub(e, s)?, cg.c64(step - 1))?;
                    (s, cg.smax(cg.sdiv(span, cg.c64(step))?, cg.c64(0))?)
                } else {
                    let hi = cg.sub(d, cg.c64(1))?;
                    let (s, e) = (clamp(cg, s, cg.c64(-1), hi)?, clamp(cg, e, cg.c64(-1), hi)?);
                    let span = cg.add(cg.sub(s, e)?, cg.c64(-step - 1))?;
                    (s, cg.smax(cg.sdiv(span, cg.c64(-step))?, cg.c64(0))?)
                };
                dims[k] = len;
                base = cg.add(base, cg.mul(s, st[k])?)?;
                strides[k] = cg.mul(st[k], cg.c64(step))?;
            }
            vec![cg.gather_strided(&x, dims, base, &strides)?]
        }
        "Gather" => {
            let (x, ind) = (a(0)?, a(1)?);
            let k = norm_axis(cg, n.int("axis").unwrap_or(0), x.rank())?;
            let outer = cg.product(&x.dims[..k])?;
            let inner = cg.product(&x.dims[k + 1..])?;
            let d = x.dims[k];
            let ni = cg.product(&ind.dims)?;
            // Check every index first (errors before any work).
            let nd = cg.alloc(DType::I64, ni)?;
            cg.for_n(ni, |cg, j| {
                let i = cg.load_s(ind.dt, ind.ptr, j)?;
                let S::I(i) = i else {
                    return cg.err("indices must be integers");
                };
                let jn = cg.norm_index(i, d, "Gather: an index is out of range")?;
                cg.store(DType::I64, nd, j, jn.into())
            })?;
            let mut dims = x.dims[..k].to_vec();
            dims.extend(&ind.dims);
            dims.extend(&x.dims[k + 1..]);
            let total = cg.product(&dims)?;
            let out = cg.alloc(x.dt, total)?;
            let t = cg.ty(x.dt)?;
            cg.for_nd(&[outer, ni, inner], &mut |cg, idx| {
                let j = cg.load_i64(nd, idx[1])?;
                let src = cg.add(cg.mul(cg.add(cg.mul(idx[0], d)?, j)?, inner)?, idx[2])?;
                let dst = cg.add(cg.mul(cg.add(cg.mul(idx[0], ni)?, idx[1])?, inner)?, idx[2])?;
                let v = cg.b.build_load(t, cg.gep(x.dt, x.ptr, src)?, "")?;
                cg.b.build_store(cg.gep(x.dt, out, dst)?, v)?;
                Ok(())
            })?;
            cg.release(nd)?;
            vec![Val {
                ptr: out,
                dims,
                dt: x.dt,
            }]
        }
        "Range" => {
            let (s, l, d) = (a(0)?, a(1)?, a(2)?);
            let z = cg.c64(0);
            let (s, l, d, dt) = (
                cg.load_s(s.dt, s.ptr, z)?,
                cg.load_s(l.dt, l.ptr, z)?,
                cg.load_s(d.dt, d.ptr, z)?,
                s.dt,
            );
            let (len, f): (IntValue, ElemFn<'c>) = match (s, l, d) {
                (S::I(s), S::I(l), S::I(d)) => {
                    let nz = cg.icmp(IntPredicate::NE, d, cg.c64(0))?;
                    cg.check(nz, "Range: delta is 0")?;
                    let q = cg.fdiv(cg.si_to_f64(cg.sub(l, s)?)?, cg.si_to_f64(d)?)?;
                    let c = cg
                        .intrinsic("llvm.ceil", &[cg.f64t().into()], &[q.into()])?
                        .into_float_value();
                    let n = cg.b.build_float_to_signed_int(c, cg.i64t(), "")?;
                    (
                        cg.smax(n, cg.c64(0))?,
                        Box::new(move |cg: &Cg<'c>, i| Ok(S::I(cg.add(s, cg.mul(i, d)?)?))),
                    )
                }
                (S::F(s), S::F(l), S::F(d)) => {
                    let q = cg.fdiv(cg.fsub(l, s)?, d)?;
                    let c = cg.math_f32("ceil", q)?;
                    let n = cg.b.build_float_to_signed_int(c, cg.i64t(), "")?;
                    (
                        cg.smax(n, cg.c64(0))?,
                        Box::new(move |cg: &Cg<'c>, i| {
                            let fi = cg.b.build_signed_int_to_float(i, cg.f32t(), "")?;
                            Ok(S::F(cg.fadd(s, cg.fmul(fi, d)?)?))
                        }),
                    )
                }
                _ => return cg.err("Range operands must share one type"),
            };
            let out = cg.alloc(dt, len)?;
            cg.for_n(len, |cg, i| {
                let v = f(cg, i)?;
                cg.store_s(dt, out, i, v)
            })?;
            vec![Val {
                ptr: out,
                dims: vec![len],
                dt,
            }]
        }
        "ScatterND" => {
            let (x, ind, upd) = (a(0)?, a(1)?, a(2)?);
            if n.string("reduction").is_some_and(|r| r != "none") {
                return cg.err("only reduction=none is supported");
            }
            let Some(q) = ind.dims.last().and_then(|&d| Cg::known(d)) else {
                return cg.err("ScatterND: the index depth must be known at compile time");
            };
            let q = q as usize;
            if q > x.rank() {
                return cg.err("index depth exceeds the data rank");
            }
            let total = cg.product(&x.dims)?;
            let out = cg.alloc(x.dt, total)?;
            let bytes = cg.mul(total, cg.c64(x.dt.size() as i64))?;
            cg.b.build_memcpy(out, 1, x.ptr, 1, bytes)?;
            let st = cg.strides(&x.dims)?;
            let slice = cg.product(&x.dims[q..])?;
            let count = cg.product(&ind.dims[..ind.rank() - 1])?;
            let nu = cg.product(&upd.dims)?;
            let ok = cg.icmp(IntPredicate::EQ, nu, cg.mul(count, slice)?)?;
            cg.check(ok, "ScatterND: updates do not match the indices")?;
            let lead = &ind.dims[..ind.rank() - 1];
            let affine = match (
                cg.dev.is_none(),
                cst(1),
                all_known(&x.dims),
                all_known(lead),
            ) {
                (true, Some(idx), Some(dx), Some(lead)) => {
                    scatter_affine(&dx, &idx, &lead, q).or_else(|m| cg.err(m))?
                }
                _ => None,
            };
            if let Some((base, coef)) = affine {
                // Constant indices, checked here, that are affine in the
                // update's index (torch's `x[..., 0::2] = a`): strided
                // stores, no index loads.
                let mut dims = lead.to_vec();
                dims.extend(&x.dims[q..]);
                let src = cg.strides(&dims)?;
                let mut dst: Vec<IntValue> = coef.iter().map(|&c| cg.c64(c)).collect();
                dst.extend(&st[q..]);
                let z = cg.c64(0);
                cg.copy_strided(x.dt, &dims, (upd.ptr, z, &src), (out, cg.c64(base), &dst))?;
                return Ok(Some(vec![Val {
                    ptr: out,
                    dims: x.dims.clone(),
                    dt: x.dt,
                }]));
            }
            let t = cg.ty(x.dt)?;
            cg.for_n(count, |cg, j| {
                let mut base = cg.c64(0);
                for k in 0..q {
                    let i = cg.load_i64(
                        ind.ptr,
                        cg.add(cg.mul(j, cg.c64(q as i64))?, cg.c64(k as i64))?,
                    )?;
                    let i = cg.norm_index(i, x.dims[k], "ScatterND: an index is out of range")?;
                    base = cg.add(base, cg.mul(i, st[k])?)?;
                }
                cg.for_n(slice, |cg, s| {
                    let v = cg.b.build_load(
                        t,
                        cg.gep(x.dt, upd.ptr, cg.add(cg.mul(j, slice)?, s)?)?,
                        "",
                    )?;
                    cg.b.build_store(cg.gep(x.dt, out, cg.add(base, s)?)?, v)?;
                    Ok(())
                })
            })?;
            vec![Val {
                ptr: out,
                dims: x.dims.clone(),
                dt: x.dt,
            }]
        }
        "ConstantOfShape" => {
            let sv = a(0)?;
            let Some(r) = sv.dims.first().and_then(|&d| Cg::known(d)) else {
                return cg.err("the shape operand's length must be known at compile time");
            };
            let dims = ints_of(cg, cst, 0, &sv, r as usize)?;
            let (dt, bytes) = match n.attr("value") {
                Some(lpc_ir::Attr::Tensor(t)) if t.len() == 1 => (t.dtype, t.data.to_vec()),
                None => (DType::F32, 0f32.to_le_bytes().to_vec()),
                _ => return cg.err("value must be a one-element tensor"),
            };
            let total = cg.product(&dims)?;
            let out = cg.alloc(dt, total)?;
            let v: S = match dt {
                DType::F32 => {
                    S::F(cg.cf32(f32::from_le_bytes(bytes[..4].try_into().unwrap_or([0; 4]))))
                }
                DType::I64 => {
                    S::I(cg.c64(i64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]))))
                }
                DType::I32 => {
                    S::I(cg.c64(i32::from_le_bytes(bytes[..4].try_into().unwrap_or([0; 4])) as i64))
                }
                DType::Bool | DType::U8 => S::I(cg.c64(bytes[0] as i64)),
                DType::I8 => S::I(cg.c64(bytes[0] as i8 as i64)),
                other => return cg.err(format!("ConstantOfShape of {other} is not supported yet")),
            };
            let v = if dt == DType::Bool {
                S::B(cg.icmp(
                    IntPredicate::NE,
                    match v {
                        S::I(x) => x,
                        _ => cg.c64(0),
                    },
                    cg.c64(0),
                )?)
            } else {
                v
            };
            cg.for_n(total, |cg, i| cg.store_s(dt, out, i, v))?;
            vec![Val { ptr: out, dims, dt }]
        }
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" => {
            let x = a(0)?;
            let keep = n.int("keepdims").unwrap_or(1) != 0;
            let ax: Vec<usize> = match axes(n, cst, 1) {
                Some(v) if !v.is_empty() => v
                    .iter()
                    .map(|&v| norm_axis(cg, v, x.rank()))
                    .collect::<R<_>>()?,
                _ if n.int("noop_with_empty_axes").unwrap_or(0) != 0 => return Ok(Some(vec![x])),
                Some(_) if n.inputs.get(1).copied().flatten().is_some() && cst(1).is_none() => {
                    return cg.err("reduction axes must be constants")
                }
                _ => (0..x.rank()).collect(),
            };
            let full: Vec<IntValue> = (0..x.rank())
                .map(|k| {
                    if ax.contains(&k) {
                        cg.c64(1)
                    } else {
                        x.dims[k]
                    }
                })
                .collect();
            let no = cg.product(&full)?;
            let ost = cg.strides(&full)?;
            let ostr: Vec<IntValue> = (0..x.rank())
                .map(|k| if ax.contains(&k) { cg.c64(0) } else { ost[k] })
                .collect();
            let count = cg.product(&ax.iter().map(|&k| x.dims[k]).collect::<Vec<_>>())?;
            let out = cg.alloc(x.dt, no)?;
            let is_f = x.dt == DType::F32;
            if !is_f && !matches!(x.dt, DType::I64 | DType::I32) {
                return cg.err(format!("{op} on {} is not supported", x.dt));
            }
            let init: S = match (op, is_f) {
                ("ReduceMax", true) => S::F(cg.cf32(f32::NEG_INFINITY)),
                ("ReduceMin", true) => S::F(cg.cf32(f32::INFINITY)),
                ("ReduceProd", true) => S::F(cg.cf32(1.0)),
                (_, true) => S::F(cg.cf32(0.0)),
                ("ReduceMax", false) => S::I(cg.c64(i64::MIN)),
                ("ReduceMin", false) => S::I(cg.c64(i64::MAX)),
                ("ReduceProd", false) => S::I(cg.c64(1)),
                _ => S::I(cg.c64(0)),
            };
            cg.for_n(no, |cg, i| cg.store_s(x.dt, out, i, init))?;
            let xst = cg.strides(&x.dims)?;
            let o = op.to_string();
            cg.for_nd(&x.dims.clone(), &mut |cg, idx| {
                let oi = cg.offset(idx, &ostr)?;
                let xi = cg.offset(idx, &xst)?;
                let acc = cg.load_s(x.dt, out, oi)?;
                let v = cg.load_s(x.dt, x.ptr, xi)?;
                let r = match (acc, v) {
                    (S::F(p), S::F(q)) => S::F(match o.as_str() {
                        "ReduceMax" => cg
                            .intrinsic("llvm.maximum", &[cg.f32t().into()], &[p.into(), q.into()])?
                            .into_float_value(),
                        "ReduceMin" => cg
                            .intrinsic("llvm.minimum", &[cg.f32t().into()], &[p.into(), q.into()])?
                            .into_float_value(),
                        "ReduceProd" => cg.fmul(p, q)?,
                        _ => cg.fadd(p, q)?,
                    }),
                    (S::I(p), S::I(q)) => S::I(match o.as_str() {
                        "ReduceMax" => cg.smax(p, q)?,
                        "ReduceMin" => cg.smin(p, q)?,
                        "ReduceProd" => cg.mul(p, q)?,
                        _ => cg.add(p, q)?,
                    }),
                    _ => return cg.err("reduction operand type"),
                };
                cg.store_s(x.dt, out, oi, r)
            })?;
            if op == "ReduceMean" {
                cg.for_n(no, |cg, i| {
                    let v = cg.load_s(x.dt, out, i)?;
                    let r = match v {
                        S::F(f) => {
                            let c = cg.b.build_signed_int_to_float(count, cg.f32t(), "")?;
                            S::F(cg.fdiv(f, c)?)
                        }
                        S::I(v) => S::I(cg.sdiv(v, cg.smax(count, cg.c64(1))?)?),
                        S::B(_) => return cg.err("bool mean"),
                    };
                    cg.store_s(x.dt, out, i, r)
                })?;
            }
            let dims = if keep {
                full
            } else {
                (0..x.rank())
                    .filter(|k| !ax.contains(k))
                    .map(|k| x.dims[k])
                    .collect()
            };
            vec![Val {
                ptr: out,
                dims,
                dt: x.dt,
            }]
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::scatter_affine;

    #[test]
    fn constant_scatter_indices_are_affine_or_not() {
        // x[..., 1::2] = u on [1, 2, 4]: tuples (0, a, 2b + 1).
        let idx: Vec<i64> = (0..2)
            .flat_map(|a| (0..2).flat_map(move |b| [0, a, 2 * b + 1]))
            .collect();
        assert_eq!(
            scatter_affine(&[1, 2, 4], &idx, &[1, 2, 2], 3),
            Ok(Some((1, vec![0, 4, 2])))
        );
        // Whole rows, one of them negative: rows 1 and 3 of [4, 3].
        assert_eq!(
            scatter_affine(&[4, 3], &[1, -1], &[2], 1),
            Ok(Some((3, vec![6])))
        );
        // Rows 2, 0, 3: no single stride.
        assert_eq!(scatter_affine(&[4, 3], &[2, 0, 3], &[3], 1), Ok(None));
        assert!(scatter_affine(&[4, 3], &[1, 4], &[2], 1)
            .unwrap_err()
            .contains("index 4 is out of range for axis 0 of size 4"));
    }
}
