//! Normalizations, softmax, rotary embeddings and attention (with the KV
//! cache of the decode graphs), with the interpreter's semantics: norms
//! accumulate in f64; attention computes in f32 as the interpreter does
//! (weights from the runtime's `exp_f32`, sums in key order); fully masked
//! attention rows give zeros.

use super::arg;
use super::core::{Cg, Val, R};
use inkwell::types::VectorType;
use inkwell::values::{BasicValueEnum, FloatValue, IntValue, PointerValue, VectorValue};
use inkwell::{FloatPredicate, IntPredicate};
use lpc_ir::{DType, Node};

fn need_f32(cg: &Cg, v: &Val, what: &str) -> R<()> {
    if v.dt != DType::F32 {
        return cg.err(format!("{what} must be f32 (got {})", v.dt));
    }
    Ok(())
}

/// Rows of the last axis: (rows, n).
fn rows_of<'c>(cg: &Cg<'c>, x: &Val<'c>, axis: i64) -> R<(IntValue<'c>, IntValue<'c>, usize)> {
    let r = x.rank() as i64;
    let k = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&k) {
        return cg.err(format!("axis {axis} is out of range"));
    }
    let k = k as usize;
    Ok((cg.product(&x.dims[..k])?, cg.product(&x.dims[k..])?, k))
}

/// A per-channel parameter of `n` elements, or a scalar broadcast.
fn param_index<'c>(cg: &mut Cg<'c>, p: &Val<'c>, n: IntValue<'c>) -> R<IntValue<'c>> {
    let len = cg.product(&p.dims)?;
    let full = cg.icmp(IntPredicate::EQ, len, n)?;
    let one = cg.icmp(IntPredicate::EQ, len, cg.c64(1))?;
    let ok = cg.b.build_or(full, one, "")?;
    cg.check(ok, "a scale or bias does not match the normalized size")?;
    // Stride 1 when full, 0 when a scalar.
    cg.select_i(full, cg.c64(1), cg.c64(0))
}

/// Rows per group of a normalization (see `Cg::norm`).
const NORM_ROWS: i64 = 16;

