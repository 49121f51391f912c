//! Elementwise ops with numpy broadcasting: arithmetic, comparisons, logic,
//! `Where`, unary math, `Cast`, and lpc's fused activations. Scalars are
//! computed as f32 (floats), i64 (integers of any width) or i1 (bool), with
//! the interpreter's semantics (integer division truncates, by zero gives 0).

use super::arg;
use super::core::{Cg, Val, R};
use inkwell::types::VectorType;
use inkwell::values::{FloatValue, IntValue, VectorValue};
use inkwell::{FloatPredicate, IntPredicate};
use lpc_ir::{DType, Node};

/// A scalar in its compute domain.
#[derive(Clone, Copy, Debug)]
pub enum S<'c> {
    F(FloatValue<'c>),
    I(IntValue<'c>),
    B(IntValue<'c>),
}

fn is_int(dt: DType) -> bool {
    matches!(dt, DType::I64 | DType::I32 | DType::I8 | DType::U8)
}

impl<'c> Cg<'c> {
    pub fn load_s(
        &self,
        dt: DType,
        p: inkwell::values::PointerValue<'c>,
        i: IntValue<'c>,
    ) -> R<S<'c>> {
        let v = self.load(dt, p, i)?;
        Ok(match dt {
            DType::F32 => S::F(v.into_float_value()),
            // Half types compute in f32 (exact widening).
            DType::F16 | DType::Bf16 => S::F(self.b.build_float_ext(
                v.into_float_value(),
                self.f32t(),
                "",
            )?),
            DType::I64 => S::I(v.into_int_value()),
            DType::I32 | DType::I8 => S::I(self.b.build_int_s_extend(
                v.into_int_value(),
                self.i64t(),
                "",
            )?),
            DType::U8 => S::I(
                self.b
                    .build_int_z_extend(v.into_int_value(), self.i64t(), "")?,
            ),
            DType::Bool => S::B(self.icmp(
                IntPredicate::NE,
                v.into_int_value(),
                self.i8t().const_zero(),
            )?),
            other => {
                return self.err(format!(
                    "element type {other} is not supported in elementwise code yet"
                ))
            }
        })
    }

    /// Converts a scalar to element type `dt` (ONNX Cast semantics).
    pub fn convert(&self, s: S<'c>, dt: DType) -> R<S<'c>> {
        Ok(match (s, dt) {
            (S::F(_), DType::F32 | DType::F16 | DType::Bf16) | (S::B(_), DType::Bool) => s,
            (S::I(i), DType::F16 | DType::Bf16) => {
                S::F(self.b.build_signed_int_to_float(i, self.f32t(), "")?)
            }
            (S::B(b), DType::F16 | DType::Bf16) => {
                S::F(self.b.build_unsigned_int_to_float(b, self.f32t(), "")?)
            }
            (S::I(_), d) if is_int(d) => s,
            (S::F(f), d) if is_int(d) => {
                S::I(self.b.build_float_to_signed_int(f, self.i64t(), "")?)
            }
            (S::F(f), DType::Bool) => S::B(self.fcmp(FloatPredicate::UNE, f, self.cf32(0.0))?),
            (S::I(i), DType::F32) => S::F(self.b.build_signed_int_to_float(i, self.f32t(), "")?),
            (S::I(i), DType::Bool) => S::B(self.icmp(IntPredicate::NE, i, self.c64(0))?),
            (S::B(b), DType::F32) => {
                S::F(self.b.build_unsigned_int_to_float(b, self.f32t(), "")?)
            }
            (S::B(b), d) if is_int(d) => S::I(self.b.build_int_z_extend(b, self.i64t(), "")?),
            (_, d) => return self.err(format!("cannot convert to {d} in generated code yet")),
        })
    }

    /// f32 to bf16 bits, rounding to nearest even (NaN stays a quiet NaN),
    /// with integer ops: LLVM lowers `fptrunc` to bf16 to a libgcc call
    /// that the libraries do not link.
    fn f32_to_bf16(&self, f: inkwell::values::FloatValue<'c>) -> R<IntValue<'c>> {
        let i32t = self.i32t();
        let bits = self.b.build_bit_cast(f, i32t, "")?.into_int_value();
        let v = self.b.build_insert_element(
            i32t.vec_type(1).get_undef(),
            bits,
            i32t.const_zero(),
            "",
        )?;
        let r = self.bf16_round_bits(v, 1)?;
        let r = self
            .b
            .build_extract_element(r, i32t.const_zero(), "")?
            .into_int_value();
        Ok(self.b.build_int_truncate(r, self.cx.i16_type(), "")?)
    }

    /// `n` f32 bit patterns (`<n x i32>`) rounded to bf16, to nearest even
    /// (+ 0x7fff + the kept lowest bit, then the top half; a NaN keeps its
    /// top half with the quiet bit set): `half::bf16::from_f32`'s bits, in
    /// the low halves.
    pub(crate) fn bf16_round_bits(&self, u: VectorValue<'c>, n: u32) -> R<VectorValue<'c>> {
        let c = |x: u64| {
            let v = self.i32t().const_int(x, false);
            VectorType::const_vector(&vec![v; n as usize])
        };
        let sh = c(16);
        let top = self.b.build_right_shift(u, sh, false, "")?;
        let lsb = self.b.build_and(top, c(1), "")?;
        let r = self
            .b
            .build_int_add(u, self.b.build_int_add(lsb, c(0x7FFF), "")?, "")?;
        let r = self.b.build_right_shift(r, sh, false, "")?;
        let mag = self.b.build_and(u, c(0x7FFF_FFFF), "")?;
        let nan = self
            .b
            .build_int_compare(IntPredicate::UGT, mag, c(0x7F80_0000), "")?;
        let q = self.b.build_or(top, c(0x40), "")?;
        Ok(self.b.build_select(nan, q, r, "")?.into_vector_value())
    }

    pub fn store_s(
        &self,
        dt: DType,
        p: inkwell::values::PointerValue<'c>,
        i: IntValue<'c>,
        s: S<'c>,
    ) -> R<()> {
        let v = match (self.convert(s, dt)?, dt) {
            // Round to nearest even, as ONNX Cast.
            (S::F(f), DType::F16) => self.b.build_float_trunc(f, self.cx.f16_type(), "")?.into(),
            (S::F(f), DType::Bf16) => self.f32_to_bf16(f)?.into(),
            (S::F(f), _) => f.into(),
            (S::I(x), DType::I64) => x.into(),
            (S::I(x), DType::I32) => self.b.build_int_truncate(x, self.i32t(), "")?.into(),
            (S::I(x), _) => self.b.build_int_truncate(x, self.i8t(), "")?.into(),
            (S::B(b), _) => self.b.build_int_z_extend(b, self.i8t(), "")?.into(),
        };
        self.store(dt, p, i, v)
    }

    /// Broadcasts operands: the output dimensions and, per operand, the
    /// strides along the output's axes (0 where the operand is broadcast).
    pub fn broadcast(
        &mut self,
        ins: &[&Val<'c>],
    ) -> R<(Vec<IntValue<'c>>, Vec<Vec<IntValue<'c>>>)> {
        let rank = ins.iter().map(|v| v.rank()).max().unwrap_or(0);
        let one = self.c64(1);
        let mut out = vec![one; rank];
        for k in 0..rank {
            for v in ins {
                let off = rank - v.rank();
                if k >= off {
                    out[k] = self.smax(out[k], v.dims[k - off])?;
                }
            }
        }
        let mut strides = Vec::with_capacity(ins.len());
        for v in ins {
            let off = rank - v.rank();
            let own = self.strides(&v.dims)?;
            let mut s = vec![self.c64(0); rank];
            for k in off..rank {
                let d = v.dims[k - off];
                let is1 = self.icmp(IntPredicate::EQ, d, one)?;
                let same = self.icmp(IntPredicate::EQ, d, out[k])?;
                let ok = self.b.build_or(is1, same, "")?;
                self.check(ok, "operand shapes do not broadcast")?;
                s[k] = self.select_i(is1, self.c64(0), own[k - off])?;
            }
            strides.push(s);
        }
        Ok((out, strides))
    }

    /// The offset of an index vector under strides.
    pub fn offset(&self, idx: &[IntValue<'c>], strides: &[IntValue<'c>]) -> R<IntValue<'c>> {
        let mut o = self.c64(0);
        for (&i, &s) in idx.iter().zip(strides) {
            let t = self.mul(i, s)?;
            o = self.add(o, t)?;
        }
        Ok(o)
    }

    /// `out[i] = f(ins[i]...)` over the broadcast of the operands.
    pub fn map(
        &mut self,
        ins: &[&Val<'c>],
        out_dt: DType,
        f: &dyn Fn(&Cg<'c>, &[S<'c>]) -> R<S<'c>>,
    ) -> R<Val<'c>> {
        let (dims, strides) = self.broadcast(ins)?;
        let n = self.product(&dims)?;
        let out = self.alloc(out_dt, n)?;
        let ostr = self.strides(&dims)?;
        let ins: Vec<Val<'c>> = ins.iter().map(|v| (*v).clone()).collect();
        self.for_nd_with(&dims, true, &mut |cg, idx| {
            let mut xs = Vec::with_capacity(ins.len());
            for (v, s) in ins.iter().zip(&strides) {
                let o = cg.offset(idx, s)?;
                xs.push(cg.load_s(v.dt, v.ptr, o)?);
            }
            let y = f(cg, &xs)?;
            let o = cg.offset(idx, &ostr)?;
            cg.store_s(out_dt, out, o, y)
        })?;
        Ok(Val {
            ptr: out,
            dims,
            dt: out_dt,
        })
    }

    pub fn silu(&self, x: FloatValue<'c>) -> R<FloatValue<'c>> {
        let s = self.sigmoid(x)?;
        self.fmul(x, s)
    }
    pub fn sigmoid(&self, x: FloatValue<'c>) -> R<FloatValue<'c>> {
        let nx = self.b.build_float_neg(x, "")?;
        let e = self.exp_fast(nx)?;
        let d = self.fadd(self.cf32(1.0), e)?;
        self.fdiv(self.cf32(1.0), d)
    }
    fn f32_intrinsic(&self, name: &str, args: &[FloatValue<'c>]) -> R<FloatValue<'c>> {
        let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
        Ok(self
            .intrinsic(name, &[self.f32t().into()], &args)?
            .into_float_value())
    }
    /// `lpc_runtime::math::exp_f32`: the same operations in the same
    /// order (no call, no table: loops over it vectorize).
    pub fn exp_fast(&self, x: FloatValue<'c>) -> R<FloatValue<'c>> {
        use lpc_runtime::math::{EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO};
        let fma = |a, b, c| self.f32_intrinsic("llvm.fma", &[a, b, c]);
        let lo = self.f32_intrinsic("llvm.maxnum", &[x, self.cf32(EXP_MIN)])?;
        let c = self.f32_intrinsic("llvm.minnum", &[lo, self.cf32(EXP_MAX)])?;
        let t = self.fmul(c, self.cf32(std::f32::consts::LOG2_E))?;
        let n = self.f32_intrinsic("llvm.roundeven", &[t])?;
        let r = fma(n, self.cf32(-LN2_HI), c)?;
        let r = fma(n, self.cf32(-LN2_LO), r)?;
        let mut p = self.cf32(EXP_POLY[0]);
        for &k in &EXP_POLY[1..] {
            p = fma(p, r, self.cf32(k))?;
        }
        let i32t = self.i32t();
        let ni = self.b.build_float_to_signed_int(n, i32t, "")?;
        let n1 = self
            .b
            .build_right_shift(ni, i32t.const_int(1, false), true, "")?;
        let n2 = self.b.build_int_sub(ni, n1, "")?;
        let pow2 = |e: IntValue<'c>| -> R<FloatValue<'c>> {
            let biased = self.b.build_int_add(e, i32t.const_int(127, false), "")?;
            let bits = self
                .b
                .build_left_shift(biased, i32t.const_int(23, false), "")?;
            Ok(self
                .b
                .build_bit_cast(bits, self.f32t(), "")?
                .into_float_value())
        };
        let y = self.fmul(self.fmul(p, pow2(n1)?)?, pow2(n2)?)?;
        let nan = self.fcmp(FloatPredicate::UNO, x, x)?;
        self.select_f(nan, x, y)
    }
    /// [`Self::exp_fast`] on 16 lanes at once: the same operations, lane
    /// by lane.
    pub fn exp_fast_x16(&self, x: VectorValue<'c>) -> R<VectorValue<'c>> {
        use lpc_runtime::math::{EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO};
        let vt = self.f32t().vec_type(16);
        let it = self.i32t().vec_type(16);
        let k = |c: f32| self.splat_f32(self.cf32(c), 16);
        let ki = |c: u64| VectorType::const_vector(&[self.i32t().const_int(c, false); 16]);
        let call = |name: &str, args: &[VectorValue<'c>]| -> R<VectorValue<'c>> {
            let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
            Ok(self
                .intrinsic(name, &[vt.into()], &args)?
                .into_vector_value())
        };
        let lo = call("llvm.maxnum", &[x, k(EXP_MIN)?])?;
        let c = call("llvm.minnum", &[lo, k(EXP_MAX)?])?;
        let t = self
            .b
            .build_float_mul(c, k(std::f32::consts::LOG2_E)?, "")?;
        let n = call("llvm.roundeven", &[t])?;
        let r = call("llvm.fma", &[n, k(-LN2_HI)?, c])?;
        let r = call("llvm.fma", &[n, k(-LN2_LO)?, r])?;
        let mut p = k(EXP_POLY[0])?;
        for &e in &EXP_POLY[1..] {
            p = call("llvm.fma", &[p, r, k(e)?])?;
        }
        let ni = self.b.build_float_to_signed_int(n, it, "")?;
        let n1 = self.b.build_right_shift(ni, ki(1), true, "")?;
        let n2 = self.b.build_int_sub(ni, n1, "")?;
        let pow2 = |e: VectorValue<'c>| -> R<VectorValue<'c>> {
            let biased = self.b.build_int_add(e, ki(127), "")?;
            let bits = self.b.build_left_shift(biased, ki(23), "")?;
            Ok(self.b.build_bit_cast(bits, vt, "")?.into_vector_value())
        };
        let y = self
            .b
            .build_float_mul(self.b.build_float_mul(p, pow2(n1)?, "")?, pow2(n2)?, "")?;
        let nan = self.b.build_float_compare(FloatPredicate::UNO, x, x, "")?;
        Ok(self.b.build_select(nan, x, y, "")?.into_vector_value())
    }
    /// `lpc_runtime::math::tanh_f32`, operation for operation.
    pub fn tanh_fast(&self, x: FloatValue<'c>) -> R<FloatValue<'c>> {
        use lpc_runtime::math::{TANH_POLY, TANH_SMALL};
        let a = self.f32_intrinsic("llvm.fabs", &[x])?;
        let a2 = self.fmul(a, a)?;
        let mut q = self.cf32(TANH_POLY[0]);
        for &k in &TANH_POLY[1..] {
            q = self.f32_intrinsic("llvm.fma", &[q, a2, self.cf32(k)])?;
        }
        let small = self.f32_intrinsic("llvm.fma", &[self.fmul(q, a2)?, a, a])?;
        let t = self.exp_fast(self.fmul(self.cf32(-2.0), a)?)?;
        let one = self.cf32(1.0);
        let big = self.fdiv(self.fsub(one, t)?, self.fadd(one, t)?)?;
        let is_small = self.fcmp(FloatPredicate::OLT, a, self.cf32(TANH_SMALL))?;
        let y = self.select_f(is_small, small, big)?;
        self.f32_intrinsic("llvm.copysign", &[y, x])
    }
    /// `lpc_runtime::math::reduce_pio2`, operation for operation: the f32
    /// remainder and the f64 quadrant.
    fn reduce_pio2(&self, x: FloatValue<'c>) -> R<(FloatValue<'c>, FloatValue<'c>)> {
        use lpc_runtime::math::{FRAC_2_PI, PIO2, TRIG_R_MAX};
        let f64t = self.f64t();
        let f64_intr = |name: &str, args: &[FloatValue<'c>]| -> R<FloatValue<'c>> {
            let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
            Ok(self
                .intrinsic(name, &[f64t.into()], &args)?
                .into_float_value())
        };
        let mod4 = |q: FloatValue<'c>| -> R<FloatValue<'c>> {
            let f = f64_intr("llvm.floor", &[self.fmul(q, self.cf64(0.25))?])?;
            self.fsub(q, self.fmul(self.cf64(4.0), f)?)
        };
        let mut r = self.fext(x)?;
        let mut q = self.cf64(0.0);
        for _ in 0..2 {
            let k = f64_intr("llvm.roundeven", &[self.fmul(r, self.cf64(FRAC_2_PI))?])?;
            let nk = self.b.build_float_neg(k, "")?;
            for p in PIO2 {
                r = f64_intr("llvm.fma", &[nk, self.cf64(p), r])?;
            }
            q = self.fadd(q, mod4(k)?)?;
        }
        // f64::clamp: NaN passes.
        let (lo, hi) = (self.cf64(-TRIG_R_MAX), self.cf64(TRIG_R_MAX));
        let r = self.select_f(self.fcmp(FloatPredicate::OLT, r, lo)?, lo, r)?;
        let r = self.select_f(self.fcmp(FloatPredicate::OGT, r, hi)?, hi, r)?;
        Ok((self.ftrunc(r)?, mod4(q)?))
    }
    /// `lpc_runtime::math::sin_f32` (`cos` false) or `cos_f32`, operation
    /// for operation.
    pub fn sincos_fast(&self, x: FloatValue<'c>, cos: bool) -> R<FloatValue<'c>> {
        use lpc_runtime::math::{COS_POLY, SIN_POLY};
        let fma = |a, b, c| self.f32_intrinsic("llvm.fma", &[a, b, c]);
        let (r, q) = self.reduce_pio2(x)?;
        let r2 = self.fmul(r, r)?;
        let mut p = self.cf32(SIN_POLY[0]);
        for &c in &SIN_POLY[1..] {
            p = fma(p, r2, self.cf32(c))?;
        }
        let s = fma(self.fmul(p, r2)?, r, r)?;
        let mut p = self.cf32(COS_POLY[0]);
        for &c in &COS_POLY[1..] {
            p = fma(p, r2, self.cf32(c))?;
        }
        let p = fma(p, r2, self.cf32(-0.5))?;
        let c = fma(p, r2, self.cf32(1.0))?;
        let is = |v: f64| self.fcmp(FloatPredicate::OEQ, q, self.cf64(v));
        let odd = self.b.build_or(is(1.0)?, is(3.0)?, "")?;
        let neg = |v: FloatValue<'c>| -> R<FloatValue<'c>> { Ok(self.b.build_float_neg(v, "")?) };
        if cos {
            let v = self.select_f(odd, s, c)?;
            let flip = self.b.build_or(is(1.0)?, is(2.0)?, "")?;
            self.select_f(flip, neg(v)?, v)
        } else {
            let v = self.select_f(odd, c, s)?;
            let flip = self.fcmp(FloatPredicate::OGE, q, self.cf64(2.0))?;
            let v = self.select_f(flip, neg(v)?, v)?;
            let zero = self.fcmp(FloatPredicate::OEQ, x, self.cf32(0.0))?;
            self.select_f(zero, x, v)
        }
    }
    /// GELU, erf form (`tanh = false`) or tanh form, computed in f32.
    pub fn gelu(&self, x: FloatValue<'c>, tanh: bool) -> R<FloatValue<'c>> {
        let inner = if tanh {
            let x3 = self.fmul(self.fmul(x, x)?, x)?;
            let t = self.fadd(x, self.fmul(self.cf32(0.044715), x3)?)?;
            let u = self.fmul(self.cf32((2.0 / std::f32::consts::PI).sqrt()), t)?;
            self.tanh_fast(u)?
        } else {
            let u = self.fmul(x, self.cf32(std::f32::consts::FRAC_1_SQRT_2))?;
            self.math_f32("erf", u)?
        };
        let h = self.fmul(self.cf32(0.5), x)?;
        self.fmul(h, self.fadd(self.cf32(1.0), inner)?)
    }

    /// A unary float op by ONNX name.
    pub fn unary_f(&self, op: &str, x: FloatValue<'c>, n: &Node) -> R<FloatValue<'c>> {
        Ok(match op {
            "Neg" => self.b.build_float_neg(x, "")?,
            "Abs" => self.math_f32("fabs", x)?,
            "Exp" => self.exp_fast(x)?,
            "Tanh" => self.tanh_fast(x)?,
            "Sin" => self.sincos_fast(x, false)?,
            "Cos" => self.sincos_fast(x, true)?,
            "Sqrt" | "Log" | "Floor" | "Ceil" | "Erf" => {
                self.math_f32(&op.to_ascii_lowercase(), x)?
            }
            "Sigmoid" => self.sigmoid(x)?,
            "Relu" => {
                let c = self.fcmp(FloatPredicate::OGT, x, self.cf32(0.0))?;
                self.select_f(c, x, self.cf32(0.0))?
            }
            "Reciprocal" => self.fdiv(self.cf32(1.0), x)?,
            "Softplus" => {
                let e = self.math_f32("exp", x)?;
                self.math_f32("log", self.fadd(self.cf32(1.0), e)?)?
            }
            "Gelu" | "lpc.gelu" => self.gelu(x, n.string("approximate") == Some("tanh"))?,
            "lpc.silu" => self.silu(x)?,
            _ => return self.err(format!("no float form of {op}")),
        })
    }
}

fn arith<'c>(cg: &Cg<'c>, op: &str, a: S<'c>, b: S<'c>) -> R<S<'c>> {
    arith_mod(cg, op, false, a, b)
}

/// Binary arithmetic; `fmod` selects C-style `Mod` (sign of the dividend)
/// over Python-style (sign of the divisor).
fn arith_mod<'c>(cg: &Cg<'c>, op: &str, fmod: bool, a: S<'c>, b: S<'c>) -> R<S<'c>> {
    if op == "Mod" {
        return Ok(match (a, b) {
            (S::F(x), S::F(y)) => {
                let r = cg.b.build_float_rem(x, y, "")?;
                if fmod {
                    S::F(r)
                } else {
                    let nz = cg.fcmp(FloatPredicate::ONE, r, cg.cf32(0.0))?;
                    let rn = cg.fcmp(FloatPredicate::OLT, r, cg.cf32(0.0))?;
                    let yn = cg.fcmp(FloatPredicate::OLT, y, cg.cf32(0.0))?;
                    let diff = cg.b.build_xor(rn, yn, "")?;
                    let fix = cg.and(nz, diff)?;
                    S::F(cg.select_f(fix, cg.fadd(r, y)?, r)?)
                }
            }
            (S::I(x), S::I(y)) => {
                let z = cg.icmp(IntPredicate::EQ, y, cg.c64(0))?;
                let safe = cg.select_i(z, cg.c64(1), y)?;
                let r = cg.select_i(z, cg.c64(0), cg.srem(x, safe)?)?;
                if fmod {
                    S::I(r)
                } else {
                    let nz = cg.icmp(IntPredicate::NE, r, cg.c64(0))?;
                    let rn = cg.icmp(IntPredicate::SLT, r, cg.c64(0))?;
                    let yn = cg.icmp(IntPredicate::SLT, y, cg.c64(0))?;
                    let fix = cg.and(nz, cg.b.build_xor(rn, yn, "")?)?;
                    S::I(cg.select_i(fix, cg.add(r, y)?, r)?)
                }
            }
            _ => return cg.err("Mod: operand types do not match"),
        });
    }
    Ok(match (a, b) {
        (S::F(x), S::F(y)) => S::F(match op {
            "Add" => cg.fadd(x, y)?,
            "Sub" => cg.fsub(x, y)?,
            "Mul" => cg.fmul(x, y)?,
            "Div" => cg.fdiv(x, y)?,
            "Pow" => cg
                .intrinsic("llvm.pow", &[cg.f32t().into()], &[x.into(), y.into()])?
                .into_float_value(),
            "Max" | "Min" => {
                let name = if op == "Max" {
                    "llvm.maximum"
                } else {
                    "llvm.minimum"
                };
                cg.intrinsic(name, &[cg.f32t().into()], &[x.into(), y.into()])?
                    .into_float_value()
            }
            _ => return cg.err(format!("no float form of {op}")),
        }),
        (S::F(x), S::I(y)) if op == "Pow" => {
            let yf = cg.b.build_signed_int_to_float(y, cg.f32t(), "")?;
            return arith(cg, op, S::F(x), S::F(yf));
        }
        (S::I(x), S::I(y)) => S::I(match op {
            "Add" => cg.add(x, y)?,
            "Sub" => cg.sub(x, y)?,
            "Mul" => cg.mul(x, y)?,
            "Div" => {
                let z = cg.icmp(IntPredicate::EQ, y, cg.c64(0))?;
                let safe = cg.select_i(z, cg.c64(1), y)?;
                let q = cg.sdiv(x, safe)?;
                cg.select_i(z, cg.c64(0), q)?
            }
            "Max" => cg.smax(x, y)?,
            "Min" => cg.smin(x, y)?,
            _ => return cg.err(format!("no integer form of {op}")),
        }),
        _ => return cg.err(format!("{op}: operand types do not match")),
    })
}

fn compare<'c>(cg: &Cg<'c>, op: &str, a: S<'c>, b: S<'c>) -> R<S<'c>> {
    Ok(S::B(match (a, b) {
        (S::F(x), S::F(y)) => {
            use FloatPredicate::*;
            let p = match op {
                "Equal" => OEQ,
                "Less" => OLT,
                "LessOrEqual" => OLE,
                "Greater" => OGT,
                _ => OGE,
            };
            cg.fcmp(p, x, y)?
        }
        (S::I(x), S::I(y)) | (S::B(x), S::B(y)) => {
            use IntPredicate::*;
            let (x, y) = if x.get_type().get_bit_width() == 1 {
                (
                    cg.b.build_int_z_extend(x, cg.i64t(), "")?,
                    cg.b.build_int_z_extend(y, cg.i64t(), "")?,
                )
            } else {
                (x, y)
            };
            let p = match op {
                "Equal" => EQ,
                "Less" => SLT,
                "LessOrEqual" => SLE,
                "Greater" => SGT,
                _ => SGE,
            };
            cg.icmp(p, x, y)?
        }
        _ => return cg.err(format!("{op}: operand types do not match")),
    }))
}

pub fn emit<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let op = n.op.as_str();
    let a = |k| arg(cg, ins, k).cloned();
    let out = match op {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Mod" => {
            let x = a(0)?;
            let fmod = n.int("fmod").unwrap_or(0) != 0;
            let mut acc = x;
            for k in 1..ins.len() {
                let y = arg(cg, ins, k)?.clone();
                let dt = acc.dt;
                let o = op.to_string();
                acc = cg.map(&[&acc, &y], dt, &move |cg, s| {
                    arith_mod(cg, &o, fmod, s[0], s[1])
                })?;
            }
            acc
        }
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
            let (x, y) = (a(0)?, a(1)?);
            let o = op.to_string();
            cg.map(&[&x, &y], DType::Bool, &move |cg, s| {
                compare(cg, &o, s[0], s[1])
            })?
        }
        "And" | "Or" | "Xor" => {
            let (x, y) = (a(0)?, a(1)?);
            let o = op.to_string();
            cg.map(&[&x, &y], DType::Bool, &move |cg, s| {
                let (S::B(p), S::B(q)) = (s[0], s[1]) else {
                    return cg.err(format!("{o} needs bool operands"));
                };
                Ok(S::B(match o.as_str() {
                    "And" => cg.b.build_and(p, q, "")?,
                    "Or" => cg.b.build_or(p, q, "")?,
                    _ => cg.b.build_xor(p, q, "")?,
                }))
            })?
        }
        "Not" => {
            let x = a(0)?;
            cg.map(&[&x], DType::Bool, &|cg, s| match s[0] {
                S::B(p) => Ok(S::B(cg.b.build_not(p, "")?)),
                _ => cg.err("Not needs a bool operand"),
            })?
        }
        "Where" => {
            let (c, x, y) = (a(0)?, a(1)?, a(2)?);
            let dt = x.dt;
            cg.map(&[&c, &x, &y], dt, &|cg, s| {
                let S::B(c) = s[0] else {
                    return cg.err("Where needs a bool condition");
                };
                Ok(match (s[1], s[2]) {
                    (S::F(p), S::F(q)) => S::F(cg.select_f(c, p, q)?),
                    (S::I(p), S::I(q)) => S::I(cg.select_i(c, p, q)?),
                    (S::B(p), S::B(q)) => S::B(cg.select_i(c, p, q)?),
                    _ => return cg.err("Where operands differ in type"),
                })
            })?
        }
        "Neg" | "Abs"
            if ins
                .first()
                .and_then(|v| v.as_ref())
                .is_some_and(|v| is_int(v.dt)) =>
        {
            let x = a(0)?;
            let neg = op == "Neg";
            cg.map(&[&x], x.dt, &move |cg, s| {
                let S::I(v) = s[0] else {
                    return cg.err("integer operand expected");
                };
                let m = cg.sub(cg.c64(0), v)?;
                Ok(S::I(if neg {
                    m
                } else {
                    let c = cg.icmp(IntPredicate::SLT, v, cg.c64(0))?;
                    cg.select_i(c, m, v)?
                }))
            })?
        }
        "Neg" | "Abs" | "Sqrt" | "Exp" | "Log" | "Sin" | "Cos" | "Tanh" | "Sigmoid" | "Erf"
        | "Relu" | "Reciprocal" | "Floor" | "Ceil" | "Softplus" | "Gelu" | "lpc.gelu"
        | "lpc.silu" => {
            let x = a(0)?;
            if x.dt != DType::F32 {
                return cg.err(format!(
                    "{op} on {} is not supported by code generation yet",
                    x.dt
                ));
            }
            let node = n.clone();
            let o = op.to_string();
            cg.map(&[&x], DType::F32, &move |cg, s| {
                let S::F(v) = s[0] else {
                    return cg.err("float operand expected");
                };
                Ok(S::F(cg.unary_f(&o, v, &node)?))
            })?
        }
        "lpc.swiglu" if ins.len() == 1 => {
            // Gate and up are the halves of the last axis: both read in
            // place, row by row.
            let x = a(0)?;
            if x.dt != DType::F32 || x.rank() == 0 {
                return cg.err("lpc.swiglu needs an f32 operand");
            }
            let d = *x.dims.last().expect("rank >= 1");
            let h = cg.sdiv(d, cg.c64(2))?;
            let ok = cg.icmp(IntPredicate::EQ, cg.mul(h, cg.c64(2))?, d)?;
            cg.check(ok, "the last axis must split in two halves")?;
            let gate = n.int("gate").unwrap_or(0);
            let (go, uo) = if gate == 0 {
                (cg.c64(0), h)
            } else {
                (h, cg.c64(0))
            };
            let rows = cg.product(&x.dims[..x.rank() - 1])?;
            let out = cg.alloc(DType::F32, cg.mul(rows, h)?)?;
            cg.for_nd_with(&[rows, h], true, &mut |cg, i| {
                let base = cg.mul(i[0], d)?;
                let g = cg.load_f32(x.ptr, cg.add(cg.add(base, go)?, i[1])?)?;
                let u = cg.load_f32(x.ptr, cg.add(cg.add(base, uo)?, i[1])?)?;
                let y = cg.fmul(cg.silu(g)?, u)?;
                cg.store(DType::F32, out, cg.add(cg.mul(i[0], h)?, i[1])?, y.into())
            })?;
            let mut dims = x.dims.clone();
            *dims.last_mut().expect("rank >= 1") = h;
            Val {
                ptr: out,
                dims,
                dt: DType::F32,
            }
        }
        "lpc.swiglu" => {
            let (x, y) = (a(0)?, a(1)?);
            cg.map(&[&x, &y], DType::F32, &|cg, s| {
                let (S::F(g), S::F(u)) = (s[0], s[1]) else {
                    return cg.err("float operands expected");
                };
                Ok(S::F(cg.fmul(cg.silu(g)?, u)?))
            })?
        }
        "Cast" => {
            let x = a(0)?;
            let to = n.int("to").unwrap_or(1) as i32;
            let Some(dt) = DType::from_onnx_code(to) else {
                return cg.err(format!("Cast to element type code {to}"));
            };
            if dt == x.dt {
                x
            } else {
                cg.map(&[&x], dt, &|_, s| Ok(s[0]))?
            }
        }
        "Identity" => a(0)?,
        _ => return Ok(None),
    };
    Ok(Some(vec![out]))
}