impl<'c> Cg<'c> {
    fn norm(
        &mut self,
        x: &Val<'c>,
        n_outs: usize,
        axis: i64,
        eps: f32,
        center: bool,
        scale: &Val<'c>,
        bias: Option<&Val<'c>>,
    ) -> R<Vec<Val<'c>>> {
        need_f32(self, x, "input")?;
        let (rows, n, k) = rows_of(self, x, axis)?;
        let ss = param_index(self, scale, n)?;
        let bs = match bias {
            Some(b) => Some(param_index(self, b, n)?),
            None => None,
        };
        let total = self.mul(rows, n)?;
        let y = self.alloc(DType::F32, total)?;
        let stats = if n_outs > 1 {
            Some((self.alloc(DType::F32, rows)?, self.alloc(DType::F32, rows)?))
        } else {
            None
        };
        // Rows in groups of NORM_ROWS: the group's means and 1/std first
        // (their reductions, square roots and divisions independent from
        // row to row, so that they overlap), then its rows.
        let f32t = self.f32t();
        let (gm, gi) = (
            self.entry_alloca(f32t.into(), NORM_ROWS as u32)?,
            self.entry_alloca(f32t.into(), NORM_ROWS as u32)?,
        );
        let f64t = self.f64t();
        let acc = self.slot(f64t.into(), self.cf64(0.0).into())?;
        let v8d = f64t.vec_type(8);
        let vacc = self.slot(v8d.into(), v8d.const_zero().into())?;
        let (xp, sp, bp) = (x.ptr, scale.ptr, bias.map(|b| b.ptr));
        let groups = self.sdiv(
            self.add(rows, self.c64(NORM_ROWS - 1))?,
            self.c64(NORM_ROWS),
        )?;
        self.for_n(groups, |cg, g| {
            let r0 = cg.mul(g, cg.c64(NORM_ROWS))?;
            let nr = cg.smin(cg.sub(rows, r0)?, cg.c64(NORM_ROWS))?;
            cg.for_n(nr, |cg, i| {
                let r = cg.add(r0, i)?;
                let base = cg.mul(r, n)?;
                let nf = cg.si_to_f64(n)?;
                let mean = if center {
                    let s = cg.sum_f64(xp, base, n, None, (acc, vacc))?;
                    cg.fdiv(s, nf)?
                } else {
                    cg.cf64(0.0)
                };
                let ss2 = cg.sum_f64(xp, base, n, Some(mean), (acc, vacc))?;
                let var = cg.fdiv(ss2, nf)?;
                let e = cg.fadd(var, cg.cf64(eps as f64))?;
                let sq = cg
                    .intrinsic("llvm.sqrt", &[f64t.into()], &[e.into()])?
                    .into_float_value();
                let is = cg.fdiv(cg.cf64(1.0), sq)?;
                let (mean, is) = (cg.ftrunc(mean)?, cg.ftrunc(is)?);
                cg.store(DType::F32, gm, i, mean.into())?;
                cg.store(DType::F32, gi, i, is.into())?;
                if let Some((mp, ip)) = stats {
                    cg.store(DType::F32, mp, r, mean.into())?;
                    cg.store(DType::F32, ip, r, is.into())?;
                }
                Ok(())
            })?;
            // The rows in f32 (as onnxruntime computes them), with the
            // mean and 1/std from f64 sums, rounded once.
            cg.for_n(nr, |cg, i| {
                let base = cg.mul(cg.add(r0, i)?, n)?;
                let mean = cg.load_f32(gm, i)?;
                let is = cg.load_f32(gi, i)?;
                cg.for_n(n, |cg, j| {
                    let i = cg.add(base, j)?;
                    let v = cg.fsub(cg.load_f32(xp, i)?, mean)?;
                    let s = cg.load_f32(sp, cg.mul(j, ss)?)?;
                    let mut o = cg.fmul(cg.fmul(v, is)?, s)?;
                    if let (Some(bp), Some(bs)) = (bp, bs) {
                        o = cg.fadd(o, cg.load_f32(bp, cg.mul(j, bs)?)?)?;
                    }
                    cg.store(DType::F32, y, i, o.into())
                })
            })
        })?;
        let mut out = vec![Val {
            ptr: y,
            dims: x.dims.clone(),
            dt: DType::F32,
        }];
        if let Some((mp, ip)) = stats {
            let sd: Vec<IntValue> = (0..x.rank())
                .map(|i| if i < k { x.dims[i] } else { self.c64(1) })
                .collect();
            if center {
                out.push(Val {
                    ptr: mp,
                    dims: sd.clone(),
                    dt: DType::F32,
                });
            } else {
                self.release(mp)?;
            }
            out.push(Val {
                ptr: ip,
                dims: sd,
                dt: DType::F32,
            });
        }
        Ok(out)
    }

    fn softmax(&mut self, x: &Val<'c>, axis: i64, opset: i64) -> R<Val<'c>> {
        need_f32(self, x, "input")?;
        let r = x.rank() as i64;
        let k = if axis < 0 { axis + r } else { axis };
        if !(0..r).contains(&k) {
            return self.err(format!("axis {axis} is out of range"));
        }
        let k = k as usize;
        let (outer, d, inner) = if opset >= 13 {
            (
                self.product(&x.dims[..k])?,
                x.dims[k],
                self.product(&x.dims[k + 1..])?,
            )
        } else {
            (
                self.product(&x.dims[..k])?,
                self.product(&x.dims[k..])?,
                self.c64(1),
            )
        };
        let total = self.product(&x.dims)?;
        let y = self.alloc(DType::F32, total)?;
        let f64t = self.f64t();
        let mx = self.slot(self.f32t().into(), self.cf32(0.0).into())?;
        let sum = self.slot(f64t.into(), self.cf64(0.0).into())?;
        let xp = x.ptr;
        self.for_nd(&[outer, inner], &mut |cg, oi| {
            let at = |cg: &Cg<'c>, j: IntValue<'c>| -> R<IntValue<'c>> {
                cg.add(cg.mul(cg.add(cg.mul(oi[0], d)?, j)?, inner)?, oi[1])
            };
            cg.b.build_store(mx, cg.cf32(f32::NEG_INFINITY))?;
            cg.for_n(d, |cg, j| {
                let v = cg.load_f32(xp, at(cg, j)?)?;
                let m = cg.b.build_load(cg.f32t(), mx, "")?.into_float_value();
                let m2 = cg
                    .intrinsic("llvm.maxnum", &[cg.f32t().into()], &[m.into(), v.into()])?
                    .into_float_value();
                cg.b.build_store(mx, m2)?;
                Ok(())
            })?;
            let m = cg.b.build_load(cg.f32t(), mx, "")?.into_float_value();
            cg.b.build_store(sum, cg.cf64(0.0))?;
            let ex = |cg: &Cg<'c>, j: IntValue<'c>| -> R<FloatValue<'c>> {
                let v = cg.fext(cg.fsub(cg.load_f32(xp, at(cg, j)?)?, m)?)?;
                Ok(cg
                    .intrinsic("llvm.exp", &[cg.f64t().into()], &[v.into()])?
                    .into_float_value())
            };
            cg.for_n(d, |cg, j| {
                let e = ex(cg, j)?;
                let s = cg.b.build_load(f64t, sum, "")?.into_float_value();
                cg.b.build_store(sum, cg.fadd(s, e)?)?;
                Ok(())
            })?;
            let s = cg.b.build_load(f64t, sum, "")?.into_float_value();
            cg.for_n(d, |cg, j| {
                let e = ex(cg, j)?;
                let o = cg.ftrunc(cg.fdiv(e, s)?)?;
                cg.store(DType::F32, y, at(cg, j)?, o.into())
            })
        })?;
        Ok(Val {
            ptr: y,
            dims: x.dims.clone(),
            dt: DType::F32,
        })
    }

    /// ONNX RotaryEmbedding: `[B, H, S, D]` or `[B, S, H·D]` (num_heads),
    /// caches `[max_pos, rot/2]` indexed by position ids, or `[B, S, rot/2]`.
    fn rope(&mut self, n: &Node, ins: &[Option<Val<'c>>]) -> R<Val<'c>> {
        let x = arg(self, ins, 0)?.clone();
        let (cos, sin) = (arg(self, ins, 1)?.clone(), arg(self, ins, 2)?.clone());
        let pos = ins.get(3).cloned().flatten();
        need_f32(self, &x, "input")?;
        let interleaved = n.int("interleaved").unwrap_or(0) != 0;
        // (b, h, s, d) and the strides of b, h, s.
        let (b, h, s, d, strides) = match x.rank() {
            4 => {
                let [b, h, s, d] = x.dims[..] else {
                    unreachable!()
                };
                let st = self.strides(&x.dims)?;
                (b, h, s, d, [st[0], st[1], st[2]])
            }
            3 => {
                let heads = n.int("num_heads").unwrap_or(0);
                if heads <= 0 {
                    return self.err("3-D input needs num_heads");
                }
                let h = self.c64(heads);
                let [b, s, hd] = x.dims[..] else {
                    unreachable!()
                };
                let d = self.sdiv(hd, h)?;
                let ok = self.icmp(IntPredicate::EQ, self.mul(d, h)?, hd)?;
                self.check(ok, "num_heads does not divide the hidden size")?;
                let ss = hd;
                let sb = self.mul(s, hd)?;
                (b, h, s, d, [sb, d, ss])
            }
            r => return self.err(format!("input must be 3-D or 4-D, got rank {r}")),
        };
        let rot = match n.int("rotary_embedding_dim").unwrap_or(0) {
            0 => d,
            r => self.c64(r),
        };
        let half = self.sdiv(rot, self.c64(2))?;
        let cw = *cos
            .dims
            .last()
            .ok_or_else(|| super::core::CgError::Graph("cos cache must not be a scalar".into()))?;
        let ok = self.and(
            self.icmp(IntPredicate::SLE, rot, d)?,
            self.icmp(IntPredicate::SGE, cw, half)?,
        )?;
        self.check(
            ok,
            "the rotary dimension does not fit the head size and caches",
        )?;
        let cache_rows = self.sdiv(self.product(&cos.dims)?, cw)?;
        // Without position ids: caches [B, S, rot/2], or [1, S, rot/2] shared
        // by every batch entry.
        let mut cache_batch = self.c64(0);
        if pos.is_none() {
            let full = self.icmp(IntPredicate::EQ, cache_rows, self.mul(b, s)?)?;
            let shared = self.icmp(IntPredicate::EQ, cache_rows, s)?;
            let ok = self.b.build_or(full, shared, "")?;
            self.check(
                ok,
                "without position_ids, caches must be [B or 1, S, rot/2]",
            )?;
            cache_batch = self.select_i(full, self.c64(1), self.c64(0))?;
        }
        let total = self.product(&x.dims)?;
        let y = self.alloc(DType::F32, total)?;
        let bytes = self.mul(total, self.c64(4))?;
        self.b.build_memcpy(y, 4, x.ptr, 4, bytes)?;
        let (cp, sp) = (cos.ptr, sin.ptr);
        self.for_nd(&[b, s], &mut |cg, bs| {
            let row = match &pos {
                Some(p) => {
                    let i = cg.add(cg.mul(bs[0], s)?, bs[1])?;
                    let r = cg.load_s(p.dt, p.ptr, i)?;
                    let super::elementwise::S::I(r) = r else {
                        return cg.err("position_ids must be integers");
                    };
                    let ok = cg.and(
                        cg.icmp(IntPredicate::SGE, r, cg.c64(0))?,
                        cg.icmp(IntPredicate::SLT, r, cache_rows)?,
                    )?;
                    cg.check(ok, "a position id is outside the caches")?;
                    r
                }
                None => cg.add(cg.mul(cg.mul(bs[0], cache_batch)?, s)?, bs[1])?,
            };
            let cbase = cg.mul(row, cw)?;
            cg.for_nd(&[h, half], &mut |cg, hi| {
                let base = cg.add(
                    cg.add(cg.mul(bs[0], strides[0])?, cg.mul(hi[0], strides[1])?)?,
                    cg.mul(bs[1], strides[2])?,
                )?;
                let i = hi[1];
                let (ia, ib) = if interleaved {
                    let a = cg.mul(i, cg.c64(2))?;
                    (a, cg.add(a, cg.c64(1))?)
                } else {
                    (i, cg.add(i, half)?)
                };
                let (pa, pb) = (cg.add(base, ia)?, cg.add(base, ib)?);
                let (x1, x2) = (cg.load_f32(y, pa)?, cg.load_f32(y, pb)?);
                let c = cg.load_f32(cp, cg.add(cbase, i)?)?;
                let sn = cg.load_f32(sp, cg.add(cbase, i)?)?;
                let a = cg.fsub(cg.fmul(c, x1)?, cg.fmul(sn, x2)?)?;
                let bb = cg.fadd(cg.fmul(sn, x1)?, cg.fmul(c, x2)?)?;
                cg.store(DType::F32, y, pa, a.into())?;
                cg.store(DType::F32, y, pb, bb.into())
            })
        })?;
        Ok(Val {
            ptr: y,
            dims: x.dims.clone(),
            dt: DType::F32,
        })
    }
}

impl<'c> Cg<'c> {
    /// The `<16 x f32>` at element `i` of `p` (4-byte aligned).
    fn load_vec_f32x16_at(&self, p: PointerValue<'c>, i: IntValue<'c>) -> R<VectorValue<'c>> {
        let f32x16 = self.f32t().vec_type(16);
        self.load_vec(p, self.mul(i, self.c64(4))?, f32x16, 4)
    }
    /// Stores `v` (`<16 x f32>`) at element `i` of `p`.
    fn store_vec_f32x16_at(
        &self,
        p: PointerValue<'c>,
        i: IntValue<'c>,
        v: VectorValue<'c>,
    ) -> R<()> {
        self.store_vec_aligned(p, self.mul(i, self.c64(4))?, v, 4)
    }
    /// `*acc = a · b + *acc` on `<16 x f32>` (fused).
    fn fma_into(&self, acc: PointerValue<'c>, a: VectorValue<'c>, b: VectorValue<'c>) -> R<()> {
        let t = self.f32t().vec_type(16);
        let s = self.b.build_load(t, acc, "")?.into_vector_value();
        self.b.build_store(acc, self.fma_vec(a, b, s)?)?;
        Ok(())
    }
    /// `Σ a[ao + t] · b[bo + t]` over `n` f32 elements: 16 lanes at a time
    /// (f32 products summed lane-wise), then the rest; returned as f64.
    fn dot_f32(
        &mut self,
        a: PointerValue<'c>,
        ao: IntValue<'c>,
        b: PointerValue<'c>,
        bo: IntValue<'c>,
        n: IntValue<'c>,
    ) -> R<FloatValue<'c>> {
        let v16 = self.f32t().vec_type(16);
        let vacc = self.slot(v16.into(), v16.const_zero().into())?;
        let sacc = self.slot(self.f32t().into(), self.cf32(0.0).into())?;
        self.b.build_store(vacc, v16.const_zero())?;
        self.b.build_store(sacc, self.cf32(0.0))?;
        let chunks = self.sdiv(n, self.c64(16))?;
        let load16 = |cg: &Cg<'c>,
                      p: PointerValue<'c>,
                      o: IntValue<'c>|
         -> R<inkwell::values::VectorValue<'c>> {
            let q = cg.gep(DType::F32, p, o)?;
            let v = cg.b.build_load(v16, q, "")?.into_vector_value();
            if let Some(i) = v.as_instruction() {
                let _ = i.set_alignment(4);
            }
            Ok(v)
        };
        self.for_n(chunks, |cg, c| {
            let o = cg.mul(c, cg.c64(16))?;
            let x = load16(cg, a, cg.add(ao, o)?)?;
            let y = load16(cg, b, cg.add(bo, o)?)?;
            let s = cg.b.build_load(v16, vacc, "")?;
            let f = cg.intrinsic("llvm.fma", &[v16.into()], &[x.into(), y.into(), s.into()])?;
            cg.b.build_store(vacc, f)?;
            Ok(())
        })?;
        self.for_range(self.mul(chunks, self.c64(16))?, n, |cg, t| {
            let x = cg.load_f32(a, cg.add(ao, t)?)?;
            let y = cg.load_f32(b, cg.add(bo, t)?)?;
            let s = cg.b.build_load(cg.f32t(), sacc, "")?.into_float_value();
            cg.b.build_store(sacc, cg.fadd(s, cg.fmul(x, y)?)?)?;
            Ok(())
        })?;
        let v = self.b.build_load(v16, vacc, "")?;
        let s = self.b.build_load(self.f32t(), sacc, "")?;
        // A tree over the lanes: an in-order reduction is a chain of 16
        // dependent adds per dot product.
        let r = self
            .intrinsic(
                "llvm.vector.reduce.fadd",
                &[v16.into()],
                &[s.into(), v.into()],
            )?
            .into_float_value();
        if let Some(i) = r.as_instruction() {
            let _ = i.set_fast_math_flags(inkwell::values::FastMathFlags::AllowReassoc);
        }
        self.fext(r)
    }

    /// `v` (f64) in all eight lanes of a vector.
    fn splat8_f64(&self, v: FloatValue<'c>) -> R<VectorValue<'c>> {
        let v8d = self.f64t().vec_type(8);
        let ins = self
            .b
            .build_insert_element(v8d.get_undef(), v, self.i32t().const_zero(), "")?;
        let z = inkwell::types::VectorType::const_vector(&[self.i32t().const_zero(); 8]);
        Ok(self.b.build_shuffle_vector(ins, v8d.get_undef(), z, "")?)
    }

    /// `Σ x[xo + t]` over `n` f32 elements in f64, or `Σ (x[xo + t] - m)²`
    /// with `centre = Some(m)`: eight f64 lanes at a time (in the scratch
    /// slots `(scalar, vector)`), the rest one by one, the lanes summed last.
    fn sum_f64(
        &mut self,
        x: PointerValue<'c>,
        xo: IntValue<'c>,
        n: IntValue<'c>,
        centre: Option<FloatValue<'c>>,
        (sacc, vacc): (PointerValue<'c>, PointerValue<'c>),
    ) -> R<FloatValue<'c>> {
        let f64t = self.f64t();
        let (v8f, v8d) = (self.f32t().vec_type(8), f64t.vec_type(8));
        self.b.build_store(vacc, v8d.const_zero())?;
        self.b.build_store(sacc, self.cf64(0.0))?;
        let cv = match centre {
            Some(m) => Some(self.splat8_f64(m)?),
            None => None,
        };
        let chunks = self.sdiv(n, self.c64(8))?;
        self.for_n(chunks, |cg, c| {
            let q = cg.gep(DType::F32, x, cg.add(xo, cg.mul(c, cg.c64(8))?)?)?;
            let xv = cg.b.build_load(v8f, q, "")?.into_vector_value();
            if let Some(i) = xv.as_instruction() {
                let _ = i.set_alignment(4);
            }
            let mut xd = cg.b.build_float_ext(xv, v8d, "")?;
            let a = cg.b.build_load(v8d, vacc, "")?.into_vector_value();
            let r = match cv {
                Some(m) => {
                    xd = cg.b.build_float_sub(xd, m, "")?;
                    cg.b.build_float_add(a, cg.b.build_float_mul(xd, xd, "")?, "")?
                }
                None => cg.b.build_float_add(a, xd, "")?,
            };
            cg.b.build_store(vacc, r)?;
            Ok(())
        })?;
        self.for_range(self.mul(chunks, self.c64(8))?, n, |cg, t| {
            let mut v = cg.fext(cg.load_f32(x, cg.add(xo, t)?)?)?;
            if let Some(m) = centre {
                v = cg.fsub(v, m)?;
                v = cg.fmul(v, v)?;
            }
            let a = cg.b.build_load(f64t, sacc, "")?.into_float_value();
            cg.b.build_store(sacc, cg.fadd(a, v)?)?;
            Ok(())
        })?;
        let v = self.b.build_load(v8d, vacc, "")?;
        let s = self.b.build_load(f64t, sacc, "")?;
        Ok(self
            .intrinsic(
                "llvm.vector.reduce.fadd",
                &[v8d.into()],
                &[s.into(), v.into()],
            )?
            .into_float_value())
    }
}

/// Sixteen `<16 x f32>` vectors to one whose lane `k` is the sum of the
/// lanes of vector `k`: pairs of vectors are halved and added (lane runs of
/// 8, 4, 2, 1 per key), 15 adds and 30 shuffles for the 16 sums.
fn reduce16<'c>(cg: &Cg<'c>, mut vs: Vec<VectorValue<'c>>) -> R<VectorValue<'c>> {
    let mut g = 16u64;
    while vs.len() > 1 {
        let (h, nk) = (g / 2, 16 / g);
        let (mut ma, mut mb) = (Vec::new(), Vec::new());
        for src in 0..2u64 {
            for key in 0..nk {
                for i in 0..h {
                    ma.push(cg.i32t().const_int(src * 16 + key * g + i, false));
                    mb.push(cg.i32t().const_int(src * 16 + key * g + h + i, false));
                }
            }
        }
        let (ma, mb) = (VectorType::const_vector(&ma), VectorType::const_vector(&mb));
        vs = vs
            .chunks(2)
            .map(|p| {
                let a = cg.b.build_shuffle_vector(p[0], p[1], ma, "")?;
                let b = cg.b.build_shuffle_vector(p[0], p[1], mb, "")?;
                Ok(cg.b.build_float_add(a, b, "")?)
            })
            .collect::<R<_>>()?;
        g = h;
    }
    Ok(vs[0])
}

/// Value widths (head dimensions) whose attention sums stay in registers.
const REG_WIDTHS: [usize; 3] = [32, 64, 128];
/// Vector accumulators of attention's weighted values: the widest of
/// [`REG_WIDTHS`] in 16-lane vectors, and as many chains as keep the FMA
/// units busy.
const VACC_REGS: usize = 8;

/// A per-batch index function generated inline (`past length of batch b`).
type PerBatch<'a, 'c> = Box<dyn Fn(&Cg<'c>, IntValue<'c>) -> R<IntValue<'c>> + 'a>;

/// A q/k/v operand's layout: element (b, h, i, d) is at
/// `b·sb + h·sh + i·si + d`.
#[derive(Clone, Copy)]
struct Layout<'c> {
    b: IntValue<'c>,
    h: IntValue<'c>,
    s: IntValue<'c>,
    d: IntValue<'c>,
    sb: IntValue<'c>,
    sh: IntValue<'c>,
    si: IntValue<'c>,
}

fn layout<'c>(cg: &mut Cg<'c>, v: &Val<'c>, heads: i64) -> R<Layout<'c>> {
    match v.rank() {
        4 => {
            let st = cg.strides(&v.dims)?;
            Ok(Layout {
                b: v.dims[0],
                h: v.dims[1],
                s: v.dims[2],
                d: v.dims[3],
                sb: st[0],
                sh: st[1],
                si: st[2],
            })
        }
        3 => {
            if heads <= 0 {
                return cg.err("3-D attention inputs need q_num_heads and kv_num_heads");
            }
            let h = cg.c64(heads);
            let hd = v.dims[2];
            let d = cg.sdiv(hd, h)?;
            let ok = cg.icmp(IntPredicate::EQ, cg.mul(d, h)?, hd)?;
            cg.check(ok, "the head count does not divide the hidden size")?;
            Ok(Layout {
                b: v.dims[0],
                h,
                s: v.dims[1],
                d,
                sb: cg.mul(v.dims[1], hd)?,
                sh: d,
                si: hd,
            })
        }
        r => cg.err(format!("attention inputs must be 3-D or 4-D, got rank {r}")),
    }
}

fn contiguous<'c>(
    cg: &mut Cg<'c>,
    b: IntValue<'c>,
    h: IntValue<'c>,
    s: IntValue<'c>,
    d: IntValue<'c>,
) -> R<Layout<'c>> {
    let si = d;
    let sh = cg.mul(s, d)?;
    let sb = cg.mul(h, sh)?;
    Ok(Layout {
        b,
        h,
        s,
        d,
        sb,
        sh,
        si,
    })
}

impl<'c> Cg<'c> {
    /// Copies `src` (any layout) into a contiguous BHSD tensor `dst` with
    /// sequence capacity `cap`, at sequence offset `at(b)`.
    fn put_seq(
        &mut self,
        src: PointerValue<'c>,
        l: Layout<'c>,
        count: &dyn Fn(&Cg<'c>, IntValue<'c>) -> R<IntValue<'c>>,
        dst: PointerValue<'c>,
        dl: Layout<'c>,
        at: &dyn Fn(&Cg<'c>, IntValue<'c>) -> R<IntValue<'c>>,
    ) -> R<()> {
        self.for_nd(&[l.b, l.h], &mut |cg, bh| {
            let n = count(cg, bh[0])?;
            let off = at(cg, bh[0])?;
            cg.for_n(n, |cg, i| {
                let sbase = cg.add(
                    cg.add(cg.mul(bh[0], l.sb)?, cg.mul(bh[1], l.sh)?)?,
                    cg.mul(i, l.si)?,
                )?;
                let di = cg.add(off, i)?;
                let dbase = cg.add(
                    cg.add(cg.mul(bh[0], dl.sb)?, cg.mul(bh[1], dl.sh)?)?,
                    cg.mul(di, dl.si)?,
                )?;
                let bytes = cg.mul(l.d, cg.c64(4))?;
                let sp = cg.gep(DType::F32, src, sbase)?;
                let dp = cg.gep(DType::F32, dst, dbase)?;
                cg.b.build_memcpy(dp, 4, sp, 4, bytes)?;
                Ok(())
            })
        })
    }

    fn attention(&mut self, n: &Node, ins: &[Option<Val<'c>>]) -> R<Vec<Val<'c>>> {
        let (q, k, v) = (
            arg(self, ins, 0)?.clone(),
            arg(self, ins, 1)?.clone(),
            arg(self, ins, 2)?.clone(),
        );
        for (t, w) in [(&q, "Q"), (&k, "K"), (&v, "V")] {
            need_f32(self, t, w)?;
        }
        let mask = ins.get(3).cloned().flatten();
        let (past_k, past_v) = (ins.get(4).cloned().flatten(), ins.get(5).cloned().flatten());
        let seqlens = ins.get(6).cloned().flatten();
        let hq_attr = n.int("q_num_heads").unwrap_or(0);
        let hkv_attr = n.int("kv_num_heads").unwrap_or(0);
        let ql = layout(self, &q, hq_attr)?;
        let kl = layout(self, &k, hkv_attr)?;
        let vl = layout(self, &v, hkv_attr)?;
        let three_d = q.rank() == 3;
        let (b, hq, l, d) = (ql.b, ql.h, ql.s, ql.d);
        let (hkv, sn, dv) = (kl.h, kl.s, vl.d);
        let ok = self.and(
            self.icmp(IntPredicate::SGT, hkv, self.c64(0))?,
            self.icmp(
                IntPredicate::EQ,
                self.srem(hq, self.smax(hkv, self.c64(1))?)?,
                self.c64(0),
            )?,
        )?;
        self.check(ok, "query heads do not group over the kv heads")?;
        let grp = self.sdiv(hq, self.smax(hkv, self.c64(1))?)?;
        // Keys and values as contiguous BHSD with the cache prepended:
        // (k, v, total length, per-batch past length).
        let cache = match (&past_k, &past_v, &seqlens) {
            (Some(pk), Some(pv), _) => Some((pk.clone(), pv.clone())),
            (None, None, _) => None,
            _ => return self.err("past key and value come together"),
        };
        if seqlens.is_some() && mask.is_some() {
            return self.err("a mask cannot be combined with seqlens_k");
        }
        let (kk, vv, total, past_len, kkl, vvl, owned_kv): (
            PointerValue,
            PointerValue,
            IntValue,
            PerBatch<'_, 'c>,
            Layout,
            Layout,
            bool,
        ) = match cache {
            None if seqlens.is_none() => {
                let z = self.c64(0);
                (k.ptr, v.ptr, sn, Box::new(move |_, _| Ok(z)), kl, vl, false)
            }
            cache => {
                let p = match &cache {
                    Some((pk, _)) => {
                        if pk.rank() != 4 {
                            return self.err("past key must be 4-D");
                        }
                        pk.dims[2]
                    }
                    None => self.c64(0),
                };
                let t = self.add(p, sn)?;
                let kkl = contiguous(self, b, hkv, t, d)?;
                let vvl = contiguous(self, b, hkv, t, dv)?;
                let nk = self.product(&[b, hkv, t, d])?;
                let nv = self.product(&[b, hkv, t, dv])?;
                let kk = self.alloc(DType::F32, nk)?;
                let vv = self.alloc(DType::F32, nv)?;
                let past: PerBatch<'_, 'c> = match &seqlens {
                    Some(sl) => {
                        // Zero the padding, check every entry first.
                        let zb = self.mul(nk, self.c64(4))?;
                        self.b.build_memset(kk, 4, self.i8t().const_zero(), zb)?;
                        let zb = self.mul(nv, self.c64(4))?;
                        self.b.build_memset(vv, 4, self.i8t().const_zero(), zb)?;
                        let nsl = self.product(&sl.dims)?;
                        let ok = self.icmp(IntPredicate::EQ, nsl, b)?;
                        self.check(ok, "seqlens_k must have one entry per batch")?;
                        let (sp, sdt) = (sl.ptr, sl.dt);
                        let f = move |cg: &Cg<'c>, bi: IntValue<'c>| -> R<IntValue<'c>> {
                            let super::elementwise::S::I(x) = cg.load_s(sdt, sp, bi)? else {
                                return cg.err("seqlens_k must be integers");
                            };
                            cg.sub(cg.add(x, cg.c64(1))?, sn)
                        };
                        self.for_n(b, |cg, bi| {
                            let pb = f(cg, bi)?;
                            let ok = cg.and(
                                cg.icmp(IntPredicate::SGE, pb, cg.c64(0))?,
                                cg.icmp(IntPredicate::SLE, pb, p)?,
                            )?;
                            cg.check(
                                ok,
                                "seqlens_k is inconsistent with the new tokens and the cache",
                            )
                        })?;
                        Box::new(f)
                    }
                    None => Box::new(move |_, _| Ok(p)),
                };
                if let Some((pk, pv)) = &cache {
                    let pkl = layout(self, pk, 0)?;
                    let pvl = layout(self, pv, 0)?;
                    let z = self.c64(0);
                    self.put_seq(pk.ptr, pkl, &*past, kk, kkl, &move |_, _| Ok(z))?;
                    self.put_seq(pv.ptr, pvl, &*past, vv, vvl, &move |_, _| Ok(z))?;
                }
                let cnt = move |_: &Cg<'c>, _| Ok(sn);
                self.put_seq(k.ptr, kl, &cnt, kk, kkl, &*past)?;
                self.put_seq(v.ptr, vl, &cnt, vv, vvl, &*past)?;
                (kk, vv, t, past, kkl, vvl, true)
            }
        };
        let scale = match n.float("scale") {
            Some(s) if s != 0.0 => self.cf64(s as f64),
            _ => {
                let df = self.si_to_f64(d)?;
                let sq = self
                    .intrinsic("llvm.sqrt", &[self.f64t().into()], &[df.into()])?
                    .into_float_value();
                self.fdiv(self.cf64(1.0), sq)?
            }
        };
        let softcap = n.float("softcap").unwrap_or(0.0);
        let causal = n.int("is_causal").unwrap_or(0) != 0;
        // The mask: per-axis strides over [B, Hq, L, width] (0 where
        // broadcast), columns past its width are masked.
        let mask_info = match &mask {
            Some(m) => {
                if m.rank() == 0 || m.rank() > 4 {
                    return self.err("mask must have rank 1 to 4");
                }
                let mut md = vec![self.c64(1); 4 - m.rank()];
                md.extend(&m.dims);
                let own = self.strides(&md)?;
                let targets = [b, hq, l];
                let mut st = Vec::new();
                for a in 0..3 {
                    let is1 = self.icmp(IntPredicate::EQ, md[a], self.c64(1))?;
                    let same = self.icmp(IntPredicate::EQ, md[a], targets[a])?;
                    let ok = self.b.build_or(is1, same, "")?;
                    self.check(ok, "the mask does not broadcast over the scores")?;
                    st.push(self.select_i(is1, self.c64(0), own[a])?);
                }
                let w = md[3];
                let ok = self.icmp(IntPredicate::SLE, w, total)?;
                self.check(ok, "the mask is wider than the keys")?;
                Some((m.ptr, m.dt, st, w))
            }
            None => None,
        };
        // Per-batch past lengths into a buffer (the body cannot call back).
        let pastbuf = self.alloc(DType::I64, b)?;
        self.for_n(b, |cg, bi| {
            let p = past_len(cg, bi)?;
            cg.store(DType::I64, pastbuf, bi, p.into())
        })?;
        let gqa = seqlens.is_some();
        // Output in q's layout.
        let ny = self.product(&[b, hq, l, dv])?;
        let y = self.alloc(DType::F32, ny)?;
        let yl = if three_d {
            let hd = self.mul(hq, dv)?;
            Layout {
                b,
                h: hq,
                s: l,
                d: dv,
                sb: self.mul(l, hd)?,
                sh: dv,
                si: hd,
            }
        } else {
            contiguous(self, b, hq, l, dv)?
        };
        let rows = self.product(&[b, hq, l])?;
        let mut caps: Vec<BasicValueEnum> = vec![
            q.ptr.into(),
            kk.into(),
            vv.into(),
            y.into(),
            pastbuf.into(),
            hq.into(),
            l.into(),
            d.into(),
            dv.into(),
            total.into(),
            grp.into(),
            sn.into(),
            ql.sb.into(),
            ql.sh.into(),
            ql.si.into(),
            kkl.sb.into(),
            kkl.sh.into(),
            kkl.si.into(),
            vvl.sb.into(),
            vvl.sh.into(),
            vvl.si.into(),
            yl.sb.into(),
            yl.sh.into(),
            yl.si.into(),
            scale.into(),
        ];
        if let Some((mp, _, st, w)) = &mask_info {
            caps.extend::<[BasicValueEnum; 5]>([
                (*mp).into(),
                st[0].into(),
                st[1].into(),
                st[2].into(),
                (*w).into(),
            ]);
        }
        let mask_dt = mask_info.as_ref().map(|m| m.1);
        // Per query row: its keys (at most `total`) times the head widths,
        // 16 lanes at a time, scores and weighted values, plus the row's own
        // work (masks, maxima, sums, the output: about 400 cycles, measured
        // on the small Qwen3 fixtures' 12-key rows).
        let cost = self.add(
            self.sdiv(self.mul(total, self.add(d, dv)?)?, self.c64(8))?,
            self.c64(400),
        )?;
        self.parallel_for(rows, cost, &caps, |cg, c, lo, hi| {
            let p = |k: usize| c[k].into_pointer_value();
            let i = |k: usize| c[k].into_int_value();
            let (qp, kp, vp, yp, pp) = (p(0), p(1), p(2), p(3), p(4));
            let (hq, l, d, dv, total, grp, sn) = (i(5), i(6), i(7), i(8), i(9), i(10), i(11));
            let (qsb, qsh, qsi) = (i(12), i(13), i(14));
            let (ksb, ksh, ksi) = (i(15), i(16), i(17));
            let (vsb, vsh, vsi) = (i(18), i(19), i(20));
            let (ysb, ysh, ysi) = (i(21), i(22), i(23));
            let scale = c[24].into_float_value();
            let (f32t, f64t) = (cg.f32t(), cg.f64t());
            let scale32 = cg.ftrunc(scale)?;
            let acc = cg.b.build_array_alloca(f32t, dv, "acc")?;
            let sum = cg.b.build_alloca(f32t, "sum")?;
            let f32x16 = f32t.vec_type(16);
            let vmx = cg.b.build_alloca(f32x16, "vmx")?;
            let vsum = cg.b.build_alloca(f32x16, "vsum")?;
            let smx = cg.b.build_alloca(f32t, "smx")?;
            let kacc: Vec<PointerValue> = (0..16)
                .map(|_| cg.b.build_alloca(f32x16, "kacc"))
                .collect::<Result<_, _>>()?;
            let vacc: Vec<PointerValue> = (0..VACC_REGS)
                .map(|_| cg.b.build_alloca(f32x16, "vacc"))
                .collect::<Result<_, _>>()?;
            // Each row's scores, then its weights (a stack buffer of the key
            // count).
            let scores = cg.b.build_array_alloca(f32t, total, "scores")?;
            let biases = cg.b.build_array_alloca(f32t, total, "biases")?;
            let kend_slot = cg.b.build_alloca(cg.i64t(), "kend")?;
            cg.for_range(lo, hi, |cg, r| {
                // r = (bi·hq + h)·l + qi
                let qi = cg.srem(r, l)?;
                let bh = cg.sdiv(r, l)?;
                let h = cg.srem(bh, hq)?;
                let bi = cg.sdiv(bh, hq)?;
                let kh = cg.sdiv(h, grp)?;
                let past = cg.load_i64(pp, bi)?;
                let qbase = cg.add(cg.add(cg.mul(bi, qsb)?, cg.mul(h, qsh)?)?, cg.mul(qi, qsi)?)?;
                let kbase = cg.add(cg.mul(bi, ksb)?, cg.mul(kh, ksh)?)?;
                let vbase = cg.add(cg.mul(bi, vsb)?, cg.mul(kh, vsh)?)?;
                // The additive bias of key j: -inf when masked, else the float
                // mask's value (0 without one).
                let bias_of = |cg: &mut Cg<'c>, j: IntValue<'c>| -> R<FloatValue<'c>> {
                    let ninf = cg.cf32(f32::NEG_INFINITY);
                    let mut add = cg.cf32(0.0);
                    let qpos = cg.add(past, qi)?;
                    // Masking rules.
                    let mut masked = cg.cx.bool_type().const_zero();
                    if causal || gqa {
                        let after = cg.icmp(IntPredicate::SGT, j, qpos)?;
                        masked = cg.b.build_or(masked, after, "")?;
                    }
                    if gqa {
                        let beyond = cg.icmp(IntPredicate::SGE, j, cg.add(past, sn)?)?;
                        masked = cg.b.build_or(masked, beyond, "")?;
                    }
                    if let Some(mdt) = mask_dt {
                        // Only keys inside the mask's width come here (the
                        // others are masked): contiguous loads.
                        let (mp, s0, s1, s2) = (p(25), i(26), i(27), i(28));
                        let mi = cg.add(
                            cg.add(cg.add(cg.mul(bi, s0)?, cg.mul(h, s1)?)?, cg.mul(qi, s2)?)?,
                            j,
                        )?;
                        match mdt {
                            DType::Bool => {
                                let mv = cg.load_u8(mp, mi)?;
                                let off = cg.icmp(IntPredicate::EQ, mv, cg.i8t().const_zero())?;
                                masked = cg.b.build_or(masked, off, "")?;
                            }
                            DType::F32 => {
                                add = cg.load_f32(mp, mi)?;
                                let floor = cg.cf32(lpc_ir::interp::MASKED_AT_OR_BELOW);
                                let ni = cg.fcmp(FloatPredicate::OLE, add, floor)?;
                                masked = cg.b.build_or(masked, ni, "")?;
                            }
                            other => return cg.err(format!("mask of type {other}")),
                        }
                    }
                    cg.select_f(masked, ninf, add)
                };
                // Biases first: keys from `kend` on (one past the last
                // unmasked key; causal masks leave half of a prefill's keys
                // out) weigh exactly 0, so nothing is computed for them.
                // Keys past the mask's width are masked; the loop over the
                // others is simple enough to vectorize.
                let wlim = match mask_dt {
                    Some(_) => cg.smin(i(29), total)?,
                    None => total,
                };
                cg.b.build_store(kend_slot, cg.c64(0))?;
                cg.for_n(wlim, |cg, j| {
                    let bv = bias_of(cg, j)?;
                    cg.store(DType::F32, biases, j, bv.into())?;
                    let live = cg.fcmp(FloatPredicate::ONE, bv, cg.cf32(f32::NEG_INFINITY))?;
                    let ke = cg.b.build_load(cg.i64t(), kend_slot, "")?.into_int_value();
                    let ke = cg.select_i(live, cg.add(j, cg.c64(1))?, ke)?;
                    cg.b.build_store(kend_slot, ke)?;
                    Ok(())
                })?;
                cg.for_range(wlim, total, |cg, j| {
                    let ninf = cg.cf32(f32::NEG_INFINITY);
                    cg.store(DType::F32, biases, j, ninf.into())
                })?;
                let kend = cg.b.build_load(cg.i64t(), kend_slot, "")?.into_int_value();
                let score = |cg: &mut Cg<'c>, j: IntValue<'c>| -> R<FloatValue<'c>> {
                    let dot = cg.load(DType::F32, scores, j)?.into_float_value();
                    let mut s = cg.fmul(dot, scale32)?;
                    if softcap > 0.0 {
                        let sc = cg.cf64(softcap as f64);
                        let t = cg.intrinsic(
                            "llvm.tanh",
                            &[f64t.into()],
                            &[cg.fdiv(cg.fext(s)?, sc)?.into()],
                        );
                        let t = match t {
                            Ok(t) => t.into_float_value(),
                            Err(_) => return cg.err("tanh is not available"),
                        };
                        s = cg.ftrunc(cg.fmul(sc, t)?)?;
                    }
                    let bv = cg.load(DType::F32, biases, j)?.into_float_value();
                    cg.fadd(s, bv)
                };
                // The dot products q · k_j: sixteen keys at a time when the
                // head width is a multiple of 16 (16 accumulators, then one
                // transposing reduction to a vector of their sums), the
                // remaining keys one at a time. Without a soft cap a whole
                // block's scores (dot · scale + bias) and their running
                // maximum come straight from the reduction (the same
                // operations as the passes below, which then take only the
                // keys after the blocks): two passes over the row fewer.
                let fuse = softcap <= 0.0;
                let d16 = cg.icmp(IntPredicate::EQ, cg.srem(d, cg.c64(16))?, cg.c64(0))?;
                let blocks = cg.select_i(d16, cg.sdiv(kend, cg.c64(16))?, cg.c64(0))?;
                let ninf16 = cg.splat_f32(cg.cf32(f32::NEG_INFINITY), 16)?;
                let sc16 = cg.splat_f32(scale32, 16)?;
                cg.b.build_store(vmx, ninf16)?;
                // vmx = maxnum(vmx, v), lane by lane.
                let max_into = |cg: &Cg<'c>, v: BasicValueEnum<'c>| -> R<()> {
                    let m = cg.b.build_load(f32x16, vmx, "")?;
                    let m = cg.intrinsic("llvm.maxnum", &[f32x16.into()], &[m.into(), v.into()])?;
                    cg.b.build_store(vmx, m)?;
                    Ok(())
                };
                cg.for_n(blocks, |cg, blk| {
                    let j0 = cg.mul(blk, cg.c64(16))?;
                    for a in &kacc {
                        cg.b.build_store(*a, f32x16.const_zero())?;
                    }
                    let kb0 = cg.add(kbase, cg.mul(j0, ksi)?)?;
                    cg.for_n(cg.sdiv(d, cg.c64(16))?, |cg, u| {
                        let o = cg.mul(u, cg.c64(16))?;
                        let qv = cg.load_vec_f32x16_at(qp, cg.add(qbase, o)?)?;
                        for (kk, a) in kacc.iter().enumerate() {
                            let kb = cg.add(cg.add(kb0, cg.mul(cg.c64(kk as i64), ksi)?)?, o)?;
                            let kv = cg.load_vec_f32x16_at(kp, kb)?;
                            cg.fma_into(*a, qv, kv)?;
                        }
                        Ok(())
                    })?;
                    let vs: Vec<VectorValue> = kacc
                        .iter()
                        .map(|a| Ok(cg.b.build_load(f32x16, *a, "")?.into_vector_value()))
                        .collect::<R<_>>()?;
                    let sums = reduce16(cg, vs)?;
                    if !fuse {
                        return cg.store_vec_f32x16_at(scores, j0, sums);
                    }
                    let bv = cg.load_vec_f32x16_at(biases, j0)?;
                    let s = cg.b.build_float_mul(sums, sc16, "")?;
                    let s = cg.b.build_float_add(s, bv, "")?;
                    cg.store_vec_f32x16_at(scores, j0, s)?;
                    max_into(cg, s.into())
                })?;
                // The keys after the blocks one at a time. Without a soft cap
                // each one's score (dot · scale + bias, the same operations
                // as a chunk's) and a scalar running maximum come here too:
                // a vector pass reloading these scalar stores right away
                // waited for them (no store-to-load forwarding).
                cg.b.build_store(smx, cg.cf32(f32::NEG_INFINITY))?;
                cg.for_range(cg.mul(blocks, cg.c64(16))?, kend, |cg, j| {
                    let kb = cg.add(kbase, cg.mul(j, ksi)?)?;
                    let dot = cg.dot_f32(qp, qbase, kp, kb, d)?;
                    let dot = cg.ftrunc(dot)?;
                    if !fuse {
                        return cg.store(DType::F32, scores, j, dot.into());
                    }
                    let bv = cg.load(DType::F32, biases, j)?.into_float_value();
                    let s = cg.fadd(cg.fmul(dot, scale32)?, bv)?;
                    cg.store(DType::F32, scores, j, s.into())?;
                    let m = cg.b.build_load(f32t, smx, "")?;
                    let m = cg.intrinsic("llvm.maxnum", &[f32t.into()], &[m.into(), s.into()])?;
                    cg.b.build_store(smx, m)?;
                    Ok(())
                })?;
                // Sixteen keys at a time (the last chunk masked: `inside`,
                // its other lanes filled with `fill`).
                let chunks = cg.sdiv(cg.add(kend, cg.c64(15))?, cg.c64(16))?;
                let kend32 = cg.b.build_int_truncate(kend, cg.i32t(), "")?;
                let iota: Vec<_> = (0..16).map(|l| cg.i32t().const_int(l, false)).collect();
                let iota = VectorType::const_vector(&iota);
                let inside = |cg: &Cg<'c>, c: IntValue<'c>| -> R<VectorValue<'c>> {
                    let c32 =
                        cg.b.build_int_truncate(cg.mul(c, cg.c64(16))?, cg.i32t(), "")?;
                    let lanes = cg.b.build_int_add(cg.splat_i32(c32, 16)?, iota, "")?;
                    Ok(cg.b.build_int_compare(
                        IntPredicate::SLT,
                        lanes,
                        cg.splat_i32(kend32, 16)?,
                        "",
                    )?)
                };
                let load16 = |cg: &Cg<'c>,
                              p: PointerValue<'c>,
                              c: IntValue<'c>,
                              fill: f32|
                 -> R<VectorValue<'c>> {
                    let fill = cg.splat_f32(cg.cf32(fill), 16)?;
                    cg.masked_load_f32x16(p, cg.mul(c, cg.c64(64))?, inside(cg, c)?, fill)
                };
                let chunk = |cg: &Cg<'c>, c: IntValue<'c>, fill: f32| load16(cg, scores, c, fill);
                let store16 = |cg: &Cg<'c>, c: IntValue<'c>, v: VectorValue<'c>| -> R<()> {
                    cg.store_f32x16(scores, cg.mul(c, cg.c64(64))?, v, Some(inside(cg, c)?))
                };
                // Scores: dot · scale + bias (with a soft cap, key by key).
                if softcap > 0.0 {
                    cg.for_n(kend, |cg, j| {
                        let s = score(cg, j)?;
                        cg.store(DType::F32, scores, j, s.into())
                    })?;
                }
                // The largest score (any order gives the same), where the
                // soft cap took the scores key by key.
                if !fuse {
                    cg.for_n(chunks, |cg, c| {
                        max_into(cg, chunk(cg, c, f32::NEG_INFINITY)?.into())
                    })?;
                }
                // Lanes folded in halves with vector maxima (as the sum
                // below): `llvm.vector.reduce.fmax` became a chain of
                // scalar NaN checks. A NaN score makes the row NaN either way.
                let mut m = cg.b.build_load(f32x16, vmx, "")?.into_vector_value();
                for w in [8u64, 4, 2, 1] {
                    let hi: Vec<_> = (0..16)
                        .map(|l| cg.i32t().const_int((l + w) % 16, false))
                        .collect();
                    let b =
                        cg.b.build_shuffle_vector(m, m, VectorType::const_vector(&hi), "")?;
                    m = cg
                        .intrinsic("llvm.maxnum", &[f32x16.into()], &[m.into(), b.into()])?
                        .into_vector_value();
                }
                let m =
                    cg.b.build_extract_element(m, cg.i32t().const_zero(), "")?
                        .into_float_value();
                // With the keys scored one at a time.
                let sm = cg.b.build_load(f32t, smx, "")?;
                let m = cg
                    .intrinsic("llvm.maxnum", &[f32t.into()], &[m.into(), sm.into()])?
                    .into_float_value();
                let any = cg.fcmp(FloatPredicate::ONE, m, cg.cf32(f32::NEG_INFINITY))?;
                let m_safe = cg.select_f(any, m, cg.cf32(0.0))?;
                // Weights: exp(s - max) (the runtime's exp_f32, a loop
                // that vectorizes); masked keys (-inf) weigh exactly 0
                // without going through exp.
                // Their sum in the same loop: key j into lane j % 16 (lanes
                // past the keys are 0), lanes summed in key order, then
                // halves added (lane i + lane i + 8, ..., + 1).
                let m16 = cg.splat_f32(m_safe, 16)?;
                let zero16 = f32x16.const_zero();
                cg.b.build_store(vsum, zero16)?;
                cg.for_n(chunks, |cg, c| {
                    let s = chunk(cg, c, f32::NEG_INFINITY)?;
                    let masked =
                        cg.b.build_float_compare(FloatPredicate::OEQ, s, ninf16, "")?;
                    let x = cg.b.build_float_sub(s, m16, "")?;
                    let x =
                        cg.b.build_select(masked, zero16, x, "")?
                            .into_vector_value();
                    let e = cg.exp_fast_x16(x)?;
                    let e =
                        cg.b.build_select(masked, zero16, e, "")?
                            .into_vector_value();
                    let a = cg.b.build_load(f32x16, vsum, "")?.into_vector_value();
                    cg.b.build_store(vsum, cg.b.build_float_add(a, e, "")?)?;
                    store16(cg, c, e)
                })?;
                let mut t = cg.b.build_load(f32x16, vsum, "")?.into_vector_value();
                for w in [8u64, 4, 2, 1] {
                    let lo: Vec<_> = (0..w).map(|l| cg.i32t().const_int(l, false)).collect();
                    let hi: Vec<_> = (0..w).map(|l| cg.i32t().const_int(l + w, false)).collect();
                    let a =
                        cg.b.build_shuffle_vector(t, t, VectorType::const_vector(&lo), "")?;
                    let b =
                        cg.b.build_shuffle_vector(t, t, VectorType::const_vector(&hi), "")?;
                    t = cg.b.build_float_add(a, b, "")?;
                }
                let su =
                    cg.b.build_extract_element(t, cg.i32t().const_zero(), "")?
                        .into_float_value();
                cg.b.build_store(sum, su)?;
                // acc = Σ_j p_j · v_j, one fused multiply-add per element
                // and key: in registers for the common value widths
                // (REG_WIDTHS), else in memory, in key order. In registers,
                // narrow rows keep `sets` partial sums (key j in set
                // j % sets, added up in set order at the end) so that at
                // least 8 multiply-add chains are in flight: a 32-wide row
                // alone has 2, and waited on the FMA latency per key.
                let reg_path = |cg: &mut Cg<'c>, nv: usize| -> R<()> {
                    let sets = (VACC_REGS / nv).clamp(1, VACC_REGS);
                    for a in &vacc[..sets * nv] {
                        cg.b.build_store(*a, f32x16.const_zero())?;
                    }
                    let key = |cg: &mut Cg<'c>, j: IntValue<'c>, set: usize| -> R<()> {
                        let e = cg.load(DType::F32, scores, j)?.into_float_value();
                        let ev = cg.splat_f32(e, 16)?;
                        let vb = cg.add(vbase, cg.mul(j, vsi)?)?;
                        for (u, a) in vacc[set * nv..(set + 1) * nv].iter().enumerate() {
                            let o = cg.add(vb, cg.c64(16 * u as i64))?;
                            let x = cg.load_vec_f32x16_at(vp, o)?;
                            cg.fma_into(*a, ev, x)?;
                        }
                        Ok(())
                    };
                    let full = cg.sdiv(kend, cg.c64(sets as i64))?;
                    cg.for_n(full, |cg, g| {
                        let j0 = cg.mul(g, cg.c64(sets as i64))?;
                        for set in 0..sets {
                            key(cg, cg.add(j0, cg.c64(set as i64))?, set)?;
                        }
                        Ok(())
                    })?;
                    let done = cg.mul(full, cg.c64(sets as i64))?;
                    cg.for_range(done, kend, |cg, j| key(cg, j, 0))?;
                    for u in 0..nv {
                        let mut v = cg.b.build_load(f32x16, vacc[u], "")?.into_vector_value();
                        for set in 1..sets {
                            let w = cg.b.build_load(f32x16, vacc[set * nv + u], "")?;
                            v = cg.b.build_float_add(v, w.into_vector_value(), "")?;
                        }
                        cg.store_vec_f32x16_at(acc, cg.c64(16 * u as i64), v)?;
                    }
                    Ok(())
                };
                let mut other = cg.cx.bool_type().const_int(1, false);
                for w in REG_WIDTHS {
                    let is = cg.icmp(IntPredicate::EQ, dv, cg.c64(w as i64))?;
                    other = cg.and(other, cg.b.build_not(is, "")?)?;
                    cg.if_then(is, |cg| reg_path(cg, w / 16))?;
                }
                cg.if_then(other, |cg| {
                    cg.for_n(dv, |cg, t| {
                        cg.store(DType::F32, acc, t, cg.cf32(0.0).into())
                    })?;
                    cg.for_n(kend, |cg, j| {
                        let e = cg.load(DType::F32, scores, j)?.into_float_value();
                        let vb = cg.add(vbase, cg.mul(j, vsi)?)?;
                        cg.for_n(dv, |cg, t| {
                            let x = cg.load_f32(vp, cg.add(vb, t)?)?;
                            let a = cg.load(DType::F32, acc, t)?.into_float_value();
                            let f = cg.intrinsic(
                                "llvm.fma",
                                &[f32t.into()],
                                &[e.into(), x.into(), a.into()],
                            )?;
                            cg.store(DType::F32, acc, t, f)
                        })
                    })
                })?;
                let su = cg.b.build_load(f32t, sum, "")?.into_float_value();
                let ybase = cg.add(cg.add(cg.mul(bi, ysb)?, cg.mul(h, ysh)?)?, cg.mul(qi, ysi)?)?;
                cg.for_n(dv, |cg, t| {
                    let a = cg.load(DType::F32, acc, t)?.into_float_value();
                    let o = cg.fdiv(a, su)?;
                    let o = cg.select_f(any, o, cg.cf32(0.0))?;
                    cg.store(DType::F32, yp, cg.add(ybase, t)?, o.into())
                })
            })
        })?;
        self.release(pastbuf)?;
        let ydims = if three_d {
            vec![b, l, self.mul(hq, dv)?]
        } else {
            vec![b, hq, l, dv]
        };
        let mut out = vec![Val {
            ptr: y,
            dims: ydims,
            dt: DType::F32,
        }];
        if owned_kv {
            out.push(Val {
                ptr: kk,
                dims: vec![b, hkv, total, d],
                dt: DType::F32,
            });
            out.push(Val {
                ptr: vv,
                dims: vec![b, hkv, total, dv],
                dt: DType::F32,
            });
        } else {
            out.push(k.clone());
            out.push(v.clone());
        }
        Ok(out)
    }
}

pub fn emit<'c>(
    cg: &mut Cg<'c>,
    n: &Node,
    ins: &[Option<Val<'c>>],
    opset: i64,
) -> R<Option<Vec<Val<'c>>>> {
    let op = n.op.as_str();
    let eps = n.float("epsilon").unwrap_or(1e-5);
    let axis = n.int("axis").unwrap_or(-1);
    let out = match op {
        "lpc.rms_norm" | "RMSNormalization" | "SimplifiedLayerNormalization" => {
            let (x, s) = (arg(cg, ins, 0)?.clone(), arg(cg, ins, 1)?.clone());
            cg.norm(&x, n.outputs.len(), axis, eps, false, &s, None)?
        }
        "lpc.layer_norm" | "LayerNormalization" => {
            let (x, s) = (arg(cg, ins, 0)?.clone(), arg(cg, ins, 1)?.clone());
            let b = ins.get(2).cloned().flatten();
            cg.norm(&x, n.outputs.len(), axis, eps, true, &s, b.as_ref())?
        }
        "com.microsoft.SkipSimplifiedLayerNormalization" => {
            // (rms_norm(x + skip + bias) · gamma, mean (zeros), 1/std, x + skip + bias)
            use super::elementwise::S;
            let add = |cg: &Cg<'c>, s: &[S<'c>]| match (s[0], s[1]) {
                (S::F(a), S::F(b)) => Ok(S::F(cg.fadd(a, b)?)),
                _ => cg.err("operands must be float"),
            };
            let (x, skip, gamma) = (
                arg(cg, ins, 0)?.clone(),
                arg(cg, ins, 1)?.clone(),
                arg(cg, ins, 2)?.clone(),
            );
            let mut sum = cg.map(&[&x, &skip], DType::F32, &add)?;
            if let Some(b) = ins.get(3).cloned().flatten() {
                let s2 = cg.map(&[&sum, &b], DType::F32, &add)?;
                cg.release(sum.ptr)?;
                sum = s2;
            }
            let normed = cg.norm(&sum, 2, -1, eps, false, &gamma, None)?;
            let (rows, _, _) = rows_of(cg, &sum, -1)?;
            let mean = cg.alloc(DType::F32, rows)?;
            cg.for_n(rows, |cg, i| {
                cg.store(DType::F32, mean, i, cg.cf32(0.0).into())
            })?;
            let stat = normed[1].dims.clone();
            let mut out = vec![
                normed[0].clone(),
                Val {
                    ptr: mean,
                    dims: stat,
                    dt: DType::F32,
                },
                normed[1].clone(),
                sum,
            ];
            // Results nobody asked for are not kept.
            for v in out.drain(n.outputs.len().min(4)..) {
                cg.release(v.ptr)?;
            }
            out
        }
        "Softmax" => {
            let x = arg(cg, ins, 0)?.clone();
            let ax = n.int("axis").unwrap_or(if opset >= 13 { -1 } else { 1 });
            vec![cg.softmax(&x, ax, opset)?]
        }
        "lpc.rope" | "RotaryEmbedding" => vec![cg.rope(n, ins)?],
        "lpc.attention" | "Attention" => {
            if n.outputs.len() > 3 {
                return cg.err("the qk_matmul_output output is not supported by code generation");
            }
            if n.int("qk_matmul_output_mode").unwrap_or(0) != 0 {
                return cg.err("qk_matmul_output_mode is not supported by code generation");
            }
            cg.attention(n, &ins[..ins.len().min(6)])?
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}
